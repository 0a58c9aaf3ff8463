//! Kubernetes target (kube-rs): ownership as an ApplySet (a parent ConfigMap per environment,
//! members labelled `applyset.kubernetes.io/part-of`), server-side apply as field manager
//! `gitopsd-<env>`, live state from one LIST per recorded type by the membership label, drift
//! confirmed by server-side dry runs, scopes from discovery, pruning with background
//! propagation, readiness by kind, transient errors retried with backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use super::concurrency::AdaptiveLimiter;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{Scope, oneshot, pinned_kind};
use kube::{Client, Config};
use serde_json::Value;

use super::applyset::{self, GroupKind, Holder, Owner, ParentRef, ParentState, Record};
use super::{
    DriftCheck, FailedObject, FailureClass, ForeignOwner, Missing, Readiness, Target, TargetError,
};
use crate::labels::{
    ANNOTATION_SOURCE, ANNOTATION_TOOLING, LABEL_ENVIRONMENT, LABEL_ID, LABEL_MANAGED_BY,
    LABEL_PART_OF, MANAGER,
};
use crate::manifest::{self, Scopes};
use crate::model::{KindRef, Object, ResourceKey, group_of};
use crate::plan::Compare;
use crate::readiness::{self, Verdict, readiness};

/// Prefix of every field manager gitopsd applies as; the environment's name follows.
pub const FIELD_MANAGER_PREFIX: &str = "gitopsd-";
/// The one field manager of gitopsd before environments had their own.
const LEGACY_FIELD_MANAGER: &str = "gitopsd";
/// Attempts for a request that failed with a 5xx, 429 or a transport error.
const ATTEMPTS: u32 = 4;
/// Objects per LIST page (kubectl's default chunk size): a page is turned into objects and
/// dropped before the next is asked for.
const LIST_PAGE: u32 = 500;
/// How long an applied CRD may take to become Established.
const CRD_ESTABLISHED: Duration = Duration::from_secs(60);
/// Times discovery is asked again for a kind it does not know (a CRD applied just before).
const DISCOVERY_RETRIES: u32 = 10;

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
}

/// Why a type could not be resolved.
#[derive(Debug, Clone)]
enum ResolveError {
    /// The API server answered and does not serve the type.
    Unknown(String),
    /// The API server could not be asked.
    Unreachable(String),
}

/// Why the type of an owned key could not be resolved.
#[derive(Debug, thiserror::Error)]
enum KeyTypeError {
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

/// A resolved type: where its API lives and whether it is namespaced.
#[derive(Debug, Clone)]
struct Resolved {
    resource: ApiResource,
    namespaced: bool,
}

/// What this target knows of its parent ConfigMap.
#[derive(Debug, Default)]
struct ParentCache {
    /// The live parent as last read or written; `None` until read, `Some(None)` when absent.
    live: Option<Option<ParentState>>,
    /// What the writes under way will apply: recorded with the first of them.
    announced: Record,
}

/// The types and namespaces of `keys`, as a parent records them.
fn record_of<'a>(keys: impl IntoIterator<Item = &'a ResourceKey>) -> Record {
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
    discovery: Mutex<BTreeMap<KindRef, Resolved>>,
    by_group_kind: Mutex<BTreeMap<(String, String), KindRef>>,
    /// Requests in flight: adapts to how the server copes, up to `concurrency`.
    requests: AdaptiveLimiter,
    /// When the next request may start, for `requests_per_second`.
    next_slot: tokio::sync::Mutex<tokio::time::Instant>,
}

/// One client per (kubeconfig, context), shared by the environments that use it.
type ClientKey = (Option<PathBuf>, Option<String>);

fn clients() -> &'static Mutex<BTreeMap<ClientKey, Client>> {
    static CLIENTS: std::sync::OnceLock<Mutex<BTreeMap<ClientKey, Client>>> =
        std::sync::OnceLock::new();
    CLIENTS.get_or_init(Default::default)
}

impl std::fmt::Debug for KubernetesTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesTarget")
            .field("environment", &self.environment)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn connect_error(message: impl Into<String>) -> TargetError {
    TargetError::List {
        location: "kubernetes".into(),
        message: message.into(),
    }
}

/// Why one request failed, and whether trying again may help.
#[derive(Debug, Clone)]
struct Failure {
    /// The HTTP status the API server answered with, if it answered.
    code: Option<u16>,
    retryable: bool,
    message: String,
    class: FailureClass,
    /// What a `NotFound` answer's details name as missing.
    missing: Option<Box<Missing>>,
    /// The field managers a conflict's causes name (`FieldManagerConflict`).
    conflicting_managers: Vec<String>,
}

impl Failure {
    fn is(&self, code: u16) -> bool {
        self.code == Some(code)
    }
}

/// How a v1.28 API server answers a server-side apply with a field its schema lacks: a 500
/// that no retry will change.
const UNKNOWN_FIELD: &str = "failed to create typed patch object";

/// Whom an answer of the API server blames. The object itself is at fault when the server
/// judged it (400, 404 for a write, 422, or an apply its schema refuses); everything else
/// (no answer, 401, 403, 409, 429, 5xx) is the cluster's state, and passes.
fn classify(code: Option<u16>, message: &str) -> FailureClass {
    match code {
        Some(400 | 404 | 422) => FailureClass::Revision,
        Some(500) if message.contains(UNKNOWN_FIELD) => FailureClass::Revision,
        _ => FailureClass::Infrastructure,
    }
}

fn describe(error: &kube::Error) -> Failure {
    match error {
        kube::Error::Api(status) => {
            let what = match status.code {
                409 => "conflict",
                422 => "invalid",
                403 => "forbidden",
                404 => "not found",
                401 => "unauthorized",
                429 => "throttled",
                _ => "refused",
            };
            let class = classify(Some(status.code), &status.message);
            let details = status.details.as_ref();
            Failure {
                code: Some(status.code),
                retryable: (status.code >= 500 || status.code == 429)
                    && class == FailureClass::Infrastructure,
                message: format!(
                    "{what} ({} {}): {}",
                    status.code, status.reason, status.message
                ),
                class,
                missing: details
                    .filter(|details| status.reason == "NotFound" && !details.kind.is_empty())
                    .map(|details| {
                        Box::new(Missing {
                            resource: details.kind.clone(),
                            name: details.name.clone(),
                        })
                    }),
                conflicting_managers: details
                    .map(|details| conflicting_managers(&details.causes))
                    .unwrap_or_default(),
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            Failure::without_answer(error.to_string(), true)
        }
        other => Failure::without_answer(other.to_string(), false),
    }
}

impl Failure {
    /// A request that got no answer from the API server: the cluster's state.
    fn without_answer(message: String, retryable: bool) -> Self {
        Self {
            code: None,
            retryable,
            message,
            class: FailureClass::Infrastructure,
            missing: None,
            conflicting_managers: Vec::new(),
        }
    }
}

/// The managers a server-side apply conflicts with, from the causes of its 409: each
/// `FieldManagerConflict` cause says `conflict with "<manager>"` (and `using <version>`).
fn conflicting_managers(causes: &[kube::core::response::StatusCause]) -> Vec<String> {
    let mut managers: Vec<String> = causes
        .iter()
        .filter(|cause| cause.reason == "FieldManagerConflict")
        .filter_map(|cause| {
            let rest = cause.message.strip_prefix("conflict with \"")?;
            Some(rest.split('"').next()?.to_string())
        })
        .collect();
    managers.dedup();
    managers
}

/// The environment a conflicting gitopsd field manager belongs to, if one other than `ours`
/// is among `managers`.
fn conflicting_environment(managers: &[String], ours: &str) -> Option<String> {
    managers
        .iter()
        .filter(|manager| *manager != ours)
        .find_map(|manager| manager.strip_prefix(FIELD_MANAGER_PREFIX))
        .map(str::to_string)
}

/// `body` with the applyset membership label added.
fn with_membership(body: &Value, id: &str) -> Value {
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
fn without_legacy_manager(body: &Value) -> Option<Value> {
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

fn is_namespace(key: &ResourceKey) -> bool {
    key.group.is_empty() && key.kind == "Namespace"
}

impl KubernetesTarget {
    /// Turns one LIST page of `kind` into objects, noting the legacy field managers to drop.
    /// Every object of one type carrying this environment's applyset label, page by page.
    async fn list_type(
        &self,
        kind: &KindRef,
        resolved: &Resolved,
    ) -> Result<Vec<Object>, TargetError> {
        // Items are read straight into JSON values: the typed DynamicObject would only be
        // turned back into JSON.
        let url = <DynamicObject as kube::Resource>::url_path(&resolved.resource, None);
        let selector = self.selector();
        let mut params = ListParams::default().labels(&selector).limit(LIST_PAGE);
        let mut objects = Vec::new();
        loop {
            let list: kube::core::ObjectList<Value> = self
                .call(|| {
                    let request = kube::core::Request::new(&url)
                        .list(&params)
                        .map_err(kube::Error::BuildRequest);
                    let client = self.client.clone();
                    async move { client.request(request?).await }
                })
                .await
                .map_err(|failure| TargetError::List {
                    location: format!("{kind}"),
                    message: failure.message,
                })?;
            let next = list
                .metadata
                .continue_
                .clone()
                .filter(|token| !token.is_empty());
            self.take_page(kind, list.items, &mut objects)?;
            match next {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(objects),
            }
        }
    }

    fn take_page(
        &self,
        kind: &KindRef,
        items: Vec<Value>,
        objects: &mut Vec<Object>,
    ) -> Result<(), TargetError> {
        for mut body in items {
            // List items often leave out their type.
            if let Some(map) = body.as_object_mut() {
                map.insert("apiVersion".into(), Value::String(kind.api_version.clone()));
                map.insert("kind".into(), Value::String(kind.kind.clone()));
            }
            if let Some(object) = Object::from_body(body) {
                if let Some(patch) = without_legacy_manager(&object.body) {
                    self.legacy_managers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(object.key.clone(), (kind.clone(), patch));
                }
                objects.push(object);
            }
        }
        Ok(())
    }

    /// Builds a client from the kubeconfig (or in-cluster config) for `owner`'s environment,
    /// whose parent ConfigMap lives in `parent_namespace`.
    pub async fn connect(
        owner: Owner,
        parent_namespace: &str,
        settings: KubernetesSettings,
    ) -> Result<Self, TargetError> {
        // kube and gix share one rustls provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = (settings.kubeconfig.clone(), settings.context.clone());
        let cached = clients()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let client = match cached {
            Some(client) => client,
            None => {
                let client = Self::client(&settings).await?;
                clients()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, client.clone());
                client
            }
        };
        let parent = ParentRef::for_environment(&owner.environment, parent_namespace);
        Ok(Self {
            client,
            environment: owner.environment.clone(),
            field_manager: format!("{FIELD_MANAGER_PREFIX}{}", owner.environment),
            id: parent.id(),
            parent,
            owner,
            parent_cache: Mutex::new(ParentCache::default()),
            parent_writes: tokio::sync::Mutex::new(()),
            cleared: Mutex::new(BTreeMap::new()),
            legacy_managers: Mutex::new(BTreeMap::new()),
            requests: AdaptiveLimiter::new(settings.concurrency),
            settings,
            discovery: Mutex::new(BTreeMap::new()),
            by_group_kind: Mutex::new(BTreeMap::new()),
            next_slot: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        })
    }

    async fn client(settings: &KubernetesSettings) -> Result<Client, TargetError> {
        let options = KubeConfigOptions {
            context: settings.context.clone(),
            ..KubeConfigOptions::default()
        };
        let mut config = match &settings.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                    connect_error(format!("cannot read kubeconfig {}: {e}", path.display()))
                })?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| connect_error(format!("kubeconfig {}: {e}", path.display())))?
            }
            None => match Config::from_kubeconfig(&options).await {
                Ok(config) => config,
                Err(kubeconfig_error) => Config::incluster().map_err(|e| {
                    connect_error(format!(
                        "no usable kubeconfig ({kubeconfig_error}) and not in a cluster ({e})"
                    ))
                })?,
            },
        };
        // One retry layer, ours (`call`): kube's own would multiply every attempt.
        config.default_retry = false;
        Client::try_from(config)
            .map_err(|e| connect_error(format!("cannot build the Kubernetes client: {e}")))
    }

    /// Waits for the next request slot under `requests_per_second`.
    async fn pace(&self) {
        if self.settings.requests_per_second == 0 {
            return;
        }
        let gap = Duration::from_secs(1) / self.settings.requests_per_second;
        let start = {
            let mut next = self.next_slot.lock().await;
            let now = tokio::time::Instant::now();
            let start = (*next).max(now);
            *next = start + gap;
            start
        };
        tokio::time::sleep_until(start).await;
    }

    /// Waits until an applied CRD is Established, so its custom resources can follow.
    async fn await_established(
        &self,
        key: &ResourceKey,
        api: &Api<DynamicObject>,
    ) -> Result<(), TargetError> {
        let deadline = tokio::time::Instant::now() + CRD_ESTABLISHED;
        loop {
            let live = self
                .call(|| api.get_opt(&key.name))
                .await
                .map_err(|failure| object_error("apply", key, failure.message))?;
            let body = live
                .map(|live| serde_json::to_value(&live))
                .transpose()
                .map_err(|e| object_error("apply", key, e.to_string()))?;
            let state = match &body {
                Some(body) => readiness(&key.group, &key.kind, body),
                None => Verdict::Waiting("not found after apply".into()),
            };
            match state {
                Verdict::Ready => return Ok(()),
                Verdict::Waiting(reason) if tokio::time::Instant::now() >= deadline => {
                    return Err(object_error(
                        "apply",
                        key,
                        format!(
                            "not Established within {}s: {reason}",
                            CRD_ESTABLISHED.as_secs()
                        ),
                    ));
                }
                Verdict::Waiting(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    fn selector(&self) -> String {
        format!("{LABEL_PART_OF}={}", self.id)
    }

    /// Runs `request` within the adaptive limit of requests in flight, retrying transient
    /// failures with backoff; a 429 also lowers the limit.
    async fn call<T, F, Fut>(&self, mut request: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let slot = self
            .requests
            .acquire()
            .await
            .map_err(|e| Failure::without_answer(e.to_string(), false))?;
        let mut attempt = 1;
        loop {
            self.pace().await;
            match request().await {
                Ok(value) => {
                    slot.succeeded();
                    return Ok(value);
                }
                Err(error) => {
                    let failure = describe(&error);
                    if failure.is(429) {
                        slot.throttled();
                    }
                    if !failure.retryable || attempt == ATTEMPTS {
                        return Err(failure);
                    }
                    let wait = Duration::from_millis(200 * (1 << attempt));
                    tracing::warn!(error = %failure.message, attempt, retry_in = ?wait, "Kubernetes request failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    /// The first broken pod running a workload's newest template (Deployments, StatefulSets
    /// and DaemonSets): one LIST of its pods by selector, and when one is broken, for a
    /// Deployment one LIST of its ReplicaSets (for a DaemonSet, of its ControllerRevisions) to
    /// tell the new template's pods from the old.
    async fn broken_pods(
        &self,
        key: &ResourceKey,
        workload: &Value,
        max_restarts: u32,
    ) -> Result<Option<readiness::Stuck>, TargetError> {
        if key.group != "apps"
            || !matches!(
                key.kind.as_str(),
                "Deployment" | "StatefulSet" | "DaemonSet"
            )
        {
            return Ok(None);
        }
        let Some(selector) = readiness::selector_text(workload) else {
            return Ok(None);
        };
        let namespace = key.namespace.as_deref().unwrap_or("default");
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.client.clone(), namespace);
        let params = ListParams::default().labels(&selector);
        let listed = self
            .call(|| pods.list(&params))
            .await
            .map_err(|failure| answer_error("read pods of", key, failure))?;
        let broken: Vec<(Value, readiness::Stuck)> = listed
            .items
            .iter()
            .filter_map(|pod| serde_json::to_value(pod).ok())
            .filter_map(|pod| readiness::broken_pod(&pod, max_restarts).map(|s| (pod, s)))
            .collect();
        if broken.is_empty() {
            return Ok(None);
        }
        let owned = match key.kind.as_str() {
            "Deployment" => {
                let sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> =
                    Api::namespaced(self.client.clone(), namespace);
                self.call(|| sets.list(&params))
                    .await
                    .map_err(|failure| answer_error("read replica sets of", key, failure))?
                    .items
                    .iter()
                    .filter_map(|set| serde_json::to_value(set).ok())
                    .collect()
            }
            "DaemonSet" => {
                let revisions: Api<k8s_openapi::api::apps::v1::ControllerRevision> =
                    Api::namespaced(self.client.clone(), namespace);
                self.call(|| revisions.list(&params))
                    .await
                    .map_err(|failure| answer_error("read revisions of", key, failure))?
                    .items
                    .iter()
                    .filter_map(|revision| serde_json::to_value(revision).ok())
                    .collect()
            }
            _ => Vec::new(),
        };
        // A pod of the old template that breaks is not this revision's doing.
        let Some((label, value)) = readiness::new_template_label(&key.kind, workload, &owned)
        else {
            return Ok(None);
        };
        Ok(broken
            .into_iter()
            .find(|(pod, _)| readiness::has_label(pod, label, &value))
            .map(|(_, stuck)| stuck))
    }

    /// Where a type's API lives, from discovery (cached). `patient` asks again for a while
    /// when the kind is unknown, for custom resources whose CRD was applied just before.
    async fn resolve(&self, kind: &KindRef, patient: bool) -> Result<Resolved, ResolveError> {
        if let Some(found) = self.lock_discovery().get(kind) {
            return Ok(found.clone());
        }
        let gvk = match kind.api_version.split_once('/') {
            Some((group, version)) => GroupVersionKind::gvk(group, version, &kind.kind),
            None => GroupVersionKind::gvk("", &kind.api_version, &kind.kind),
        };
        let tries = if patient { DISCOVERY_RETRIES } else { 1 };
        let mut last = String::new();
        for attempt in 1..=tries {
            match pinned_kind(&self.client, &gvk).await {
                Ok((resource, capabilities)) => {
                    let resolved = Resolved {
                        resource,
                        namespaced: capabilities.scope == Scope::Namespaced,
                    };
                    self.lock_discovery().insert(kind.clone(), resolved.clone());
                    self.by_group_kind
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(
                            (group_of(&kind.api_version).to_string(), kind.kind.clone()),
                            kind.clone(),
                        );
                    return Ok(resolved);
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

    fn lock_discovery(&self) -> std::sync::MutexGuard<'_, BTreeMap<KindRef, Resolved>> {
        self.discovery.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn api(&self, resolved: &Resolved, namespace: Option<&str>) -> Api<DynamicObject> {
        match (resolved.namespaced, namespace) {
            (true, Some(namespace)) => {
                Api::namespaced_with(self.client.clone(), namespace, &resolved.resource)
            }
            _ => Api::all_with(self.client.clone(), &resolved.resource),
        }
    }

    /// The type of an owned key, as last seen in a list or apply.
    async fn resolve_key(&self, key: &ResourceKey) -> Result<Resolved, KeyTypeError> {
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
    async fn resolve_group_kind(&self, group_kind: &GroupKind) -> Result<KindRef, ResolveError> {
        let known = self
            .by_group_kind
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(group_kind.group.clone(), group_kind.kind.clone()))
            .cloned();
        if let Some(kind) = known {
            return Ok(kind);
        }
        let group = match oneshot::group(&self.client, &group_kind.group).await {
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

    /// Whether `namespace` holds objects that are not this environment's (checked on the
    /// types the environment uses and the common built-in ones).
    async fn namespace_has_foreign_objects(&self, namespace: &str) -> Result<bool, Failure> {
        let mut kinds: BTreeSet<KindRef> = self.lock_discovery().keys().cloned().collect();
        for (api_version, kind) in [
            ("v1", "Pod"),
            ("v1", "Service"),
            ("apps/v1", "Deployment"),
            ("v1", "ConfigMap"),
        ] {
            kinds.insert(KindRef {
                api_version: api_version.into(),
                kind: kind.into(),
            });
        }
        for kind in kinds {
            let Ok(resolved) = self.resolve(&kind, false).await else {
                continue;
            };
            if !resolved.namespaced {
                continue;
            }
            let api = self.api(&resolved, Some(namespace));
            let everything = ListParams::default();
            let list = self.call(|| api.list_metadata(&everything)).await?;
            let foreign = list.items.iter().any(|item| {
                let labels = item.metadata.labels.clone().unwrap_or_default();
                // Members of this applyset, and its parent.
                let ours = labels.get(LABEL_PART_OF) == Some(&self.id)
                    || labels.get(LABEL_ID) == Some(&self.id);
                // Objects a controller made (pods of our Deployments) go with their owner;
                // the CA bundle and default account Kubernetes puts in every namespace are
                // nobody's work.
                let controlled = item
                    .metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|owners| !owners.is_empty());
                let automatic = matches!(
                    (kind.kind.as_str(), item.metadata.name.as_deref()),
                    ("ConfigMap", Some("kube-root-ca.crt")) | ("ServiceAccount", Some("default"))
                );
                !ours && !controlled && !automatic
            });
            if foreign {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The live parent, read once and then kept as this target last wrote it.
    async fn parent_state(&self) -> Result<Option<ParentState>, TargetError> {
        if let Some(live) = &self.lock_parent().live {
            return Ok(live.clone());
        }
        self.read_parent().await
    }

    /// Reads the live parent afresh.
    async fn read_parent(&self) -> Result<Option<ParentState>, TargetError> {
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

    fn lock_parent(&self) -> std::sync::MutexGuard<'_, ParentCache> {
        self.parent_cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses a parent another source or tool holds, unless `adopt` is set.
    fn check_holder(&self, parent: Option<&ParentState>) -> Result<(), TargetError> {
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
    async fn write_parent(&self, record: &Record) -> Result<(), TargetError> {
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
    async fn forget_legacy_manager(&self, keys: &[ResourceKey]) {
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
    async fn delete_parent(&self, exists: bool) -> Result<(), TargetError> {
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
    async fn record_member(&self, key: &ResourceKey) -> Result<(), TargetError> {
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
    async fn describe_applyset(&self, id: &str) -> String {
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

/// A failure on the way to the server (discovery, encoding): the cluster's, not the object's.
fn object_error(operation: &'static str, key: &ResourceKey, message: String) -> TargetError {
    classed_error(operation, key, message, FailureClass::Infrastructure)
}

fn classed_error(
    operation: &'static str,
    key: &ResourceKey,
    message: String,
    class: FailureClass,
) -> TargetError {
    TargetError::Object {
        operation,
        object: key.to_string(),
        message,
        class,
        missing: None,
    }
}

/// The server's answer to a request about one object.
fn answer_error(operation: &'static str, key: &ResourceKey, failure: Failure) -> TargetError {
    TargetError::Object {
        operation,
        object: key.to_string(),
        message: failure.message,
        class: failure.class,
        missing: failure.missing,
    }
}

impl Target for KubernetesTarget {
    async fn list(&self, kinds: &BTreeSet<KindRef>) -> Result<Vec<Object>, TargetError> {
        // A pass starts from the parent as it is now: another writer may have changed it.
        let parent = self.read_parent().await?;
        self.check_holder(parent.as_ref())?;
        let mut types: BTreeSet<KindRef> = kinds.clone();
        for group_kind in parent.iter().flat_map(|parent| &parent.group_kinds) {
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
        let mut to_list = Vec::new();
        let mut listed = BTreeSet::new();
        for kind in &types {
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
        // The parent may live in a namespace the revision creates: Namespaces go first.
        if !is_namespace(key) {
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
        match self.call(|| api.patch(&key.name, &gentle, &patch)).await {
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
                        .map_err(|failure| answer_error("apply", key, failure))?;
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
            Err(failure) => return Err(answer_error("apply", key, failure)),
            Ok(_) => {}
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
        let background = DeleteParams::background();
        match self.call(|| api.delete(&key.name, &background)).await {
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
            let api = self.api(&resolved, key.namespace.as_deref());
            let live = self
                .call(|| api.get_opt(&key.name))
                .await
                .map_err(|failure| answer_error("read", key, failure))?;
            let Some(live) = live else {
                readiness.waiting.push(format!("{key}: not found"));
                continue;
            };
            let body = serde_json::to_value(&live)
                .map_err(|e| object_error("read", key, e.to_string()))?;
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
            // Only a workload still waiting has its pods looked at: one LIST per poll.
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
        let _writing = self.parent_writes.lock().await;
        let parent = self.parent_state().await?;
        self.check_holder(parent.as_ref())?;
        self.lock_parent().announced = Record::default();
        let record = record_of(keys);
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
        self.write_parent(&record).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
