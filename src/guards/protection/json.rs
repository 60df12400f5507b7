//! The JSON that protection reads: strings, arrays and objects, with repeated keys refused.

pub(super) const DUPLICATE: &str = "duplicate key";

/// A JSON value as far as protection reads it: strings, arrays and objects, rejecting repeated
/// keys (an upstream parser might take the other one).
pub(super) enum Strict {
    Str(String),
    Array(Vec<Strict>),
    Object(Vec<(String, Strict)>),
    Other,
}

impl Strict {
    /// Every string at `path` (and below it), `[]` stepping into each array element; an array
    /// where an object is expected is stepped into as well, so no spelling hides an id.
    pub(super) fn strings_at<'a>(&'a self, path: &[&str], out: &mut Vec<&'a str>) {
        match (path.split_first(), self) {
            (_, Strict::Array(items)) => items.iter().for_each(|i| i.strings_at(path, out)),
            (None, Strict::Str(s)) => out.push(s),
            (None, Strict::Object(fields)) => {
                fields.iter().for_each(|(_, v)| v.strings_at(&[], out))
            }
            (Some((&"[]", rest)), value) => value.strings_at(rest, out),
            (Some((key, rest)), Strict::Object(fields)) => fields
                .iter()
                .filter(|(k, _)| k == key)
                .for_each(|(_, v)| v.strings_at(rest, out)),
            _ => {}
        }
    }
}

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Strict;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
                Ok(Strict::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
                Ok(Strict::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
                Ok(Strict::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Strict, E> {
                Ok(Strict::Other)
            }
            fn visit_unit<E>(self) -> Result<Strict, E> {
                Ok(Strict::Other)
            }
            fn visit_str<E>(self, s: &str) -> Result<Strict, E> {
                Ok(Strict::Str(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Strict, E> {
                Ok(Strict::Str(s))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Strict, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Strict::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Strict, A::Error> {
                let mut fields: Vec<(String, Strict)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if fields.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom(format!("{DUPLICATE} {key:?}")));
                    }
                    let value = map.next_value()?;
                    fields.push((key, value));
                }
                Ok(Strict::Object(fields))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}
