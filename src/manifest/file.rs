//! One manifest file → its documents, each parsed and checked but for its namespace; what a
//! problem with a file or document says.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::group_of;

/// One manifest file read from the source, with its path relative to the repository root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    pub path: String,
    pub bytes: Vec<u8>,
    /// The git blob id of `bytes`, when they come from git: the parse cache's key.
    pub blob: Option<String>,
}

/// One problem with a revision's manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub file: String,
    /// 1-based index of the YAML document in the file.
    pub document: Option<usize>,
    /// 1-based line of the document's start or of the error, when known.
    pub line: Option<usize>,
    /// What the object is, as far as it could be read (`Deployment web/api`).
    pub object: Option<String>,
    pub message: String,
}

impl Problem {
    /// A problem with a whole file (symlink, size, encoding).
    pub fn file(file: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            document: None,
            line: None,
            object: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(document) = self.document {
            write!(f, ": document {document}")?;
        }
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// One object whose namespace is not settled yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Pending {
    pub(super) problem_at: Problem,
    /// `file document N [item M]`, for duplicate messages.
    pub(super) place: String,
    pub(super) group: String,
    pub(super) kind: String,
    pub(super) name: String,
    pub(super) declared_namespace: Option<String>,
    pub(super) body: Value,
}

/// What one revision may ask of the parser: hostile input stops at these, with a problem that
/// names the file and document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// YAML documents in the whole revision.
    pub max_documents: usize,
    /// Nesting of one document (maps and sequences).
    pub max_depth: usize,
    /// Alias uses (`*ref`) in one document, so an alias bomb cannot expand.
    pub max_aliases: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_documents: 20_000,
            max_depth: 64,
            max_aliases: 1_000,
        }
    }
}

fn yaml_options(limits: &Limits) -> serde_saphyr::Options {
    // Both are non-exhaustive: start from the defaults and set what gitopsd limits.
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = limits.max_depth;
    budget.max_aliases = limits.max_aliases;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Parses one YAML document within `limits` (into `Value`, or a type that keeps more, such as
/// the order of keys).
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
    limits: &Limits,
) -> Result<T, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options::<T>(text, yaml_options(limits))
}

/// One file's documents, each parsed and checked but for its namespace: a pure function of the
/// file's path, bytes and the limits, which is what makes it cacheable.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ParsedFile {
    pub(super) path: String,
    /// A problem with the whole file (its encoding); then there are no documents.
    pub(super) file_problem: Option<Problem>,
    pub(super) documents: Vec<ParsedDocument>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ParsedDocument {
    pub(super) index: usize,
    pub(super) first_line: usize,
    pub(super) outcomes: Vec<Outcome>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum Outcome {
    Object(Pending),
    Problem(Problem),
    Encrypted(EncryptedDocument),
}

/// The top-level key that marks a SOPS-encrypted document.
const SOPS_KEY: &str = "sops";

/// A SOPS-encrypted document, kept as written (never in the clear: parsed files are cached)
/// until the environment's key decrypts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedDocument {
    /// Where it is: file, document and line, with an empty message.
    pub at: Problem,
    /// The document's YAML text.
    pub text: String,
}

impl EncryptedDocument {
    /// The checked objects (or problems) of the document's decrypted body, as if the body had
    /// been written in its place.
    pub(super) fn outcomes(&self, body: Value) -> Vec<Outcome> {
        let location = Location {
            file: &self.at.file,
            document: self.at.document.unwrap_or(1),
            line: self.at.line.unwrap_or(1),
        };
        body_outcomes(body, &location)
    }
}

/// The outcomes of one parsed document's body: its objects (a List's items) or problems.
fn body_outcomes(value: Value, location: &Location<'_>) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut problems = Vec::new();
    for (item, body) in expand_list(value, location, &mut problems) {
        outcomes.push(check(body, item, location));
    }
    outcomes.extend(problems.into_iter().map(Outcome::Problem));
    outcomes
}

/// Parses one file; stops after one document past `limits.max_documents`, which alone is
/// enough for [`assemble`] to refuse the revision.
pub(super) fn parse_file(file: &ManifestFile, limits: &Limits) -> ParsedFile {
    let mut parsed = ParsedFile {
        path: file.path.clone(),
        ..ParsedFile::default()
    };
    let Ok(text) = std::str::from_utf8(&file.bytes) else {
        parsed.file_problem = Some(Problem::file(&file.path, "file is not valid UTF-8"));
        return parsed;
    };
    for document in split_documents(text)
        .into_iter()
        .take(limits.max_documents.saturating_add(1))
    {
        let location = Location {
            file: &file.path,
            document: document.index,
            line: document.first_line,
        };
        let outcomes = match parse_yaml::<Value>(document.text, limits) {
            Ok(value) if value.get(SOPS_KEY).is_some() => {
                vec![Outcome::Encrypted(EncryptedDocument {
                    at: location.problem(None, String::new()),
                    text: document.text.to_string(),
                })]
            }
            Ok(value) => body_outcomes(value, &location),
            Err(error) => vec![Outcome::Problem(location.yaml_problem(&error))],
        };
        parsed.documents.push(ParsedDocument {
            index: document.index,
            first_line: document.first_line,
            outcomes,
        });
    }
    parsed
}

/// One body of a document: an object whose namespace is still to settle, or its problem.
fn check(body: Value, item: Option<usize>, location: &Location<'_>) -> Outcome {
    match validate(body) {
        Ok(checked) => Outcome::Object(Pending {
            problem_at: location.problem(Some(checked.identity.clone()), String::new()),
            place: location.describe(item),
            group: checked.group,
            kind: checked.kind,
            name: checked.name,
            declared_namespace: checked.declared_namespace,
            body: checked.body,
        }),
        Err((object, message)) => {
            let message = match item {
                Some(item) => format!("item {item}: {message}"),
                None => message,
            };
            Outcome::Problem(location.problem(object, message))
        }
    }
}

/// Where a document sits, for error messages.
pub(super) struct Location<'a> {
    pub(super) file: &'a str,
    pub(super) document: usize,
    pub(super) line: usize,
}

impl Location<'_> {
    pub(super) fn problem(&self, object: Option<String>, message: String) -> Problem {
        Problem {
            file: self.file.to_string(),
            document: Some(self.document),
            line: Some(self.line),
            object,
            message,
        }
    }

    fn yaml_problem(&self, error: &serde_saphyr::Error) -> Problem {
        let error = error.without_snippet();
        let line = error
            .location()
            .map(|location| self.line + location.line() as usize - 1)
            .unwrap_or(self.line);
        Problem {
            file: self.file.to_string(),
            document: Some(self.document),
            line: Some(line),
            object: None,
            message: format!("invalid YAML: {error}"),
        }
    }

    fn describe(&self, item: Option<usize>) -> String {
        match item {
            Some(item) => format!("{} document {} item {item}", self.file, self.document),
            None => format!("{} document {}", self.file, self.document),
        }
    }
}

/// One YAML document's text and position in its file.
struct Document<'a> {
    index: usize,
    first_line: usize,
    text: &'a str,
}

/// Splits a YAML stream at `---` and `...` markers in column 0. A chunk counts as a document
/// when it starts with an explicit `---` or holds anything beyond blank lines and comments, so
/// a licence header above the first `---` does not shift the numbering.
fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut explicit = false;
    let mut offset = 0;
    let mut push = |start: usize, end: usize, first_line: usize, explicit: bool| {
        let chunk = &text[start..end];
        let has_content = chunk.lines().any(|line| {
            let trimmed = line.trim();
            !trimmed.is_empty() && !trimmed.starts_with('#') && trimmed != "---"
        });
        if explicit || has_content {
            documents.push((first_line, chunk, has_content));
        }
    };
    for (line_number, line) in (1..).zip(text.split_inclusive('\n')) {
        let is_start = is_marker(line, "---");
        let is_end = is_marker(line, "...");
        if is_start || is_end {
            push(start, offset, start_line, explicit);
            if is_start {
                start = offset;
                start_line = line_number;
            } else {
                start = offset + line.len();
                start_line = line_number + 1;
            }
            explicit = is_start;
        }
        offset += line.len();
    }
    push(start, text.len(), start_line, explicit);
    documents
        .into_iter()
        .enumerate()
        .filter(|(_, (_, _, has_content))| *has_content)
        .map(|(index, (first_line, text, _))| Document {
            index: index + 1,
            first_line,
            text,
        })
        .collect()
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
}

/// Expands `kind: List` (and `FooList`) documents into their items; other documents pass
/// through as a single body with no item index.
fn expand_list(
    value: Value,
    location: &Location<'_>,
    problems: &mut Vec<Problem>,
) -> Vec<(Option<usize>, Value)> {
    let is_list = value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|kind| kind.ends_with("List"))
        && value.get("items").is_some();
    if !is_list {
        return vec![(None, value)];
    }
    match value.get("items") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(index, item)| (Some(index + 1), item.clone()))
            .collect(),
        _ => {
            problems.push(location.problem(None, "`items` of a List must be a sequence".into()));
            Vec::new()
        }
    }
}

/// A body that passed every check but the namespace's.
struct Checked {
    identity: String,
    group: String,
    kind: String,
    name: String,
    declared_namespace: Option<String>,
    body: Value,
}

/// Checks one body. On failure returns what could be read of the object's identity and the
/// reason.
fn validate(body: Value) -> Result<Checked, (Option<String>, String)> {
    let Some(map) = body.as_object() else {
        return Err((None, "document is not a mapping".into()));
    };
    let kind = map.get("kind").and_then(Value::as_str).map(str::to_string);
    let name = map
        .get("metadata")
        .and_then(|metadata| metadata.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let partial = match (&kind, &name) {
        (Some(kind), Some(name)) => Some(format!("{kind} {name}")),
        (Some(kind), None) => Some(kind.clone()),
        (None, Some(name)) => Some(format!("object {name}")),
        (None, None) => None,
    };
    let fail = |message: &str| Err((partial.clone(), message.to_string()));

    let api_version = match map.get("apiVersion") {
        Some(Value::String(version)) if valid_api_version(version) => version.clone(),
        Some(Value::String(version)) => return fail(&format!("invalid apiVersion {version:?}")),
        Some(_) => return fail("apiVersion must be a string"),
        None => return fail("missing apiVersion"),
    };
    let Some(kind) = kind else {
        return fail(if map.contains_key("kind") {
            "kind must be a string"
        } else {
            "missing kind"
        });
    };
    if !valid_kind(&kind) {
        return fail(&format!("invalid kind {kind:?}"));
    }
    let Some(metadata) = map.get("metadata") else {
        return fail("missing metadata");
    };
    if !metadata.is_object() {
        return fail("metadata must be a mapping");
    }
    let Some(name) = name else {
        return fail("missing metadata.name");
    };
    if let Some(reason) = invalid_name(&name) {
        return fail(&format!("invalid metadata.name {name:?}: {reason}"));
    }
    let declared_namespace = match metadata.get("namespace") {
        Some(Value::String(namespace)) => Some(namespace.clone()),
        Some(Value::Null) | None => None,
        Some(_) => return fail("metadata.namespace must be a string"),
    };
    Ok(Checked {
        identity: partial.unwrap_or_default(),
        group: group_of(&api_version).to_string(),
        kind,
        name,
        declared_namespace,
        body,
    })
}

fn valid_api_version(version: &str) -> bool {
    let (group, version) = match version.split_once('/') {
        Some((group, version)) => (Some(group), version),
        None => (None, version),
    };
    group.is_none_or(valid_dns_subdomain)
        && !version.is_empty()
        && version
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

fn valid_kind(kind: &str) -> bool {
    kind.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && kind.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Kubernetes' path-segment rule, which every object name must pass: names become URL path
/// segments (and, here, file names).
fn invalid_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > 253 {
        Some("must be at most 253 characters")
    } else if name == "." || name == ".." {
        Some("must not be . or ..")
    } else if name.contains('/') || name.contains('%') || name.contains('\0') {
        Some("must not contain '/', '%' or NUL")
    } else if name.starts_with('.') {
        Some("must not start with '.'")
    } else {
        None
    }
}

pub(super) fn valid_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

fn valid_dns_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(valid_dns_label)
}
