//! The daemon's watch cache: one per cluster (kubeconfig and context), shared by every
//! environment that targets it, with one watch per API type some environment owns (only
//! gitopsd's members, by the `applyset.kubernetes.io/part-of` label; per namespace for
//! environments limited to named namespaces), one of the ApplySet parents, and one of the pods
//! of each workload in flight. kube-runtime's watcher owns lists, resumes and bookmarks; each
//! watch keeps its objects as compact JSON in a store of its own (`store.rs`). A watch that
//! fails (410 Gone, the server gone) lists again after a backoff, and a store is `syncing`
//! from the failure until that list is complete.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::runtime::watcher;
use serde_json::Value;
use tokio::sync::{Notify, watch};

use super::ClientKey;
use super::drift::{DriftWatch, Wakers};
use super::parent::LEGACY_FIELD_MANAGER;
use super::store::{self, ObjectStore};
use crate::labels::{LABEL_ID, LABEL_PART_OF};

/// Objects per page of a watch's (re)list, as for the paged LISTs.
const WATCH_PAGE: u32 = 500;

/// The wait before a broken watch lists again, doubled on each failure in a row up to
/// [`WATCH_BACKOFF_LAST`].
const WATCH_BACKOFF_FIRST: Duration = Duration::from_millis(500);
const WATCH_BACKOFF_LAST: Duration = Duration::from_secs(30);

/// What a type's store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchState {
    /// The store holds every object the last complete list and the events since showed.
    pub synced: bool,
    /// Times the watch started over with a full list after its first one (a 410 Gone, a
    /// list that failed half-way).
    pub restarts: u64,
    /// Lists started.
    lists: u64,
}

/// Where a watch event leaves the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A (re)list starts: the store is replaced once it completes.
    Listing,
    /// The list completed and the store holds it.
    Listed,
    /// An object changed or went while watching.
    Watching,
    /// The watch failed: events may be missed until it lists again.
    Broken,
}

impl WatchState {
    /// The state after an event of `phase`; true when it is a restart.
    fn after(&mut self, phase: Phase) -> bool {
        match phase {
            Phase::Listing => {
                self.synced = false;
                self.lists += 1;
                let restart = self.lists > 1;
                if restart {
                    self.restarts += 1;
                }
                restart
            }
            Phase::Listed => {
                self.synced = true;
                false
            }
            Phase::Broken => {
                self.synced = false;
                false
            }
            Phase::Watching => false,
        }
    }
}

/// One type's watch, running while anything holds it.
pub(super) struct TypeWatch {
    name: String,
    resource: ApiResource,
    /// The namespace watched; `None` for every namespace.
    namespace: Option<String>,
    store: Arc<RwLock<ObjectStore>>,
    state: watch::Receiver<WatchState>,
    task: tokio::task::AbortHandle,
}

impl Drop for TypeWatch {
    fn drop(&mut self) {
        tracing::debug!(r#type = %self.name, "no environment needs this type any more; its watch stops");
        self.task.abort();
    }
}

impl TypeWatch {
    /// The type, as metrics and messages name it (`apps/v1/Deployment`).
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn state(&self) -> WatchState {
        *self.state.borrow()
    }

    /// Objects the store holds.
    pub(super) fn objects(&self) -> usize {
        self.read().len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ObjectStore> {
        self.store.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `wait` for the store to be synced; whether it is.
    pub(super) async fn synced_within(&self, wait: Duration) -> bool {
        let mut state = self.state.clone();
        matches!(
            tokio::time::timeout(wait, state.wait_for(|state| state.synced)).await,
            Ok(Ok(_))
        )
    }

    /// The stored members of the ApplySet `id`, as JSON bodies in key order.
    pub(super) fn members(&self, id: &str) -> Result<Vec<Value>, serde_json::Error> {
        let bodies = self.read().members(id);
        bodies.iter().map(|body| store::parse(body)).collect()
    }

    /// Namespace, name and resourceVersion of each stored member of the ApplySet `id`, in
    /// key order: any write to a member (its status included) changes them.
    pub(super) fn member_versions(&self, id: &str) -> Vec<(Option<String>, String, String)> {
        self.read().member_versions(id)
    }

    /// The resourceVersion of one stored object, if the store holds it.
    pub(super) fn version_of(&self, namespace: Option<&str>, name: &str) -> Option<String> {
        self.read()
            .version_of(&(namespace.map(str::to_string), name.to_string()))
    }

    /// One stored object, as a JSON body (`namespace` `None` for a cluster-scoped one).
    pub(super) fn get(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, serde_json::Error> {
        let body = self
            .read()
            .body(&(namespace.map(str::to_string), name.to_string()));
        body.map(|body| store::parse(&body)).transpose()
    }

    /// Every stored object, as JSON bodies.
    pub(super) fn all(&self) -> Result<Vec<Value>, serde_json::Error> {
        let bodies = self.read().bodies();
        bodies.iter().map(|body| store::parse(body)).collect()
    }

    /// Whether the store holds objects of `group`/`kind` in `namespace`.
    pub(super) fn covers(&self, group: &str, kind: &str, namespace: Option<&str>) -> bool {
        self.resource.group == group
            && self.resource.kind == kind
            && self
                .namespace
                .as_deref()
                .is_none_or(|watched| Some(watched) == namespace)
    }
}

/// Where one of gitopsd's watches looks, and what for.
struct Wanted<'a> {
    /// The store's name in metrics and `/status`.
    name: String,
    resource: &'a ApiResource,
    /// A label selector.
    selector: &'a str,
    /// One namespace, or `None` for all.
    namespace: Option<&'a str>,
    /// Whether changes by other writers wake environments (members), or not (pods).
    drift: bool,
}

/// The watches of one cluster, by type and label selector.
pub(super) struct ClusterCache {
    client: Client,
    watches: Mutex<BTreeMap<(String, String), Weak<TypeWatch>>>,
    /// Environments to wake when another writer changes one of their members.
    wakers: Wakers,
}

impl std::fmt::Debug for ClusterCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCache").finish_non_exhaustive()
    }
}

fn caches() -> &'static Mutex<BTreeMap<ClientKey, Arc<ClusterCache>>> {
    static CACHES: std::sync::OnceLock<Mutex<BTreeMap<ClientKey, Arc<ClusterCache>>>> =
        std::sync::OnceLock::new();
    CACHES.get_or_init(Default::default)
}

/// The name of a type in metrics and messages.
pub(super) fn type_name(resource: &ApiResource) -> String {
    format!("{}/{}", resource.api_version, resource.kind)
}

impl ClusterCache {
    /// The cache of the cluster `key` names, made on first use.
    pub(super) fn of(key: &ClientKey, client: &Client) -> Arc<Self> {
        caches()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Self {
                    client: client.clone(),
                    watches: Mutex::new(BTreeMap::new()),
                    wakers: Wakers::default(),
                })
            })
            .clone()
    }

    /// What wakes the environment of ApplySet `id` when another writer changes a member.
    pub(super) fn wake_on_drift(&self, id: &str) -> Arc<Notify> {
        let waker = Arc::new(Notify::new());
        let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        wakers.retain(|_, waker| waker.strong_count() > 0);
        wakers.insert(id.to_string(), Arc::downgrade(&waker));
        waker
    }

    /// The watches of gitopsd's members of one type, started if nothing holds them yet: one
    /// per namespace of `namespaces` for a namespaced type, else one of every namespace.
    pub(super) fn members_of(
        &self,
        resource: &ApiResource,
        namespaces: Option<&[String]>,
        namespaced: bool,
    ) -> Vec<Arc<TypeWatch>> {
        let name = type_name(resource);
        match namespaces.filter(|_| namespaced) {
            Some(namespaces) => namespaces
                .iter()
                .map(|namespace| {
                    self.need(Wanted {
                        name: format!("{name} in {namespace}"),
                        resource,
                        selector: LABEL_PART_OF,
                        namespace: Some(namespace),
                        drift: true,
                    })
                })
                .collect(),
            None => vec![self.need(Wanted {
                name,
                resource,
                selector: LABEL_PART_OF,
                namespace: None,
                drift: true,
            })],
        }
    }

    /// The watch of ApplySet parents (ConfigMaps labelled with an applyset id): of
    /// `namespace`, or of every namespace.
    pub(super) fn parents(&self, namespace: Option<&str>) -> Arc<TypeWatch> {
        let resource = ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
        self.need(Wanted {
            name: match namespace {
                Some(namespace) => format!("applyset-parents in {namespace}"),
                None => "applyset-parents".into(),
            },
            resource: &resource,
            selector: LABEL_ID,
            namespace,
            drift: false,
        })
    }

    /// The watch of the pods `selector` picks in `namespace` (a workload's).
    pub(super) fn pods(&self, namespace: &str, selector: &str) -> Arc<TypeWatch> {
        let resource = ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&());
        self.need(Wanted {
            name: format!("v1/Pod in {namespace} ({selector})"),
            resource: &resource,
            selector,
            namespace: Some(namespace),
            drift: false,
        })
    }

    fn need(&self, wanted: Wanted<'_>) -> Arc<TypeWatch> {
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let key = (wanted.name.clone(), wanted.selector.to_string());
        if let Some(running) = watches.get(&key).and_then(Weak::upgrade) {
            return running;
        }
        let Wanted {
            name,
            resource,
            selector,
            namespace,
            drift,
        } = wanted;
        tracing::debug!(r#type = %name, "an environment needs this type: its watch starts");
        let api: Api<DynamicObject> = match namespace {
            Some(namespace) => Api::namespaced_with(self.client.clone(), namespace, resource),
            None => Api::all_with(self.client.clone(), resource),
        };
        let config = watcher::Config::default()
            .labels(selector)
            .page_size(WATCH_PAGE);
        let store = Arc::new(RwLock::new(ObjectStore::default()));
        let (sender, state) = watch::channel(WatchState::default());
        let drift = drift.then(|| DriftWatch::new(self.wakers.clone()));
        let task = tokio::spawn(keep(
            api,
            config,
            store.clone(),
            sender,
            name.clone(),
            drift,
        ));
        let started = Arc::new(TypeWatch {
            name,
            resource: resource.clone(),
            namespace: namespace.map(str::to_string),
            store,
            state,
            task: task.abort_handle(),
        });
        watches.retain(|_, watch| watch.strong_count() > 0);
        watches.insert(key, Arc::downgrade(&started));
        started
    }
}

/// Removes a type's series when its watch stops (the task is dropped when aborted).
struct Series(String);

impl Drop for Series {
    fn drop(&mut self) {
        crate::metrics::kube().cache_stopped(&self.0);
    }
}

/// Keeps the store up to date from the watch, and `state` with it.
async fn keep(
    api: Api<DynamicObject>,
    config: watcher::Config,
    store: Arc<RwLock<ObjectStore>>,
    state: watch::Sender<WatchState>,
    name: String,
    mut drift: Option<DriftWatch>,
) {
    let series = Series(name);
    let metrics = crate::metrics::kube();
    let mut backoff = WATCH_BACKOFF_FIRST;
    loop {
        let mut events = std::pin::pin!(watcher(api.clone(), config.clone()));
        while let Some(event) = events.next().await {
            let mut event = match event {
                Ok(event) => event,
                Err(error) => {
                    // Events may have been missed (the server restarted, the watch expired):
                    // no decision is taken from the store until a fresh list is complete.
                    tracing::warn!(r#type = %series.0, %error, "watch failed; the store is syncing until a relist after a backoff");
                    state.send_modify(|state| {
                        state.after(Phase::Broken);
                    });
                    break;
                }
            };
            let woken = drift.as_mut().and_then(|drift| drift.observe(&event));
            strip_event(&mut event);
            let phase = match event {
                watcher::Event::Init => Phase::Listing,
                watcher::Event::InitDone => Phase::Listed,
                _ => Phase::Watching,
            };
            // Unsynced before a relist starts; synced only once the store holds the whole list.
            if phase == Phase::Listing {
                let mut restarted = false;
                state.send_modify(|state| restarted = state.after(phase));
                if restarted {
                    metrics.watch_restarted(&series.0);
                }
            }
            let stored = {
                let mut store = store.write().unwrap_or_else(|p| p.into_inner());
                store.apply(&event).map(|()| store.len())
            };
            let stored = match stored {
                Ok(stored) => stored,
                Err(error) => {
                    // The store may miss an object: as for a broken watch, list again.
                    tracing::warn!(r#type = %series.0, %error, "an object could not be stored; the store is syncing until a relist after a backoff");
                    state.send_modify(|state| {
                        state.after(Phase::Broken);
                    });
                    break;
                }
            };
            if phase == Phase::Listed {
                backoff = WATCH_BACKOFF_FIRST;
                state.send_modify(|state| {
                    state.after(phase);
                });
            }
            if phase != Phase::Listing {
                metrics.cache_objects(&series.0, stored);
            }
            if let Some((applyset, waker)) = woken {
                tracing::info!(r#type = %series.0, %applyset, "another writer changed a member; its environment passes now");
                waker.notify_one();
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(WATCH_BACKOFF_LAST);
    }
}

fn strip_event(event: &mut watcher::Event<DynamicObject>) {
    match event {
        watcher::Event::Apply(object)
        | watcher::Event::Delete(object)
        | watcher::Event::InitApply(object) => {
            strip_managed_fields(object);
            strip_last_applied(object);
        }
        watcher::Event::Init | watcher::Event::InitDone => {}
    }
}

/// `kubectl apply`'s copy of the whole object, often its largest field: no decision reads it.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn strip_last_applied(object: &mut DynamicObject) {
    if let Some(annotations) = object.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            object.metadata.annotations = None;
        }
    }
}

/// Drops the object's managed fields, which no decision reads from the store (drift reads
/// them from the event, before this), unless an entry of [`LEGACY_FIELD_MANAGER`] is there:
/// the patch that removes that entry restates every other entry, so they are all kept.
pub(super) fn strip_managed_fields(object: &mut DynamicObject) {
    let legacy = object
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .any(|entry| {
            entry.manager.as_deref() == Some(LEGACY_FIELD_MANAGER)
                && entry.operation.as_deref() == Some("Apply")
        });
    if !legacy {
        object.metadata.managed_fields = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_is_synced_only_between_a_complete_list_and_the_next_relist() {
        let mut state = WatchState::default();
        assert!(!state.synced, "syncing until the first list completes");
        assert!(!state.after(Phase::Listing), "the first list is no restart");
        assert!(!state.after(Phase::Watching));
        assert!(
            !state.synced,
            "objects of a list under way are not the whole set"
        );
        state.after(Phase::Listed);
        assert!(state.synced);
        state.after(Phase::Watching);
        assert!(state.synced, "events keep the store whole");
        assert!(
            state.after(Phase::Listing),
            "a relist (410 Gone) is a restart"
        );
        assert!(!state.synced, "and syncing again until it completes");
        assert_eq!(state.restarts, 1);
        // A list that failed half-way starts over: another restart, still syncing.
        assert!(state.after(Phase::Listing));
        assert!(!state.synced);
        state.after(Phase::Listed);
        assert!(state.synced);
        assert_eq!(state.restarts, 2);
        // A broken watch (the server went away) may have missed events: syncing until the
        // relist that follows is complete.
        state.after(Phase::Broken);
        assert!(!state.synced);
        assert!(state.after(Phase::Listing));
        assert!(!state.synced);
        state.after(Phase::Listed);
        assert!(state.synced);
        assert_eq!(state.restarts, 3);
    }

    #[test]
    fn kubectls_copy_of_the_object_is_not_kept() {
        let mut object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "annotations": {
                LAST_APPLIED: "{\"apiVersion\":\"v1\"}", "team": "web"}}
        }))
        .expect("an object");
        strip_last_applied(&mut object);
        assert_eq!(
            object.metadata.annotations,
            Some([("team".to_string(), "web".to_string())].into())
        );
        let mut only: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "b", "annotations": {LAST_APPLIED: "{}"}}
        }))
        .expect("an object");
        strip_last_applied(&mut only);
        assert_eq!(only.metadata.annotations, None);
    }

    #[test]
    fn managed_fields_are_kept_only_while_a_legacy_entry_needs_them() {
        let entries = serde_json::json!([
            {"manager": "gitopsd-staging", "operation": "Apply"},
            {"manager": "kubectl-patch", "operation": "Update"},
            {"manager": "kube-controller-manager", "operation": "Update"}
        ]);
        let object = |entries: &serde_json::Value| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "a", "managedFields": entries}
            }))
            .expect("an object")
        };
        let mut current = object(&entries);
        strip_managed_fields(&mut current);
        assert_eq!(current.metadata.managed_fields, None);

        let mut with_legacy = entries.clone();
        with_legacy
            .as_array_mut()
            .expect("a list")
            .push(serde_json::json!({"manager": "gitopsd", "operation": "Apply"}));
        let mut legacy = object(&with_legacy);
        strip_managed_fields(&mut legacy);
        let managers: Vec<&str> = legacy
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|entry| entry.manager.as_deref())
            .collect();
        // The removal patch restates the others: dropping any would take their fields away.
        assert_eq!(
            managers,
            [
                "gitopsd-staging",
                "kubectl-patch",
                "kube-controller-manager",
                "gitopsd"
            ]
        );
    }
}
