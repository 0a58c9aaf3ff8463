//! The subcommands: each takes a loaded config, does its job and returns the exit code.

use std::io::Write;
use std::path::Path;

use thiserror::Error;

use crate::backend::{AnyTarget, LiveSource, Target, TargetError};
use crate::config::{Config, ConfigError, EnvironmentConfig};
use crate::daemon::{self, Signals};
use crate::daemon_client::{self, AddressFileError};
use crate::desired::{DesiredError, Loaded, empty_revision_problem, load_keyless};
use crate::executor::Outcome;
use crate::journal::{self, Journal, JournalError};
use crate::journal_view;
use crate::model::Revision;
use crate::model::{KindRef, Object};
use crate::plan::{self, Desired};
use crate::plan::{Change, Plan};
use crate::report::{Colour, DiffReport, EnvironmentReport, ReportInput};
use crate::source::{GitSource, SourceError};
use crate::unchecked;
use std::collections::BTreeSet;

/// Exit code: success, no change, valid.
pub const EXIT_OK: u8 = 0;
/// Exit code: changes found (diff), problems found (validate), an environment failed (run).
pub const EXIT_CHANGES_OR_PROBLEMS: u8 = 1;
/// Exit code: the command could not do its job.
pub const EXIT_ERROR: u8 = 2;

#[derive(Debug, Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("no environment named {0:?} in the config")]
    UnknownEnvironment(String),
    #[error("environment {environment}: {source}")]
    Desired {
        environment: String,
        #[source]
        source: DesiredError,
    },
    #[error("environment {environment}: {source}")]
    Live {
        environment: String,
        #[source]
        source: TargetError,
    },
    #[error(transparent)]
    Render(#[from] crate::diff::RenderError),
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
}

/// `gitopsd run`: one pass with `once`, else the daemon until `shutdown`.
pub async fn run(config_path: &Path, config: Config, once: bool, signals: Signals) -> u8 {
    if !once {
        daemon::run(config_path, config, signals).await;
        return EXIT_OK;
    }
    if config.ha.is_some() {
        // One pass takes no Lease: it would act beside the daemon that holds each environment.
        tracing::error!(
            "run --once does not take part in [ha]: the daemons holding the environments' Leases act for them (set ha.enabled = false to run one pass here)"
        );
        return EXIT_ERROR;
    }
    let report = daemon::run_once(&config, signals.shutdown).await;
    for (environment, result) in &report.environments {
        match result {
            Ok(Outcome::Unchanged { revision }) => {
                tracing::info!(env = %environment, revision = %revision.short(), "up to date");
            }
            Ok(Outcome::Converged { revision, changes }) => {
                tracing::info!(env = %environment, revision = %revision.short(), changes = changes.len(), "drift put back");
            }
            Ok(Outcome::RolledOut { revision, changes }) => {
                tracing::info!(env = %environment, revision = %revision.short(), changes = changes.len(), "rolled out");
            }
            Ok(Outcome::Waiting { reason }) => {
                tracing::info!(env = %environment, %reason, "waiting");
            }
            Ok(Outcome::Pinned { revision }) => {
                tracing::info!(env = %environment, revision = %revision.short(), "pinned by a rollback");
            }
            Ok(Outcome::Held { failed, at }) => {
                tracing::warn!(env = %environment, failed = %failed.short(), at = %at.as_ref().map_or("nothing", |r| r.short()), "holding: the branch tip failed before");
            }
            Err(_) => tracing::error!(env = %environment, "pass failed"),
        }
    }
    if report.succeeded() {
        EXIT_OK
    } else {
        EXIT_CHANGES_OR_PROBLEMS
    }
}

/// Resolves revisions in the mirror, fetching at most once: when there is no mirror yet or a
/// revision is unknown locally.
pub(crate) struct Revisions {
    pub(crate) source: GitSource,
    fetched: bool,
}

impl Revisions {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            source: GitSource::new(&config.repo, &config.state.dir),
            fetched: false,
        }
    }

    async fn fetch(&mut self) -> Result<(), SourceError> {
        if !self.fetched {
            self.fetched = true;
            daemon::fetch(&self.source).await?;
        }
        Ok(())
    }

    /// Brings the mirror up to date; a failure is tolerated when a mirror exists.
    pub(crate) async fn refresh(&mut self) -> Result<(), SourceError> {
        match self.fetch().await {
            Err(error) if self.source.has_mirror() => {
                tracing::warn!(%error, "fetch failed; using the last fetched state");
                Ok(())
            }
            other => other,
        }
    }

    pub(crate) async fn resolve(&mut self, rev: Option<&str>) -> Result<Revision, SourceError> {
        let name = rev.unwrap_or(self.source.branch()).to_string();
        if !self.source.has_mirror() {
            self.fetch().await?;
        }
        match self.source.resolve(&name) {
            Err(SourceError::UnknownRevision { .. }) if !self.fetched => {
                self.fetch().await?;
                self.source.resolve(&name)
            }
            other => other,
        }
    }
}

fn selected<'a>(
    config: &'a Config,
    only: Option<&str>,
) -> Result<Vec<&'a EnvironmentConfig>, CommandError> {
    match only {
        Some(name) => config
            .environment(name)
            .map(|env| vec![env])
            .ok_or_else(|| CommandError::UnknownEnvironment(name.to_string())),
        None => Ok(config.environments.iter().collect()),
    }
}

/// Desired objects of an environment at a revision, with scopes from `target` when there is
/// one; a folder that does not exist there is an empty environment (added or removed by the
/// change being previewed). SOPS documents whose key file does not exist come back apart,
/// unchecked.
async fn desired_or_empty(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
    target: Option<&AnyTarget>,
) -> Result<Loaded, CommandError> {
    load_keyless(source, environment, revision, target, true)
        .await
        .map_err(|source| CommandError::Desired {
            environment: environment.name.clone(),
            source,
        })
}

/// Output format of `gitopsd diff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffOutput {
    Text(Colour),
    Markdown { max_bytes: usize },
    Json,
}

/// What `gitopsd diff` compares.
#[derive(Debug, Clone)]
pub struct DiffRequest<'a> {
    pub only: Option<&'a str>,
    pub rev: Option<&'a str>,
    /// `live`, or a revision to compare with offline.
    pub against: &'a str,
    pub output: DiffOutput,
}

/// Holds that would keep `revision` from rolling out in `environment`.
fn holds(config: &Config, environment: &EnvironmentConfig, revision: &Revision) -> Vec<String> {
    let path = Journal::path_for(&config.state.dir, &environment.name);
    let history = journal::load_history(&path).unwrap_or_default();
    let mut holds = Vec::new();
    let source = GitSource::new(&config.repo, &config.state.dir);
    if let Err(unverified) = source.verify(revision, history.last_healthy.as_ref()) {
        holds.push(format!(
            "not applied: {unverified} ([repo.verify]); {} stays at its last verified revision",
            environment.name
        ));
    }
    if history.failed.contains(revision) {
        holds.push(format!(
            "revision {} failed in {} before; it is held and will not be applied unless an operator runs gitopsd retry",
            revision.short(),
            environment.name
        ));
    }
    if history.paused {
        holds.push(format!(
            "{} is paused (gitopsd resume to continue)",
            environment.name
        ));
    }
    let gates = daemon::gates_for(environment, &config.state.dir);
    holds.extend(gates.holds(revision, &history.approved, chrono::Utc::now()));
    holds
}

/// The types an environment has used, from its journal.
fn inventory(config: &Config, environment: &EnvironmentConfig) -> BTreeSet<KindRef> {
    let path = Journal::path_for(&config.state.dir, &environment.name);
    journal::load_history(&path)
        .map(|history| history.kinds)
        .unwrap_or_default()
}

/// For targets that default fields (Kubernetes), replaces each update's desired body with what
/// a server-side dry run says the object would become, so the diff shows only real changes;
/// a drift the dry run shows is not there is dropped, one it confirms names its fields.
async fn dry_run_updates(target: &AnyTarget, plan: &mut Plan) -> Result<(), TargetError> {
    let mut kept = Vec::new();
    let mut unchanged = 0;
    for change in plan.changes.drain(..) {
        match change {
            Change::Update {
                mut desired,
                live,
                drift,
            } => match target.dry_run(&desired.key, &desired.body).await? {
                Some(result) => {
                    let result = crate::diff::normalize(&result);
                    if result == live {
                        unchanged += 1;
                    } else {
                        let drift = if drift.is_empty() {
                            drift
                        } else {
                            crate::diff::differing_fields(&live, &result)
                        };
                        desired.body = result;
                        kept.push(Change::Update {
                            desired,
                            live,
                            drift,
                        });
                    }
                }
                None => kept.push(Change::Update {
                    desired,
                    live,
                    drift,
                }),
            },
            other => kept.push(other),
        }
    }
    plan.changes = kept;
    plan.unchanged += unchanged;
    Ok(())
}

fn as_objects(desired: &[Desired]) -> Vec<Object> {
    desired
        .iter()
        .map(|d| Object {
            key: d.key.clone(),
            body: d.body.clone(),
        })
        .collect()
}

/// `gitopsd diff`: desired at `rev` against live state, or against another revision.
pub async fn diff(
    config: &Config,
    request: &DiffRequest<'_>,
    out: &mut dyn Write,
) -> Result<u8, CommandError> {
    let environments = selected(config, request.only)?;
    let mut revisions = Revisions::new(config);
    let mut reports = Vec::new();
    let mut note = None;
    if request.against == "live" {
        revisions.refresh().await?;
        let revision = revisions.resolve(request.rev).await?;
        for environment in environments {
            let (report, reason) =
                diff_live(config, environment, &revisions.source, &revision).await?;
            if let Some(reason) = reason {
                note.get_or_insert(unchecked::note(&reason));
            }
            reports.push(report);
        }
    } else {
        let old = revisions.resolve(Some(request.against)).await?;
        let new = revisions.resolve(request.rev).await?;
        for environment in environments {
            let before = desired_or_empty(&revisions.source, environment, &old, None).await?;
            let after = desired_or_empty(&revisions.source, environment, &new, None).await?;
            let (old_desired, new_desired) = (&before.desired, &after.desired);
            let plan = plan::compare_revisions(old_desired, new_desired);
            let hooks = announced_hooks(environment, &after.hooks, &new, &plan);
            let mut report = EnvironmentReport::build(ReportInput {
                environment: &environment.name,
                from: old.0.clone(),
                to: new.0.clone(),
                plan: &plan,
                desired: new_desired,
                live: &as_objects(old_desired),
                rollout: &environment.rollout,
                holds: holds(config, environment, &new),
                hooks,
            })?;
            if let Some((reason, encrypted)) =
                unchecked::between_loaded(&before, &after, Some(environment.namespace.as_str()))
            {
                report.encrypted = encrypted;
                note.get_or_insert(unchecked::note(&reason));
            }
            reports.push(report);
        }
    }
    let mut report = DiffReport::new(reports);
    report.note = note;
    match request.output {
        DiffOutput::Text(colour) => report.write_text(colour, out)?,
        DiffOutput::Markdown { max_bytes } => {
            out.write_all(report.to_markdown(max_bytes).as_bytes())?
        }
        DiffOutput::Json => writeln!(out, "{}", report.to_json()?)?,
    }
    Ok(if report.has_changes() {
        EXIT_CHANGES_OR_PROBLEMS
    } else {
        EXIT_OK
    })
}

/// One environment's report of what `revision` would change in its live state, as the daemon
/// would see it (an empty revision refused, suspected drift confirmed by a dry run), and why
/// SOPS documents went unchecked, if some did (their live objects are then left out of the
/// plan, and their ciphertext compared with the revision each was applied from).
async fn diff_live(
    config: &Config,
    environment: &EnvironmentConfig,
    source: &GitSource,
    revision: &Revision,
) -> Result<(EnvironmentReport, Option<String>), CommandError> {
    let live_error = |source| CommandError::Live {
        environment: environment.name.clone(),
        source,
    };
    let target = open_target(environment).await?;
    let loaded = desired_or_empty(source, environment, revision, Some(&target)).await?;
    let (desired, hook_objects) = (&loaded.desired, &loaded.hooks);
    let mut kinds = inventory(config, environment);
    kinds.extend(desired.iter().filter_map(|d| KindRef::of(&d.body)));
    if let Some(unchecked) = &loaded.unchecked {
        kinds.extend(unchecked::kinds(&unchecked.documents));
    }
    let mut live = target.list(&kinds).await.map_err(live_error)?;
    let encrypted = match &loaded.unchecked {
        Some(unchecked) => {
            Some(unchecked::against(source, environment, unchecked, &mut live).await)
        }
        None => None,
    };
    let mut plan = plan::plan(desired, &live, environment.prune, target.compare());
    let mut holds = holds(config, environment, revision);
    let unchecked = loaded.unchecked.as_ref().map_or(0, |u| u.documents.len());
    if let Some(problem) =
        empty_revision_problem(environment, desired.len() + unchecked, live.len())
    {
        // What the daemon would do: refuse, and delete nothing.
        holds.insert(0, format!("rejected: {problem}"));
        plan = plan::Plan::default();
    }
    dry_run_updates(&target, &mut plan)
        .await
        .map_err(live_error)?;
    let hooks = announced_hooks(environment, hook_objects, revision, &plan);
    let mut report = EnvironmentReport::build(ReportInput {
        environment: &environment.name,
        from: "live".into(),
        to: revision.0.clone(),
        plan: &plan,
        desired,
        live: &live,
        rollout: &environment.rollout,
        holds,
        hooks,
    })?;
    let reason = encrypted.map(|(reason, reports)| {
        report.encrypted = reports;
        reason
    });
    Ok((report, reason))
}

/// The hooks a rollout of `revision` would run; none when it changes nothing (no rollout).
fn announced_hooks(
    environment: &EnvironmentConfig,
    objects: &[crate::hooks::ObjectHook],
    revision: &Revision,
    plan: &plan::Plan,
) -> Vec<String> {
    if plan.is_empty() {
        return Vec::new();
    }
    crate::hooks::announce_all(&environment.hooks, objects, revision)
}

/// Opens `environment`'s target; failing to is its live state being out of reach.
pub(crate) async fn open_target(
    environment: &EnvironmentConfig,
) -> Result<AnyTarget, CommandError> {
    AnyTarget::open(
        &environment.target,
        &environment.name,
        &environment.source,
        &environment.namespace,
        LiveSource::List,
    )
    .await
    .map_err(|source| CommandError::Live {
        environment: environment.name.clone(),
        source,
    })
}

/// `gitopsd history`: every journal record, per environment; with `stats`, the delivery
/// figures computed from them.
pub fn history(
    config: &Config,
    only: Option<&str>,
    stats: bool,
    out: &mut dyn Write,
) -> Result<u8, CommandError> {
    let source = GitSource::new(&config.repo, &config.state.dir);
    for environment in selected(config, only)? {
        let records = journal::load_all(&config.state.dir, &environment.name)?;
        if stats {
            let figures = crate::stats::DeliveryStats::compute(&records, |r| source.commit_time(r));
            write!(out, "{}\n{figures}", environment.name)?;
        } else {
            journal_view::write_history(&records, out)?;
        }
    }
    Ok(EXIT_OK)
}

/// `gitopsd status`: each environment's revisions, rollout in flight and failures.
pub async fn status(
    config: &Config,
    only: Option<&str>,
    out: &mut dyn Write,
) -> Result<u8, CommandError> {
    // What only the running daemon knows (its watch cache), when one answers.
    let live = daemon_client::status(config).await;
    for environment in selected(config, only)? {
        let path = Journal::path_for(&config.state.dir, &environment.name);
        let live_here = live.as_ref().and_then(|live| live.get(&environment.name));
        // `[ha]`: another daemon acts for it, from the history the cluster keeps.
        let history = match live_here.and_then(|live| live.cluster_history.clone()) {
            Some(history) => history,
            None => journal::load_history(&path)?,
        };
        journal_view::write_status(&environment.name, &history, out)?;
        if let Some(live) = live_here {
            daemon_client::write_live(live, out)?;
        }
    }
    Ok(EXIT_OK)
}

/// A control action for the running daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAction {
    Approve(String),
    Pause,
    Resume,
    Retry,
    Rollback(String),
}

impl ControlAction {
    fn name(&self) -> &'static str {
        match self {
            ControlAction::Approve(_) => "approve",
            ControlAction::Pause => "pause",
            ControlAction::Resume => "resume",
            ControlAction::Retry => "retry",
            ControlAction::Rollback(_) => "rollback",
        }
    }

    fn body(&self) -> serde_json::Value {
        match self {
            ControlAction::Approve(revision) => serde_json::json!({ "revision": revision }),
            ControlAction::Rollback(to) => serde_json::json!({ "to": to }),
            ControlAction::Pause | ControlAction::Resume | ControlAction::Retry => {
                serde_json::json!({})
            }
        }
    }
}

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("the config has no [api] section: the daemon has no API to talk to")]
    NoApi,
    #[error("the config has no api.token_file: control requests need its token")]
    NoToken,
    #[error("cannot read the api token file {}: {source}", path.display())]
    Token {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("api.listen has port 0 and the running daemon's address cannot be read from {} (is the daemon running?): {source}", path.display())]
    NoAddress {
        path: std::path::PathBuf,
        #[source]
        source: AddressFileError,
    },
    #[error("cannot reach the daemon at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("the daemon refused: {status}: {message}")]
    Refused { status: u16, message: String },
}

/// `gitopsd approve|pause|resume|retry|rollback`: one POST to the running daemon's API.
pub async fn control(
    config: &Config,
    environment: &str,
    action: ControlAction,
    out: &mut dyn Write,
) -> Result<u8, ControlError> {
    let api = config.api.as_ref().ok_or(ControlError::NoApi)?;
    let path = api.token_file.as_ref().ok_or(ControlError::NoToken)?;
    let token = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| ControlError::Token {
            path: path.clone(),
            source,
        })?;
    let address = daemon_client::address(config, api)
        .await
        .map_err(|(path, source)| ControlError::NoAddress { path, source })?;
    let url = format!(
        "http://{address}/api/v1/environments/{environment}/{}",
        action.name()
    );
    let unreachable = |message: String| ControlError::Unreachable {
        url: url.clone(),
        message,
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let response = client
        .post(&url)
        .bearer_auth(token.trim())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(action.body().to_string())
        .send()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if !status.is_success() {
        return Err(ControlError::Refused {
            status: status.as_u16(),
            message: body["error"].as_str().map_or_else(
                || String::from_utf8_lossy(&bytes).to_string(),
                str::to_string,
            ),
        });
    }
    // 202: `[ha]`, another daemon holds the environment and acts on it.
    let forwarded = if status == reqwest::StatusCode::ACCEPTED {
        " (forwarded to the daemon holding the environment)"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "{}: {} {}{forwarded}",
        environment,
        action.name(),
        body["revision"].as_str().unwrap_or("")
    );
    Ok(EXIT_OK)
}
