//! The README's layer table against the code: every `crate::` path in `src/` points to its own
//! layer or one below it, every file is in one layer, and no files import each other in a ring.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A module path (`["executor", "driver"]`; the crate root is empty).
type Module = Vec<String>;

/// The layers of the README's architecture table, top first: each a list of paths under
/// `src/` (a trailing `/` is a whole folder).
fn layers(readme: &str) -> Vec<(String, Vec<String>)> {
    let section = readme
        .split("\n## Architecture")
        .nth(1)
        .expect("the README has an Architecture section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    section
        .lines()
        .filter(|line| line.starts_with("| ") && !line.starts_with("| layer"))
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells.get(1)?.to_string();
            let paths = cells
                .get(2)?
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect();
            Some((name, paths))
        })
        .collect()
}

/// Every source file of the crate that is not test-only, by module path.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut found = BTreeMap::new();
    let mut folders = vec![src.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in fs::read_dir(&folder).expect("src is readable") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let name = relative.to_string_lossy();
            if !name.ends_with(".rs") || name.ends_with("_tests.rs") {
                continue;
            }
            let mut module: Module = name
                .trim_end_matches(".rs")
                .split('/')
                .map(str::to_string)
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            found.insert(module, path);
        }
    }
    found
}

/// The layer (its index, top first) of a file, by its path under `src/`.
fn layer_of(relative: &str, layers: &[(String, Vec<String>)]) -> Option<usize> {
    layers.iter().position(|(_, paths)| {
        paths.iter().any(|path| {
            relative == path || (path.ends_with('/') && relative.starts_with(path.as_str()))
        })
    })
}

/// The code before the first test module, without comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `a::{b, c::{d}}` → `a::b`, `a::c::d`.
fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        return vec![tree.to_string()];
    };
    let close = tree.rfind('}').unwrap_or(tree.len());
    let (head, inner) = (&tree[..open], &tree[open + 1..close]);
    let mut parts = Vec::new();
    let (mut depth, mut current) = (0, String::new());
    for c in inner.chars() {
        match c {
            ',' if depth == 0 => parts.push(std::mem::take(&mut current)),
            '{' => {
                depth += 1;
                current.push(c);
            }
            '}' => {
                depth -= 1;
                current.push(c);
            }
            _ => current.push(c),
        }
    }
    parts.push(current);
    parts
        .iter()
        .filter(|part| !part.is_empty())
        .flat_map(|part| expand(&format!("{head}{part}")))
        .collect()
}

/// The longest known module that `path` (segments) names.
fn resolve(path: &[String], known: &BTreeMap<Module, PathBuf>) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|end| path[..end].to_vec())
        .find(|candidate| known.contains_key(candidate))
}

/// The modules `module`'s code names through `crate::`, `super::` and `self::` paths. A
/// parent's own children are left out: declaring and re-exporting them is not a dependency.
fn imports(module: &Module, text: &str, known: &BTreeMap<Module, PathBuf>) -> BTreeSet<Module> {
    let code = code(text);
    let mut paths: Vec<String> = Vec::new();
    for statement in code.split(';') {
        let compact: String = statement.split_whitespace().collect();
        if let Some(at) = compact.find("use") {
            let tree = &compact[at + 3..];
            if tree.starts_with("crate::")
                || tree.starts_with("super::")
                || tree.starts_with("self::")
            {
                paths.extend(expand(tree));
            }
        }
    }
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        paths.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    paths
        .iter()
        .filter_map(|path| {
            let segments: Vec<String> = path
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            let (base, tail) = match segments.first().map(String::as_str) {
                Some("crate") => (Vec::new(), &segments[1..]),
                Some("super") => (
                    module[..module.len().saturating_sub(1)].to_vec(),
                    &segments[1..],
                ),
                Some("self") => (module.clone(), &segments[1..]),
                _ => return None,
            };
            resolve(&[base, tail.to_vec()].concat(), known)
        })
        .filter(|target| target != module && !target.starts_with(module))
        .collect()
}

/// Files that reach themselves through their imports.
fn rings(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Module> {
    let mut in_ring = Vec::new();
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&Module> = edges[start].iter().collect();
        while let Some(next) = stack.pop() {
            if next == start {
                in_ring.push(start.clone());
                break;
            }
            if seen.insert(next) {
                stack.extend(edges.get(next).into_iter().flatten());
            }
        }
    }
    in_ring
}

#[test]
fn every_import_points_to_its_own_layer_or_one_below() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = fs::read_to_string(root.join("README.md")).expect("README");
    let layers = layers(&readme);
    assert!(layers.len() > 5, "the layer table is read: {layers:?}");
    let src = root.join("src");
    let known = modules(&src);
    let mut unplaced = Vec::new();
    let mut upward = Vec::new();
    let mut edges = BTreeMap::new();
    let place = |path: &PathBuf| {
        let relative = path
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .to_string();
        (layer_of(&relative, &layers), relative)
    };
    for (module, path) in &known {
        let (layer, relative) = place(path);
        let Some(layer) = layer else {
            unplaced.push(relative);
            continue;
        };
        let text = fs::read_to_string(path).expect("source is readable");
        let targets = imports(module, &text, &known);
        for target in &targets {
            let (target_layer, target_file) = place(&known[target]);
            if target_layer.is_some_and(|target_layer| target_layer < layer) {
                upward.push(format!(
                    "{relative} ({}) uses {target_file} ({})",
                    layers[layer].0,
                    layers[target_layer.unwrap_or(0)].0
                ));
            }
        }
        edges.insert(module.clone(), targets);
    }
    assert!(
        unplaced.is_empty(),
        "files in no layer of the README's table: {unplaced:?}"
    );
    assert!(
        upward.is_empty(),
        "imports that point up:\n{}",
        upward.join("\n")
    );
    let rings = rings(&edges);
    assert!(
        rings.is_empty(),
        "files that import each other in a ring: {rings:?}"
    );
}

#[test]
fn the_reader_finds_uses_through_braces_and_parents() {
    let known: BTreeMap<Module, PathBuf> = [
        vec!["executor".to_string()],
        vec!["executor".into(), "driver".into()],
        vec!["executor".into(), "error".into()],
        vec!["plan".into()],
        vec!["model".into()],
    ]
    .into_iter()
    .map(|module| (module, PathBuf::new()))
    .collect();
    let driver = vec!["executor".to_string(), "driver".into()];
    let text = "use super::error::ReconcileError;\nuse crate::{model::Revision, plan::{self, Plan}};\n// use crate::nothing;\n#[cfg(test)]\nmod tests { use crate::executor; }";
    let found: Vec<String> = imports(&driver, text, &known)
        .into_iter()
        .map(|module| module.join("/"))
        .collect();
    assert_eq!(found, ["executor/error", "model", "plan"]);
}
