//! Running a render tool: sandboxed (no shell, a cleared environment, its own process group
//! that dies with the thread starting it), with a timeout and capped output; its failures as
//! an operator reads them.
// tools are started and waited for by a thread of their own (see `run`), never on an async worker.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::Invocation;

/// Bytes of a failed render's stderr kept for the journal and `validate`.
const STDERR_TAIL_BYTES: usize = 2048;

/// Why a tool run printed no manifests; the text is what the journal and `validate` show.
#[derive(Debug, Error)]
pub(super) enum RunError {
    #[error("cannot run {}: {source}", program.display())]
    CannotRun {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread starting it ended")]
    StarterEnded,
    #[error("did not finish within {} (render.timeout); killed", humantime::format_duration(*timeout))]
    TimedOut { timeout: Duration },
    /// Its output was too large or unreadable.
    #[error("{problem}{tail}")]
    Output {
        #[source]
        problem: OutputError,
        tail: Tail,
    },
    #[error("the thread waiting for it ended")]
    WaiterEnded,
    #[error("cannot wait for it: {source}")]
    CannotWait {
        #[source]
        source: std::io::Error,
    },
    #[error("exited with status {code}{tail}")]
    Exited { code: i32, tail: Tail },
    #[error("was killed by a signal{tail}")]
    Signalled { tail: Tail },
    /// The `<tool> version` run failed.
    #[error("cannot tell its version: {0}")]
    Version(#[source] Box<RunError>),
}

/// What went wrong reading a tool's output.
#[derive(Debug, Error)]
pub(super) enum OutputError {
    #[error("printed more than {max} bytes (render.max_output_bytes); killed")]
    TooLarge { max: u64 },
    #[error("cannot read its output: {source}")]
    Read {
        #[source]
        source: std::io::Error,
    },
}

/// The end of a failed tool's stderr, shown after the failure as `: <tail>` when not blank.
#[derive(Debug)]
pub(super) struct Tail(String);

impl std::fmt::Display for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.trim() {
            "" => Ok(()),
            tail => write!(f, ": {tail}"),
        }
    }
}

/// What the tool sees: its folder, PATH, HOME and the variables passed through.
pub(super) struct Sandbox {
    pub(super) dir: PathBuf,
    pub(super) path: std::ffi::OsString,
    pub(super) env: Vec<(String, std::ffi::OsString)>,
}

/// Runs `invocation` in the sandbox: no shell, stdin closed, a cleared environment, its own
/// process group (killed as a whole at the end), stdout capped at `max_output` bytes.
pub(super) async fn run(
    invocation: &Invocation,
    sandbox: &Sandbox,
    timeout: Duration,
    max_output: u64,
) -> Result<Vec<u8>, RunError> {
    let started = start(sandboxed(invocation, sandbox), &invocation.program).await?;
    let group = started.group;
    let kill_group = || {
        if let Some(group) = group {
            // ESRCH once everything has exited is expected.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    };
    let Started {
        stdout,
        stderr,
        exited,
        ..
    } = started;
    let finished = tokio::time::timeout(timeout, async {
        let capped = async {
            let output = read_capped(stdout, max_output).await;
            if output.is_err() {
                // Stops the tool now, so that stderr ends too.
                kill_group();
            }
            output
        };
        let (output, tail) = tokio::join!(capped, read_tail(stderr));
        (output, Tail(tail), exited.await)
    })
    .await;
    // Whatever happened, nothing of the tool's group outlives the render (and the waiting
    // thread ends).
    kill_group();
    let Ok((output, tail, status)) = finished else {
        return Err(RunError::TimedOut { timeout });
    };
    let output = match output {
        Ok(output) => output,
        Err(problem) => return Err(RunError::Output { problem, tail }),
    };
    let status = status
        .map_err(|_| RunError::WaiterEnded)?
        .map_err(|source| RunError::CannotWait { source })?;
    if !status.success() {
        return Err(match status.code() {
            Some(code) => RunError::Exited { code, tail },
            None => RunError::Signalled { tail },
        });
    }
    Ok(output)
}

/// The tool's command line: no shell, stdin closed, a cleared environment, its own process
/// group, and death with the thread that starts it.
fn sandboxed(invocation: &Invocation, sandbox: &Sandbox) -> std::process::Command {
    use std::os::unix::process::CommandExt as _;
    let mut command = std::process::Command::new(&invocation.program);
    command
        .args(&invocation.args)
        .current_dir(&sandbox.dir)
        .env_clear()
        .env("PATH", &sandbox.path)
        .env("HOME", &sandbox.dir)
        .envs(sandbox.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: runs in the forked child before exec; prctl is one async-signal-safe system call
    // and nothing is allocated.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    command
}

/// A started tool: its process group, its output pipes, and its exit status to come.
struct Started {
    group: Option<rustix::process::Pid>,
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
    exited: tokio::sync::oneshot::Receiver<std::io::Result<std::process::ExitStatus>>,
}

/// Starts `command`, and waits for it, on a thread of its own rather than through
/// [`crate::blocking`]: the tool dies with that thread (`PR_SET_PDEATHSIG`), and the thread
/// lives exactly as long as the tool unless gitopsd itself dies, so a SIGKILLed gitopsd takes
/// the tool along. A runtime or blocking-pool thread would not do: it may end while the tool
/// still runs.
async fn start(mut command: std::process::Command, program: &Path) -> Result<Started, RunError> {
    let cannot_run = |source: std::io::Error| RunError::CannotRun {
        program: program.to_path_buf(),
        source,
    };
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (exited_tx, exited_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("gitopsd-render".into())
        .spawn(move || match command.spawn() {
            Ok(mut child) => {
                let pipes = (child.id(), child.stdout.take(), child.stderr.take());
                let _ = started_tx.send(Ok(pipes));
                let _ = exited_tx.send(child.wait());
            }
            Err(error) => {
                let _ = started_tx.send(Err(error));
            }
        })
        .map_err(cannot_run)?;
    let (pid, stdout, stderr) = started_rx
        .await
        .map_err(|_| RunError::StarterEnded)?
        .map_err(cannot_run)?;
    Ok(Started {
        group: rustix::process::Pid::from_raw(i32::try_from(pid).unwrap_or(0)),
        stdout: stdout
            .map(tokio::process::ChildStdout::from_std)
            .transpose()
            .map_err(cannot_run)?,
        stderr: stderr
            .map(tokio::process::ChildStderr::from_std)
            .transpose()
            .map_err(cannot_run)?,
        exited: exited_rx,
    })
}

/// Reads all of `stream`, or fails past `max` bytes.
async fn read_capped(
    stream: Option<impl AsyncRead + Unpin>,
    max: u64,
) -> Result<Vec<u8>, OutputError> {
    let Some(stream) = stream else {
        return Ok(Vec::new());
    };
    let mut output = Vec::new();
    let read = stream
        .take(max.saturating_add(1))
        .read_to_end(&mut output)
        .await;
    match read {
        Ok(_) if output.len() as u64 > max => Err(OutputError::TooLarge { max }),
        Ok(_) => Ok(output),
        Err(source) => Err(OutputError::Read { source }),
    }
}

/// The last [`STDERR_TAIL_BYTES`] of `stream`, as text.
async fn read_tail(stream: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut tail: Vec<u8> = Vec::new();
    let mut buffer = [0u8; 8192];
    while let Ok(n) = stream.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buffer[..n]);
        if tail.len() > STDERR_TAIL_BYTES {
            tail.drain(..tail.len() - STDERR_TAIL_BYTES);
        }
    }
    String::from_utf8_lossy(&tail).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_as_before_with_the_stderr_tail_after_them() {
        let exited = RunError::Exited {
            code: 2,
            tail: Tail("  boom\n".into()),
        };
        assert_eq!(exited.to_string(), "exited with status 2: boom");
        let quiet = RunError::Signalled {
            tail: Tail(" \n".into()),
        };
        assert_eq!(quiet.to_string(), "was killed by a signal");
        let large = RunError::Output {
            problem: OutputError::TooLarge { max: 10 },
            tail: Tail(String::new()),
        };
        assert_eq!(
            large.to_string(),
            "printed more than 10 bytes (render.max_output_bytes); killed"
        );
        let version = RunError::Version(Box::new(RunError::TimedOut {
            timeout: Duration::from_secs(10),
        }));
        assert_eq!(
            version.to_string(),
            "cannot tell its version: did not finish within 10s (render.timeout); killed"
        );
    }
}
