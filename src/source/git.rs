//! Git source with gix: a bare mirror in the state directory, fetched on each poll, read
//! straight from the object database (no work tree).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use base64::Engine as _;
use gix::remote::Direction;
use thiserror::Error;

use super::settings::RepoConfig;
use super::verify::{Signer, Verifier, VerifyConfig, VerifyError, VerifyMode};
use crate::manifest::{Limits, ManifestFile, Problem, is_manifest_path};
use crate::model::Revision;

/// Local refs the mirror keeps the remote's branches under.
const REMOTE_REFS: &str = "refs/remotes/origin";

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("cannot open git mirror {}: {message}", path.display())]
    Open { path: PathBuf, message: String },
    #[error("fetch from {url} failed: {message}")]
    Fetch { url: String, message: String },
    #[error("branch {branch:?} does not exist at {url}")]
    MissingBranch { url: String, branch: String },
    #[error("unknown revision {rev:?}")]
    UnknownRevision { rev: String },
    #[error("path {path:?} does not exist at revision {revision}")]
    MissingPath { path: String, revision: Revision },
    #[error("path {path:?} at revision {revision} is not a folder")]
    NotAFolder { path: String, revision: Revision },
    #[error("cannot read {what} at revision {revision}: {message}")]
    Read {
        what: String,
        revision: Revision,
        message: String,
    },
    #[error("cannot write the revert commit: {message}")]
    Commit { message: String },
    #[error("git push to {url} failed: {message}")]
    Push { url: String, message: String },
    #[error("cannot write {} while unpacking revision {revision}: {source}", path.display())]
    Unpack {
        path: PathBuf,
        revision: Revision,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "revision {revision} holds more than {limit} bytes of files (render.max_tree_bytes); not unpacked"
    )]
    TreeTooLarge { revision: Revision, limit: u64 },
    #[error("cannot read token file {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A commit the verification refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    pub commit: Revision,
    pub reason: VerifyError,
}

impl std::fmt::Display for Unverified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "commit {} {}", self.commit.short(), self.reason)
    }
}

/// Signs a commit gitopsd writes with its SSH key, as `git commit -S` with `gpg.format = ssh`
/// would: an sshsig over the commit without the signature, in a `gpgsig` header.
fn sign_commit(commit: &mut gix::objs::Commit, key_file: &Path) -> Result<(), SourceError> {
    use gix::objs::WriteTo;
    let sign_error = |message: String| SourceError::Commit {
        message: format!("signing with {}: {message}", key_file.display()),
    };
    let key =
        ssh_key::PrivateKey::read_openssh_file(key_file).map_err(|e| sign_error(e.to_string()))?;
    if key.is_encrypted() {
        return Err(sign_error(
            "the key is encrypted; gitopsd needs one without a passphrase (readable by its user only)".into(),
        ));
    }
    let mut payload = Vec::new();
    commit
        .write_to(&mut payload)
        .map_err(|e| sign_error(e.to_string()))?;
    let signature = key
        .sign("git", ssh_key::HashAlg::Sha512, &payload)
        .and_then(|signature| signature.to_pem(ssh_key::LineEnding::LF))
        .map_err(|e| sign_error(e.to_string()))?;
    commit
        .extra_headers
        .push(("gpgsig".into(), signature.trim_end().to_string().into()));
    Ok(())
}

/// A gix error with its causes: gix's Display shows only the outermost message ("Transport
/// handshake failed"), its Debug the whole chain.
fn gix_message(error: &impl std::fmt::Debug) -> String {
    format!("{error:?}")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && *line != "Caused by:")
        .map(|line| {
            line.trim_start_matches(|c: char| c.is_ascii_digit() || c == ':')
                .trim()
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// How to authenticate to the remote.
#[derive(Debug, Clone, PartialEq)]
enum Auth {
    Anonymous,
    Token {
        username: String,
        file: PathBuf,
    },
    Ssh {
        key: Option<PathBuf>,
        known_hosts: Option<PathBuf>,
    },
}

impl Auth {
    /// The ssh command line for git and gix, when ssh settings are configured.
    fn ssh_command(&self) -> Option<String> {
        let Auth::Ssh { key, known_hosts } = self else {
            return None;
        };
        let mut command = String::from("ssh -o BatchMode=yes");
        if let Some(key) = key {
            command.push_str(&format!(" -i '{}' -o IdentitiesOnly=yes", key.display()));
        }
        if let Some(known_hosts) = known_hosts {
            command.push_str(&format!(
                " -o UserKnownHostsFile='{}' -o StrictHostKeyChecking=yes",
                known_hosts.display()
            ));
        }
        Some(command)
    }
}

/// Result of a fetch.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// Commit the branch points at now.
    pub tip: Revision,
    /// Commit it pointed at before this fetch.
    pub previous: Option<Revision>,
    /// True when `previous` is not an ancestor of `tip`: the branch was rewritten.
    pub force_pushed: bool,
}

/// The files of one environment folder at one revision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub revision: Revision,
    pub files: Vec<ManifestFile>,
    /// Entries refused while reading (symlinks, submodules, oversized files).
    pub problems: Vec<Problem>,
    /// What parsing these files may cost.
    pub limits: Limits,
}

/// What a revert commit puts back to the healthy revision.
#[derive(Debug, Clone, Copy)]
pub enum RevertScope<'a> {
    /// The environment's folder of plain manifests.
    Folder(&'a str),
    /// Every file of a rendered environment's inputs: all files but those under the given
    /// folders (the other environments' own folders), since a render may read any of them.
    AllExcept(&'a [String]),
}

/// Every file under `tree` (blobs, links, submodules) with its id and kind, by path.
fn files_of(
    tree: &gix::Tree<'_>,
) -> Result<std::collections::BTreeMap<String, (gix::ObjectId, gix::object::tree::EntryKind)>, String>
{
    let mut recorder = gix::traverse::tree::Recorder::default();
    tree.traverse()
        .breadthfirst(&mut recorder)
        .map_err(|e| gix_message(&e))?;
    Ok(recorder
        .records
        .into_iter()
        .filter(|record| !record.mode.is_tree())
        .map(|record| {
            (
                record.filepath.to_string(),
                (record.oid, record.mode.kind()),
            )
        })
        .collect())
}

/// A git repository mirrored under the state directory.
#[derive(Debug, Clone)]
pub struct GitSource {
    state_dir: PathBuf,
    mirror: PathBuf,
    url: String,
    branch: String,
    auth: Auth,
    max_file_bytes: u64,
    max_files: usize,
    max_total_bytes: u64,
    limits: Limits,
    fetch_timeout: std::time::Duration,
    /// Files parsed at earlier revisions, by blob id; shared by the clones of this source.
    parse_cache: crate::parse_cache::ParseCache,
    /// `[repo.verify]`: which commits must be signed, and by whom.
    verify: Option<VerifyConfig>,
}

impl GitSource {
    pub fn new(repo: &RepoConfig, state_dir: &Path) -> Self {
        let auth = match (
            &repo.token_file,
            &repo.ssh_key_file,
            &repo.ssh_known_hosts_file,
        ) {
            (Some(file), _, _) => Auth::Token {
                username: repo.token_username.clone(),
                file: file.clone(),
            },
            (None, None, None) => Auth::Anonymous,
            (None, key, known_hosts) => Auth::Ssh {
                key: key.clone(),
                known_hosts: known_hosts.clone(),
            },
        };
        Self {
            state_dir: state_dir.to_path_buf(),
            mirror: state_dir.join("repo.git"),
            url: repo.url.clone(),
            branch: repo.branch.clone(),
            auth,
            max_file_bytes: repo.max_file_bytes,
            max_files: repo.max_files,
            max_total_bytes: repo.max_total_bytes,
            limits: repo.limits,
            fetch_timeout: repo.fetch_timeout,
            parse_cache: crate::parse_cache::ParseCache::default(),
            verify: repo.verify.clone(),
        }
    }

    /// Whether commits must be signed before they are applied.
    pub fn verifies(&self) -> bool {
        self.verify.is_some()
    }

    /// Checks that `tip` may be applied: with `mode = "head"` its own signature, with
    /// `mode = "all"` every commit since `base` (the last verified revision; the tip alone when
    /// there is none). `Ok(None)` when no verification is configured; the failing commit and
    /// why otherwise.
    pub fn verify(
        &self,
        tip: &Revision,
        base: Option<&Revision>,
    ) -> Result<Option<Signer>, Unverified> {
        let Some(config) = &self.verify else {
            return Ok(None);
        };
        let fail = |commit: &Revision, reason: VerifyError| Unverified {
            commit: commit.clone(),
            reason,
        };
        let verifier = Verifier::load(config).map_err(|reason| fail(tip, reason))?;
        let repo = self
            .open()
            .map_err(|e| fail(tip, VerifyError::Bad(e.to_string())))?;
        let id = |revision: &Revision| {
            gix::ObjectId::from_hex(revision.0.as_bytes())
                .map_err(|e| fail(revision, VerifyError::Bad(e.to_string())))
        };
        let mut commits = vec![tip.clone()];
        if verifier.mode == VerifyMode::All
            && let Some(base) = base
            && base != tip
        {
            let walk = repo
                .rev_walk([id(tip)?])
                .with_hidden([id(base)?])
                .all()
                .map_err(|e| fail(tip, VerifyError::Bad(gix_message(&e))))?;
            commits = Vec::new();
            for info in walk {
                let info = info.map_err(|e| fail(tip, VerifyError::Bad(gix_message(&e))))?;
                commits.push(Revision(info.id.to_string()));
            }
            // Oldest first, so the first bad commit is the one named.
            commits.reverse();
        }
        let mut signer = None;
        for commit in &commits {
            let object = repo
                .find_commit(id(commit)?)
                .map_err(|e| fail(commit, VerifyError::Bad(gix_message(&e))))?;
            let signed = object
                .signature()
                .map_err(|e| fail(commit, VerifyError::Bad(gix_message(&e))))?;
            let (signature, data) = match &signed {
                Some((signature, data)) => (Some(signature.as_ref()), data.to_bstring()),
                None => (None, Default::default()),
            };
            let found = verifier
                .check(signature.map(|s| s.as_ref()), &data)
                .map_err(|reason| fail(commit, reason))?;
            signer = Some(found);
        }
        Ok(signer)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// What parsing a revision's YAML may cost.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The state directory the mirror lives in (render caches sit beside it).
    /// Files parsed at earlier revisions, by path and blob id.
    pub fn parse_cache(&self) -> &crate::parse_cache::ParseCache {
        &self.parse_cache
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// True once a fetch brought at least one branch into the mirror.
    pub fn has_mirror(&self) -> bool {
        if !self.mirror.join("HEAD").is_file() {
            return false;
        }
        let Ok(repo) = gix::open(&self.mirror) else {
            return false;
        };
        let prefix = format!("{REMOTE_REFS}/");
        repo.references()
            .ok()
            .and_then(|platform| {
                platform
                    .prefixed(prefix.as_str())
                    .ok()
                    .map(|mut refs| refs.next().is_some())
            })
            .unwrap_or(false)
    }

    fn open(&self) -> Result<gix::Repository, SourceError> {
        let open_error = |message: String| SourceError::Open {
            path: self.mirror.clone(),
            message,
        };
        if self.mirror.join("HEAD").is_file() {
            gix::open(&self.mirror).map_err(|e| open_error(gix_message(&e)))
        } else {
            std::fs::create_dir_all(&self.mirror).map_err(|e| open_error(gix_message(&e)))?;
            gix::init_bare(&self.mirror).map_err(|e| open_error(gix_message(&e)))
        }
    }

    /// Fetches every branch of the remote into the mirror and resolves the configured one.
    /// Blocking: call from a blocking thread.
    pub fn fetch(&self) -> Result<Fetched, SourceError> {
        self.fetch_with(&AtomicBool::new(false))
    }

    /// How long one fetch may take before it is interrupted.
    pub fn fetch_timeout(&self) -> std::time::Duration {
        self.fetch_timeout
    }

    /// Fetches the branches; gives up when `interrupt` turns true (a timeout, a shutdown).
    pub fn fetch_with(&self, interrupt: &AtomicBool) -> Result<Fetched, SourceError> {
        let mut repo = self.open()?;
        let fetch_error = |message: String| SourceError::Fetch {
            url: self.url.clone(),
            message,
        };
        if let Some(command) = self.auth.ssh_command() {
            let mut config = repo.config_snapshot_mut();
            config
                .set_value(&gix::config::tree::Core::SSH_COMMAND, command.as_str())
                .map_err(|e| fetch_error(gix_message(&e)))?;
            config.commit().map_err(|e| fetch_error(gix_message(&e)))?;
        }
        let previous = self.branch_tip_in(&repo);
        let token = match &self.auth {
            Auth::Token { username, file } => Some((
                username.clone(),
                std::fs::read_to_string(file)
                    .map_err(|source| SourceError::TokenFile {
                        path: file.clone(),
                        source,
                    })?
                    .trim()
                    .to_string(),
            )),
            _ => None,
        };
        let refspec = format!("+refs/heads/*:{REMOTE_REFS}/*");
        let remote = repo
            .remote_at(self.url.as_str())
            .map_err(|e| fetch_error(gix_message(&e)))?
            .with_fetch_tags(gix::remote::fetch::Tags::None)
            .with_refspecs([refspec.as_str()], Direction::Fetch)
            .map_err(|e| fetch_error(gix_message(&e)))?;
        let mut connection = remote
            .connect(Direction::Fetch)
            .map_err(|e| fetch_error(gix_message(&e)))?;
        if let Some((username, password)) = token {
            connection.set_credentials(move |action| match action {
                gix::credentials::helper::Action::Get(context) => {
                    Ok(Some(gix::credentials::protocol::Outcome {
                        identity: gix::sec::identity::Account {
                            username: username.clone(),
                            password: password.clone(),
                            oauth_refresh_token: None,
                        },
                        next: context.into(),
                    }))
                }
                _ => Ok(None),
            });
        }
        connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| fetch_error(gix_message(&e)))?
            .receive(gix::progress::Discard, interrupt)
            .map_err(|e| fetch_error(gix_message(&e)))?;
        let Some(tip) = self.branch_tip_in(&repo) else {
            return Err(SourceError::MissingBranch {
                url: self.url.clone(),
                branch: self.branch.clone(),
            });
        };
        let force_pushed = match &previous {
            Some(previous) if *previous != tip => !self.is_ancestor(&repo, previous, &tip),
            _ => false,
        };
        Ok(Fetched {
            tip,
            previous,
            force_pushed,
        })
    }

    /// The configured branch's commit in the mirror, without fetching.
    pub fn branch_tip(&self) -> Result<Option<Revision>, SourceError> {
        if !self.has_mirror() {
            return Ok(None);
        }
        Ok(self.branch_tip_in(&self.open()?))
    }

    fn branch_tip_in(&self, repo: &gix::Repository) -> Option<Revision> {
        let name = format!("{REMOTE_REFS}/{}", self.branch);
        let mut reference = repo.try_find_reference(name.as_str()).ok()??;
        let id = reference.peel_to_id().ok()?;
        Some(Revision(id.to_string()))
    }

    fn is_ancestor(&self, repo: &gix::Repository, ancestor: &Revision, of: &Revision) -> bool {
        let (Ok(ancestor_id), Ok(of_id)) = (
            gix::ObjectId::from_hex(ancestor.0.as_bytes()),
            gix::ObjectId::from_hex(of.0.as_bytes()),
        ) else {
            return false;
        };
        matches!(repo.merge_base(ancestor_id, of_id), Ok(Some(base)) if base.detach() == ancestor_id)
    }

    /// Resolves a revision in the mirror: a remote branch name (`feature`, `origin/feature`),
    /// a commit id (full or abbreviated), or any other rev-spec git accepts.
    pub fn resolve(&self, rev: &str) -> Result<Revision, SourceError> {
        let unknown = || SourceError::UnknownRevision {
            rev: rev.to_string(),
        };
        if !self.has_mirror() || rev.is_empty() || rev.starts_with('-') {
            return Err(unknown());
        }
        let repo = self.open()?;
        let candidates = [
            format!("{REMOTE_REFS}/{rev}^{{commit}}"),
            format!("refs/remotes/{rev}^{{commit}}"),
            format!("{rev}^{{commit}}"),
        ];
        candidates
            .iter()
            .find_map(|spec| repo.rev_parse_single(spec.as_str()).ok())
            .map(|id| Revision(id.to_string()))
            .ok_or_else(unknown)
    }

    /// Commits, on top of the branch tip, what `scope` covers as it was at `healthy`, and pushes
    /// that commit to the branch with `git push` (gix cannot push). Returns `None` when the tip
    /// already holds those files. The push is a fast-forward only: if the branch moved
    /// meanwhile it is refused and reported.
    pub fn push_revert_commit(
        &self,
        scope: RevertScope<'_>,
        healthy: &Revision,
        message: &str,
    ) -> Result<Option<Revision>, SourceError> {
        let tip = self.fetch()?.tip;
        let repo = self.open()?;
        let commit_error = |message: String| SourceError::Commit { message };
        let tree_of = |revision: &Revision| -> Result<gix::Tree<'_>, SourceError> {
            let id = gix::ObjectId::from_hex(revision.0.as_bytes())
                .map_err(|e| commit_error(gix_message(&e)))?;
            repo.find_commit(id)
                .and_then(|commit| commit.tree())
                .map_err(|e| commit_error(format!("{revision}: {e}")))
        };
        let tip_tree = tree_of(&tip)?;
        let healthy_tree = tree_of(healthy)?;
        let entry_id = |tree: &gix::Tree<'_>| -> Result<Option<gix::ObjectId>, SourceError> {
            let RevertScope::Folder(path) = scope else {
                return Ok(None);
            };
            tree.lookup_entry_by_path(path)
                .map(|entry| entry.map(|entry| entry.object_id()))
                .map_err(|e| commit_error(gix_message(&e)))
        };
        let mut editor = repo
            .edit_tree(tip_tree.id)
            .map_err(|e| commit_error(gix_message(&e)))?;
        match scope {
            RevertScope::Folder(path) => {
                let wanted = entry_id(&healthy_tree)?;
                if entry_id(&tip_tree)? == wanted {
                    return Ok(None);
                }
                match wanted {
                    Some(id) => editor.upsert(path, gix::object::tree::EntryKind::Tree, id),
                    None => editor.remove(path),
                }
                .map_err(|e| commit_error(gix_message(&e)))?;
            }
            RevertScope::AllExcept(excluded) => {
                let healthy_files = files_of(&healthy_tree).map_err(commit_error)?;
                let tip_files = files_of(&tip_tree).map_err(commit_error)?;
                let under = |file: &str, folder: &String| {
                    file.strip_prefix(folder.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
                };
                let changed: Vec<&String> = healthy_files
                    .keys()
                    .chain(tip_files.keys())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .filter(|file| healthy_files.get(*file) != tip_files.get(*file))
                    .filter(|file| !excluded.iter().any(|folder| under(file, folder)))
                    .collect();
                if changed.is_empty() {
                    return Ok(None);
                }
                for file in changed {
                    match healthy_files.get(file) {
                        Some((id, kind)) => editor.upsert(file.as_str(), *kind, *id),
                        None => editor.remove(file.as_str()),
                    }
                    .map_err(|e| commit_error(gix_message(&e)))?;
                }
            }
        }
        let tree = editor.write().map_err(|e| commit_error(gix_message(&e)))?;
        let signature = gix::actor::Signature {
            name: "gitopsd".into(),
            email: "gitopsd@localhost".into(),
            time: gix::date::Time::now_utc(),
        };
        let tip_id =
            gix::ObjectId::from_hex(tip.0.as_bytes()).map_err(|e| commit_error(gix_message(&e)))?;
        let mut commit = gix::objs::Commit {
            tree: tree.detach(),
            parents: vec![tip_id].into(),
            author: signature.clone(),
            committer: signature,
            encoding: None,
            message: message.into(),
            extra_headers: Vec::new(),
        };
        if let Some(key) = self.verify.as_ref().and_then(|v| v.signing_key.as_deref()) {
            sign_commit(&mut commit, key)?;
        }
        let id = repo
            .write_object(&commit)
            .map_err(|e| commit_error(gix_message(&e)))?
            .detach();
        let mut push = std::process::Command::new("git");
        push.arg("-C")
            .arg(&self.mirror)
            .args(["push", "--quiet", "--porcelain"])
            .arg(&self.url)
            .arg(format!("{id}:refs/heads/{}", self.branch))
            .env("GIT_TERMINAL_PROMPT", "0");
        match &self.auth {
            Auth::Anonymous => {}
            Auth::Ssh { .. } => {
                if let Some(command) = self.auth.ssh_command() {
                    push.env("GIT_SSH_COMMAND", command);
                }
            }
            Auth::Token { username, file } => {
                let token =
                    std::fs::read_to_string(file).map_err(|source| SourceError::TokenFile {
                        path: file.clone(),
                        source,
                    })?;
                // Passed through the environment, not argv, so it does not show in `ps`.
                let header = format!(
                    "Authorization: Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{}", token.trim()))
                );
                push.env("GIT_CONFIG_COUNT", "1")
                    .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                    .env("GIT_CONFIG_VALUE_0", header);
            }
        }
        let output = push.output().map_err(|e| SourceError::Push {
            url: self.url.clone(),
            message: format!("cannot run git: {e}"),
        })?;
        if !output.status.success() {
            return Err(SourceError::Push {
                url: self.url.clone(),
                message: String::from_utf8_lossy(&output.stderr).trim().to_string()
                    + String::from_utf8_lossy(&output.stdout).trim(),
            });
        }
        Ok(Some(Revision(id.to_string())))
    }

    /// When `revision` was committed (committer time), if the mirror has it.
    pub fn commit_time(&self, revision: &Revision) -> Option<chrono::DateTime<chrono::Utc>> {
        let repo = self.open().ok()?;
        let id = gix::ObjectId::from_hex(revision.0.as_bytes()).ok()?;
        let seconds = repo.find_commit(id).ok()?.time().ok()?.seconds;
        chrono::DateTime::from_timestamp(seconds, 0)
    }

    /// The id of `revision`'s root tree: two commits with the same files share it.
    pub fn tree_id(&self, revision: &Revision) -> Result<String, SourceError> {
        let repo = self.open()?;
        let read_error = |message: String| SourceError::Read {
            what: "root tree".into(),
            revision: revision.clone(),
            message,
        };
        let id = gix::ObjectId::from_hex(revision.0.as_bytes())
            .map_err(|e| read_error(gix_message(&e)))?;
        let commit = repo
            .find_commit(id)
            .map_err(|e| read_error(gix_message(&e)))?;
        let tree = commit.tree_id().map_err(|e| read_error(gix_message(&e)))?;
        Ok(tree.to_string())
    }

    /// Writes every file of `revision` under `dest` (an empty folder), executables with their
    /// mode. Symlinks and submodules are left out: a link could point outside the repository.
    /// Refuses trees holding more than `max_bytes`.
    pub fn materialize(
        &self,
        revision: &Revision,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<(), SourceError> {
        use std::os::unix::fs::PermissionsExt as _;
        let repo = self.open()?;
        let read_error = |what: &str, message: String| SourceError::Read {
            what: what.to_string(),
            revision: revision.clone(),
            message,
        };
        let unpack_error = |path: PathBuf, source: std::io::Error| SourceError::Unpack {
            path,
            revision: revision.clone(),
            source,
        };
        let id = gix::ObjectId::from_hex(revision.0.as_bytes())
            .map_err(|e| read_error("commit id", gix_message(&e)))?;
        let root = repo
            .find_commit(id)
            .and_then(|commit| commit.tree())
            .map_err(|e| read_error("root tree", gix_message(&e)))?;
        let mut recorder = gix::traverse::tree::Recorder::default();
        root.traverse()
            .breadthfirst(&mut recorder)
            .map_err(|e| read_error("root tree", gix_message(&e)))?;
        let mut total = 0u64;
        for record in recorder.records {
            let path = dest.join(record.filepath.to_string());
            if record.mode.is_tree() {
                std::fs::create_dir_all(&path).map_err(|e| unpack_error(path, e))?;
                continue;
            }
            if !record.mode.is_blob() {
                continue;
            }
            let file = record.filepath.to_string();
            total += repo
                .find_header(record.oid)
                .map_err(|e| read_error(&file, gix_message(&e)))?
                .size();
            if total > max_bytes {
                return Err(SourceError::TreeTooLarge {
                    revision: revision.clone(),
                    limit: max_bytes,
                });
            }
            let blob = repo
                .find_blob(record.oid)
                .map_err(|e| read_error(&file, gix_message(&e)))?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| unpack_error(parent.into(), e))?;
            }
            std::fs::write(&path, &blob.data).map_err(|e| unpack_error(path.clone(), e))?;
            if record.mode.is_executable() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| unpack_error(path.clone(), e))?;
            }
        }
        Ok(())
    }

    /// Reads the manifest files under `path` at `revision`, recursively, in sorted order.
    pub fn snapshot(&self, revision: &Revision, path: &str) -> Result<Snapshot, SourceError> {
        let repo = self.open()?;
        let read_error = |what: &str, message: String| SourceError::Read {
            what: what.to_string(),
            revision: revision.clone(),
            message,
        };
        let id = gix::ObjectId::from_hex(revision.0.as_bytes())
            .map_err(|e| read_error("commit id", gix_message(&e)))?;
        let commit = repo
            .find_commit(id)
            .map_err(|e| read_error("commit", gix_message(&e)))?;
        let root = commit
            .tree()
            .map_err(|e| read_error("root tree", gix_message(&e)))?;
        let entry = root
            .lookup_entry_by_path(path)
            .map_err(|e| read_error(path, gix_message(&e)))?
            .ok_or_else(|| SourceError::MissingPath {
                path: path.to_string(),
                revision: revision.clone(),
            })?;
        if !entry.mode().is_tree() {
            return Err(SourceError::NotAFolder {
                path: path.to_string(),
                revision: revision.clone(),
            });
        }
        let tree = entry
            .object()
            .map_err(|e| read_error(path, gix_message(&e)))?
            .into_tree();
        let mut recorder = gix::traverse::tree::Recorder::default();
        tree.traverse()
            .breadthfirst(&mut recorder)
            .map_err(|e| read_error(path, gix_message(&e)))?;
        let mut records = recorder.records;
        records.sort_by(|a, b| a.filepath.cmp(&b.filepath));
        let mut files = Vec::new();
        let mut problems = Vec::new();
        let mut total_bytes = 0u64;
        for record in records {
            let file = format!("{path}/{}", record.filepath);
            if files.len() >= self.max_files && is_manifest_path(&file) {
                problems.push(Problem::file(
                    file,
                    format!(
                        "{path} holds more than {} manifest files (repo.max_files); the rest is not read",
                        self.max_files
                    ),
                ));
                break;
            }
            if record.mode.is_tree() {
                continue;
            }
            if record.mode.is_commit() {
                problems.push(Problem::file(file, "submodules are not supported"));
                continue;
            }
            if !is_manifest_path(&file) {
                continue;
            }
            if record.mode.is_link() {
                problems.push(Problem::file(
                    file,
                    "symlinks are not followed: they can point outside the repository",
                ));
                continue;
            }
            let size = repo
                .find_header(record.oid)
                .map_err(|e| read_error(&file, gix_message(&e)))?
                .size();
            if size > self.max_file_bytes {
                problems.push(Problem::file(
                    file,
                    format!(
                        "file is {size} bytes, over the limit of {} (repo.max_file_bytes)",
                        self.max_file_bytes
                    ),
                ));
                continue;
            }
            total_bytes += size;
            if total_bytes > self.max_total_bytes {
                problems.push(Problem::file(
                    file,
                    format!(
                        "{path} holds more than {} bytes of manifests (repo.max_total_bytes); the rest is not read",
                        self.max_total_bytes
                    ),
                ));
                break;
            }
            let blob = repo
                .find_blob(record.oid)
                .map_err(|e| read_error(&file, gix_message(&e)))?;
            files.push(ManifestFile {
                path: file,
                bytes: blob.data.clone(),
                blob: Some(record.oid.to_string()),
            });
        }
        Ok(Snapshot {
            revision: revision.clone(),
            files,
            problems,
            limits: self.limits,
        })
    }
}
