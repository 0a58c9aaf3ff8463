//! Where desired state comes from: snapshots of an environment's files at a git revision.

pub mod commits;
mod encrypted;
pub mod error;
pub mod git;
mod offload;
pub mod revert_commit;
mod settings;
mod snapshot;
mod tree;
pub mod verify;
pub mod watch;

pub use commits::CommitSummary;
pub use error::{RemoteFailure, SourceError};
pub use git::{Fetched, GitSource, Snapshot};
pub use offload::OffloadError;
pub use revert_commit::RevertScope;
pub use settings::RepoConfig;
