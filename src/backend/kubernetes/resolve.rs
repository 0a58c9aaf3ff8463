//! Where a type's API lives: discovery, cached per type and shared by the environments on one
//! cluster, and the last version seen per group and kind (what the parent records has no
//! version).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{Scope, oneshot, pinned_kind};

use super::answers::describe;
use super::{ClientKey, KubernetesTarget};
use crate::backend::applyset::GroupKind;
use crate::model::{KindRef, ResourceKey, group_of};

/// Times discovery is asked again for a kind it does not know (a CRD applied just before).
pub(super) const DISCOVERY_RETRIES: u32 = 10;

/// How long a type found stays found: a CRD deleted or served at another version since is
/// looked up again after this (the cache is shared by a cluster's environments and outlives
/// reloads).
const DISCOVERY_TTL: Duration = Duration::from_secs(600);

/// Why a type could not be resolved.
#[derive(Debug, Clone)]
pub(super) enum ResolveError {
    /// The API server answered and does not serve the type.
    Unknown(String),
    /// The API server could not be asked.
    Unreachable(String),
}

/// Why the type of an owned key could not be resolved.
#[derive(Debug, thiserror::Error)]
pub(super) enum KeyTypeError {
    /// No list or apply of this target has seen the type, so its version is unknown.
    #[error("type of {key} was never listed or applied")]
    NeverSeen { key: String },
    #[error("{0}")]
    Resolve(ResolveError),
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::Unknown(message) | ResolveError::Unreachable(message) => {
                f.write_str(message)
            }
        }
    }
}

/// What discovery found on one cluster, by type, shared by every environment that targets it:
/// a type is looked up once per cluster, not once per environment (a fleet of 1,000
/// environments asked about 3,100 times on its first apply).
#[derive(Debug, Default)]
pub(super) struct Discovered {
    /// Each type as found, and when.
    found: Mutex<BTreeMap<KindRef, (Resolved, Instant)>>,
    /// One lookup at a time, so environments starting together ask once between them.
    turn: tokio::sync::Mutex<()>,
}

/// What discovery found on the cluster `key` names.
pub(super) fn shared_discovery(key: &ClientKey) -> Arc<Discovered> {
    static DISCOVERED: OnceLock<Mutex<BTreeMap<ClientKey, Arc<Discovered>>>> = OnceLock::new();
    DISCOVERED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key.clone())
        .or_default()
        .clone()
}

/// A resolved type: where its API lives and whether it is namespaced.
#[derive(Debug, Clone)]
pub(super) struct Resolved {
    pub(super) resource: ApiResource,
    pub(super) namespaced: bool,
}

impl KubernetesTarget {
    /// Where a type's API lives, from discovery (cached). `patient` asks again for a while
    /// when the kind is unknown, for custom resources whose CRD was applied just before.
    pub(super) async fn resolve(
        &self,
        kind: &KindRef,
        patient: bool,
    ) -> Result<Resolved, ResolveError> {
        if let Some(found) = self.found(kind) {
            return Ok(found);
        }
        let gvk = match kind.api_version.split_once('/') {
            Some((group, version)) => GroupVersionKind::gvk(group, version, &kind.kind),
            None => GroupVersionKind::gvk("", &kind.api_version, &kind.kind),
        };
        let tries = if patient { DISCOVERY_RETRIES } else { 1 };
        let mut last = String::new();
        for attempt in 1..=tries {
            let turn = self.discovery.turn.lock().await;
            // Another environment may have looked it up meanwhile.
            if let Some(found) = self.found(kind) {
                return Ok(found);
            }
            match self.within_limit(pinned_kind(&self.client, &gvk)).await {
                Ok((resource, capabilities)) => {
                    let resolved = Resolved {
                        resource,
                        namespaced: capabilities.scope == Scope::Namespaced,
                    };
                    self.lock_discovery()
                        .insert(kind.clone(), (resolved.clone(), Instant::now()));
                    return Ok(self.seen(kind, resolved));
                }
                Err(error) => {
                    let served_answer = match &error {
                        kube::Error::Api(status) => status.code == 404,
                        kube::Error::Discovery(_) => true,
                        _ => false,
                    };
                    if !served_answer {
                        return Err(ResolveError::Unreachable(format!(
                            "cannot reach the API server to look up {kind}: {}",
                            describe(&error).message
                        )));
                    }
                    last = describe(&error).message;
                    drop(turn);
                    if attempt < tries {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
        Err(ResolveError::Unknown(format!(
            "unknown kind {kind}: the API server does not serve it ({last})"
        )))
    }

    fn lock_discovery(&self) -> std::sync::MutexGuard<'_, BTreeMap<KindRef, (Resolved, Instant)>> {
        self.discovery
            .found
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// `kind` as the cluster's discovery found it within [`DISCOVERY_TTL`], now seen by this
    /// environment.
    fn found(&self, kind: &KindRef) -> Option<Resolved> {
        let (found, when) = self.lock_discovery().get(kind).cloned()?;
        if when.elapsed() > DISCOVERY_TTL {
            return None;
        }
        Some(self.seen(kind, found))
    }

    /// The types this environment has resolved, each at the version it last used.
    pub(super) fn kinds_used(&self) -> std::collections::BTreeSet<KindRef> {
        self.by_group_kind
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Notes `kind` as the version this environment last used of its group and kind.
    fn seen(&self, kind: &KindRef, resolved: Resolved) -> Resolved {
        self.by_group_kind
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                (group_of(&kind.api_version).to_string(), kind.kind.clone()),
                kind.clone(),
            );
        resolved
    }

    pub(super) fn api(&self, resolved: &Resolved, namespace: Option<&str>) -> Api<DynamicObject> {
        match (resolved.namespaced, namespace) {
            (true, Some(namespace)) => {
                Api::namespaced_with(self.client.clone(), namespace, &resolved.resource)
            }
            _ => Api::all_with(self.client.clone(), &resolved.resource),
        }
    }

    /// The type of an owned key, as last seen in a list or apply.
    pub(super) async fn resolve_key(&self, key: &ResourceKey) -> Result<Resolved, KeyTypeError> {
        let kind = self
            .by_group_kind
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(key.group.clone(), key.kind.clone()))
            .cloned()
            .ok_or_else(|| KeyTypeError::NeverSeen {
                key: key.to_string(),
            })?;
        self.resolve(&kind, false)
            .await
            .map_err(KeyTypeError::Resolve)
    }

    /// The served version of a group-kind the parent records (which has no version).
    pub(super) async fn resolve_group_kind(
        &self,
        group_kind: &GroupKind,
    ) -> Result<KindRef, ResolveError> {
        let known = self
            .by_group_kind
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(group_kind.group.clone(), group_kind.kind.clone()))
            .cloned();
        if let Some(kind) = known {
            return Ok(kind);
        }
        let group = match self
            .within_limit(oneshot::group(&self.client, &group_kind.group))
            .await
        {
            Ok(group) => group,
            Err(error) => {
                let failure = describe(&error);
                let unserved = failure.is(404) || matches!(error, kube::Error::Discovery(_));
                return Err(if unserved {
                    ResolveError::Unknown(format!("group {:?} is not served", group_kind.group))
                } else {
                    ResolveError::Unreachable(format!(
                        "cannot reach the API server to look up {group_kind}: {}",
                        failure.message
                    ))
                });
            }
        };
        let Some((resource, _)) = group.recommended_kind(&group_kind.kind) else {
            return Err(ResolveError::Unknown(format!("{group_kind} is not served")));
        };
        let kind = KindRef {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
        };
        self.resolve(&kind, false).await?;
        Ok(kind)
    }
}
