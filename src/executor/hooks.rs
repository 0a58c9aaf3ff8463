//! Runs hooks around a rollout: commands on the host (under the render sandbox rules) and
//! objects of the revision (Jobs) on the target. Each run is journaled (started, then
//! succeeded or failed with its duration and message) before and after it; what already
//! succeeded for the revision is skipped, and after a restart a hook object is found by its
//! name and waited for rather than created a second time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::effects::Effects;
use super::error::ReconcileError;
use crate::backend::Target;
use crate::heartbeat::BEAT_INTERVAL;
use crate::hooks::{self, CommandHook, Hook, HookAction, HookEnv, ObjectHook, When};
use crate::journal::Event;
use crate::model::Revision;
use crate::probe::CheckRunner;

/// How often a hook object is looked at while it runs.
const HOOK_POLL: Duration = Duration::from_secs(1);
/// Folder under the state directory holding the folders hook commands run in.
const WORK_FOLDER: &str = "hook-tmp";

/// The hooks of one revision: the environment's commands and the revision's hook objects.
#[derive(Debug, Clone, Default)]
pub struct HookSet {
    pub commands: Vec<CommandHook>,
    pub objects: Vec<ObjectHook>,
    /// Where hook commands get their private folders (`<state dir>/hook-tmp`).
    pub work_root: PathBuf,
}

impl HookSet {
    /// The environment's commands and a revision's hook objects.
    pub fn new(
        commands: &[CommandHook],
        objects: Vec<ObjectHook>,
        state_dir: &std::path::Path,
    ) -> Self {
        Self {
            commands: commands.to_vec(),
            objects,
            work_root: state_dir.join(WORK_FOLDER),
        }
    }

    /// What a hook run of `revision` needs.
    pub fn run<'h>(
        &'h self,
        revision: &'h Revision,
        previous: Option<&'h Revision>,
    ) -> HookRun<'h> {
        HookRun {
            revision,
            previous,
            work_root: &self.work_root,
        }
    }

    /// The hooks of kind `when`, in the order they run.
    pub fn ordered(&self, when: When) -> Vec<Hook> {
        hooks::ordered(&self.commands, &self.objects, when)
    }
}

/// A hook that failed: its name and why.
#[derive(Debug, Clone, PartialEq)]
pub struct HookFailure {
    pub hook: String,
    pub message: String,
}

/// What one hook run is for: its revision, the revision before it, and where commands run.
pub struct HookRun<'h> {
    pub revision: &'h Revision,
    pub previous: Option<&'h Revision>,
    pub work_root: &'h std::path::Path,
}

impl<T: Target, P: CheckRunner> Effects<'_, T, P> {
    /// Runs `hooks` (of one kind, in order) for `run.revision`, skipping those that already
    /// succeeded for it; stops at the first that fails.
    pub async fn run_hooks(
        &mut self,
        hooks: &[Hook],
        run: &HookRun<'_>,
    ) -> Result<Option<HookFailure>, ReconcileError> {
        for hook in hooks {
            let name = hook.name();
            let key = hooks::progress_key(run.revision, hook.when(), &name);
            let state = self
                .journal
                .with_history(|history| history.hooks.get(&key).copied());
            let action = hooks::action(hook, state);
            if action == HookAction::Skip {
                tracing::debug!(env = %self.config.name, hook = %name, "hook already succeeded for this revision");
                continue;
            }
            if let Err(message) = self.run_hook(hook, action, run).await? {
                return Ok(Some(HookFailure {
                    hook: name,
                    message,
                }));
            }
        }
        Ok(None)
    }

    /// Runs one hook, journaled before and after.
    async fn run_hook(
        &mut self,
        hook: &Hook,
        action: HookAction,
        run: &HookRun<'_>,
    ) -> Result<Result<(), String>, ReconcileError> {
        let when = hook.when();
        let name = hook.name();
        let run_name = match hook {
            Hook::Object(object) => Some(hooks::run_name(&object.key.name, run.revision)),
            Hook::Command(_) => None,
        };
        if action != HookAction::Adopt {
            self.journal(Event::HookStarted {
                revision: run.revision.clone(),
                when: when.as_str().into(),
                hook: name.clone(),
                run: run_name,
            })
            .await?;
        }
        tracing::info!(env = %self.config.name, revision = %run.revision.short(), %when, hook = %name, adopted = action == HookAction::Adopt, "hook running");
        let started = Instant::now();
        let outcome = match hook {
            Hook::Command(command) => self.run_command_hook(command, when, run).await?,
            Hook::Object(object) => self.run_object_hook(object, action, run.revision).await?,
        };
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &outcome {
            Ok(()) => {
                tracing::info!(env = %self.config.name, %when, hook = %name, duration_ms, "hook succeeded");
                self.journal(Event::HookSucceeded {
                    revision: run.revision.clone(),
                    when: when.as_str().into(),
                    hook: name,
                    duration_ms,
                })
                .await?;
            }
            Err(message) => {
                tracing::error!(env = %self.config.name, %when, hook = %name, %message, "hook failed");
                self.journal(Event::HookFailed {
                    revision: run.revision.clone(),
                    when: when.as_str().into(),
                    hook: name,
                    duration_ms,
                    message: message.clone(),
                })
                .await?;
            }
        }
        Ok(outcome)
    }

    /// Runs a command in a private folder of its own, sandboxed like a render tool, with the
    /// `GITOPSD_*` variables and its `env`; shutdown stops waiting for it.
    async fn run_command_hook(
        &mut self,
        command: &CommandHook,
        when: When,
        run: &HookRun<'_>,
    ) -> Result<Result<(), String>, ReconcileError> {
        let mut env: Vec<(String, std::ffi::OsString)> =
            hooks::variables(when, &self.config.name, run.revision, run.previous)
                .into_iter()
                .map(|(name, value)| (name, value.into()))
                .collect();
        for variable in &command.env {
            match variable {
                HookEnv::Pass(name) => {
                    if let Some(value) = std::env::var_os(name) {
                        env.push((name.clone(), value));
                    }
                }
                HookEnv::Set(name, value) => env.push((name.clone(), value.into())),
            }
        }
        let root = run.work_root.to_path_buf();
        let folder = crate::blocking::off_thread("creating a hook folder", move || {
            crate::durable::create_dir_all(&root)?;
            tempfile::Builder::new()
                .prefix(&format!("{}-", std::process::id()))
                .tempdir_in(&root)
        })
        .await?;
        let folder = match folder {
            Ok(folder) => folder,
            Err(error) => return Ok(Err(format!("cannot make a folder to run in: {error}"))),
        };
        let mut shutdown = self.shutdown.clone();
        // The command works, not the pass: other environments' passes may use the slot.
        self.slot.give_back();
        let outcome = {
            let run =
                crate::render::run_command(&command.argv, folder.path(), env, command.timeout);
            tokio::pin!(run);
            // A hook may take minutes: the pass keeps beating while it waits, so the
            // watchdog does not take a long migration for a stuck loop.
            loop {
                self.heartbeat.beat();
                tokio::select! {
                    outcome = &mut run => break outcome,
                    _ = shutdown.changed() => return Err(ReconcileError::Interrupted),
                    _ = tokio::time::sleep(BEAT_INTERVAL) => {}
                }
            }
        };
        self.take_slot().await?;
        // Removing the folder is a recursive delete: not on an async worker.
        crate::blocking::off_thread("removing a hook folder", move || drop(folder)).await?;
        Ok(outcome)
    }

    /// Runs a hook object: deletes earlier runs as its policy says (or, after a restart,
    /// finds its run), creates it, and waits until it completes or fails (the Job fail-fast
    /// rules), within the rollout `timeout`; then deletes it if its policy says so.
    async fn run_object_hook(
        &mut self,
        hook: &ObjectHook,
        action: HookAction,
        revision: &Revision,
    ) -> Result<Result<(), String>, ReconcileError> {
        let (key, body) = hooks::run_object(hook, &self.config.name, revision);
        let label = hooks::hook_label(&hook.key.name);
        if action != HookAction::Adopt {
            let only_this = hook.delete_policy != hooks::DeletePolicy::BeforeCreation;
            if let Err(error) = self.target.delete_hook_runs(&key, &label, only_this).await {
                return Ok(Err(error.to_string()));
            }
        }
        if let Err(error) = self.target.create_hook(&key, &body).await {
            return Ok(Err(error.to_string()));
        }
        let timeout = self.config.rollout.timeout;
        let deadline = Utc::now() + chrono::Duration::from_std(timeout).unwrap_or_default();
        let outcome = loop {
            let readiness = self
                .target
                .readiness(std::slice::from_ref(&key), self.config.rollout.max_restarts)
                .await
                .map_err(ReconcileError::Live)?;
            if let Some(failed) = readiness.failed.first() {
                break Err(failed.detail.clone());
            }
            if readiness.is_ready() {
                break Ok(());
            }
            let now = Utc::now();
            if now >= deadline {
                break Err(format!(
                    "not complete within {} (rollout.timeout): {}",
                    humantime::format_duration(timeout),
                    readiness.waiting.join("; ")
                ));
            }
            let poll = chrono::Duration::from_std(HOOK_POLL).unwrap_or_default();
            self.sleep_until((now + poll).min(deadline)).await?;
        };
        if hook.delete_policy.deletes_after(outcome.is_ok())
            && let Err(error) = self.target.delete_hook_runs(&key, &label, true).await
        {
            tracing::warn!(env = %self.config.name, object = %key, %error, "hook run not deleted");
        }
        Ok(outcome)
    }
}
