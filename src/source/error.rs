//! What can go wrong reading or writing the git source, with each gix cause kept whole and the
//! remote's failures sorted by kind.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::model::Revision;

/// A cause kept as it came: a gix error, an object id that did not parse.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What kind of failure talking to the remote met, for whoever decides what to tell an
/// operator or whether to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteFailure {
    /// The remote refused the credentials, or wanted some and got none (HTTP 401/403, an ssh
    /// key refused): fix the token or key; trying again changes nothing.
    Authentication,
    /// The remote could not be reached or stopped answering (connection refused, reset,
    /// unreachable, timed out): likely to pass by itself.
    Network,
    /// The configured branch does not exist on the remote.
    MissingRef,
    /// Anything else: a protocol error, a refused or rewritten history, a local failure.
    Other,
}

/// I/O error kinds that mean the connection itself failed.
const NETWORK_KINDS: [std::io::ErrorKind; 9] = [
    std::io::ErrorKind::ConnectionRefused,
    std::io::ErrorKind::ConnectionReset,
    std::io::ErrorKind::ConnectionAborted,
    std::io::ErrorKind::NotConnected,
    std::io::ErrorKind::TimedOut,
    std::io::ErrorKind::HostUnreachable,
    std::io::ErrorKind::NetworkUnreachable,
    std::io::ErrorKind::AddrNotAvailable,
    std::io::ErrorKind::BrokenPipe,
];

impl RemoteFailure {
    /// The kind of a failed fetch, from gix's typed causes, never from their text: gix's own
    /// classes (a 401 challenge is `Unauthenticated`, a 403 or an ssh `Permission denied` is
    /// `PermissionDenied`), the transport refusing an identity, and the `std::io::Error` kinds
    /// and HTTP client errors of a connection that failed.
    pub fn of(error: &gix::Error) -> Self {
        use gix::protocol::transport::client::Error as Transport;
        let refused_identity = error
            .iter_errors()
            .filter_map(|cause| cause.downcast_ref::<Transport>())
            .any(|cause| matches!(cause, Transport::AuthenticationRefused(_)));
        if error.is_unauthenticated() || error.is_permission_denied() || refused_identity {
            return RemoteFailure::Authentication;
        }
        let unreachable = error.iter_errors().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| NETWORK_KINDS.contains(&io.kind()))
                || cause
                    .downcast_ref::<reqwest::Error>()
                    .is_some_and(|http| http.is_connect() || http.is_timeout())
        });
        if unreachable {
            RemoteFailure::Network
        } else {
            RemoteFailure::Other
        }
    }
}

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("cannot open git mirror {}: {}", path.display(), gix_message(source))]
    Open {
        path: PathBuf,
        #[source]
        source: Cause,
    },
    /// A fetch that did not finish: stopped by a timeout or a shutdown, or its worker thread
    /// failed (the daemon's fetch loop reports these).
    #[error("fetch from {url} failed: {message}")]
    Fetch { url: String, message: String },
    /// The remote, or the mirror, refused the fetch; `kind` says how.
    #[error("fetch from {url} failed: {}", gix_message(source))]
    Remote {
        url: String,
        kind: RemoteFailure,
        #[source]
        source: gix::Error,
    },
    #[error("branch {branch:?} does not exist at {url}")]
    MissingBranch { url: String, branch: String },
    #[error("unknown revision {rev:?}")]
    UnknownRevision { rev: String },
    #[error("path {path:?} does not exist at revision {revision}")]
    MissingPath { path: String, revision: Revision },
    #[error("path {path:?} at revision {revision} is not a folder")]
    NotAFolder { path: String, revision: Revision },
    #[error("cannot read {what} at revision {revision}: {}", gix_message(source))]
    Read {
        what: String,
        revision: Revision,
        #[source]
        source: Cause,
    },
    #[error("cannot write the revert commit: {}", gix_message(source))]
    Commit {
        #[source]
        source: Cause,
    },
    /// The tip or the healthy revision of a revert commit is not in the mirror.
    #[error("cannot write the revert commit: {revision}: {source}")]
    CommitBase {
        revision: Revision,
        #[source]
        source: gix::Error,
    },
    #[error("cannot write the revert commit: signing with {}: {source}", key_file.display())]
    Sign {
        key_file: PathBuf,
        #[source]
        source: Cause,
    },
    #[error(
        "cannot write the revert commit: signing with {}: the key is encrypted; gitopsd needs one without a passphrase (readable by its user only)",
        key_file.display()
    )]
    EncryptedKey { key_file: PathBuf },
    /// `git push` ran and failed; its own report.
    #[error("git push to {url} failed: {message}")]
    Push { url: String, message: String },
    #[error("git push to {url} failed: cannot run git: {source}")]
    PushStart {
        url: String,
        #[source]
        source: std::io::Error,
    },
    /// `git push` did not finish in time and was killed, with its process group.
    #[error(
        "git push to {url} failed: no answer within {} (repo.fetch_timeout); killed",
        humantime::format_duration(*timeout)
    )]
    PushTimedOut { url: String, timeout: Duration },
    /// `git push` was killed, with its process group, because gitopsd is stopping.
    #[error("git push to {url} failed: stopped by shutdown")]
    PushInterrupted { url: String },
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

impl SourceError {
    /// How talking to the remote failed, for the errors that come from it.
    pub fn remote_failure(&self) -> Option<RemoteFailure> {
        match self {
            SourceError::Remote { kind, .. } => Some(*kind),
            SourceError::MissingBranch { .. } => Some(RemoteFailure::MissingRef),
            SourceError::PushTimedOut { .. } => Some(RemoteFailure::Network),
            _ => None,
        }
    }
}

/// A gix error with its causes: gix's Display shows only the outermost message ("Transport
/// handshake failed"), its Debug the whole chain.
pub fn gix_message(error: &impl std::fmt::Debug) -> String {
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
