//! Live state from the cluster's watch cache (the long-running daemon): an environment's
//! members and its parent read from the stores, never from a store still syncing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::KubernetesTarget;
use super::cache::{ClusterCache, TypeWatch};
use super::resolve::Resolved;
use crate::backend::TargetError;
use crate::backend::applyset::ParentState;
use crate::model::{KindRef, Object};

/// How long a pass waits for a store that is still syncing (a type needed for the first
/// time) before it is blocked.
pub(super) const SYNC_WAIT: Duration = Duration::from_secs(10);

/// The watches an environment holds: the parents' and those of the types it last listed
/// (a type none holds any more stops being watched).
pub(super) struct Watched {
    pub(super) cache: Arc<ClusterCache>,
    pub(super) parents: Arc<TypeWatch>,
    pub(super) types: Mutex<BTreeMap<String, Arc<TypeWatch>>>,
    /// Notified when another writer changes one of the environment's members.
    pub(super) drift: Arc<Notify>,
}

impl Watched {
    /// The watches of the environment whose ApplySet is `id`.
    pub(super) fn new(cache: Arc<ClusterCache>, id: &str) -> Self {
        Self {
            parents: cache.parents(),
            drift: cache.wake_on_drift(id),
            cache,
            types: Mutex::new(BTreeMap::new()),
        }
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
    /// The parents' store, then those of the types the environment last listed.
    pub fn types(&self) -> Vec<CacheTypeStatus> {
        let types: Vec<Arc<TypeWatch>> = self
            .0
            .types
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
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
        let watches: Vec<(&KindRef, Arc<TypeWatch>)> = types
            .iter()
            .map(|(kind, resolved)| (*kind, watched.cache.members_of(&resolved.resource)))
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
        for (kind, watch) in &watches {
            let bodies = watch
                .members(&self.id)
                .map_err(|error| unreadable(watch.name(), &error))?;
            let mut of_type = Vec::new();
            self.take_page(kind, bodies, &mut of_type)?;
            of_type.sort_by(|a, b| a.key.cmp(&b.key));
            objects.extend(of_type);
        }
        Ok(objects)
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
            .get(&self.parent.namespace, &self.parent.name)
            .map_err(|error| unreadable(&self.parent.to_string(), &error))?;
        Ok(body.map(|body| ParentState::from_body(&body)))
    }
}
