//! What one watch keeps: each object as compact JSON text by namespace and name, with an index
//! by ApplySet, following the watch's events (a relist replaces everything once it completes).
//!
//! Text, not a `DynamicObject`: a cached ConfigMap or Service as a tree of maps and strings
//! took about 2 KB of heap, as text a third of that, and the daemon caches every object of a
//! fleet (20,000 for 1,000 environments). A pass parses the few it reads.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use kube::ResourceExt;
use kube::api::DynamicObject;
use kube::runtime::watcher;
use serde_json::Value;

use crate::labels::LABEL_PART_OF;

/// An object's place in its store: namespace (none when cluster-scoped) and name.
pub(super) type Key = (Option<String>, String);

/// One stored object.
#[derive(Debug)]
struct Stored {
    /// `metadata.resourceVersion`.
    version: Box<str>,
    /// The ApplySet id of its `part-of` label.
    member_of: Option<Box<str>>,
    /// The object as JSON text; shared so that readers parse it outside the store's lock.
    body: Arc<[u8]>,
}

/// The objects of one (re)list or of the watch that follows it.
#[derive(Debug, Default)]
struct Objects {
    by_key: HashMap<Key, Stored>,
    /// Keys of each ApplySet's members, so that a pass reads its environment's members
    /// without looking at every object of the type (the stores hold every environment's):
    /// a no-op round of 1,000 environments otherwise costs 1,000 × the store.
    by_id: HashMap<Box<str>, BTreeSet<Key>>,
}

impl Objects {
    fn insert(&mut self, object: &DynamicObject) -> Result<(), serde_json::Error> {
        let key = key_of(object);
        let stored = Stored {
            version: object.resource_version().unwrap_or_default().into(),
            member_of: object
                .labels()
                .get(LABEL_PART_OF)
                .map(|id| id.as_str().into()),
            body: serde_json::to_vec(object)?.into(),
        };
        self.remove(&key);
        if let Some(id) = &stored.member_of {
            self.by_id
                .entry(id.clone())
                .or_default()
                .insert(key.clone());
        }
        self.by_key.insert(key, stored);
        Ok(())
    }

    fn remove(&mut self, key: &Key) {
        let Some(stored) = self.by_key.remove(key) else {
            return;
        };
        if let Some(id) = stored.member_of
            && let Some(keys) = self.by_id.get_mut(&id)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.by_id.remove(&id);
            }
        }
    }
}

fn key_of(object: &DynamicObject) -> Key {
    (object.metadata.namespace.clone(), object.name_any())
}

/// The stored objects of one watch.
#[derive(Debug, Default)]
pub(super) struct ObjectStore {
    objects: Objects,
    /// Built during a (re)list; replaces `objects` when it completes, so that readers see the
    /// last whole list until then (they do not read a store that is syncing anyway).
    listing: Option<Objects>,
}

impl ObjectStore {
    /// Follows one watch event; an error when an object cannot be written as JSON (then the
    /// store may miss it, and the watch must list again).
    pub(super) fn apply(
        &mut self,
        event: &watcher::Event<DynamicObject>,
    ) -> Result<(), serde_json::Error> {
        match event {
            watcher::Event::Apply(object) => self.objects.insert(object)?,
            watcher::Event::Delete(object) => self.objects.remove(&key_of(object)),
            watcher::Event::Init => self.listing = Some(Objects::default()),
            watcher::Event::InitApply(object) => self
                .listing
                .get_or_insert_with(Objects::default)
                .insert(object)?,
            watcher::Event::InitDone => {
                let mut listed = self.listing.take().unwrap_or_default();
                listed.by_key.shrink_to_fit();
                listed.by_id.shrink_to_fit();
                self.objects = listed;
            }
        }
        Ok(())
    }

    /// Objects stored.
    pub(super) fn len(&self) -> usize {
        self.objects.by_key.len()
    }

    /// The bodies of the members of the ApplySet `id`, in key order, to parse.
    pub(super) fn members(&self, id: &str) -> Vec<Arc<[u8]>> {
        self.objects
            .by_id
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|key| self.objects.by_key.get(key))
            .map(|stored| stored.body.clone())
            .collect()
    }

    /// Namespace, name and resourceVersion of each member of the ApplySet `id`, in key order.
    pub(super) fn member_versions(&self, id: &str) -> Vec<(Option<String>, String, String)> {
        self.objects
            .by_id
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|key| {
                let stored = self.objects.by_key.get(key)?;
                Some((key.0.clone(), key.1.clone(), stored.version.to_string()))
            })
            .collect()
    }

    /// The resourceVersion of one object, if stored.
    pub(super) fn version_of(&self, key: &Key) -> Option<String> {
        Some(self.objects.by_key.get(key)?.version.to_string())
    }

    /// The body of one object, if stored, to parse.
    pub(super) fn body(&self, key: &Key) -> Option<Arc<[u8]>> {
        Some(self.objects.by_key.get(key)?.body.clone())
    }

    /// Every body, to parse.
    pub(super) fn bodies(&self) -> Vec<Arc<[u8]>> {
        self.objects
            .by_key
            .values()
            .map(|stored| stored.body.clone())
            .collect()
    }
}

/// A stored body as the JSON value a decision reads.
pub(super) fn parse(body: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(namespace: Option<&str>, name: &str, id: Option<&str>) -> DynamicObject {
        let mut metadata =
            serde_json::json!({"name": name, "resourceVersion": format!("{name}-1")});
        if let Some(namespace) = namespace {
            metadata["namespace"] = namespace.into();
        }
        if let Some(id) = id {
            metadata["labels"] = serde_json::json!({ LABEL_PART_OF: id });
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata,
            "data": {"mode": "fast", "n": 3}
        }))
        .expect("an object")
    }

    fn names(store: &ObjectStore, id: &str) -> Vec<String> {
        store
            .member_versions(id)
            .into_iter()
            .map(|(namespace, name, _)| format!("{}/{name}", namespace.unwrap_or_default()))
            .collect()
    }

    fn apply(store: &mut ObjectStore, event: watcher::Event<DynamicObject>) {
        store.apply(&event).expect("stored");
    }

    #[test]
    fn the_store_and_its_member_index_follow_the_watch_events() {
        use watcher::Event;
        let mut store = ObjectStore::default();
        apply(&mut store, Event::Init);
        apply(
            &mut store,
            Event::InitApply(member(Some("a"), "x", Some("one"))),
        );
        apply(
            &mut store,
            Event::InitApply(member(Some("b"), "x", Some("two"))),
        );
        apply(
            &mut store,
            Event::InitApply(member(None, "ns", Some("one"))),
        );
        apply(
            &mut store,
            Event::InitApply(member(Some("a"), "free", None)),
        );
        assert!(
            names(&store, "one").is_empty(),
            "a list under way is not read"
        );
        assert_eq!(store.len(), 0);
        apply(&mut store, Event::InitDone);
        assert_eq!(store.len(), 4);
        assert_eq!(names(&store, "one"), ["/ns", "a/x"]);
        assert_eq!(names(&store, "two"), ["b/x"]);
        // Taken over by another applyset: it moves.
        apply(
            &mut store,
            Event::Apply(member(Some("a"), "x", Some("two"))),
        );
        assert_eq!(names(&store, "one"), ["/ns"]);
        assert_eq!(names(&store, "two"), ["a/x", "b/x"]);
        // Its label removed: no one's member, still stored.
        apply(&mut store, Event::Apply(member(Some("b"), "x", None)));
        assert_eq!(names(&store, "two"), ["a/x"]);
        assert!(store.body(&(Some("b".into()), "x".into())).is_some());
        apply(
            &mut store,
            Event::Delete(member(Some("a"), "x", Some("two"))),
        );
        assert!(names(&store, "two").is_empty());
        assert_eq!(store.version_of(&(Some("a".into()), "x".into())), None);
        // A relist replaces everything once it completes: what went meanwhile is gone.
        apply(&mut store, Event::Init);
        apply(
            &mut store,
            Event::InitApply(member(Some("c"), "y", Some("two"))),
        );
        assert_eq!(names(&store, "one"), ["/ns"], "the old state until then");
        apply(&mut store, Event::InitDone);
        assert!(names(&store, "one").is_empty());
        assert_eq!(names(&store, "two"), ["c/y"]);
        assert_eq!(store.len(), 1);
        assert_eq!(
            store.version_of(&(Some("c".into()), "y".into())).as_deref(),
            Some("y-1")
        );
    }

    #[test]
    fn a_stored_object_reads_back_as_the_json_it_was() {
        let object = member(Some("a"), "x", Some("one"));
        let mut store = ObjectStore::default();
        apply(&mut store, watcher::Event::Apply(object.clone()));
        let bodies = store.members("one");
        assert_eq!(bodies.len(), 1);
        assert_eq!(
            parse(&bodies[0]).expect("JSON"),
            serde_json::to_value(&object).expect("JSON")
        );
        assert_eq!(store.bodies().len(), 1);
    }
}
