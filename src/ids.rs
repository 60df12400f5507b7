//! Identifiers everything shares: client ids, roles and rule ids (a leaf module: it imports nothing
//! of the crate).
//!
//! Each is a newtype over `Arc<str>` (cheap to clone into request extensions and audit records),
//! restricted to 1–64 characters of `A-Z a-z 0-9 . _ -` so it is safe in logs, metric labels and
//! file names.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::Deserialize;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        id_newtype!($(#[$doc])* $name, $what, is_plain_id, "1-64 characters of A-Z a-z 0-9 . _ -");
    };
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:ident, $rule:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                if $check(&value) {
                    Ok($name(value.into()))
                } else {
                    Err(format!(
                        concat!("invalid ", $what, " {:?}: use ", $rule),
                        value
                    ))
                }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::try_from(s.to_owned())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_newtype!(
    /// A client id: configured, issued through the keys API, or taken from an identity provider's
    /// claim (an e-mail address, so `@` and `+` are allowed too).
    ClientId,
    "client id",
    is_client_id,
    "1-128 characters of A-Z a-z 0-9 . _ - @ +"
);
id_newtype!(
    /// A role name.
    Role,
    "role"
);
id_newtype!(
    /// A policy rule id (also names rate limits and guards in refusals).
    RuleId,
    "rule id"
);

impl RuleId {
    /// The pseudo-rule named when `policy.default: deny` decides.
    pub fn default_rule() -> RuleId {
        RuleId(Arc::from("policy.default"))
    }

    /// A rule id the gateway itself names (guards), known to be plain.
    pub fn builtin(id: &'static str) -> RuleId {
        debug_assert!(is_plain_id(id), "{id}");
        RuleId(Arc::from(id))
    }
}

/// Whether `value` is a plain id: 1–64 characters of `A-Z a-z 0-9 . _ -`.
pub fn is_plain_id(value: &str) -> bool {
    (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `value` is a valid client id: 1–128 characters of `A-Z a-z 0-9 . _ - @ +` (plain ids,
/// and the e-mail addresses an identity provider names people by). Still safe in logs, metric
/// labels, store keys and, under `/tl-gateway/`, in a path segment.
pub fn is_client_id(value: &str) -> bool {
    (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'+'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_tokens() {
        assert!("alice".parse::<ClientId>().is_ok());
        assert!("force-delete.v2_x".parse::<RuleId>().is_ok());
        for bad in [
            "",
            "has space",
            "a/b",
            "é",
            "a%40b",
            "a:b",
            &"x".repeat(129),
        ] {
            assert!(bad.parse::<ClientId>().is_err(), "{bad:?}");
        }
        // Ids from an identity provider's e-mail claim.
        assert!("bob+tl@example.com".parse::<ClientId>().is_ok());
        assert!("bob@example.com".parse::<Role>().is_err());
        assert!("x".repeat(65).parse::<Role>().is_err());
        assert_eq!(RuleId::default_rule().as_str(), "policy.default");
    }
}
