//! kubectl, as the floor for writes and as the outside writer and observer.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// kubectl on one cluster.
#[derive(Clone)]
pub struct Kubectl {
    pub binary: PathBuf,
    pub kubeconfig: PathBuf,
}

/// A `kubectl get --watch` whose output lines arrive with the time they were read.
pub struct Watch {
    child: Child,
    lines: mpsc::Receiver<(SystemTime, String)>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Watch {
    /// The next line, or `None` after `wait`.
    pub fn next(&self, wait: Duration) -> Option<(SystemTime, String)> {
        self.lines.recv_timeout(wait).ok()
    }

    /// The first line (and when it came) that `wanted` accepts, within `wait`.
    pub fn until(
        &self,
        wait: Duration,
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Option<(SystemTime, String)> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let (at, line) = self.next(left)?;
            if wanted(&line) {
                return Some((at, line));
            }
        }
    }
}

impl Kubectl {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        command
    }

    /// Runs kubectl; its stdout. Panics when it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let output = self.command(args).output().expect("kubectl runs");
        assert!(
            output.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `kubectl get --watch` with `args`, one output line per event.
    pub fn watch(&self, args: &[&str]) -> Watch {
        let mut child = self
            .command(&["get", "--watch"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send((SystemTime::now(), line)).is_err() {
                    break;
                }
            }
        });
        Watch { child, lines }
    }

    /// Waits (up to 10 minutes) until no namespace is terminating, as an earlier run's would
    /// be: their deletion loads the server.
    pub fn wait_for_terminating_namespaces(&self) {
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            let phases = self.run(&[
                "get",
                "namespaces",
                "-o",
                "jsonpath={.items[*].status.phase}",
            ]);
            if !phases.contains("Terminating") {
                return;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// The floor for writes: `processes` workers side by side, each running one
    /// `kubectl apply --server-side -f` per environment of its share of `files` (whole
    /// environments, Namespace first), one after the other. (One kubectl per worker over its
    /// whole share was tried first: with 2,500 objects each, kubectl v1.28.7 had sent nothing
    /// after 17 minutes.) The wall time from the first start to the last exit.
    pub fn parallel_apply(&self, dir: &Path, files: &[String], processes: usize) -> Duration {
        let shares: Vec<Vec<PathBuf>> = (0..processes)
            .map(|worker| {
                let folder = dir.join(format!("kubectl-{worker}"));
                std::fs::create_dir_all(&folder).expect("mkdir");
                files
                    .iter()
                    .enumerate()
                    .filter(|(index, _)| index % processes == worker)
                    .map(|(index, text)| {
                        let file = folder.join(format!("{index:05}.yaml"));
                        std::fs::write(&file, text).expect("manifests");
                        file
                    })
                    .collect()
            })
            .collect();
        let started = Instant::now();
        std::thread::scope(|scope| {
            for share in &shares {
                scope.spawn(move || {
                    for file in share {
                        let status = self
                            .command(&[
                                "apply",
                                "--server-side",
                                "--field-manager=kubectl-bench",
                                "-f",
                            ])
                            .arg(file)
                            .stdout(Stdio::null())
                            .status()
                            .expect("kubectl runs");
                        assert!(
                            status.success(),
                            "kubectl apply -f {} failed",
                            file.display()
                        );
                    }
                });
            }
        });
        started.elapsed()
    }
}
