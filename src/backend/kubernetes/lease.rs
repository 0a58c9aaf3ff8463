//! The Leases of `[ha]` on the cluster: each environment's `gitopsd-<environment>` (taken,
//! renewed and released with its resourceVersion as the precondition; it carries the history a
//! successor acts on and the operator requests other daemons forward) and each daemon's
//! heartbeat; and the fence a target checks before it writes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::watch;

use super::KubernetesSettings;
use crate::backend::{FailureClass, TargetError};
use crate::journal::{Event, SharedJournal};
use crate::labels::{
    ANNOTATION_REQUESTS, ANNOTATION_STATE, LABEL_LEASE, LABEL_MANAGED_BY, MANAGER,
};
use crate::lease::{self, Observed, Timing};

/// An environment's Lease is `gitopsd-<environment>`.
const ENVIRONMENT_PREFIX: &str = "gitopsd-";
/// A daemon's heartbeat is `gitopsd.daemon.<identity>`: environment names have no dots, so it
/// never takes an environment's name.
const DAEMON_PREFIX: &str = "gitopsd.daemon.";

/// A Lease request that failed. Every one is retried on the next round.
#[derive(Debug, Error)]
pub enum LeaseError {
    #[error("Lease {name} in namespace {namespace}: {message}")]
    Request {
        name: String,
        namespace: String,
        message: String,
    },
}

/// An operator action asked of a daemon that does not hold the environment: the holder
/// journals `event` as done `by` that daemon's caller, once (`id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardedRequest {
    pub id: String,
    pub by: String,
    pub event: Event,
}

/// What this daemon found on the Lease when it took it.
#[derive(Debug, Clone, PartialEq)]
pub struct Adoption {
    /// Who held it last, when another daemon did.
    pub from: Option<String>,
    /// The history the cluster keeps for the environment.
    pub state: Option<serde_json::Value>,
}

/// Who holds an environment, for `status` and `/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Holding {
    pub holder: Option<String>,
    /// When other daemons may take it, by this host's clock.
    pub expires: Option<DateTime<Utc>>,
    /// This daemon holds it and may write.
    pub held_here: bool,
}

fn to_micro(time: DateTime<Utc>) -> Option<MicroTime> {
    let nanos = i32::try_from(time.timestamp_subsec_nanos()).ok()?;
    k8s_openapi::jiff::Timestamp::new(time.timestamp(), nanos)
        .ok()
        .map(MicroTime)
}

fn from_micro(time: &MicroTime) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(time.0.subsec_nanosecond()).ok()?;
    DateTime::from_timestamp(time.0.as_second(), nanos)
}

/// The Lease as the decisions read it.
pub fn observed(lease: &Lease) -> Observed {
    let spec = lease.spec.clone().unwrap_or_default();
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref());
    Observed {
        holder: spec.holder_identity,
        renewed: renewed.and_then(from_micro),
        duration: std::time::Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        ),
    }
}

/// The environment a Lease is for, when it is an environment's.
pub fn environment_of(lease: &Lease) -> Option<&str> {
    let labels = lease.metadata.labels.as_ref()?;
    if labels.get(LABEL_LEASE).map(String::as_str) != Some("environment") {
        return None;
    }
    lease
        .metadata
        .name
        .as_deref()?
        .strip_prefix(ENVIRONMENT_PREFIX)
}

/// Whether a Lease is a daemon's heartbeat.
pub fn is_heartbeat(lease: &Lease) -> bool {
    let kind = lease
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_LEASE));
    kind.map(String::as_str) == Some("daemon")
}

/// The Leases of one cluster and namespace, as this daemon (`identity`) reads and writes them.
#[derive(Clone)]
pub struct LeaseClient {
    api: Api<Lease>,
    namespace: String,
    identity: String,
    timing: Timing,
}

impl std::fmt::Debug for LeaseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseClient")
            .field("namespace", &self.namespace)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl LeaseClient {
    /// The Leases in `namespace` of the cluster `settings` names.
    pub async fn connect(
        settings: &KubernetesSettings,
        namespace: &str,
        identity: &str,
        timing: Timing,
    ) -> Result<Self, TargetError> {
        let client = super::KubernetesTarget::shared_client(settings).await?;
        Ok(Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            identity: identity.to_string(),
            timing,
        })
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    fn failed(&self, name: &str, error: &kube::Error) -> LeaseError {
        LeaseError::Request {
            name: name.to_string(),
            namespace: self.namespace.clone(),
            message: error.to_string(),
        }
    }

    /// Every Lease gitopsd keeps in the namespace: environments' and heartbeats.
    pub async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        let params = ListParams::default().labels(LABEL_LEASE);
        self.api
            .list(&params)
            .await
            .map(|list| list.items)
            .map_err(|e| self.failed("(list)", &e))
    }

    async fn get(&self, name: &str) -> Result<Option<Lease>, LeaseError> {
        self.api
            .get_opt(name)
            .await
            .map_err(|e| self.failed(name, &e))
    }

    /// Writes `lease` as a new object or over the version it was read at; `None` when
    /// another writer got there first (409).
    async fn put(&self, lease: &Lease) -> Result<Option<Lease>, LeaseError> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let params = PostParams::default();
        let answer = if lease.metadata.resource_version.is_some() {
            self.api.replace(&name, &params, lease).await
        } else {
            self.api.create(&params, lease).await
        };
        match answer {
            Ok(written) => Ok(Some(written)),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
            Err(error) => Err(self.failed(&name, &error)),
        }
    }

    fn fresh(&self, name: String, kind: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(self.namespace.clone()),
                labels: Some(
                    [
                        (LABEL_LEASE.to_string(), kind.to_string()),
                        (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec::default()),
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.timing.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    fn heartbeat_name(&self) -> String {
        format!("{DAEMON_PREFIX}{}", self.identity)
    }

    /// Renews this daemon's heartbeat (made on first use): other daemons count it as up
    /// while it is within its term. Only this daemon writes it.
    pub async fn beat(&self) -> Result<(), LeaseError> {
        let name = self.heartbeat_name();
        let mut lease = match self.get(&name).await? {
            Some(lease) => lease,
            None => self.fresh(name, "daemon"),
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(self.duration_seconds());
        spec.renew_time = to_micro(Utc::now());
        self.put(&lease).await.map(|_| ())
    }

    /// Deletes this daemon's heartbeat, so the others stop counting it at once.
    pub async fn stop_beating(&self) -> Result<(), LeaseError> {
        let name = self.heartbeat_name();
        match self.api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(self.failed(&name, &error)),
        }
    }

    /// The Lease of `environment`, held or not.
    pub fn environment(&self, environment: &str) -> Arc<EnvironmentLease> {
        Arc::new(EnvironmentLease {
            client: self.clone(),
            environment: environment.to_string(),
            name: format!("{ENVIRONMENT_PREFIX}{environment}"),
            slot: Mutex::new(Slot::default()),
            writes: tokio::sync::Mutex::new(()),
            held: watch::channel(false).0,
            journal: OnceLock::new(),
            wake: tokio::sync::Notify::new(),
            busy: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// What this daemon knows of one environment's Lease.
#[derive(Debug, Default)]
struct Slot {
    /// The object as last read or written.
    lease: Option<Lease>,
    /// Until when this daemon may write ([`lease::valid_until`]); `None` unless it holds it.
    valid_until: Option<Instant>,
    /// Found on taking it, until the environment's task reads it.
    adoption: Option<Adoption>,
    /// Forwarded requests journaled already, by id.
    done: BTreeSet<String>,
    /// The journal position whose history the Lease carries, as last written.
    carried: Option<u64>,
    /// Requests on the Lease as last listed.
    listed_requests: Vec<ForwardedRequest>,
}

/// One environment's Lease as this daemon holds it or watches it, and the fence its target
/// writes behind.
pub struct EnvironmentLease {
    client: LeaseClient,
    environment: String,
    name: String,
    slot: Mutex<Slot>,
    /// Serializes this daemon's writes of the Lease (renewals, state, releases).
    writes: tokio::sync::Mutex<()>,
    /// Whether this daemon holds it; the environment's task waits on it.
    held: watch::Sender<bool>,
    /// The environment's journal, whose history the holder keeps on the Lease.
    journal: OnceLock<SharedJournal>,
    /// Wakes the environment's task: it took the Lease, or a request was forwarded to it.
    wake: tokio::sync::Notify,
    /// The environment's task is in a pass (the coordinator gives idle ones up first).
    busy: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for EnvironmentLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvironmentLease")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl EnvironmentLease {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn environment(&self) -> &str {
        &self.environment
    }

    /// This daemon's identity in the Leases.
    pub fn identity(&self) -> &str {
        &self.client.identity
    }

    /// Gives the Lease the journal whose history it carries.
    pub fn attach(&self, journal: SharedJournal) {
        let _ = self.journal.set(journal);
    }

    /// Tells whether this daemon holds the Lease, on every change.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.held.subscribe()
    }

    /// The fence: `Ok` while this daemon holds the Lease with the write margin to spare.
    pub fn check(&self) -> Result<(), TargetError> {
        if self.is_held() {
            return Ok(());
        }
        Err(self.refused(
            "write for",
            format!(
                "this daemon ({}) does not hold Lease {}/{} with {:?} to spare; the holder acts for it",
                self.client.identity,
                self.client.namespace,
                self.name,
                self.client.timing.write_margin()
            ),
        ))
    }

    /// A write for the environment this daemon may not make now (never the revision's fault).
    fn refused(&self, operation: &'static str, message: String) -> TargetError {
        TargetError::Object {
            operation,
            object: format!("environment {}", self.environment),
            message,
            class: FailureClass::Infrastructure,
            missing: None,
        }
    }

    /// The fence before a write to the cluster: the Lease is held with the margin to spare,
    /// and the history the write follows from is on the Lease first, so that a successor
    /// never finds a write it has no record of.
    pub async fn before_write(&self) -> Result<(), TargetError> {
        self.check()?;
        let behind = self
            .journal
            .get()
            .is_some_and(|journal| self.lock().carried != Some(journal.next_seq()));
        if behind {
            let kept = self
                .write(false)
                .await
                .map_err(|error| self.refused("record the state of", error.to_string()))?;
            if !kept {
                return self.check();
            }
        }
        Ok(())
    }

    /// Whether this daemon may write now (the fence, without its error).
    pub fn is_held(&self) -> bool {
        let valid_until = self.lock().valid_until;
        lease::may_write(
            valid_until,
            Instant::now(),
            self.client.timing.write_margin(),
        )
    }

    /// Who holds the environment as last seen, for `status`.
    pub fn holding(&self) -> Holding {
        let slot = self.lock();
        let observed = slot.lease.as_ref().map(observed);
        let margin = self.client.timing.write_margin();
        Holding {
            holder: observed
                .as_ref()
                .and_then(|o| o.holder().map(str::to_string)),
            expires: observed
                .as_ref()
                .and_then(|o| o.expires(self.client.timing.max_skew)),
            held_here: lease::may_write(slot.valid_until, Instant::now(), margin),
        }
    }

    /// The Lease as listed by the coordinator: kept when this daemon does not hold it (what
    /// `status` shows); its forwarded requests wake the holder's task.
    pub fn seen(&self, listed: &Lease) {
        let mut slot = self.lock();
        if slot.valid_until.is_none() {
            slot.lease = Some(listed.clone());
        }
        slot.listed_requests = requests_of(listed);
        let new = slot
            .listed_requests
            .iter()
            .any(|request| !slot.done.contains(&request.id));
        let held = slot.valid_until.is_some();
        drop(slot);
        if new && held {
            self.wake.notify_one();
        }
    }

    /// Notified when this daemon took the Lease or a request was forwarded to it.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Marks the environment's task in a pass or idle.
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether this daemon took the Lease in this process and has not lost it since (its
    /// term may be running out: see [`Self::check`]).
    pub fn holds(&self) -> bool {
        self.lock().valid_until.is_some()
    }

    /// The history the cluster keeps for the environment, as last seen, while another
    /// daemon holds it (`None` when this one does: its journal is the current one).
    pub fn history_elsewhere(&self) -> Option<crate::history::History> {
        if self.is_held() {
            return None;
        }
        let text = self.lock().lease.as_ref().and_then(state_of)?;
        serde_json::from_str(&text).ok()
    }

    /// What the Lease held when this daemon took it; once.
    pub fn take_adoption(&self) -> Option<Adoption> {
        self.lock().adoption.take()
    }

    /// Requests other daemons forwarded that this one has not journaled yet.
    pub fn pending_requests(&self) -> Vec<ForwardedRequest> {
        let slot = self.lock();
        let mut pending: Vec<ForwardedRequest> = Vec::new();
        let written = slot.lease.as_ref().map(requests_of).unwrap_or_default();
        for request in written.into_iter().chain(slot.listed_requests.clone()) {
            if !slot.done.contains(&request.id) && !pending.iter().any(|p| p.id == request.id) {
                pending.push(request);
            }
        }
        pending
    }

    /// `id` is journaled: it is dropped from the Lease with the next write.
    pub fn request_done(&self, id: &str) {
        self.lock().done.insert(id.to_string());
    }

    fn lose(&self, lease: Option<Lease>) {
        let mut slot = self.lock();
        slot.valid_until = None;
        if lease.is_some() {
            slot.lease = lease;
        }
        drop(slot);
        self.held
            .send_if_modified(|held| std::mem::replace(held, false));
    }

    /// Takes the Lease as `current` shows it (`None`: no object yet), unless another daemon
    /// writes it first; `true` when this daemon holds it now.
    pub async fn acquire(&self, current: Option<Lease>) -> Result<bool, LeaseError> {
        let _writing = self.writes.lock().await;
        let previous = current.as_ref().map(observed);
        let mut lease = current
            .clone()
            .unwrap_or_else(|| self.client.fresh(self.name.clone(), "environment"));
        let now = Utc::now();
        let me = self.client.identity.clone();
        let from = previous
            .as_ref()
            .and_then(|o| o.holder().map(str::to_string))
            .filter(|holder| *holder != me);
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if previous.as_ref().and_then(Observed::holder) != Some(me.as_str()) {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(me);
        spec.lease_duration_seconds = Some(self.client.duration_seconds());
        spec.acquire_time = to_micro(now);
        spec.renew_time = to_micro(now);
        let sent = Instant::now();
        let Some(written) = self.client.put(&lease).await? else {
            return Ok(false);
        };
        let adoption = Adoption {
            from,
            state: state_of(&written).and_then(|text| serde_json::from_str(&text).ok()),
        };
        {
            let mut slot = self.lock();
            slot.valid_until = Some(lease::valid_until(sent, &self.client.timing));
            slot.lease = Some(written);
            slot.adoption = Some(adoption);
        }
        self.held.send_replace(true);
        self.wake.notify_one();
        Ok(true)
    }

    /// Renews the Lease with the environment's history on it; `false` (and the fence closes)
    /// when another daemon holds it now.
    pub async fn renew(&self) -> Result<bool, LeaseError> {
        self.write(true).await
    }

    /// Writes the Lease as its holder: renewed, with the history and without the requests
    /// already journaled. A conflict with another writer of this daemon's own Lease (a
    /// forwarded request) is read and written again; one with a new holder loses it.
    async fn write(&self, renew: bool) -> Result<bool, LeaseError> {
        let _writing = self.writes.lock().await;
        for _ in 0..3 {
            let Some(mut lease) = self.lock().lease.clone() else {
                self.lose(None);
                return Ok(false);
            };
            if observed(&lease).holder() != Some(self.client.identity.as_str())
                || self.lock().valid_until.is_none()
            {
                self.lose(None);
                return Ok(false);
            }
            let carried = self.carry_state(&mut lease);
            if renew {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                spec.renew_time = to_micro(Utc::now());
            }
            let sent = Instant::now();
            match self.client.put(&lease).await? {
                Some(written) => {
                    let mut slot = self.lock();
                    if renew {
                        slot.valid_until = Some(lease::valid_until(sent, &self.client.timing));
                    }
                    slot.lease = Some(written);
                    slot.carried = carried;
                    return Ok(true);
                }
                None => {
                    let fresh = self.client.get(&self.name).await?;
                    let still_mine = fresh.as_ref().is_some_and(|lease| {
                        observed(lease).holder() == Some(self.client.identity.as_str())
                    });
                    if !still_mine {
                        self.lose(fresh);
                        return Ok(false);
                    }
                    self.lock().lease = fresh;
                }
            }
        }
        Ok(false)
    }

    /// Puts the journal's history on `lease` and drops the requests already journaled;
    /// answers the journal position the history is at.
    fn carry_state(&self, lease: &mut Lease) -> Option<u64> {
        let requests = requests_of(lease);
        let annotations = lease
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        let carried = self.journal.get().map(|journal| {
            // The position first: a record appended meanwhile is carried again next time.
            let seq = journal.next_seq();
            let text = journal.with_history(serde_json::to_string);
            annotations.insert(ANNOTATION_STATE.to_string(), text.unwrap_or_default());
            seq
        });
        let done = self.lock().done.clone();
        let left: Vec<ForwardedRequest> = requests
            .into_iter()
            .filter(|request| !done.contains(&request.id))
            .collect();
        if left.is_empty() {
            annotations.remove(ANNOTATION_REQUESTS);
        } else if let Ok(text) = serde_json::to_string(&left) {
            annotations.insert(ANNOTATION_REQUESTS.to_string(), text);
        }
        carried
    }

    /// Gives the Lease up at once: the fence closes first, then the holder is cleared (the
    /// history stays on it for the next holder).
    pub async fn release(&self) -> Result<(), LeaseError> {
        let held = self.lock().valid_until.is_some();
        if !held {
            return Ok(());
        }
        self.lose(None);
        let _writing = self.writes.lock().await;
        let Some(mut lease) = self.lock().lease.clone() else {
            return Ok(());
        };
        let _ = self.carry_state(&mut lease);
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = None;
        if let Some(written) = self.client.put(&lease).await? {
            self.lock().lease = Some(written);
        }
        Ok(())
    }

    /// Asks the holder to journal `request` (this daemon does not hold the environment): it
    /// is added to the Lease's requests, with the version read as the precondition.
    pub async fn forward(&self, request: ForwardedRequest) -> Result<(), LeaseError> {
        for _ in 0..5 {
            let mut lease = match self.client.get(&self.name).await? {
                Some(lease) => lease,
                None => self.client.fresh(self.name.clone(), "environment"),
            };
            let mut requests = requests_of(&lease);
            requests.push(request.clone());
            let text = serde_json::to_string(&requests).map_err(|e| LeaseError::Request {
                name: self.name.clone(),
                namespace: self.client.namespace.clone(),
                message: e.to_string(),
            })?;
            lease
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(ANNOTATION_REQUESTS.to_string(), text);
            if self.client.put(&lease).await?.is_some() {
                return Ok(());
            }
        }
        Err(LeaseError::Request {
            name: self.name.clone(),
            namespace: self.client.namespace.clone(),
            message: "the Lease kept changing while the request was added; try again".into(),
        })
    }
}

impl super::KubernetesTarget {
    /// Puts every write of this target behind `lease` (`[ha]`).
    pub fn fence_with(&mut self, lease: Arc<EnvironmentLease>) {
        self.fence = Some(lease);
    }

    /// The fence before a write: the Lease held, with the history carried (`[ha]` only).
    pub(super) async fn fenced(&self) -> Result<(), TargetError> {
        match &self.fence {
            Some(lease) => lease.before_write().await,
            None => Ok(()),
        }
    }

    /// Whether this daemon may take a decision for the environment now (`[ha]`: it holds the
    /// Lease).
    pub fn fence_check(&self) -> Result<(), TargetError> {
        self.fence.as_ref().map_or(Ok(()), |lease| lease.check())
    }
}

fn state_of(lease: &Lease) -> Option<String> {
    lease
        .metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_STATE)
        .cloned()
}

fn requests_of(lease: &Lease) -> Vec<ForwardedRequest> {
    lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(ANNOTATION_REQUESTS))
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_times_keep_their_microseconds_both_ways() {
        let time = DateTime::from_timestamp(1_800_000_000, 123_456_000).expect("a time");
        let micro = to_micro(time).expect("in range");
        assert_eq!(from_micro(&micro), Some(time));
    }

    #[test]
    fn a_lease_is_read_as_its_holder_renewal_and_term() {
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "gitopsd-prod", "labels": {"gitopsd.io/lease": "environment"}},
            "spec": {
                "holderIdentity": "host-a",
                "leaseDurationSeconds": 15,
                "renewTime": "2026-12-07T10:00:00.250000Z"
            }
        }))
        .expect("a Lease");
        let seen = observed(&lease);
        assert_eq!(seen.holder(), Some("host-a"));
        assert_eq!(seen.duration, std::time::Duration::from_secs(15));
        assert_eq!(
            seen.renewed.map(|t| t.to_rfc3339()),
            Some("2026-12-07T10:00:00.250+00:00".to_string())
        );
        assert_eq!(environment_of(&lease), Some("prod"));
        assert!(!is_heartbeat(&lease));
    }
}
