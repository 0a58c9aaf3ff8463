//! The revert commit: written with gix on top of the branch tip, signed when configured, and
//! pushed with `git push` in its own process group, killed after `repo.fetch_timeout` or on
//! shutdown.
// revert commits write git objects and run `git push`: the blocking side of the I/O boundary.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::error::SourceError;
use super::git::{Auth, GitSource};
use crate::model::Revision;

/// How often a running push is checked for its end, its deadline and the interrupt flag.
const PUSH_POLL: Duration = Duration::from_millis(50);

/// What a revert commit puts back to the healthy revision.
#[derive(Debug, Clone, Copy)]
pub enum RevertScope<'a> {
    /// The environment's folder of plain manifests.
    Folder(&'a str),
    /// Every file of a rendered environment's inputs: all files but those under the given
    /// folders (the other environments' own folders), since a render may read any of them.
    AllExcept(&'a [String]),
}

type Files = BTreeMap<String, (gix::ObjectId, gix::object::tree::EntryKind)>;

fn commit_error(source: impl std::error::Error + Send + Sync + 'static) -> SourceError {
    SourceError::Commit {
        source: Box::new(source),
    }
}

/// Every file under `tree` (blobs, links, submodules) with its id and kind, by path.
fn files_of(tree: &gix::Tree<'_>) -> Result<Files, SourceError> {
    let mut recorder = gix::traverse::tree::Recorder::default();
    tree.traverse()
        .breadthfirst(&mut recorder)
        .map_err(commit_error)?;
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

/// Signs a commit gitopsd writes with its SSH key, as `git commit -S` with `gpg.format = ssh`
/// would: an sshsig over the commit without the signature, in a `gpgsig` header.
fn sign_commit(commit: &mut gix::objs::Commit, key_file: &Path) -> Result<(), SourceError> {
    use gix::objs::WriteTo;
    let sign_error = |source: super::error::Cause| SourceError::Sign {
        key_file: key_file.to_path_buf(),
        source,
    };
    let key =
        ssh_key::PrivateKey::read_openssh_file(key_file).map_err(|e| sign_error(Box::new(e)))?;
    if key.is_encrypted() {
        return Err(SourceError::EncryptedKey {
            key_file: key_file.to_path_buf(),
        });
    }
    let mut payload = Vec::new();
    commit
        .write_to(&mut payload)
        .map_err(|e| sign_error(Box::new(e)))?;
    let signature = key
        .sign("git", ssh_key::HashAlg::Sha512, &payload)
        .and_then(|signature| signature.to_pem(ssh_key::LineEnding::LF))
        .map_err(|e| sign_error(Box::new(e)))?;
    commit
        .extra_headers
        .push(("gpgsig".into(), signature.trim_end().to_string().into()));
    Ok(())
}

/// The files `scope` covers that differ between the healthy and the tip tree, put back in
/// `editor`; false when there are none.
fn put_back(
    editor: &mut gix::object::tree::Editor<'_>,
    scope: RevertScope<'_>,
    healthy: &gix::Tree<'_>,
    tip: &gix::Tree<'_>,
) -> Result<bool, SourceError> {
    match scope {
        RevertScope::Folder(path) => {
            let entry_id = |tree: &gix::Tree<'_>| {
                tree.lookup_entry_by_path(path)
                    .map(|entry| entry.map(|entry| entry.object_id()))
                    .map_err(commit_error)
            };
            let wanted = entry_id(healthy)?;
            if entry_id(tip)? == wanted {
                return Ok(false);
            }
            match wanted {
                Some(id) => editor.upsert(path, gix::object::tree::EntryKind::Tree, id),
                None => editor.remove(path),
            }
            .map_err(commit_error)?;
        }
        RevertScope::AllExcept(excluded) => {
            let (healthy_files, tip_files) = (files_of(healthy)?, files_of(tip)?);
            let under = |file: &str, folder: &String| {
                file.strip_prefix(folder.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
            };
            let changed: Vec<&String> = healthy_files
                .keys()
                .chain(tip_files.keys())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|file| healthy_files.get(*file) != tip_files.get(*file))
                .filter(|file| !excluded.iter().any(|folder| under(file, folder)))
                .collect();
            if changed.is_empty() {
                return Ok(false);
            }
            for file in changed {
                match healthy_files.get(file) {
                    Some((id, kind)) => editor.upsert(file.as_str(), *kind, *id),
                    None => editor.remove(file.as_str()),
                }
                .map_err(commit_error)?;
            }
        }
    }
    Ok(true)
}

impl GitSource {
    /// Commits, on top of the branch tip, what `scope` covers as it was at `healthy`, and pushes
    /// that commit to the branch with `git push` (gix cannot push). Returns `None` when the tip
    /// already holds those files. The push is a fast-forward only: if the branch moved
    /// meanwhile it is refused and reported. Setting `interrupt` (a shutdown) stops the fetch
    /// and kills the push; the push is also killed after `repo.fetch_timeout`.
    pub fn push_revert_commit(
        &self,
        scope: RevertScope<'_>,
        healthy: &Revision,
        message: &str,
        interrupt: &AtomicBool,
    ) -> Result<Option<Revision>, SourceError> {
        let tip = self.fetch_with(interrupt)?.tip;
        let Some(id) = self.write_revert_commit(scope, &tip, healthy, message)? else {
            return Ok(None);
        };
        self.push(id, interrupt)?;
        Ok(Some(Revision(id.to_string())))
    }

    /// Writes the revert commit into the mirror; `None` when the tip needs none.
    fn write_revert_commit(
        &self,
        scope: RevertScope<'_>,
        tip: &Revision,
        healthy: &Revision,
        message: &str,
    ) -> Result<Option<gix::ObjectId>, SourceError> {
        let repo = self.open()?;
        let id_of = |revision: &Revision| {
            gix::ObjectId::from_hex(revision.0.as_bytes()).map_err(commit_error)
        };
        let tree_of = |revision: &Revision| -> Result<gix::Tree<'_>, SourceError> {
            repo.find_commit(id_of(revision)?)
                .and_then(|commit| commit.tree())
                .map_err(|source| SourceError::CommitBase {
                    revision: revision.clone(),
                    source,
                })
        };
        let tip_tree = tree_of(tip)?;
        let mut editor = repo.edit_tree(tip_tree.id).map_err(commit_error)?;
        if !put_back(&mut editor, scope, &tree_of(healthy)?, &tip_tree)? {
            return Ok(None);
        }
        let tree = editor.write().map_err(commit_error)?;
        let signature = gix::actor::Signature {
            name: "gitopsd".into(),
            email: "gitopsd@localhost".into(),
            time: gix::date::Time::now_utc(),
        };
        let mut commit = gix::objs::Commit {
            tree: tree.detach(),
            parents: vec![id_of(tip)?].into(),
            author: signature.clone(),
            committer: signature,
            encoding: None,
            message: message.into(),
            extra_headers: Vec::new(),
        };
        if let Some(key) = self.verify.as_ref().and_then(|v| v.signing_key.as_deref()) {
            sign_commit(&mut commit, key)?;
        }
        Ok(Some(
            repo.write_object(&commit).map_err(commit_error)?.detach(),
        ))
    }

    /// `git push <url> <id>:refs/heads/<branch>`, with the configured credentials.
    fn push_command(&self, id: gix::ObjectId) -> Result<Command, SourceError> {
        let mut push = Command::new("git");
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
        Ok(push)
    }

    /// Runs the push in its own process group (git starts ssh or a remote helper under it),
    /// killing the whole group when `repo.fetch_timeout` passes or `interrupt` turns true.
    fn push(&self, id: gix::ObjectId, interrupt: &AtomicBool) -> Result<(), SourceError> {
        use std::os::unix::process::CommandExt as _;
        let mut push = self.push_command(id)?;
        push.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let url = self.url.clone();
        let mut child = push.spawn().map_err(|source| SourceError::PushStart {
            url: url.clone(),
            source,
        })?;
        // Read while it runs: a full pipe would stall it.
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let ended = wait_or_kill(&mut child, self.fetch_timeout, interrupt);
        let (stdout, stderr) = (collect(stdout), collect(stderr));
        let status = match ended {
            Ended::Exited(status) => status,
            Ended::TimedOut => {
                return Err(SourceError::PushTimedOut {
                    url,
                    timeout: self.fetch_timeout,
                });
            }
            Ended::Interrupted => return Err(SourceError::PushInterrupted { url }),
            Ended::Lost(source) => return Err(SourceError::PushStart { url, source }),
        };
        if !status.success() {
            return Err(SourceError::Push {
                url,
                message: stderr.trim().to_string() + stdout.trim(),
            });
        }
        Ok(())
    }
}

/// How a child process ended.
enum Ended {
    Exited(std::process::ExitStatus),
    /// Killed, with its process group, when its time was up.
    TimedOut,
    /// Killed, with its process group, because the interrupt flag was set.
    Interrupted,
    /// Waiting for it failed; it was killed.
    Lost(std::io::Error),
}

/// Waits for `child` (the leader of its own process group) until it exits, `timeout` passes
/// or `interrupt` turns true; in the last two cases kills its group and reaps it.
fn wait_or_kill(
    child: &mut std::process::Child,
    timeout: Duration,
    interrupt: &AtomicBool,
) -> Ended {
    let deadline = Instant::now() + timeout;
    let ended = loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ended::Exited(status),
            Ok(None) => {}
            Err(error) => break Ended::Lost(error),
        }
        if interrupt.load(Ordering::Relaxed) {
            break Ended::Interrupted;
        }
        if Instant::now() >= deadline {
            break Ended::TimedOut;
        }
        std::thread::sleep(PUSH_POLL);
    };
    if let Some(group) = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        // ESRCH when everything has exited meanwhile is expected.
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
    let _ = child.wait();
    ended
}

/// Reads a child's pipe to its end on a thread of its own.
fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(mut pipe) = pipe {
            // Whatever was read before an error is still worth showing.
            let _ = pipe.read_to_end(&mut text);
        }
        String::from_utf8_lossy(&text).into_owned()
    })
}

fn collect(reader: std::thread::JoinHandle<String>) -> String {
    reader.join().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::git::tests::{git, source_for, workspace};

    /// A TCP port that accepts connections and never answers, for as long as it is kept.
    fn silent_remote() -> (std::net::TcpListener, String) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("bound").port();
        (listener, format!("git://127.0.0.1:{port}/repo.git"))
    }

    /// A mirror holding one commit, and a source whose pushes go to `url`.
    fn pushing_to(url: &str, timeout: Duration) -> (tempfile::TempDir, GitSource, gix::ObjectId) {
        let (dir, origin) = workspace();
        let mut source = source_for(&origin.display().to_string(), "main", dir.path());
        source.fetch().expect("fetch the origin");
        let tip = source.branch_tip().expect("mirror").expect("a tip");
        source.url = url.to_string();
        source.fetch_timeout = timeout;
        let id = gix::ObjectId::from_hex(tip.0.as_bytes()).expect("a commit id");
        (dir, source, id)
    }

    #[test]
    fn a_push_to_a_remote_that_never_answers_is_killed_at_the_timeout() {
        let (_listener, url) = silent_remote();
        let (_dir, source, id) = pushing_to(&url, Duration::from_secs(2));
        let started = Instant::now();
        let error = source
            .push(id, &AtomicBool::new(false))
            .expect_err("nothing answers");
        assert!(
            matches!(error, SourceError::PushTimedOut { .. }),
            "{error:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{error}");
        assert!(error.to_string().contains("no answer within 2s"), "{error}");
    }

    #[test]
    fn setting_the_interrupt_flag_kills_a_push_early() {
        let (_listener, url) = silent_remote();
        let (_dir, source, id) = pushing_to(&url, Duration::from_secs(600));
        let interrupt = std::sync::Arc::new(AtomicBool::new(false));
        let setter = {
            let interrupt = interrupt.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(500));
                interrupt.store(true, Ordering::Relaxed);
            })
        };
        let started = Instant::now();
        let error = source.push(id, &interrupt).expect_err("interrupted");
        setter.join().expect("setter ends");
        assert!(
            matches!(error, SourceError::PushInterrupted { .. }),
            "{error:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{error}");
    }

    #[test]
    fn a_revert_commit_is_pushed_to_a_local_remote() {
        let (dir, origin) = workspace();
        git(&origin, &["config", "receive.denyCurrentBranch", "ignore"]);
        let healthy = git(&origin, &["rev-parse", "HEAD"]);
        std::fs::write(origin.join("env/app.yaml"), "kind: ConfigMap\n# bad\n").expect("write");
        git(&origin, &["commit", "-qam", "bad"]);
        let source = source_for(&origin.display().to_string(), "main", dir.path());
        let pushed = source
            .push_revert_commit(
                RevertScope::Folder("env"),
                &Revision(healthy.clone()),
                "Revert env",
                &AtomicBool::new(false),
            )
            .expect("pushed")
            .expect("a commit was needed");
        assert_eq!(git(&origin, &["rev-parse", "main"]), pushed.0);
        let tree = |rev: &str| git(&origin, &["rev-parse", &format!("{rev}:env")]);
        assert_eq!(tree(&pushed.0), tree(&healthy));
    }
}
