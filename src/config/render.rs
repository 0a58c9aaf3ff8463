//! `render = { kind = … }`: how an environment's folder becomes manifests (kustomize, helm or a
//! command), read and checked.

use std::time::Duration;

use crate::render::{RenderConfig, Tool, is_repo_program};

use super::check::{Checker, Unknown};
use super::checked::{Checked, Reader};
use super::raw::RawRender;
use super::{join, valid_repo_path};

impl Checker {
    /// `render = { kind = … }`: kustomize, helm or a command.
    pub(super) fn render(
        &mut self,
        mut raw: RawRender,
        prefix: &str,
        (environment, folder): (&str, &str),
        namespace: &str,
        unknown: &mut Unknown,
    ) -> Option<RenderConfig> {
        let key = join(prefix, "render");
        let mut read = self.reader(key.clone());
        let kind = read.required("kind", raw.kind.take());
        let timeout = read
            .duration("timeout", raw.timeout.take())
            .unwrap_or(Duration::from_secs(60));
        let env = read.get("env", raw.env.take()).unwrap_or_default();
        for name in &env {
            if name.is_empty() || name.contains('=') || name == "PATH" || name == "HOME" {
                read.problem(
                    "env",
                    format!("{name:?} cannot be passed: names a variable, not PATH or HOME (gitopsd sets those)"),
                );
            }
        }
        let max_output_bytes = read
            .get("max_output_bytes", raw.max_output_bytes.take())
            .unwrap_or(64 * 1024 * 1024);
        let max_tree_bytes = read
            .get("max_tree_bytes", raw.max_tree_bytes.take())
            .unwrap_or(256 * 1024 * 1024);
        let allow_repo_commands = read
            .get("allow_repo_commands", raw.allow_repo_commands.take())
            .unwrap_or(false);
        let tool = match kind.as_deref() {
            None => None,
            Some(kind) => tool_of(
                &mut read,
                kind,
                raw,
                (environment, folder),
                namespace,
                unknown,
            ),
        };
        self.problems.extend(unknown.under("render"));
        let tool = tool?;
        if is_repo_program(tool.program()) && !allow_repo_commands {
            self.problem(
                join(&key, tool.program_key()),
                format!(
                    "{:?} runs a program from the repository, which gitopsd treats as data, not code it trusts; set allow_repo_commands = true to allow it",
                    tool.program()
                ),
            );
        }
        Some(RenderConfig {
            tool,
            timeout,
            env,
            max_output_bytes,
            max_tree_bytes,
            allow_repo_commands,
            cache_max_bytes: 0,
            revert_excluded: Vec::new(),
        })
    }
}

/// The tool of a render table of `kind`, with its own keys; keys of the other kinds are unknown.
fn tool_of(
    read: &mut Reader<'_>,
    kind: &str,
    raw: RawRender,
    (environment, folder): (&str, &str),
    namespace: &str,
    unknown: &mut Unknown,
) -> Option<Tool> {
    let specific = [
        ("binary", raw.binary.is_some()),
        ("chart", raw.chart.is_some()),
        ("values", raw.values.is_some()),
        ("release", raw.release.is_some()),
        ("namespace", raw.namespace.is_some()),
        ("command", raw.command.is_some()),
    ];
    match kind {
        "kustomize" => {
            let binary = binary(read, raw.binary);
            read.unknown_unless(&specific, &["binary"]);
            Some(Tool::Kustomize { binary })
        }
        "helm" => {
            let tool = helm(read, raw, (environment, folder), namespace);
            read.unknown_unless(
                &specific,
                &["binary", "chart", "values", "release", "namespace"],
            );
            tool
        }
        "command" => {
            let tool = command(read, raw.command);
            read.unknown_unless(&specific, &["command"]);
            tool
        }
        other => {
            read.problem(
                "kind",
                format!(
                    "unknown render kind {other:?}; expected \"kustomize\", \"helm\" or \"command\""
                ),
            );
            unknown.drop_under("render");
            None
        }
    }
}

/// `binary`: the tool's program instead of the one on `PATH`.
fn binary(read: &mut Reader<'_>, value: Option<Checked<String>>) -> Option<String> {
    let binary = read.get("binary", value);
    if binary.as_deref() == Some("") {
        read.problem("binary", "must not be empty");
    }
    binary
}

/// `kind = "helm"`: a chart in the repository (the environment's own folder unless named, as
/// Argo CD takes it), values files, and release and namespace that default to the
/// environment's.
fn helm(
    read: &mut Reader<'_>,
    raw: RawRender,
    (environment, folder): (&str, &str),
    namespace: &str,
) -> Option<Tool> {
    let binary = binary(read, raw.binary);
    let chart = match raw.chart {
        Some(chart) => read.repo_path("chart", Some(chart)),
        // The folder itself was checked as `path`.
        None => (!folder.is_empty()).then(|| folder.to_string()),
    };
    let values = read.get("values", raw.values).unwrap_or_default();
    for file in &values {
        if !valid_repo_path(file) {
            read.problem(
                "values",
                format!("{file:?} must be a relative path inside the repository (no '..')"),
            );
        }
    }
    let release = read
        .get("release", raw.release)
        .unwrap_or_else(|| environment.to_string());
    let namespace = read
        .get("namespace", raw.namespace)
        .unwrap_or_else(|| namespace.to_string());
    chart.map(|chart| Tool::Helm {
        binary,
        chart,
        values,
        release,
        namespace,
    })
}

/// `kind = "command"`: a program and its arguments.
fn command(read: &mut Reader<'_>, value: Option<Checked<Vec<String>>>) -> Option<Tool> {
    let had_command = value.is_some();
    match read.get("command", value) {
        Some(argv) if argv.first().is_some_and(|program| !program.is_empty()) => {
            Some(Tool::Command { argv })
        }
        Some(_) => {
            read.problem("command", "must name a program first");
            None
        }
        None => {
            if !had_command {
                read.problem("command", "missing");
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::parse;

    #[test]
    fn render_tables_are_read_with_defaults_and_checked_with_their_keys() {
        let config = parse(
            r#"
            [repo]
            url = "deploy-repo"
            [state]
            render_cache_max_bytes = 1000
            [[environment]]
            name = "staging"
            path = "overlays/staging"
            render = { kind = "kustomize" }
            target = { type = "directory", path = "live/staging" }
            [[environment]]
            name = "prod"
            path = "charts/web"
            namespace = "shop"
            render = { kind = "helm", chart = "charts/web", values = ["values/prod.yaml"], env = ["HELM_CACHE_HOME"], timeout = "2m" }
            target = { type = "directory", path = "live/prod" }
            [[environment]]
            name = "other"
            path = "overlays/other"
            target = { type = "directory", path = "live/other" }
            "#,
        )
        .expect("valid");
        let staging = config.environments[0].render.as_ref().expect("render");
        assert_eq!(
            staging.tool,
            crate::render::Tool::Kustomize { binary: None }
        );
        assert_eq!(staging.timeout, Duration::from_secs(60));
        assert_eq!(staging.cache_max_bytes, 1000);
        assert!(!staging.allow_repo_commands);
        assert_eq!(staging.revert_excluded, ["charts/web", "overlays/other"]);
        let prod = config.environments[1].render.as_ref().expect("render");
        assert_eq!(
            prod.tool,
            crate::render::Tool::Helm {
                binary: None,
                chart: "charts/web".into(),
                values: vec!["values/prod.yaml".into()],
                release: "prod".into(),
                namespace: "shop".into(),
            },
            "release and namespace default to the environment's"
        );
        assert_eq!(prod.env, ["HELM_CACHE_HOME"]);
        assert_eq!(prod.timeout, Duration::from_secs(120));
        assert_eq!(config.environments[2].render, None);

        let problems = parse(
            r#"
            [repo]
            url = "deploy-repo"
            [[environment]]
            name = "a"
            path = "a"
            render = { kind = "jsonnet" }
            target = { type = "directory", path = "a" }
            [[environment]]
            name = "b"
            path = "b"
            render = { kind = "helm", values = ["../secrets.yaml"], env = ["PATH"] }
            target = { type = "directory", path = "b" }
            [[environment]]
            name = "c"
            path = "c"
            render = { kind = "command", command = ["./render.sh", "{path}"], shell = true }
            target = { type = "directory", path = "c" }
            [[environment]]
            name = "d"
            path = "d"
            render = { kind = "command", command = [] }
            target = { type = "directory", path = "d" }
            "#,
        )
        .expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "environment[0].render.kind",
                "environment[1].render.env",
                "environment[1].render.values",
                "environment[2].render.shell",
                "environment[2].render.command",
                "environment[3].render.command",
            ],
            "{problems:#?}"
        );
        assert!(
            problems[4].message.contains("allow_repo_commands = true"),
            "{problems:#?}"
        );
    }

    #[test]
    fn a_helm_chart_defaults_to_the_environments_own_folder() {
        let config = parse(
            r#"
            [repo]
            url = "deploy-repo"
            [[environment]]
            name = "guestbook"
            path = "helm-guestbook/"
            render = { kind = "helm" }
            target = { type = "directory", path = "live" }
            "#,
        )
        .expect("a helm environment needs no chart when its folder is the chart");
        let render = config.environments[0].render.as_ref().expect("render");
        assert!(
            matches!(&render.tool, crate::render::Tool::Helm { chart, .. } if chart == "helm-guestbook"),
            "{:?}",
            render.tool
        );
    }
}
