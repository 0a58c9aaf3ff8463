//! The validation pass's core: the `Checker` that collects problems under their keys, and the
//! unknown keys it hands out table by table.

use super::ConfigProblem;
use super::checked::Reader;
use super::join;

/// Collects problems while taking known keys out of the tree; whatever is left is unknown.
#[derive(Default)]
pub(super) struct Checker {
    pub(super) problems: Vec<ConfigProblem>,
    /// `[decryption] age_key_file`, for environments that decrypt and name no key file.
    pub(super) default_age_key_file: Option<std::path::PathBuf>,
}

impl Checker {
    pub(super) fn problem(&mut self, key: String, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            key,
            message: message.into(),
        });
    }

    pub(super) fn reader(&mut self, prefix: impl Into<String>) -> Reader<'_> {
        Reader {
            problems: &mut self.problems,
            prefix: prefix.into(),
        }
    }
}

/// Unknown keys of one environment, handed out table by table so each is reported where the
/// table's other problems are.
pub(super) struct Unknown {
    prefix: String,
    keys: Vec<ConfigProblem>,
}

impl Unknown {
    pub(super) fn new(prefix: &str, keys: Vec<ConfigProblem>) -> Self {
        Self {
            prefix: prefix.to_string(),
            keys,
        }
    }

    fn is_under(key: &str, table: &str) -> bool {
        key.strip_prefix(table)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    }

    /// The unknown keys inside `table`, named in full.
    pub(super) fn under(&mut self, table: &str) -> Vec<ConfigProblem> {
        let (inside, rest) = std::mem::take(&mut self.keys)
            .into_iter()
            .partition(|problem| Self::is_under(&problem.key, table));
        self.keys = rest;
        inside
            .into_iter()
            .map(|problem: ConfigProblem| ConfigProblem {
                key: join(&self.prefix, &problem.key),
                ..problem
            })
            .collect()
    }

    /// Forgets the unknown keys inside `table` (its type is unknown, so are its keys).
    pub(super) fn drop_under(&mut self, table: &str) {
        self.keys
            .retain(|problem| !Self::is_under(&problem.key, table));
    }

    /// Every unknown key not handed out yet.
    pub(super) fn rest(self) -> Vec<ConfigProblem> {
        let prefix = self.prefix;
        self.keys
            .into_iter()
            .map(|problem| ConfigProblem {
                key: join(&prefix, &problem.key),
                ..problem
            })
            .collect()
    }
}
