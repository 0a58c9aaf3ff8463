//! `gitopsd validate`: the config alone, or each environment's revision parsed, checked and
//! (with `--server`) dry-run against its cluster.

use std::io::Write;
use std::path::Path;

use crate::backend::{AnyTarget, TargetError};
use crate::commands::{CommandError, EXIT_CHANGES_OR_PROBLEMS, EXIT_OK, Revisions, open_target};
use crate::config::{Config, ConfigError, EnvironmentConfig};
use crate::desired::{DesiredError, Loaded, load_keyless, load_located};
use crate::dry_run::{Made, dry_run_all};
use crate::manifest::ManifestErrors;
use crate::model::Revision;
use crate::source::GitSource;
use crate::unchecked;

/// `gitopsd validate --config-only`: the config file alone, every problem at once.
pub fn validate_config(config_path: &Path, out: &mut dyn Write) -> Result<u8, CommandError> {
    match Config::load(config_path) {
        Ok(config) => {
            writeln!(
                out,
                "ok: {}: {} environments",
                config_path.display(),
                config.environments.len()
            )?;
            Ok(EXIT_OK)
        }
        Err(error @ ConfigError::Invalid { .. }) => {
            writeln!(out, "{error}")?;
            Ok(EXIT_CHANGES_OR_PROBLEMS)
        }
        Err(error) => Err(error.into()),
    }
}

/// `gitopsd validate`: the config, then every environment's manifests at `rev`; with
/// `server`, a server-side dry run of every object on each environment's cluster.
pub async fn validate(
    config_path: &Path,
    rev: Option<&str>,
    server: bool,
    out: &mut dyn Write,
) -> Result<u8, CommandError> {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(error @ ConfigError::Invalid { .. }) => {
            writeln!(out, "{error}")?;
            return Ok(EXIT_CHANGES_OR_PROBLEMS);
        }
        Err(error) => return Err(error.into()),
    };
    let mut revisions = Revisions::new(&config);
    if rev.is_none() {
        revisions.refresh().await?;
    }
    let revision = revisions.resolve(rev).await?;
    let mut invalid = false;
    match revisions.source.verify(&revision, None) {
        Ok(None) => {}
        Ok(Some(signer)) => writeln!(out, "verify: {}: signed by {}", revision.short(), signer.0)?,
        Err(unverified) => {
            invalid = true;
            writeln!(
                out,
                "invalid: {}: {unverified}; gitopsd will not apply it ([repo.verify])",
                revision.short()
            )?;
        }
    }
    let mut note = None;
    for environment in &config.environments {
        let valid = validate_environment(
            environment,
            &revisions.source,
            &revision,
            server,
            &mut note,
            out,
        )
        .await?;
        invalid |= !valid;
    }
    if let Some(note) = note {
        writeln!(out, "{note}")?;
    }
    Ok(if invalid {
        EXIT_CHANGES_OR_PROBLEMS
    } else {
        EXIT_OK
    })
}

/// One environment's part of `gitopsd validate`: whether it is valid, each finding written to
/// `out`. Without `server`, SOPS documents whose key file does not exist are counted as not
/// checked, and `note` says why (once, for every environment).
async fn validate_environment(
    environment: &EnvironmentConfig,
    source: &GitSource,
    revision: &Revision,
    server: bool,
    note: &mut Option<String>,
    out: &mut dyn Write,
) -> Result<bool, CommandError> {
    let loaded = load_keyless(source, environment, revision, None::<&AnyTarget>, !server).await;
    let unchecked = match &loaded {
        Ok(Loaded {
            unchecked: Some(unchecked),
            ..
        }) => {
            note.get_or_insert_with(|| unchecked::note(&unchecked.reason));
            unchecked.documents.len()
        }
        _ => 0,
    };
    let (name, short) = (&environment.name, revision.short());
    match loaded.map(|loaded| loaded.desired) {
        Ok(desired) if desired.is_empty() && unchecked == 0 && !environment.allow_empty => {
            writeln!(
                out,
                "invalid: {name} at {short}: {} holds no objects; gitopsd rejects this revision while the environment has live objects (set allow_empty = true if it should delete them)",
                environment.path
            )?;
            Ok(false)
        }
        Ok(_) if server => validate_on_server(environment, source, revision, out).await,
        Ok(desired) if unchecked > 0 => {
            writeln!(
                out,
                "ok: {name} at {short}: {} objects, {unchecked} SOPS documents encrypted, not checked",
                desired.len()
            )?;
            Ok(true)
        }
        Ok(desired) => {
            writeln!(out, "ok: {name} at {short}: {} objects", desired.len())?;
            Ok(true)
        }
        Err(DesiredError::Manifests(errors)) => {
            write_invalid(out, environment, revision, &errors)?;
            Ok(false)
        }
        Err(source) => Err(CommandError::Desired {
            environment: environment.name.clone(),
            source,
        }),
    }
}

fn write_invalid(
    out: &mut dyn Write,
    environment: &EnvironmentConfig,
    revision: &Revision,
    errors: &ManifestErrors,
) -> std::io::Result<()> {
    writeln!(
        out,
        "invalid: {} at {}: {errors}",
        environment.name,
        revision.short()
    )
}

/// Dry-runs an environment's objects on its target; false when the server refuses any.
async fn validate_on_server(
    environment: &EnvironmentConfig,
    source: &GitSource,
    revision: &Revision,
    out: &mut dyn Write,
) -> Result<bool, CommandError> {
    let live_error = |source: TargetError| CommandError::Live {
        environment: environment.name.clone(),
        source,
    };
    let target = open_target(environment).await?;
    if matches!(target, AnyTarget::Directory(_)) {
        writeln!(
            out,
            "ok: {} at {}: a directory target has no server to dry-run on",
            environment.name,
            revision.short()
        )?;
        return Ok(true);
    }
    let located = match load_located(source, environment, revision, &target).await {
        Ok(located) => located,
        Err(DesiredError::Manifests(errors)) => {
            write_invalid(out, environment, revision, &errors)?;
            return Ok(false);
        }
        Err(source) => {
            return Err(CommandError::Desired {
                environment: environment.name.clone(),
                source,
            });
        }
    };
    let made = Made {
        namespace: environment
            .create_namespace
            .then_some(environment.namespace.as_str()),
    };
    let report = dry_run_all(&target, &environment.name, revision, &located, &made)
        .await
        .map_err(live_error)?;
    if !report.problems.is_empty() {
        write_invalid(out, environment, revision, &ManifestErrors(report.problems))?;
        return Ok(false);
    }
    writeln!(
        out,
        "ok: {} at {}: {} objects, {} accepted by a server-side dry run{}{}",
        environment.name,
        revision.short(),
        located.len(),
        report.accepted,
        match &report.will_create {
            Some(namespace) => format!(", namespace {namespace} will be created"),
            None => String::new(),
        },
        if report.unchecked.is_empty() {
            String::new()
        } else {
            format!(
                ", {} not checked yet ({})",
                report.unchecked.len(),
                report.unchecked.join("; ")
            )
        }
    )?;
    Ok(true)
}
