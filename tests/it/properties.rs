//! Property tests of hostile input: the manifest parser, the normalizer and the config loader
//! never panic on generated input (random mutations of valid files, deep nesting, alias bombs,
//! odd UTF-8, huge scalars), and every problem they report names its file and document.
//!
//! CI runs a fixed number of cases; `scripts/hostile-input.sh MINUTES` runs them for longer and
//! reports cases run, the longest case and peak memory.

use std::time::{Duration, Instant};

use gitopsd::manifest::{self, Limits, ManifestFile, ParseOptions, Scopes};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};

/// Cases per property: `GITOPSD_PROPTEST_CASES`, else a fixed count for CI.
fn runner() -> TestRunner {
    let cases = std::env::var("GITOPSD_PROPTEST_CASES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(96);
    TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    })
}

/// Reports the longest case when asked to (the long-run script reads it).
struct Timing(std::cell::Cell<(u64, Duration)>);

impl Timing {
    fn new() -> Self {
        Self(std::cell::Cell::new((0, Duration::ZERO)))
    }

    fn record(&self, took: Duration) {
        let (cases, longest) = self.0.get();
        self.0.set((cases + 1, longest.max(took)));
    }

    fn report(&self, name: &str) {
        if std::env::var_os("GITOPSD_PROPTEST_REPORT").is_some() {
            let (cases, longest) = self.0.get();
            eprintln!("property {name}: {cases} cases, longest {longest:?}");
        }
    }
}

const VALID: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  replicas: 3\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n        - name: web\n          image: registry.example.com/web:1.0.0\n          env: [{name: MODE, value: \"on\"}]\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: api\nstringData:\n  token: abc\n---\napiVersion: v1\nkind: List\nitems:\n  - {apiVersion: v1, kind: ConfigMap, metadata: {name: a}, data: {x: \"1\"}}\n";

/// Odd text: control characters, a BOM, bidirectional overrides, YAML indicators.
fn odd_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("\u{feff}".to_string()),
            Just("\u{202e}".to_string()),
            Just("\u{0}".to_string()),
            Just("\t".to_string()),
            Just("\r\n".to_string()),
            Just("---\n".to_string()),
            Just("...\n".to_string()),
            Just("&a ".to_string()),
            Just("*a".to_string()),
            Just("!!binary ".to_string()),
            Just("<<: *a\n".to_string()),
            Just("{".to_string()),
            Just("]".to_string()),
            Just(": ".to_string()),
            Just("\"".to_string()),
            Just("'".to_string()),
            Just("- ".to_string()),
            Just("  ".to_string()),
            Just("\n".to_string()),
            "\\PC{0,8}",
        ],
        0..12,
    )
    .prop_map(|parts| parts.concat())
}

/// `base` with each edit applied in turn: at a random character boundary, `remove` bytes (to
/// the next boundary) replaced by `insert`.
fn apply_edits(base: &str, edits: Vec<(prop::sample::Index, usize, String)>) -> String {
    let mut text = base.to_string();
    for (at, remove, insert) in edits {
        let boundaries: Vec<usize> = text
            .char_indices()
            .map(|(i, _)| i)
            .chain([text.len()])
            .collect();
        let start = boundaries[at.index(boundaries.len())];
        let end = boundaries
            .iter()
            .copied()
            .find(|&b| b >= start + remove)
            .unwrap_or(text.len());
        text.replace_range(start..end, &insert);
    }
    text
}

/// A valid manifest with random edits: text removed, replaced or inserted at random places.
fn mutated_manifest() -> impl Strategy<Value = String> {
    prop::collection::vec((any::<prop::sample::Index>(), 0..20usize, odd_text()), 1..6)
        .prop_map(|edits| apply_edits(VALID, edits))
}

/// Sequences or maps nested `depth` deep inside an object.
fn deep_nesting() -> impl Strategy<Value = String> {
    (1..400usize, any::<bool>()).prop_map(|(depth, flow)| {
        let body = if flow {
            format!("{}x{}", "[".repeat(depth), "]".repeat(depth))
        } else {
            let mut text = String::new();
            for level in 0..depth {
                text.push_str(&format!("\n{}k{level}:", "  ".repeat(level + 1)));
            }
            text.push_str(" x");
            text
        };
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: deep\ndata: {body}\n")
    })
}

/// The "billion laughs": each level refers to the one before ten times.
fn alias_bomb() -> impl Strategy<Value = String> {
    (2..12usize, 2..12usize).prop_map(|(levels, width)| {
        let mut text = String::from(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bomb\nl0: &l0 \"lol\"\n",
        );
        for level in 1..levels {
            let refs = vec![format!("*l{}", level - 1); width].join(", ");
            text.push_str(&format!("l{level}: &l{level} [{refs}]\n"));
        }
        text.push_str(&format!("data: {{x: *l{}}}\n", levels - 1));
        text
    })
}

/// A scalar of up to 2 MiB.
fn huge_scalar() -> impl Strategy<Value = String> {
    (1..2_097_152usize, any::<char>()).prop_map(|(size, c)| {
        let c = if c.is_control() { 'x' } else { c };
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n  blob: \"{}\"\n",
            c.to_string().repeat(size / c.len_utf8().max(1))
        )
    })
}

fn hostile_manifest() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => mutated_manifest(),
        2 => deep_nesting(),
        2 => alias_bomb(),
        1 => huge_scalar(),
        1 => odd_text(),
    ]
}

const FILE: &str = "environments/staging/generated.yaml";

/// Parses, completes and normalizes; checks every problem names the file (and, past the
/// file's own problems, its document).
fn parse_checked(text: &str) -> Result<(), TestCaseError> {
    let files = [ManifestFile {
        path: FILE.into(),
        bytes: text.as_bytes().to_vec(),
        blob: None,
    }];
    let documents = manifest::read_limited(&files, Vec::new(), &Limits::default());
    let options = ParseOptions {
        default_namespace: "shop".into(),
    };
    match documents.complete(&options, &Scopes::offline()) {
        Ok(objects) => {
            for object in objects {
                let _ = gitopsd::diff::normalize(&object.body);
                let _ = gitopsd::diff::content_hash(&gitopsd::diff::normalize(&object.body));
            }
        }
        Err(errors) => {
            prop_assert!(!errors.0.is_empty());
            for problem in &errors.0 {
                prop_assert_eq!(&problem.file, FILE);
                let whole_file = problem.message.contains("UTF-8");
                prop_assert!(
                    whole_file || problem.document.is_some(),
                    "no document in {}",
                    problem
                );
            }
        }
    }
    Ok(())
}

#[test]
fn the_manifest_parser_and_normalizer_never_panic_on_hostile_input() {
    let timing = Timing::new();
    runner()
        .run(&hostile_manifest(), |text| {
            let started = Instant::now();
            let result = parse_checked(&text);
            timing.record(started.elapsed());
            result
        })
        .expect("every generated manifest is handled");
    timing.report("manifest");
}

#[test]
fn an_alias_bomb_is_refused_with_its_file_and_document() {
    let mut text =
        String::from("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bomb\nl0: &l0 \"lol\"\n");
    for level in 1..10 {
        let refs = vec![format!("*l{}", level - 1); 10].join(", ");
        text.push_str(&format!("l{level}: &l{level} [{refs}]\n"));
    }
    text.push_str("data: {x: *l9}\n");
    let files = [ManifestFile {
        path: FILE.into(),
        bytes: text.into_bytes(),
        blob: None,
    }];
    let errors = manifest::read_limited(&files, Vec::new(), &Limits::default())
        .complete(
            &ParseOptions {
                default_namespace: "shop".into(),
            },
            &Scopes::offline(),
        )
        .expect_err("a billion laughs is refused");
    let text = errors.to_string();
    assert!(
        text.contains("environments/staging/generated.yaml: document 1"),
        "{text}"
    );
}

#[test]
fn too_many_documents_stop_the_parser_with_a_problem() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n".repeat(30);
    let files = [ManifestFile {
        path: FILE.into(),
        bytes: text.into_bytes(),
        blob: None,
    }];
    let limits = Limits {
        max_documents: 10,
        ..Limits::default()
    };
    let errors = manifest::read_limited(&files, Vec::new(), &limits)
        .complete(
            &ParseOptions {
                default_namespace: "shop".into(),
            },
            &Scopes::offline(),
        )
        .expect_err("over the limit");
    assert!(
        errors.to_string().contains("document 11")
            && errors.to_string().contains("repo.max_documents"),
        "{errors}"
    );
}

const VALID_CONFIG: &str = "[repo]\nurl = \"deploy\"\nbranch = \"main\"\npoll_interval = \"30s\"\n\n[state]\ndir = \"state\"\n\n[[environment]]\nname = \"staging\"\npath = \"environments/staging\"\ntarget = { type = \"directory\", path = \"live/staging\" }\nallowed_kinds = [\"apps/*\"]\n\n[environment.rollout]\nsteps = [10, 50, 100]\nbake = \"1m\"\n\n[[environment.health]]\ntype = \"http\"\nurl = \"http://127.0.0.1/\"\n";

/// A valid config with random edits (TOML that may no longer parse, or parses to wrong types).
fn mutated_config() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        Just("= ".to_string()),
        Just("[".to_string()),
        Just("]]".to_string()),
        Just("\"".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("-1".to_string()),
        Just("99999999999999999999".to_string()),
        Just("\"0s\"".to_string()),
        Just("[[environment]]\n".to_string()),
        Just("true".to_string()),
        Just("\u{202e}".to_string()),
        Just("\n".to_string()),
        "[a-z_]{1,12}",
        "\\PC{0,6}",
    ];
    prop::collection::vec(
        (
            any::<prop::sample::Index>(),
            0..12usize,
            prop::collection::vec(fragment, 0..4),
        ),
        1..5,
    )
    .prop_map(|edits| {
        let edits = edits
            .into_iter()
            .map(|(at, remove, insert)| (at, remove, insert.concat()))
            .collect();
        apply_edits(VALID_CONFIG, edits)
    })
}

#[test]
fn the_config_loader_never_panics_and_names_each_problem_by_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gitopsd.toml");
    let timing = Timing::new();
    runner()
        .run(&mutated_config(), |text| {
            std::fs::write(&path, &text).expect("write config");
            let started = Instant::now();
            let loaded = gitopsd::config::Config::load(&path);
            timing.record(started.elapsed());
            if let Err(gitopsd::config::ConfigError::Invalid { problems, .. }) = &loaded {
                prop_assert!(!problems.is_empty());
                for problem in problems {
                    prop_assert!(
                        !problem.key.is_empty(),
                        "a problem without a key: {problem:?}"
                    );
                }
            }
            Ok(())
        })
        .expect("every generated config is handled");
    timing.report("config");
}
