//! Puts an environment back to a healthy revision at once, and writes the revert commit
//! that tells git.

use std::collections::BTreeMap;

use super::EnvironmentRun;
use super::error::ReconcileError;
use super::hooks::HookSet;
use super::unwind;
use super::writes::{Write, confirm_drift, plan_writes};
use crate::backend::Target;
use crate::canary::CANARY_SUFFIX;
use crate::desired::load_with_hooks;
use crate::history::RevertInFlight;
use crate::hooks::{self, When};
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
            self.fx
                .journal(Event::RevertStarted {
                    revision: revert.revision.clone(),
                    to: revert.to.clone(),
                    reason: revert.reason.clone(),
                    failed: revert.failed,
                })
                .await?;
        }
        tracing::warn!(env = %self.fx.config.name, revision = %revert.revision.short(), to = %revert.to.short(), reason = %revert.reason, "reverting");
        let revert_error = |message: String| ReconcileError::Revert {
            revision: revert.revision.clone(),
            to: revert.to.clone(),
            message,
        };
        let (desired, healthy_hooks) =
            match load_with_hooks(self.source, self.fx.config, &revert.to, self.fx.target).await {
                Ok(loaded) => loaded,
                Err(error) => return Err(revert_error(error.to_string())),
            };
        let live = self.live_unwound(revert, &desired).await?;
        // Traffic is back on the old pods before any hook of the healthy revision runs.
        if revert.failed {
            self.rerun_on_revert(revert, &healthy_hooks).await?;
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
        if revert.failed {
            self.on_failure(revert).await?;
        }
        self.fx
            .journal(Event::Reverted {
                revision: revert.revision.clone(),
                to: revert.to.clone(),
            })
            .await?;
        tracing::warn!(env = %self.fx.config.name, revision = %revert.revision.short(), to = %revert.to.short(), "reverted");
        if revert.failed && self.fx.config.rollout.revert_commit {
            self.push_revert_commit(revert).await?;
        }
        Ok(())
    }

    /// Live state to revert from, once a blue/green rollout whose old pods are all still up
    /// has its Services pinned back to them and its preview drained, or one whose scale-down
    /// had begun has the old template back and ready behind the preview before its Services
    /// are switched back (see [`super::unwind`]).
    async fn live_unwound(
        &mut self,
        revert: &RevertInFlight,
        desired: &[Desired],
    ) -> Result<Vec<crate::model::Object>, ReconcileError> {
        let live = self.live(desired, &revert.to).await?;
        let flight = self
            .fx
            .journal
            .with_history(|history| history.in_flight.clone());
        let Some(flight) = flight.filter(|flight| flight.phase.is_some()) else {
            return Ok(live);
        };
        if flight.blue_green_old_pods_up() {
            unwind::unwind_previews(
                &mut self.fx,
                &revert.revision,
                desired,
                &live,
                &flight.previews,
            )
            .await?;
        } else if !unwind::restore_then_switch_back(
            &mut self.fx,
            &revert.revision,
            &revert.to,
            desired,
            &live,
            &flight.previews,
        )
        .await?
        {
            return Ok(live);
        }
        self.live(desired, &revert.to).await
    }

    /// Migrations go forward only: of the healthy revision's pre-rollout hooks, only those
    /// marked to run on a revert run, before its writes. Their failure is logged; the revert
    /// goes on.
    async fn rerun_on_revert(
        &mut self,
        revert: &RevertInFlight,
        healthy_hooks: &[hooks::ObjectHook],
    ) -> Result<(), ReconcileError> {
        let set = HookSet::new(&[], Vec::new(), self.source.state_dir());
        let again = hooks::on_revert(&self.fx.config.hooks, healthy_hooks);
        let run = set.run(&revert.to, Some(&revert.revision));
        if let Some(failure) = self.fx.run_hooks(&again, &run).await? {
            tracing::error!(env = %self.fx.config.name, hook = %failure.hook, message = %failure.message, "a pre-rollout hook marked to run on a revert failed; reverting anyway");
        }
        Ok(())
    }

    /// Runs the failed revision's on-failure hooks (the environment's commands and its hook
    /// objects), once the revert's writes are done and before it is journaled finished, so a
    /// restart in the middle of one runs what is left. Their failure is journaled; the revert
    /// stands.
    async fn on_failure(&mut self, revert: &RevertInFlight) -> Result<(), ReconcileError> {
        let objects = match load_with_hooks(
            self.source,
            self.fx.config,
            &revert.revision,
            self.fx.target,
        )
        .await
        {
            Ok((_, objects)) => objects,
            Err(error) => {
                tracing::warn!(env = %self.fx.config.name, revision = %revert.revision.short(), %error, "cannot read the failed revision's hook objects; running the configured on-failure commands only");
                Vec::new()
            }
        };
        let set = HookSet::new(&self.fx.config.hooks, objects, self.source.state_dir());
        let run = set.run(&revert.revision, Some(&revert.to));
        if let Some(failure) = self
            .fx
            .run_hooks(&set.ordered(When::OnFailure), &run)
            .await?
        {
            tracing::error!(env = %self.fx.config.name, hook = %failure.hook, message = %failure.message, "on-failure hook failed; the revert stands");
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
                self.fx
                    .journal(Event::RevertCommitted {
                        revision: revert.revision.clone(),
                        commit,
                    })
                    .await?;
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
