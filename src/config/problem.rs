//! How a configuration reports what is wrong with it: a [`Problem`] names the dotted path
//! of the field it is about, and [`ConfigError`] carries them all with the file's name.

use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with a configuration, with the dotted path of the field it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl Problem {
    /// A problem on `field`; `message` is any text or error that says what is wrong.
    pub fn new(field: impl Into<String>, message: impl fmt::Display) -> Self {
        Problem {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Parses every pattern in `patterns`, each problem on `field[i]`.
pub fn parse_all<T, E: fmt::Display>(
    patterns: &[String],
    field: &str,
    parse: fn(&str) -> Result<T, E>,
    problems: &mut Vec<Problem>,
) -> Vec<T> {
    patterns
        .iter()
        .enumerate()
        .filter_map(|(i, pattern)| {
            parse(pattern)
                .map_err(|message| problems.push(Problem::new(format!("{field}[{i}]"), message)))
                .ok()
        })
        .collect()
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(file, problems))]
    Invalid {
        file: PathBuf,
        problems: Vec<Problem>,
    },
}

fn render(file: &Path, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| format!("{}: {p}", file.display()))
        .collect();
    lines.join("\n")
}

/// Turns a serde error into a problem on the right field: for an unknown key, the path
/// of the key itself rather than of the section that holds it.
pub(super) fn problem_at(path: &str, message: &str) -> Problem {
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(key, _)| key);
    match (unknown, path) {
        (Some(key), "." | "") => Problem::new(key, message),
        (Some(key), section) if !section.ends_with(key) => {
            Problem::new(format!("{section}.{key}"), message)
        }
        (_, "." | "") => Problem::new("(root)", message),
        _ => Problem::new(path, message),
    }
}
