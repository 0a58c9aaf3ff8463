//! Drift from watch events: a member changed by another writer (a managed-fields entry on the
//! object itself, not a subresource, of a manager that is not gitopsd's appears or gets newer)
//! wakes its environment; gitopsd's own writes, status updates and the objects a (re)list
//! brings do not.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use kube::ResourceExt;
use kube::api::DynamicObject;
use kube::runtime::watcher;
use serde_json::Value;
use tokio::sync::Notify;

use super::FIELD_MANAGER_PREFIX;
use crate::labels::LABEL_PART_OF;

/// Who to wake, by ApplySet id.
pub(super) type Wakers = Arc<Mutex<BTreeMap<String, Weak<Notify>>>>;

/// When each manager that is not gitopsd's last wrote to the object itself, by (manager,
/// operation), from its managed fields.
type Writes = BTreeMap<(String, String), String>;

pub(super) fn foreign_writes(object: &DynamicObject) -> Writes {
    object
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| entry.subresource.as_deref().is_none_or(str::is_empty))
        .filter_map(|entry| {
            let manager = entry.manager.clone()?;
            if is_gitopsd(&manager) {
                return None;
            }
            let time = match serde_json::to_value(&entry.time).ok()? {
                Value::String(time) => time,
                _ => String::new(),
            };
            Some(((manager, entry.operation.clone().unwrap_or_default()), time))
        })
        .collect()
}

fn is_gitopsd(manager: &str) -> bool {
    manager.starts_with(FIELD_MANAGER_PREFIX.trim_end_matches('-'))
}

/// One type's watch events, looked at for writes by others.
pub(super) struct DriftWatch {
    wakers: Wakers,
    /// The writes by others last seen per object (by uid).
    seen: HashMap<String, Writes>,
}

impl DriftWatch {
    pub(super) fn new(wakers: Wakers) -> Self {
        Self {
            wakers,
            seen: HashMap::new(),
        }
    }

    /// Looks at one event (before managed fields are stripped); the ApplySet id to wake and
    /// its waker, notified once the store holds the event.
    pub(super) fn observe(
        &mut self,
        event: &watcher::Event<DynamicObject>,
    ) -> Option<(String, Arc<Notify>)> {
        match event {
            watcher::Event::Init => self.seen.clear(),
            watcher::Event::InitApply(object) => {
                self.seen
                    .insert(object.uid().unwrap_or_default(), foreign_writes(object));
            }
            // A delete cannot be told from gitopsd's own prune: the next poll finds it.
            watcher::Event::Delete(object) => {
                self.seen.remove(&object.uid().unwrap_or_default());
            }
            watcher::Event::Apply(object) => {
                let writes = foreign_writes(object);
                let before = self
                    .seen
                    .insert(object.uid().unwrap_or_default(), writes.clone())
                    .unwrap_or_default();
                // Taking fields back from another manager shrinks or drops its entry: only a
                // new or newer one is a change by it.
                let newer = writes
                    .iter()
                    .any(|(write, time)| before.get(write).is_none_or(|seen| time > seen));
                if newer {
                    return self.waker(object);
                }
            }
            watcher::Event::InitDone => {}
        }
        None
    }

    fn waker(&self, object: &DynamicObject) -> Option<(String, Arc<Notify>)> {
        let id = object.labels().get(LABEL_PART_OF)?;
        let waker = self
            .wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .and_then(Weak::upgrade)?;
        Some((id.clone(), waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(entries: Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "uid": "u1", "labels": {LABEL_PART_OF: "applyset-x"},
                "managedFields": entries}
        }))
        .expect("an object")
    }

    fn applied(manager: &str, time: &str) -> Value {
        serde_json::json!({"manager": manager, "operation": "Apply", "time": time})
    }

    #[test]
    fn a_write_by_another_manager_wakes_the_environment_once() {
        let waker = Arc::new(Notify::new());
        let wakers: Wakers = Arc::default();
        wakers
            .lock()
            .expect("wakers")
            .insert("applyset-x".into(), Arc::downgrade(&waker));
        let mut drift = DriftWatch::new(wakers);
        let mut observe = |event| drift.observe(&event).map(|(id, _)| id);
        let ours = object(serde_json::json!([applied(
            "gitopsd-staging",
            "2026-01-01T00:00:00Z"
        )]));
        assert_eq!(observe(watcher::Event::InitApply(ours.clone())), None);
        assert_eq!(observe(watcher::Event::Apply(ours)), None, "our own write");
        let patched = object(serde_json::json!([
            applied("gitopsd-staging", "2026-01-01T00:00:00Z"),
            {"manager": "kubectl-patch", "operation": "Update", "time": "2026-01-01T00:00:05Z"},
        ]));
        assert_eq!(
            observe(watcher::Event::Apply(patched.clone())),
            Some("applyset-x".into())
        );
        let status_update = object(serde_json::json!([
            applied("gitopsd-staging", "2026-01-01T00:00:00Z"),
            {"manager": "kubectl-patch", "operation": "Update", "time": "2026-01-01T00:00:05Z"},
            {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "time": "2026-01-01T00:00:09Z"},
        ]));
        assert_eq!(
            observe(watcher::Event::Apply(status_update)),
            None,
            "a status update changes no owned field, and the patch was seen"
        );
        let put_back = object(serde_json::json!([applied(
            "gitopsd-staging",
            "2026-01-01T00:00:06Z"
        )]));
        assert_eq!(
            observe(watcher::Event::Apply(put_back)),
            None,
            "gitopsd took the fields back: the patch's entry went"
        );
        let same_second = object(serde_json::json!([
            applied("gitopsd-staging", "2026-01-01T00:00:06Z"),
            {"manager": "kubectl-edit", "operation": "Update", "time": "2026-01-01T00:00:06Z"},
        ]));
        assert_eq!(
            observe(watcher::Event::Apply(same_second)),
            Some("applyset-x".into()),
            "a change in the same second as gitopsd's write still counts"
        );
    }
}
