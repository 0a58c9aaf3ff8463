//! A revision's desired state: the environment's files at that revision (read from git or
//! rendered), parsed, given their namespaces and held to the environment's policy.

use thiserror::Error;

use crate::backend::TargetConfig;
use crate::backend::{Target, TargetError};
use crate::config::EnvironmentConfig;
use crate::hooks::{self, ObjectHook};
use crate::manifest::{self, ManifestErrors, ParseOptions, Scopes};
use crate::model::Revision;
use crate::plan::Desired;
use crate::preview;
use crate::render::{RenderConfig, RenderError, Renderer};
use crate::source::{GitSource, SourceError};

/// Error while turning a revision into desired objects.
#[derive(Debug, Error)]
pub enum DesiredError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{0}")]
    Manifests(ManifestErrors),
    #[error("looking up where types live: {0}")]
    Scopes(TargetError),
    #[error("{0}")]
    Render(RenderError),
    #[error(transparent)]
    Stopped(#[from] crate::blocking::Stopped),
}

/// Reads an environment's documents at `revision`; a folder the revision does not have reads
/// as no documents (an empty revision, which the pass then judges). With `keyless` (`diff`
/// and `validate`), SOPS documents whose age key file does not exist are set apart, not
/// checked, instead of rejecting the revision.
async fn read_documents(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
    keep_parsed: bool,
    threads: manifest::Threads,
    keyless: bool,
) -> Result<(manifest::Documents, Option<Unchecked>), DesiredError> {
    let mut documents = match &environment.render {
        Some(render) => read_rendered(source, environment, render, revision).await?,
        None => read_files(source, environment, revision, keep_parsed, threads).await?,
    };
    let unchecked = decrypt(source, environment, revision, &mut documents, keyless).await?;
    Ok((documents, unchecked))
}

/// SOPS documents read without their key (it does not exist where `diff` or `validate` run):
/// not decrypted, not checked, kept as written for their ciphertext to be compared.
#[derive(Debug, Clone, PartialEq)]
pub struct Unchecked {
    /// Why: the key file that does not exist.
    pub reason: String,
    pub documents: Vec<manifest::EncryptedDocument>,
}

/// Decrypts the SOPS documents with the environment's age key file, read anew each time (a
/// rotated key is picked up); a render's are checked against the revision's SOPS files (see
/// [`crate::sops::documents::decrypt_rendered`]). Without `decryption` they stay encrypted,
/// which completing the documents reports; a key file that cannot be used rejects the
/// revision like a manifest problem (nothing of it is applied), naming the file, unless it
/// does not exist and the reader is `keyless`: then the documents come back unchecked.
async fn decrypt(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
    documents: &mut manifest::Documents,
    keyless: bool,
) -> Result<Option<Unchecked>, DesiredError> {
    let Some(decryption) = &environment.decryption else {
        return Ok(None);
    };
    if !documents.has_encrypted() {
        return Ok(None);
    }
    let identities = match crate::sops::keys::load(&decryption.age_key_file).await {
        Ok(identities) => identities,
        Err(absent @ crate::sops::KeyFileError::Absent { .. }) if keyless => {
            return Ok(Some(Unchecked {
                reason: absent.to_string(),
                documents: documents.take_encrypted(),
            }));
        }
        Err(error) => {
            let (path, message) = match error {
                crate::sops::KeyFileError::Unusable { path, message } => (path, message),
                crate::sops::KeyFileError::Absent { path } => (path, "does not exist".into()),
            };
            return Err(DesiredError::Manifests(ManifestErrors(vec![
                manifest::Problem::file(
                    format!("age key file {}", path.display()),
                    format!(
                        "{message}; the SOPS documents of environment {} cannot be decrypted",
                        environment.name
                    ),
                ),
            ])));
        }
    };
    let limits = source.limits();
    if environment.render.is_none() {
        crate::sops::decrypt_documents(documents, &identities, &limits);
        return Ok(None);
    }
    let reader = source.clone();
    let at = revision.clone();
    let files = crate::blocking::off_thread("reading the revision's SOPS files", move || {
        reader.sops_files(&at)
    })
    .await??;
    crate::sops::documents::decrypt_rendered(documents, &identities, &limits, &files);
    Ok(None)
}

/// Reads the environment's folder at `revision` as plain manifest files.
async fn read_files(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
    keep_parsed: bool,
    threads: manifest::Threads,
) -> Result<manifest::Documents, DesiredError> {
    let source = source.clone();
    let revision = revision.clone();
    let path = environment.path.clone();
    // Reading blobs and parsing are CPU and disk work: off the async workers.
    let read = crate::blocking::off_thread("reading the revision's files", move || {
        let snapshot = source.snapshot(&revision, &path)?;
        Ok::<_, SourceError>(manifest::read_cached(
            &snapshot.files,
            snapshot.problems,
            &snapshot.limits,
            keep_parsed.then(|| source.parse_cache()),
            threads,
        ))
    })
    .await?;
    match read {
        Ok(documents) => {
            tracing::debug!(env = %environment.name, parsed = documents.parsed_files, cached = documents.cached_files, "manifests read");
            Ok(documents)
        }
        Err(SourceError::MissingPath { .. }) => Ok(manifest::Documents::default()),
        Err(error) => Err(error.into()),
    }
}

/// Renders the environment at `revision` and reads the output as one manifest file named
/// after the command. A render that fails rejects the revision like a manifest problem.
async fn read_rendered(
    source: &GitSource,
    environment: &EnvironmentConfig,
    render: &RenderConfig,
    revision: &Revision,
) -> Result<manifest::Documents, DesiredError> {
    let renderer = Renderer::new(source.state_dir(), render.cache_max_bytes);
    match renderer
        .render(source, render, &environment.path, revision)
        .await
    {
        Ok(rendered) => {
            tracing::debug!(env = %environment.name, command = %rendered.command, cached = rendered.cached, bytes = rendered.output.len(), "rendered");
            let file = manifest::ManifestFile {
                path: format!("render `{}`", rendered.command),
                bytes: rendered.output,
                blob: None,
            };
            let limits = source.limits();
            // Parsing a large render is CPU work: off the async workers.
            Ok(
                crate::blocking::off_thread("parsing the render's output", move || {
                    manifest::read_limited(&[file], Vec::new(), &limits)
                })
                .await?,
            )
        }
        Err(RenderError::Failed(failure)) => Err(DesiredError::Manifests(ManifestErrors(vec![
            manifest::Problem::file(format!("render `{}`", failure.command), failure.message),
        ]))),
        Err(RenderError::Source(error)) => Err(DesiredError::Source(error)),
        Err(error) => Err(DesiredError::Render(error)),
    }
}

/// Settles namespaces, then holds every object to what the environment may touch: one
/// problem per object outside it, each with its file and document. Objects annotated
/// `gitopsd.io/hook` come back apart, as hooks (read before normalizing, which drops
/// gitopsd's own annotations).
#[allow(clippy::type_complexity)]
fn complete_located(
    documents: manifest::Documents,
    environment: &EnvironmentConfig,
    scopes: &Scopes,
) -> Result<(Vec<(Desired, manifest::Problem)>, Vec<ObjectHook>), DesiredError> {
    let options = ParseOptions {
        default_namespace: environment.namespace.clone(),
    };
    let located = documents
        .complete_located(&options, scopes)
        .map_err(DesiredError::Manifests)?;
    let strategy = environment.rollout.strategy;
    let refused: Vec<manifest::Problem> = located
        .iter()
        .filter_map(|(object, at)| {
            let message = match environment.policy.refusal(&object.key) {
                Some(why) => format!("not allowed in environment {}: {why}", environment.name),
                None => preview::strategy_problem(&object.key, &object.body, strategy)?,
            };
            Some(manifest::Problem {
                message,
                ..at.clone()
            })
        })
        .collect();
    let hook_problems = located.iter().filter_map(|(object, at)| {
        let message = match hooks::object_hook(&object.key, &object.body) {
            Err(problem) => problem,
            Ok(Some(_)) if matches!(environment.target, TargetConfig::Directory { .. }) => {
                "objects annotated gitopsd.io/hook run on a kubernetes target; a directory target cannot run them (use [[environment.hook]] commands)".into()
            }
            Ok(_) => return None,
        };
        Some(manifest::Problem {
            message,
            ..at.clone()
        })
    });
    let refused: Vec<manifest::Problem> = refused.into_iter().chain(hook_problems).collect();
    if !refused.is_empty() {
        return Err(DesiredError::Manifests(ManifestErrors(refused)));
    }
    let mut objects = Vec::new();
    let mut hooks = Vec::new();
    for (object, at) in located {
        match hooks::object_hook(&object.key, &object.body) {
            Ok(Some(hook)) => hooks.push(hook),
            // Refused above.
            Ok(None) | Err(_) => objects.push((Desired::from_object(object), at)),
        }
    }
    Ok((objects, hooks))
}

/// The revision's objects and, apart, its hooks (objects annotated `gitopsd.io/hook`, which
/// are never applied with the rest).
fn complete(
    documents: manifest::Documents,
    environment: &EnvironmentConfig,
    scopes: &Scopes,
) -> Result<(Vec<Desired>, Vec<ObjectHook>), DesiredError> {
    let (located, hooks) = complete_located(documents, environment, scopes)?;
    Ok((
        located.into_iter().map(|(desired, _)| desired).collect(),
        hooks,
    ))
}

/// Reads and validates an environment's desired objects at `revision`, with the scope of each
/// type as `target` knows it (discovery, for Kubernetes); its hook objects are left out.
pub async fn load_desired<T: Target>(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
    target: &T,
) -> Result<Vec<Desired>, DesiredError> {
    Ok(load_with_hooks(source, environment, revision, target)
        .await?
        .0)
}

/// Like [`load_desired`], with the revision's hook objects apart.
pub async fn load_with_hooks<T: Target>(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
    target: &T,
) -> Result<(Vec<Desired>, Vec<ObjectHook>), DesiredError> {
    let (documents, scopes) = documents_and_scopes(source, environment, revision, target).await?;
    complete(documents, environment, &scopes)
}

/// Like [`load_desired`], each object with the file and document it comes from.
pub async fn load_located<T: Target>(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
    target: &T,
) -> Result<Vec<(Desired, manifest::Problem)>, DesiredError> {
    let (documents, scopes) = documents_and_scopes(source, environment, revision, target).await?;
    Ok(complete_located(documents, environment, &scopes)?.0)
}

/// The documents at `revision`, read as `target` wants them kept, and the scopes of their types.
async fn documents_and_scopes<T: Target>(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
    target: &T,
) -> Result<(manifest::Documents, Scopes), DesiredError> {
    let (documents, _) = read_documents(
        source,
        environment,
        revision,
        target.keeps_parsed_files(),
        manifest::Threads::One,
        false,
    )
    .await?;
    let scopes = target
        .scopes(&documents.kinds())
        .await
        .map_err(DesiredError::Scopes)?;
    Ok((documents, scopes))
}

/// Like [`load_desired`], without a target to ask: built-in kinds and CRDs in the revision.
pub async fn load_desired_offline(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
) -> Result<Vec<Desired>, DesiredError> {
    Ok(load_offline_with_hooks(source, environment, revision)
        .await?
        .0)
}

/// Like [`load_desired_offline`], with the revision's hook objects apart.
pub async fn load_offline_with_hooks(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
) -> Result<(Vec<Desired>, Vec<ObjectHook>), DesiredError> {
    let loaded = load_keyless(
        source,
        environment,
        revision,
        None::<&crate::backend::AnyTarget>,
        false,
    )
    .await?;
    Ok((loaded.desired, loaded.hooks))
}

/// A revision's objects and hooks as `diff` and `validate` read them: SOPS documents whose key
/// file does not exist come back apart, unchecked.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub desired: Vec<Desired>,
    pub hooks: Vec<ObjectHook>,
    pub unchecked: Option<Unchecked>,
}

/// Like [`load_with_hooks`] (with `target`) or [`load_offline_with_hooks`] (without), and with
/// `keyless`, SOPS documents whose age key file does not exist set apart as [`Unchecked`]
/// instead of rejecting the revision (the daemon never reads keyless: it applies nothing it
/// could not decrypt).
pub async fn load_keyless<T: Target>(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
    target: Option<&T>,
    keyless: bool,
) -> Result<Loaded, DesiredError> {
    let (documents, unchecked) = match target {
        Some(target) => {
            read_documents(
                source,
                environment,
                revision,
                target.keeps_parsed_files(),
                manifest::Threads::One,
                keyless,
            )
            .await?
        }
        // Offline reads are commands comparing revisions, which share most files.
        None => {
            read_documents(
                source,
                environment,
                revision,
                true,
                manifest::Threads::EveryCore,
                keyless,
            )
            .await?
        }
    };
    let scopes = match target {
        Some(target) => target
            .scopes(&documents.kinds())
            .await
            .map_err(DesiredError::Scopes)?,
        None => Scopes::offline(),
    };
    let (desired, hooks) = complete(documents, environment, &scopes)?;
    Ok(Loaded {
        desired,
        hooks,
        unchecked,
    })
}

/// Why a revision with no objects may not be applied over live ones; `None` when it may.
pub fn empty_revision_problem(
    environment: &EnvironmentConfig,
    desired: usize,
    live: usize,
) -> Option<String> {
    (desired == 0 && live > 0 && !environment.allow_empty).then(|| {
        format!(
            "{} holds no objects at this revision while environment {} has {live} live; a mistyped or removed folder must not delete everything (set allow_empty = true if it should)",
            environment.path, environment.name
        )
    })
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests make their fixtures with files and git
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::backend::DirectoryTarget;
    use crate::config::Config;

    fn git(dir: &Path, args: &[&str]) -> String {
        let output = Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.com")
            .env("GIT_COMMITTER_NAME", "Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.com")
            .output()
            .expect("git runs because the test machines have it");
        assert!(output.status.success(), "git {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// A repository with the given files committed, fetched into a mirror; its environment
    /// `staging` reads `envs/staging` into namespace `web`, and may touch `web` and `web-*`.
    struct Repo {
        dir: tempfile::TempDir,
        source: GitSource,
        environment: EnvironmentConfig,
    }

    impl Repo {
        fn with(files: &[(&str, &str)]) -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let work = dir.path().join("work");
            std::fs::create_dir_all(&work).expect("work tree");
            git(&work, &["init", "-q", "-b", "main"]);
            for (path, text) in files {
                let path = work.join(path);
                std::fs::create_dir_all(path.parent().expect("a folder")).expect("folder");
                std::fs::write(path, text).expect("file");
            }
            git(&work, &["add", "-A"]);
            git(&work, &["commit", "-q", "--allow-empty", "-m", "files"]);
            let toml = format!(
                r#"
[repo]
url = "{root}/work"
[state]
dir = "{root}/state"
[[environment]]
name = "staging"
path = "envs/staging"
namespace = "web"
allowed_namespaces = ["web", "web-*"]
target = {{ type = "directory", path = "{root}/live" }}
"#,
                root = dir.path().display()
            );
            let config_path = dir.path().join("gitopsd.toml");
            std::fs::write(&config_path, toml).expect("config");
            let mut config = Config::load(&config_path).expect("the test config is valid");
            let source = GitSource::new(&config.repo, &config.state.dir);
            source.fetch().expect("the local repository fetches");
            Self {
                environment: config.environments.remove(0),
                source,
                dir,
            }
        }

        fn tip(&self) -> Revision {
            Revision(git(&self.dir.path().join("work"), &["rev-parse", "HEAD"]))
        }

        async fn desired(&self) -> Result<Vec<Desired>, DesiredError> {
            load_desired_offline(&self.source, &self.environment, &self.tip()).await
        }
    }

    const CONFIG_MAP: &str =
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n";

    #[tokio::test]
    async fn objects_without_a_namespace_get_the_environments_own() {
        let repo = Repo::with(&[("envs/staging/app.yaml", CONFIG_MAP)]);
        let desired = repo.desired().await.expect("valid");
        let keys: Vec<String> = desired.iter().map(|d| d.key.to_string()).collect();
        assert_eq!(keys, ["ConfigMap web/settings"]);
        assert_eq!(desired[0].body["metadata"]["namespace"], "web");
    }

    #[tokio::test]
    async fn a_revision_without_the_folder_reads_as_no_objects() {
        let repo = Repo::with(&[("envs/production/app.yaml", CONFIG_MAP)]);
        assert_eq!(repo.desired().await.expect("an empty revision").len(), 0);
        assert!(
            empty_revision_problem(&repo.environment, 0, 3).is_some(),
            "emptying live objects is refused"
        );
        assert_eq!(empty_revision_problem(&repo.environment, 0, 0), None);
        assert_eq!(empty_revision_problem(&repo.environment, 1, 3), None);
    }

    #[tokio::test]
    async fn an_object_outside_the_allowed_namespaces_is_refused_with_its_place() {
        let outside =
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: kube-system}\n";
        let repo = Repo::with(&[
            ("envs/staging/app.yaml", CONFIG_MAP),
            (
                "envs/staging/sneaky.yaml",
                &format!("{}---\n{outside}", CONFIG_MAP.replace("settings", "fine")),
            ),
        ]);
        let Err(DesiredError::Manifests(errors)) = repo.desired().await else {
            panic!("the revision is refused");
        };
        let problems: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(
                "envs/staging/sneaky.yaml: document 2 (line 5): ConfigMap kube-system/x: not allowed in environment staging: namespace \"kube-system\" is not allowed"
            ),
            "{problems:?}"
        );
    }

    #[tokio::test]
    async fn every_broken_document_is_named_at_once() {
        let repo = Repo::with(&[
            ("envs/staging/a.yaml", "kind: [unclosed\n"),
            ("envs/staging/b.yaml", "apiVersion: v1\nkind: ConfigMap\n"),
        ]);
        let Err(DesiredError::Manifests(errors)) = repo.desired().await else {
            panic!("the revision is refused");
        };
        let files: Vec<&str> = errors.0.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(files, ["envs/staging/a.yaml", "envs/staging/b.yaml"]);
    }

    #[tokio::test]
    async fn located_objects_carry_their_file_and_document() {
        let repo = Repo::with(&[(
            "envs/staging/app.yaml",
            &format!(
                "{CONFIG_MAP}---\n{}",
                CONFIG_MAP.replace("settings", "other")
            ),
        )]);
        let target = DirectoryTarget::new(repo.dir.path().join("live"), "staging");
        let located = load_located(&repo.source, &repo.environment, &repo.tip(), &target)
            .await
            .expect("valid");
        let places: Vec<(String, Option<usize>)> = located
            .iter()
            .map(|(desired, at)| (desired.key.name.clone(), at.document))
            .collect();
        assert_eq!(
            places,
            [("settings".into(), Some(1)), ("other".into(), Some(2))]
        );
        assert!(
            located
                .iter()
                .all(|(_, at)| at.file == "envs/staging/app.yaml")
        );
    }
}
