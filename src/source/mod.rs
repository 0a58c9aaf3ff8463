//! Where desired state comes from: snapshots of an environment's files at a git revision.

pub mod git;
mod settings;
pub mod verify;
pub mod watch;

pub use git::{Fetched, GitSource, RevertScope, Snapshot, SourceError};
pub use settings::RepoConfig;
