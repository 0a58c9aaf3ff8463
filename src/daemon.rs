//! The long-running loop: fetch on a schedule or on a ref change, reconcile every environment
//! in its own task, keep the last snapshot when a fetch fails, stop cleanly on request.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::{Config, EnvironmentConfig, TargetConfig};
use crate::executor::{EnvironmentRun, Outcome, ReconcileError};
use crate::journal::Journal;
use crate::model::Revision;
use crate::probe::Prober;
use crate::source::watch::watch_refs;
use crate::source::{Fetched, GitSource, SourceError};
use crate::target::DirectoryTarget;

/// Longest wait between retries of a failing fetch.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Pause after a ref change so git finishes writing before we fetch.
const SETTLE: Duration = Duration::from_millis(100);

/// Result of one pass over every environment (`run --once`).
#[derive(Debug)]
pub struct PassReport {
    /// Set when the fetch failed; environments then used the mirror's last snapshot, if any.
    pub fetch_error: Option<SourceError>,
    pub environments: Vec<(String, Result<Outcome, ReconcileError>)>,
}

impl PassReport {
    pub fn succeeded(&self) -> bool {
        self.fetch_error.is_none() && self.environments.iter().all(|(_, result)| result.is_ok())
    }
}

/// Fetches on a blocking thread.
pub async fn fetch(source: &GitSource) -> Result<Fetched, SourceError> {
    let source = source.clone();
    tokio::task::spawn_blocking(move || source.fetch())
        .await
        .map_err(|error| SourceError::Fetch {
            url: "(worker thread)".into(),
            message: error.to_string(),
        })?
}

fn log_fetched(fetched: &Fetched) {
    if fetched.force_pushed {
        tracing::warn!(
            previous = %fetched.previous.as_ref().map_or("", |r| r.short()),
            tip = %fetched.tip.short(),
            "branch was force-pushed: the previous commit is not an ancestor of the new one"
        );
    }
    if fetched.previous.as_ref() != Some(&fetched.tip) {
        tracing::info!(revision = %fetched.tip.short(), "new revision");
    }
}

/// One environment's target, journal and check runner.
struct EnvironmentRuntime {
    config: EnvironmentConfig,
    target: DirectoryTarget,
    journal: Journal,
    prober: Prober,
}

impl EnvironmentRuntime {
    fn open(config: EnvironmentConfig, state_dir: &Path) -> Result<Self, ReconcileError> {
        let journal = Journal::open(state_dir, &config.name)?;
        let target = match &config.target {
            TargetConfig::Directory { path } => DirectoryTarget::new(path, &config.name),
        };
        let prober = Prober::new().map_err(|e| ReconcileError::Worker(e.to_string()))?;
        Ok(Self {
            config,
            target,
            journal,
            prober,
        })
    }

    async fn pass(
        &mut self,
        source: &GitSource,
        tip: &Revision,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Outcome, ReconcileError> {
        EnvironmentRun {
            config: &self.config,
            source,
            target: &self.target,
            journal: &mut self.journal,
            prober: &self.prober,
            shutdown,
        }
        .pass(tip)
        .await
    }
}

/// One fetch, then every environment reconciled concurrently; `shutdown` stops rollouts in
/// flight.
pub async fn run_once(config: &Config, shutdown: watch::Receiver<bool>) -> PassReport {
    let source = GitSource::new(&config.repo, &config.state.dir);
    let (tip, fetch_error) = match fetch(&source).await {
        Ok(fetched) => {
            log_fetched(&fetched);
            (Some(fetched.tip), None)
        }
        Err(error) => {
            tracing::error!(%error, "fetch failed");
            (source.branch_tip().ok().flatten(), Some(error))
        }
    };
    let mut tasks = JoinSet::new();
    if let Some(tip) = tip {
        for environment in config.environments.clone() {
            let source = source.clone();
            let state_dir = config.state.dir.clone();
            let tip = tip.clone();
            let shutdown = shutdown.clone();
            let span = tracing::info_span!("environment", env = %environment.name);
            tasks.spawn(
                async move {
                    let name = environment.name.clone();
                    let result = match EnvironmentRuntime::open(environment, &state_dir) {
                        Ok(mut runtime) => runtime.pass(&source, &tip, shutdown).await,
                        Err(error) => Err(error),
                    };
                    if let Err(error) = &result {
                        tracing::error!(%error, "reconcile failed");
                    }
                    (name, result)
                }
                .instrument(span),
            );
        }
    }
    let mut environments = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(report) => environments.push(report),
            Err(error) => tracing::error!(%error, "environment task failed"),
        }
    }
    environments.sort_by(|a, b| a.0.cmp(&b.0));
    PassReport {
        fetch_error,
        environments,
    }
}

/// Runs until `shutdown` turns true: polls every `poll_interval` (sooner when a local
/// repository's refs change), and hands each new tip to the environment tasks.
pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) {
    let source = GitSource::new(&config.repo, &config.state.dir);
    let (tips, tip_receiver) = watch::channel::<Option<Revision>>(None);
    let mut tasks = JoinSet::new();
    for environment in config.environments.clone() {
        let span = tracing::info_span!("environment", env = %environment.name);
        tasks.spawn(
            environment_loop(
                environment,
                source.clone(),
                config.state.dir.clone(),
                tip_receiver.clone(),
                shutdown.clone(),
            )
            .instrument(span),
        );
    }
    drop(tip_receiver);

    let (wake, mut woken) = mpsc::channel(1);
    let _ref_watcher = config.repo.local_path.as_deref().and_then(|path| {
        watch_refs(path, wake)
            .inspect_err(|error| {
                tracing::warn!(%error, repo = %path.display(), "cannot watch the repository; relying on polling");
            })
            .ok()
    });

    let mut failures: u32 = 0;
    loop {
        let delay = match fetch(&source).await {
            Ok(fetched) => {
                failures = 0;
                log_fetched(&fetched);
                tips.send_replace(Some(fetched.tip));
                config.repo.poll_interval
            }
            Err(error) => {
                failures += 1;
                let retry = Duration::from_secs(1u64 << failures.min(9)).min(MAX_BACKOFF);
                tracing::warn!(%error, retry_in = ?retry, "fetch failed; keeping the last snapshot");
                let last = tips
                    .borrow()
                    .clone()
                    .or_else(|| source.branch_tip().ok().flatten());
                // Environments still re-check live state against the last snapshot.
                tips.send_replace(last);
                retry
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            Some(()) = woken.recv() => {
                tokio::time::sleep(SETTLE).await;
                while woken.try_recv().is_ok() {}
                tracing::debug!("repository refs changed");
            }
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
    }
    tracing::info!("stopping: waiting for reconciles in flight");
    drop(tips);
    while tasks.join_next().await.is_some() {}
    tracing::info!("stopped");
}

async fn environment_loop(
    environment: EnvironmentConfig,
    source: GitSource,
    state_dir: PathBuf,
    mut tips: watch::Receiver<Option<Revision>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut runtime = match EnvironmentRuntime::open(environment, &state_dir) {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "environment disabled: cannot open its journal");
            return;
        }
    };
    let mut last_error = None;
    loop {
        tokio::select! {
            changed = tips.changed() => if changed.is_err() { break },
            _ = shutdown.changed() => break,
        }
        let Some(revision) = tips.borrow_and_update().clone() else {
            continue;
        };
        match runtime.pass(&source, &revision, shutdown.clone()).await {
            Ok(_) => last_error = None,
            Err(error) => {
                // The same failure every poll is logged once.
                let message = error.to_string();
                if last_error.as_ref() != Some(&message) {
                    tracing::error!(error = %message, "reconcile failed");
                    last_error = Some(message);
                }
            }
        }
    }
}
