//! Where live state lives: the `Target` trait and its backends.

pub mod directory;
pub mod kubernetes;

use std::future::Future;

use serde_json::Value;
use thiserror::Error;

use std::collections::BTreeSet;

use crate::model::{KindRef, Object, ResourceKey};

pub use directory::DirectoryTarget;
pub use kubernetes::{KubernetesSettings, KubernetesTarget};

#[derive(Debug, Error)]
pub enum TargetError {
    #[error("{operation} {object}: {message}")]
    Object {
        operation: &'static str,
        object: String,
        message: String,
    },
    #[error("cannot list live objects in {location}: {message}")]
    List { location: String, message: String },
}

/// A place objects are applied to. Implementations only ever list, change and delete objects
/// that carry the environment's ownership marks.
pub trait Target: Send + Sync {
    /// Every live object of the given types that this environment owns.
    fn list(
        &self,
        kinds: &BTreeSet<KindRef>,
    ) -> impl Future<Output = Result<Vec<Object>, TargetError>> + Send;
    /// What the object would become if `body` were applied, without changing anything (a
    /// server-side dry run); `None` where the target has nothing to add to `body`.
    fn dry_run(
        &self,
        _key: &ResourceKey,
        _body: &Value,
    ) -> impl Future<Output = Result<Option<Value>, TargetError>> + Send {
        async { Ok(None) }
    }
    /// True when live objects carry server-side defaults, so "unchanged" is decided by the
    /// `gitopsd.io/hash` annotation rather than by comparing bodies.
    fn compares_by_hash(&self) -> bool {
        false
    }
    /// Creates or replaces an object with `body` (already stamped with ownership marks).
    fn apply(
        &self,
        key: &ResourceKey,
        body: &Value,
    ) -> impl Future<Output = Result<(), TargetError>> + Send;
    /// Deletes an owned object; deleting one that is already gone succeeds.
    fn delete(&self, key: &ResourceKey) -> impl Future<Output = Result<(), TargetError>> + Send;
    /// Which of `keys` are not ready yet, each with the reason; empty when all are.
    fn not_ready(
        &self,
        keys: &[ResourceKey],
    ) -> impl Future<Output = Result<Vec<String>, TargetError>> + Send;
}

/// The target an environment is configured with.
#[derive(Debug)]
pub enum AnyTarget {
    Directory(DirectoryTarget),
    Kubernetes(Box<KubernetesTarget>),
}

impl AnyTarget {
    /// Opens the configured target (for Kubernetes: builds its client).
    pub async fn open(
        target: &crate::config::TargetConfig,
        environment: &str,
    ) -> Result<Self, TargetError> {
        Ok(match target {
            crate::config::TargetConfig::Directory { path } => {
                AnyTarget::Directory(DirectoryTarget::new(path, environment))
            }
            crate::config::TargetConfig::Kubernetes(settings) => AnyTarget::Kubernetes(Box::new(
                KubernetesTarget::connect(environment, settings.clone()).await?,
            )),
        })
    }
}

impl Target for AnyTarget {
    async fn list(&self, kinds: &BTreeSet<KindRef>) -> Result<Vec<Object>, TargetError> {
        match self {
            AnyTarget::Directory(target) => target.list(kinds).await,
            AnyTarget::Kubernetes(target) => target.list(kinds).await,
        }
    }

    async fn apply(&self, key: &ResourceKey, body: &Value) -> Result<(), TargetError> {
        match self {
            AnyTarget::Directory(target) => target.apply(key, body).await,
            AnyTarget::Kubernetes(target) => target.apply(key, body).await,
        }
    }

    async fn delete(&self, key: &ResourceKey) -> Result<(), TargetError> {
        match self {
            AnyTarget::Directory(target) => target.delete(key).await,
            AnyTarget::Kubernetes(target) => target.delete(key).await,
        }
    }

    async fn not_ready(&self, keys: &[ResourceKey]) -> Result<Vec<String>, TargetError> {
        match self {
            AnyTarget::Directory(target) => target.not_ready(keys).await,
            AnyTarget::Kubernetes(target) => target.not_ready(keys).await,
        }
    }

    async fn dry_run(&self, key: &ResourceKey, body: &Value) -> Result<Option<Value>, TargetError> {
        match self {
            AnyTarget::Directory(target) => target.dry_run(key, body).await,
            AnyTarget::Kubernetes(target) => target.dry_run(key, body).await,
        }
    }

    fn compares_by_hash(&self) -> bool {
        match self {
            AnyTarget::Directory(target) => target.compares_by_hash(),
            AnyTarget::Kubernetes(target) => target.compares_by_hash(),
        }
    }
}
