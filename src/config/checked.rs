//! Config values that do not stop deserialization when they are wrong: each keeps its problem,
//! and unknown keys are collected, so that every problem of a file is reported at once.
//!
//! serde's `deny_unknown_fields` and a failing field both end deserialization at the first
//! problem; an operator fixing a config one error per run is what this module avoids.

use std::time::Duration;

use figment::value::Value;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::ConfigProblem;

/// What a key's value must be, for the message when it is not.
pub trait Expected {
    /// Completes "must be …".
    const WHAT: &'static str;

    /// The problem with `value`, which did not deserialize.
    fn problem(_value: &Value) -> String {
        format!("must be {}", Self::WHAT)
    }
}

impl Expected for String {
    const WHAT: &'static str = "a string";
}

impl Expected for bool {
    const WHAT: &'static str = "true or false";
}

impl Expected for u64 {
    const WHAT: &'static str = "a non-negative integer";
}

impl Expected for f64 {
    const WHAT: &'static str = "a number";
}

impl Expected for Vec<String> {
    const WHAT: &'static str = "an array of strings";
}

/// A duration written the humantime way ("30s", "5m", "1h 30m").
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct HumanDuration(#[serde(with = "humantime_serde")] pub Duration);

impl Expected for HumanDuration {
    const WHAT: &'static str = "a duration such as \"30s\" or \"5m\"";

    fn problem(value: &Value) -> String {
        match value.as_str().map(humantime::parse_duration) {
            Some(Err(error)) => format!(
                "invalid duration {:?} ({error}); use e.g. \"30s\" or \"5m\"",
                value.as_str().unwrap_or_default()
            ),
            Some(Ok(_)) | None => format!("must be {}", Self::WHAT),
        }
    }
}

/// A value as read, or the problem with it.
#[derive(Debug, Clone, PartialEq)]
pub enum Checked<T> {
    Valid(T),
    Invalid(String),
}

impl<'de, T: DeserializeOwned + Expected> Deserialize<'de> for Checked<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = <Value as Deserialize>::deserialize(deserializer)?;
        Ok(match value.deserialize::<T>() {
            Ok(valid) => Checked::Valid(valid),
            Err(_) => Checked::Invalid(T::problem(&value)),
        })
    }
}

/// Turns the raw form of a file into `T` (every field optional, leaves [`Checked`]), with a
/// problem for each key `T` does not have.
pub fn read<T: DeserializeOwned>(value: &Value) -> Result<(T, Vec<ConfigProblem>), ConfigProblem> {
    let mut unknown = Vec::new();
    let mut collect = |path: serde_ignored::Path<'_>| {
        unknown.push(ConfigProblem {
            key: key_of(&path),
            message: "unknown key".into(),
        })
    };
    let ignored = serde_ignored::Deserializer::new(value, &mut collect);
    let raw: T = serde_path_to_error::deserialize(ignored).map_err(|error| {
        let key = error.path().to_string();
        ConfigProblem {
            key: if key == "." { String::new() } else { key },
            message: error.into_inner().to_string(),
        }
    })?;
    Ok((raw, unknown))
}

/// `environment[0].target.path`, the way problems name keys.
fn key_of(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_of(parent)),
        Path::Map { parent, key } => super::join(&key_of(parent), key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_of(parent),
    }
}

/// Reads checked values into `problems` under their keys.
pub struct Reader<'a> {
    pub problems: &'a mut Vec<ConfigProblem>,
    pub prefix: String,
}

impl Reader<'_> {
    pub fn key(&self, key: &str) -> String {
        super::join(&self.prefix, key)
    }

    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        let key = self.key(key);
        self.problems.push(ConfigProblem {
            key,
            message: message.into(),
        });
    }

    /// The value, if valid; its problem goes to the list.
    pub fn get<T>(&mut self, key: &str, value: Option<Checked<T>>) -> Option<T> {
        match value? {
            Checked::Valid(valid) => Some(valid),
            Checked::Invalid(message) => {
                self.problem(key, message);
                None
            }
        }
    }

    /// Like [`Reader::get`], a problem also when the key is absent.
    pub fn required<T>(&mut self, key: &str, value: Option<Checked<T>>) -> Option<T> {
        if value.is_none() {
            self.problem(key, "missing");
        }
        self.get(key, value)
    }

    /// A duration longer than zero.
    pub fn duration(
        &mut self,
        key: &str,
        value: Option<Checked<HumanDuration>>,
    ) -> Option<Duration> {
        let HumanDuration(duration) = self.get(key, value)?;
        if duration.is_zero() {
            self.problem(key, "must be longer than zero");
            return None;
        }
        Some(duration)
    }

    /// A duration that may be zero ("0s" turns a wait off).
    pub fn duration_or_zero(
        &mut self,
        key: &str,
        value: Option<Checked<HumanDuration>>,
    ) -> Option<Duration> {
        self.get(key, value).map(|HumanDuration(duration)| duration)
    }

    /// A key that this kind of table does not have, when it is set.
    pub fn unknown_if(&mut self, key: &str, set: bool) {
        if set {
            self.problem(key, "unknown key");
        }
    }

    /// Each of `keys` that is set although this kind of table does not have it.
    pub fn unknown_unless(&mut self, keys: &[(&str, bool)], allowed: &[&str]) {
        for (key, set) in keys {
            if !allowed.contains(key) {
                self.unknown_if(key, *set);
            }
        }
    }

    /// A relative path inside the repository; required.
    pub fn repo_path(&mut self, key: &str, value: Option<Checked<String>>) -> Option<String> {
        let path = self.required(key, value)?;
        if !super::valid_repo_path(&path) {
            self.problem(
                key,
                "must be a relative path inside the repository (no '..')",
            );
        }
        Some(path)
    }

    /// A non-empty path, relative to `base` unless absolute.
    pub fn path(
        &mut self,
        key: &str,
        value: Option<Checked<String>>,
        base: &std::path::Path,
    ) -> Option<std::path::PathBuf> {
        let text = self.get(key, value)?;
        if text.is_empty() {
            self.problem(key, "must not be empty");
            return None;
        }
        Some(base.join(text))
    }

    /// A count, saturating where `usize` is narrower than `u64`.
    pub fn count(&mut self, key: &str, value: Option<Checked<u64>>) -> Option<usize> {
        self.get(key, value)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Figment;
    use figment::providers::{Format, Toml};

    #[derive(Debug, Deserialize)]
    struct Raw {
        count: Option<Checked<u64>>,
        wait: Option<Checked<HumanDuration>>,
        section: Option<Section>,
    }

    #[derive(Debug, Deserialize)]
    struct Section {
        flag: Option<Checked<bool>>,
    }

    fn raw(toml: &str) -> (Raw, Vec<ConfigProblem>) {
        let value: Value = Figment::new()
            .merge(Toml::string(toml))
            .extract()
            .expect("test TOML is well-formed");
        read(&value).expect("structurally sound")
    }

    #[test]
    fn bad_values_and_unknown_keys_are_all_kept_with_their_keys() {
        let (raw, unknown) =
            raw("count = -1\nwait = \"soon\"\ncolour = 1\n[section]\nflag = \"yes\"\nextra = 2\n");
        assert_eq!(
            raw.count,
            Some(Checked::Invalid("must be a non-negative integer".into()))
        );
        assert!(
            matches!(&raw.wait, Some(Checked::Invalid(message)) if message.starts_with("invalid duration \"soon\"")),
            "{:?}",
            raw.wait
        );
        assert_eq!(
            raw.section.and_then(|s| s.flag),
            Some(Checked::Invalid("must be true or false".into()))
        );
        let keys: Vec<&str> = unknown.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["colour", "section.extra"]);
    }

    #[test]
    fn good_values_are_read() {
        let (raw, unknown) = raw("count = 3\nwait = \"1m 30s\"\n[section]\nflag = true\n");
        assert!(unknown.is_empty());
        assert_eq!(raw.count, Some(Checked::Valid(3)));
        assert_eq!(
            raw.wait,
            Some(Checked::Valid(HumanDuration(Duration::from_secs(90))))
        );
        assert_eq!(raw.section.and_then(|s| s.flag), Some(Checked::Valid(true)));
    }

    #[test]
    fn a_section_that_is_not_a_table_is_named() {
        let value: Value = Figment::new()
            .merge(Toml::string("section = 5\n"))
            .extract()
            .expect("well-formed");
        let problem = read::<Raw>(&value).expect_err("not a table");
        assert_eq!(problem.key, "section");
    }
}
