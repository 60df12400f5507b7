//! What every layer's settings share: where in the configuration file a problem is ([`Seg`]), and
//! the problem ([`Invalid`]). Each layer reads its own section (`Raw*` types that reject unknown
//! keys) and compiles it into its settings, answering `Invalid` with the key path; `config`
//! assembles the sections and turns the path into a file line. A leaf: imports nothing of the crate.

/// One step of a key path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg {
    /// A mapping key.
    Key(&'static str),
    /// A sequence index.
    Index(usize),
}

/// A section that does not compile: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The key path from the top of the file.
    pub at: Vec<Seg>,
    /// What is wrong (without the path).
    pub message: String,
}

impl Invalid {
    /// A problem at `at`.
    pub fn new(at: &[Seg], message: String) -> Invalid {
        Invalid {
            at: at.to_vec(),
            message,
        }
    }
}

/// A value given inline or in a file (`url` or `url_file`: a secret kept out of the YAML), at
/// `at`: exactly one of them, the file's content trimmed.
pub fn inline_or_file(
    inline: Option<String>,
    file: Option<std::path::PathBuf>,
    at: &[Seg],
    names: (&'static str, &'static str),
) -> Result<String, Invalid> {
    match (inline, file) {
        (Some(value), None) => Ok(value),
        (None, Some(file)) => std::fs::read_to_string(&file)
            .map(|text| text.trim().to_owned())
            .map_err(|e| {
                let mut path = at.to_vec();
                path.push(Seg::Key(names.1));
                Invalid::new(&path, format!("cannot read {}: {e}", file.display()))
            }),
        _ => Err(Invalid::new(
            at,
            format!("set exactly one of {} and {}", names.0, names.1),
        )),
    }
}

/// `section.key[3].other`.
pub fn display_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}
