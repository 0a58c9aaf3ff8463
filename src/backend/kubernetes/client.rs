//! The connection to the API server: one client per kubeconfig and context, built once, and
//! every request sent through the adaptive limit, the rate limit and the retries.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tower::util::MapRequestLayer;

use super::answers::{Failure, connect_error, describe};
use super::cache::ClusterCache;
use super::live::Watched;
use super::parent::ParentCache;
use super::{ClientKey, FIELD_MANAGER_PREFIX, KubernetesSettings, KubernetesTarget};
use crate::backend::applyset::{Owner, ParentRef};
use crate::backend::concurrency::AdaptiveLimiter;
use crate::backend::{LiveSource, TargetError};

/// Attempts for a request that failed with a 5xx, 429 or a transport error.
pub(super) const ATTEMPTS: u32 = 4;

pub(super) fn clients() -> &'static Mutex<BTreeMap<ClientKey, Client>> {
    static CLIENTS: std::sync::OnceLock<Mutex<BTreeMap<ClientKey, Client>>> =
        std::sync::OnceLock::new();
    CLIENTS.get_or_init(Default::default)
}

/// The window of requests in flight to the cluster `key` names, shared by every environment
/// that targets it with the same `concurrency` ceiling: a thousand environments starting at
/// once put one window's worth of requests on the server, not a thousand.
fn window(key: &ClientKey, concurrency: usize) -> Arc<AdaptiveLimiter> {
    type Windows = BTreeMap<(ClientKey, usize), Arc<AdaptiveLimiter>>;
    static WINDOWS: std::sync::OnceLock<Mutex<Windows>> = std::sync::OnceLock::new();
    WINDOWS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((key.clone(), concurrency))
        .or_insert_with(|| Arc::new(AdaptiveLimiter::new(concurrency)))
        .clone()
}

/// The verb of a request to an API server, from its method and path: `watch`, `list`, `get`,
/// `discovery` (a group or version listing), `create`, `update`, `patch`, `delete`.
pub(super) fn verb_of(method: &http::Method, uri: &http::Uri) -> &'static str {
    match *method {
        http::Method::GET => {}
        http::Method::POST => return "create",
        http::Method::PUT => return "update",
        http::Method::PATCH => return "patch",
        http::Method::DELETE => return "delete",
        _ => return "other",
    }
    let watching = uri.query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    });
    if watching {
        return "watch";
    }
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    // `/api/<version>/...` and `/apis/<group>/<version>/...`.
    let prefix = match segments.first() {
        Some(&"api") => 2,
        Some(&"apis") => 3,
        _ => return "other",
    };
    let mut rest = segments.get(prefix..).unwrap_or_default();
    if rest.len() >= 3 && rest[0] == "namespaces" {
        rest = &rest[2..];
    }
    match rest.len() {
        0 => "discovery",
        1 => "list",
        _ => "get",
    }
}

impl KubernetesTarget {
    /// Builds a client from the kubeconfig (or in-cluster config) for `owner`'s environment,
    /// whose parent ConfigMap lives in `parent_namespace`; `live` says whether passes LIST or
    /// read the cluster's watch cache.
    pub async fn connect(
        owner: Owner,
        parent_namespace: &str,
        settings: KubernetesSettings,
        live: LiveSource,
    ) -> Result<Self, TargetError> {
        let key = (settings.kubeconfig.clone(), settings.context.clone());
        let client = Self::shared_client(&settings).await?;
        let parent = ParentRef::for_environment(&owner.environment, parent_namespace);
        let watched = match live {
            LiveSource::List => None,
            LiveSource::Watch { namespaces } => Some(std::sync::Arc::new(Watched::new(
                ClusterCache::of(&key, &client),
                &parent,
                namespaces,
            ))),
        };
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
            requests: window(&key, settings.concurrency),
            settings,
            discovery: super::resolve::shared_discovery(&key),
            by_group_kind: Mutex::new(BTreeMap::new()),
            next_slot: tokio::sync::Mutex::new(tokio::time::Instant::now()),
            watched,
            namespace_made: std::sync::atomic::AtomicBool::new(false),
            fence: None,
        })
    }

    /// The one client of the cluster `settings` names (its kubeconfig and context), built on
    /// first use.
    pub(super) async fn shared_client(
        settings: &KubernetesSettings,
    ) -> Result<Client, TargetError> {
        // kube and gix share one rustls provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = (settings.kubeconfig.clone(), settings.context.clone());
        let cached = clients()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if let Some(client) = cached {
            return Ok(client);
        }
        let client = Self::client(settings).await?;
        clients()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, client.clone());
        Ok(client)
    }

    pub(super) async fn client(settings: &KubernetesSettings) -> Result<Client, TargetError> {
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
        // Every request, the watches' included, is counted by verb on its way out.
        let counted = MapRequestLayer::new(|request: http::Request<kube::client::Body>| {
            crate::metrics::kube().request(verb_of(request.method(), request.uri()));
            request
        });
        Ok(ClientBuilder::try_from(config)
            .map_err(|e| connect_error(format!("cannot build the Kubernetes client: {e}")))?
            .with_layer(&counted)
            .build())
    }

    /// Waits for the next request slot under `requests_per_second`.
    pub(super) async fn pace(&self) {
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

    /// Runs one request within the adaptive limit of requests in flight, once, with its
    /// error as kube gives it (discovery, which tells an unserved type from an unreachable
    /// server). Without the limit, a thousand environments starting at once each opened
    /// connections of their own for discovery, and the client's pool kept them all.
    pub(super) async fn within_limit<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, kube::Error> {
        // The semaphore is never closed; without a slot the request goes anyway.
        let slot = self.requests.acquire().await.ok();
        self.pace().await;
        let answer = request.await;
        if let (Some(slot), Ok(_)) = (&slot, &answer) {
            slot.succeeded();
        }
        answer
    }

    /// Runs `request` within the adaptive limit of requests in flight, retrying transient
    /// failures with backoff; a 429 also lowers the limit.
    pub(super) async fn call<T, F, Fut>(&self, mut request: F) -> Result<T, Failure>
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
                    if failure.overloaded() {
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
}

#[cfg(test)]
mod tests {
    use super::verb_of;

    #[test]
    fn requests_are_counted_by_verb() {
        let get = http::Method::GET;
        for (method, uri, verb) in [
            (
                &get,
                "/api/v1/namespaces/shop/configmaps?labelSelector=x&limit=500",
                "list",
            ),
            (&get, "/api/v1/namespaces/shop/configmaps/web", "get"),
            (&get, "/api/v1/namespaces", "list"),
            (&get, "/api/v1/namespaces/shop", "get"),
            (
                &get,
                "/apis/apps/v1/deployments?watch=true&resourceVersion=5",
                "watch",
            ),
            (&get, "/apis/apps/v1/namespaces/shop/deployments/web", "get"),
            (&get, "/apis/apps/v1/namespaces/shop/deployments", "list"),
            (&get, "/apis/apps/v1", "discovery"),
            (&get, "/api", "discovery"),
            (
                &http::Method::PATCH,
                "/api/v1/namespaces/shop/configmaps/web",
                "patch",
            ),
            (
                &http::Method::DELETE,
                "/api/v1/namespaces/shop/configmaps/web",
                "delete",
            ),
        ] {
            let uri: http::Uri = uri.parse().expect("a URI");
            assert_eq!(verb_of(method, &uri), verb, "{method} {uri}");
        }
    }
}
