//! The connection to the API server: one client per kubeconfig and context, built once, and
//! every request sent through the adaptive limit, the rate limit and the retries.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::answers::{Failure, connect_error, describe};
use super::parent::ParentCache;
use super::{FIELD_MANAGER_PREFIX, KubernetesSettings, KubernetesTarget};
use crate::backend::TargetError;
use crate::backend::applyset::{Owner, ParentRef};
use crate::backend::concurrency::AdaptiveLimiter;

/// Attempts for a request that failed with a 5xx, 429 or a transport error.
pub(super) const ATTEMPTS: u32 = 4;

/// One client per (kubeconfig, context), shared by the environments that use it.
pub(super) type ClientKey = (Option<PathBuf>, Option<String>);

pub(super) fn clients() -> &'static Mutex<BTreeMap<ClientKey, Client>> {
    static CLIENTS: std::sync::OnceLock<Mutex<BTreeMap<ClientKey, Client>>> =
        std::sync::OnceLock::new();
    CLIENTS.get_or_init(Default::default)
}

impl KubernetesTarget {
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
        Client::try_from(config)
            .map_err(|e| connect_error(format!("cannot build the Kubernetes client: {e}")))
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
}
