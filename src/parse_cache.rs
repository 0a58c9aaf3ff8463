//! Parsed manifest files kept by path and git blob id, in a compact form, so that a file which
//! did not change is not parsed again (by the next pass, or by the other side of a diff).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::manifest::file::{Limits, ManifestFile, ParsedFile};

/// What the cache may hold by default: the compact form of 2,000 objects is about 1 MiB.
pub const DEFAULT_MAX_BYTES: usize = 32 << 20;

/// A parse is a pure function of these: the same path, bytes and limits parse the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    path: String,
    blob: String,
    limits: Limits,
}

/// One parsed file as JSON: a tenth of the memory of its `serde_json::Value`s, and several
/// times faster to read back than the YAML.
#[derive(Debug)]
struct Entry {
    compact: Arc<[u8]>,
    last_used: u64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    bytes: usize,
    clock: u64,
    hits: u64,
    misses: u64,
}

/// A bounded, least-recently-used cache of parsed files; cheap to share between tasks.
#[derive(Debug, Clone)]
pub struct ParseCache {
    inner: Arc<Mutex<Inner>>,
    max_bytes: usize,
}

impl Default for ParseCache {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BYTES)
    }
}

impl ParseCache {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Arc::default(),
            max_bytes,
        }
    }

    fn key(file: &ManifestFile, limits: &Limits) -> Option<Key> {
        Some(Key {
            path: file.path.clone(),
            blob: file.blob.clone()?,
            limits: *limits,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves at worst a stale count; the map stays valid.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The parse of `file`, when a file with its path and blob id was parsed before.
    pub fn get(&self, file: &ManifestFile, limits: &Limits) -> Option<ParsedFile> {
        let key = Self::key(file, limits)?;
        let compact = {
            let mut inner = self.lock();
            inner.clock += 1;
            let clock = inner.clock;
            match inner.entries.get_mut(&key) {
                Some(entry) => {
                    entry.last_used = clock;
                    let compact = entry.compact.clone();
                    inner.hits += 1;
                    compact
                }
                None => {
                    inner.misses += 1;
                    return None;
                }
            }
        };
        // Written by `insert` from the same type; a failure would be a bug, so parse afresh.
        serde_json::from_slice(&compact).ok()
    }

    /// Remembers the parse of `file`; files without a blob id (rendered output) are not kept.
    pub fn insert(&self, file: &ManifestFile, limits: &Limits, parsed: &ParsedFile) {
        let Some(key) = Self::key(file, limits) else {
            return;
        };
        let Ok(compact) = serde_json::to_vec(parsed) else {
            return;
        };
        if compact.len() > self.max_bytes {
            return;
        }
        let mut inner = self.lock();
        inner.clock += 1;
        let entry = Entry {
            compact: compact.into(),
            last_used: inner.clock,
        };
        inner.bytes += entry.compact.len();
        if let Some(old) = inner.entries.insert(key, entry) {
            inner.bytes -= old.compact.len();
        }
        while inner.bytes > self.max_bytes {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            if let Some(evicted) = inner.entries.remove(&oldest) {
                inner.bytes -= evicted.compact.len();
            }
        }
    }

    /// (hits, misses) since the cache was made, for tests.
    pub fn counts(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.hits, inner.misses)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{self, ParseOptions};

    fn file(path: &str, blob: &str, text: &str) -> ManifestFile {
        ManifestFile {
            path: path.into(),
            bytes: text.as_bytes().to_vec(),
            blob: Some(blob.into()),
        }
    }

    fn config_map(name: &str) -> String {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  a: \"1\"\n")
    }

    fn names(cache: &ParseCache, files: &[ManifestFile]) -> Vec<String> {
        let options = ParseOptions {
            default_namespace: "web".into(),
        };
        manifest::read_cached(
            files,
            Vec::new(),
            &Limits::default(),
            Some(cache),
            manifest::Threads::EveryCore,
        )
        .complete(&options, &manifest::Scopes::offline())
        .expect("valid")
        .into_iter()
        .map(|object| object.key.to_string())
        .collect()
    }

    #[test]
    fn an_unchanged_blob_is_read_from_the_cache_with_the_same_objects() {
        let cache = ParseCache::default();
        let files = [
            file("env/a.yaml", "aaa", &config_map("a")),
            file("env/b.yaml", "bbb", &config_map("b")),
        ];
        let first = names(&cache, &files);
        assert_eq!(cache.counts(), (0, 2));
        let second = names(&cache, &files);
        assert_eq!(cache.counts(), (2, 2));
        assert_eq!(first, second);
        // A new blob at a known path is parsed; the other file is not.
        let changed = [
            file("env/a.yaml", "aaa2", &config_map("a2")),
            file("env/b.yaml", "bbb", &config_map("b")),
        ];
        assert_eq!(
            names(&cache, &changed),
            ["ConfigMap web/a2", "ConfigMap web/b"]
        );
        assert_eq!(cache.counts(), (3, 3));
    }

    #[test]
    fn problems_come_back_from_the_cache_with_their_file_and_document() {
        let cache = ParseCache::default();
        let files = [file("env/bad.yaml", "bad", "---\nkind: ConfigMap\n")];
        let read = || {
            manifest::read_cached(
                &files,
                Vec::new(),
                &Limits::default(),
                Some(&cache),
                manifest::Threads::One,
            )
            .complete(
                &ParseOptions {
                    default_namespace: "web".into(),
                },
                &manifest::Scopes::offline(),
            )
            .expect_err("missing apiVersion")
            .to_string()
        };
        let fresh = read();
        let cached = read();
        assert_eq!(cache.counts(), (1, 1));
        assert_eq!(fresh, cached);
        assert!(fresh.contains("env/bad.yaml: document 1"), "{fresh}");
    }

    #[test]
    fn the_least_recently_used_files_go_first_past_the_limit() {
        let probe = ParseCache::default();
        names(&probe, &[file("env/a.yaml", "a", &config_map("a"))]);
        let one = probe.bytes();
        let cache = ParseCache::new(one * 2);
        let a = file("env/a.yaml", "a", &config_map("a"));
        let b = file("env/b.yaml", "b", &config_map("b"));
        let c = file("env/c.yaml", "c", &config_map("c"));
        names(&cache, std::slice::from_ref(&a));
        names(&cache, std::slice::from_ref(&b));
        names(&cache, std::slice::from_ref(&a)); // a is now more recent than b
        names(&cache, std::slice::from_ref(&c)); // over the limit: b goes
        assert!(cache.bytes() <= one * 2);
        let (hits, misses) = cache.counts();
        names(&cache, std::slice::from_ref(&a));
        assert_eq!(cache.counts(), (hits + 1, misses), "a stays");
        names(&cache, std::slice::from_ref(&b));
        assert_eq!(cache.counts(), (hits + 1, misses + 1), "b was evicted");
    }

    #[test]
    fn files_without_a_blob_id_are_never_cached() {
        let cache = ParseCache::default();
        let rendered = ManifestFile {
            path: "render `kustomize build env`".into(),
            bytes: config_map("a").into_bytes(),
            blob: None,
        };
        names(&cache, std::slice::from_ref(&rendered));
        names(&cache, std::slice::from_ref(&rendered));
        assert_eq!(cache.counts(), (0, 0));
        assert_eq!(cache.bytes(), 0);
    }
}
