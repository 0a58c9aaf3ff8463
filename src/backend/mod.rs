//! Where live state lives: the `Target` trait and its backends.

pub mod applyset;
pub mod concurrency;
pub mod directory;
pub mod kubernetes;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;

use serde_json::Value;
use thiserror::Error;

use crate::manifest::Scopes;
use crate::model::{KindRef, Object, ResourceKey};
use crate::plan::Compare;

pub use directory::DirectoryTarget;
pub use kubernetes::{KubernetesSettings, KubernetesTarget};

/// Where an environment's live state lives (`target = { type = … }`).
#[derive(Debug, Clone, PartialEq)]
pub enum TargetConfig {
    /// Live state is a folder of YAML files.
    Directory { path: PathBuf },
    /// A Kubernetes cluster through its API server.
    Kubernetes(KubernetesSettings),
}

/// Whom a failed write blames: the revision (hold it as failed) or the cluster (retry later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The server judged the object itself: invalid, unknown field, not allowed by schema.
    Revision,
    /// The cluster could not take the write now: unreachable, 5xx, 429, timeout, conflict,
    /// refused credentials or permissions. A good commit must not be held for it.
    Infrastructure,
}

/// An object the server said does not exist, as its answer's details name it (a `NotFound`
/// status with `details.kind` = `namespaces` and `details.name` = `shop`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The resource, plural and lower case, as the API names it (`namespaces`).
    pub resource: String,
    pub name: String,
}

#[derive(Debug, Error)]
pub enum TargetError {
    #[error("{operation} {object}: {message}")]
    Object {
        operation: &'static str,
        object: String,
        message: String,
        class: FailureClass,
        /// What the server named as missing, when it refused for that reason.
        missing: Option<Box<Missing>>,
    },
    #[error("cannot list live objects in {location}: {message}")]
    List { location: String, message: String },
    /// Another owner holds what this environment would write; nothing was written.
    #[error("refused: {message}")]
    Ownership { message: String },
}

impl TargetError {
    /// Whom the failure blames.
    pub fn class(&self) -> FailureClass {
        match self {
            TargetError::Object { class, .. } => *class,
            TargetError::List { .. } => FailureClass::Infrastructure,
            TargetError::Ownership { .. } => FailureClass::Revision,
        }
    }
}

/// Where the objects of a step stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Objects still on their way, each with what it waits for.
    pub waiting: Vec<String>,
    /// Objects that will not get there (a crash-looping pod, a missed progress deadline, a
    /// failed Job), each with the reason: the step fails at once.
    pub failed: Vec<FailedObject>,
}

/// An object that will not become ready by waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedObject {
    /// Short cause, as Kubernetes names it (`CrashLoopBackOff`, `ProgressDeadlineExceeded`).
    pub cause: String,
    /// The object and what was seen.
    pub detail: String,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.waiting.is_empty() && self.failed.is_empty()
    }
}

/// What a server made of a suspected drift.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriftCheck {
    /// No server to ask: the suspicion stands as found.
    Unchecked,
    /// Applying would change nothing (a default or a value the server rewrites misled it).
    Cleared,
    /// Applying would change these field paths.
    Confirmed(Vec<String>),
}

/// A live object at a key the environment is about to create, held by another owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignOwner {
    pub key: ResourceKey,
    /// Who holds it, in words an operator can act on.
    pub owner: String,
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
    /// How desired and live bodies are compared.
    fn compare(&self) -> Compare {
        Compare::Content
    }
    /// Whether parsed manifest files are worth keeping between passes: where every pass reads
    /// them again. A target with a fingerprint skips unchanged passes instead, and keeping
    /// them would only hold memory while it idles.
    fn keeps_parsed_files(&self) -> bool {
        true
    }
    /// Writes worth starting at once. Local writes gain nothing past a few (each more holds
    /// a blocking thread and its allocator arena); a target that limits its own requests
    /// says how many it may take.
    /// Whether this process may take decisions for the environment now (journal them, act on
    /// them). Always, except under `[ha]` without the environment's Lease.
    fn may_decide(&self) -> Result<(), TargetError> {
        Ok(())
    }

    /// `[ha]`: puts the decisions journaled so far where a successor reads them (the
    /// environment's Lease). Nothing to do elsewhere.
    fn carry_decisions(&self) -> impl Future<Output = Result<(), TargetError>> + Send {
        async { Ok(()) }
    }

    fn writes_in_flight(&self) -> usize {
        8
    }
    /// A cheap summary of the whole live state that changes whenever any of it changes, so
    /// that a pass over an unchanged revision and an unchanged target can be skipped; `None`
    /// where the target has no such summary (every pass then lists).
    fn fingerprint(&self) -> impl Future<Output = Result<Option<String>, TargetError>> + Send {
        async { Ok(None) }
    }
    /// Where the given types live (namespaced or cluster-scoped).
    fn scopes(
        &self,
        _kinds: &BTreeSet<KindRef>,
    ) -> impl Future<Output = Result<Scopes, TargetError>> + Send {
        async { Ok(Scopes::offline()) }
    }
    /// Asks the target whether applying `body` over `live` would change anything.
    fn check_drift(
        &self,
        _key: &ResourceKey,
        _body: &Value,
        _live: &Object,
    ) -> impl Future<Output = Result<DriftCheck, TargetError>> + Send {
        async { Ok(DriftCheck::Unchecked) }
    }
    /// Of `keys` (objects about to be created), those that already live under another owner.
    fn foreign_owners(
        &self,
        _keys: &[ResourceKey],
    ) -> impl Future<Output = Result<Vec<ForeignOwner>, TargetError>> + Send {
        async { Ok(Vec::new()) }
    }
    /// Tells the target which objects the writes about to start will apply, so an ownership
    /// record is written once for all of them rather than once per new type.
    fn announce(&self, _keys: &[ResourceKey]) {}
    /// Records, once a pass has written everything, that the environment owns exactly the
    /// objects at `keys` (their types and namespaces).
    fn settle(
        &self,
        _keys: &[ResourceKey],
    ) -> impl Future<Output = Result<(), TargetError>> + Send {
        async { Ok(()) }
    }
    /// Creates or replaces an object with `body` (already stamped with ownership marks).
    fn apply(
        &self,
        key: &ResourceKey,
        body: &Value,
    ) -> impl Future<Output = Result<(), TargetError>> + Send;
    /// Deletes an owned object; deleting one that is already gone succeeds.
    fn delete(&self, key: &ResourceKey) -> impl Future<Output = Result<(), TargetError>> + Send;
    /// Which of `keys` are not ready yet, and which have failed for good; a pod of a new
    /// template counts as failed once it restarted more than `max_restarts` times.
    fn readiness(
        &self,
        keys: &[ResourceKey],
        max_restarts: u32,
    ) -> impl Future<Output = Result<Readiness, TargetError>> + Send;
    /// Whether objects of the revision can run as hooks here (`gitopsd.io/hook`).
    fn runs_hook_objects(&self) -> bool {
        false
    }
    /// Creates a hook's object run (`body` already renamed and marked as the environment's
    /// hook; never a member of its applyset, so no prune sees it). One already there under
    /// that name is left as it is: a restart finds the run it started and waits for it.
    fn create_hook(
        &self,
        key: &ResourceKey,
        _body: &Value,
    ) -> impl Future<Output = Result<(), TargetError>> + Send {
        let error = TargetError::Object {
            operation: "run hook",
            object: key.to_string(),
            message: "objects annotated gitopsd.io/hook need a kubernetes target".into(),
            class: FailureClass::Revision,
            missing: None,
        };
        async { Err(error) }
    }
    /// Deletes runs of the hook `hook` of this environment of `key`'s type and namespace
    /// (only `key`'s own name when `only_this` is set), and waits until they are gone. Only
    /// objects carrying the environment's hook marks are deleted.
    fn delete_hook_runs(
        &self,
        _key: &ResourceKey,
        _hook: &str,
        _only_this: bool,
    ) -> impl Future<Output = Result<(), TargetError>> + Send {
        async { Ok(()) }
    }
}

/// Where a Kubernetes target reads live state from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveSource {
    /// A paged LIST of every owned type on every pass (one-shot commands).
    List,
    /// The process's watch cache of the cluster (the long-running daemon); namespaced types
    /// are watched in `namespaces` only when the environment is limited to them (so a
    /// namespace-scoped role is enough), else in every namespace.
    Watch { namespaces: Option<Vec<String>> },
}

/// The target an environment is configured with.
#[derive(Debug)]
pub enum AnyTarget {
    Directory(DirectoryTarget),
    Kubernetes(Box<KubernetesTarget>),
}

impl AnyTarget {
    /// Opens the target `config` describes for `environment` (for Kubernetes: builds its
    /// client). `source` (`<repo url>#<branch>:<path>`) is recorded on what the environment
    /// owns; the ApplySet parent lives in `namespace` unless the target names another; `live`
    /// is where a Kubernetes target reads live state.
    pub async fn open(
        config: &TargetConfig,
        environment: &str,
        source: &str,
        namespace: &str,
        live: LiveSource,
    ) -> Result<Self, TargetError> {
        Ok(match config {
            TargetConfig::Directory { path } => {
                AnyTarget::Directory(DirectoryTarget::new(path, environment))
            }
            TargetConfig::Kubernetes(settings) => {
                let owner = applyset::Owner {
                    environment: environment.to_string(),
                    source: source.to_string(),
                };
                let parent_namespace = settings
                    .applyset_namespace
                    .clone()
                    .unwrap_or_else(|| namespace.to_string());
                AnyTarget::Kubernetes(Box::new(
                    KubernetesTarget::connect(owner, &parent_namespace, settings.clone(), live)
                        .await?,
                ))
            }
        })
    }
}

impl AnyTarget {
    /// Notified when another writer changes something the environment owns, where the target
    /// watches its live state (a Kubernetes target in the daemon).
    pub fn drift_wake(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        match self {
            AnyTarget::Directory(_) => None,
            AnyTarget::Kubernetes(target) => target.drift_wake(),
        }
    }

    /// The watch cache the target reads, where it reads one (for `/status`).
    pub fn cache_view(&self) -> Option<kubernetes::CacheView> {
        match self {
            AnyTarget::Directory(_) => None,
            AnyTarget::Kubernetes(target) => target.cache_view(),
        }
    }

    /// Puts every write behind the environment's Lease (`[ha]`, Kubernetes targets only: the
    /// config refuses `[ha]` with a directory target).
    pub fn fence_with(&mut self, lease: std::sync::Arc<kubernetes::lease::EnvironmentLease>) {
        if let AnyTarget::Kubernetes(target) = self {
            target.fence_with(lease);
        }
    }
}

impl Target for AnyTarget {
    fn runs_hook_objects(&self) -> bool {
        match self {
            AnyTarget::Directory(target) => target.runs_hook_objects(),
            AnyTarget::Kubernetes(target) => target.runs_hook_objects(),
        }
    }

    async fn create_hook(&self, key: &ResourceKey, body: &Value) -> Result<(), TargetError> {
        match self {
            AnyTarget::Directory(target) => target.create_hook(key, body).await,
            AnyTarget::Kubernetes(target) => target.create_hook(key, body).await,
        }
    }

    async fn delete_hook_runs(
        &self,
        key: &ResourceKey,
        hook: &str,
        only_this: bool,
    ) -> Result<(), TargetError> {
        match self {
            AnyTarget::Directory(target) => target.delete_hook_runs(key, hook, only_this).await,
            AnyTarget::Kubernetes(target) => target.delete_hook_runs(key, hook, only_this).await,
        }
    }

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

    async fn readiness(
        &self,
        keys: &[ResourceKey],
        max_restarts: u32,
    ) -> Result<Readiness, TargetError> {
        match self {
            AnyTarget::Directory(target) => target.readiness(keys, max_restarts).await,
            AnyTarget::Kubernetes(target) => target.readiness(keys, max_restarts).await,
        }
    }

    async fn dry_run(&self, key: &ResourceKey, body: &Value) -> Result<Option<Value>, TargetError> {
        match self {
            AnyTarget::Directory(target) => target.dry_run(key, body).await,
            AnyTarget::Kubernetes(target) => target.dry_run(key, body).await,
        }
    }

    fn compare(&self) -> Compare {
        match self {
            AnyTarget::Directory(target) => target.compare(),
            AnyTarget::Kubernetes(target) => target.compare(),
        }
    }

    fn keeps_parsed_files(&self) -> bool {
        match self {
            AnyTarget::Directory(target) => target.keeps_parsed_files(),
            AnyTarget::Kubernetes(target) => target.keeps_parsed_files(),
        }
    }

    async fn carry_decisions(&self) -> Result<(), TargetError> {
        match self {
            AnyTarget::Directory(target) => target.carry_decisions().await,
            AnyTarget::Kubernetes(target) => target.carry_decisions().await,
        }
    }

    fn may_decide(&self) -> Result<(), TargetError> {
        match self {
            AnyTarget::Directory(target) => target.may_decide(),
            AnyTarget::Kubernetes(target) => target.fence_check(),
        }
    }

    fn writes_in_flight(&self) -> usize {
        match self {
            AnyTarget::Directory(target) => target.writes_in_flight(),
            AnyTarget::Kubernetes(target) => target.writes_in_flight(),
        }
    }

    async fn fingerprint(&self) -> Result<Option<String>, TargetError> {
        match self {
            AnyTarget::Directory(target) => target.fingerprint().await,
            AnyTarget::Kubernetes(target) => target.fingerprint().await,
        }
    }

    async fn scopes(&self, kinds: &BTreeSet<KindRef>) -> Result<Scopes, TargetError> {
        match self {
            AnyTarget::Directory(target) => target.scopes(kinds).await,
            AnyTarget::Kubernetes(target) => target.scopes(kinds).await,
        }
    }

    async fn check_drift(
        &self,
        key: &ResourceKey,
        body: &Value,
        live: &Object,
    ) -> Result<DriftCheck, TargetError> {
        match self {
            AnyTarget::Directory(target) => target.check_drift(key, body, live).await,
            AnyTarget::Kubernetes(target) => target.check_drift(key, body, live).await,
        }
    }

    async fn foreign_owners(&self, keys: &[ResourceKey]) -> Result<Vec<ForeignOwner>, TargetError> {
        match self {
            AnyTarget::Directory(target) => target.foreign_owners(keys).await,
            AnyTarget::Kubernetes(target) => target.foreign_owners(keys).await,
        }
    }

    fn announce(&self, keys: &[ResourceKey]) {
        match self {
            AnyTarget::Directory(target) => target.announce(keys),
            AnyTarget::Kubernetes(target) => target.announce(keys),
        }
    }

    async fn settle(&self, keys: &[ResourceKey]) -> Result<(), TargetError> {
        match self {
            AnyTarget::Directory(target) => target.settle(keys).await,
            AnyTarget::Kubernetes(target) => target.settle(keys).await,
        }
    }
}
