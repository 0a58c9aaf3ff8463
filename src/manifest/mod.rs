//! YAML manifest files → validated objects, with every problem reported by file and document.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;
use thiserror::Error;

pub mod file;

pub use crate::parse_cache::ParseCache;
pub use file::{EncryptedDocument, Limits, ManifestFile, ParsedFile, Problem, parse_yaml};

use crate::model::{KindRef, Object, ResourceKey, cluster_scoped_kinds};
use file::{Location, Outcome, Pending, parse_file, valid_dns_label};

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
    /// SOPS-encrypted documents, until they are decrypted (see [`Documents::take_encrypted`]).
    encrypted: Vec<EncryptedDocument>,
    /// Files parsed for this read, and files taken from the parse cache instead.
    pub parsed_files: usize,
    pub cached_files: usize,
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

/// Joins parsed files in order into a revision's documents, holding the whole revision to
/// `limits.max_documents`.
fn assemble(
    files: impl Iterator<Item = ParsedFile>,
    known_problems: Vec<Problem>,
    limits: &Limits,
) -> Documents {
    let mut problems = known_problems;
    let mut pending = Vec::new();
    let mut encrypted = Vec::new();
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
                    encrypted,
                    ..Documents::default()
                };
            }
            for outcome in document.outcomes {
                match outcome {
                    Outcome::Object(object) => pending.push(object),
                    Outcome::Problem(problem) => problems.push(problem),
                    Outcome::Encrypted(document) => encrypted.push(document),
                }
            }
        }
    }
    Documents {
        pending,
        problems,
        encrypted,
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
        self.pending.is_empty() && self.problems.is_empty() && self.encrypted.is_empty()
    }

    /// The SOPS-encrypted documents, in order, for the caller to decrypt and hand back through
    /// [`Documents::add_decrypted`] (or [`Documents::add_problem`]). Those not taken are
    /// problems when the documents are completed: nothing encrypted is ever applied as is.
    pub fn take_encrypted(&mut self) -> Vec<EncryptedDocument> {
        std::mem::take(&mut self.encrypted)
    }

    /// Whether the revision holds SOPS-encrypted documents not yet taken.
    pub fn has_encrypted(&self) -> bool {
        !self.encrypted.is_empty()
    }

    /// Adds the decrypted body of `document`, checked as if it had been written in its place.
    pub fn add_decrypted(&mut self, document: &EncryptedDocument, body: Value) {
        for outcome in document.outcomes(body) {
            match outcome {
                Outcome::Object(object) => self.pending.push(object),
                Outcome::Problem(problem) => self.problems.push(problem),
                Outcome::Encrypted(document) => self.encrypted.push(document),
            }
        }
    }

    /// Adds a problem found outside parsing (a document that does not decrypt).
    pub fn add_problem(&mut self, problem: Problem) {
        self.problems.push(problem);
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
        problems.extend(self.encrypted.into_iter().map(|document| Problem {
            message: "SOPS-encrypted document, and the environment decrypts nothing: set [environment.decryption] provider = \"sops\" with an age_key_file".into(),
            ..document.at
        }));
        let defined = defined_by_crds(&self.pending);
        let mut seen: BTreeMap<ResourceKey, String> = BTreeMap::new();
        let mut objects = Vec::new();
        for pending in self.pending {
            let fail = |message: String| Problem {
                message,
                ..pending.problem_at.clone()
            };
            let namespace = match settle_namespace(&pending, options, scopes, &defined) {
                Ok(namespace) => namespace,
                Err(message) => {
                    problems.push(fail(message));
                    continue;
                }
            };
            let mut body = pending.body;
            write_namespace(&mut body, namespace.as_deref());
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

/// The namespace a pending object ends up in (none when cluster-scoped), or why it has none
/// that is valid. Scopes come from `scopes`, then from the revision's CRDs (`defined`).
fn settle_namespace(
    pending: &Pending,
    options: &ParseOptions,
    scopes: &Scopes,
    defined: &BTreeMap<(String, String), Scope>,
) -> Result<Option<String>, String> {
    let type_key = (pending.group.clone(), pending.kind.clone());
    let scope = scopes
        .known
        .get(&type_key)
        .or_else(|| defined.get(&type_key))
        .copied();
    let namespace = match (scope, &pending.declared_namespace) {
        (None, _) if scopes.reject_unknown => {
            let api_version = pending
                .body
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(format!(
                "unknown type {api_version} {}: the API server does not serve it and no CustomResourceDefinition in this revision defines it",
                pending.kind
            ));
        }
        (Some(Scope::Cluster), Some(namespace)) => {
            return Err(format!(
                "{} is cluster-scoped but names metadata.namespace {namespace:?}; remove the namespace",
                pending.kind
            ));
        }
        (Some(Scope::Cluster), None) => None,
        (_, Some(namespace)) => Some(namespace.clone()),
        (_, None) => Some(options.default_namespace.clone()),
    };
    if let Some(namespace) = &namespace
        && !valid_dns_label(namespace)
    {
        return Err(format!(
            "invalid metadata.namespace {namespace:?}: must be a DNS label"
        ));
    }
    Ok(namespace)
}

/// Writes the settled namespace into the body (removing it when cluster-scoped), so the
/// stored body says exactly what is applied.
fn write_namespace(body: &mut Value, namespace: Option<&str>) {
    if let Some(metadata) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        match namespace {
            Some(namespace) => {
                metadata.insert("namespace".into(), Value::String(namespace.to_string()));
            }
            None => {
                metadata.remove("namespace");
            }
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

    #[test]
    fn namespaces_settle_by_scope_declaration_and_default() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b, namespace: shop}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: c}\n---\napiVersion: example.com/v1\nkind: Gizmo\nmetadata: {name: d}\n";
        let pending = read(&[file("m.yaml", text)], Vec::new()).pending;
        let settle =
            |options: &ParseOptions, scopes: &Scopes| -> Vec<Result<Option<String>, String>> {
                pending
                    .iter()
                    .map(|pending| settle_namespace(pending, options, scopes, &BTreeMap::new()))
                    .collect()
            };
        assert_eq!(
            settle(&options(), &Scopes::offline()),
            [
                Ok(Some("web".into())),
                Ok(Some("shop".into())),
                Ok(None),
                Ok(Some("web".into()))
            ]
        );
        let mut strict = Scopes {
            reject_unknown: true,
            ..Scopes::offline()
        };
        strict
            .known
            .insert((String::new(), "ConfigMap".into()), Scope::Namespaced);
        let bad_default = ParseOptions {
            default_namespace: "Not_A_Label".into(),
        };
        let settled = settle(&bad_default, &strict);
        assert!(
            matches!(&settled[0], Err(message) if message.contains("must be a DNS label")),
            "{settled:?}"
        );
        assert_eq!(settled[1], Ok(Some("shop".into())));
        assert_eq!(settled[2], Ok(None), "cluster-scoped takes no default");
        assert!(
            matches!(&settled[3], Err(message) if message.starts_with("unknown type example.com/v1 Gizmo")),
            "{settled:?}"
        );
    }

    #[test]
    fn the_settled_namespace_is_written_into_the_body() {
        let mut body = serde_json::json!({"metadata": {"name": "a", "namespace": "old"}});
        write_namespace(&mut body, Some("web"));
        assert_eq!(body["metadata"]["namespace"], "web");
        write_namespace(&mut body, None);
        assert_eq!(body, serde_json::json!({"metadata": {"name": "a"}}));
    }
}
