//! One environment's task in the daemon: its target, journal and checks, a pass per new tip
//! or wake-up, skipped while nothing changed, backed off while the cluster blocks it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::fetch::backoff;
use super::ha;
use crate::backend::kubernetes::lease::EnvironmentLease;
use crate::backend::{AnyTarget, LiveSource, Target as _};
use crate::config::{EnvironmentConfig, StateConfig, WindowConfig};
use crate::executor::{Effects, EnvironmentRun, Outcome, ReconcileError};
use crate::gates::Gates;
use crate::heartbeat::{BEAT_INTERVAL, Heartbeat};
use crate::journal::{self, Journal, SharedJournal};
use crate::metrics::Metrics;
use crate::model::Revision;
use crate::probe::Prober;
use crate::server::{Controls, EnvironmentHandle};
use crate::source::GitSource;
use crate::webhook::Notifier;

/// The longest a blocked environment waits before it tries the cluster again.
const MAX_BLOCKED_BACKOFF: Duration = Duration::from_secs(60);

/// How long a pass for drift waits after the first change another writer made, so that a
/// burst of changes makes one pass.
const DRIFT_DEBOUNCE: Duration = Duration::from_millis(500);

/// One environment's target, journal and check runner.
pub(super) struct EnvironmentRuntime {
    config: EnvironmentConfig,
    state_dir: PathBuf,
    target: AnyTarget,
    journal: SharedJournal,
    prober: Prober,
    /// What the last pass that found nothing to do saw; see [`Quiet`].
    quiet: Option<Quiet>,
    /// `[ha]`: the Lease of the environment an `after` gate waits for, whose history is on
    /// the cluster while another daemon holds it.
    upstream_lease: Option<Arc<EnvironmentLease>>,
    /// `[ha]`: the environment's own Lease.
    lease: Option<Arc<EnvironmentLease>>,
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
    /// Opens the environment's journal and target; `live` is where the target reads live
    /// state (the daemon's watch cache, or a LIST per pass for `run --once`).
    pub(super) async fn open(
        config: EnvironmentConfig,
        state: &StateConfig,
        live: LiveSource,
    ) -> Result<Self, ReconcileError> {
        let state_dir = &state.dir;
        let journal = SharedJournal::new(crate::blocking::run(|| {
            Journal::open_with(state_dir, &config.name, state.journal)
        })?);
        let target = AnyTarget::open(
            &config.target,
            &config.name,
            &config.source,
            &config.namespace,
            live,
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
            upstream_lease: None,
            lease: None,
        })
    }

    fn gates(&self) -> Gates {
        let mut gates = gates_for(&self.config, &self.state_dir);
        // `[ha]`: another daemon acts for the upstream environment; the cluster has its
        // history, this host's journal of it is behind.
        let upstream = self.upstream_lease.as_ref();
        if let (Some(history), Some((_, healthy))) = (
            upstream.and_then(|lease| lease.history_elsewhere()),
            gates.upstream.as_mut(),
        ) {
            *healthy = history.healthy;
        }
        gates
    }

    pub(super) async fn pass(
        &mut self,
        source: &GitSource,
        tip: &Revision,
        shutdown: watch::Receiver<bool>,
        heartbeat: Heartbeat,
        observers: &Observers,
    ) -> Result<Outcome, ReconcileError> {
        let started = std::time::Instant::now();
        if let Some(lease) = &self.lease {
            lease.set_busy(true);
        }
        let seen = self.seen(tip).await;
        if seen.is_some() && seen == self.quiet {
            tracing::debug!(revision = %tip.short(), "branch tip, journal and target unchanged; nothing to do");
            let result = Ok(Outcome::Unchanged {
                revision: tip.clone(),
            });
            observers.metrics.pass(&self.config.name, "unchanged");
            self.record(&result, started.elapsed(), &observers.metrics);
            return result;
        }
        // Reads the upstream environment's journal file.
        let gates = crate::blocking::run(|| self.gates());
        let mut run = EnvironmentRun {
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
                slot: observers.passes.slot(),
            },
            source,
            gates: &gates,
        };
        // A new tip (a commit elsewhere in the repository) over unchanged live state.
        let promoted = match (&seen, &self.quiet) {
            (Some(seen), Some(quiet))
                if seen.fingerprint == quiet.fingerprint
                    && seen.journal_seq == quiet.journal_seq =>
            {
                run.promote_same_folder(tip, &quiet.revision)
                    .await
                    .transpose()
            }
            _ => None,
        };
        let (result, promoted) = match promoted {
            Some(result) => (result, true),
            None => match run.fx.take_slot().await {
                Ok(()) => (run.pass(tip).await, false),
                Err(interrupted) => (Err(interrupted), false),
            },
        };
        self.quiet = self.quiet_after(&result, promoted, seen, tip);
        let kind = if promoted { "same_folder" } else { "full" };
        observers.metrics.pass(&self.config.name, kind);
        self.record(&result, started.elapsed(), &observers.metrics);
        observers.trimmer.freed();
        result
    }

    /// `[ha]`, before each turn: on standby while another daemon holds the environment;
    /// else journals taking the Lease (adopting the cluster's history) and the requests
    /// forwarded to this daemon. `taken`: it took the Lease just now, so it passes at once (a
    /// rollout in flight goes on from its step) without skipping as quiet.
    async fn lease_turn(
        &mut self,
        tip: Option<Revision>,
        board: &StatusBoard,
        signals: &mut EnvironmentSignals,
        heartbeat: &Heartbeat,
        observers: &Observers,
    ) -> LeaseTurn {
        let Some(lease) = self.lease.clone() else {
            return LeaseTurn::Act { taken: false };
        };
        if !lease.is_held() {
            board.set(&self.config.name, ha::standby_line(&lease));
            if !stand_by(&lease, signals, heartbeat).await {
                return LeaseTurn::Stop;
            }
            return LeaseTurn::StandBy;
        }
        let taken = ha::take_over(&lease, &self.journal, tip, &observers.notifier);
        if taken {
            self.quiet = None;
        }
        LeaseTurn::Act { taken }
    }

    /// The tip, journal and target as this pass finds them; `None` where the target has no
    /// fingerprint. Taken before the pass, so that a change made while it runs shows in the
    /// next one.
    async fn seen(&self, tip: &Revision) -> Option<Quiet> {
        let fingerprint = match self.target.fingerprint().await {
            Ok(fingerprint) => fingerprint,
            Err(error) => {
                tracing::debug!(%error, "no fingerprint of the target; the pass lists it");
                None
            }
        };
        fingerprint.map(|fingerprint| Quiet {
            revision: tip.clone(),
            journal_seq: self.journal.next_seq(),
            fingerprint,
        })
    }

    /// What the next pass may skip over: the state a pass found nothing to do in.
    fn quiet_after(
        &self,
        result: &Result<Outcome, ReconcileError>,
        promoted: bool,
        seen: Option<Quiet>,
        tip: &Revision,
    ) -> Option<Quiet> {
        match result {
            // Nothing was written but the journal's own records (`healthy` for a tip that
            // changes nothing here, `unblocked`): the journal as the pass left it is the one
            // to compare, so an operator's command after it still ends the quiet. The
            // fingerprint is the one taken before the pass: if the pass wrote anything (the
            // ApplySet parent's record), the next one differs and that pass is a full one.
            Ok(Outcome::Unchanged { revision }) if promoted || revision == tip => {
                seen.map(|seen| Quiet {
                    journal_seq: self.journal.next_seq(),
                    ..seen
                })
            }
            _ => None,
        }
    }

    fn record(&self, result: &Result<Outcome, ReconcileError>, took: Duration, metrics: &Metrics) {
        let name = &self.config.name;
        metrics.reconciled(name, took);
        match result {
            Ok(Outcome::RolledOut { .. }) => metrics.rollout(name, "healthy"),
            Err(ReconcileError::RolledBack { .. }) => metrics.rollout(name, "reverted"),
            Err(ReconcileError::FirstDeployFailed { .. } | ReconcileError::HookFailed { .. }) => {
                metrics.rollout(name, "failed")
            }
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
    /// Told after each full pass, so freed memory goes back to the system.
    pub trimmer: crate::memory::Trimmer,
    /// How many full passes work at once.
    pub passes: crate::pass_slots::PassSlots,
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

/// What each environment task shares with the rest of the daemon.
pub(super) struct Shared {
    pub(super) board: StatusBoard,
    pub(super) controls: Controls,
    pub(super) observers: Observers,
    /// `[ha]`: the environment's Lease; the task acts only while it holds it.
    pub(super) lease: Option<Arc<EnvironmentLease>>,
    /// `[ha]`: the Lease of the environment its `after` gate waits for.
    pub(super) upstream_lease: Option<Arc<EnvironmentLease>>,
}

/// How an environment task is told to stop.
pub(super) struct EnvironmentSignals {
    /// Stop now, interrupting a rollout.
    pub(super) shutdown: watch::Receiver<bool>,
    /// Stop after the pass in flight.
    pub(super) drain: watch::Receiver<bool>,
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

/// Until another writer changes something the environment owns (never without a watch).
async fn drifted(drift: Option<&Notify>) {
    match drift {
        Some(drift) => drift.notified().await,
        None => std::future::pending().await,
    }
}

/// Lets a burst of changes by another writer settle into one pass.
async fn debounce(drift: Option<&Notify>) {
    tracing::debug!("another writer changed an owned object; passing");
    tokio::time::sleep(DRIFT_DEBOUNCE).await;
    if let Some(drift) = drift {
        // Changes during the wait are seen by the pass about to start.
        let _ = futures_util::FutureExt::now_or_never(drift.notified());
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

pub(super) async fn environment_loop(
    environment: EnvironmentConfig,
    source: GitSource,
    state: StateConfig,
    mut tips: watch::Receiver<Option<Revision>>,
    mut signals: EnvironmentSignals,
    heartbeat: Heartbeat,
    shared: Shared,
) {
    let name = environment.name.clone();
    let (board, observers, lease) = (&shared.board, &shared.observers, &shared.lease);
    let Some((mut runtime, wake, waiting)) =
        Box::pin(open_under_lease(environment, &state, &shared)).await
    else {
        return;
    };
    let drift = runtime.target.drift_wake();
    let mut failures = Failures::default();
    // A blocked pass is tried again on its own timer, not at the next fetch, which may be
    // minutes away.
    let mut retry_now = false;
    loop {
        let tip = tips.borrow().clone();
        match runtime
            .lease_turn(tip, board, &mut signals, &heartbeat, observers)
            .await
        {
            LeaseTurn::Stop => break,
            LeaseTurn::StandBy => continue,
            LeaseTurn::Act { taken } => retry_now |= taken,
        }
        if !std::mem::take(&mut retry_now) {
            let woken = Wakers {
                wake: &wake,
                lease: lease.as_deref(),
                drift: drift.as_deref(),
            };
            match woken.next(&mut tips, &mut signals, &heartbeat).await {
                Woken::Stop => break,
                Woken::Look => continue,
                Woken::Pass => {}
            }
        }
        heartbeat.beat();
        let Some(revision) = tips.borrow_and_update().clone() else {
            continue;
        };
        // Boxed: a pass's state (~20 KB) is held only while it runs, not by idle tasks.
        let result = Box::pin(runtime.pass(
            &source,
            &revision,
            signals.shutdown.clone(),
            heartbeat.clone(),
            observers,
        ))
        .await;
        heartbeat.beat();
        match after_pass_under_lease(lease.as_deref(), &result).await {
            AfterPass::Done => {}
            AfterPass::StandBy => continue,
            AfterPass::PassAgain => {
                retry_now = true;
                continue;
            }
        }
        board.set(&name, describe(&result));
        tell_waiting(&waiting, &revision, &result);
        // A blocked environment waits before trying again, longer each time, unless an
        // operator wakes it; then it passes again whether or not the tip moved.
        if let Some(wait) = failures.after(&result) {
            let wait = staggered(wait, &name, failures.blocked_passes);
            tracing::debug!(retry_in = ?wait, "blocked; trying again on the environment's own timer");
            if !back_off(wait, &wake, &mut signals, &heartbeat).await {
                break;
            }
            retry_now = true;
        }
    }
}

/// What ends an environment task's wait between passes.
struct Wakers<'a> {
    /// An operator's action.
    wake: &'a Notify,
    /// `[ha]`: this daemon took the Lease, or a request was forwarded to it.
    lease: Option<&'a EnvironmentLease>,
    /// Another writer changed something the environment owns.
    drift: Option<&'a Notify>,
}

/// Why the wait ended.
enum Woken {
    /// The task is to stop.
    Stop,
    /// Look again before passing (the heartbeat, or the Lease's news).
    Look,
    /// Pass now.
    Pass,
}

impl Wakers<'_> {
    async fn next(
        &self,
        tips: &mut watch::Receiver<Option<Revision>>,
        signals: &mut EnvironmentSignals,
        heartbeat: &Heartbeat,
    ) -> Woken {
        tokio::select! {
            changed = tips.changed() => if changed.is_err() { Woken::Stop } else { Woken::Pass },
            _ = self.wake.notified() => Woken::Pass,
            _ = ha::woken(self.lease) => Woken::Look,
            _ = drifted(self.drift) => {
                debounce(self.drift).await;
                Woken::Pass
            }
            _ = signals.shutdown.changed() => Woken::Stop,
            _ = signals.drain.changed() => Woken::Stop,
            _ = tokio::time::sleep(BEAT_INTERVAL) => {
                heartbeat.beat();
                Woken::Look
            }
        }
    }
}

/// `[ha]`: waits while another daemon holds the environment, until this one takes it, the
/// task stops (false) or the heartbeat is due.
async fn stand_by(
    lease: &EnvironmentLease,
    signals: &mut EnvironmentSignals,
    heartbeat: &Heartbeat,
) -> bool {
    tokio::select! {
        _ = lease.woken() => {}
        _ = signals.shutdown.changed() => return false,
        _ = signals.drain.changed() => return false,
        _ = tokio::time::sleep(BEAT_INTERVAL) => {}
    }
    heartbeat.beat();
    true
}

/// Where a turn of the environment's task stands under `[ha]`.
enum LeaseTurn {
    Stop,
    /// Another daemon holds it: look again.
    StandBy,
    /// This daemon holds it (`taken`: just now).
    Act {
        taken: bool,
    },
}

/// What the task does after a pass under `[ha]`.
enum AfterPass {
    /// Report it and wait as usual.
    Done,
    /// The Lease is gone: the new holder acts; nothing here is retried or journaled.
    StandBy,
    /// The pass stopped at the fence near the end of a term whose renewal came late, and the
    /// Lease is held again: pass now.
    PassAgain,
}

async fn after_pass_under_lease(
    lease: Option<&EnvironmentLease>,
    result: &Result<Outcome, ReconcileError>,
) -> AfterPass {
    let Some(lease) = lease else {
        return AfterPass::Done;
    };
    lease.set_busy(false);
    if !lease.is_held() {
        tracing::warn!(error = ?result.as_ref().err().map(ToString::to_string), "[ha]: the Lease ran out or went to another daemon; standing by");
        return AfterPass::StandBy;
    }
    if let Err(ReconcileError::Fenced(reason)) = result {
        tracing::info!(%reason, "[ha]: pass stopped at the fence; the Lease is held again");
        return AfterPass::PassAgain;
    }
    // What the pass journaled is on the Lease before the task waits again.
    if let Err(error) = lease.before_write().await {
        tracing::debug!(%error, "[ha]: history not carried yet; the next renewal does");
    }
    AfterPass::Done
}

/// Opens the environment, registers it and, under `[ha]`, puts its writes behind its Lease.
async fn open_under_lease(
    environment: EnvironmentConfig,
    state: &StateConfig,
    shared: &Shared,
) -> Option<(EnvironmentRuntime, Arc<Notify>, Arc<WaitingSender>)> {
    let name = environment.name.clone();
    let lease = shared.lease.clone();
    let opened = open_registered(
        environment,
        state,
        &shared.board,
        &shared.controls,
        lease.clone(),
    )
    .await;
    let (mut runtime, wake, waiting) = opened?;
    shared.board.set(&name, "starting".into());
    if let Some(lease) = &lease {
        runtime.target.fence_with(lease.clone());
        lease.attach(runtime.journal.clone());
    }
    runtime.upstream_lease = shared.upstream_lease.clone();
    runtime.lease = lease;
    Some((runtime, wake, waiting))
}

/// Opens the environment and registers it with the control API; `None` (and the board says
/// why) when its journal cannot be opened.
async fn open_registered(
    environment: EnvironmentConfig,
    state: &StateConfig,
    board: &StatusBoard,
    controls: &Controls,
    lease: Option<Arc<EnvironmentLease>>,
) -> Option<(EnvironmentRuntime, Arc<Notify>, Arc<WaitingSender>)> {
    let name = environment.name.clone();
    let live = LiveSource::Watch {
        namespaces: environment.policy.named_namespaces(),
    };
    let runtime = match EnvironmentRuntime::open(environment, state, live).await {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "environment disabled: cannot open its journal");
            board.set(&name, format!("disabled: {error}"));
            return None;
        }
    };
    let wake = Arc::new(Notify::new());
    let waiting = Arc::new(watch::channel(None).0);
    controls.register(
        &name,
        EnvironmentHandle {
            journal: runtime.journal.clone(),
            wake: wake.clone(),
            cache: runtime.target.cache_view(),
            config: Arc::new(runtime.config.clone()),
            waiting: waiting.clone(),
            lease,
        },
    );
    Some((runtime, wake, waiting))
}

/// A blocked environment's wait spread over its second half by the environment's name and
/// attempt, so that environments blocked by one outage do not all try again at once.
fn staggered(wait: Duration, environment: &str, attempt: u32) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (environment, attempt).hash(&mut hasher);
    let per_mille = u32::try_from(hasher.finish() % 1000).unwrap_or(0);
    wait / 2 + wait / 2 * per_mille / 1000
}

/// Where the status pages learn what holds an environment's tip back.
type WaitingSender = watch::Sender<Option<(Revision, String)>>;

/// Tells the status pages what holds the tip back after a pass (a gate, a pause), if anything;
/// they are woken only when that changes.
fn tell_waiting(
    waiting: &WaitingSender,
    revision: &Revision,
    result: &Result<Outcome, ReconcileError>,
) {
    let held = match result {
        Ok(Outcome::Waiting { reason }) => Some((revision.clone(), reason.clone())),
        _ => None,
    };
    waiting.send_if_modified(|now| {
        let changed = *now != held;
        *now = held;
        changed
    });
}

/// What an environment's failing passes have been: the same error every poll is logged once,
/// and a cluster that keeps blocking is tried less and less often.
#[derive(Debug, Default)]
struct Failures {
    last_error: Option<String>,
    blocked_passes: u32,
}

impl Failures {
    /// Notes a pass's outcome; the wait before the next pass when the cluster blocks it.
    fn after(&mut self, result: &Result<Outcome, ReconcileError>) -> Option<Duration> {
        self.blocked_passes = match result {
            Err(error) if error.blocked_reason().is_some() => self.blocked_passes + 1,
            _ => 0,
        };
        match result {
            Ok(_) => self.last_error = None,
            Err(error) => {
                let message = error.to_string();
                if self.last_error.as_ref() != Some(&message) {
                    tracing::error!(error = %message, "reconcile failed");
                    self.last_error = Some(message);
                }
            }
        }
        (self.blocked_passes > 0).then(|| backoff(self.blocked_passes).min(MAX_BLOCKED_BACKOFF))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_retries_are_spread_over_the_second_half_of_the_wait() {
        let wait = Duration::from_secs(8);
        let waits: std::collections::BTreeSet<Duration> = (0..100)
            .map(|index| staggered(wait, &format!("env-{index}"), 3))
            .collect();
        assert!(
            waits.iter().all(|w| *w >= wait / 2 && *w <= wait),
            "{waits:?}"
        );
        assert!(
            waits.len() > 50,
            "a hundred environments get many distinct waits: {waits:?}"
        );
        assert_eq!(staggered(wait, "env-1", 3), staggered(wait, "env-1", 3));
    }
}
