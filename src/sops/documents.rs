//! A revision's SOPS documents decrypted in place, before they are checked: documents of one
//! file that carry the same `sops` block are one SOPS file (sops 3 writes the block into every
//! document of a multi-document file; a render's output holds one such run per source file).

use serde_json::Value;

use crate::labels::ANNOTATION_ENCRYPTED;
use crate::manifest::{Documents, EncryptedDocument, Limits, Problem, parse_yaml};

use super::{Identities, METADATA_KEY, Node, decrypt};

/// One SOPS file's documents: the encrypted documents and their parsed trees.
struct Group {
    documents: Vec<(EncryptedDocument, Node)>,
}

/// Decrypts every SOPS document of `documents` with `identities`. A document that cannot be
/// read, or a file that does not decrypt, becomes one problem naming the file and document;
/// decrypted bodies are checked like any other, and carry the paths of their encrypted values
/// in [`ANNOTATION_ENCRYPTED`] so that nothing shows them.
pub fn decrypt_documents(documents: &mut Documents, identities: &Identities, limits: &Limits) {
    for group in groups(documents, limits) {
        let trees: Vec<Node> = group
            .documents
            .iter()
            .map(|(_, tree)| tree.clone())
            .collect();
        match decrypt(&trees, identities) {
            Ok(decrypted) => {
                for ((document, _), decrypted) in group.documents.iter().zip(decrypted) {
                    let mut body = decrypted.body;
                    mark_encrypted(&mut body, &decrypted.encrypted);
                    documents.add_decrypted(document, body);
                }
            }
            Err(error) => {
                let index = error.document().unwrap_or(1).saturating_sub(1);
                let (document, _) = &group.documents[index.min(group.documents.len() - 1)];
                let message = match group.documents.len() {
                    1 => error.to_string(),
                    _ => {
                        let numbers: Vec<String> = group
                            .documents
                            .iter()
                            .filter_map(|(d, _)| d.at.document.map(|n| n.to_string()))
                            .collect();
                        format!("{error} (SOPS file of documents {})", numbers.join(", "))
                    }
                };
                documents.add_problem(Problem {
                    message: format!("cannot decrypt: {message}"),
                    ..document.at.clone()
                });
            }
        }
    }
}

/// The encrypted documents taken from `documents`, grouped into SOPS files in order; those
/// that do not parse again are problems.
fn groups(documents: &mut Documents, limits: &Limits) -> Vec<Group> {
    let mut groups: Vec<(String, Node, Group)> = Vec::new();
    for document in documents.take_encrypted() {
        let tree: Node = match parse_yaml(&document.text, limits) {
            Ok(tree) => tree,
            Err(error) => {
                documents.add_problem(Problem {
                    message: format!("invalid YAML: {}", error.without_snippet()),
                    ..document.at.clone()
                });
                continue;
            }
        };
        let block = tree.get(METADATA_KEY).cloned().unwrap_or(Node::Null);
        let file = document.at.file.clone();
        match groups
            .iter_mut()
            .find(|(f, b, _)| *f == file && *b == block)
        {
            Some((_, _, group)) => group.documents.push((document, tree)),
            None => groups.push((
                file,
                block,
                Group {
                    documents: vec![(document, tree)],
                },
            )),
        }
    }
    groups.into_iter().map(|(_, _, group)| group).collect()
}

/// Records the JSON pointers of a body's encrypted values in its annotations.
fn mark_encrypted(body: &mut Value, pointers: &[String]) {
    if pointers.is_empty() {
        return;
    }
    let Some(top) = body.as_object_mut() else {
        return;
    };
    let metadata = top
        .entry("metadata")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    let Some(metadata) = metadata.as_object_mut() else {
        return;
    };
    let annotations = metadata
        .entry("annotations")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if let Some(annotations) = annotations.as_object_mut() {
        annotations.insert(
            ANNOTATION_ENCRYPTED.to_string(),
            Value::String(serde_json::to_string(pointers).unwrap_or_default()),
        );
    }
}
