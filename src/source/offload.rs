//! The git source's async face: each method runs its git work on the blocking pool
//! ([`crate::blocking::off_thread`]), so async code never blocks a runtime worker on git.

use super::error::SourceError;
use super::git::{GitSource, Unverified};
use crate::model::Revision;

/// Why an async git read gave no answer: git's own error, or its work never finished.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Stopped(#[from] crate::blocking::Stopped),
}

impl GitSource {
    /// [`GitSource::branch_tip`], off the async workers.
    pub async fn branch_tip_off_thread(&self) -> Result<Option<Revision>, OffloadError> {
        let source = self.clone();
        Ok(
            crate::blocking::off_thread("reading the branch tip", move || source.branch_tip())
                .await??,
        )
    }

    /// [`GitSource::resolve`], off the async workers.
    pub async fn resolve_off_thread(&self, rev: &str) -> Result<Revision, OffloadError> {
        let (source, rev) = (self.clone(), rev.to_string());
        Ok(
            crate::blocking::off_thread("resolving a revision", move || source.resolve(&rev))
                .await??,
        )
    }

    /// [`GitSource::verify`] (signatures as `[repo.verify]` asks), off the async workers.
    pub async fn verify_off_thread(
        &self,
        revision: &Revision,
        base: Option<&Revision>,
    ) -> Result<Result<(), Unverified>, crate::blocking::Stopped> {
        let (source, revision, base) = (self.clone(), revision.clone(), base.cloned());
        crate::blocking::off_thread("verifying signatures", move || {
            source.verify(&revision, base.as_ref()).map(|_| ())
        })
        .await
    }
}
