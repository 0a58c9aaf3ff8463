//! SOPS documents that `diff` and `validate` read without their age key (a CI job previewing a
//! pull request has none): reported as "encrypted, not checked", and whether they changed is
//! told by their ciphertext, never by a value.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::backend::AnyTarget;
use crate::config::EnvironmentConfig;
use crate::desired::{Loaded, Unchecked, load_keyless};
use crate::labels::{ANNOTATION_ENCRYPTED, ANNOTATION_REVISION};
use crate::manifest::{EncryptedDocument, Limits, parse_yaml};
use crate::model::{KindRef, Object, ResourceKey, Revision, group_of};
use crate::source::GitSource;

/// What `diff` says of one SOPS document it could not decrypt.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EncryptedReport {
    /// The object, when its kind and name are in the clear (as with `encrypted_regex:
    /// ^(data|stringData)$`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Its file and document.
    pub document: String,
    pub ciphertext: Ciphertext,
}

/// How a document's ciphertext compares with the side `diff` compares against.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Ciphertext {
    /// Nothing to compare with: the object is not there yet.
    New,
    Changed,
    Unchanged,
    /// Gone from git.
    Removed,
    /// Its kind and name are encrypted too: no live object to compare with is known.
    NotCompared,
}

impl Ciphertext {
    /// Whether this is a change `diff` counts.
    pub fn is_change(self) -> bool {
        matches!(self, Self::New | Self::Changed | Self::Removed)
    }

    fn text(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Changed => "ciphertext changed",
            Self::Unchanged => "ciphertext unchanged",
            Self::Removed => "removed",
            Self::NotCompared => "not compared (its kind and name are encrypted)",
        }
    }
}

impl EncryptedReport {
    /// `? encrypted, not checked: Secret shop/db (secret.yaml: document 1): ciphertext changed`.
    pub fn line(&self) -> String {
        let what = match &self.object {
            Some(object) => format!("{object} ({})", self.document),
            None => self.document.clone(),
        };
        format!(
            "? encrypted, not checked: {what}: {}",
            self.ciphertext.text()
        )
    }
}

/// The one line `diff` and `validate` print when they read SOPS documents without the key.
pub fn note(reason: &str) -> String {
    format!(
        "note: {reason}: SOPS-encrypted documents are reported as encrypted, not checked (changes are told by their ciphertext); gitopsd applies nothing without the key"
    )
}

/// The object a SOPS document holds, when its apiVersion, kind and name are in the clear
/// (its namespace, else `namespace`).
pub fn identity(document: &EncryptedDocument, namespace: Option<&str>) -> Option<ResourceKey> {
    // Read before, within the revision's limits; the defaults bound this second read.
    let body: Value = parse_yaml(&document.text, &Limits::default()).ok()?;
    let clear = |value: &Value| {
        value
            .as_str()
            .filter(|text| !text.starts_with("ENC["))
            .map(str::to_string)
    };
    let metadata = &body["metadata"];
    let namespace = match metadata.get("namespace") {
        Some(value) => Some(clear(value)?),
        None => namespace.map(str::to_string),
    };
    Some(ResourceKey {
        group: group_of(&clear(&body["apiVersion"])?).to_string(),
        kind: clear(&body["kind"])?,
        namespace,
        name: clear(&metadata["name"])?,
    })
}

fn place(document: &EncryptedDocument) -> String {
    format!(
        "{}: document {}",
        document.at.file,
        document.at.document.unwrap_or(1)
    )
}

fn report(
    document: &EncryptedDocument,
    key: Option<&ResourceKey>,
    ciphertext: Ciphertext,
) -> EncryptedReport {
    EncryptedReport {
        object: key.map(ToString::to_string),
        document: place(document),
        ciphertext,
    }
}

/// The document of `among` that `document` (holding `key`) is compared with: the one with
/// the same object when both name theirs in the clear, else the one at the same place.
fn counterpart<'o>(
    document: &EncryptedDocument,
    key: Option<&ResourceKey>,
    among: &'o [EncryptedDocument],
    namespace: Option<&str>,
) -> Option<&'o EncryptedDocument> {
    let by_key = key.and_then(|key| {
        among
            .iter()
            .find(|other| identity(other, namespace).as_ref() == Some(key))
    });
    by_key.or_else(|| {
        among.iter().find(|other| {
            place(other) == place(document)
                && (key.is_none() || identity(other, namespace).is_none())
        })
    })
}

fn compared(document: &EncryptedDocument, other: Option<&EncryptedDocument>) -> Ciphertext {
    match other {
        Some(other) if other.text == document.text => Ciphertext::Unchanged,
        Some(_) => Ciphertext::Changed,
        None => Ciphertext::New,
    }
}

/// Two revisions' unchecked documents compared (`diff --against`): each of `new` with its
/// counterpart in `old`, and those of `old` with none in `new` as removed.
pub fn between(
    old: &[EncryptedDocument],
    new: &[EncryptedDocument],
    namespace: Option<&str>,
) -> Vec<EncryptedReport> {
    let mut matched = BTreeSet::new();
    let mut reports: Vec<EncryptedReport> = new
        .iter()
        .map(|document| {
            let key = identity(document, namespace);
            let other = counterpart(document, key.as_ref(), old, namespace);
            if let Some(other) = other {
                matched.insert(place(other));
            }
            report(document, key.as_ref(), compared(document, other))
        })
        .collect();
    reports.extend(
        old.iter()
            .filter(|document| !matched.contains(&place(document)))
            .map(|document| {
                let key = identity(document, namespace);
                report(document, key.as_ref(), Ciphertext::Removed)
            }),
    );
    reports
}

/// The live objects `diff` leaves out of its plan when it reads `documents` without the key:
/// those they name in the clear, and, when one names nothing in the clear, every live object
/// whose values were encrypted in git (so that none shows as deleted or changed).
pub fn hidden(
    documents: &[EncryptedDocument],
    live: &[Object],
    namespace: Option<&str>,
) -> BTreeSet<ResourceKey> {
    let keys: Vec<Option<ResourceKey>> = documents
        .iter()
        .map(|document| identity(document, namespace))
        .collect();
    let opaque = keys.iter().any(Option::is_none);
    let mut hidden: BTreeSet<ResourceKey> = keys.into_iter().flatten().collect();
    if opaque {
        hidden.extend(
            live.iter()
                .filter(|object| annotation(object, ANNOTATION_ENCRYPTED).is_some())
                .map(|object| object.key.clone()),
        );
    }
    hidden
}

fn annotation<'o>(object: &'o Object, name: &str) -> Option<&'o str> {
    object.body["metadata"]["annotations"][name].as_str()
}

/// The revisions the live objects of `documents` were applied from (their
/// `gitopsd.io/revision`), whose documents [`against_live`] compares with.
pub fn live_revisions(
    documents: &[EncryptedDocument],
    live: &[Object],
    namespace: Option<&str>,
) -> BTreeSet<String> {
    documents
        .iter()
        .filter_map(|document| identity(document, namespace))
        .filter_map(|key| live.iter().find(|object| object.key == key))
        .filter_map(|object| annotation(object, ANNOTATION_REVISION).map(str::to_string))
        .collect()
}

/// Unchecked documents against live state: each one naming its object in the clear is new
/// when the object is not live, else compared with the same document at the revision the
/// live object was applied from (`applied`: the unchecked documents of each such revision;
/// one missing there is changed). The others are not compared.
pub fn against_live(
    documents: &[EncryptedDocument],
    live: &[Object],
    applied: &BTreeMap<String, Vec<EncryptedDocument>>,
    namespace: Option<&str>,
) -> Vec<EncryptedReport> {
    documents
        .iter()
        .map(|document| {
            let Some(key) = identity(document, namespace) else {
                return report(document, None, Ciphertext::NotCompared);
            };
            let Some(object) = live.iter().find(|object| object.key == key) else {
                return report(document, Some(&key), Ciphertext::New);
            };
            let before = annotation(object, ANNOTATION_REVISION)
                .and_then(|revision| applied.get(revision))
                .and_then(|before| counterpart(document, Some(&key), before, namespace));
            let ciphertext = match before {
                Some(before) => compared(document, Some(before)),
                None => Ciphertext::Changed,
            };
            report(document, Some(&key), ciphertext)
        })
        .collect()
}

/// The types of the objects `documents` name in the clear, for `diff` to list live.
pub fn kinds(documents: &[EncryptedDocument]) -> Vec<KindRef> {
    documents
        .iter()
        .filter_map(|document| {
            let body: Value = parse_yaml(&document.text, &Limits::default()).ok()?;
            let kind = KindRef::of(&body)?;
            (!kind.api_version.starts_with("ENC[") && !kind.kind.starts_with("ENC["))
                .then_some(kind)
        })
        .collect()
}

/// Two revisions' reads compared, when either left SOPS documents unchecked: why, and what
/// each document's ciphertext did.
pub fn between_loaded(
    before: &Loaded,
    after: &Loaded,
    namespace: Option<&str>,
) -> Option<(String, Vec<EncryptedReport>)> {
    let reason = after
        .unchecked
        .as_ref()
        .or(before.unchecked.as_ref())?
        .reason
        .clone();
    let documents = |loaded: &Loaded| {
        loaded
            .unchecked
            .as_ref()
            .map(|unchecked| unchecked.documents.clone())
            .unwrap_or_default()
    };
    Some((
        reason,
        between(&documents(before), &documents(after), namespace),
    ))
}

/// [`against_live`], with the unchecked documents of each revision the live objects were
/// applied from read from git (a revision that cannot be read leaves its objects changed).
pub async fn live_reports(
    source: &GitSource,
    environment: &EnvironmentConfig,
    unchecked: &Unchecked,
    live: &[Object],
) -> Vec<EncryptedReport> {
    let namespace = Some(environment.namespace.as_str());
    let mut applied = BTreeMap::new();
    for revision in live_revisions(&unchecked.documents, live, namespace) {
        let read = load_keyless(
            source,
            environment,
            &Revision(revision.clone()),
            None::<&AnyTarget>,
            true,
        )
        .await;
        match read {
            Ok(Loaded {
                unchecked: Some(then),
                ..
            }) => {
                applied.insert(revision, then.documents);
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, revision = %revision, "the revision live objects were applied from cannot be read; their encrypted documents count as changed");
            }
        }
    }
    against_live(&unchecked.documents, live, &applied, namespace)
}

/// For `diff` against live state: the reason `unchecked` went unchecked and its reports
/// ([`live_reports`]), once the live objects it may stand for are taken out of `live`
/// ([`hidden`]).
pub async fn against(
    source: &GitSource,
    environment: &EnvironmentConfig,
    unchecked: &Unchecked,
    live: &mut Vec<Object>,
) -> (String, Vec<EncryptedReport>) {
    let reports = live_reports(source, environment, unchecked, live).await;
    let namespace = Some(environment.namespace.as_str());
    let hidden = hidden(&unchecked.documents, live, namespace);
    live.retain(|object| !hidden.contains(&object.key));
    (unchecked.reason.clone(), reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Problem;

    fn document(file: &str, number: usize, text: &str) -> EncryptedDocument {
        EncryptedDocument {
            at: Problem {
                file: file.into(),
                document: Some(number),
                line: Some(1),
                object: None,
                message: String::new(),
            },
            text: text.into(),
        }
    }

    const CLEAR: &str = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ndata:\n  password: ENC[AES256_GCM,data:AAAA,iv:x,tag:y,type:str]\nsops:\n  mac: m\n";
    const OPAQUE: &str = "apiVersion: ENC[AES256_GCM,data:a,iv:x,tag:y,type:str]\nkind: ENC[AES256_GCM,data:b,iv:x,tag:y,type:str]\nsops:\n  mac: m\n";

    #[test]
    fn an_identity_is_read_only_from_values_in_the_clear() {
        let key = identity(&document("s.yaml", 1, CLEAR), Some("shop")).expect("in the clear");
        assert_eq!(key.to_string(), "Secret shop/db");
        assert_eq!(identity(&document("s.yaml", 1, OPAQUE), Some("shop")), None);
    }

    #[test]
    fn revisions_compare_by_object_else_by_place_and_only_by_ciphertext() {
        let changed = CLEAR.replace("AAAA", "BBBB");
        let old = [
            document("s.yaml", 1, CLEAR),
            document("o.yaml", 1, OPAQUE),
            document("gone.yaml", 1, &CLEAR.replace("name: db", "name: gone")),
        ];
        let new = [
            document("moved.yaml", 1, &changed),
            document("o.yaml", 1, OPAQUE),
            document("n.yaml", 1, &CLEAR.replace("name: db", "name: fresh")),
        ];
        let lines: Vec<String> = between(&old, &new, Some("shop"))
            .iter()
            .map(EncryptedReport::line)
            .collect();
        assert_eq!(
            lines,
            [
                "? encrypted, not checked: Secret shop/db (moved.yaml: document 1): ciphertext changed",
                "? encrypted, not checked: o.yaml: document 1: ciphertext unchanged",
                "? encrypted, not checked: Secret shop/fresh (n.yaml: document 1): new",
                "? encrypted, not checked: Secret shop/gone (gone.yaml: document 1): removed",
            ]
        );
        assert!(
            lines
                .iter()
                .all(|line| !line.contains("AAAA") && !line.contains("BBBB")),
            "no ciphertext is shown either"
        );
    }

    #[test]
    fn against_live_the_applied_revision_is_the_base_and_opaque_objects_stay_hidden() {
        let live = |name: &str, revision: &str, encrypted: bool| {
            let mut annotations = serde_json::json!({ ANNOTATION_REVISION: revision });
            if encrypted {
                annotations[ANNOTATION_ENCRYPTED] = Value::from("/data/password");
            }
            Object {
                key: ResourceKey {
                    group: String::new(),
                    kind: "Secret".into(),
                    namespace: Some("shop".into()),
                    name: name.into(),
                },
                body: serde_json::json!({"metadata": {"name": name, "annotations": annotations}}),
            }
        };
        let objects = [live("db", "r1", true), live("other", "r1", true)];
        let now = [document("s.yaml", 1, CLEAR)];
        assert_eq!(
            live_revisions(&now, &objects, Some("shop")),
            BTreeSet::from(["r1".to_string()])
        );
        let applied = BTreeMap::from([("r1".to_string(), vec![document("s.yaml", 1, CLEAR)])]);
        let reports = against_live(&now, &objects, &applied, Some("shop"));
        assert_eq!(reports[0].ciphertext, Ciphertext::Unchanged);
        let edited = [document("s.yaml", 1, &CLEAR.replace("AAAA", "CCCC"))];
        let reports = against_live(&edited, &objects, &applied, Some("shop"));
        assert_eq!(reports[0].ciphertext, Ciphertext::Changed);
        assert_eq!(
            hidden(&now, &objects, Some("shop"))
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["Secret shop/db"]
        );
        let opaque = [document("o.yaml", 1, OPAQUE)];
        assert_eq!(
            hidden(&opaque, &objects, Some("shop")).len(),
            2,
            "an opaque document may be any object whose values were encrypted in git"
        );
        assert_eq!(
            against_live(&opaque, &objects, &applied, Some("shop"))[0].ciphertext,
            Ciphertext::NotCompared
        );
    }
}
