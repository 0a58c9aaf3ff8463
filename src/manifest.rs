//! YAML manifest files → validated objects, with every problem reported by file and document.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

pub use crate::parse_cache::ParseCache;

use crate::model::{KindRef, Object, ResourceKey, cluster_scoped_kinds, group_of};

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

/// All problems found in a revision's manifests.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub struct ManifestErrors(pub Vec<Problem>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        write!(
            f,
            "{count} manifest problem{}",
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.0 {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

/// How objects are completed while parsing.
#[derive(Debug, Clone)]
pub struct ParseOptions {
    /// Namespace given to namespaced objects that name none.
    pub default_namespace: String,
}

/// True for the file names that hold manifests.
pub fn is_manifest_path(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml")
}

/// Whether a type's objects live in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Namespaced,
    Cluster,
}

/// What is known of the scope of types, besides the CRDs in the revision itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scopes {
    /// Answers by (group, kind), e.g. from an API server's discovery.
    pub known: BTreeMap<(String, String), Scope>,
    /// Reject types that are neither known nor defined by a CRD in the revision (an API server
    /// that does not serve them) instead of taking them as namespaced.
    pub reject_unknown: bool,
}

impl Scopes {
    /// Without an API server: the built-in cluster-scoped kinds; everything else namespaced.
    pub fn offline() -> Self {
        Self {
            known: cluster_scoped_kinds()
                .map(|(group, kind)| ((group.to_string(), kind.to_string()), Scope::Cluster))
                .collect(),
            reject_unknown: false,
        }
    }
}

/// Parses every file into objects, with types' scopes from the built-in list. Fails with
/// every problem at once: earlier problems (`known_problems`, found while reading the files)
/// are reported together with parse errors.
pub fn parse(
    files: &[ManifestFile],
    known_problems: Vec<Problem>,
    options: &ParseOptions,
) -> Result<Vec<Object>, ManifestErrors> {
    read(files, known_problems).complete(options, &Scopes::offline())
}

/// A revision's documents, checked but for their namespaces, which depend on where each type
/// lives (see [`Documents::complete`]).
#[derive(Debug, Clone, Default)]
pub struct Documents {
    pending: Vec<Pending>,
    problems: Vec<Problem>,
    /// Files parsed for this read, and files taken from the parse cache instead.
    pub parsed_files: usize,
    pub cached_files: usize,
}

/// One object whose namespace is not settled yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    problem_at: Problem,
    /// `file document N [item M]`, for duplicate messages.
    place: String,
    group: String,
    kind: String,
    name: String,
    declared_namespace: Option<String>,
    body: Value,
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

/// Reads every file into documents with the default [`Limits`]; see [`parse`].
pub fn read(files: &[ManifestFile], known_problems: Vec<Problem>) -> Documents {
    read_limited(files, known_problems, &Limits::default())
}

/// Reads every file into documents, within `limits`.
pub fn read_limited(
    files: &[ManifestFile],
    known_problems: Vec<Problem>,
    limits: &Limits,
) -> Documents {
    read_cached(files, known_problems, limits, None, Threads::One)
}

/// How many threads parse the files of one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// The calling thread alone: the daemon, whose environments already run side by side and
    /// whose idle memory grew by 3–5 MiB with short-lived parse threads (their allocator
    /// arenas and stacks).
    One,
    /// One per core: a command with one job to finish.
    EveryCore,
}

/// Like [`read_limited`], taking files already parsed from `cache` (by path and blob id) and
/// parsing the others on `threads`; what is parsed here is added to the cache.
pub fn read_cached(
    files: &[ManifestFile],
    known_problems: Vec<Problem>,
    limits: &Limits,
    cache: Option<&ParseCache>,
    threads: Threads,
) -> Documents {
    let mut parsed: Vec<Option<ParsedFile>> = files
        .iter()
        .map(|file| cache.and_then(|cache| cache.get(file, limits)))
        .collect();
    let missing: Vec<usize> = (0..files.len()).filter(|&i| parsed[i].is_none()).collect();
    for (index, file) in parse_files(files, &missing, limits, threads) {
        if let Some(cache) = cache {
            cache.insert(&files[index], limits, &file);
        }
        parsed[index] = Some(file);
    }
    Documents {
        parsed_files: missing.len(),
        cached_files: files.len() - missing.len(),
        ..assemble(parsed.into_iter().flatten(), known_problems, limits)
    }
}

/// Parses `files[i]` for every `i` in `which`.
fn parse_files(
    files: &[ManifestFile],
    which: &[usize],
    limits: &Limits,
    threads: Threads,
) -> Vec<(usize, ParsedFile)> {
    let threads = match threads {
        Threads::One => 1,
        Threads::EveryCore => std::thread::available_parallelism().map_or(1, usize::from),
    }
    .min(which.len());
    if threads <= 1 {
        return which
            .iter()
            .map(|&index| (index, parse_file(&files[index], limits)))
            .collect();
    }
    // Interleaved, so that neighbouring files of similar size land on different threads.
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|worker| {
                scope.spawn(move || {
                    which
                        .iter()
                        .skip(worker)
                        .step_by(threads)
                        .map(|&index| (index, parse_file(&files[index], limits)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("a parser thread panicked"))
            .collect()
    })
}

/// One file's documents, each parsed and checked but for its namespace: a pure function of the
/// file's path, bytes and the limits, which is what makes it cacheable.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ParsedFile {
    path: String,
    /// A problem with the whole file (its encoding); then there are no documents.
    file_problem: Option<Problem>,
    documents: Vec<ParsedDocument>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ParsedDocument {
    index: usize,
    first_line: usize,
    outcomes: Vec<Outcome>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Outcome {
    Object(Pending),
    Problem(Problem),
}

/// Parses one file; stops after one document past `limits.max_documents`, which alone is
/// enough for [`assemble`] to refuse the revision.
fn parse_file(file: &ManifestFile, limits: &Limits) -> ParsedFile {
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
        let mut outcomes = Vec::new();
        match serde_saphyr::from_str_with_options::<Value>(document.text, yaml_options(limits)) {
            Ok(value) => {
                let mut problems = Vec::new();
                for (item, body) in expand_list(value, &location, &mut problems) {
                    outcomes.push(check(body, item, &location));
                }
                outcomes.extend(problems.into_iter().map(Outcome::Problem));
            }
            Err(error) => outcomes.push(Outcome::Problem(location.yaml_problem(&error))),
        }
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

/// Joins parsed files in order into a revision's documents, holding the whole revision to
/// `limits.max_documents`.
fn assemble(
    files: impl Iterator<Item = ParsedFile>,
    known_problems: Vec<Problem>,
    limits: &Limits,
) -> Documents {
    let mut problems = known_problems;
    let mut pending = Vec::new();
    let mut documents = 0usize;
    for file in files {
        if let Some(problem) = file.file_problem {
            problems.push(problem);
            continue;
        }
        for document in file.documents {
            documents += 1;
            if documents > limits.max_documents {
                let location = Location {
                    file: &file.path,
                    document: document.index,
                    line: document.first_line,
                };
                problems.push(location.problem(
                    None,
                    format!(
                        "the revision holds more than {} YAML documents (repo.max_documents); the rest is not read",
                        limits.max_documents
                    ),
                ));
                return Documents {
                    pending,
                    problems,
                    ..Documents::default()
                };
            }
            for outcome in document.outcomes {
                match outcome {
                    Outcome::Object(object) => pending.push(object),
                    Outcome::Problem(problem) => problems.push(problem),
                }
            }
        }
    }
    Documents {
        pending,
        problems,
        ..Documents::default()
    }
}

impl Documents {
    /// The types the documents use.
    pub fn kinds(&self) -> std::collections::BTreeSet<KindRef> {
        self.pending
            .iter()
            .filter_map(|pending| KindRef::of(&pending.body))
            .collect()
    }

    /// Whether the revision holds no objects and no problems.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.problems.is_empty()
    }

    /// Settles namespaces: namespaced objects that name none get the default; a namespace on a
    /// cluster-scoped object is an error. Scopes come from `scopes`, then from CRDs in the
    /// revision, then (unless `scopes` rejects unknown types) namespaced.
    pub fn complete(
        self,
        options: &ParseOptions,
        scopes: &Scopes,
    ) -> Result<Vec<Object>, ManifestErrors> {
        self.complete_located(options, scopes)
            .map(|located| located.into_iter().map(|(object, _)| object).collect())
    }

    /// Like [`Documents::complete`], each object with where it was written: a [`Problem`]
    /// with an empty message, for problems found later (a server's dry run) to fill in.
    pub fn complete_located(
        self,
        options: &ParseOptions,
        scopes: &Scopes,
    ) -> Result<Vec<(Object, Problem)>, ManifestErrors> {
        let mut problems = self.problems;
        let defined = defined_by_crds(&self.pending);
        let mut seen: BTreeMap<ResourceKey, String> = BTreeMap::new();
        let mut objects = Vec::new();
        for pending in self.pending {
            let type_key = (pending.group.clone(), pending.kind.clone());
            let scope = scopes
                .known
                .get(&type_key)
                .or_else(|| defined.get(&type_key))
                .copied();
            let fail = |message: String| Problem {
                message,
                ..pending.problem_at.clone()
            };
            let namespace = match (scope, &pending.declared_namespace) {
                (None, _) if scopes.reject_unknown => {
                    let api_version = pending
                        .body
                        .get("apiVersion")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    problems.push(fail(format!(
                        "unknown type {api_version} {}: the API server does not serve it and no CustomResourceDefinition in this revision defines it",
                        pending.kind
                    )));
                    continue;
                }
                (Some(Scope::Cluster), Some(namespace)) => {
                    problems.push(fail(format!(
                        "{} is cluster-scoped but names metadata.namespace {namespace:?}; remove the namespace",
                        pending.kind
                    )));
                    continue;
                }
                (Some(Scope::Cluster), None) => None,
                (_, Some(namespace)) => Some(namespace.clone()),
                (_, None) => Some(options.default_namespace.clone()),
            };
            if let Some(namespace) = &namespace
                && !valid_dns_label(namespace)
            {
                problems.push(fail(format!(
                    "invalid metadata.namespace {namespace:?}: must be a DNS label"
                )));
                continue;
            }
            let mut body = pending.body;
            // Written back so the stored body says exactly what is applied.
            if let Some(metadata) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                match &namespace {
                    Some(namespace) => {
                        metadata.insert("namespace".into(), Value::String(namespace.clone()));
                    }
                    None => {
                        metadata.remove("namespace");
                    }
                }
            }
            let key = ResourceKey {
                group: pending.group,
                kind: pending.kind,
                namespace,
                name: pending.name,
            };
            if let Some(first) = seen.get(&key) {
                problems.push(Problem {
                    object: Some(key.to_string()),
                    ..fail(format!("duplicate object, first defined in {first}"))
                });
                continue;
            }
            seen.insert(key.clone(), pending.place);
            let at = Problem {
                object: Some(key.to_string()),
                ..pending.problem_at
            };
            objects.push((Object { key, body }, at));
        }
        if problems.is_empty() {
            Ok(objects)
        } else {
            Err(ManifestErrors(problems))
        }
    }
}

/// Scopes of the types that CRDs among the documents define.
fn defined_by_crds(pending: &[Pending]) -> BTreeMap<(String, String), Scope> {
    pending
        .iter()
        .filter(|p| p.group == "apiextensions.k8s.io" && p.kind == "CustomResourceDefinition")
        .filter_map(|crd| {
            let spec = crd.body.get("spec")?;
            let group = spec.get("group")?.as_str()?.to_string();
            let kind = spec.pointer("/names/kind")?.as_str()?.to_string();
            let scope = match spec.get("scope")?.as_str()? {
                "Cluster" => Scope::Cluster,
                _ => Scope::Namespaced,
            };
            Some(((group, kind), scope))
        })
        .collect()
}

/// Where a document sits, for error messages.
struct Location<'a> {
    file: &'a str,
    document: usize,
    line: usize,
}

impl Location<'_> {
    fn problem(&self, object: Option<String>, message: String) -> Problem {
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

fn valid_dns_label(label: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ParseOptions {
        ParseOptions {
            default_namespace: "web".into(),
        }
    }

    fn file(path: &str, text: &str) -> ManifestFile {
        ManifestFile {
            path: path.into(),
            bytes: text.as_bytes().to_vec(),
            blob: None,
        }
    }

    #[test]
    fn files_parsed_on_every_core_read_exactly_as_on_one_thread() {
        let files: Vec<ManifestFile> = (0..9)
            .map(|index| {
                let text = match index % 3 {
                    0 => format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c{index}\n"),
                    1 => format!("---\nkind: Secret\nmetadata:\n  name: s{index}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c{index}\n"),
                    _ => "a: [unclosed\n".to_string(),
                };
                file(&format!("f{index}.yaml"), &text)
            })
            .collect();
        let read = |threads| {
            format!(
                "{:?}",
                read_cached(&files, Vec::new(), &Limits::default(), None, threads)
                    .complete(&options(), &Scopes::offline())
            )
        };
        assert_eq!(read(Threads::EveryCore), read(Threads::One));
    }

    fn problems(files: &[ManifestFile]) -> Vec<String> {
        parse(files, Vec::new(), &options())
            .expect_err("input is invalid")
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn multi_document_file_yields_objects_and_defaults_namespace() {
        let objects = parse(
            &[file(
                "env/a.yaml",
                "# licence header\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n",
            )],
            Vec::new(),
            &options(),
        )
        .expect("valid");
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0].key.namespace.as_deref(), Some("web"));
        assert_eq!(objects[0].body["metadata"]["namespace"], "web");
        assert_eq!(objects[1].key.namespace, None);
        assert!(objects[1].body["metadata"].get("namespace").is_none());
    }

    const CLUSTER_CRD: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.example.com}\nspec:\n  group: example.com\n  scope: Cluster\n  names: {kind: Widget, plural: widgets}\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\n";

    #[test]
    fn custom_resources_take_their_scope_from_a_crd_in_the_revision() {
        let objects =
            parse(&[file("crd.yaml", CLUSTER_CRD)], Vec::new(), &options()).expect("valid");
        assert_eq!(objects[1].key.to_string(), "Widget.example.com w1");
        assert!(objects[1].body["metadata"].get("namespace").is_none());
    }

    #[test]
    fn discovered_scopes_win_and_unknown_types_can_be_rejected() {
        let text = "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g1}\n---\napiVersion: example.com/v1\nkind: Gizmo\nmetadata: {name: z1}\n";
        let scopes = Scopes {
            known: [(
                ("example.com".to_string(), "Gadget".to_string()),
                Scope::Cluster,
            )]
            .into(),
            reject_unknown: true,
        };
        let problems = read(&[file("cr.yaml", text)], Vec::new())
            .complete(&options(), &scopes)
            .expect_err("Gizmo is served by nobody");
        let problems: Vec<String> = problems.0.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(
                "cr.yaml: document 2 (line 4): Gizmo z1: unknown type example.com/v1 Gizmo"
            ),
            "{problems:?}"
        );
        let offline = read(&[file("cr.yaml", text)], Vec::new())
            .complete(&options(), &Scopes::offline())
            .expect("offline, unknown types are namespaced");
        assert_eq!(offline[1].key.namespace.as_deref(), Some("web"));
    }

    #[test]
    fn a_namespace_on_a_cluster_scoped_object_is_an_error_naming_it() {
        let problems = problems(&[file(
            "rbac.yaml",
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: reader, namespace: web}\n",
        )]);
        assert_eq!(
            problems,
            [
                "rbac.yaml: document 1 (line 1): ClusterRole reader: ClusterRole is cluster-scoped but names metadata.namespace \"web\"; remove the namespace"
            ]
        );
    }

    #[test]
    fn list_kind_is_expanded() {
        let objects = parse(
            &[file(
                "l.yaml",
                "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}\n",
            )],
            Vec::new(),
            &options(),
        )
        .expect("valid");
        let names: Vec<&str> = objects.iter().map(|o| o.key.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn every_problem_is_reported_with_file_and_document() {
        let found = problems(&[
            file(
                "env/a.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nmetadata: {name: nokind}\n",
            ),
            file("env/b.yaml", "apiVersion: v1\nkind: [unclosed\n"),
            file(
                "env/c.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
            ),
        ]);
        assert_eq!(found.len(), 3, "{found:#?}");
        assert_eq!(
            found[0],
            "env/a.yaml: document 2 (line 4): object nokind: missing kind"
        );
        assert!(
            found[1].starts_with("env/b.yaml: document 1 (line "),
            "{found:#?}"
        );
        assert!(found[1].contains("invalid YAML"), "{found:#?}");
        assert_eq!(
            found[2],
            "env/c.yaml: document 1 (line 1): ConfigMap web/a: duplicate object, first defined in env/a.yaml document 1"
        );
    }

    #[test]
    fn names_that_would_escape_a_folder_are_rejected() {
        let found = problems(&[file(
            "a.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ../../etc}\n",
        )]);
        assert!(found[0].contains("invalid metadata.name"), "{found:?}");
    }

    #[test]
    fn known_problems_are_reported_with_parse_errors() {
        let errors = parse(
            &[file("a.yaml", "kind: X\n")],
            vec![Problem::file("link.yaml", "symlinks are not followed")],
            &options(),
        )
        .expect_err("invalid");
        assert_eq!(errors.0.len(), 2);
        assert_eq!(
            errors.0[0].to_string(),
            "link.yaml: symlinks are not followed"
        );
    }

    #[test]
    fn empty_and_comment_only_documents_are_skipped() {
        let objects = parse(
            &[file("a.yaml", "---\n# nothing\n---\n\n")],
            Vec::new(),
            &options(),
        )
        .expect("valid");
        assert!(objects.is_empty());
    }
}
