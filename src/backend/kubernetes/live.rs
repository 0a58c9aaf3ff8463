//! Live state from the cluster's watch cache (the long-running daemon): an environment's
//! members and its parent read from the stores, never from a store still syncing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;

use super::KubernetesTarget;
use super::cache::{ClusterCache, TypeWatch};
use super::resolve::Resolved;
use crate::backend::TargetError;
use crate::backend::applyset::{GroupKind, ParentRef, ParentState};
use crate::model::{KindRef, Object, ResourceKey};

/// How long a pass waits for a store that is still syncing (a type needed for the first
/// time) before it is blocked.
pub(super) const SYNC_WAIT: Duration = Duration::from_secs(10);

/// The watches an environment holds: the parents' and those of the types it last listed
/// (a type none holds any more stops being watched), and those of the pods of the workloads
/// its rollout last waited for.
pub(super) struct Watched {
    pub(super) cache: Arc<ClusterCache>,
    pub(super) parents: Arc<TypeWatch>,
    /// Namespaced types are watched in these namespaces only (`None`: in all).
    pub(super) namespaces: Option<Vec<String>>,
    pub(super) types: Mutex<BTreeMap<String, Arc<TypeWatch>>>,
    /// Pod watches by (namespace, selector).
    pub(super) pods: Mutex<BTreeMap<(String, String), Arc<TypeWatch>>>,
    /// gitopsd's last write of each member: a store older than that is not read for it.
    pub(super) written: Mutex<BTreeMap<ResourceKey, Written>>,
    /// Notified when another writer changes one of the environment's members.
    pub(super) drift: Arc<Notify>,
}

/// What the server answered to gitopsd's last write of a member.
#[derive(Debug, Clone)]
pub(super) struct Written {
    /// Its `metadata.resourceVersion`.
    pub(super) version: String,
    /// Whether the object as written was ready (a ConfigMap, a ClusterIP Service: present is
    /// ready), so readiness need not read it back while its store lags the write.
    pub(super) ready: bool,
}

impl Watched {
    /// The watches of the environment whose ApplySet parent is `parent`, limited to
    /// `namespaces` when it is.
    pub(super) fn new(
        cache: Arc<ClusterCache>,
        parent: &ParentRef,
        namespaces: Option<Vec<String>>,
    ) -> Self {
        let parents_in = namespaces.as_ref().map(|_| parent.namespace.as_str());
        Self {
            parents: cache.parents(parents_in),
            drift: cache.wake_on_drift(&parent.id()),
            cache,
            namespaces,
            types: Mutex::new(BTreeMap::new()),
            pods: Mutex::new(BTreeMap::new()),
            written: Mutex::new(BTreeMap::new()),
        }
    }

    /// A summary of the environment's live state in the stores: its ApplySet parent's and
    /// every member's resourceVersion, by type. `None` before a settled pass holds the
    /// watches of the types it owns, and while any of those stores is syncing.
    pub(super) fn fingerprint(&self, parent: &ParentRef) -> Option<String> {
        use sha2::{Digest as _, Sha256};
        let types: Vec<Arc<TypeWatch>> = self
            .types
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        if types.is_empty() || !self.parents.state().synced {
            return None;
        }
        let id = parent.id();
        let mut hasher = Sha256::new();
        let parent_version = self
            .parents
            .version_of(Some(&parent.namespace), &parent.name)
            .unwrap_or_default();
        hasher.update(format!("parent\t{parent_version}\n"));
        for watch in &types {
            if !watch.state().synced {
                return None;
            }
            hasher.update(format!("type\t{}\n", watch.name()));
            for (namespace, name, version) in watch.member_versions(&id) {
                let namespace = namespace.unwrap_or_default();
                hasher.update(format!("{namespace}\t{name}\t{version}\n"));
            }
        }
        Some(
            hasher
                .finalize()
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect(),
        )
    }

    /// The held watch whose store holds `key`'s object, if any.
    pub(super) fn member_store(&self, key: &ResourceKey) -> Option<Arc<TypeWatch>> {
        self.types
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|watch| watch.covers(&key.group, &key.kind, key.namespace.as_deref()))
            .cloned()
    }

    /// The watch of the pods `selector` picks in `namespace`, held from now on.
    pub(super) fn pods_of(&self, namespace: &str, selector: &str) -> Arc<TypeWatch> {
        self.pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((namespace.to_string(), selector.to_string()))
            .or_insert_with(|| self.cache.pods(namespace, selector))
            .clone()
    }

    /// Notes what the server answered to gitopsd's write of `key`.
    pub(super) fn wrote(&self, key: &ResourceKey, answer: Option<Written>) {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        match answer {
            Some(answer) => written.insert(key.clone(), answer),
            None => written.remove(key),
        };
    }

    /// Whether gitopsd's last write of `key` found it ready as written, for a type the
    /// environment does not watch yet (a first apply's: its watches start at its settle).
    /// Where a store covers the type, the store (or a GET, while it lags) says: it also
    /// knows of a delete since the write, and while it syncs nothing is decided.
    pub(super) fn ready_as_written(&self, key: &ResourceKey) -> bool {
        if self.member_store(key).is_some() {
            return false;
        }
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|written| written.ready)
    }

    /// `key`'s object as its member store holds it, when that store is synced and holds it at
    /// least as new as gitopsd's last write; `None` when it must be read from the server
    /// (not stored yet, or the store lags the write).
    pub(super) fn fresh_member(&self, key: &ResourceKey) -> Option<Value> {
        let store = self.member_store(key)?;
        if !store.state().synced {
            return None;
        }
        let body = store.get(key.namespace.as_deref(), &key.name).ok()??;
        let written = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .map(|written| written.version.clone());
        match written {
            None => Some(body),
            Some(written) => {
                let stored = body
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)?;
                at_least(stored, &written).then_some(body)
            }
        }
    }

    /// Lets go of pod watches (a pass starts: the rollout that needed them is over).
    pub(super) fn release_pods(&self) {
        self.pods.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// The watches an environment reads, as `/status` shows them.
#[derive(Clone)]
pub struct CacheView(pub(super) Arc<Watched>);

impl std::fmt::Debug for CacheView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheView").finish_non_exhaustive()
    }
}

/// One type's store: `synced` or `syncing`, its objects (every environment's on the
/// cluster) and the watch's restarts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CacheTypeStatus {
    #[serde(rename = "type")]
    pub kind: String,
    pub state: &'static str,
    pub objects: usize,
    pub restarts: u64,
}

impl CacheView {
    /// The parents' store, then those of the types the environment last listed, then those
    /// of the pods it waits for.
    pub fn types(&self) -> Vec<CacheTypeStatus> {
        let mut types: Vec<Arc<TypeWatch>> = self
            .0
            .types
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        types.extend(
            self.0
                .pods
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned(),
        );
        std::iter::once(&self.0.parents)
            .chain(&types)
            .map(|watch| {
                let state = watch.state();
                CacheTypeStatus {
                    kind: watch.name().to_string(),
                    state: if state.synced { "synced" } else { "syncing" },
                    objects: watch.objects(),
                    restarts: state.restarts,
                }
            })
            .collect()
    }
}

/// How long a readiness poll waits for a new pod watch's first list before it LISTs.
pub(super) const POD_SYNC_WAIT: Duration = Duration::from_secs(2);

/// Whether resourceVersion `stored` is `written` or later. Versions are opaque to clients,
/// but every API server built on etcd hands out its revision; one that does not parse is
/// treated as older, so the object is read from the server.
fn at_least(stored: &str, written: &str) -> bool {
    match (stored.parse::<u64>(), written.parse::<u64>()) {
        (Ok(stored), Ok(written)) => stored >= written,
        _ => stored == written,
    }
}

/// A pass refused because stores it needs do not hold the whole set yet.
fn syncing(names: &[&str]) -> TargetError {
    TargetError::List {
        location: "the watch cache".into(),
        message: format!("cache syncing ({})", names.join(", ")),
    }
}

fn unreadable(location: &str, error: &serde_json::Error) -> TargetError {
    TargetError::List {
        location: location.to_string(),
        message: format!("cannot read the cached object: {error}"),
    }
}

impl KubernetesTarget {
    /// The environment's members of `types` from the stores, as the paged LISTs give them:
    /// by type, each type's in key order.
    pub(super) async fn list_watched(
        &self,
        watched: &Watched,
        types: &[(&KindRef, Resolved)],
    ) -> Result<Vec<Object>, TargetError> {
        let namespaces = watched.namespaces.as_deref();
        let watches: Vec<(&KindRef, Arc<TypeWatch>)> = types
            .iter()
            .flat_map(|(kind, resolved)| {
                let namespaced = resolved.namespaced;
                watched
                    .cache
                    .members_of(&resolved.resource, namespaces, namespaced)
                    .into_iter()
                    .map(move |watch| (*kind, watch))
            })
            .collect();
        // Held from now on; those the last pass held and this one does not are let go.
        *watched.types.lock().unwrap_or_else(|p| p.into_inner()) = watches
            .iter()
            .map(|(_, watch)| (watch.name().to_string(), watch.clone()))
            .collect();
        let synced = futures_util::future::join_all(
            watches
                .iter()
                .map(|(_, watch)| watch.synced_within(SYNC_WAIT)),
        )
        .await;
        let unsynced: Vec<&str> = watches
            .iter()
            .zip(&synced)
            .filter(|(_, synced)| !**synced)
            .map(|((_, watch), _)| watch.name())
            .collect();
        if !unsynced.is_empty() {
            return Err(syncing(&unsynced));
        }
        let mut objects = Vec::new();
        let mut of_type = Vec::new();
        for (at, (kind, watch)) in watches.iter().enumerate() {
            let bodies = watch
                .members(&self.id)
                .map_err(|error| unreadable(watch.name(), &error))?;
            self.take_page(kind, bodies, &mut of_type)?;
            // A type watched per namespace is one type: its objects sort together.
            let type_ends = watches.get(at + 1).is_none_or(|(next, _)| next != kind);
            if type_ends {
                of_type.sort_by(|a, b| a.key.cmp(&b.key));
                objects.append(&mut of_type);
            }
        }
        Ok(objects)
    }

    /// Holds the watches of `group_kinds` from now on (what the environment owns once a pass
    /// settles), so another writer's change to what was just applied wakes it before the
    /// next poll; those of types it no longer owns are let go.
    pub(super) async fn hold_watches_of(
        &self,
        watched: &Watched,
        group_kinds: &BTreeSet<GroupKind>,
    ) {
        let mut held = BTreeMap::new();
        for group_kind in group_kinds {
            // A type the server does not serve (any more) has nothing to watch.
            let Ok(kind) = self.resolve_group_kind(group_kind).await else {
                continue;
            };
            let Ok(resolved) = self.resolve(&kind, false).await else {
                continue;
            };
            let namespaces = watched.namespaces.as_deref();
            for watch in
                watched
                    .cache
                    .members_of(&resolved.resource, namespaces, resolved.namespaced)
            {
                held.insert(watch.name().to_string(), watch);
            }
        }
        *watched.types.lock().unwrap_or_else(|p| p.into_inner()) = held;
    }

    /// The parent as the parents' store holds it.
    pub(super) async fn parent_watched(
        &self,
        watched: &Watched,
    ) -> Result<Option<ParentState>, TargetError> {
        if !watched.parents.synced_within(SYNC_WAIT).await {
            return Err(syncing(&[watched.parents.name()]));
        }
        let body = watched
            .parents
            .get(Some(&self.parent.namespace), &self.parent.name)
            .map_err(|error| unreadable(&self.parent.to_string(), &error))?;
        Ok(body.map(|body| ParentState::from_body(&body)))
    }
}

#[cfg(test)]
mod tests {
    use super::at_least;

    #[test]
    fn a_store_is_read_only_once_it_holds_the_last_write() {
        assert!(at_least("120", "120"), "the write itself");
        assert!(at_least("121", "120"), "a status update after it");
        assert!(!at_least("99", "120"), "numbers, not text");
        assert!(!at_least("119", "120"), "the object before the write");
        assert!(!at_least("x1", "x2"), "opaque versions are read again");
        assert!(at_least("x1", "x1"));
    }
}
