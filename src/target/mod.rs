//! Where live state lives: the `Target` trait and its backends.

pub mod directory;

use std::future::Future;

use serde_json::Value;
use thiserror::Error;

use std::collections::BTreeSet;

use crate::model::{KindRef, Object, ResourceKey};

pub use directory::DirectoryTarget;

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
