//! Rendered environments: kustomize, helm or a plugin command turns a revision's tree into
//! manifests, run sandboxed in a private folder, with the output cached by tree, config and
//! tool version.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::model::Revision;
use crate::source::{GitSource, SourceError};

mod files;
mod run;

use run::{OutputError, RunError, Sandbox, run};

/// How long `<tool> version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Held while a tool's version is asked and remembered.
static VERSION_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Folder under the state directory holding rendered output.
const CACHE_FOLDER: &str = "render-cache";
/// Folder under the state directory holding the trees renders run in.
const WORK_FOLDER: &str = "render-tmp";

/// `render = { … }` of an environment.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderConfig {
    pub tool: Tool,
    /// How long one render may run.
    pub timeout: Duration,
    /// Variables of gitopsd's own environment the tool also sees, besides `PATH` and `HOME`.
    pub env: Vec<String>,
    /// Largest output accepted.
    pub max_output_bytes: u64,
    /// Largest revision tree unpacked for a render.
    pub max_tree_bytes: u64,
    /// Programs inside the repository may run (the repository is otherwise only data).
    pub allow_repo_commands: bool,
    /// `state.render_cache_max_bytes`: what the render cache may hold.
    pub cache_max_bytes: u64,
    /// Folders a revert commit leaves alone: the other environments' own folders.
    pub revert_excluded: Vec<String>,
}

/// Which tool renders.
#[derive(Debug, Clone, PartialEq)]
pub enum Tool {
    /// `kustomize build <path>`, or `kubectl kustomize <path>` when `binary` is a kubectl or
    /// is unset and no `kustomize` is on the PATH.
    Kustomize { binary: Option<String> },
    /// `helm template <release> <chart> --namespace <namespace> --values <each>`.
    Helm {
        binary: Option<String>,
        chart: String,
        values: Vec<String>,
        release: String,
        namespace: String,
    },
    /// Any program printing manifests; `{path}` in an argument is the environment's folder.
    Command { argv: Vec<String> },
}

impl Tool {
    /// The program as configured: a name looked up on the PATH, an absolute path, or a path
    /// inside the repository.
    pub fn program(&self) -> &str {
        match self {
            Tool::Kustomize { binary } => binary.as_deref().unwrap_or("kustomize"),
            Tool::Helm { binary, .. } => binary.as_deref().unwrap_or("helm"),
            Tool::Command { argv } => argv.first().map_or("", String::as_str),
        }
    }

    /// The config key naming the program, for config errors.
    pub fn program_key(&self) -> &'static str {
        match self {
            Tool::Command { .. } => "command",
            _ => "binary",
        }
    }
}

/// True for a program given as a path inside the repository (`./render.sh`, `bin/tool`): the
/// render would run code from git.
pub fn is_repo_program(program: &str) -> bool {
    !program.starts_with('/') && program.contains('/')
}

/// A resolved command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Arguments that print the tool's version; `None` when the program is identified by its
    /// content instead (plugin commands).
    pub version_args: Option<Vec<String>>,
}

impl Invocation {
    /// The command line as shown in problems and logs.
    pub fn display(&self) -> String {
        let name = self.program.file_name().map_or_else(
            || self.program.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        );
        std::iter::once(name)
            .chain(self.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// How `tool` is invoked for the environment folder `path`, with `program` already resolved.
pub fn invocation(tool: &Tool, path: &str, program: PathBuf) -> Invocation {
    match tool {
        Tool::Kustomize { .. } => {
            let is_kubectl = program
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("kubectl"));
            if is_kubectl {
                Invocation {
                    program,
                    args: vec!["kustomize".into(), path.into()],
                    version_args: Some(vec!["version".into(), "--client".into()]),
                }
            } else {
                Invocation {
                    program,
                    args: vec!["build".into(), path.into()],
                    version_args: Some(vec!["version".into()]),
                }
            }
        }
        Tool::Helm {
            chart,
            values,
            release,
            namespace,
            ..
        } => {
            let mut args = vec![
                "template".into(),
                release.clone(),
                chart.clone(),
                "--namespace".into(),
                namespace.clone(),
            ];
            for file in values {
                args.extend(["--values".into(), file.clone()]);
            }
            Invocation {
                program,
                args,
                version_args: Some(vec!["version".into(), "--short".into()]),
            }
        }
        Tool::Command { argv } => Invocation {
            program,
            args: argv
                .iter()
                .skip(1)
                .map(|arg| arg.replace("{path}", path))
                .collect(),
            version_args: None,
        },
    }
}

/// The PATH a tool sees: gitopsd's own, without relative entries (they would resolve inside
/// the unpacked repository).
pub fn sanitized_path(path: Option<&std::ffi::OsStr>) -> Vec<PathBuf> {
    path.map(|path| {
        std::env::split_paths(path)
            .filter(|dir| dir.is_absolute())
            .collect()
    })
    .unwrap_or_default()
}

/// Output a hook command may print before it is stopped.
const COMMAND_MAX_OUTPUT: u64 = 64 * 1024 * 1024;

/// Runs a command (a hook) under the rules render tools run under: no shell, stdin closed, an
/// environment holding only PATH (gitopsd's, without relative entries), HOME (`dir`) and
/// `env`, its own process group killed as a whole when it ends, death with gitopsd, and
/// `timeout`. Says why it failed as an operator reads it (exit status and stderr's end).
pub async fn run_command(
    argv: &[String],
    dir: &Path,
    env: Vec<(String, std::ffi::OsString)>,
    timeout: Duration,
) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("no program to run".into());
    };
    let invocation = Invocation {
        program: PathBuf::from(program),
        args: args.to_vec(),
        version_args: None,
    };
    let search_path = sanitized_path(std::env::var_os("PATH").as_deref());
    let sandbox = Sandbox {
        dir: dir.to_path_buf(),
        path: std::env::join_paths(&search_path).unwrap_or_default(),
        env,
    };
    match run(&invocation, &sandbox, timeout, COMMAND_MAX_OUTPUT).await {
        Ok(_) => Ok(()),
        Err(RunError::TimedOut { timeout }) => Err(format!(
            "did not finish within {} (timeout); killed",
            humantime::format_duration(timeout)
        )),
        Err(RunError::Output {
            problem: OutputError::TooLarge { .. },
            tail,
        }) => Err(format!(
            "printed more than {COMMAND_MAX_OUTPUT} bytes; killed{tail}"
        )),
        Err(error) => Err(error.to_string()),
    }
}

/// A render that failed: the revision is rejected with this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderFailure {
    /// The command line, as shown.
    pub command: String,
    pub message: String,
}

/// Why no manifests came out of a render.
#[derive(Debug, Error)]
pub enum RenderError {
    /// The tool failed on this revision (or could not run): the revision is rejected.
    #[error("render `{}`: {}", .0.command, .0.message)]
    Failed(RenderFailure),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("render cache {}: {source}", path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("render worker failed: {0}")]
    Worker(#[from] crate::blocking::Stopped),
}

/// Manifests a render printed.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The command line, used as the file name of problems in the output.
    pub command: String,
    pub output: Vec<u8>,
    /// True when the output came from the cache and no tool ran.
    pub cached: bool,
}

/// Renders environments, caching output under the state directory.
#[derive(Debug, Clone)]
pub struct Renderer {
    cache_dir: PathBuf,
    work_dir: PathBuf,
    /// Bytes the cache may hold; the least recently used entries go first.
    cache_max_bytes: u64,
}

impl Renderer {
    pub fn new(state_dir: &Path, cache_max_bytes: u64) -> Self {
        Self {
            cache_dir: state_dir.join(CACHE_FOLDER),
            work_dir: state_dir.join(WORK_FOLDER),
            cache_max_bytes,
        }
    }

    /// Renders the environment folder `path` of `revision`, from the cache when this tree,
    /// config and tool version were rendered before.
    pub async fn render(
        &self,
        source: &GitSource,
        config: &RenderConfig,
        path: &str,
        revision: &Revision,
    ) -> Result<Rendered, RenderError> {
        let tree = blocking("reading the revision's tree id", {
            let source = source.clone();
            let revision = revision.clone();
            move || source.tree_id(&revision).map_err(RenderError::from)
        })
        .await?;
        let work = self.work_folder().await?;
        let job = Job {
            source,
            config,
            path,
            revision,
            tree: &tree,
            dir: work.path(),
        };
        let rendered = self.render_in(job).await;
        // Removing the unpacked tree is a recursive delete: not on an async worker.
        let removed =
            crate::blocking::off_thread("removing the render folder", move || drop(work)).await;
        let rendered = rendered?;
        removed?;
        Ok(rendered)
    }

    /// Renders `job` in its work folder: from the cache, or by unpacking the tree and running
    /// the tool.
    async fn render_in(&self, job: Job<'_>) -> Result<Rendered, RenderError> {
        let config = job.config;
        let search_path = sanitized_path(std::env::var_os("PATH").as_deref());
        let program = resolve_program(config, &search_path, job.dir);
        let invocation = invocation(&config.tool, job.path, program);
        let command = invocation.display();
        let fail = |error: RunError| {
            RenderError::Failed(RenderFailure {
                command: command.clone(),
                message: error.to_string(),
            })
        };
        let sandbox = Sandbox {
            dir: job.dir.to_path_buf(),
            path: std::env::join_paths(&search_path).unwrap_or_default(),
            env: config
                .env
                .iter()
                .filter_map(|name| Some((name.clone(), std::env::var_os(name)?)))
                .collect(),
        };
        let version = if is_repo_program(config.tool.program()) {
            // Inside the repository: the tree id already names its content.
            String::new()
        } else {
            self.version(&invocation, &sandbox).await.map_err(fail)?
        };
        let key = cache_key(job.tree, config, &invocation, &sandbox.env, &version);
        let entry = self.cache_dir.join(format!("{key}.yaml"));
        if let Some(output) = self.cached(&entry).await {
            return Ok(Rendered {
                command,
                output,
                cached: true,
            });
        }
        blocking("unpacking the revision for a render", {
            let source = job.source.clone();
            let revision = job.revision.clone();
            let dest = job.dir.to_path_buf();
            let max = config.max_tree_bytes;
            move || {
                source
                    .materialize(&revision, &dest, max)
                    .map_err(RenderError::from)
            }
        })
        .await?;
        let output = run(
            &invocation,
            &sandbox,
            config.timeout,
            config.max_output_bytes,
        )
        .await
        .map_err(fail)?;
        self.store(&entry, &output).await?;
        Ok(Rendered {
            command,
            output,
            cached: false,
        })
    }

    /// A fresh private folder `<pid>-<random>` under the work folder, removed when dropped.
    async fn work_folder(&self) -> Result<tempfile::TempDir, RenderError> {
        let parent = self.work_dir.clone();
        blocking("creating a render folder", move || {
            let cache_error = |source| RenderError::Cache {
                path: parent.clone(),
                source,
            };
            crate::durable::create_dir_all(&parent).map_err(cache_error)?;
            tempfile::Builder::new()
                .prefix(&format!("{}-", std::process::id()))
                .tempdir_in(&parent)
                .map_err(cache_error)
        })
        .await
    }

    /// The tool's version output, remembered by the program file's path, size and mtime so
    /// that an unchanged tool is not run again, even by the next process.
    async fn version(
        &self,
        invocation: &Invocation,
        sandbox: &Sandbox,
    ) -> Result<String, RunError> {
        let Some(args) = &invocation.version_args else {
            return file_identity(&invocation.program).await;
        };
        let meta = tokio::fs::metadata(&invocation.program)
            .await
            .map_err(|source| RunError::CannotRun {
                program: invocation.program.clone(),
                source,
            })?;
        let stamp = format!(
            "{}\0{}\0{:?}\0{}",
            invocation.program.display(),
            meta.len(),
            meta.modified().ok(),
            args.join(" ")
        );
        let memo = self.cache_dir.join(format!(
            "version-{}",
            hex(&Sha256::digest(stamp.as_bytes()))
        ));
        // Environments render concurrently; one asks, the others read its answer.
        let _one_at_a_time = VERSION_LOCK.lock().await;
        if let Ok(version) = tokio::fs::read_to_string(&memo).await {
            return Ok(version);
        }
        let probe = Invocation {
            program: invocation.program.clone(),
            args: args.clone(),
            version_args: None,
        };
        let output = run(&probe, sandbox, VERSION_TIMEOUT, 64 * 1024)
            .await
            .map_err(|error| RunError::Version(Box::new(error)))?;
        let version = String::from_utf8_lossy(&output).into_owned();
        // Best effort: without the memo the version is asked again next time.
        let _ = write_atomically(&memo, version.as_bytes()).await;
        Ok(version)
    }

    async fn cached(&self, entry: &Path) -> Option<Vec<u8>> {
        let output = tokio::fs::read(entry).await.ok()?;
        // Touched so that eviction takes the least recently used first.
        let entry = entry.to_path_buf();
        let _ = crate::blocking::off_thread("touching a render cache file", move || {
            files::touch(&entry)
        })
        .await;
        Some(output)
    }

    async fn store(&self, entry: &Path, output: &[u8]) -> Result<(), RenderError> {
        write_atomically(entry, output)
            .await
            .map_err(|source| RenderError::Cache {
                path: entry.to_path_buf(),
                source,
            })?;
        let dir = self.cache_dir.clone();
        let max = self.cache_max_bytes;
        blocking("evicting old render output", move || {
            files::evict(&dir, max).map_err(|source| RenderError::Cache { path: dir, source })
        })
        .await
    }

    /// Removes work folders left by processes that are gone (a crash, a SIGKILL).
    pub fn clean_stale(&self) -> std::io::Result<usize> {
        files::remove_stale_folders(&self.work_dir)
    }
}

/// The program to run: a repository path inside the unpacked tree, an absolute path as is, a
/// name from the PATH. A kustomize left unset falls back to `kubectl kustomize`.
fn resolve_program(config: &RenderConfig, search_path: &[PathBuf], tree: &Path) -> PathBuf {
    let program = config.tool.program();
    if is_repo_program(program) {
        return tree.join(program);
    }
    if program.starts_with('/') {
        return PathBuf::from(program);
    }
    if let Some(found) = files::executable_in(program, search_path) {
        return found;
    }
    if matches!(config.tool, Tool::Kustomize { binary: None })
        && let Some(kubectl) = files::executable_in("kubectl", search_path)
    {
        return kubectl;
    }
    PathBuf::from(program)
}

/// One render's inputs, and the private folder it runs in.
struct Job<'a> {
    source: &'a GitSource,
    config: &'a RenderConfig,
    path: &'a str,
    revision: &'a Revision,
    /// The revision's root tree id.
    tree: &'a str,
    dir: &'a Path,
}

/// A plugin program's identity: the hash of its content.
async fn file_identity(program: &Path) -> Result<String, RunError> {
    let bytes = tokio::fs::read(program)
        .await
        .map_err(|source| RunError::CannotRun {
            program: program.to_path_buf(),
            source,
        })?;
    Ok(hex(&Sha256::digest(&bytes)))
}

/// The cache key: what decides a render's output.
fn cache_key(
    tree: &str,
    config: &RenderConfig,
    invocation: &Invocation,
    env: &[(String, std::ffi::OsString)],
    version: &str,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"gitopsd-render-1\0");
    hasher.update(tree.as_bytes());
    hasher.update(b"\0");
    hasher.update(format!("{:?}", config.tool).as_bytes());
    hasher.update(b"\0");
    hasher.update(invocation.display().as_bytes());
    for (name, value) in env {
        hasher.update(b"\0");
        hasher.update(name.as_bytes());
        hasher.update(b"=");
        hasher.update(value.as_encoded_bytes());
    }
    hasher.update(b"\0");
    hasher.update(version.as_bytes());
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a cache file whole ([`crate::durable::write_whole`]), creating the cache folder.
async fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let path = path.to_path_buf();
    let bytes = bytes.to_vec();
    crate::blocking::off_thread("writing a render cache file", move || {
        crate::durable::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
        crate::durable::write_whole(&path, &bytes)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Runs file or git work for a render off the async workers ([`crate::blocking::off_thread`]).
async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, RenderError> + Send + 'static,
) -> Result<T, RenderError> {
    crate::blocking::off_thread(what, work).await?
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests make their fixtures with files and git
mod tests {
    use super::*;

    fn kustomize(binary: Option<&str>) -> Tool {
        Tool::Kustomize {
            binary: binary.map(Into::into),
        }
    }

    #[test]
    fn kustomize_runs_build_and_kubectl_runs_its_kustomize() {
        let own = invocation(
            &kustomize(None),
            "overlays/prod",
            "/usr/bin/kustomize".into(),
        );
        assert_eq!(own.args, ["build", "overlays/prod"]);
        assert_eq!(
            own.version_args.as_deref(),
            Some(&["version".to_string()][..])
        );
        let kubectl = invocation(&kustomize(None), "overlays/prod", "/opt/kubectl".into());
        assert_eq!(kubectl.args, ["kustomize", "overlays/prod"]);
        assert_eq!(kubectl.display(), "kubectl kustomize overlays/prod");
    }

    #[test]
    fn helm_gets_release_chart_namespace_and_each_values_file() {
        let tool = Tool::Helm {
            binary: None,
            chart: "charts/web".into(),
            values: vec!["values/common.yaml".into(), "values/prod.yaml".into()],
            release: "web".into(),
            namespace: "shop".into(),
        };
        let helm = invocation(&tool, "env/prod", "/usr/bin/helm".into());
        assert_eq!(
            helm.args,
            [
                "template",
                "web",
                "charts/web",
                "--namespace",
                "shop",
                "--values",
                "values/common.yaml",
                "--values",
                "values/prod.yaml"
            ]
        );
    }

    #[test]
    fn commands_get_the_folder_in_place_of_the_placeholder() {
        let tool = Tool::Command {
            argv: vec!["render".into(), "--dir={path}".into(), "{path}".into()],
        };
        let command = invocation(&tool, "envs/a", "/usr/local/bin/render".into());
        assert_eq!(command.args, ["--dir=envs/a", "envs/a"]);
        assert_eq!(command.version_args, None);
    }

    #[test]
    fn only_relative_paths_are_repository_programs() {
        assert!(is_repo_program("./render.sh"));
        assert!(is_repo_program("tools/render"));
        assert!(!is_repo_program("/usr/bin/kustomize"));
        assert!(!is_repo_program("kustomize"));
    }

    #[test]
    fn relative_path_entries_are_dropped() {
        let path = std::ffi::OsString::from("/usr/bin:.:bin::/opt/tools");
        assert_eq!(
            sanitized_path(Some(&path)),
            [PathBuf::from("/usr/bin"), PathBuf::from("/opt/tools")]
        );
    }

    #[test]
    fn the_key_changes_with_tree_config_environment_and_version() {
        let config = RenderConfig {
            tool: kustomize(None),
            timeout: Duration::from_secs(60),
            env: Vec::new(),
            max_output_bytes: 1 << 20,
            max_tree_bytes: 1 << 20,
            allow_repo_commands: false,
            cache_max_bytes: 1 << 20,
            revert_excluded: Vec::new(),
        };
        let call = invocation(&config.tool, "overlays/a", "/usr/bin/kustomize".into());
        let base = cache_key("tree1", &config, &call, &[], "v5");
        assert_eq!(base, cache_key("tree1", &config, &call, &[], "v5"));
        assert_ne!(base, cache_key("tree2", &config, &call, &[], "v5"));
        assert_ne!(base, cache_key("tree1", &config, &call, &[], "v6"));
        let other = invocation(&config.tool, "overlays/b", "/usr/bin/kustomize".into());
        assert_ne!(base, cache_key("tree1", &config, &other, &[], "v5"));
        let env = [("HELM_X".to_string(), "1".into())];
        assert_ne!(base, cache_key("tree1", &config, &call, &env, "v5"));
    }

    #[test]
    fn an_unset_kustomize_falls_back_to_kubectl_on_the_path() {
        use std::os::unix::fs::PermissionsExt as _;
        let bin = tempfile::tempdir().expect("temp dir");
        let kubectl = bin.path().join("kubectl");
        std::fs::write(&kubectl, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let config = |tool| RenderConfig {
            tool,
            timeout: Duration::from_secs(1),
            env: Vec::new(),
            max_output_bytes: 1,
            max_tree_bytes: 1,
            allow_repo_commands: false,
            cache_max_bytes: 1,
            revert_excluded: Vec::new(),
        };
        let dirs = [bin.path().to_path_buf()];
        let tree = Path::new("/work/tree");
        let program = resolve_program(&config(kustomize(None)), &dirs, tree);
        assert_eq!(program, kubectl);
        assert_eq!(
            invocation(&kustomize(None), "o/p", program).display(),
            "kubectl kustomize o/p"
        );
        let kustomize_file = bin.path().join("kustomize");
        std::fs::copy(&kubectl, &kustomize_file).expect("copy");
        assert_eq!(
            resolve_program(&config(kustomize(None)), &dirs, tree),
            kustomize_file,
            "a kustomize on the PATH comes first"
        );
        let repo_tool = Tool::Command {
            argv: vec!["./render.sh".into()],
        };
        assert_eq!(
            resolve_program(&config(repo_tool), &dirs, tree),
            Path::new("/work/tree/./render.sh")
        );
    }

    #[test]
    fn folders_of_dead_processes_are_removed_and_live_ones_kept() {
        let state = tempfile::tempdir().expect("temp dir");
        let renderer = Renderer::new(state.path(), 1);
        assert_eq!(renderer.clean_stale().expect("no folder yet"), 0);
        let work = state.path().join(WORK_FOLDER);
        // Pids are below 2^22 on Linux: this one never runs.
        let dead = work.join("99999999-abc");
        let live = work.join(format!("{}-def", std::process::id()));
        for folder in [&dead, &live] {
            std::fs::create_dir_all(folder.join("base")).expect("mkdir");
            std::fs::write(folder.join("base/file.yaml"), "x").expect("write");
        }
        assert_eq!(renderer.clean_stale().expect("cleaned"), 1);
        assert!(!dead.exists());
        assert!(live.join("base/file.yaml").is_file());
    }

    #[test]
    fn eviction_drops_the_least_recently_used_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let now = std::time::SystemTime::now();
        for (name, age) in [("old", 30), ("mid", 20), ("new", 10)] {
            let path = dir.path().join(format!("{name}.yaml"));
            std::fs::write(&path, vec![b'x'; 100]).expect("write");
            let file = std::fs::File::options()
                .append(true)
                .open(&path)
                .expect("open");
            file.set_modified(now - Duration::from_secs(age))
                .expect("set mtime");
        }
        files::evict(dir.path(), 250).expect("evict");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["mid.yaml", "new.yaml"]);
    }
}
