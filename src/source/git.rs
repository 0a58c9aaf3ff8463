//! Git source with gix: a bare mirror in the state directory, fetched on each poll, read
//! straight from the object database (no work tree).
// git work (gix, files): the blocking side of the I/O boundary; async code calls it through `crate::blocking`.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use gix::remote::Direction;

use super::error::{Cause, gix_message};
pub use super::error::{RemoteFailure, SourceError};
use super::settings::RepoConfig;
use super::verify::{Signer, Verifier, VerifyConfig, VerifyError, VerifyMode};
use crate::manifest::{Limits, ManifestFile, Problem};
use crate::model::Revision;

/// Local refs the mirror keeps the remote's branches under.
const REMOTE_REFS: &str = "refs/remotes/origin";

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

/// How to authenticate to the remote.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Auth {
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
    pub(super) fn ssh_command(&self) -> Option<String> {
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

/// A git repository mirrored under the state directory.
#[derive(Debug, Clone)]
pub struct GitSource {
    state_dir: PathBuf,
    pub(super) mirror: PathBuf,
    pub(super) url: String,
    pub(super) branch: String,
    pub(super) auth: Auth,
    pub(super) max_file_bytes: u64,
    pub(super) max_files: usize,
    pub(super) max_total_bytes: u64,
    pub(super) limits: Limits,
    /// How long a fetch, and a revert commit's push, may take.
    pub(super) fetch_timeout: std::time::Duration,
    /// Files parsed at earlier revisions, by blob id; shared by the clones of this source.
    parse_cache: crate::parse_cache::ParseCache,
    /// `[repo.verify]`: which commits must be signed, and by whom.
    pub(super) verify: Option<VerifyConfig>,
    /// The mirror, opened once and shared by the clones of this source: opening reads git's
    /// config files and pack indexes, which every environment's pass would otherwise repeat.
    /// gix reads refs afresh and rescans packs when an object is missing, so a fetch's new
    /// objects and refs are seen through it.
    opened: Arc<Mutex<Option<gix::ThreadSafeRepository>>>,
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
            opened: Arc::default(),
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
        let Ok(repo) = self.open() else {
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

    /// `repo.max_file_bytes` and `repo.max_total_bytes`.
    pub(super) fn byte_limits(&self) -> (u64, u64) {
        (self.max_file_bytes, self.max_total_bytes)
    }

    /// The mirror, made on first use; opened once (see `opened`).
    pub(super) fn open(&self) -> Result<gix::Repository, SourceError> {
        // A poisoned lock only means another thread panicked while opening: open again.
        let mut opened = self
            .opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(repo) = opened.as_ref()
            && self.mirror.join("HEAD").is_file()
        {
            return Ok(repo.to_thread_local());
        }
        let open_error = |source: Cause| SourceError::Open {
            path: self.mirror.clone(),
            source,
        };
        let repo = if self.mirror.join("HEAD").is_file() {
            gix::open(&self.mirror).map_err(|e| open_error(Box::new(e)))?
        } else {
            std::fs::create_dir_all(&self.mirror).map_err(|e| open_error(Box::new(e)))?;
            gix::init_bare(&self.mirror).map_err(|e| open_error(Box::new(e)))?
        };
        *opened = Some(repo.clone().into_sync());
        Ok(repo)
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
        // gix's https transport builds a reqwest client, which needs the one TLS provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let repo = self.open()?;
        let previous = self.branch_tip_in(&repo);
        let token = self.token()?;
        self.receive(repo.clone(), token, interrupt)
            .map_err(|source| SourceError::Remote {
                url: self.url.clone(),
                kind: RemoteFailure::of(&source),
                source,
            })?;
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

    /// The token's username and value, read from its file now (it may have been rotated).
    fn token(&self) -> Result<Option<(String, String)>, SourceError> {
        let Auth::Token { username, file } = &self.auth else {
            return Ok(None);
        };
        let token = std::fs::read_to_string(file).map_err(|source| SourceError::TokenFile {
            path: file.clone(),
            source,
        })?;
        Ok(Some((username.clone(), token.trim().to_string())))
    }

    /// Connects with the configured credentials and receives every branch into the mirror.
    fn receive(
        &self,
        mut repo: gix::Repository,
        token: Option<(String, String)>,
        interrupt: &AtomicBool,
    ) -> Result<(), gix::Error> {
        if let Some(command) = self.auth.ssh_command() {
            let mut config = repo.config_snapshot_mut();
            config.set_value(&gix::config::tree::Core::SSH_COMMAND, command.as_str())?;
            config.commit()?;
        }
        let refspec = format!("+refs/heads/*:{REMOTE_REFS}/*");
        let remote = repo
            .remote_at(self.url.as_str())?
            .with_fetch_tags(gix::remote::fetch::Tags::None)
            .with_refspecs([refspec.as_str()], Direction::Fetch)?;
        let mut connection = remote.connect(Direction::Fetch)?;
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
            .prepare_fetch(gix::progress::Discard, Default::default())?
            .receive(gix::progress::Discard, interrupt)?;
        Ok(())
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
        let read_error = |source: Cause| SourceError::Read {
            what: "root tree".into(),
            revision: revision.clone(),
            source,
        };
        let id =
            gix::ObjectId::from_hex(revision.0.as_bytes()).map_err(|e| read_error(Box::new(e)))?;
        let commit = repo.find_commit(id).map_err(|e| read_error(Box::new(e)))?;
        let tree = commit.tree_id().map_err(|e| read_error(Box::new(e)))?;
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
        let read_error = |what: &str, source: Cause| SourceError::Read {
            what: what.to_string(),
            revision: revision.clone(),
            source,
        };
        let unpack_error = |path: PathBuf, source: std::io::Error| SourceError::Unpack {
            path,
            revision: revision.clone(),
            source,
        };
        let mut total = 0u64;
        for record in super::tree::revision_entries(&repo, revision)? {
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
                .map_err(|e| read_error(&file, Box::new(e)))?
                .size();
            if total > max_bytes {
                return Err(SourceError::TreeTooLarge {
                    revision: revision.clone(),
                    limit: max_bytes,
                });
            }
            let blob = repo
                .find_blob(record.oid)
                .map_err(|e| read_error(&file, Box::new(e)))?;
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
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Runs git in `dir` and returns its trimmed stdout.
    pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
        let output = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@localhost")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@localhost")
            .output()
            .expect("git runs");
        assert!(output.status.success(), "git {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// A temporary folder holding `origin/`, a repository made with `git init` whose `main`
    /// has one commit with `env/app.yaml`; returns the folder and the origin's path.
    pub(crate) fn workspace() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temporary folder");
        let origin = dir.path().join("origin");
        std::fs::create_dir_all(origin.join("env")).expect("origin folder");
        git(&origin, &["init", "-q", "-b", "main"]);
        std::fs::write(origin.join("env/app.yaml"), "kind: ConfigMap\n").expect("write");
        git(&origin, &["add", "."]);
        git(&origin, &["commit", "-qm", "initial"]);
        (dir, origin)
    }

    /// An anonymous source for `url` mirrored under `state_dir`.
    pub(crate) fn source_for(url: &str, branch: &str, state_dir: &Path) -> GitSource {
        GitSource {
            state_dir: state_dir.to_path_buf(),
            mirror: state_dir.join("repo.git"),
            url: url.to_string(),
            branch: branch.to_string(),
            auth: Auth::Anonymous,
            max_file_bytes: 1 << 20,
            max_files: 1000,
            max_total_bytes: 1 << 24,
            limits: Limits::default(),
            fetch_timeout: std::time::Duration::from_secs(30),
            parse_cache: crate::parse_cache::ParseCache::default(),
            verify: None,
            opened: Arc::default(),
        }
    }

    #[test]
    fn a_branch_the_remote_lacks_is_a_missing_ref() {
        let (dir, origin) = workspace();
        let source = source_for(&origin.display().to_string(), "nope", dir.path());
        let error = source.fetch().expect_err("no such branch");
        assert!(
            matches!(error, SourceError::MissingBranch { .. }),
            "{error:?}"
        );
        assert_eq!(error.remote_failure(), Some(RemoteFailure::MissingRef));
        let fine = source_for(&origin.display().to_string(), "main", dir.path());
        let fetched = fine.fetch().expect("main exists");
        let snapshot = fine.snapshot(&fetched.tip, "env").expect("env folder");
        assert_eq!(snapshot.files.len(), 1);
    }

    #[test]
    fn a_refused_connection_is_a_network_failure() {
        // A port nobody listens on: bound, noted, and let go.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("temporary folder");
        let source = source_for(&format!("git://127.0.0.1:{port}/x"), "main", dir.path());
        let error = source.fetch().expect_err("nothing listens");
        assert_eq!(
            error.remote_failure(),
            Some(RemoteFailure::Network),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .starts_with(&format!("fetch from git://127.0.0.1:{port}/x failed: ")),
            "{error}"
        );
        assert!(
            std::error::Error::source(&error).is_some(),
            "the gix error is kept"
        );
    }

    /// An HTTP server on 127.0.0.1 that answers every request with 401, for as long as the
    /// returned listener's thread runs (the test process).
    fn refusing_server() -> u16 {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("bound").port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        port
    }

    #[test]
    fn refused_credentials_are_an_authentication_failure() {
        let port = refusing_server();
        let dir = tempfile::tempdir().expect("temporary folder");
        let token = dir.path().join("token");
        std::fs::write(&token, "wrong\n").expect("token file");
        let mut source = source_for(
            &format!("http://127.0.0.1:{port}/repo.git"),
            "main",
            dir.path(),
        );
        source.auth = Auth::Token {
            username: "gitopsd".into(),
            file: token,
        };
        let error = source.fetch().expect_err("refused");
        assert_eq!(
            error.remote_failure(),
            Some(RemoteFailure::Authentication),
            "{error:?}"
        );
    }
}
