//! `gitopsd init`: a starting config for one repository and one environment, written only
//! after the branch tip was fetched and the environment's folder read, and never over an
//! existing file.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigProblem, DEFAULT_STATE_DIR};
use crate::desired::{DesiredError, load_desired_offline};
use crate::manifest::is_manifest_path;
use crate::source::{GitSource, SourceError};

/// What `init` is asked for (`gitopsd init --repo … --path … --target …`).
#[derive(Debug, Clone)]
pub struct InitRequest {
    pub repo: String,
    pub branch: String,
    pub path: String,
    pub target: InitTarget,
    /// The environment's name; default: the folder's last component.
    pub name: Option<String>,
    /// Kubernetes: the environment's namespace; default: its name.
    pub namespace: Option<String>,
    /// Kubernetes: the kubeconfig; default: the client's own search (in-cluster, `KUBECONFIG`,
    /// `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// Directory: the live folder; default: `/srv/hydrated/<name>` (writable under the unit).
    pub live: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitTarget {
    Kubernetes,
    Directory,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "{0} already exists; gitopsd init never overwrites a config (edit it, or pass another --config)"
    )]
    Exists(PathBuf),
    #[error("the config init would write is not valid:{}", list(.0))]
    Invalid(Vec<ConfigProblem>),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{path:?} holds no files at {revision}; folders with manifests there: {found}")]
    NoFolder {
        path: String,
        revision: String,
        found: String,
    },
    #[error("{0}")]
    Manifests(DesiredError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create a scratch folder for the fetch: {0}")]
    Scratch(std::io::Error),
    #[error("{0}")]
    Stopped(#[from] crate::blocking::Stopped),
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
}

fn list(problems: &[ConfigProblem]) -> String {
    problems.iter().map(|p| format!("\n  {p}")).collect()
}

/// How a folder is turned into objects, as the files in it say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderKind {
    Plain,
    Kustomize,
    Helm,
}

/// What a revision's tree holds, folder by folder.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Survey {
    /// Folders that hold manifest files directly and are not part of a rendered folder.
    pub plain: Vec<String>,
    /// Folders with a `kustomization.yaml` (or `.yml`, or `Kustomization`).
    pub kustomize: Vec<String>,
    /// Helm charts: folders with a `Chart.yaml`.
    pub charts: Vec<String>,
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(folder, _)| folder)
}

fn file_name(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, name)| name)
}

/// Sorts the folders of `paths` (every file of a revision) by what they hold. Hidden folders
/// (`.github/`) and files at the top are left out; a chart's own subfolders (`templates/`) are
/// part of the chart.
pub fn survey(paths: &[String]) -> Survey {
    let visible = |path: &&String| !path.split('/').any(|part| part.starts_with('.'));
    let mut survey = Survey::default();
    for path in paths.iter().filter(visible) {
        match file_name(path) {
            "Chart.yaml" => survey.charts.push(parent(path).to_string()),
            "kustomization.yaml" | "kustomization.yml" | "Kustomization" => {
                survey.kustomize.push(parent(path).to_string());
            }
            _ => {}
        }
    }
    let in_chart = |folder: &str| {
        survey
            .charts
            .iter()
            .any(|chart| folder == chart || folder.starts_with(&format!("{chart}/")))
    };
    let plain: BTreeSet<String> = paths
        .iter()
        .filter(visible)
        .filter(|path| is_manifest_path(path))
        .map(|path| parent(path).to_string())
        .filter(|folder| {
            !folder.is_empty() && !in_chart(folder) && !survey.kustomize.contains(folder)
        })
        .collect();
    survey.plain = plain.into_iter().collect();
    survey
}

impl Survey {
    /// How `folder` is rendered; `None` when no file of the revision is in it.
    pub fn kind_of(&self, folder: &str, paths: &[String]) -> Option<FolderKind> {
        if self.charts.iter().any(|chart| chart == folder) {
            Some(FolderKind::Helm)
        } else if self.kustomize.iter().any(|k| k == folder) {
            Some(FolderKind::Kustomize)
        } else {
            let prefix = format!("{folder}/");
            paths
                .iter()
                .any(|path| path.starts_with(&prefix))
                .then_some(FolderKind::Plain)
        }
    }

    /// One line: how many folders of each kind, and which.
    pub fn describe(&self) -> String {
        let group = |count: usize, one: &str, many: &str, folders: &[String]| {
            let noun = if count == 1 { one } else { many };
            let shown: Vec<&str> = folders.iter().take(6).map(String::as_str).collect();
            let more = if count > shown.len() { ", …" } else { "" };
            format!("{count} {noun} ({}{more})", shown.join(", "))
        };
        let mut parts = Vec::new();
        if !self.plain.is_empty() {
            parts.push(group(
                self.plain.len(),
                "folder of plain manifests",
                "folders of plain manifests",
                &self.plain,
            ));
        }
        if !self.kustomize.is_empty() {
            parts.push(group(
                self.kustomize.len(),
                "kustomize folder",
                "kustomize folders",
                &self.kustomize,
            ));
        }
        if !self.charts.is_empty() {
            parts.push(group(
                self.charts.len(),
                "helm chart",
                "helm charts",
                &self.charts,
            ));
        }
        if parts.is_empty() {
            "no folder of manifests".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A TOML basic string (JSON's escapes are TOML's).
fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("\"{text}\""))
}

/// The config file `init` writes for `request`, its environment rendered as `kind` says.
pub fn config_text(request: &InitRequest, name: &str, kind: FolderKind) -> String {
    let mut text = format!(
        "# Written by `gitopsd init`. Every key, with its default: /usr/share/doc/gitopsd/gitopsd.toml.example\n\
         # (or config/gitopsd.toml in the source). Check it with `gitopsd validate`.\n\n\
         [repo]\nurl = {}\nbranch = {}\n# Time between fetches.\npoll_interval = \"1m\"\n\n\
         [state]\ndir = {}\n\n\
         [[environment]]\nname = {}\npath = {}\n",
        quote(&request.repo),
        quote(&request.branch),
        quote(DEFAULT_STATE_DIR),
        quote(name),
        quote(request.path.trim_end_matches('/')),
    );
    match kind {
        FolderKind::Plain => {}
        FolderKind::Kustomize => text.push_str("render = { kind = \"kustomize\" }\n"),
        // The folder is the chart: `chart` defaults to `path`.
        FolderKind::Helm => text.push_str("render = { kind = \"helm\" }\n"),
    }
    match request.target {
        InitTarget::Kubernetes => {
            let namespace = request.namespace.as_deref().unwrap_or(name);
            text.push_str(&format!(
                "# Objects without a namespace of their own go here; it is made if missing.\nnamespace = {}\ncreate_namespace = true\n",
                quote(namespace)
            ));
            match &request.kubeconfig {
                Some(path) => text.push_str(&format!(
                    "target = {{ type = \"kubernetes\", kubeconfig = {} }}\n",
                    quote(&path.display().to_string())
                )),
                None => text.push_str(
                    "# Add kubeconfig = \"/etc/gitopsd/kubeconfig\" unless it runs in the cluster.\ntarget = { type = \"kubernetes\" }\n",
                ),
            }
        }
        InitTarget::Directory => {
            let live = request.live.as_ref().map_or_else(
                || format!("/srv/hydrated/{name}"),
                |path| path.display().to_string(),
            );
            text.push_str(&format!(
                "target = {{ type = \"directory\", path = {} }}\n",
                quote(&live)
            ));
        }
    }
    text
}

/// The folder `config` is in, absolute.
fn config_folder(config: &Path) -> PathBuf {
    let folder = match config.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::path::absolute(&folder).unwrap_or(folder)
}

/// `gitopsd init`: fetches the branch tip, surveys it, reads the environment's folder, and
/// writes the config to `config_path` (never over an existing file). Exit 0 when written.
pub async fn init(
    config_path: &Path,
    request: &InitRequest,
    out: &mut dyn Write,
) -> Result<u8, InitError> {
    let request = prepare(config_path, request).await?;
    let name = request
        .name
        .clone()
        .unwrap_or_else(|| file_name(&request.path).to_string());
    let base = config_folder(config_path);
    // Checked whole before anything is fetched: a bad name or url fails here.
    let draft = Config::from_toml(&config_text(&request, &name, FolderKind::Plain), &base)
        .map_err(InitError::Invalid)?;
    let scratch = tempfile::tempdir().map_err(InitError::Scratch)?;
    let source = GitSource::new(&draft.repo, scratch.path());
    let fetching = source.clone();
    let tip = crate::blocking::off_thread("fetching", move || fetching.fetch())
        .await??
        .tip;
    let listing = source.clone();
    let at = tip.clone();
    let paths =
        crate::blocking::off_thread("reading the tree", move || listing.file_paths(&at)).await??;
    let survey = survey(&paths);
    writeln!(
        out,
        "fetched {} {} at {}: {}",
        source.url(),
        source.branch(),
        tip.short(),
        survey.describe()
    )?;
    let Some(kind) = survey.kind_of(&request.path, &paths) else {
        return Err(InitError::NoFolder {
            path: request.path.clone(),
            revision: tip.short().to_string(),
            found: survey.describe(),
        });
    };
    let text = config_text(&request, &name, kind);
    let config = Config::from_toml(&text, &base).map_err(InitError::Invalid)?;
    let environment = &config.environments[0];
    let read = load_desired_offline(&source, environment, &tip).await;
    let what = describe_kind(kind);
    match read {
        Ok(objects) => {
            let count = objects.len();
            writeln!(
                out,
                "{}: {what}, {count} objects at {}",
                request.path,
                tip.short()
            )?;
        }
        // A plain folder must parse; a rendered one may need a tool this host lacks yet.
        Err(error) if kind == FolderKind::Plain => return Err(InitError::Manifests(error)),
        Err(error) => writeln!(
            out,
            "{}: {what}, not rendered here ({error}); `gitopsd validate` renders it once the tool is installed",
            request.path
        )?,
    }
    write_new(config_path, text).await?;
    writeln!(
        out,
        "wrote {}: environment {name:?} from {}; check it with `gitopsd validate`, then `systemctl enable --now gitopsd`",
        config_path.display(),
        request.path
    )?;
    Ok(0)
}

/// Refuses an existing config; names a repository on this host from the current folder (not
/// the config's) and the folder without a trailing `/`.
async fn prepare(config_path: &Path, request: &InitRequest) -> Result<InitRequest, InitError> {
    let mut request = request.clone();
    request.path = request.path.trim_end_matches('/').to_string();
    let path = config_path.to_path_buf();
    let repo = PathBuf::from(&request.repo);
    let (exists, local) = crate::blocking::off_thread("looking for the config", move || {
        let local = repo.exists().then(|| std::path::absolute(&repo).ok());
        (path.exists(), local.flatten())
    })
    .await?;
    if exists {
        return Err(InitError::Exists(config_path.to_path_buf()));
    }
    if let Some(local) = local {
        request.repo = local.display().to_string();
    }
    Ok(request)
}

/// Writes `text` to a new file at `path`; one that appeared meanwhile is left alone.
async fn write_new(path: &Path, text: String) -> Result<(), InitError> {
    let target = path.to_path_buf();
    crate::blocking::off_thread("writing the config", move || {
        crate::durable::create_new(&target, text.as_bytes())
    })
    .await?
    .map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => InitError::Exists(path.to_path_buf()),
        _ => InitError::Write {
            path: path.to_path_buf(),
            source,
        },
    })
}

fn describe_kind(kind: FolderKind) -> &'static str {
    match kind {
        FolderKind::Plain => "plain manifests",
        FolderKind::Kustomize => "a kustomize folder (render = { kind = \"kustomize\" })",
        FolderKind::Helm => "a helm chart (render = { kind = \"helm\" })",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(list: &[&str]) -> Vec<String> {
        list.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn folders_are_sorted_by_what_they_hold() {
        let tree = paths(&[
            ".github/workflows/ci.yml",
            "README.md",
            "guestbook/guestbook-ui-deployment.yaml",
            "guestbook/guestbook-ui-svc.yaml",
            "helm-guestbook/Chart.yaml",
            "helm-guestbook/templates/deployment.yaml",
            "helm-guestbook/values.yaml",
            "kustomize-guestbook/kustomization.yaml",
            "kustomize-guestbook/guestbook-ui-deployment.yaml",
            "overlays/prod/kustomization.yml",
        ]);
        let found = survey(&tree);
        assert_eq!(
            found,
            Survey {
                plain: paths(&["guestbook"]),
                kustomize: paths(&["kustomize-guestbook", "overlays/prod"]),
                charts: paths(&["helm-guestbook"]),
            }
        );
        assert_eq!(found.kind_of("guestbook", &tree), Some(FolderKind::Plain));
        assert_eq!(
            found.kind_of("kustomize-guestbook", &tree),
            Some(FolderKind::Kustomize)
        );
        assert_eq!(
            found.kind_of("helm-guestbook", &tree),
            Some(FolderKind::Helm)
        );
        assert_eq!(found.kind_of("missing", &tree), None);
        assert_eq!(
            found.describe(),
            "1 folder of plain manifests (guestbook), 2 kustomize folders (kustomize-guestbook, overlays/prod), 1 helm chart (helm-guestbook)"
        );
    }

    #[test]
    fn the_written_config_is_valid_for_each_kind_and_target() {
        for (kind, target) in [
            (FolderKind::Plain, InitTarget::Kubernetes),
            (FolderKind::Kustomize, InitTarget::Kubernetes),
            (FolderKind::Helm, InitTarget::Directory),
        ] {
            let request = InitRequest {
                repo: "https://git.example.com/ops/deploy.git".into(),
                branch: "main".into(),
                path: "apps/guestbook".into(),
                target,
                name: None,
                namespace: None,
                kubeconfig: None,
                live: None,
            };
            let text = config_text(&request, "guestbook", kind);
            let config = Config::from_toml(&text, Path::new("/etc/gitopsd"))
                .unwrap_or_else(|problems| panic!("{kind:?}: {problems:?}\n{text}"));
            let environment = &config.environments[0];
            assert_eq!(environment.path, "apps/guestbook");
            assert_eq!(environment.render.is_some(), kind != FolderKind::Plain);
            assert_eq!(
                environment.create_namespace,
                target == InitTarget::Kubernetes
            );
        }
    }
}
