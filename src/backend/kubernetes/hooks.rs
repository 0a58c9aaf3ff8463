//! Hook objects on the cluster: created beside the environment's applyset (marked as its
//! hook by label, never a member, so no prune sees them) and deleted only by those marks.

use std::time::Duration;

use kube::api::{DeleteParams, DynamicObject, ListParams, PostParams, Preconditions};
use serde_json::Value;

use super::KubernetesTarget;
use super::answers::{answer_error, classed_error, object_error};
use crate::backend::{FailureClass, TargetError};
use crate::labels::{LABEL_ENVIRONMENT, LABEL_HOOK, LABEL_MANAGED_BY, MANAGER};
use crate::model::{KindRef, ResourceKey};

/// How long deleted hook runs may take to be gone before a new run is created.
const GONE_WITHIN: Duration = Duration::from_secs(60);
/// How often deleted hook runs are looked for while they go.
const GONE_POLL: Duration = Duration::from_millis(250);

impl KubernetesTarget {
    /// Creates a hook run; one already there under its name is left alone (a restart finds
    /// the run it started).
    pub(super) async fn create_hook_run(
        &self,
        key: &ResourceKey,
        body: &Value,
    ) -> Result<(), TargetError> {
        let kind = KindRef::of(body).ok_or_else(|| {
            classed_error(
                "run hook",
                key,
                "the body has no apiVersion or kind".into(),
                FailureClass::Revision,
            )
        })?;
        let resolved = self
            .resolve(&kind, true)
            .await
            .map_err(|error| object_error("run hook", key, error.to_string()))?;
        let object: DynamicObject = serde_json::from_value(body.clone())
            .map_err(|e| classed_error("run hook", key, e.to_string(), FailureClass::Revision))?;
        let api = self.api(&resolved, key.namespace.as_deref());
        let params = PostParams {
            field_manager: Some(self.field_manager.clone()),
            ..PostParams::default()
        };
        match self.call(|| api.create(&params, &object)).await {
            Ok(_) => Ok(()),
            Err(failure) if failure.is(409) => {
                tracing::info!(object = %key, "hook run already there; waiting for it");
                Ok(())
            }
            Err(failure) => Err(answer_error("run hook", key, failure)),
        }
    }

    /// The environment's hook runs of `hook` of `key`'s type and namespace (only `key`'s
    /// name when `only_this`), by the marks gitopsd put on them.
    async fn hook_runs(
        &self,
        key: &ResourceKey,
        hook: &str,
        only_this: bool,
    ) -> Result<(kube::Api<DynamicObject>, Vec<DynamicObject>), TargetError> {
        let resolved = self
            .resolve_key(key)
            .await
            .map_err(|e| object_error("delete hook runs of", key, e.to_string()))?;
        let api = self.api(&resolved, key.namespace.as_deref());
        let selector = format!(
            "{LABEL_MANAGED_BY}={MANAGER},{LABEL_ENVIRONMENT}={},{LABEL_HOOK}={hook}",
            self.environment
        );
        let params = ListParams::default().labels(&selector);
        let listed = self
            .call(|| api.list(&params))
            .await
            .map_err(|failure| answer_error("list hook runs of", key, failure))?;
        let runs = listed
            .items
            .into_iter()
            .filter(|run| !only_this || run.metadata.name.as_deref() == Some(key.name.as_str()))
            .collect();
        Ok((api, runs))
    }

    /// Deletes the environment's runs of `hook` (pods with them) and waits until they are
    /// gone, so a run of the same name can be created.
    pub(super) async fn delete_hook_objects(
        &self,
        key: &ResourceKey,
        hook: &str,
        only_this: bool,
    ) -> Result<(), TargetError> {
        let (api, runs) = self.hook_runs(key, hook, only_this).await?;
        for run in &runs {
            let Some(name) = run.metadata.name.clone() else {
                continue;
            };
            let mut params = DeleteParams::background();
            params.preconditions = Some(Preconditions {
                uid: run.metadata.uid.clone(),
                resource_version: None,
            });
            match self.call(|| api.delete(&name, &params)).await {
                Ok(_) => tracing::info!(hook, run = %name, "hook run deleted"),
                Err(failure) if failure.is(404) => {}
                Err(failure) => return Err(answer_error("delete hook run", key, failure)),
            }
        }
        if runs.is_empty() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + GONE_WITHIN;
        loop {
            let (_, left) = self.hook_runs(key, hook, only_this).await?;
            if left.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(object_error(
                    "delete hook runs of",
                    key,
                    format!(
                        "{} still there {} after deleting them",
                        left.len(),
                        humantime::format_duration(GONE_WITHIN)
                    ),
                ));
            }
            tokio::time::sleep(GONE_POLL).await;
        }
    }
}
