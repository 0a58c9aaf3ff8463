//! The long-running loop: fetch on a schedule or on a ref change, reconcile every environment
//! in its own task, keep the last snapshot when a fetch fails, stop cleanly on request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::backend::{AnyTarget, Target as _};
use crate::config::WindowConfig;
use crate::config::{Config, EnvironmentConfig, StateConfig};
use crate::config_watch::watch_config;
use crate::executor::{Effects, EnvironmentRun, Outcome, ReconcileError};
use crate::gates::Gates;
use crate::heartbeat::{BEAT_INTERVAL, Heartbeat, Heartbeats};
use crate::journal::{self, Journal, SharedJournal};
use crate::metrics::Metrics;
use crate::model::Revision;
use crate::probe::Prober;
use crate::server::{self, ApiState, Controls, EnvironmentHandle, Reloadable};
use crate::source::watch::watch_refs;
use crate::source::{Fetched, GitSource, SourceError};
use crate::systemd::Systemd;
use crate::webhook::{Delivery, Notifier};

/// Longest wait between retries of a failing fetch.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long stopping waits for queued webhook notifications.
const WEBHOOK_FLUSH: Duration = Duration::from_secs(20);
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
    fetch_until(source, None).await
}

/// Fetches on a worker thread, interrupting it (gix's interrupt flag) after the source's
/// `fetch_timeout` or when `shutdown` turns true, so a remote that stops answering never holds
/// the daemon.
pub async fn fetch_until(
    source: &GitSource,
    shutdown: Option<watch::Receiver<bool>>,
) -> Result<Fetched, SourceError> {
    let interrupt = Arc::new(AtomicBool::new(false));
    let timeout = source.fetch_timeout();
    let mut worker = {
        let source = source.clone();
        let interrupt = interrupt.clone();
        tokio::task::spawn_blocking(move || source.fetch_with(&interrupt))
    };
    let stopped = async move {
        match shutdown {
            Some(mut shutdown) => {
                while !*shutdown.borrow_and_update() {
                    if shutdown.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    let gave_up = tokio::select! {
        joined = &mut worker => {
            return joined.map_err(|error| SourceError::Fetch {
                url: "(worker thread)".into(),
                message: error.to_string(),
            })?;
        }
        _ = tokio::time::sleep(timeout) => format!(
            "no answer within {} (repo.fetch_timeout); the fetch was interrupted",
            humantime::format_duration(timeout)
        ),
        _ = stopped => "stopped by shutdown".to_string(),
    };
    interrupt.store(true, Ordering::Relaxed);
    // The flag stops a transfer in progress; a connection that never answers is left to its
    // worker thread, which ends with it.
    Err(SourceError::Fetch {
        url: source.url().to_string(),
        message: gave_up,
    })
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
    state_dir: PathBuf,
    target: AnyTarget,
    journal: SharedJournal,
    prober: Prober,
    /// What the last pass that found nothing to do saw; see [`Quiet`].
    quiet: Option<Quiet>,
}

/// A pass found the target at `revision` with nothing to change: while the branch tip, the
/// journal and the target's fingerprint stay the same, the next pass would find the same, so
/// it is skipped without parsing or listing anything.
#[derive(Debug, Clone, PartialEq)]
struct Quiet {
    revision: Revision,
    journal_seq: u64,
    fingerprint: String,
}

impl EnvironmentRuntime {
    async fn open(config: EnvironmentConfig, state: &StateConfig) -> Result<Self, ReconcileError> {
        let state_dir = &state.dir;
        let journal = SharedJournal::new(crate::blocking::run(|| {
            Journal::open_with(state_dir, &config.name, state.journal)
        })?);
        let target = AnyTarget::open(
            &config.target,
            &config.name,
            &config.source,
            &config.namespace,
        )
        .await
        .map_err(ReconcileError::Live)?;
        let prober = Prober::new(&config.health)?;
        Ok(Self {
            config,
            state_dir: state_dir.to_path_buf(),
            target,
            journal,
            prober,
            quiet: None,
        })
    }

    fn gates(&self) -> Gates {
        gates_for(&self.config, &self.state_dir)
    }

    async fn pass(
        &mut self,
        source: &GitSource,
        tip: &Revision,
        shutdown: watch::Receiver<bool>,
        heartbeat: Heartbeat,
        observers: &Observers,
    ) -> Result<Outcome, ReconcileError> {
        let started = std::time::Instant::now();
        // Taken before the pass, so that a change made while it runs shows in the next one.
        let fingerprint = match self.target.fingerprint().await {
            Ok(fingerprint) => fingerprint,
            Err(error) => {
                tracing::debug!(%error, "no fingerprint of the target; the pass lists it");
                None
            }
        };
        let journal_seq = self.journal.next_seq();
        let seen = fingerprint.map(|fingerprint| Quiet {
            revision: tip.clone(),
            journal_seq,
            fingerprint,
        });
        if seen.is_some() && seen == self.quiet {
            tracing::debug!(revision = %tip.short(), "branch tip, journal and target unchanged; nothing to do");
            let result = Ok(Outcome::Unchanged {
                revision: tip.clone(),
            });
            self.record(&result, started.elapsed(), &observers.metrics);
            return result;
        }
        // Reads the upstream environment's journal file.
        let gates = crate::blocking::run(|| self.gates());
        let result = EnvironmentRun {
            fx: Effects {
                config: &self.config,
                target: &self.target,
                journal: &self.journal,
                checks: &self.prober,
                shutdown,
                heartbeat,
                metrics: &observers.metrics,
                notifier: &observers.notifier,
                live_templates: Default::default(),
            },
            source,
            gates: &gates,
        }
        .pass(tip)
        .await;
        self.quiet = match &result {
            Ok(Outcome::Unchanged { revision }) if revision == tip => {
                seen.filter(|seen| seen.journal_seq == self.journal.next_seq())
            }
            _ => None,
        };
        self.record(&result, started.elapsed(), &observers.metrics);
        crate::memory::release_freed_memory();
        result
    }

    fn record(&self, result: &Result<Outcome, ReconcileError>, took: Duration, metrics: &Metrics) {
        let name = &self.config.name;
        metrics.reconciled(name, took);
        match result {
            Ok(Outcome::RolledOut { .. }) => metrics.rollout(name, "healthy"),
            Err(ReconcileError::RolledBack { .. }) => metrics.rollout(name, "reverted"),
            Err(ReconcileError::FirstDeployFailed { .. }) => metrics.rollout(name, "failed"),
            _ => {}
        }
        if let Some(current) = self.journal.with_history(|history| history.current.clone()) {
            metrics.at_revision(name, &current.0);
        }
        if matches!(
            result,
            Ok(Outcome::Unchanged { .. } | Outcome::Converged { .. } | Outcome::RolledOut { .. })
        ) {
            metrics.succeeded(name, chrono::Utc::now().timestamp());
        }
    }
}

/// An environment's gates as they stand now: the upstream environment's journal is read
/// afresh.
pub fn gates_for(environment: &EnvironmentConfig, state_dir: &Path) -> Gates {
    let upstream = environment.after.as_ref().map(|upstream| {
        let path = Journal::path_for(state_dir, upstream);
        let healthy = journal::load_history(&path)
            .map(|history| history.healthy)
            .unwrap_or_default();
        (upstream.clone(), healthy)
    });
    Gates {
        window: environment.window.as_ref().map(WindowConfig::window),
        upstream,
        manual_approval: environment.manual_approval,
    }
}

/// Where a pass reports what happened: metrics and webhooks.
#[derive(Debug, Clone)]
pub struct Observers {
    pub metrics: Arc<Metrics>,
    pub notifier: Notifier,
}

/// Environments in waves: each wave only waits (`after`) for environments of earlier waves,
/// so one pass can carry a revision from staging to production.
fn waves(environments: &[EnvironmentConfig]) -> Vec<Vec<EnvironmentConfig>> {
    let mut done: Vec<String> = Vec::new();
    let mut left: Vec<EnvironmentConfig> = environments.to_vec();
    let mut waves = Vec::new();
    while !left.is_empty() {
        let (ready, waiting): (Vec<_>, Vec<_>) = left
            .into_iter()
            .partition(|env| env.after.as_ref().is_none_or(|up| done.contains(up)));
        if ready.is_empty() {
            // Config validation rules out cycles; run the rest together rather than never.
            waves.push(waiting);
            break;
        }
        done.extend(ready.iter().map(|env| env.name.clone()));
        waves.push(ready);
        left = waiting;
    }
    waves
}

/// Removes the folders of renders whose process died (a crash, a SIGKILL), off the async
/// workers (a recursive delete).
async fn clean_render_leftovers(config: &Config) {
    if config.environments.iter().all(|e| e.render.is_none()) {
        return;
    }
    let renderer = crate::render::Renderer::new(&config.state.dir, 0);
    let cleaned =
        crate::blocking::off_thread("removing render leftovers", move || renderer.clean_stale())
            .await;
    match cleaned {
        Ok(Ok(0)) => {}
        Ok(Ok(removed)) => tracing::info!(removed, "removed folders left by interrupted renders"),
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot remove folders left by interrupted renders")
        }
        Err(error) => tracing::warn!(%error, "cannot remove folders left by interrupted renders"),
    }
}

/// The branch tip the mirror holds, read off the async workers; `None` when it has none or
/// cannot be read.
async fn mirrored_tip(source: &GitSource) -> Option<Revision> {
    let source = source.clone();
    crate::blocking::off_thread("reading the mirror's branch tip", move || {
        source.branch_tip()
    })
    .await
    .ok()
    .and_then(Result::ok)
    .flatten()
}

/// Why a changed config was not taken.
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Stopped(#[from] crate::blocking::Stopped),
}

/// Loads the config file off the async workers.
async fn load_config(path: &Path) -> Result<Config, ReloadError> {
    let path = path.to_path_buf();
    Ok(crate::blocking::off_thread("reading the config", move || Config::load(&path)).await??)
}

/// One fetch, then every environment reconciled concurrently; `shutdown` stops rollouts in
/// flight.
pub async fn run_once(config: &Config, shutdown: watch::Receiver<bool>) -> PassReport {
    clean_render_leftovers(config).await;
    let source = GitSource::new(&config.repo, &config.state.dir);
    let (tip, fetch_error) = match fetch_until(&source, Some(shutdown.clone())).await {
        Ok(fetched) => {
            log_fetched(&fetched);
            (Some(fetched.tip), None)
        }
        Err(error) => {
            tracing::error!(%error, "fetch failed");
            (mirrored_tip(&source).await, Some(error))
        }
    };
    let (notifier, delivery) = Notifier::start(config.webhooks.clone());
    let observers = Observers {
        metrics: Arc::new(Metrics::default()),
        notifier,
    };
    let mut environments = Vec::new();
    for wave in waves(&config.environments) {
        let Some(tip) = &tip else { break };
        let mut tasks = JoinSet::new();
        for environment in wave {
            let source = source.clone();
            let state = config.state.clone();
            let tip = tip.clone();
            let shutdown = shutdown.clone();
            let observers = observers.clone();
            let span = tracing::info_span!("environment", env = %environment.name);
            tasks.spawn(
                async move {
                    let name = environment.name.clone();
                    let result = match EnvironmentRuntime::open(environment, &state).await {
                        Ok(mut runtime) => {
                            runtime
                                .pass(&source, &tip, shutdown, Heartbeat::default(), &observers)
                                .await
                        }
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
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(report) => environments.push(report),
                Err(error) => tracing::error!(%error, "environment task failed"),
            }
        }
    }
    environments.sort_by(|a, b| a.0.cmp(&b.0));
    drop(observers);
    if let Some(delivery) = delivery {
        delivery.finish(WEBHOOK_FLUSH).await;
    }
    PassReport {
        fetch_error,
        environments,
    }
}

/// Process signals the daemon obeys.
pub struct Signals {
    /// Turns true on SIGTERM or ctrl-c: stop, interrupting rollouts (they resume on start).
    pub shutdown: watch::Receiver<bool>,
    /// One message per SIGHUP: reload the config file.
    pub reload: mpsc::Receiver<()>,
}

/// One line per environment, for systemd's `STATUS=` and logs.
#[derive(Debug, Clone, Default)]
pub struct StatusBoard(Arc<Mutex<BTreeMap<String, String>>>);

impl StatusBoard {
    pub fn set(&self, environment: &str, text: String) {
        let mut board = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        board.insert(environment.to_string(), text);
    }

    pub fn summary(&self) -> String {
        let board = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        board
            .iter()
            .map(|(environment, text)| format!("{environment}: {text}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The environment tasks of one config: replaced as a whole on reload.
struct Generation {
    delivery: Option<Delivery>,
    tips: watch::Sender<Option<Revision>>,
    drain: watch::Sender<bool>,
    tasks: JoinSet<()>,
    _ref_watcher: Option<crate::source::watch::RefWatcher>,
    woken: mpsc::Receiver<()>,
}

impl Generation {
    async fn spawn(
        config: &Config,
        context: &DaemonContext,
        shutdown: &watch::Receiver<bool>,
    ) -> Self {
        clean_render_leftovers(config).await;
        let source = GitSource::new(&config.repo, &config.state.dir);
        let (tips, tip_receiver) = watch::channel::<Option<Revision>>(None);
        let (drain, drain_receiver) = watch::channel(false);
        let (notifier, delivery) = Notifier::start(config.webhooks.clone());
        let observers = Observers {
            metrics: context.metrics.clone(),
            notifier,
        };
        let mut tasks = JoinSet::new();
        for environment in config.environments.clone() {
            let span = tracing::info_span!("environment", env = %environment.name);
            let heartbeat = context
                .heartbeats
                .register(&format!("environment {}", environment.name));
            tasks.spawn(
                environment_loop(
                    environment,
                    source.clone(),
                    config.state.clone(),
                    tip_receiver.clone(),
                    EnvironmentSignals {
                        shutdown: shutdown.clone(),
                        drain: drain_receiver.clone(),
                    },
                    heartbeat,
                    Shared {
                        board: context.board.clone(),
                        controls: context.controls.clone(),
                        observers: observers.clone(),
                    },
                )
                .instrument(span),
            );
        }
        let (wake, woken) = mpsc::channel(1);
        let ref_watcher = config.repo.local_path.as_deref().and_then(|path| {
            watch_refs(path, wake)
                .inspect_err(|error| {
                    tracing::warn!(%error, repo = %path.display(), "cannot watch the repository; relying on polling");
                })
                .ok()
        });
        Self {
            delivery,
            tips,
            drain,
            tasks,
            _ref_watcher: ref_watcher,
            woken,
        }
    }

    /// Waits for the environment tasks to end, feeding the watchdog meanwhile.
    async fn wait(mut self, context: &mut DaemonContext) {
        drop(self.tips);
        loop {
            tokio::select! {
                joined = self.tasks.join_next() => if joined.is_none() { break },
                _ = tokio::time::sleep(context.tick()) => context.keep_alive(),
            }
        }
        // Every notifier went with its task: the queue ends once it is sent.
        if let Some(delivery) = self.delivery {
            delivery.finish(WEBHOOK_FLUSH).await;
        }
    }

    /// Lets every task finish its pass in flight (rollouts included), then ends them.
    async fn drain(self, context: &mut DaemonContext) {
        let _ = self.drain.send(true);
        self.wait(context).await;
    }
}

/// What the main loop shares with the environment tasks, the API and systemd.
struct DaemonContext {
    systemd: Systemd,
    heartbeats: Heartbeats,
    main_beat: Heartbeat,
    board: StatusBoard,
    controls: Controls,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    reloadable: Arc<RwLock<Reloadable>>,
}

/// What each environment task shares with the rest of the daemon.
struct Shared {
    board: StatusBoard,
    controls: Controls,
    observers: Observers,
}

/// The API token, read from `api.token_file`.
fn read_token(config: &Config) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = config.api.as_ref()?.token_file.as_ref()?;
    if let Ok(metadata) = std::fs::metadata(path)
        && metadata.permissions().mode() & 0o004 != 0
    {
        tracing::error!(
            file = %path.display(),
            mode = format!("{:o}", metadata.permissions().mode() & 0o777),
            "the api token file is readable by every user; control endpoints are disabled until it is not (chmod 600)"
        );
        return None;
    }
    match std::fs::read_to_string(path) {
        Ok(token) if !token.trim().is_empty() => Some(token.trim().to_string()),
        Ok(_) => {
            tracing::error!(file = %path.display(), "api token file is empty; control endpoints are disabled");
            None
        }
        Err(error) => {
            tracing::error!(file = %path.display(), %error, "cannot read the api token file; control endpoints are disabled");
            None
        }
    }
}

fn reloadable(config: &Config) -> Reloadable {
    Reloadable {
        token: read_token(config),
        source: GitSource::new(&config.repo, &config.state.dir),
    }
}

impl DaemonContext {
    fn tick(&self) -> Duration {
        self.systemd
            .tick()
            .unwrap_or(BEAT_INTERVAL)
            .min(BEAT_INTERVAL)
    }

    fn keep_alive(&mut self) {
        self.main_beat.beat();
        self.systemd.ping_if_alive(&self.heartbeats);
        let summary = self.board.summary();
        self.systemd.status(&summary);
    }
}

/// Binds the API on `listen` and serves it in the background; the bound address (the port the
/// system picked, for port 0) goes to `<state dir>/api.addr`, whose path is returned so a clean
/// stop removes it. A bind failure is logged and the daemon runs without its API.
async fn start_api(listen: SocketAddr, state: ApiState, state_dir: &Path) -> Option<PathBuf> {
    let listener = match server::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%listen, %error, "the HTTP API stopped");
            return None;
        }
    };
    let path = server::address_file(state_dir);
    let written = listener.local_addr().and_then(|bound| {
        std::fs::create_dir_all(state_dir)?;
        crate::durable::write_whole(&path, format!("{bound}\n").as_bytes())
    });
    tokio::spawn(async move {
        if let Err(error) = server::serve(listener, state).await {
            tracing::error!(%listen, %error, "the HTTP API stopped");
        }
    });
    match written {
        Ok(()) => Some(path),
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "cannot write the API's address file");
            None
        }
    }
}

/// How a generation's serving ended.
enum End {
    Stop,
    Reload(Box<Config>),
}

/// Runs until SIGTERM: polls every `poll_interval` (sooner when a local repository's refs
/// change), hands each new tip to the environment tasks, keeps systemd informed, and reloads
/// the config on SIGHUP (an invalid one is refused and the running one kept).
pub async fn run(config_path: &Path, config: Config, mut signals: Signals) {
    let heartbeats = Heartbeats::default();
    let mut context = DaemonContext {
        systemd: Systemd::from_env(),
        main_beat: heartbeats.register("fetch loop"),
        heartbeats,
        board: StatusBoard::default(),
        controls: Controls::default(),
        metrics: Arc::new(Metrics::default()),
        ready: Arc::new(AtomicBool::new(false)),
        reloadable: Arc::new(RwLock::new(reloadable(&config))),
    };
    let mut api_address_file = None;
    if let Some(api) = &config.api {
        let state = ApiState {
            controls: context.controls.clone(),
            ready: context.ready.clone(),
            metrics: context.metrics.clone(),
            reloadable: context.reloadable.clone(),
            limiter: Default::default(),
        };
        api_address_file = start_api(api.listen, state, &config.state.dir).await;
    }
    // Edits to the config file reload it like SIGHUP does.
    let (config_changed, mut config_changes) = mpsc::channel(1);
    let _config_watcher = watch_config(config_path, config_changed)
        .inspect_err(|error| {
            tracing::warn!(%error, config = %config_path.display(), "cannot watch the config file; reload with SIGHUP");
        })
        .ok();
    let mut config = config;
    loop {
        let mut generation = Generation::spawn(&config, &context, &signals.shutdown).await;
        match serve(
            &config,
            config_path,
            &mut generation,
            &mut signals,
            &mut config_changes,
            &mut context,
        )
        .await
        {
            End::Stop => {
                context.systemd.stopping();
                tracing::info!("stopping: waiting for reconciles in flight");
                generation.wait(&mut context).await;
                if let Some(path) = api_address_file {
                    let _ = std::fs::remove_file(path);
                }
                tracing::info!("stopped");
                return;
            }
            End::Reload(new) => {
                context.systemd.reloading();
                if new.api.as_ref().map(|a| a.listen) != config.api.as_ref().map(|a| a.listen) {
                    tracing::warn!("api.listen changes take effect on restart");
                }
                *context
                    .reloadable
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = reloadable(&new);
                tracing::info!("config reloaded; switching once the passes in flight finish");
                generation.drain(&mut context).await;
                config = *new;
            }
        }
    }
}

async fn serve(
    config: &Config,
    config_path: &Path,
    generation: &mut Generation,
    signals: &mut Signals,
    config_changes: &mut mpsc::Receiver<()>,
    context: &mut DaemonContext,
) -> End {
    let source = GitSource::new(&config.repo, &config.state.dir);
    let mut failures: u32 = 0;
    let mut first = true;
    loop {
        let started = std::time::Instant::now();
        let fetched = fetch_until(&source, Some(signals.shutdown.clone())).await;
        context.metrics.fetched(fetched.is_ok(), started.elapsed());
        let delay = match fetched {
            Ok(fetched) => {
                failures = 0;
                log_fetched(&fetched);
                generation.tips.send_replace(Some(fetched.tip));
                config.repo.poll_interval
            }
            Err(error) => {
                failures += 1;
                let retry = backoff(failures);
                tracing::warn!(%error, retry_in = ?retry, "fetch failed; keeping the last snapshot");
                let known = generation.tips.borrow().clone();
                let last = match known {
                    Some(tip) => Some(tip),
                    None => mirrored_tip(&source).await,
                };
                // Environments still re-check live state against the last snapshot.
                generation.tips.send_replace(last);
                retry
            }
        };
        if first {
            // The config is valid, journals are open and the first fetch is done.
            context.systemd.ready();
            context.ready.store(true, Ordering::Relaxed);
            first = false;
        }
        let next_fetch = tokio::time::Instant::now() + delay;
        loop {
            context.keep_alive();
            tokio::select! {
                _ = tokio::time::sleep_until(next_fetch) => break,
                _ = tokio::time::sleep(context.tick()) => {}
                Some(()) = generation.woken.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while generation.woken.try_recv().is_ok() {}
                    tracing::debug!("repository refs changed");
                    break;
                }
                _ = signals.shutdown.changed() => return End::Stop,
                Some(()) = signals.reload.recv() => match load_config(config_path).await {
                    Ok(new) => return End::Reload(Box::new(new)),
                    Err(error) => tracing::error!(%error, "config reload refused; the running config stays in force"),
                },
                Some(()) = config_changes.recv() => {
                    // Let the writer finish; several events for one save are one reload.
                    tokio::time::sleep(SETTLE * 3).await;
                    while config_changes.try_recv().is_ok() {}
                    match load_config(config_path).await {
                        Ok(new) if new == *config => {}
                        Ok(new) => {
                            tracing::info!("config file changed: reloading");
                            return End::Reload(Box::new(new));
                        }
                        Err(error) => tracing::error!(%error, "changed config refused; the running config stays in force"),
                    }
                }
            }
            if *signals.shutdown.borrow() {
                return End::Stop;
            }
        }
    }
}

/// The longest a blocked environment waits before it tries the cluster again.
const MAX_BLOCKED_BACKOFF: Duration = Duration::from_secs(60);

/// Wait before retrying the `failures`-th failed fetch in a row: 2 s doubling, at most 5 min.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.clamp(1, 9)).min(MAX_BACKOFF)
}

/// How an environment task is told to stop.
struct EnvironmentSignals {
    /// Stop now, interrupting a rollout.
    shutdown: watch::Receiver<bool>,
    /// Stop after the pass in flight.
    drain: watch::Receiver<bool>,
}

fn describe(outcome: &Result<Outcome, ReconcileError>) -> String {
    match outcome {
        Ok(Outcome::Unchanged { revision }) | Ok(Outcome::Converged { revision, .. }) => {
            format!("at {}", revision.short())
        }
        Ok(Outcome::RolledOut { revision, .. }) => format!("at {} (rolled out)", revision.short()),
        Ok(Outcome::Waiting { reason }) => format!("waiting: {reason}"),
        Ok(Outcome::Pinned { revision }) => format!("pinned at {} (rollback)", revision.short()),
        Ok(Outcome::Held { failed, at }) => format!(
            "held at {} ({} failed)",
            at.as_ref().map_or("nothing", |r| r.short()),
            failed.short()
        ),
        Err(ReconcileError::RolledBack { revision, to, .. }) => {
            format!("reverted {} to {}", revision.short(), to.short())
        }
        Err(error) if error.blocked_reason().is_some() => {
            let mut text = error.blocked_reason().unwrap_or_default();
            text.truncate(120);
            format!("blocked: {text}")
        }
        Err(error) => {
            let mut text = error.to_string();
            text.truncate(120);
            format!("failing: {text}")
        }
    }
}

/// Waits `wait` (beating the heartbeat) or until an operator wakes the environment; false
/// when the process is stopping.
async fn back_off(
    wait: Duration,
    wake: &Notify,
    signals: &mut EnvironmentSignals,
    heartbeat: &Heartbeat,
) -> bool {
    let until = tokio::time::Instant::now() + wait;
    loop {
        heartbeat.beat();
        let now = tokio::time::Instant::now();
        if now >= until {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep((until - now).min(BEAT_INTERVAL)) => {}
            _ = wake.notified() => return true,
            _ = signals.shutdown.changed() => return false,
            _ = signals.drain.changed() => return false,
        }
    }
}

async fn environment_loop(
    environment: EnvironmentConfig,
    source: GitSource,
    state: StateConfig,
    mut tips: watch::Receiver<Option<Revision>>,
    mut signals: EnvironmentSignals,
    heartbeat: Heartbeat,
    shared: Shared,
) {
    let Shared {
        board,
        controls,
        observers,
    } = shared;
    let name = environment.name.clone();
    let mut runtime = match EnvironmentRuntime::open(environment, &state).await {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "environment disabled: cannot open its journal");
            board.set(&name, format!("disabled: {error}"));
            return;
        }
    };
    let wake = Arc::new(Notify::new());
    controls.register(
        &name,
        EnvironmentHandle {
            journal: runtime.journal.clone(),
            wake: wake.clone(),
        },
    );
    board.set(&name, "starting".into());
    let mut last_error = None;
    let mut blocked_passes: u32 = 0;
    loop {
        tokio::select! {
            changed = tips.changed() => if changed.is_err() { break },
            _ = wake.notified() => {}
            _ = signals.shutdown.changed() => break,
            _ = signals.drain.changed() => break,
            _ = tokio::time::sleep(BEAT_INTERVAL) => {
                heartbeat.beat();
                continue;
            }
        }
        heartbeat.beat();
        let Some(revision) = tips.borrow_and_update().clone() else {
            continue;
        };
        let result = runtime
            .pass(
                &source,
                &revision,
                signals.shutdown.clone(),
                heartbeat.clone(),
                &observers,
            )
            .await;
        heartbeat.beat();
        board.set(&name, describe(&result));
        // A blocked environment waits before trying again, longer each time, unless an
        // operator wakes it.
        blocked_passes = match &result {
            Err(error) if error.blocked_reason().is_some() => blocked_passes + 1,
            _ => 0,
        };
        if blocked_passes > 0 {
            let wait = backoff(blocked_passes).min(MAX_BLOCKED_BACKOFF);
            if !back_off(wait, &wake, &mut signals, &heartbeat).await {
                break;
            }
        }
        match result {
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
