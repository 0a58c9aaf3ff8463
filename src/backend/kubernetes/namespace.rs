//! `create_namespace = true`: the environment's namespace is made before anything is written
//! into it, labelled as made by gitopsd, and never a member of the applyset (so never pruned).

use std::sync::atomic::Ordering;

use kube::api::{Api, DynamicObject, PostParams};
use kube::core::ApiResource;

use super::KubernetesTarget;
use super::answers::answer_error;
use crate::backend::TargetError;
use crate::labels::{ANNOTATION_CREATED_FOR, LABEL_CREATED_BY, MANAGER};
use crate::model::ResourceKey;

/// The Namespace `name` as gitopsd creates it for `environment`.
pub(super) fn namespace_body(name: &str, environment: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": { LABEL_CREATED_BY: MANAGER },
            "annotations": { ANNOTATION_CREATED_FOR: environment },
        },
    })
}

impl KubernetesTarget {
    /// Makes the environment's namespace when it is configured to and missing. One that is
    /// there is left as it is, whoever made it.
    pub(super) async fn ensure_namespace(&self) -> Result<(), TargetError> {
        let Some(name) = &self.settings.create_namespace else {
            return Ok(());
        };
        if self.namespace_made.load(Ordering::Acquire) {
            return Ok(());
        }
        let key = ResourceKey {
            group: String::new(),
            kind: "Namespace".into(),
            namespace: None,
            name: name.clone(),
        };
        let api: Api<DynamicObject> = Api::all_with(
            self.client.clone(),
            &ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&()),
        );
        let live = self
            .call(|| api.get_opt(name))
            .await
            .map_err(|failure| answer_error("read", &key, failure))?;
        if live.is_none() {
            let object: DynamicObject =
                serde_json::from_value(namespace_body(name, &self.environment))
                    .map_err(|e| super::answers::object_error("create", &key, e.to_string()))?;
            let params = PostParams::default();
            match self.call(|| api.create(&params, &object)).await {
                Ok(_) => {
                    tracing::info!(environment = %self.environment, namespace = %name, "created the environment's namespace (create_namespace)")
                }
                // Made by someone else meanwhile: there it is.
                Err(failure) if failure.is(409) => {}
                Err(failure) => return Err(answer_error("create", &key, failure)),
            }
        }
        self.namespace_made.store(true, Ordering::Release);
        Ok(())
    }

    /// Forgets that the namespace was there, after a write found it gone (deleted by hand):
    /// the next write makes it again.
    pub(super) fn namespace_gone(&self, error: &TargetError) {
        let Some(name) = &self.settings.create_namespace else {
            return;
        };
        if let TargetError::Object {
            missing: Some(missing),
            ..
        } = error
            && missing.resource == "namespaces"
            && missing.name == *name
        {
            self.namespace_made.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_made_namespace_says_who_made_it_and_is_no_member() {
        let body = namespace_body("shop", "staging");
        assert_eq!(body["metadata"]["labels"][LABEL_CREATED_BY], MANAGER);
        assert_eq!(
            body["metadata"]["annotations"][ANNOTATION_CREATED_FOR],
            "staging"
        );
        assert!(
            body["metadata"]["labels"]
                .get(crate::labels::LABEL_PART_OF)
                .is_none(),
            "not an applyset member: no prune ever sees it"
        );
    }
}
