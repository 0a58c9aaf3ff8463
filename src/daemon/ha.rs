//! `[ha]` in the daemon: one coordinator per cluster keeps this daemon's heartbeat, takes
//! environments' Leases up to its fair share, renews them, gives up a surplus while other
//! daemons wait, and releases them all at once on a clean stop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::api::coordination::v1::Lease;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::backend::TargetConfig;
use crate::backend::kubernetes::lease::{
    EnvironmentLease, LeaseClient, environment_of, is_heartbeat, observed,
};
use crate::config::{Config, HaConfig};
use crate::journal::{Event, SharedJournal};
use crate::lease::{self, Step};
use crate::metrics::Metrics;
use crate::model::Revision;
use crate::webhook::Notifier;

/// How often a coordinator looks at the Leases: a released or expired one is taken within
/// about this long.
const ROUND: Duration = Duration::from_millis(500);

/// The Leases of one generation's environments, and the coordinators that keep them.
pub(super) struct HaLeases {
    pub(super) by_environment: BTreeMap<String, Arc<EnvironmentLease>>,
    tasks: JoinSet<()>,
    /// Set when the generation's tasks have ended on a reload: stop without releasing (the
    /// next generation, same identity, takes them on at once).
    ended: watch::Sender<bool>,
}

impl HaLeases {
    /// One coordinator per cluster the environments target; environments whose cluster
    /// cannot be reached get no Lease and stay on standby (the board says why).
    pub(super) async fn start(
        config: &Config,
        metrics: Arc<Metrics>,
        shutdown: &watch::Receiver<bool>,
    ) -> Option<Self> {
        let ha = config.ha.as_ref()?;
        let mut clusters: BTreeMap<(Option<String>, Option<String>), Vec<String>> = BTreeMap::new();
        let mut settings_of = BTreeMap::new();
        for environment in &config.environments {
            if let TargetConfig::Kubernetes(settings) = &environment.target {
                let key = (
                    settings
                        .kubeconfig
                        .as_ref()
                        .map(|p| p.display().to_string()),
                    settings.context.clone(),
                );
                clusters
                    .entry(key.clone())
                    .or_default()
                    .push(environment.name.clone());
                settings_of.entry(key).or_insert_with(|| settings.clone());
            }
        }
        let (ended, ended_receiver) = watch::channel(false);
        let mut leases = Self {
            by_environment: BTreeMap::new(),
            tasks: JoinSet::new(),
            ended,
        };
        for (key, environments) in clusters {
            let settings = &settings_of[&key];
            let client = match LeaseClient::connect(
                settings,
                &ha.lease_namespace,
                &ha.identity,
                ha.timing,
            )
            .await
            {
                Ok(client) => client,
                Err(error) => {
                    tracing::error!(%error, "[ha]: cannot reach the cluster; its environments stay on standby");
                    continue;
                }
            };
            let coordinator = Coordinator::new(client, &environments, metrics.clone());
            leases.by_environment.extend(coordinator.leases.clone());
            leases.tasks.spawn(coordinator.run(
                ha.clone(),
                shutdown.clone(),
                ended_receiver.clone(),
            ));
        }
        Some(leases)
    }

    /// After the generation's tasks ended: on shutdown the coordinators have released every
    /// Lease already; on a reload they stop renewing and the next generation takes over.
    pub(super) async fn finish(mut self) {
        let _ = self.ended.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// How many environments each daemon that is up holds, by identity (every daemon whose
/// heartbeat is within its term, with 0 when it holds none).
fn held_by_live_daemons(
    listed: &[Lease],
    environments: &BTreeMap<&str, &Lease>,
    now: chrono::DateTime<Utc>,
    timing: &lease::Timing,
) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = listed
        .iter()
        .filter(|lease| is_heartbeat(lease))
        .map(observed)
        .filter(|seen| !seen.expired(now, timing.max_skew))
        .filter_map(|seen| seen.holder().map(|holder| (holder.to_string(), 0)))
        .collect();
    for lease in environments.values() {
        let seen = observed(lease);
        if seen.expired(now, timing.max_skew) {
            continue;
        }
        if let Some(count) = seen.holder().and_then(|holder| counts.get_mut(holder)) {
            *count += 1;
        }
    }
    counts
}

/// The Leases of one cluster's environments, as this daemon keeps them.
struct Coordinator {
    client: LeaseClient,
    leases: BTreeMap<String, Arc<EnvironmentLease>>,
    metrics: Arc<Metrics>,
    /// When each held Lease was last renewed (sent).
    renewed: BTreeMap<String, Instant>,
    last_beat: Option<Instant>,
}

impl Coordinator {
    fn new(client: LeaseClient, environments: &[String], metrics: Arc<Metrics>) -> Self {
        let leases = environments
            .iter()
            .map(|name| (name.clone(), client.environment(name)))
            .collect();
        for name in environments {
            metrics.lease_standby(name);
        }
        Self {
            client,
            leases,
            metrics,
            renewed: BTreeMap::new(),
            last_beat: None,
        }
    }

    async fn run(
        mut self,
        ha: HaConfig,
        mut shutdown: watch::Receiver<bool>,
        mut ended: watch::Receiver<bool>,
    ) {
        loop {
            self.round(&ha).await;
            tokio::select! {
                _ = tokio::time::sleep(ROUND) => {}
                _ = shutdown.changed() => {
                    self.release_all().await;
                    return;
                }
                _ = ended.changed() => {
                    if *shutdown.borrow() {
                        self.release_all().await;
                    }
                    return;
                }
            }
        }
    }

    /// One look at the Leases: beat, give up a surplus, renew what is held, take what is free
    /// while there is room.
    async fn round(&mut self, ha: &HaConfig) {
        let timing = ha.timing;
        if self
            .last_beat
            .is_none_or(|beat| beat.elapsed() >= timing.renew_interval)
        {
            match self.client.beat().await {
                Ok(()) => self.last_beat = Some(Instant::now()),
                Err(error) => tracing::warn!(%error, "[ha]: heartbeat not renewed"),
            }
        }
        let listed = match self.client.list().await {
            Ok(listed) => listed,
            Err(error) => {
                tracing::warn!(%error, "[ha]: cannot list the Leases; held ones run out unless renewed");
                self.renew_due(&timing).await;
                return;
            }
        };
        let now = Utc::now();
        let by_environment: BTreeMap<&str, &Lease> = listed
            .iter()
            .filter_map(|lease| environment_of(lease).map(|name| (name, lease)))
            .collect();
        let counts = held_by_live_daemons(&listed, &by_environment, now, &timing);
        let live = counts.len();
        let share = lease::room(self.leases.len(), &counts, self.client.identity());
        for (name, environment_lease) in &self.leases {
            if let Some(listed) = by_environment.get(name.as_str()) {
                environment_lease.seen(listed);
            }
        }
        let held: Vec<(String, bool)> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.holds())
            .map(|(name, lease)| (name.clone(), lease.is_busy()))
            .collect();
        let others_up = live > 1;
        let surplus = if others_up {
            lease::surplus(&held, share)
        } else {
            Vec::new()
        };
        for name in &surplus {
            self.release(name).await;
        }
        self.renew_due(&timing).await;
        let mut count = held.len() - surplus.len();
        for (name, environment_lease) in self.leases.clone() {
            if environment_lease.holds() {
                continue;
            }
            let current = by_environment.get(name.as_str()).copied();
            let step = lease::next_step(
                current.map(observed).as_ref(),
                self.client.identity(),
                now,
                &timing,
                count < share && !surplus.contains(&name),
            );
            // A Lease this identity held before a restart is taken again, not renewed: its
            // history is adopted like any successor's.
            if matches!(step, Step::Acquire | Step::Renew) && count < share {
                self.acquire(&name, &environment_lease, current.cloned())
                    .await;
                if environment_lease.holds() {
                    count += 1;
                }
            }
        }
    }

    async fn acquire(&mut self, name: &str, lease: &EnvironmentLease, current: Option<Lease>) {
        let sent = Instant::now();
        match lease.acquire(current).await {
            Ok(true) => {
                tracing::info!(env = %name, identity = %self.client.identity(), "[ha]: took the environment's Lease");
                self.renewed.insert(name.to_string(), sent);
                self.metrics.lease_changed(name, true);
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(env = %name, %error, "[ha]: cannot take the Lease"),
        }
    }

    /// Renews each held Lease whose renew interval has passed.
    async fn renew_due(&mut self, timing: &lease::Timing) {
        for (name, lease) in self.leases.clone() {
            if !lease.holds() {
                continue;
            }
            let due = self
                .renewed
                .get(&name)
                .is_none_or(|at| at.elapsed() >= timing.renew_interval);
            if !due {
                continue;
            }
            let sent = Instant::now();
            match lease.renew().await {
                Ok(true) => {
                    self.renewed.insert(name.clone(), sent);
                }
                Ok(false) => {
                    tracing::warn!(env = %name, "[ha]: lost the Lease to another daemon; no more writes for this environment");
                    self.metrics.lease_changed(&name, false);
                }
                Err(error) => {
                    tracing::warn!(env = %name, %error, "[ha]: Lease not renewed; writes stop when it runs out");
                }
            }
        }
    }

    async fn release(&mut self, name: &str) {
        let Some(lease) = self.leases.get(name).cloned() else {
            return;
        };
        if !lease.holds() {
            return;
        }
        tracing::info!(env = %name, "[ha]: giving the Lease up (more than this daemon's share while others wait)");
        if let Err(error) = lease.release().await {
            tracing::warn!(env = %name, %error, "[ha]: Lease not released; it runs out on its own");
        }
        self.metrics.lease_changed(name, false);
    }

    /// A clean stop: the heartbeat goes first (others stop counting this daemon), then every
    /// Lease is released so the others take over at once.
    async fn release_all(&mut self) {
        if let Err(error) = self.client.stop_beating().await {
            tracing::warn!(%error, "[ha]: heartbeat not removed; it runs out on its own");
        }
        let names: Vec<String> = self.leases.keys().cloned().collect();
        for name in names {
            self.release(&name).await;
        }
    }
}

/// What the environment's task does on taking its Lease and on each wake-up while it holds
/// it: journal the handover (adopting the history the cluster keeps when it differs from
/// this host's), then the operator requests other daemons forwarded. True when it took the
/// Lease just now (a pass follows at once).
pub(super) fn take_over(
    lease: &EnvironmentLease,
    journal: &SharedJournal,
    tip: Option<Revision>,
    notifier: &Notifier,
) -> bool {
    let mut taken = false;
    if let Some(adoption) = lease.take_adoption() {
        taken = true;
        let local = journal.with_history(|history| serde_json::to_value(history).ok());
        let state = adoption.state.filter(|state| Some(state) != local.as_ref());
        let revision = tip
            .or_else(|| journal.with_history(|history| history.current.clone()))
            .unwrap_or_else(|| Revision(String::new()));
        if state.is_some() {
            tracing::info!(from = ?adoption.from, "[ha]: acting on the history the cluster keeps for the environment");
        }
        let event = Event::Acquired {
            revision,
            holder: lease.identity().to_string(),
            from: adoption.from,
            state,
        };
        match journal.append(event, Utc::now()) {
            // The webhook says who took it from whom (not the history).
            Ok(record) => notifier.event(lease.environment(), &record.event, record.time),
            Err(error) => tracing::error!(%error, "[ha]: the handover is not journaled"),
        }
    }
    for request in lease.pending_requests() {
        let stale = match &request.event {
            Event::Retried { revision } => {
                !journal.with_history(|history| history.failed.contains(revision))
            }
            _ => false,
        };
        if stale {
            tracing::info!(by = %request.by, "[ha]: forwarded retry dropped: the revision is not held");
        } else {
            let by = Some(format!("{} (forwarded)", request.by));
            if let Err(error) = journal.append_by(request.event.clone(), Utc::now(), by) {
                tracing::error!(%error, "[ha]: forwarded request not journaled; tried again");
                continue;
            }
            tracing::info!(action = %request.event.name(), by = %request.by, "[ha]: forwarded control request journaled");
        }
        lease.request_done(&request.id);
    }
    taken
}

/// The board's line for an environment another daemon acts for.
pub(super) fn standby_line(lease: &EnvironmentLease) -> String {
    let holding = lease.holding();
    match (holding.holder, holding.expires) {
        (Some(holder), Some(expires)) => format!(
            "standby: held by {holder} (Lease until {})",
            expires.format("%H:%M:%S")
        ),
        _ => "standby: waiting for the Lease".to_string(),
    }
}

/// Until the Lease wakes the task (taken, or a request forwarded); never without `[ha]`.
pub(super) async fn woken(lease: Option<&EnvironmentLease>) {
    match lease {
        Some(lease) => lease.woken().await,
        None => std::future::pending().await,
    }
}
