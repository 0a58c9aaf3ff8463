//! The long-running loop: fetch on a schedule or on a ref change, reconcile every environment
//! in its own task, keep the last snapshot when a fetch fails, stop cleanly on request.

mod environment;
mod fetch;
mod ha;

pub use environment::{Observers, StatusBoard, gates_for};
pub use fetch::{backoff, fetch, fetch_until};

use environment::{EnvironmentRuntime, EnvironmentSignals, Shared, environment_loop};
use fetch::log_fetched;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::backend::LiveSource;
use crate::config::{Config, EnvironmentConfig};
use crate::config_watch::watch_config;
use crate::executor::{Outcome, ReconcileError};
use crate::heartbeat::{BEAT_INTERVAL, Heartbeat, Heartbeats};
use crate::metrics::Metrics;
use crate::model::Revision;
use crate::receiver::{self, PushTrigger, ReceiverState};
use crate::server::{self, ApiState, Controls, Reloadable};
use crate::source::watch::watch_refs;
use crate::source::{GitSource, SourceError};
use crate::systemd::Systemd;
use crate::webhook::{Delivery, Notifier};

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
    source.branch_tip_off_thread().await.ok().flatten()
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
    let (notifier, delivery) = Notifier::start(config.webhooks.clone(), config.statuses.clone());
    let observers = Observers {
        metrics: Arc::new(Metrics::default()),
        notifier,
        trimmer: crate::memory::Trimmer::start(),
        passes: crate::pass_slots::PassSlots::default(),
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
                    let result =
                        match EnvironmentRuntime::open(environment, &state, LiveSource::List).await
                        {
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

/// The environment tasks of one config: replaced as a whole on reload.
struct Generation {
    delivery: Option<Delivery>,
    tips: watch::Sender<Option<Revision>>,
    drain: watch::Sender<bool>,
    tasks: JoinSet<()>,
    _ref_watcher: Option<crate::source::watch::RefWatcher>,
    woken: mpsc::Receiver<()>,
    /// `[ha]`: the environments' Leases and their coordinators.
    ha: Option<ha::HaLeases>,
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
        let (notifier, delivery) =
            Notifier::start(config.webhooks.clone(), config.statuses.clone());
        let observers = Observers {
            metrics: context.metrics.clone(),
            notifier,
            trimmer: context.trimmer.clone(),
            passes: context.passes.clone(),
        };
        let mut tasks = JoinSet::new();
        let ha = ha::HaLeases::start(config, context.metrics.clone(), shutdown).await;
        for environment in config.environments.clone() {
            let lease_of = |name: &str| {
                ha.as_ref()
                    .and_then(|ha| ha.by_environment.get(name).cloned())
            };
            let lease = lease_of(&environment.name);
            let upstream_lease = environment.after.as_deref().and_then(lease_of);
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
                        lease,
                        upstream_lease,
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
            ha,
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
        if let Some(ha) = self.ha {
            ha.finish().await;
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
    /// Returns the memory passes freed, for every generation.
    trimmer: crate::memory::Trimmer,
    /// How many full passes work at once, across generations.
    passes: crate::pass_slots::PassSlots,
    ready: Arc<AtomicBool>,
    reloadable: Arc<RwLock<Reloadable>>,
    /// What the push receivers check requests against (kept across reloads).
    receivers: Arc<RwLock<receiver::Settings>>,
    /// Wakes the fetch loop for a verified push (one wake queued at most).
    pushed: mpsc::Receiver<()>,
}

/// The API token, read from `api.token_file`.
async fn read_token(config: &Config) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = config.api.as_ref()?.token_file.as_ref()?;
    if let Ok(metadata) = tokio::fs::metadata(path).await
        && metadata.permissions().mode() & 0o004 != 0
    {
        tracing::error!(
            file = %path.display(),
            mode = format!("{:o}", metadata.permissions().mode() & 0o777),
            "the api token file is readable by every user; control endpoints are disabled until it is not (chmod 600)"
        );
        return None;
    }
    match tokio::fs::read_to_string(path).await {
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

async fn reloadable(config: &Config) -> Reloadable {
    Reloadable {
        token: read_token(config).await,
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

/// Writes `bound` to `path` (creating the state folder), off the async workers.
async fn write_address(bound: SocketAddr, state_dir: &Path, path: &Path) -> std::io::Result<()> {
    let (dir, file) = (state_dir.to_path_buf(), path.to_path_buf());
    crate::blocking::off_thread("writing a listener's address", move || {
        crate::durable::create_dir_all(&dir)?;
        crate::durable::write_whole(&file, format!("{bound}\n").as_bytes())
    })
    .await
    .unwrap_or_else(|stopped| Err(std::io::Error::other(stopped)))
}

/// Binds the API on `listen` and serves it in the background; the bound address (the port the
/// system picked, for port 0) goes to `<state dir>/api.addr`, whose path is returned so a clean
/// stop removes it. A bind failure is logged and the daemon runs without its API.
async fn start_api(
    listen: SocketAddr,
    state: crate::pages::PagesState,
    state_dir: &Path,
) -> Option<PathBuf> {
    let listener = match server::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%listen, %error, "the HTTP API stopped");
            return None;
        }
    };
    let path = server::address_file(state_dir);
    let written = match listener.local_addr() {
        Ok(bound) => write_address(bound, state_dir, &path).await,
        Err(error) => Err(error),
    };
    tokio::spawn(async move {
        if let Err(error) = crate::pages::serve(listener, state).await {
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

/// Binds the push receivers on `listen` and serves them in the background, like
/// [`start_api`]; the address goes to `<state dir>/receivers.addr`.
async fn start_receivers(
    receivers: &crate::config::ReceiversConfig,
    state: ReceiverState,
    state_dir: &Path,
) -> Option<PathBuf> {
    let listen = receivers.listen;
    let listener = match receiver::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%listen, %error, "the push receivers cannot listen");
            return None;
        }
    };
    let path = receiver::address_file(state_dir);
    let written = match listener.local_addr() {
        Ok(bound) => write_address(bound, state_dir, &path).await,
        Err(error) => Err(error),
    };
    tokio::spawn(receiver::serve(listener, state, receivers.header_timeout));
    match written {
        Ok(()) => Some(path),
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "cannot write the receivers' address file");
            None
        }
    }
}

/// Starts the control API and the push receivers that `config` asks for; the address files
/// they wrote, for a clean stop to remove.
async fn start_listeners(
    config: &Config,
    context: &DaemonContext,
    pushes: PushTrigger,
) -> Vec<PathBuf> {
    let mut address_files = Vec::new();
    if let Some(api) = &config.api {
        let state = ApiState {
            controls: context.controls.clone(),
            ready: context.ready.clone(),
            metrics: context.metrics.clone(),
            reloadable: context.reloadable.clone(),
            limiter: Default::default(),
        };
        let state = crate::pages::PagesState::new(state, api.dashboard);
        address_files.extend(start_api(api.listen, state, &config.state.dir).await);
    }
    if let Some(receivers) = &config.receivers {
        let state = ReceiverState {
            settings: context.receivers.clone(),
            limiter: Default::default(),
            pushes,
        };
        address_files.extend(start_receivers(receivers, state, &config.state.dir).await);
    }
    address_files
}

/// Hands what outlives generations (the API's reloadable parts, the receivers' settings) the
/// `new` config; listeners stay where they are until a restart.
async fn reload_shared(config: &Config, new: &Config, context: &DaemonContext) {
    if new.api.as_ref().map(|a| a.listen) != config.api.as_ref().map(|a| a.listen) {
        tracing::warn!("api.listen changes take effect on restart");
    }
    let listener = |config: &Config| {
        config
            .receivers
            .as_ref()
            .map(|r| (r.listen, r.header_timeout))
    };
    if listener(new) != listener(config) {
        tracing::warn!(
            "receivers.listen and receivers.header_timeout changes take effect on restart"
        );
    }
    let receivers = receiver::settings(new).await.unwrap_or_default();
    *context
        .receivers
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = receivers;
    let fresh = reloadable(new).await;
    *context
        .reloadable
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
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
    let (pushes, pushed) = PushTrigger::channel();
    let mut context = DaemonContext {
        systemd: Systemd::from_env(),
        main_beat: heartbeats.register("fetch loop"),
        heartbeats,
        board: StatusBoard::default(),
        controls: Controls::default(),
        metrics: Arc::new(Metrics::default()),
        trimmer: crate::memory::Trimmer::start(),
        passes: crate::pass_slots::PassSlots::default(),
        ready: Arc::new(AtomicBool::new(false)),
        reloadable: Arc::new(RwLock::new(reloadable(&config).await)),
        receivers: Arc::new(RwLock::new(
            receiver::settings(&config).await.unwrap_or_default(),
        )),
        pushed,
    };
    let address_files = start_listeners(&config, &context, pushes).await;
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
                for path in address_files {
                    let _ = tokio::fs::remove_file(path).await;
                }
                tracing::info!("stopped");
                return;
            }
            End::Reload(new) => {
                context.systemd.reloading();
                reload_shared(&config, &new, &context).await;
                tracing::info!("config reloaded; switching once the passes in flight finish");
                generation.drain(&mut context).await;
                config = *new;
            }
        }
    }
}

/// One fetch, its tip handed to the environments (the last known one when it fails); how long
/// to wait before the next.
async fn fetch_and_publish(
    config: &Config,
    source: &GitSource,
    generation: &Generation,
    signals: &Signals,
    context: &DaemonContext,
    failures: &mut u32,
) -> Duration {
    let started = std::time::Instant::now();
    let fetched = fetch_until(source, Some(signals.shutdown.clone())).await;
    context.metrics.fetched(fetched.is_ok(), started.elapsed());
    match fetched {
        Ok(fetched) => {
            *failures = 0;
            log_fetched(&fetched);
            generation.tips.send_replace(Some(fetched.tip));
            config.repo.poll_interval
        }
        Err(error) => {
            *failures += 1;
            let retry = backoff(*failures);
            tracing::warn!(%error, retry_in = ?retry, "fetch failed; keeping the last snapshot");
            let known = generation.tips.borrow().clone();
            let last = match known {
                Some(tip) => Some(tip),
                None => mirrored_tip(source).await,
            };
            // Environments still re-check live state against the last snapshot.
            generation.tips.send_replace(last);
            retry
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
        let delay =
            fetch_and_publish(config, &source, generation, signals, context, &mut failures).await;
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
                Some(()) = context.pushed.recv() => {
                    tracing::debug!("a push event asked for a fetch");
                    break;
                }
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
