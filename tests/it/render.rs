//! Rendered environments: kustomize overlays rendered by the real `kubectl kustomize`
//! (`GITOPSD_TEST_KUBECTL`), plugin commands, a stand-in helm, the render cache, and revert of
//! a rendered environment, on directory targets.

use std::fs;
use std::path::{Path, PathBuf};

use gitopsd::journal::Event;

use crate::helpers::*;

/// The kubectl whose `kustomize` renders the overlays (tests/run.sh unpacks k8s-lab's).
pub(crate) fn test_kubectl() -> PathBuf {
    let kubectl = std::env::var_os("GITOPSD_TEST_KUBECTL").map(PathBuf::from);
    match kubectl {
        Some(path) if path.is_file() => path,
        _ => panic!(
            "set GITOPSD_TEST_KUBECTL to a kubectl binary (tests/run.sh unpacks ../shared/k8s-lab/bin/kubectl.xz)"
        ),
    }
}

/// True when process `pid` is gone, or a zombie waiting for init to reap it.
fn process_gone(pid: &str) -> bool {
    fs::read_to_string(format!("/proc/{}/stat", pid.trim())).map_or(true, |stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

/// Writes an executable script.
fn script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    fs::write(path, text).expect("write script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod script");
}

/// `base/` (Deployment with `image_tag`, Service, a configMapGenerator) and one overlay per
/// `(environment, namespace, replicas)`: namespace, namePrefix, a replicas patch, an image
/// mirror and a merged generator.
pub(crate) fn kustomize_fixture(repo: &Repo, image_tag: &str, overlays: &[(&str, &str, u32)]) {
    repo.write(
        "base/kustomization.yaml",
        "resources:\n  - deployment.yaml\n  - service.yaml\nconfigMapGenerator:\n  - name: web-config\n    literals:\n      - GREETING=hello\n",
    );
    repo.write(
        "base/deployment.yaml",
        &format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels: {{app: web}}\nspec:\n  replicas: 4\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n        - name: web\n          image: registry.k8s.io/pause:{image_tag}\n          envFrom:\n            - configMapRef: {{name: web-config}}\n"
        ),
    );
    repo.write(
        "base/service.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n",
    );
    for (environment, namespace, replicas) in overlays {
        let dir = format!("overlays/{environment}");
        repo.write(
            &format!("{dir}/kustomization.yaml"),
            &format!(
                "namespace: {namespace}\nnamePrefix: {environment}-\nresources:\n  - ../../base\n  - namespace.yaml\npatches:\n  - path: replicas.yaml\nimages:\n  - name: registry.k8s.io/pause\n    newName: mirror.example/pause\nconfigMapGenerator:\n  - name: web-config\n    behavior: merge\n    literals:\n      - MODE={environment}\n"
            ),
        );
        repo.write(
            &format!("{dir}/namespace.yaml"),
            &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n"),
        );
        repo.write(
            &format!("{dir}/replicas.yaml"),
            &format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {replicas}\n"
            ),
        );
    }
}

const OVERLAYS: &[(&str, &str, u32)] = &[
    ("staging", "shop-staging", 2),
    ("production", "shop-production", 4),
];

/// Logs the image of the stable and canary Deployment of one environment each time it runs,
/// and fails while the line matches the pattern in the file given third.
const CHECK_SCRIPT: &str = r#"#!/bin/sh
# Usage: check.sh STABLE_FILE CANARY_FILE LOG FAIL_PATTERN_FILE
field() { if [ -f "$1" ]; then sed -n "s/^ *image: //p" "$1" | head -n 1; else echo -; fi; }
line="$(field "$1") $(field "$2")"
echo "$line" >> "$3"
if [ -s "$4" ] && echo "$line" | grep -Eq -f "$4"; then
  echo "unhealthy: $line" >&2
  exit 1
fi
exit 0
"#;

/// A workspace whose two environments render the kustomize overlays with `binary`, each
/// rolling out in [50, 100] with a check that logs what its canary step looked like.
struct RenderWorkspace {
    workspace: Workspace,
}

impl RenderWorkspace {
    fn new(binary: &Path) -> Self {
        let workspace = Workspace::new();
        script(&workspace.path("check.sh"), CHECK_SCRIPT);
        let mut config = format!(
            "[repo]\nurl = \"{}\"\nbranch = \"main\"\nmax_file_bytes = 65536\n\n[state]\ndir = \"state\"\n",
            workspace.repo.dir.display()
        );
        for (environment, namespace, _) in OVERLAYS {
            let live = workspace.live(environment);
            let deployments = live.join(format!("{namespace}/Deployment.apps"));
            fs::write(workspace.path(&format!("fail-{environment}")), "").expect("pattern");
            config.push_str(&format!(
                r#"
[[environment]]
name = "{environment}"
path = "overlays/{environment}"
render = {{ kind = "kustomize", binary = "{binary}" }}
target = {{ type = "directory", path = "live/{environment}" }}

[environment.rollout]
steps = [50, 100]
bake = "300ms"
verify = "300ms"
timeout = "5s"
revert_commit = true

[[environment.health]]
name = "images"
type = "exec"
command = "{check} {stable} {canary} {log} {pattern}"
interval = "100ms"
failures = 1
"#,
                binary = binary.display(),
                check = workspace.path("check.sh").display(),
                stable = deployments
                    .join(format!("{environment}-web.yaml"))
                    .display(),
                canary = deployments
                    .join(format!("{environment}-web-canary.yaml"))
                    .display(),
                log = workspace.path(&format!("observed-{environment}")).display(),
                pattern = workspace.path(&format!("fail-{environment}")).display(),
            ));
        }
        fs::write(&workspace.config, config).expect("write config");
        Self { workspace }
    }

    fn deploy(&self, image_tag: &str) -> String {
        kustomize_fixture(&self.workspace.repo, image_tag, OVERLAYS);
        let commit = self.workspace.repo.commit(&format!("pause {image_tag}"));
        assert_exit(&self.workspace.run(&["run", "--once"]), 0);
        commit
    }

    /// The images each check saw, consecutive repeats folded, and the log emptied.
    fn take_observed(&self, environment: &str) -> Vec<String> {
        let path = self.workspace.path(&format!("observed-{environment}"));
        let text = fs::read_to_string(&path).unwrap_or_default();
        fs::write(&path, "").expect("clear log");
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.dedup();
        lines
    }

    fn live_file(&self, environment: &str, relative: &str) -> String {
        fs::read_to_string(self.workspace.live(environment).join(relative))
            .unwrap_or_else(|e| panic!("live {environment}/{relative}: {e}"))
    }
}

fn event_names(records: &[gitopsd::journal::Record]) -> Vec<String> {
    records
        .iter()
        .map(|record| match &record.event {
            Event::StepStarted { weight, .. } => format!("step_started {weight}"),
            Event::StepPassed { weight, .. } => format!("step_passed {weight}"),
            other => other.name().to_string(),
        })
        .collect()
}

/// The file name of the generated ConfigMap (`<prefix>web-config-<hash>.yaml`).
fn generated_config_map(live: &Path, namespace: &str, environment: &str) -> String {
    let dir = live.join(format!("{namespace}/ConfigMap"));
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let prefix = format!("{environment}-web-config-");
    let found: Vec<&String> = names.iter().filter(|n| n.starts_with(&prefix)).collect();
    assert_eq!(found.len(), 1, "{names:?}");
    found[0].clone()
}

#[test]
fn kustomize_overlays_render_and_a_base_image_change_canaries_through_both_environments() {
    let render = RenderWorkspace::new(&test_kubectl());
    render.deploy("3.8");

    for (environment, namespace, replicas) in OVERLAYS {
        let live = render.workspace.live(environment);
        let deployment = render.live_file(
            environment,
            &format!("{namespace}/Deployment.apps/{environment}-web.yaml"),
        );
        assert!(
            deployment.contains("image: mirror.example/pause:3.8")
                && deployment.contains(&format!("replicas: {replicas}")),
            "{deployment}"
        );
        let config_map = generated_config_map(&live, namespace, environment);
        assert!(
            deployment.contains(&format!("name: {}", config_map.trim_end_matches(".yaml"))),
            "the Deployment uses the hash-suffixed ConfigMap {config_map}:\n{deployment}"
        );
        let data = render.live_file(environment, &format!("{namespace}/ConfigMap/{config_map}"));
        assert!(
            data.contains("GREETING: hello") && data.contains(&format!("MODE: {environment}")),
            "{data}"
        );
        assert!(
            live.join(format!("{namespace}/Service/{environment}-web.yaml"))
                .is_file()
        );
        assert!(
            live.join(format!("_cluster/Namespace/{namespace}.yaml"))
                .is_file()
        );
        render.take_observed(environment);
    }

    let counts: Vec<usize> = OVERLAYS
        .iter()
        .map(|(environment, ..)| render.workspace.journal(environment).len())
        .collect();
    kustomize_fixture(&render.workspace.repo, "3.9", OVERLAYS);
    render.workspace.repo.commit("pause 3.9 in the base");
    assert_exit(&render.workspace.run(&["run", "--once"]), 0);

    for ((environment, namespace, _), before) in OVERLAYS.iter().zip(counts) {
        assert_eq!(
            render.take_observed(environment),
            [
                "mirror.example/pause:3.8 mirror.example/pause:3.9",
                "mirror.example/pause:3.9 -"
            ],
            "{environment}: a canary of the new image beside the stable one, then promoted"
        );
        assert_eq!(
            event_names(&render.workspace.journal(environment)[before..]),
            [
                "rollout_started",
                "step_started 50",
                "step_passed 50",
                "step_started 100",
                "promoted",
                "healthy"
            ],
            "{environment}"
        );
        let deployment = render.live_file(
            environment,
            &format!("{namespace}/Deployment.apps/{environment}-web.yaml"),
        );
        assert!(
            deployment.contains("image: mirror.example/pause:3.9"),
            "{deployment}"
        );
    }
}

#[test]
fn a_bad_patch_rejects_the_revision_with_kustomizes_message_and_changes_nothing() {
    let render = RenderWorkspace::new(&test_kubectl());
    render.deploy("3.8");
    let before = tree(&render.workspace.path("live"));

    render.workspace.repo.write(
        "overlays/production/replicas.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\nspec:\n  replicas: 9\n",
    );
    kustomize_fixture(&render.workspace.repo, "3.9", &[]);
    let bad = render
        .workspace
        .repo
        .commit("patch a Deployment that does not exist");
    let output = render.workspace.run(&["run", "--once"]);
    assert_ne!(output.status.code(), Some(0), "{}", stderr(&output));

    let problems: Vec<String> = render
        .workspace
        .journal("production")
        .iter()
        .filter_map(|record| match &record.event {
            Event::Rejected { revision, problems } if revision.0 == bad => Some(problems.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .starts_with("render `kubectl kustomize overlays/production`: exited with status 1")
            && problems[0].contains("api"),
        "kustomize's own message, naming the command: {problems:?}"
    );
    let after = tree(&render.workspace.path("live"));
    let production_changes: Vec<String> = changed_paths(&before, &after)
        .into_iter()
        .filter(|path| path.starts_with("production/"))
        .collect();
    assert!(production_changes.is_empty(), "{production_changes:?}");

    let validate = render.workspace.run(&["validate"]);
    assert_exit(&validate, 1);
    let text = stdout(&validate);
    assert!(
        text.contains("invalid: production at")
            && text.contains("render `kubectl kustomize overlays/production`")
            && text.contains("api"),
        "{text}"
    );
}

/// A kustomize that counts its runs, then hands over to `kubectl kustomize`.
fn counting_kustomize(dir: &Path, kubectl: &Path) -> (PathBuf, PathBuf) {
    let log = dir.join("kustomize-runs");
    let binary = dir.join("kustomize");
    script(
        &binary,
        &format!(
            "#!/bin/sh\necho \"$*\" >> {log}\ncase \"$1\" in\n  build) exec {kubectl} kustomize \"$2\" ;;\n  version) exec {kubectl} version --client ;;\nesac\nexit 2\n",
            log = log.display(),
            kubectl = kubectl.display()
        ),
    );
    (binary, log)
}

fn runs(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn an_unchanged_revision_is_rendered_once_across_passes_processes_and_commands() {
    let tools = tempfile::tempdir().expect("tempdir");
    let (binary, log) = counting_kustomize(tools.path(), &test_kubectl());
    let render = RenderWorkspace::new(&binary);
    let first = render.deploy("3.8");
    let mut first_runs = runs(&log);
    first_runs.sort();
    assert_eq!(
        first_runs,
        [
            "build overlays/production",
            "build overlays/staging",
            "version"
        ],
        "one version query, then one render per environment"
    );

    fs::write(&log, "").expect("clear log");
    assert_exit(&render.workspace.run(&["run", "--once"]), 0);
    assert_exit(&render.workspace.run(&["diff"]), 0);
    assert_exit(&render.workspace.run(&["validate"]), 0);
    assert_exit(&render.workspace.run(&["diff", "--against", &first]), 0);
    assert_eq!(
        runs(&log),
        Vec::<String>::new(),
        "everything came from the cache"
    );

    kustomize_fixture(&render.workspace.repo, "3.9", OVERLAYS);
    let second = render.workspace.repo.commit("pause 3.9");
    let diff_staging = || {
        render.workspace.run(&[
            "diff",
            "--env",
            "staging",
            "--against",
            &first,
            "--rev",
            &second,
        ])
    };
    let diff = diff_staging();
    assert_exit(&diff, 1);
    let text = stdout(&diff);
    assert!(
        text.contains("-        image: mirror.example/pause:3.8")
            && text.contains("+        image: mirror.example/pause:3.9"),
        "both revisions rendered and compared:\n{text}"
    );
    assert_eq!(
        runs(&log),
        ["build overlays/staging"],
        "only the new tree is rendered"
    );
    assert_exit(&diff_staging(), 1);
    assert_eq!(runs(&log), ["build overlays/staging"], "and only once");
}

/// An operator's plugin: what it does depends on its first argument.
const PLUGIN: &str = r##"#!/bin/sh
mode="$1"; path="$2"
case "$mode" in
  env)
    echo "apiVersion: v1"
    echo "kind: ConfigMap"
    echo "metadata:"
    echo "  name: seen"
    echo "data:"
    tr '\0' '\n' < /proc/$$/environ | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/  \1: "set"/p'
    echo "  FOLDER: \"$path\""
    echo "  CWD_HAS_BASE: \"$(test -d base && echo yes || echo no)\""
    ;;
  fail)
    echo "values.yaml: key 'image' is required" >&2
    exit 3
    ;;
  garbage)
    echo "kind: [unclosed"
    ;;
  huge)
    yes "# padding padding padding padding" | head -c 3000000
    ;;
  hang)
    # Part of the scenario: a plugin that hangs, with a child that must die with it.
    sleep 300 &
    echo $! > "$PIDFILE"
    wait
    ;;
esac
"##;

#[test]
fn plugin_commands_see_only_allowed_variables_and_each_failure_is_named() {
    let workspace = Workspace::new();
    let plugin = workspace.path("plugin.sh");
    script(&plugin, PLUGIN);
    let pidfile = workspace.path("hang.pid");
    let mut config = format!(
        "[repo]\nurl = \"{}\"\n\n[state]\ndir = \"state\"\n",
        workspace.repo.dir.display()
    );
    for (mode, extra) in [
        ("env", "env = [\"GITOPSD_TEST_PASSED\"]"),
        ("fail", ""),
        ("garbage", ""),
        ("huge", "max_output_bytes = 1048576"),
        ("hang", "timeout = \"1s\", env = [\"PIDFILE\"]"),
    ] {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(", {extra}")
        };
        config.push_str(&format!(
            "\n[[environment]]\nname = \"{mode}\"\npath = \"envs/{mode}\"\nrender = {{ kind = \"command\", command = [\"{plugin}\", \"{mode}\", \"{{path}}\"]{extra} }}\ntarget = {{ type = \"directory\", path = \"live/{mode}\" }}\nallow_empty = true\n",
            plugin = plugin.display()
        ));
    }
    fs::write(&workspace.config, config).expect("config");
    workspace.repo.write("base/README.md", "a folder\n");
    workspace.repo.commit("one");

    let output = workspace
        .gitopsd(&["validate"])
        .env("GITOPSD_TEST_PASSED", "yes")
        .env("GITOPSD_TEST_SECRET", "no")
        .env("PIDFILE", &pidfile)
        .output()
        .expect("gitopsd runs");
    assert_exit(&output, 1);
    let text = stdout(&output);
    assert!(text.starts_with("ok: env at"), "{text}");
    assert!(
        text.contains("render `plugin.sh fail envs/fail`: exited with status 3: values.yaml: key 'image' is required"),
        "{text}"
    );
    assert!(
        text.contains("render `plugin.sh garbage envs/garbage`: document 1"),
        "the output is parsed like a manifest file named after the command:\n{text}"
    );
    assert!(
        text.contains("printed more than 1048576 bytes (render.max_output_bytes)"),
        "{text}"
    );
    assert!(
        text.contains("did not finish within 1s (render.timeout)"),
        "{text}"
    );
    let sleeper = fs::read_to_string(&pidfile).expect("the hanging plugin started a child");
    assert!(
        wait_for(std::time::Duration::from_secs(5), || process_gone(&sleeper)),
        "the plugin's whole process group is killed, its child too"
    );

    let output = workspace
        .gitopsd(&["run", "--once"])
        .env("GITOPSD_TEST_PASSED", "yes")
        .env("GITOPSD_TEST_SECRET", "no")
        .output()
        .expect("gitopsd runs");
    let seen = fs::read_to_string(workspace.live("env").join("default/ConfigMap/seen.yaml"))
        .unwrap_or_else(|e| panic!("{e}\n{}", stderr(&output)));
    let mut variables: Vec<&str> = seen
        .lines()
        .filter(|line| line.ends_with(": set"))
        .map(|line| line.trim().trim_end_matches(": set"))
        .collect();
    variables.sort_unstable();
    assert_eq!(variables, ["GITOPSD_TEST_PASSED", "HOME", "PATH"], "{seen}");
    assert!(seen.contains("FOLDER: envs/env"), "{seen}");
    assert!(
        seen.contains("CWD_HAS_BASE: \"yes\""),
        "the whole tree is unpacked around the command:\n{seen}"
    );
    let leftovers: Vec<_> = fs::read_dir(workspace.path("state/render-tmp"))
        .map(|entries| entries.collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_program_inside_the_repository_runs_only_when_allowed() {
    let workspace = Workspace::new();
    let text = |allow: &str| {
        format!(
            "[repo]\nurl = \"{}\"\n\n[state]\ndir = \"state\"\n\n[[environment]]\nname = \"web\"\npath = \"envs/web\"\nrender = {{ kind = \"command\", command = [\"./render.sh\", \"{{path}}\"]{allow} }}\ntarget = {{ type = \"directory\", path = \"live/web\" }}\n",
            workspace.repo.dir.display()
        )
    };
    fs::write(&workspace.config, text("")).expect("config");
    workspace.repo.write(
        "render.sh",
        "#!/bin/sh\nprintf 'apiVersion: v1\\nkind: ConfigMap\\nmetadata:\\n  name: from-repo\\n'\n",
    );
    workspace.repo.write("envs/web/.keep", "");
    script(
        &workspace.repo.dir.join("render.sh"),
        &fs::read_to_string(workspace.repo.dir.join("render.sh")).expect("script"),
    );
    workspace.repo.commit("a render script in the repository");

    let refused = workspace.run(&["validate"]);
    assert_exit(&refused, 1);
    assert!(
        stdout(&refused).contains(
            "environment[0].render.command: \"./render.sh\" runs a program from the repository"
        ),
        "{}{}",
        stdout(&refused),
        stderr(&refused)
    );

    fs::write(&workspace.config, text(", allow_repo_commands = true")).expect("config");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert!(
        workspace
            .live("web")
            .join("default/ConfigMap/from-repo.yaml")
            .is_file()
    );
}

/// A stand-in for helm (none is installed here): it checks the arguments gitopsd passes and
/// prints a ConfigMap from the values file.
const HELM: &str = r#"#!/bin/sh
case "$1" in
  version) echo "v3.99.0+stand-in"; exit 0 ;;
esac
expected="template web charts/web --namespace shop --values values/common.yaml --values values/prod.yaml"
if [ "$*" != "$expected" ]; then
  echo "unexpected arguments: $*" >&2
  exit 2
fi
test -f charts/web/Chart.yaml || { echo "no chart in $(pwd)" >&2; exit 2; }
echo "apiVersion: v1"
echo "kind: ConfigMap"
echo "metadata:"
echo "  name: web"
echo "  namespace: shop"
echo "data:"
cat values/common.yaml values/prod.yaml | sed 's/^/  /'
"#;

#[test]
fn helm_template_gets_the_release_chart_namespace_and_values_files() {
    let workspace = Workspace::new();
    let helm = workspace.path("helm");
    script(&helm, HELM);
    fs::write(
        &workspace.config,
        format!(
            "[repo]\nurl = \"{}\"\n\n[state]\ndir = \"state\"\n\n[[environment]]\nname = \"prod\"\npath = \"charts/web\"\nnamespace = \"shop\"\nrender = {{ kind = \"helm\", binary = \"{}\", chart = \"charts/web\", values = [\"values/common.yaml\", \"values/prod.yaml\"], release = \"web\" }}\ntarget = {{ type = \"directory\", path = \"live/prod\" }}\n",
            workspace.repo.dir.display(),
            helm.display()
        ),
    )
    .expect("config");
    workspace.repo.write(
        "charts/web/Chart.yaml",
        "apiVersion: v2\nname: web\nversion: 1.0.0\n",
    );
    workspace.repo.write("values/common.yaml", "color: blue\n");
    workspace.repo.write("values/prod.yaml", "size: large\n");
    workspace.repo.commit("chart");

    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    let live = fs::read_to_string(workspace.live("prod").join("shop/ConfigMap/web.yaml"))
        .expect("the rendered ConfigMap is live");
    assert!(
        live.contains("color: blue") && live.contains("size: large"),
        "{live}"
    );
}

#[test]
fn a_failed_rendered_revision_reverts_from_the_cache_and_the_revert_commit_restores_the_base() {
    let tools = tempfile::tempdir().expect("tempdir");
    let (binary, log) = counting_kustomize(tools.path(), &test_kubectl());
    let render = RenderWorkspace::new(&binary);
    let bare = render.workspace.bare_remote();
    let push = || {
        git(
            &render.workspace.repo.dir,
            &["push", "-q", "origin", "main"],
        )
    };
    kustomize_fixture(&render.workspace.repo, "3.8", OVERLAYS);
    let healthy = render.workspace.repo.commit("pause 3.8");
    push();
    assert_exit(&render.workspace.run(&["run", "--once"]), 0);
    let live_before = tree(&render.workspace.live("production"));

    // Production's canary of 3.9 fails its check; staging is fine with it.
    fs::write(render.workspace.path("fail-production"), "pause:3.9$").expect("pattern");
    kustomize_fixture(&render.workspace.repo, "3.9", OVERLAYS);
    render.workspace.repo.write(
        "overlays/staging/replicas.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3\n",
    );
    render
        .workspace
        .repo
        .commit("pause 3.9, staging at 3 replicas");
    push();
    fs::write(&log, "").expect("clear log");
    let output = render.workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);

    assert_eq!(
        tree(&render.workspace.live("production")),
        live_before,
        "production is back to the healthy render, byte for byte"
    );
    let mut rendered = runs(&log);
    rendered.sort();
    assert_eq!(
        rendered,
        ["build overlays/production", "build overlays/staging"],
        "the revert took the healthy render from the cache"
    );
    let bare_git = |args: &[&str]| {
        let mut full = vec!["--git-dir", bare.to_str().expect("utf-8 path")];
        full.extend_from_slice(args);
        git(render.workspace.root.path(), &full)
    };
    assert!(
        bare_git(&["log", "-1", "--format=%s", "main"])
            .starts_with("Revert the inputs of overlays/production (rendered) to"),
        "{}",
        bare_git(&["log", "-1", "--format=%B", "main"])
    );
    assert_eq!(
        bare_git(&["rev-parse", "main:base"]),
        bare_git(&["rev-parse", &format!("{healthy}:base")]),
        "the revert commit puts the shared base back"
    );
    assert_eq!(
        bare_git(&["rev-parse", "main:overlays/production"]),
        bare_git(&["rev-parse", &format!("{healthy}:overlays/production")]),
    );
    assert!(
        bare_git(&["show", "main:overlays/staging/replicas.yaml"]).contains("replicas: 3"),
        "another environment's own folder is left alone"
    );
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_kustomize_overlays_roll_out_through_a_canary_on_a_real_cluster() {
    if crate::e2e::skipped_without_controllers(crate::e2e::READY_PODS) {
        return;
    }
    let mut cluster = crate::e2e::Cluster::new();
    let namespaces: Vec<String> = ["stg", "prd"]
        .iter()
        .map(|tag| cluster.namespace(&format!("kz-{tag}")))
        .collect();
    let overlays: Vec<(&str, &str, u32)> = vec![
        ("staging", namespaces[0].as_str(), 2),
        ("production", namespaces[1].as_str(), 4),
    ];
    let workspace = Workspace::new();
    let mut config = format!(
        "[repo]\nurl = \"{}\"\nbranch = \"main\"\n\n[state]\ndir = \"state\"\n",
        workspace.repo.dir.display()
    );
    for (environment, _, _) in &overlays {
        // No `namespace` in the config: the environment's applyset parent goes to `default`.
        cluster.delete_at_end("default", &format!("configmap/gitopsd-{environment}"));
        config.push_str(&format!(
            "\n[[environment]]\nname = \"{environment}\"\npath = \"overlays/{environment}\"\nrender = {{ kind = \"kustomize\", binary = \"{kubectl}\" }}\ntarget = {{ type = \"kubernetes\", kubeconfig = \"{kubeconfig}\" }}\n{rollout}",
            kubectl = cluster.kubectl.display(),
            kubeconfig = cluster.kubeconfig.display(),
            rollout = crate::e2e::rollout("[50, 100]"),
        ));
    }
    fs::write(&workspace.config, config).expect("config");
    kustomize_fixture(&workspace.repo, "3.8", &overlays);
    workspace.repo.commit("pause 3.8");
    let first = workspace.run(&["run", "--once"]);
    assert_exit(&first, 0);

    let deployment = |environment: &str, namespace: &str| {
        cluster
            .get(Some(namespace), &format!("deployment/{environment}-web"))
            .unwrap_or_else(|| panic!("{environment}-web in {namespace}"))
    };
    for (environment, namespace, replicas) in &overlays {
        let live = deployment(environment, namespace);
        assert_eq!(live["spec"]["replicas"], *replicas);
        assert_eq!(
            live["spec"]["template"]["spec"]["containers"][0]["image"],
            "mirror.example/pause:3.8"
        );
        let config_map =
            live["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"]
                .as_str()
                .expect("configMapRef")
                .to_string();
        assert!(config_map.starts_with(&format!("{environment}-web-config-")));
        let data = cluster
            .get(Some(namespace), &format!("configmap/{config_map}"))
            .expect("the generated ConfigMap");
        assert_eq!(data["data"]["MODE"], *environment);
    }

    kustomize_fixture(&workspace.repo, "3.9", &overlays);
    workspace.repo.commit("pause 3.9 in the base");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    for (environment, namespace, replicas) in &overlays {
        let records = workspace.journal(environment);
        let started = crate::e2e::events(&records, "rollout_started");
        let Some(Event::RolloutStarted { canaries, .. }) = started.last() else {
            panic!("{environment}: no rollout: {records:?}");
        };
        assert_eq!(
            canaries,
            &[format!("Deployment.apps {namespace}/{environment}-web")],
            "{environment}"
        );
        let steps: Vec<u8> = crate::e2e::events(&records, "step_passed")
            .iter()
            .filter_map(|event| match event {
                Event::StepPassed { weight, .. } => Some(*weight),
                _ => None,
            })
            .collect();
        assert_eq!(steps, [50], "{environment}");
        let live = deployment(environment, namespace);
        assert_eq!(live["spec"]["replicas"], *replicas);
        assert_eq!(
            live["spec"]["template"]["spec"]["containers"][0]["image"],
            "mirror.example/pause:3.9"
        );
        assert!(
            cluster
                .get(
                    Some(namespace),
                    &format!("deployment/{environment}-web-canary")
                )
                .is_none()
        );
    }
    assert_exit(&workspace.run(&["diff"]), 0);
}

#[test]
fn a_killed_gitopsd_takes_its_render_along_and_the_next_start_removes_the_folder() {
    let workspace = Workspace::new();
    let plugin = workspace.path("slow.sh");
    let pidfile = workspace.path("slow.pid");
    script(
        &plugin,
        &format!(
            // Part of the scenario: a render tool that never ends on its own.
            "#!/bin/sh\necho $$ > {}\nexec sleep 300\n",
            pidfile.display()
        ),
    );
    let config = |command: &Path| {
        format!(
            "[repo]\nurl = \"{}\"\n\n[state]\ndir = \"state\"\n\n[[environment]]\nname = \"web\"\npath = \"envs/web\"\nrender = {{ kind = \"command\", command = [\"{}\"], timeout = \"10m\" }}\ntarget = {{ type = \"directory\", path = \"live/web\" }}\n",
            workspace.repo.dir.display(),
            command.display()
        )
    };
    fs::write(&workspace.config, config(&plugin)).expect("config");
    workspace
        .repo
        .write("envs/web/app.yaml", "kind: ConfigMap\n");
    workspace.repo.commit("one");

    let mut daemon = workspace.spawn(&["run", "--once"]);
    assert!(
        wait_for(std::time::Duration::from_secs(30), || pidfile.is_file()),
        "the render started"
    );
    let work = workspace.path("state/render-tmp");
    assert_eq!(fs::read_dir(&work).expect("work folder").count(), 1);
    daemon.signal(libc::SIGKILL);
    daemon.wait_timeout(std::time::Duration::from_secs(10));
    let tool = fs::read_to_string(&pidfile).expect("pid");
    let gone = wait_for(std::time::Duration::from_secs(5), || process_gone(&tool));
    if !gone {
        // Leave nothing behind, even when failing.
        let pid: i32 = tool.trim().parse().expect("a pid");
        // SAFETY: kill(2) on a pid this test's plugin wrote; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(gone, "the render tool dies with gitopsd");
    assert_eq!(
        fs::read_dir(&work).expect("work folder").count(),
        1,
        "the folder outlives the kill"
    );

    let quick = workspace.path("quick.sh");
    script(
        &quick,
        "#!/bin/sh\nprintf 'apiVersion: v1\\nkind: ConfigMap\\nmetadata:\\n  name: web\\n'\n",
    );
    fs::write(&workspace.config, config(&quick)).expect("config");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert_eq!(
        fs::read_dir(&work).expect("work folder").count(),
        0,
        "the next start removed it"
    );
}
