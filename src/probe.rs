//! Runs health checks against the world: HTTP requests, Prometheus queries, commands.

use std::time::Duration;

use serde_json::Value;

use crate::health::{self, CheckKind, CheckResult, HealthCheckConfig};

/// Longest command output quoted in a failed check's detail.
const DETAIL_LIMIT: usize = 300;

/// Runs one health check once: the seam through which a rollout looks at the world, so its
/// driver can be tested with scripted verdicts.
pub trait CheckRunner: Send + Sync {
    fn run(
        &self,
        check: &HealthCheckConfig,
    ) -> impl std::future::Future<Output = CheckResult> + Send;
}

impl CheckRunner for Prober {
    fn run(
        &self,
        check: &HealthCheckConfig,
    ) -> impl std::future::Future<Output = CheckResult> + Send {
        Prober::run(self, check)
    }
}

/// Runs checks; holds one HTTP client for all of them, when any of them needs one.
#[derive(Debug, Clone)]
pub struct Prober {
    client: Option<reqwest::Client>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for health checks: {0}")]
pub struct ProberError(String);

impl Prober {
    /// A prober for `checks`. The HTTP client (which reads the system's CA certificates, tens
    /// of milliseconds) is built only when an HTTP or Prometheus check will use it.
    pub fn new(checks: &[HealthCheckConfig]) -> Result<Self, ProberError> {
        let needs_http = checks
            .iter()
            .any(|check| !matches!(check.check, CheckKind::Exec { .. }));
        if !needs_http {
            return Ok(Self { client: None });
        }
        // reqwest is built without a bundled crypto provider; ring is the process-wide one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .user_agent(concat!("gitopsd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProberError(e.to_string()))?;
        Ok(Self {
            client: Some(client),
        })
    }

    /// The HTTP client; `new` built one if any check needs it.
    fn client(&self, check: &str) -> Result<&reqwest::Client, CheckResult> {
        self.client.as_ref().ok_or_else(|| {
            CheckResult::Unhealthy(format!(
                "{check}: no HTTP client (the prober was made for other checks)"
            ))
        })
    }

    /// Runs one check once.
    pub async fn run(&self, check: &HealthCheckConfig) -> CheckResult {
        match &check.check {
            CheckKind::Http {
                url,
                expect_status,
                body_contains,
                timeout,
            } => {
                self.http(url, *expect_status, body_contains.as_deref(), *timeout)
                    .await
            }
            CheckKind::Prometheus {
                url,
                query,
                min,
                max,
                empty_is_healthy,
                timeout,
            } => {
                self.prometheus(url, query, *min, *max, *empty_is_healthy, *timeout)
                    .await
            }
            CheckKind::Exec { argv, timeout } => exec(argv, *timeout).await,
        }
    }

    async fn http(
        &self,
        url: &str,
        expect_status: u16,
        body_contains: Option<&str>,
        timeout: Duration,
    ) -> CheckResult {
        let client = match self.client(url) {
            Ok(client) => client,
            Err(unhealthy) => return unhealthy,
        };
        let response = match client.get(url).timeout(timeout).send().await {
            Ok(response) => response,
            Err(error) => return CheckResult::Unhealthy(format!("GET {url}: {error}")),
        };
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        health::http_verdict(status, &body, expect_status, body_contains)
    }

    async fn prometheus(
        &self,
        url: &str,
        query: &str,
        min: Option<f64>,
        max: Option<f64>,
        empty_is_healthy: bool,
        timeout: Duration,
    ) -> CheckResult {
        let endpoint = match reqwest::Url::parse_with_params(
            &format!("{url}/api/v1/query"),
            &[("query", query)],
        ) {
            Ok(endpoint) => endpoint,
            Err(error) => {
                return CheckResult::Unhealthy(format!("bad prometheus url {url}: {error}"));
            }
        };
        let client = match self.client(url) {
            Ok(client) => client,
            Err(unhealthy) => return unhealthy,
        };
        let response = match client.get(endpoint).timeout(timeout).send().await {
            Ok(response) => response,
            Err(error) => return CheckResult::Unhealthy(format!("prometheus {url}: {error}")),
        };
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(error) => return CheckResult::Unhealthy(format!("prometheus {url}: {error}")),
        };
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(answer) => health::prometheus_verdict(&answer, min, max, empty_is_healthy),
            Err(error) => CheckResult::Unhealthy(format!("prometheus answer is not JSON: {error}")),
        }
    }
}

/// Runs a command without a shell; exit status 0 is healthy.
async fn exec(argv: &[String], timeout: Duration) -> CheckResult {
    let Some((program, args)) = argv.split_first() else {
        return CheckResult::Unhealthy("empty command".into());
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own process group, so what the check starts ends with it.
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(error) => return CheckResult::Unhealthy(format!("{program}: {error}")),
    };
    // Kills the whole group when the check ends: finished, timed out, or dropped because the
    // rollout stopped (a shell's children would otherwise outlive it).
    let _group = child.id().and_then(GroupGuard::of);
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => CheckResult::Unhealthy(format!(
            "{program}: no answer within {}",
            humantime::format_duration(timeout)
        )),
        Ok(Err(error)) => CheckResult::Unhealthy(format!("{program}: {error}")),
        Ok(Ok(output)) if output.status.success() => CheckResult::Healthy,
        Ok(Ok(output)) => {
            let text = if output.stderr.is_empty() {
                output.stdout
            } else {
                output.stderr
            };
            let text = String::from_utf8_lossy(&text);
            let mut detail = text.trim().to_string();
            if detail.len() > DETAIL_LIMIT {
                let cut = (0..=DETAIL_LIMIT)
                    .rev()
                    .find(|index| detail.is_char_boundary(*index))
                    .unwrap_or(0);
                detail.truncate(cut);
                detail.push('…');
            }
            CheckResult::Unhealthy(format!("{program} exited with {}: {detail}", output.status))
        }
    }
}

/// Sends SIGKILL to a process group when dropped.
struct GroupGuard(rustix::process::Pid);

impl GroupGuard {
    fn of(leader: u32) -> Option<Self> {
        Some(Self(rustix::process::Pid::from_raw(
            i32::try_from(leader).ok()?,
        )?))
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // ESRCH once everything has exited is expected.
        let _ = rustix::process::kill_process_group(self.0, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[tokio::test]
    async fn exec_exit_status_decides() {
        assert!(
            exec(&argv(&["true"]), Duration::from_secs(5))
                .await
                .is_healthy()
        );
        let failed = exec(
            &argv(&["sh", "-c", "echo broken >&2; exit 3"]),
            Duration::from_secs(5),
        )
        .await;
        let CheckResult::Unhealthy(detail) = failed else {
            panic!("expected a failure");
        };
        assert!(detail.contains("exit status: 3"), "{detail}");
        assert!(detail.contains("broken"), "{detail}");
    }

    #[tokio::test]
    async fn what_a_check_starts_ends_with_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let result = exec(&argv(&["sh", "-c", &script]), Duration::from_millis(500)).await;
        assert!(!result.is_healthy());
        let pid = tokio::fs::read_to_string(&pidfile)
            .await
            .expect("the check started its child");
        let proc_dir = format!("/proc/{}", pid.trim());
        let mut gone = false;
        for _ in 0..100 {
            // Gone, or a zombie waiting for init to reap it.
            let state = tokio::fs::read_to_string(format!("{proc_dir}/stat")).await;
            if state.map_or(true, |stat| stat.contains(") Z ")) {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "the check's child {} outlived it", pid.trim());
    }

    #[tokio::test]
    async fn exec_timeout_is_a_failure() {
        let result = exec(&argv(&["sleep", "5"]), Duration::from_millis(100)).await;
        assert!(
            matches!(result, CheckResult::Unhealthy(ref d) if d.contains("no answer")),
            "{result:?}"
        );
    }

    /// Answers every connection with `status` and `body`, on 127.0.0.1.
    fn serve(status: u16, body: &'static str) -> std::net::SocketAddr {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        std::thread::spawn(move || {
            // Two requests are enough for a test; the thread ends with them.
            for stream in listener.incoming().take(2) {
                let Ok(mut stream) = stream else { continue };
                let mut buffer = [0u8; 1024];
                let _ = stream.read(&mut buffer);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        address
    }

    fn http_check(address: std::net::SocketAddr, body_contains: Option<&str>) -> HealthCheckConfig {
        HealthCheckConfig {
            name: "web".into(),
            check: CheckKind::Http {
                url: format!("http://{address}/health"),
                expect_status: 200,
                body_contains: body_contains.map(str::to_string),
                timeout: Duration::from_secs(5),
            },
            interval: Duration::from_secs(1),
            failures: 1,
        }
    }

    #[tokio::test]
    async fn http_check_reads_status_and_body() {
        let ok = serve(200, "status: ok");
        let prober = Prober::new(&[http_check(ok, None)]).expect("client");
        assert!(prober.run(&http_check(ok, Some("ok"))).await.is_healthy());
        assert!(
            !prober
                .run(&http_check(ok, Some("ready")))
                .await
                .is_healthy()
        );
        let failing = serve(503, "down");
        let result = prober.run(&http_check(failing, None)).await;
        assert_eq!(
            result,
            CheckResult::Unhealthy("status 503, expected 200".into())
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("address");
        assert!(!prober.run(&http_check(closed, None)).await.is_healthy());
    }

    #[tokio::test]
    async fn missing_program_is_a_failure() {
        let result = exec(&argv(&["/nonexistent/check"]), Duration::from_secs(1)).await;
        assert!(!result.is_healthy());
    }
}
