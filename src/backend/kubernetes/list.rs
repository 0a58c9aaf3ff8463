//! Paged LISTs: the environment's members of one type, and whether a namespace holds objects
//! that are not the environment's.

use std::collections::BTreeSet;

use kube::api::{DynamicObject, ListParams};
use serde_json::Value;

use super::KubernetesTarget;
use super::answers::Failure;
use super::parent::without_legacy_manager;
use super::resolve::Resolved;
use crate::backend::TargetError;
use crate::labels::{LABEL_ID, LABEL_PART_OF};
use crate::model::{KindRef, Object};

/// Objects per LIST page (kubectl's default chunk size): a page is turned into objects and
/// dropped before the next is asked for.
pub(super) const LIST_PAGE: u32 = 500;

impl KubernetesTarget {
    /// Turns one LIST page of `kind` into objects, noting the legacy field managers to drop.
    /// Every object of one type carrying this environment's applyset label, page by page.
    pub(super) async fn list_type(
        &self,
        kind: &KindRef,
        resolved: &Resolved,
    ) -> Result<Vec<Object>, TargetError> {
        // Items are read straight into JSON values: the typed DynamicObject would only be
        // turned back into JSON.
        let url = <DynamicObject as kube::Resource>::url_path(&resolved.resource, None);
        let selector = self.selector();
        let mut params = ListParams::default().labels(&selector).limit(LIST_PAGE);
        let mut objects = Vec::new();
        loop {
            let list: kube::core::ObjectList<Value> = self
                .call(|| {
                    let request = kube::core::Request::new(&url)
                        .list(&params)
                        .map_err(kube::Error::BuildRequest);
                    let client = self.client.clone();
                    async move { client.request(request?).await }
                })
                .await
                .map_err(|failure| TargetError::List {
                    location: format!("{kind}"),
                    message: failure.message,
                })?;
            let next = list
                .metadata
                .continue_
                .clone()
                .filter(|token| !token.is_empty());
            self.take_page(kind, list.items, &mut objects)?;
            match next {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(objects),
            }
        }
    }

    pub(super) fn take_page(
        &self,
        kind: &KindRef,
        items: Vec<Value>,
        objects: &mut Vec<Object>,
    ) -> Result<(), TargetError> {
        for mut body in items {
            // List items often leave out their type.
            if let Some(map) = body.as_object_mut() {
                map.insert("apiVersion".into(), Value::String(kind.api_version.clone()));
                map.insert("kind".into(), Value::String(kind.kind.clone()));
            }
            if let Some(object) = Object::from_body(body) {
                if let Some(patch) = without_legacy_manager(&object.body) {
                    self.legacy_managers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(object.key.clone(), (kind.clone(), patch));
                }
                objects.push(object);
            }
        }
        Ok(())
    }

    /// Whether `namespace` holds objects that are not this environment's (checked on the
    /// types the environment uses and the common built-in ones).
    pub(super) async fn namespace_has_foreign_objects(
        &self,
        namespace: &str,
    ) -> Result<bool, Failure> {
        let mut kinds: BTreeSet<KindRef> = self.kinds_used();
        for (api_version, kind) in [
            ("v1", "Pod"),
            ("v1", "Service"),
            ("apps/v1", "Deployment"),
            ("v1", "ConfigMap"),
        ] {
            kinds.insert(KindRef {
                api_version: api_version.into(),
                kind: kind.into(),
            });
        }
        for kind in kinds {
            let Ok(resolved) = self.resolve(&kind, false).await else {
                continue;
            };
            if !resolved.namespaced {
                continue;
            }
            let api = self.api(&resolved, Some(namespace));
            let everything = ListParams::default();
            let list = self.call(|| api.list_metadata(&everything)).await?;
            let foreign = list.items.iter().any(|item| {
                let labels = item.metadata.labels.clone().unwrap_or_default();
                // Members of this applyset, and its parent.
                let ours = labels.get(LABEL_PART_OF) == Some(&self.id)
                    || labels.get(LABEL_ID) == Some(&self.id);
                // Objects a controller made (pods of our Deployments) go with their owner;
                // the CA bundle and default account Kubernetes puts in every namespace are
                // nobody's work.
                let controlled = item
                    .metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|owners| !owners.is_empty());
                let automatic = matches!(
                    (kind.kind.as_str(), item.metadata.name.as_deref()),
                    ("ConfigMap", Some("kube-root-ca.crt")) | ("ServiceAccount", Some("default"))
                );
                !ours && !controlled && !automatic
            });
            if foreign {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
