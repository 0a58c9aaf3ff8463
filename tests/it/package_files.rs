//! The man pages and shell completions the Debian package installs are generated from the clap
//! definitions (clap_mangen, clap_complete) and kept in `packaging/`, so `cargo deb` needs no
//! build step of its own. This test fails when they no longer match the command line; run it
//! with `GITOPSD_REGENERATE=1` to write them again.

use std::collections::BTreeMap;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

/// Every generated file, by its path under `packaging/`.
fn generated() -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let command = gitopsd::cli::Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .expect("render gitopsd.1");
    files.insert("man/gitopsd.1".to_string(), page);
    for sub in command.get_subcommands() {
        let name = format!("gitopsd-{}", sub.get_name());
        // The page of a subcommand is named and titled as `gitopsd-<subcommand>`.
        // (clap names are `&'static str` without its `string` feature: a test may leak.)
        let static_name: &'static str = Box::leak(name.clone().into_boxed_str());
        let sub = sub
            .clone()
            .name(static_name)
            .bin_name(format!("gitopsd {}", sub.get_name()));
        let mut page = Vec::new();
        clap_mangen::Man::new(sub)
            .render(&mut page)
            .expect("render a subcommand's page");
        files.insert(format!("man/{name}.1"), page);
    }
    for (shell, file) in [
        (Shell::Bash, "completions/gitopsd.bash"),
        (Shell::Zsh, "completions/_gitopsd"),
        (Shell::Fish, "completions/gitopsd.fish"),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command.clone(), "gitopsd", &mut script);
        files.insert(file.to_string(), script);
    }
    files
}

#[test]
fn man_pages_and_completions_match_the_command_line() {
    let packaging = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    let files = generated();
    if std::env::var_os("GITOPSD_REGENERATE").is_some() {
        for folder in ["man", "completions"] {
            let _ = std::fs::remove_dir_all(packaging.join(folder));
            std::fs::create_dir_all(packaging.join(folder)).expect("mkdir");
        }
        for (path, bytes) in &files {
            std::fs::write(packaging.join(path), bytes).expect("write");
        }
    }
    let mut stale = Vec::new();
    for (path, bytes) in &files {
        if std::fs::read(packaging.join(path)).ok().as_deref() != Some(bytes.as_slice()) {
            stale.push(path.clone());
        }
    }
    for folder in ["man", "completions"] {
        for entry in std::fs::read_dir(packaging.join(folder)).expect("packaging folder") {
            let name = format!(
                "{folder}/{}",
                entry.expect("entry").file_name().to_string_lossy()
            );
            if !files.contains_key(&name) {
                stale.push(format!("{name} (no longer generated)"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "out of date in packaging/: {stale:?}; run GITOPSD_REGENERATE=1 cargo test --test it package_files"
    );
    let pages = files.keys().filter(|path| path.starts_with("man/")).count();
    assert_eq!(
        pages,
        1 + gitopsd::cli::Cli::command().get_subcommands().count(),
        "gitopsd(1) and one page per subcommand"
    );
}
