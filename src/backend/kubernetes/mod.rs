//! Kubernetes target (kube-rs): ownership as an ApplySet (a parent ConfigMap per environment,
//! members labelled `applyset.kubernetes.io/part-of`), server-side apply as field manager
//! `gitopsd-<env>`, live state from one LIST per recorded type by the membership label (or, in
//! the daemon, from the cluster's watch cache of gitopsd's members), drift
//! confirmed by server-side dry runs, scopes from discovery, pruning with background
//! propagation, readiness by kind, transient errors retried with backoff.

mod answers;
mod cache;
mod client;
mod drift;
mod hooks;
pub mod lease;
mod list;
mod live;
mod namespace;
mod parent;
mod ready;
mod resolve;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kube::Client;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions};
use serde_json::Value;

use super::applyset::{GroupKind, Owner, ParentRef, Record};
use super::concurrency::AdaptiveLimiter;
use super::{DriftCheck, FailedObject, FailureClass, ForeignOwner, Readiness, Target, TargetError};
use crate::labels::{LABEL_ENVIRONMENT, LABEL_MANAGED_BY, LABEL_PART_OF, MANAGER};
use crate::manifest::{self, Scopes};
use crate::model::{KindRef, Object, ResourceKey, group_of};
use crate::plan::Compare;
use crate::readiness::{self, Verdict};
use answers::{answer_error, classed_error, conflicting_environment, object_error};
use parent::{ParentCache, record_of, with_membership};
use resolve::{ResolveError, Resolved};

pub use cache::WatchState;
pub use live::{CacheTypeStatus, CacheView};

/// A cluster as gitopsd reaches it, (kubeconfig, context): one client and one watch cache
/// each, shared by the environments that use it.
pub(super) type ClientKey = (Option<PathBuf>, Option<String>);

/// Prefix of every field manager gitopsd applies as; the environment's name follows.
pub const FIELD_MANAGER_PREFIX: &str = "gitopsd-";

/// How to reach the cluster and how hard to push it.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesSettings {
    /// kubeconfig file; `KUBECONFIG` or `~/.kube/config` when unset, in-cluster config when
    /// none exists.
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig; its current context when unset.
    pub context: Option<String>,
    /// Take over fields another manager owns instead of failing with a conflict (never those
    /// of another gitopsd environment).
    pub force_conflicts: bool,
    /// Take over a parent or members that another source holds.
    pub adopt: bool,
    /// Namespace of the parent ConfigMap; the environment's `namespace` when unset.
    pub applyset_namespace: Option<String>,
    /// Requests in flight at once at most; below it, the limit adapts to the server.
    pub concurrency: usize,
    /// Requests started per second at most (0: no limit).
    pub requests_per_second: u32,
    /// Delete a Namespace even when it holds objects gitopsd does not own.
    pub delete_foreign_namespaces: bool,
    /// The environment's namespace, made before anything else when missing
    /// (`create_namespace = true`).
    pub create_namespace: Option<String>,
}

pub struct KubernetesTarget {
    client: Client,
    environment: String,
    owner: Owner,
    parent: ParentRef,
    /// The applyset id every member is labelled with.
    id: String,
    field_manager: String,
    settings: KubernetesSettings,
    parent_cache: Mutex<ParentCache>,
    /// Serializes writes of the parent.
    parent_writes: tokio::sync::Mutex<()>,
    /// Objects a dry run showed to hold what git sets, by the resourceVersion then.
    cleared: Mutex<BTreeMap<ResourceKey, String>>,
    /// Members whose managed fields still name [`LEGACY_FIELD_MANAGER`], with the merge patch
    /// that drops it; sent when a pass settles.
    legacy_managers: Mutex<BTreeMap<ResourceKey, (KindRef, Value)>>,
    /// Discovery results by type, and the last version seen per (group, kind) for deletes.
    discovery: Arc<resolve::Discovered>,
    by_group_kind: Mutex<BTreeMap<(String, String), KindRef>>,
    /// Requests in flight to the cluster, shared by every environment that targets it (one
    /// window per API server): adapts to how the server copes, up to `concurrency`.
    requests: Arc<AdaptiveLimiter>,
    /// When the next request may start, for `requests_per_second`.
    next_slot: tokio::sync::Mutex<tokio::time::Instant>,
    /// The watches live state is read from; `None` where every pass LISTs.
    watched: Option<Arc<live::Watched>>,
    /// `create_namespace`: the namespace was seen or made.
    namespace_made: std::sync::atomic::AtomicBool,
    /// `[ha]`: the environment's Lease, which every write checks first.
    fence: Option<Arc<lease::EnvironmentLease>>,
}

impl std::fmt::Debug for KubernetesTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesTarget")
            .field("environment", &self.environment)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn is_namespace(key: &ResourceKey) -> bool {
    key.group.is_empty() && key.kind == "Namespace"
}

impl KubernetesTarget {
    fn selector(&self) -> String {
        format!("{LABEL_PART_OF}={}", self.id)
    }

    /// Notified when another writer changes one of the environment's members (daemon only:
    /// `None` where passes LIST).
    pub fn drift_wake(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.watched.as_ref().map(|watched| watched.drift.clone())
    }

    /// The watch cache as the environment reads it, for `/status` (daemon only).
    pub fn cache_view(&self) -> Option<CacheView> {
        self.watched.clone().map(CacheView)
    }
}

impl Target for KubernetesTarget {
    /// From the watch cache (the daemon's); one-shot commands have none and always list.
    async fn fingerprint(&self) -> Result<Option<String>, TargetError> {
        Ok(self
            .watched
            .as_ref()
            .and_then(|watched| watched.fingerprint(&self.parent)))
    }

    async fn list(&self, kinds: &BTreeSet<KindRef>) -> Result<Vec<Object>, TargetError> {
        // What this target last wrote: a watch cache may not show it yet.
        let written = match &self.watched {
            Some(watched) => {
                watched.release_pods();
                self.lock_parent().live.clone().flatten()
            }
            None => None,
        };
        // A pass starts from the parent as it is now: another writer may have changed it.
        let parent = self.read_parent().await?;
        self.check_holder(parent.as_ref())?;
        let recorded: BTreeSet<&GroupKind> = parent
            .iter()
            .chain(&written)
            .flat_map(|parent| &parent.group_kinds)
            .collect();
        let mut types: BTreeSet<KindRef> = kinds.clone();
        if self.watched.is_some() {
            // A member's type is recorded before it is applied, and the watches select members
            // by label: a type no longer recorded holds none, and stops being watched.
            types.retain(|kind| recorded.contains(&GroupKind::of(kind)));
        }
        for group_kind in recorded {
            if types.iter().any(|kind| GroupKind::of(kind) == *group_kind) {
                continue;
            }
            match self.resolve_group_kind(group_kind).await {
                Ok(kind) => {
                    types.insert(kind);
                }
                Err(ResolveError::Unknown(message)) => {
                    tracing::warn!(%group_kind, %message, "the applyset records a type the API server no longer serves; skipping it");
                }
                Err(ResolveError::Unreachable(message)) => {
                    return Err(TargetError::List {
                        location: group_kind.to_string(),
                        message,
                    });
                }
            }
        }
        let to_list = self.resolve_types(&types).await?;
        if let Some(watched) = &self.watched {
            return self.list_watched(watched, &to_list).await;
        }
        // Types are listed side by side (the adaptive limit bounds them), each one's pages in
        // turn; objects come out in type order whatever finishes first.
        let pages = futures_util::future::join_all(
            to_list
                .iter()
                .map(|(kind, resolved)| self.list_type(kind, resolved)),
        )
        .await;
        let mut objects = Vec::new();
        for listed in pages {
            objects.extend(listed?);
        }
        Ok(objects)
    }

    async fn apply(&self, key: &ResourceKey, body: &Value) -> Result<(), TargetError> {
        let kind = KindRef::of(body).ok_or_else(|| {
            classed_error(
                "apply",
                key,
                "the body has no apiVersion or kind".into(),
                FailureClass::Revision,
            )
        })?;
        self.fenced().await?;
        // The parent may live in a namespace the revision creates: Namespaces go first.
        if !is_namespace(key) {
            self.ensure_namespace().await?;
            self.record_member(key).await?;
        }
        let resolved = self
            .resolve(&kind, true)
            .await
            .map_err(|error| object_error("apply", key, error.to_string()))?;
        let object: DynamicObject = serde_json::from_value(with_membership(body, &self.id))
            .map_err(|e| object_error("apply", key, e.to_string()))?;
        let api = self.api(&resolved, key.namespace.as_deref());
        let patch = Patch::Apply(&object);
        let gentle = PatchParams::apply(&self.field_manager);
        let applied = match self.call(|| api.patch(&key.name, &gentle, &patch)).await {
            Err(failure) if failure.is(409) => {
                // Never take fields from another environment; others only when allowed.
                if let Some(other) =
                    conflicting_environment(&failure.conflicting_managers, &self.field_manager)
                {
                    return Err(classed_error(
                        "apply",
                        key,
                        format!(
                            "{}; gitopsd environment {other:?} sets these fields too: two environments must not manage the same fields",
                            failure.message
                        ),
                        FailureClass::Revision,
                    ));
                } else if self.settings.force_conflicts {
                    let forced = gentle.clone().force();
                    self.call(|| api.patch(&key.name, &forced, &patch))
                        .await
                        .map_err(|failure| answer_error("apply", key, failure))?
                } else {
                    return Err(classed_error(
                        "apply",
                        key,
                        format!(
                            "{} (another field manager owns these fields; force_conflicts = true takes them over)",
                            failure.message
                        ),
                        FailureClass::Infrastructure,
                    ));
                }
            }
            Err(failure) => {
                let error = answer_error("apply", key, failure);
                self.namespace_gone(&error);
                return Err(error);
            }
            Ok(applied) => applied,
        };
        if let Some(watched) = &self.watched {
            let ready = serde_json::to_value(&applied).is_ok_and(|body| {
                readiness::stuck(&key.group, &key.kind, &body).is_none()
                    && readiness::readiness(&key.group, &key.kind, &body) == Verdict::Ready
            });
            let answer = applied
                .metadata
                .resource_version
                .map(|version| live::Written { version, ready });
            watched.wrote(key, answer);
        }
        if key.group == "apiextensions.k8s.io" && key.kind == "CustomResourceDefinition" {
            self.await_established(key, &api).await?;
        }
        Ok(())
    }

    async fn dry_run(&self, key: &ResourceKey, body: &Value) -> Result<Option<Value>, TargetError> {
        let kind = KindRef::of(body).ok_or_else(|| {
            object_error("dry-run", key, "the body has no apiVersion or kind".into())
        })?;
        let resolved = self
            .resolve(&kind, false)
            .await
            .map_err(|error| object_error("dry-run", key, error.to_string()))?;
        let object: DynamicObject = serde_json::from_value(with_membership(body, &self.id))
            .map_err(|e| object_error("dry-run", key, e.to_string()))?;
        let params = PatchParams::apply(&self.field_manager).force().dry_run();
        let api = self.api(&resolved, key.namespace.as_deref());
        let patch = Patch::Apply(&object);
        let result = self
            .call(|| api.patch(&key.name, &params, &patch))
            .await
            .map_err(|failure| answer_error("dry-run", key, failure))?;
        let mut result = serde_json::to_value(&result)
            .map_err(|e| object_error("dry-run", key, e.to_string()))?;
        if let Some(map) = result.as_object_mut() {
            map.insert("apiVersion".into(), Value::String(kind.api_version));
            map.insert("kind".into(), Value::String(kind.kind));
        }
        Ok(Some(result))
    }

    async fn delete(&self, key: &ResourceKey) -> Result<(), TargetError> {
        self.fenced().await?;
        let resolved = self
            .resolve_key(key)
            .await
            .map_err(|e| object_error("delete", key, e.to_string()))?;
        if is_namespace(key) && !self.settings.delete_foreign_namespaces {
            let foreign = self
                .namespace_has_foreign_objects(&key.name)
                .await
                .map_err(|failure| object_error("delete", key, failure.message))?;
            if foreign {
                return Err(object_error(
                    "delete",
                    key,
                    "the namespace holds objects gitopsd does not own; not deleting it (set delete_foreign_namespaces = true to allow)".into(),
                ));
            }
        }
        let api = self.api(&resolved, key.namespace.as_deref());
        // Only what is still this environment's member goes, as it was when read: the live
        // state a pass planned from may be older (a watch cache lags), and another
        // environment may have taken the object over meanwhile.
        let live = self
            .call(|| api.get_opt(&key.name))
            .await
            .map_err(|failure| answer_error("delete", key, failure))?;
        let Some(live) = live else {
            return Ok(());
        };
        let member_of = live
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_PART_OF));
        if member_of != Some(&self.id) {
            // Not ours any more: nothing of this environment's is left to prune.
            tracing::warn!(object = %key, applyset = member_of.map_or("none", String::as_str), "not deleting an object that is no longer a member of this environment's applyset");
            return Ok(());
        }
        let mut params = DeleteParams::background();
        params.preconditions = Some(Preconditions {
            uid: live.metadata.uid.clone(),
            resource_version: live.metadata.resource_version.clone(),
        });
        match self.call(|| api.delete(&key.name, &params)).await {
            Ok(_) => Ok(()),
            Err(failure) if failure.is(404) => Ok(()),
            Err(failure) => Err(answer_error("delete", key, failure)),
        }
    }

    async fn readiness(
        &self,
        keys: &[ResourceKey],
        max_restarts: u32,
    ) -> Result<Readiness, TargetError> {
        let mut readiness = Readiness::default();
        for key in keys {
            let resolved = self
                .resolve_key(key)
                .await
                .map_err(|e| object_error("read", key, e.to_string()))?;
            let cached = self.watched.as_ref().and_then(|w| w.fresh_member(key));
            let body = match cached {
                Some(body) => body,
                // Ready as gitopsd wrote it, of a type not watched yet (a first apply's are
                // watched from its settle): not read back.
                None if self
                    .watched
                    .as_ref()
                    .is_some_and(|w| w.ready_as_written(key)) =>
                {
                    continue;
                }
                None => {
                    let api = self.api(&resolved, key.namespace.as_deref());
                    let live = self
                        .call(|| api.get_opt(&key.name))
                        .await
                        .map_err(|failure| answer_error("read", key, failure))?;
                    let Some(live) = live else {
                        readiness.waiting.push(format!("{key}: not found"));
                        continue;
                    };
                    serde_json::to_value(&live)
                        .map_err(|e| object_error("read", key, e.to_string()))?
                }
            };
            if let Some(stuck) = readiness::stuck(&key.group, &key.kind, &body) {
                readiness.failed.push(FailedObject {
                    cause: stuck.cause,
                    detail: format!("{key}: {}", stuck.detail),
                });
                continue;
            }
            let Verdict::Waiting(reason) = readiness::readiness(&key.group, &key.kind, &body)
            else {
                continue;
            };
            // Only a workload still waiting has its pods looked at.
            if let Some(stuck) = self.broken_pods(key, &body, max_restarts).await? {
                readiness.failed.push(FailedObject {
                    cause: stuck.cause,
                    detail: format!("{key}: {}", stuck.detail),
                });
            } else {
                readiness.waiting.push(format!("{key}: {reason}"));
            }
        }
        Ok(readiness)
    }

    fn compare(&self) -> Compare {
        Compare::Subset
    }

    fn runs_hook_objects(&self) -> bool {
        true
    }

    async fn create_hook(&self, key: &ResourceKey, body: &Value) -> Result<(), TargetError> {
        self.fenced().await?;
        self.ensure_namespace().await?;
        self.create_hook_run(key, body).await
    }

    async fn delete_hook_runs(
        &self,
        key: &ResourceKey,
        hook: &str,
        only_this: bool,
    ) -> Result<(), TargetError> {
        self.fenced().await?;
        self.delete_hook_objects(key, hook, only_this).await
    }

    fn may_decide(&self) -> Result<(), TargetError> {
        self.fence_check()
    }

    async fn carry_decisions(&self) -> Result<(), TargetError> {
        self.fenced().await
    }

    fn writes_in_flight(&self) -> usize {
        // The adaptive limit decides below this; the window only has to reach its ceiling.
        self.settings.concurrency.max(1)
    }

    async fn scopes(&self, kinds: &BTreeSet<KindRef>) -> Result<Scopes, TargetError> {
        let mut scopes = Scopes {
            known: BTreeMap::new(),
            reject_unknown: true,
        };
        for kind in kinds {
            match self.resolve(kind, false).await {
                Ok(resolved) => {
                    let scope = if resolved.namespaced {
                        manifest::Scope::Namespaced
                    } else {
                        manifest::Scope::Cluster
                    };
                    scopes.known.insert(
                        (group_of(&kind.api_version).to_string(), kind.kind.clone()),
                        scope,
                    );
                }
                // Left to a CRD in the revision, or rejected.
                Err(ResolveError::Unknown(_)) => {}
                Err(ResolveError::Unreachable(message)) => {
                    return Err(TargetError::List {
                        location: format!("{kind}"),
                        message,
                    });
                }
            }
        }
        Ok(scopes)
    }

    async fn check_drift(
        &self,
        key: &ResourceKey,
        body: &Value,
        live: &Object,
    ) -> Result<DriftCheck, TargetError> {
        let version = live
            .body
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let cleared_before = self
            .cleared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|cleared| *cleared == version && !version.is_empty());
        if cleared_before {
            return Ok(DriftCheck::Cleared);
        }
        let Some(result) = self.dry_run(key, body).await? else {
            return Ok(DriftCheck::Unchecked);
        };
        let now = crate::diff::normalize(&live.body);
        let after = crate::diff::normalize(&result);
        if now == after {
            self.cleared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone(), version);
            return Ok(DriftCheck::Cleared);
        }
        Ok(DriftCheck::Confirmed(crate::diff::differing_fields(
            &now, &after,
        )))
    }

    async fn foreign_owners(&self, keys: &[ResourceKey]) -> Result<Vec<ForeignOwner>, TargetError> {
        if self.settings.adopt || keys.is_empty() {
            return Ok(Vec::new());
        }
        // One metadata LIST per type and namespace among the keys.
        let mut groups: BTreeMap<(String, String, Option<String>), BTreeSet<&str>> =
            BTreeMap::new();
        for key in keys {
            groups
                .entry((key.group.clone(), key.kind.clone(), key.namespace.clone()))
                .or_default()
                .insert(&key.name);
        }
        let mut foreign = Vec::new();
        for ((group, kind, namespace), names) in groups {
            let group_kind = GroupKind { group, kind };
            let kind_ref = match self.resolve_group_kind(&group_kind).await {
                Ok(kind_ref) => kind_ref,
                // Not served yet (a CRD in this revision): nothing of it can exist.
                Err(ResolveError::Unknown(_)) => continue,
                Err(ResolveError::Unreachable(message)) => {
                    return Err(TargetError::List {
                        location: group_kind.to_string(),
                        message,
                    });
                }
            };
            let resolved =
                self.resolve(&kind_ref, false)
                    .await
                    .map_err(|error| TargetError::List {
                        location: group_kind.to_string(),
                        message: error.to_string(),
                    })?;
            let api = self.api(&resolved, namespace.as_deref());
            let everything = ListParams::default();
            let list = self
                .call(|| api.list_metadata(&everything))
                .await
                .map_err(|failure| TargetError::List {
                    location: group_kind.to_string(),
                    message: failure.message,
                })?;
            for item in list.items {
                let Some(name) = item.metadata.name.as_deref() else {
                    continue;
                };
                if !names.contains(name) {
                    continue;
                }
                let labels = item.metadata.labels.clone().unwrap_or_default();
                let owner = match labels.get(LABEL_PART_OF) {
                    Some(id) if *id == self.id => None,
                    Some(id) => Some(self.describe_applyset(id).await),
                    // Applied by a gitopsd before applysets: this environment's are adopted.
                    None => match (labels.get(LABEL_MANAGED_BY), labels.get(LABEL_ENVIRONMENT)) {
                        (Some(manager), Some(environment))
                            if manager == MANAGER && *environment != self.environment =>
                        {
                            Some(format!("gitopsd environment {environment:?}"))
                        }
                        _ => None,
                    },
                };
                if let Some(owner) = owner {
                    foreign.push(ForeignOwner {
                        key: ResourceKey {
                            group: group_kind.group.clone(),
                            kind: group_kind.kind.clone(),
                            namespace: namespace.clone(),
                            name: name.to_string(),
                        },
                        owner,
                    });
                }
            }
        }
        Ok(foreign)
    }

    fn announce(&self, keys: &[ResourceKey]) {
        let announced = record_of(keys);
        let mut cache = self.lock_parent();
        cache.announced.group_kinds.extend(announced.group_kinds);
        cache.announced.namespaces.extend(announced.namespaces);
    }

    async fn settle(&self, keys: &[ResourceKey]) -> Result<(), TargetError> {
        self.fenced().await?;
        let record = record_of(keys);
        self.record_settled(keys, &record).await?;
        if let Some(watched) = &self.watched {
            self.hold_watches_of(watched, &record.group_kinds).await;
        }
        Ok(())
    }
}

impl KubernetesTarget {
    /// Each of `types` as the server serves it, one version per type (two versions list the
    /// same objects); a type the server no longer serves is skipped.
    async fn resolve_types<'k>(
        &self,
        types: &'k BTreeSet<KindRef>,
    ) -> Result<Vec<(&'k KindRef, Resolved)>, TargetError> {
        let mut to_list = Vec::new();
        let mut listed = BTreeSet::new();
        for kind in types {
            let resolved = match self.resolve(kind, false).await {
                Ok(resolved) => resolved,
                Err(ResolveError::Unknown(message)) => {
                    // A type that went away (its CRD deleted) has nothing left to list.
                    tracing::warn!(%kind, %message, "skipping a type the API server no longer serves");
                    continue;
                }
                Err(ResolveError::Unreachable(message)) => {
                    return Err(TargetError::List {
                        location: format!("{kind}"),
                        message,
                    });
                }
            };
            // Two versions of one type list the same objects.
            if listed.insert(GroupKind::of(kind)) {
                to_list.push((kind, resolved));
            }
        }
        Ok(to_list)
    }

    /// Makes the parent record exactly `record`, what `keys` need (deleting it when nothing
    /// is owned).
    async fn record_settled(
        &self,
        keys: &[ResourceKey],
        record: &Record,
    ) -> Result<(), TargetError> {
        let _writing = self.parent_writes.lock().await;
        let parent = self.parent_state().await?;
        self.check_holder(parent.as_ref())?;
        self.lock_parent().announced = Record::default();
        self.forget_legacy_manager(keys).await;
        if record.group_kinds.is_empty() {
            // Nothing owned is left: the parent goes too (its namespace may be going).
            return self.delete_parent(parent.is_some()).await;
        }
        if parent
            .as_ref()
            .is_some_and(|parent| record.is_recorded_by(parent, &self.parent))
        {
            return Ok(());
        }
        self.write_parent(record).await
    }
}

#[cfg(test)]
mod tests {
    use super::answers::{classify, describe};
    use super::parent::without_legacy_manager;
    use super::*;
    use crate::backend::Missing;

    #[test]
    fn the_server_blames_the_revision_only_when_it_judged_the_object() {
        for code in [400, 404, 422] {
            assert_eq!(classify(Some(code), "x"), FailureClass::Revision, "{code}");
        }
        assert_eq!(
            classify(
                Some(500),
                "failed to create typed patch object (/v1, Kind=ConfigMap) shop/x: .spec.bogus: field not declared in schema"
            ),
            FailureClass::Revision,
            "how v1.28 answers an unknown field"
        );
        for code in [401, 403, 409, 429, 500, 503, 504] {
            assert_eq!(
                classify(Some(code), "etcdserver: request timed out"),
                FailureClass::Infrastructure,
                "{code}"
            );
        }
        assert_eq!(
            classify(None, "connection refused"),
            FailureClass::Infrastructure
        );
    }

    #[test]
    fn a_conflict_with_another_environment_names_it() {
        // A v1.28 API server's answer to a server-side apply that conflicts.
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409,
            "reason": "Conflict",
            "message": "Apply failed with 2 conflicts: conflicts with \"gitopsd-production\" using apps/v1:\n- .spec.replicas\nconflicts with \"kubectl-scale\":\n- .spec.replicas",
            "details": {"causes": [
                {"reason": "FieldManagerConflict", "message": "conflict with \"gitopsd-production\" using apps/v1", "field": ".spec.replicas"},
                {"reason": "FieldManagerConflict", "message": "conflict with \"kubectl-scale\"", "field": ".spec.replicas"}
            ]}
        }))
        .expect("a Status");
        let failure = describe(&kube::Error::Api(Box::new(status)));
        assert_eq!(
            failure.conflicting_managers,
            ["gitopsd-production", "kubectl-scale"]
        );
        assert_eq!(
            conflicting_environment(&failure.conflicting_managers, "gitopsd-staging"),
            Some("production".into())
        );
        assert_eq!(
            conflicting_environment(&failure.conflicting_managers, "gitopsd-production"),
            None,
            "its own manager is no other environment"
        );
        assert_eq!(
            conflicting_environment(&["kubectl-scale".into()], "gitopsd-staging"),
            None
        );
        // The field manager before environments had their own is gitopsd's too.
        assert_eq!(
            conflicting_environment(&["gitopsd".into()], "gitopsd-staging"),
            None
        );
    }

    #[test]
    fn a_missing_namespace_is_read_from_the_answers_details() {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
            "reason": "NotFound", "message": "namespaces \"shop\" not found",
            "details": {"name": "shop", "kind": "namespaces"}
        }))
        .expect("a Status");
        let failure = describe(&kube::Error::Api(Box::new(status)));
        assert_eq!(
            failure.missing,
            Some(Box::new(Missing {
                resource: "namespaces".into(),
                name: "shop".into()
            }))
        );
    }

    #[test]
    fn throttling_and_server_timeouts_shrink_the_window_and_verdicts_do_not() {
        let answer = |code: u16, reason: &str, message: &str| {
            let status: kube::core::Status = serde_json::from_value(serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                "reason": reason, "message": message
            }))
            .expect("a Status");
            describe(&kube::Error::Api(Box::new(status)))
        };
        assert!(answer(429, "TooManyRequests", "slow down").overloaded());
        assert!(answer(504, "Timeout", "the request timed out").overloaded());
        assert!(answer(500, "InternalError", "resource quota evaluation timed out").overloaded());
        assert!(answer(503, "ServiceUnavailable", "later").overloaded());
        assert!(!answer(409, "Conflict", "apply conflict").overloaded());
        assert!(!answer(422, "Invalid", "bad field").overloaded());
        assert!(
            !answer(
                500,
                "InternalError",
                "failed to create typed patch object (/v1, Kind=ConfigMap) shop/x: .spec.bogus: field not declared in schema"
            )
            .overloaded(),
            "the revision's fault, however the server words it"
        );
    }

    #[test]
    fn the_legacy_field_manager_is_dropped_and_the_rest_kept() {
        let body = serde_json::json!({"metadata": {"resourceVersion": "42", "managedFields": [
            {"manager": "gitopsd", "operation": "Apply"},
            {"manager": "gitopsd-staging", "operation": "Apply"},
            {"manager": "kube-controller-manager", "operation": "Update"}
        ]}});
        let patch = without_legacy_manager(&body).expect("a legacy entry is there");
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        let managers: Vec<&str> = patch["metadata"]["managedFields"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|entry| entry["manager"].as_str())
            .collect();
        assert_eq!(managers, ["gitopsd-staging", "kube-controller-manager"]);
        let current = serde_json::json!({"metadata": {"managedFields": [
            {"manager": "gitopsd-staging", "operation": "Apply"}
        ]}});
        assert_eq!(without_legacy_manager(&current), None);
    }

    #[test]
    fn members_are_labelled_with_the_applyset_id() {
        let body = serde_json::json!({"metadata": {"name": "a"}});
        assert_eq!(
            with_membership(&body, "applyset-x-v1")["metadata"]["labels"][LABEL_PART_OF],
            "applyset-x-v1"
        );
    }
}
