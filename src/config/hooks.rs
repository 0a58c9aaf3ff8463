//! `[[environment.hook]]`: commands run on gitopsd's host around a rollout, read and checked.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::hooks::{CommandHook, HookEnv, When};

use super::check::{Checker, Unknown};
use super::checked::{Checked, Expected};
use super::join;

/// How long a hook may run when `timeout` is not set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Deserialize)]
pub(super) struct RawHook {
    pub(super) name: Option<Checked<String>>,
    pub(super) when: Option<Checked<String>>,
    pub(super) command: Option<Checked<Vec<String>>>,
    pub(super) timeout: Option<Checked<super::checked::HumanDuration>>,
    pub(super) env: Option<Checked<RawHookEnv>>,
    pub(super) weight: Option<Checked<i64>>,
    pub(super) on_revert: Option<Checked<bool>>,
}

/// `env`: names passed through from gitopsd's environment, or a table of values.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawHookEnv {
    Pass(Vec<String>),
    Set(BTreeMap<String, String>),
}

impl Expected for RawHookEnv {
    const WHAT: &'static str =
        "an array of variable names to pass through, or a table of NAME = \"value\"";
}

impl Expected for i64 {
    const WHAT: &'static str = "an integer";
}

/// A variable name a process can be given.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Checker {
    pub(super) fn hooks(
        &mut self,
        raw: Vec<RawHook>,
        prefix: &str,
        unknown: &mut Unknown,
    ) -> Vec<CommandHook> {
        let mut hooks = Vec::new();
        for (index, raw) in raw.into_iter().enumerate() {
            let table = format!("hook[{index}]");
            if let Some(hook) = self.hook(raw, &join(prefix, &table)) {
                hooks.push(hook);
            }
            self.problems.extend(unknown.under(&table));
        }
        hooks
    }

    fn hook(&mut self, raw: RawHook, key: &str) -> Option<CommandHook> {
        let mut read = self.reader(key);
        let when = read.required("when", raw.when);
        let when = when.and_then(|when| {
            let parsed = When::parse(&when);
            if parsed.is_none() {
                read.problem(
                    "when",
                    format!(
                        "{when:?} is not one of \"pre-rollout\", \"post-promotion\", \"on-failure\""
                    ),
                );
            }
            parsed
        });
        let argv = read.required("command", raw.command);
        let argv = argv.and_then(|argv| {
            match argv.first().map(String::as_str) {
                None | Some("") => read.problem("command", "must name a program"),
                Some(program) if !program.starts_with('/') && program.contains('/') => read.problem(
                    "command",
                    format!("{program:?}: give an absolute path or a name found on the PATH (hooks run in an empty folder)"),
                ),
                Some(_) => return Some(argv),
            }
            None
        });
        let timeout = read
            .duration("timeout", raw.timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        let env = match read.get("env", raw.env) {
            None => Vec::new(),
            Some(RawHookEnv::Pass(names)) => names.into_iter().map(HookEnv::Pass).collect(),
            Some(RawHookEnv::Set(values)) => values
                .into_iter()
                .map(|(name, value)| HookEnv::Set(name, value))
                .collect(),
        };
        for name in env.iter().map(|env| match env {
            HookEnv::Pass(name) | HookEnv::Set(name, _) => name,
        }) {
            if !valid_name(name) {
                read.problem("env", format!("{name:?} is not a variable name"));
            } else if name.starts_with("GITOPSD_") {
                read.problem(
                    "env",
                    format!("{name:?}: GITOPSD_* variables are set by gitopsd"),
                );
            }
        }
        let weight = read.get("weight", raw.weight).unwrap_or(0);
        let on_revert = read.get("on_revert", raw.on_revert).unwrap_or(false);
        if on_revert && when.is_some_and(|when| when != When::PreRollout) {
            read.problem("on_revert", "applies to pre-rollout hooks only");
        }
        let name = read.get("name", raw.name);
        let (when, argv) = (when?, argv?);
        Some(CommandHook {
            name: name.unwrap_or_else(|| argv.join(" ")),
            when,
            argv,
            timeout,
            env,
            weight,
            on_revert,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::parse;
    use crate::hooks::{HookEnv, When};

    const BASE: &str = r#"
        [repo]
        url = "r"
        [[environment]]
        name = "a"
        path = "a"
        target = { type = "directory", path = "a" }
    "#;

    #[test]
    fn hooks_are_read_with_their_defaults() {
        let config = parse(&format!(
            r#"{BASE}
            [[environment.hook]]
            name = "migrate"
            when = "pre-rollout"
            command = ["/usr/local/bin/migrate", "--up"]
            timeout = "10m"
            env = ["DATABASE_URL"]
            weight = -1
            on_revert = true
            [[environment.hook]]
            when = "post-promotion"
            command = ["smoke-test", "https://shop"]
            env = {{ MODE = "quick" }}
            "#
        ))
        .expect("a valid config");
        let hooks = &config.environments[0].hooks;
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0].name, "migrate");
        assert_eq!(hooks[0].when, When::PreRollout);
        assert_eq!(hooks[0].timeout, Duration::from_secs(600));
        assert_eq!(hooks[0].env, [HookEnv::Pass("DATABASE_URL".into())]);
        assert_eq!((hooks[0].weight, hooks[0].on_revert), (-1, true));
        assert_eq!(hooks[1].name, "smoke-test https://shop");
        assert_eq!(hooks[1].timeout, Duration::from_secs(300));
        assert_eq!(hooks[1].env, [HookEnv::Set("MODE".into(), "quick".into())]);
    }

    #[test]
    fn every_problem_of_a_hook_is_named_with_its_key() {
        let found: Vec<String> = parse(&format!(
            r#"{BASE}
            [[environment.hook]]
            when = "PreSync"
            command = "migrate --up"
            timeout = "soon"
            shell = true
            [[environment.hook]]
            when = "on-failure"
            command = ["./cleanup.sh"]
            env = ["GITOPSD_REVISION", "1X"]
            on_revert = true
            "#
        ))
        .expect_err("problems")
        .iter()
        .map(|problem| format!("{}: {}", problem.key, problem.message))
        .collect();
        for expected in [
            "environment[0].hook[0].when: \"PreSync\" is not one of",
            "environment[0].hook[0].command: must be an array of strings",
            "environment[0].hook[0].timeout: invalid duration",
            "environment[0].hook[0].shell: unknown key",
            "environment[0].hook[1].command: \"./cleanup.sh\": give an absolute path",
            "environment[0].hook[1].env: \"GITOPSD_REVISION\": GITOPSD_* variables are set by gitopsd",
            "environment[0].hook[1].env: \"1X\" is not a variable name",
            "environment[0].hook[1].on_revert: applies to pre-rollout hooks only",
        ] {
            assert!(
                found.iter().any(|problem| problem.starts_with(expected)),
                "{expected} not in {found:#?}"
            );
        }
    }
}
