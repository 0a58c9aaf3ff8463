//! Kubernetes target (kube-rs): server-side apply as field manager `gitopsd`, live state from
//! one LIST per type with the ownership label selector, pruning with background propagation,
//! readiness by kind, transient errors retried with backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{Scope, pinned_kind};
use kube::{Client, Config};
use serde_json::Value;
use tokio::sync::Semaphore;

use super::{Target, TargetError};
use crate::model::{
    KindRef, LABEL_ENVIRONMENT, LABEL_MANAGED_BY, MANAGER, Object, ResourceKey, group_of,
};
use crate::readiness::readiness;

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "gitopsd";
/// Attempts for a request that failed with a 5xx, 429 or a transport error.
const ATTEMPTS: u32 = 4;
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
    /// Take over fields another manager owns instead of failing with a conflict.
    pub force_conflicts: bool,
    /// Requests in flight at once.
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

pub struct KubernetesTarget {
    client: Client,
    environment: String,
    settings: KubernetesSettings,
    /// Discovery results by type, and the last version seen per (group, kind) for deletes.
    discovery: Mutex<BTreeMap<KindRef, Resolved>>,
    by_group_kind: Mutex<BTreeMap<(String, String), KindRef>>,
    requests: Semaphore,
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

/// What went wrong with one request, and whether trying again may help.
fn describe(error: &kube::Error) -> (bool, String) {
    match error {
        kube::Error::Api(status) => {
            let retry = status.code >= 500 || status.code == 429;
            let what = match status.code {
                409 => "conflict",
                422 => "invalid",
                403 => "forbidden",
                404 => "not found",
                401 => "unauthorized",
                _ => "refused",
            };
            (
                retry,
                format!(
                    "{what} ({} {}): {}",
                    status.code, status.reason, status.message
                ),
            )
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => (true, format!("{error}")),
        other => (false, other.to_string()),
    }
}

impl KubernetesTarget {
    /// Builds a client from the kubeconfig (or in-cluster config) for `environment`.
    pub async fn connect(
        environment: &str,
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
        Ok(Self {
            client,
            environment: environment.to_string(),
            requests: Semaphore::new(settings.concurrency.max(1)),
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
        let config = match &settings.kubeconfig {
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
                .map_err(|(_, message)| object_error("apply", key, message))?;
            let body = live
                .map(|live| serde_json::to_value(&live))
                .transpose()
                .map_err(|e| object_error("apply", key, e.to_string()))?;
            let state = match &body {
                Some(body) => readiness(&key.group, &key.kind, body),
                None => Err("not found after apply".into()),
            };
            match state {
                Ok(()) => return Ok(()),
                Err(reason) if tokio::time::Instant::now() >= deadline => {
                    return Err(object_error(
                        "apply",
                        key,
                        format!(
                            "not Established within {}s: {reason}",
                            CRD_ESTABLISHED.as_secs()
                        ),
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    fn selector(&self) -> String {
        format!(
            "{LABEL_MANAGED_BY}={MANAGER},{LABEL_ENVIRONMENT}={}",
            self.environment
        )
    }

    /// Runs `request` with bounded concurrency, retrying transient failures with backoff.
    async fn call<T, F, Fut>(&self, mut request: F) -> Result<T, (bool, String)>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let _permit = self
            .requests
            .acquire()
            .await
            .map_err(|e| (false, e.to_string()))?;
        let mut attempt = 1;
        loop {
            self.pace().await;
            match request().await {
                Ok(value) => return Ok(value),
                Err(error) => {
                    let (retry, message) = describe(&error);
                    if !retry || attempt == ATTEMPTS {
                        return Err((retry, message));
                    }
                    let wait = Duration::from_millis(200 * (1 << attempt));
                    tracing::warn!(error = %message, attempt, retry_in = ?wait, "Kubernetes request failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
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
                            describe(&error).1
                        )));
                    }
                    last = describe(&error).1;
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
    async fn resolve_key(&self, key: &ResourceKey) -> Result<Resolved, String> {
        let kind = self
            .by_group_kind
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(key.group.clone(), key.kind.clone()))
            .cloned()
            .ok_or_else(|| format!("type of {key} was never listed or applied"))?;
        self.resolve(&kind, false).await.map_err(|e| e.to_string())
    }

    /// Whether `namespace` holds objects that are not this environment's (checked on the
    /// types the environment uses and the common built-in ones).
    async fn namespace_has_foreign_objects(&self, namespace: &str) -> Result<bool, String> {
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
            let list = self
                .call(|| api.list(&everything))
                .await
                .map_err(|(_, message)| message)?;
            let foreign = list.items.iter().any(|item| {
                let labels = item.metadata.labels.clone().unwrap_or_default();
                let ours = labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGER)
                    && labels.get(LABEL_ENVIRONMENT) == Some(&self.environment);
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
}

fn object_error(operation: &'static str, key: &ResourceKey, message: String) -> TargetError {
    TargetError::Object {
        operation,
        object: key.to_string(),
        message,
    }
}

impl Target for KubernetesTarget {
    async fn list(&self, kinds: &BTreeSet<KindRef>) -> Result<Vec<Object>, TargetError> {
        let selector = self.selector();
        let mut objects = Vec::new();
        for kind in kinds {
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
            let api = self.api(&resolved, None);
            let params = ListParams::default().labels(&selector);
            let list = self
                .call(|| api.list(&params))
                .await
                .map_err(|(_, message)| TargetError::List {
                    location: format!("{kind}"),
                    message,
                })?;
            for item in list.items {
                let mut body = serde_json::to_value(&item).map_err(|e| TargetError::List {
                    location: format!("{kind}"),
                    message: e.to_string(),
                })?;
                // List items often leave out their type.
                if let Some(map) = body.as_object_mut() {
                    map.insert("apiVersion".into(), Value::String(kind.api_version.clone()));
                    map.insert("kind".into(), Value::String(kind.kind.clone()));
                }
                if let Some(object) = Object::from_body(body) {
                    objects.push(object);
                }
            }
        }
        Ok(objects)
    }

    async fn apply(&self, key: &ResourceKey, body: &Value) -> Result<(), TargetError> {
        let kind = KindRef::of(body).ok_or_else(|| {
            object_error("apply", key, "the body has no apiVersion or kind".into())
        })?;
        let resolved = self
            .resolve(&kind, true)
            .await
            .map_err(|error| object_error("apply", key, error.to_string()))?;
        let object: DynamicObject = serde_json::from_value(body.clone())
            .map_err(|e| object_error("apply", key, e.to_string()))?;
        let mut params = PatchParams::apply(FIELD_MANAGER);
        if self.settings.force_conflicts {
            params = params.force();
        }
        let api = self.api(&resolved, key.namespace.as_deref());
        let patch = Patch::Apply(&object);
        self.call(|| api.patch(&key.name, &params, &patch))
            .await
            .map_err(|(_, message)| {
                let hint = if message.starts_with("conflict") && !self.settings.force_conflicts {
                    " (another field manager owns these fields; set force_conflicts = true to take them over)"
                } else {
                    ""
                };
                object_error("apply", key, format!("{message}{hint}"))
            })?;
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
        let object: DynamicObject = serde_json::from_value(body.clone())
            .map_err(|e| object_error("dry-run", key, e.to_string()))?;
        let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
        let api = self.api(&resolved, key.namespace.as_deref());
        let patch = Patch::Apply(&object);
        let result = self
            .call(|| api.patch(&key.name, &params, &patch))
            .await
            .map_err(|(_, message)| object_error("dry-run", key, message))?;
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
            .map_err(|message| object_error("delete", key, message))?;
        if key.group.is_empty()
            && key.kind == "Namespace"
            && !self.settings.delete_foreign_namespaces
        {
            let foreign = self
                .namespace_has_foreign_objects(&key.name)
                .await
                .map_err(|message| object_error("delete", key, message))?;
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
            Err((_, message)) if message.starts_with("not found") => Ok(()),
            Err((_, message)) => Err(object_error("delete", key, message)),
        }
    }

    async fn not_ready(&self, keys: &[ResourceKey]) -> Result<Vec<String>, TargetError> {
        let mut waiting = Vec::new();
        for key in keys {
            let resolved = self
                .resolve_key(key)
                .await
                .map_err(|message| object_error("read", key, message))?;
            let api = self.api(&resolved, key.namespace.as_deref());
            let live = self
                .call(|| api.get_opt(&key.name))
                .await
                .map_err(|(_, message)| object_error("read", key, message))?;
            let Some(live) = live else {
                waiting.push(format!("{key}: not found"));
                continue;
            };
            let body = serde_json::to_value(&live)
                .map_err(|e| object_error("read", key, e.to_string()))?;
            if let Err(reason) = readiness(&key.group, &key.kind, &body) {
                waiting.push(format!("{key}: {reason}"));
            }
        }
        Ok(waiting)
    }

    fn compares_by_hash(&self) -> bool {
        true
    }
}
