//! A revision's SOPS documents decrypted in place, before they are checked: documents of one
//! file that carry the same `sops` block are one SOPS file (sops 3 writes the block into every
//! document of a multi-document file; a render's output holds one such run per source file).

use serde_json::Value;

use crate::labels::ANNOTATION_ENCRYPTED;
use crate::manifest::{Documents, EncryptedDocument, Limits, ManifestFile, Problem, parse_yaml};

use super::{Identities, METADATA_KEY, Node, Opened, SopsError, decrypt, open};

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

/// One SOPS file of the revision, opened (or why it does not open), for the rendered
/// documents that come from it.
struct Source {
    path: String,
    /// Its `sops` block as JSON: a render re-sorts keys, so blocks are compared as values.
    block: Value,
    opened: Result<Opened, SopsError>,
}

/// Decrypts the SOPS documents of a render's output. A render re-sorts keys, which sops' MAC
/// covers, so each document is matched (by its `sops` block) with the SOPS file of the
/// revision it comes from, whose MAC is verified as written; the rendered document's encrypted
/// values must then each verify where they stand. A document that comes from no SOPS file of
/// the revision is refused: its MAC cannot be verified.
pub fn decrypt_rendered(
    documents: &mut Documents,
    identities: &Identities,
    limits: &Limits,
    files: &[ManifestFile],
) {
    let sources = open_sources(identities, limits, files);
    for group in groups(documents, limits) {
        for (document, tree) in group.documents {
            let block = tree
                .get(METADATA_KEY)
                .and_then(Node::to_json)
                .unwrap_or(Value::Null);
            let result = match sources.iter().find(|source| source.block == block) {
                None => Err("it comes from no SOPS file of the revision (a render may pass SOPS documents through, not make or merge them), so its MAC cannot be verified".to_string()),
                Some(Source { path, opened: Err(error), .. }) => Err(format!("{error} (in {path})")),
                Some(Source { path, opened: Ok(opened), .. }) => opened
                    .decrypt_document(&tree)
                    .map_err(|error| format!("{error} (from {path})")),
            };
            match result {
                Ok(decrypted) => {
                    let mut body = decrypted.body;
                    mark_encrypted(&mut body, &decrypted.encrypted);
                    documents.add_decrypted(&document, body);
                }
                Err(message) => documents.add_problem(Problem {
                    message: format!("cannot decrypt: {message}"),
                    ..document.at.clone()
                }),
            }
        }
    }
}

/// Opens every SOPS file among `files` (each of its runs of documents with one `sops` block).
fn open_sources(identities: &Identities, limits: &Limits, files: &[ManifestFile]) -> Vec<Source> {
    let mut sources = Vec::new();
    for file in files {
        let mut read =
            crate::manifest::read_limited(std::slice::from_ref(file), Vec::new(), limits);
        for group in groups(&mut read, limits) {
            let Some(block) = group
                .documents
                .first()
                .and_then(|(_, tree)| tree.get(METADATA_KEY))
                .and_then(Node::to_json)
            else {
                continue;
            };
            let trees: Vec<Node> = group.documents.into_iter().map(|(_, tree)| tree).collect();
            sources.push(Source {
                path: file.path.clone(),
                block,
                opened: open(&trees, identities),
            });
        }
    }
    sources
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
