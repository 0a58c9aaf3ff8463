//! The daemon's watch cache: one per cluster (kubeconfig and context), shared by every
//! environment that targets it, with one watch per API type some environment owns (only
//! gitopsd's members, by the `applyset.kubernetes.io/part-of` label) and one of the ApplySet
//! parents. kube-runtime's watcher owns relists (410 Gone), bookmarks and backoff; a type is
//! `syncing` until its list is complete and again from each relist until that one is.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tokio::sync::{Notify, watch};

use super::drift::{DriftWatch, Wakers};
use super::{ClientKey, FIELD_MANAGER_PREFIX};
use crate::labels::{LABEL_ID, LABEL_PART_OF};

/// Objects per page of a watch's (re)list, as for the paged LISTs.
const WATCH_PAGE: u32 = 500;

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
            Phase::Watching => false,
        }
    }
}

/// An object's place in its store: namespace (none when cluster-scoped) and name.
type Key = (Option<String>, String);

/// The stored objects of each ApplySet, by the id in their `part-of` label, so that a pass
/// reads its environment's members without looking at every object of the type (the stores
/// hold every environment's): a no-op round of 1,000 environments otherwise costs
/// 1,000 × the store. Follows the store through the watch's events, a (re)list included.
#[derive(Debug, Default)]
struct MemberIndex {
    by_id: HashMap<String, BTreeSet<Key>>,
    ids: HashMap<Key, String>,
    /// Built during a (re)list; replaces the rest when it completes, as the store's buffer does.
    listing: Option<Box<MemberIndex>>,
}

fn index_key(object: &DynamicObject) -> Key {
    (object.metadata.namespace.clone(), object.name_any())
}

impl MemberIndex {
    fn insert(&mut self, object: &DynamicObject) {
        let key = index_key(object);
        self.remove(&key);
        if let Some(id) = object.labels().get(LABEL_PART_OF) {
            self.by_id
                .entry(id.clone())
                .or_default()
                .insert(key.clone());
            self.ids.insert(key, id.clone());
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(id) = self.ids.remove(key)
            && let Some(keys) = self.by_id.get_mut(&id)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.by_id.remove(&id);
            }
        }
    }

    fn apply(&mut self, event: &watcher::Event<DynamicObject>) {
        match event {
            watcher::Event::Apply(object) => self.insert(object),
            watcher::Event::Delete(object) => self.remove(&index_key(object)),
            watcher::Event::Init => self.listing = Some(Box::default()),
            watcher::Event::InitApply(object) => {
                self.listing.get_or_insert_with(Box::default).insert(object)
            }
            watcher::Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                self.by_id = listed.by_id;
                self.ids = listed.ids;
            }
        }
    }

    fn members(&self, id: &str) -> Vec<Key> {
        self.by_id
            .get(id)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// One type's watch, running while anything holds it.
pub(super) struct TypeWatch {
    name: String,
    resource: ApiResource,
    store: Store<DynamicObject>,
    index: Arc<RwLock<MemberIndex>>,
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
        self.store.len()
    }

    /// Waits up to `wait` for the store to be synced; whether it is.
    pub(super) async fn synced_within(&self, wait: Duration) -> bool {
        let mut state = self.state.clone();
        matches!(
            tokio::time::timeout(wait, state.wait_for(|state| state.synced)).await,
            Ok(Ok(_))
        )
    }

    /// The stored members of the ApplySet `id`, as JSON bodies.
    pub(super) fn members(&self, id: &str) -> Result<Vec<Value>, serde_json::Error> {
        let keys = self
            .index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .members(id);
        keys.into_iter()
            .filter_map(|(namespace, name)| {
                let key = ObjectRef::new_with(&name, self.resource.clone());
                let key = match namespace {
                    Some(namespace) => key.within(&namespace),
                    None => key,
                };
                self.store.get(&key)
            })
            // The index and the store follow the same events, one after the other.
            .filter(|object| object.labels().get(LABEL_PART_OF).map(String::as_str) == Some(id))
            .map(|object| serde_json::to_value(&*object))
            .collect()
    }

    /// One stored object, as a JSON body.
    pub(super) fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, serde_json::Error> {
        let key = ObjectRef::new_with(name, self.resource.clone()).within(namespace);
        self.store
            .get(&key)
            .map(|object| serde_json::to_value(&*object))
            .transpose()
    }
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

    /// The watch of gitopsd's members of one type, started if nothing holds it yet.
    pub(super) fn members_of(&self, resource: &ApiResource) -> Arc<TypeWatch> {
        self.need(type_name(resource), resource, LABEL_PART_OF)
    }

    /// The watch of every ApplySet parent (ConfigMaps labelled with an applyset id).
    pub(super) fn parents(&self) -> Arc<TypeWatch> {
        let resource = ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
        self.need("applyset-parents".into(), &resource, LABEL_ID)
    }

    fn need(&self, name: String, resource: &ApiResource, label: &str) -> Arc<TypeWatch> {
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let key = (name.clone(), label.to_string());
        if let Some(running) = watches.get(&key).and_then(Weak::upgrade) {
            return running;
        }
        tracing::debug!(r#type = %name, "an environment needs this type: its watch starts");
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), resource);
        let config = watcher::Config::default()
            .labels(label)
            .page_size(WATCH_PAGE);
        let writer = Writer::new(resource.clone());
        let store = writer.as_reader();
        let index = Arc::new(RwLock::new(MemberIndex::default()));
        let (sender, state) = watch::channel(WatchState::default());
        let drift = DriftWatch::new(self.wakers.clone());
        let stores = Stores {
            writer,
            index: index.clone(),
        };
        let task = tokio::spawn(keep(api, config, stores, sender, name.clone(), drift));
        let started = Arc::new(TypeWatch {
            name,
            resource: resource.clone(),
            store,
            index,
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

/// What a type's watch keeps up to date: the store and its index by ApplySet.
struct Stores {
    writer: Writer<DynamicObject>,
    index: Arc<RwLock<MemberIndex>>,
}

/// Keeps the store and its index up to date from the watch, and `state` with them.
async fn keep(
    api: Api<DynamicObject>,
    config: watcher::Config,
    stores: Stores,
    state: watch::Sender<WatchState>,
    name: String,
    mut drift: DriftWatch,
) {
    let series = Series(name);
    let Stores { mut writer, index } = stores;
    let metrics = crate::metrics::kube();
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    while let Some(event) = events.next().await {
        let mut event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(r#type = %series.0, %error, "watch failed; it resumes after a backoff");
                continue;
            }
        };
        let woken = drift.observe(&event);
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
        index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .apply(&event);
        writer.apply_watcher_event(&event);
        if phase == Phase::Listed {
            state.send_modify(|state| {
                state.after(phase);
            });
        }
        if phase != Phase::Listing {
            metrics.cache_objects(&series.0, writer.as_reader().len());
        }
        if let Some((applyset, waker)) = woken {
            tracing::info!(r#type = %series.0, %applyset, "another writer changed a member; its environment passes now");
            waker.notify_one();
        }
    }
}

fn strip_event(event: &mut watcher::Event<DynamicObject>) {
    match event {
        watcher::Event::Apply(object)
        | watcher::Event::Delete(object)
        | watcher::Event::InitApply(object) => strip_foreign_managers(object),
        watcher::Event::Init | watcher::Event::InitDone => {}
    }
}

/// Drops the managed-fields entries of managers that are not gitopsd's (the store need not
/// hold them; the legacy-manager clean-up reads gitopsd's own).
pub(super) fn strip_foreign_managers(object: &mut DynamicObject) {
    let legacy = FIELD_MANAGER_PREFIX.trim_end_matches('-');
    if let Some(entries) = object.metadata.managed_fields.as_mut() {
        entries.retain(|entry| {
            entry
                .manager
                .as_deref()
                .is_some_and(|manager| manager.starts_with(legacy))
        });
        if entries.is_empty() {
            object.metadata.managed_fields = None;
        }
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
    }

    fn member(namespace: Option<&str>, name: &str, id: Option<&str>) -> DynamicObject {
        let mut metadata = serde_json::json!({"name": name});
        if let Some(namespace) = namespace {
            metadata["namespace"] = namespace.into();
        }
        if let Some(id) = id {
            metadata["labels"] = serde_json::json!({ LABEL_PART_OF: id });
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata
        }))
        .expect("an object")
    }

    fn names(index: &MemberIndex, id: &str) -> Vec<String> {
        index
            .members(id)
            .into_iter()
            .map(|(namespace, name)| format!("{}/{name}", namespace.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn the_member_index_follows_the_watch_events() {
        use watcher::Event;
        let mut index = MemberIndex::default();
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(member(Some("a"), "x", Some("one"))));
        index.apply(&Event::InitApply(member(Some("b"), "x", Some("two"))));
        index.apply(&Event::InitApply(member(None, "ns", Some("one"))));
        index.apply(&Event::InitApply(member(Some("a"), "free", None)));
        assert!(
            names(&index, "one").is_empty(),
            "a list under way is not read"
        );
        index.apply(&Event::InitDone);
        assert_eq!(names(&index, "one"), ["/ns", "a/x"]);
        assert_eq!(names(&index, "two"), ["b/x"]);
        // Taken over by another applyset: it moves.
        index.apply(&Event::Apply(member(Some("a"), "x", Some("two"))));
        assert_eq!(names(&index, "one"), ["/ns"]);
        assert_eq!(names(&index, "two"), ["a/x", "b/x"]);
        // Its label removed: no one's member.
        index.apply(&Event::Apply(member(Some("b"), "x", None)));
        assert_eq!(names(&index, "two"), ["a/x"]);
        index.apply(&Event::Delete(member(Some("a"), "x", Some("two"))));
        assert!(names(&index, "two").is_empty());
        // A relist replaces everything once it completes: what went meanwhile is gone.
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(member(Some("c"), "y", Some("two"))));
        assert_eq!(names(&index, "one"), ["/ns"], "the old state until then");
        index.apply(&Event::InitDone);
        assert!(names(&index, "one").is_empty());
        assert_eq!(names(&index, "two"), ["c/y"]);
    }

    #[test]
    fn only_gitopsd_managers_are_kept() {
        let mut object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "managedFields": [
                {"manager": "gitopsd", "operation": "Apply"},
                {"manager": "gitopsd-staging", "operation": "Apply"},
                {"manager": "kubectl-patch", "operation": "Update"},
                {"manager": "kube-controller-manager", "operation": "Update"}
            ]}
        }))
        .expect("an object");
        strip_foreign_managers(&mut object);
        let managers: Vec<&str> = object
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|entry| entry.manager.as_deref())
            .collect();
        assert_eq!(managers, ["gitopsd", "gitopsd-staging"]);
        let mut foreign_only: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "b", "managedFields": [{"manager": "kubectl", "operation": "Update"}]}
        }))
        .expect("an object");
        strip_foreign_managers(&mut foreign_only);
        assert_eq!(foreign_only.metadata.managed_fields, None);
    }
}
