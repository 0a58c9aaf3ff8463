//! Puts an environment back to a healthy revision at once, and writes the revert commit
//! that tells git.

use std::collections::BTreeMap;

use super::EnvironmentRun;
use super::error::ReconcileError;
use super::writes::{Write, confirm_drift, plan_writes};
use crate::backend::Target;
use crate::canary::CANARY_SUFFIX;
use crate::desired::load_desired;
use crate::history::RevertInFlight;
use crate::journal::Event;
use crate::labels::ANNOTATION_REVISION;
use crate::model::{Object, ResourceKey, Revision};
use crate::plan::{self, Desired};
use crate::source::RevertScope;

impl<T: Target> EnvironmentRun<'_, T> {
    /// Returns the environment to `revert.to` at once: canary objects and objects the bad
    /// revision created are deleted, everything else restored from git with the marks it had.
    pub(super) async fn revert(
        &mut self,
        revert: &RevertInFlight,
        resumed: bool,
    ) -> Result<(), ReconcileError> {
        if !resumed {
            self.fx.journal(Event::RevertStarted {
                revision: revert.revision.clone(),
                to: revert.to.clone(),
                reason: revert.reason.clone(),
                failed: revert.failed,
            })?;
        }
        tracing::warn!(env = %self.fx.config.name, revision = %revert.revision.short(), to = %revert.to.short(), reason = %revert.reason, "reverting");
        let revert_error = |message: String| ReconcileError::Revert {
            revision: revert.revision.clone(),
            to: revert.to.clone(),
            message,
        };
        let desired =
            match load_desired(self.source, self.fx.config, &revert.to, self.fx.target).await {
                Ok(desired) => desired,
                Err(error) => return Err(revert_error(error.to_string())),
            };
        let mut live = self.live(&desired, &revert.to).await?;
        let unwind = self.fx.journal.with_history(|history| {
            history
                .in_flight
                .as_ref()
                .is_some_and(|flight| flight.blue_green_old_pods_up())
        });
        if unwind {
            super::blue_green::unwind_previews(&mut self.fx, &revert.revision, &desired, &live)
                .await?;
            live = self.live(&desired, &revert.to).await?;
        }
        let mut plan = plan::plan(&desired, &live, true, self.compare());
        confirm_drift(
            self.fx.target,
            &mut plan,
            &live,
            &self.fx.config.name,
            &revert.to,
        )
        .await
        .map_err(ReconcileError::Live)?;
        let writes = revert_writes(&plan, &live, revert, self.fx.config.prune);
        let marks: BTreeMap<&str, (&Revision, &str)> = revert
            .baseline
            .iter()
            .map(|b| (b.object.as_str(), (&b.revision, b.hash.as_str())))
            .collect();
        // Objects the rollout did not change get back the marks they had before it.
        let stamp = |desired: &Desired| match marks.get(desired.key.to_string().as_str()) {
            Some((revision, hash)) if *hash == desired.hash => (*revision).clone(),
            _ => revert.to.clone(),
        };
        if let Err((applied, error)) = self.fx.write_all(&writes, stamp).await {
            return Err(revert_error(format!(
                "{applied} of {} writes done, then: {error}",
                writes.len()
            )));
        }
        let kept: Vec<ResourceKey> = if self.fx.config.prune {
            Vec::new()
        } else {
            plan.orphaned.clone()
        };
        self.fx.settle(&desired, &kept).await?;
        self.fx.journal(Event::Reverted {
            revision: revert.revision.clone(),
            to: revert.to.clone(),
        })?;
        tracing::warn!(env = %self.fx.config.name, revision = %revert.revision.short(), to = %revert.to.short(), "reverted");
        if revert.failed && self.fx.config.rollout.revert_commit {
            self.push_revert_commit(revert).await?;
        }
        Ok(())
    }

    async fn push_revert_commit(&mut self, revert: &RevertInFlight) -> Result<(), ReconcileError> {
        let source = self.source.clone();
        let path = self.fx.config.path.clone();
        let excluded = self
            .fx
            .config
            .render
            .as_ref()
            .map(|r| r.revert_excluded.clone());
        let what = if excluded.is_some() {
            format!("the inputs of {path} (rendered)")
        } else {
            path.clone()
        };
        let message = format!(
            "Revert {} to {}\n\ngitopsd reverted environment {} because revision {} failed:\n{}\n",
            what,
            revert.to.short(),
            self.fx.config.name,
            revert.revision,
            revert.reason
        );
        let healthy = revert.to.clone();
        // Set on shutdown: the push (its process group) is killed rather than waited for.
        let interrupt = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let work = crate::blocking::off_thread("writing the revert commit", {
            let interrupt = interrupt.clone();
            move || {
                let scope = match &excluded {
                    // A render may read any file: every input is put back but the other
                    // environments' own folders.
                    Some(excluded) => RevertScope::AllExcept(excluded),
                    None => RevertScope::Folder(&path),
                };
                source.push_revert_commit(scope, &healthy, &message, &interrupt)
            }
        });
        tokio::pin!(work);
        let mut shutdown = self.fx.shutdown.clone();
        let stop = |interrupt: &std::sync::atomic::AtomicBool| {
            interrupt.store(true, std::sync::atomic::Ordering::Relaxed)
        };
        if *shutdown.borrow_and_update() {
            stop(&interrupt);
        }
        let pushed = loop {
            tokio::select! {
                pushed = &mut work => break pushed?,
                changed = shutdown.changed(), if !interrupt.load(std::sync::atomic::Ordering::Relaxed) => {
                    // A dropped sender reads as a shutdown too.
                    if changed.is_err() || *shutdown.borrow() {
                        stop(&interrupt);
                    }
                }
            }
        };
        match pushed {
            Ok(Some(commit)) => {
                tracing::info!(env = %self.fx.config.name, commit = %commit.short(), "revert commit pushed");
                self.fx.journal(Event::RevertCommitted {
                    revision: revert.revision.clone(),
                    commit,
                })?;
            }
            Ok(None) => {
                tracing::info!(env = %self.fx.config.name, "the branch already holds the healthy manifests; no revert commit needed");
            }
            // The revert itself stands; the commit is a courtesy to git's history.
            Err(error) => {
                tracing::error!(env = %self.fx.config.name, %error, "revert commit not pushed")
            }
        }
        Ok(())
    }
}

/// The writes that take the environment back: every apply of the plan, and the deletions it
/// may make. Without prune, only what the failed rollout made goes (its canaries and the
/// objects it created).
fn revert_writes(
    plan: &plan::Plan,
    live: &[Object],
    revert: &RevertInFlight,
    prune: bool,
) -> Vec<Write> {
    let live_by_key: BTreeMap<&ResourceKey, &Object> =
        live.iter().map(|object| (&object.key, object)).collect();
    plan_writes(plan)
        .into_iter()
        .filter(|write| match write {
            Write::Apply(_) => true,
            Write::Delete(key) => {
                prune
                    || key.name.ends_with(CANARY_SUFFIX)
                    || live_by_key
                        .get(key)
                        .and_then(|o| o.annotation(ANNOTATION_REVISION))
                        == Some(revert.revision.0.as_str())
            }
        })
        .collect()
}
