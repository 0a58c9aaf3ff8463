//! The ApplySet parent record: the ConfigMap that says which types and namespaces the
//! environment's members live in, read, checked for its holder, written and deleted; and the
//! labels and patches its members carry.

use std::collections::BTreeSet;

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::ApiResource;
use serde_json::Value;

use super::KubernetesTarget;
use crate::backend::applyset::{self, GroupKind, Holder, ParentState, Record};
use crate::backend::{FailureClass, TargetError};
use crate::labels::{ANNOTATION_SOURCE, ANNOTATION_TOOLING, LABEL_ID, LABEL_PART_OF};
use crate::model::ResourceKey;

/// The one field manager of gitopsd before environments had their own.
pub(super) const LEGACY_FIELD_MANAGER: &str = "gitopsd";

/// What this target knows of its parent ConfigMap.
#[derive(Debug, Default)]
pub(super) struct ParentCache {
    /// The live parent as last read or written; `None` until read, `Some(None)` when absent.
    pub(super) live: Option<Option<ParentState>>,
    /// What the writes under way will apply: recorded with the first of them.
    pub(super) announced: Record,
}

/// The types and namespaces of `keys`, as a parent records them.
pub(super) fn record_of<'a>(keys: impl IntoIterator<Item = &'a ResourceKey>) -> Record {
    let mut record = Record::default();
    for key in keys {
        record.group_kinds.insert(GroupKind {
            group: key.group.clone(),
            kind: key.kind.clone(),
        });
        record.namespaces.extend(key.namespace.clone());
    }
    record
}

/// `body` with the applyset membership label added.
pub(super) fn with_membership(body: &Value, id: &str) -> Value {
    let mut body = body.clone();
    if let Some(metadata) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        let labels = metadata
            .entry("labels")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Some(labels) = labels.as_object_mut() {
            labels.insert(LABEL_PART_OF.into(), Value::String(id.to_string()));
        }
    }
    body
}

/// A merge patch that removes [`LEGACY_FIELD_MANAGER`]'s managed-fields entry from `body`,
/// conditional on its resourceVersion; `None` when there is no such entry.
pub(super) fn without_legacy_manager(body: &Value) -> Option<Value> {
    let entries = body.pointer("/metadata/managedFields")?.as_array()?;
    let is_legacy = |entry: &Value| {
        entry.get("manager").and_then(Value::as_str) == Some(LEGACY_FIELD_MANAGER)
            && entry.get("operation").and_then(Value::as_str) == Some("Apply")
    };
    if !entries.iter().any(is_legacy) {
        return None;
    }
    let kept: Vec<Value> = entries.iter().filter(|e| !is_legacy(e)).cloned().collect();
    // An empty list would ask the server to keep managed fields as they are.
    if kept.is_empty() {
        return None;
    }
    Some(serde_json::json!({
        "metadata": {
            "resourceVersion": body.pointer("/metadata/resourceVersion")?,
            "managedFields": kept,
        }
    }))
}

impl KubernetesTarget {
    /// The live parent, read once and then kept as this target last wrote it.
    pub(super) async fn parent_state(&self) -> Result<Option<ParentState>, TargetError> {
        if let Some(live) = &self.lock_parent().live {
            return Ok(live.clone());
        }
        self.read_parent().await
    }

    /// Reads the live parent afresh (in the daemon, from the watch cache).
    pub(super) async fn read_parent(&self) -> Result<Option<ParentState>, TargetError> {
        if let Some(watched) = &self.watched {
            let state = self.parent_watched(watched).await?;
            self.lock_parent().live = Some(state.clone());
            return Ok(state);
        }
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &self.parent.namespace,
            &ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
        );
        let live = self
            .call(|| api.get_opt(&self.parent.name))
            .await
            .map_err(|failure| TargetError::List {
                location: self.parent.to_string(),
                message: failure.message,
            })?;
        let state = live
            .map(|object| serde_json::to_value(&object).map(|body| ParentState::from_body(&body)))
            .transpose()
            .map_err(|e| TargetError::List {
                location: self.parent.to_string(),
                message: e.to_string(),
            })?;
        self.lock_parent().live = Some(state.clone());
        Ok(state)
    }

    pub(super) fn lock_parent(&self) -> std::sync::MutexGuard<'_, ParentCache> {
        self.parent_cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses a parent another source or tool holds, unless `adopt` is set.
    pub(super) fn check_holder(&self, parent: Option<&ParentState>) -> Result<(), TargetError> {
        match applyset::holder(parent, &self.owner.source) {
            Holder::Nobody | Holder::Us => Ok(()),
            Holder::Other(_) if self.settings.adopt => {
                tracing::warn!(parent = %self.parent, "adopting an applyset parent another owner held (adopt = true)");
                Ok(())
            }
            Holder::Other(owner) => Err(TargetError::Ownership {
                message: format!(
                    "{} is held by {owner}; environment {} of {} will not write to it or prune its members (set adopt = true on the target to take it over)",
                    self.parent, self.environment, self.owner.source
                ),
            }),
        }
    }

    /// Writes the parent so it records `record` (exactly).
    pub(super) async fn write_parent(&self, record: &Record) -> Result<(), TargetError> {
        self.ensure_namespace().await?;
        let body = applyset::parent_body(&self.parent, &self.owner, record);
        let object: DynamicObject =
            serde_json::from_value(body.clone()).map_err(|e| TargetError::Ownership {
                message: format!("{}: {e}", self.parent),
            })?;
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &self.parent.namespace,
            &ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
        );
        let params = PatchParams::apply(&self.field_manager).force();
        let patch = Patch::Apply(&object);
        self.call(|| api.patch(&self.parent.name, &params, &patch))
            .await
            .map_err(|failure| TargetError::Object {
                operation: "record ownership in",
                object: self.parent.to_string(),
                // Where the parent lives is the config's business, never the revision's.
                class: FailureClass::Infrastructure,
                message: if failure.is(404) {
                    format!(
                        "{}; create namespace {:?} or set applyset_namespace on the target",
                        failure.message, self.parent.namespace
                    )
                } else {
                    failure.message
                },
                missing: failure.missing,
            })?;
        self.lock_parent().live = Some(Some(ParentState::from_body(&body)));
        Ok(())
    }

    /// Drops the managed-fields entry of the field manager gitopsd used before environments
    /// had their own, from members found with it: left there, it would keep alive every field
    /// git later removes. Best effort: a member changed meanwhile is done on a later pass.
    pub(super) async fn forget_legacy_manager(&self, keys: &[ResourceKey]) {
        let pending = std::mem::take(
            &mut *self
                .legacy_managers
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let wanted: BTreeSet<&ResourceKey> = keys.iter().collect();
        for (key, (kind, patch)) in pending {
            if !wanted.contains(&key) {
                continue;
            }
            let Ok(resolved) = self.resolve(&kind, false).await else {
                continue;
            };
            let api = self.api(&resolved, key.namespace.as_deref());
            let params = PatchParams::default();
            let merge = Patch::Merge(&patch);
            match self.call(|| api.patch(&key.name, &params, &merge)).await {
                Ok(_) => {
                    tracing::info!(object = %key, "dropped the field manager of gitopsd before per-environment managers");
                }
                Err(failure) => {
                    tracing::debug!(object = %key, error = %failure.message, "legacy field manager left for a later pass");
                }
            }
        }
    }

    /// Deletes the parent (when `exists`), once the environment owns nothing.
    pub(super) async fn delete_parent(&self, exists: bool) -> Result<(), TargetError> {
        if exists {
            let api: Api<DynamicObject> = Api::namespaced_with(
                self.client.clone(),
                &self.parent.namespace,
                &ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
            );
            let background = DeleteParams::background();
            match self
                .call(|| api.delete(&self.parent.name, &background))
                .await
            {
                Ok(_) => {}
                Err(failure) if failure.is(404) => {}
                Err(failure) => {
                    return Err(TargetError::Object {
                        operation: "delete",
                        object: self.parent.to_string(),
                        message: failure.message,
                        class: failure.class,
                        missing: failure.missing,
                    });
                }
            }
        }
        self.lock_parent().live = Some(None);
        Ok(())
    }

    /// Makes sure the parent records the type and namespace of `key` before it is applied, so
    /// a later pass that no longer wants it still finds it to prune.
    pub(super) async fn record_member(&self, key: &ResourceKey) -> Result<(), TargetError> {
        let _writing = self.parent_writes.lock().await;
        let parent = self.parent_state().await?;
        self.check_holder(parent.as_ref())?;
        let current = parent.unwrap_or_default();
        if record_of([key]).is_covered_by(&current, &self.parent) {
            return Ok(());
        }
        let announced = std::mem::take(&mut self.lock_parent().announced);
        let mut wanted = record_of([key]).union(&current);
        wanted.group_kinds.extend(announced.group_kinds);
        wanted.namespaces.extend(announced.namespaces);
        self.write_parent(&wanted).await
    }

    /// Who holds an applyset, for refusals: its parent's source or tooling when found.
    pub(super) async fn describe_applyset(&self, id: &str) -> String {
        let api: Api<DynamicObject> = Api::all_with(
            self.client.clone(),
            &ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
        );
        let params = ListParams::default().labels(&format!("{LABEL_ID}={id}"));
        let Ok(found) = self.call(|| api.list_metadata(&params)).await else {
            return format!("applyset {id}");
        };
        match found.items.first() {
            Some(parent) => {
                let annotations = parent.metadata.annotations.clone().unwrap_or_default();
                let who = annotations
                    .get(ANNOTATION_SOURCE)
                    .map(|source| format!("gitopsd source {source}"))
                    .or_else(|| {
                        annotations
                            .get(ANNOTATION_TOOLING)
                            .map(|tool| format!("tool {tool}"))
                    })
                    .unwrap_or_else(|| "an unknown tool".into());
                format!(
                    "applyset {id} (parent ConfigMap {}/{}, {who})",
                    parent.metadata.namespace.clone().unwrap_or_default(),
                    parent.metadata.name.clone().unwrap_or_default()
                )
            }
            None => format!("applyset {id}"),
        }
    }
}
