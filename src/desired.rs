//! A revision's desired state: the environment's files at that revision (read from git or
//! rendered), parsed, given their namespaces and held to the environment's policy.

use thiserror::Error;

use crate::backend::{Target, TargetError};
use crate::config::EnvironmentConfig;
use crate::manifest::{self, ManifestErrors, ParseOptions, Scopes};
use crate::model::Revision;
use crate::plan::Desired;
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
/// as no documents (an empty revision, which the pass then judges).
async fn read_documents(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
    keep_parsed: bool,
    threads: manifest::Threads,
) -> Result<manifest::Documents, DesiredError> {
    if let Some(render) = &environment.render {
        return read_rendered(source, environment, render, revision).await;
    }
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
/// problem per object outside it, each with its file and document.
fn complete_located(
    documents: manifest::Documents,
    environment: &EnvironmentConfig,
    scopes: &Scopes,
) -> Result<Vec<(Desired, manifest::Problem)>, DesiredError> {
    let options = ParseOptions {
        default_namespace: environment.namespace.clone(),
    };
    let located = documents
        .complete_located(&options, scopes)
        .map_err(DesiredError::Manifests)?;
    let refused: Vec<manifest::Problem> = located
        .iter()
        .filter_map(|(object, at)| {
            let why = environment.policy.refusal(&object.key)?;
            Some(manifest::Problem {
                message: format!("not allowed in environment {}: {why}", environment.name),
                ..at.clone()
            })
        })
        .collect();
    if !refused.is_empty() {
        return Err(DesiredError::Manifests(ManifestErrors(refused)));
    }
    Ok(located
        .into_iter()
        .map(|(object, at)| (Desired::from_object(object), at))
        .collect())
}

fn complete(
    documents: manifest::Documents,
    environment: &EnvironmentConfig,
    scopes: &Scopes,
) -> Result<Vec<Desired>, DesiredError> {
    Ok(complete_located(documents, environment, scopes)?
        .into_iter()
        .map(|(desired, _)| desired)
        .collect())
}

/// Reads and validates an environment's desired objects at `revision`, with the scope of each
/// type as `target` knows it (discovery, for Kubernetes).
pub async fn load_desired<T: Target>(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
    target: &T,
) -> Result<Vec<Desired>, DesiredError> {
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
    complete_located(documents, environment, &scopes)
}

/// The documents at `revision`, read as `target` wants them kept, and the scopes of their types.
async fn documents_and_scopes<T: Target>(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
    target: &T,
) -> Result<(manifest::Documents, Scopes), DesiredError> {
    let documents = read_documents(
        source,
        environment,
        revision,
        target.keeps_parsed_files(),
        manifest::Threads::One,
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
    // Offline reads are commands comparing revisions, which share most files.
    let documents = read_documents(
        source,
        environment,
        revision,
        true,
        manifest::Threads::EveryCore,
    )
    .await?;
    complete(documents, environment, &Scopes::offline())
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
