//! The prometheus check against a real Prometheus (Debian's `prometheus` package) that scrapes
//! a metrics endpoint this test serves on 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::helpers::*;

/// Serves `/metrics` with request and error counters the test sets.
struct MetricsServer {
    address: SocketAddr,
    requests: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind metrics port");
        let address = listener.local_addr().expect("address");
        let requests = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, errors, stop) = (requests.clone(), errors.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut stream) = stream else { continue };
                    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
                    let mut line = String::new();
                    // Read the request head; the body (there is none for GET) is ignored.
                    while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                        line.clear();
                    }
                    let body = format!(
                        "# TYPE app_requests_total counter\napp_requests_total {}\n# TYPE app_errors_total counter\napp_errors_total {}\n",
                        requests.load(Ordering::SeqCst),
                        errors.load(Ordering::SeqCst)
                    );
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            })
        };
        Self {
            address,
            requests,
            errors,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, requests: u64, errors: u64) {
        self.requests.store(requests, Ordering::SeqCst);
        self.errors.store(errors, Ordering::SeqCst);
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A GET over a plain TCP connection; returns the body.
pub fn http_get(address: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// Debian's prometheus on 127.0.0.1, scraping `target` every 500 ms.
pub struct Prometheus {
    pub address: String,
    _child: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts it and waits until it has scraped `first_series` from the target.
    pub fn start(target: SocketAddr) -> Self {
        Self::start_waiting_for(target, "app_requests_total")
    }

    pub fn start_waiting_for(target: SocketAddr, first_series: &str) -> Self {
        let binary = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|path| std::path::Path::new(path).is_file())
            .expect("prometheus is installed (Debian package `prometheus`; .ci/run installs it)");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 500ms\n  evaluation_interval: 500ms\nscrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus config");
        // Port 0: prometheus logs the address it got (`msg="Listening on" address=...`).
        let log = dir.path().join("prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("prometheus log"))
            .spawn()
            .expect("prometheus starts");
        let mut child = ChildGuard(child);
        let mut address = None;
        let reported = wait_for(Duration::from_secs(60), || {
            address = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter(|line| line.contains("msg=\"Listening on\""))
                .find_map(|line| {
                    let value = line.split_once(" address=")?.1;
                    Some(value.split_whitespace().next()?.to_string())
                });
            address.is_some() || child.0.try_wait().expect("try_wait").is_some()
        });
        let Some(address) = address.filter(|_| reported) else {
            panic!(
                "prometheus never said where it listens:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        assert!(address.starts_with("127.0.0.1:"), "{address}");
        let prometheus = Self {
            address,
            _child: child,
            _dir: dir,
        };
        let scraped = wait_for(Duration::from_secs(60), || {
            prometheus
                .query(first_series)
                .is_some_and(|body| body.contains("\"value\""))
        });
        assert!(
            scraped,
            "prometheus never scraped {first_series}: {:?} {:?}",
            prometheus.query(first_series),
            http_get(&prometheus.address, "/api/v1/label/__name__/values")
        );
        prometheus
    }
}

impl Prometheus {
    /// The answer to an instant query.
    pub fn query(&self, query: &str) -> Option<String> {
        http_get(&self.address, &format!("/api/v1/query?query={query}"))
    }
}

#[test]
fn error_ratio_under_max_passes_and_over_max_reverts() {
    let metrics = MetricsServer::start();
    metrics.set(1000, 1);
    let prometheus = Prometheus::start(metrics.address);

    let workspace = Workspace::new();
    let extra = format!(
        r#"
[environment.rollout]
steps = [50, 100]
bake = "2s"
verify = "1s"

[[environment.health]]
name = "error-ratio"
type = "prometheus"
url = "http://{}"
query = "app_errors_total / app_requests_total"
max = 0.05
interval = "250ms"
failures = 2
"#,
        prometheus.address
    );
    workspace.write_config_with(&workspace.repo.dir.display().to_string(), "30s", &extra);
    write_environment(&workspace.repo, "production", 1);
    write_environment(&workspace.repo, "staging", 2);
    workspace.repo.commit("initial");
    assert_exit(&workspace.run(&["run", "--once"]), 0);

    // An image change gets a canary; the ratio stays under max, so it is promoted.
    let set_image = |image: &str| {
        let path = workspace.repo.dir.join("environments/staging/app.yaml");
        let text = std::fs::read_to_string(&path).expect("manifest");
        let text = text.replace("registry.example.com/web:1.0.0", image);
        let text = text.replace("registry.example.com/web:2.0.0", image);
        std::fs::write(&path, text).expect("write manifest");
    };
    set_image("registry.example.com/web:2.0.0");
    workspace.repo.commit("web 2.0.0");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    let deployment = workspace
        .live("staging")
        .join("shop/Deployment.apps/web.yaml");
    let live = std::fs::read_to_string(&deployment).expect("deployment");
    assert!(live.contains("web:2.0.0"), "{live}");
    let healthy_tree = tree(&workspace.live("staging"));

    // Errors climb over max: the next rollout fails at its first step and is reverted.
    metrics.set(2000, 600);
    let over = wait_for(Duration::from_secs(20), || {
        http_get(&prometheus.address, "/api/v1/query?query=app_errors_total")
            .is_some_and(|body| body.contains("\"600\""))
    });
    assert!(over, "prometheus did not see the new error count");
    set_image("registry.example.com/web:3.0.0");
    workspace.repo.commit("web 3.0.0");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    let logs = stderr(&output);
    assert!(logs.contains("is above max 0.05"), "{logs}");
    assert_eq!(tree(&workspace.live("staging")), healthy_tree);
}
