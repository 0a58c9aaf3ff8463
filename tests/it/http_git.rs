//! Fetching over smart HTTP: `git http-backend` behind a small HTTP server on 127.0.0.1.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use base64::Engine as _;

use crate::helpers::*;

/// Serves repositories under `root` through `git http-backend`; with `credentials`, only
/// requests that carry `Authorization: Basic <user:token>`.
struct GitHttpServer {
    address: SocketAddr,
    unauthorized: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GitHttpServer {
    fn start(root: &Path, credentials: Option<(&str, &str)>) -> Self {
        Self::start_with(root, credentials, None)
    }

    /// With `tls`, serves HTTPS.
    fn start_with(
        root: &Path,
        credentials: Option<(&str, &str)>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let expected = credentials.map(|(user, token)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"))
            )
        });
        let unauthorized = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let root = root.to_path_buf();
        let thread = {
            let (unauthorized, stop) = (unauthorized.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    match &tls {
                        None => handle(stream, &root, expected.as_deref(), &unauthorized),
                        Some(config) => {
                            let Ok(connection) = rustls::ServerConnection::new(config.clone())
                            else {
                                continue;
                            };
                            let tls_stream = rustls::StreamOwned::new(connection, stream);
                            handle(tls_stream, &root, expected.as_deref(), &unauthorized);
                        }
                    }
                }
            })
        };
        Self {
            address,
            unauthorized,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads a chunked body (RFC 9112 §7.1).
fn read_chunked(reader: &mut impl BufRead) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        if reader.read_line(&mut size_line).unwrap_or(0) == 0 {
            break;
        }
        let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
            .unwrap_or(0);
        if size == 0 {
            let mut trailer = String::new();
            let _ = reader.read_line(&mut trailer);
            break;
        }
        let mut chunk = vec![0; size + 2];
        if reader.read_exact(&mut chunk).is_err() {
            break;
        }
        body.extend_from_slice(&chunk[..size]);
    }
    body
}

fn handle(
    mut stream: impl Read + Write,
    root: &PathBuf,
    expected: Option<&str>,
    unauthorized: &AtomicUsize,
) {
    let mut reader = BufReader::new(&mut stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("GET").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    if expected.is_some() && headers.get("authorization").map(String::as_str) != expected {
        drop(reader);
        unauthorized.fetch_add(1, Ordering::SeqCst);
        let _ = write!(
            stream,
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return;
    }
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        read_chunked(&mut reader)
    } else {
        let length = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        let _ = reader.read_exact(&mut body);
        body
    };
    drop(reader);
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut child = Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env(
            "CONTENT_TYPE",
            headers.get("content-type").cloned().unwrap_or_default(),
        )
        .env("CONTENT_LENGTH", body.len().to_string())
        .env(
            "HTTP_CONTENT_ENCODING",
            headers.get("content-encoding").cloned().unwrap_or_default(),
        )
        .env(
            "GIT_PROTOCOL",
            headers.get("git-protocol").cloned().unwrap_or_default(),
        )
        .env("REMOTE_USER", "tester")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("git http-backend starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(&body)
        .expect("request body to http-backend");
    let output = child.wait_with_output().expect("http-backend output");
    let split = output
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| {
            output
                .stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, 2))
        });
    let Some((end, separator)) = split else {
        let _ = write!(
            stream,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
        );
        return;
    };
    let cgi_headers = String::from_utf8_lossy(&output.stdout[..end]).to_string();
    let content = &output.stdout[end + separator..];
    let mut status = "200 OK".to_string();
    let mut response = String::new();
    for line in cgi_headers.lines() {
        match line.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("status") => {
                status = value.trim().to_string()
            }
            Some(_) => response.push_str(&format!("{line}\r\n")),
            None => {}
        }
    }
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\n{response}Content-Length: {}\r\nConnection: close\r\n\r\n",
        content.len()
    );
    let _ = stream.write_all(content);
}

#[test]
fn repository_is_fetched_over_smart_http() {
    let workspace = Workspace::new();
    write_environment(&workspace.repo, "staging", 2);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("initial");
    let server = GitHttpServer::start(workspace.root.path(), None);
    workspace.write_config(&format!("http://{}/repo", server.address), "30s");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    let deployment = std::fs::read_to_string(
        workspace
            .live("staging")
            .join("shop/Deployment.apps/web.yaml"),
    )
    .expect("reconciled over http");
    assert!(deployment.contains("replicas: 2"));
}

#[test]
fn a_server_asking_for_credentials_gets_a_clear_error() {
    let workspace = Workspace::new();
    write_environment(&workspace.repo, "staging", 2);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("initial");
    let server = GitHttpServer::start(workspace.root.path(), Some(("x-access-token", "s3cret")));
    workspace.write_config(&format!("http://{}/repo", server.address), "30s");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    assert!(server.unauthorized.load(Ordering::SeqCst) > 0);
    assert!(
        stderr(&output).contains("fetch failed"),
        "{}",
        stderr(&output)
    );

    // A token over plain http is refused before anything is sent.
    std::fs::write(workspace.path("token"), "s3cret\n").expect("token file");
    workspace.add_repo_keys("token_file = \"token\"");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 2);
    assert!(
        stderr(&output).contains("repo.token_file: needs an https:// url"),
        "{}",
        stderr(&output)
    );
}

/// A self-signed certificate for 127.0.0.1 made with the openssl CLI, and a rustls server
/// config using it. Returns the config and the certificate's PEM path (the client's CA file).
fn tls_config(dir: &Path) -> (Arc<rustls::ServerConfig>, PathBuf) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            // A certificate that is its own trust anchor must not claim to be a CA.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl made a certificate");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .expect("cert file")
        .map(|c| c.expect("certificate"))
        .collect();
    let private_key = PrivateKeyDer::from_pem_file(&key).expect("key file");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .expect("server config");
    (Arc::new(config), cert)
}

#[test]
fn repository_is_fetched_over_https_with_a_token_file() {
    let workspace = Workspace::new();
    write_environment(&workspace.repo, "staging", 2);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("initial");
    let (tls, ca) = tls_config(workspace.root.path());
    let server = GitHttpServer::start_with(
        workspace.root.path(),
        Some(("x-access-token", "s3cret")),
        Some(tls),
    );
    std::fs::write(workspace.path("token"), "s3cret\n").expect("token file");
    workspace.write_config(&format!("https://{}/repo", server.address), "30s");
    workspace.add_repo_keys("token_file = \"token\"");
    // The system trust store, pointed at the test's own CA.
    let run = || {
        workspace
            .gitopsd(&["run", "--once"])
            .env("SSL_CERT_FILE", &ca)
            .output()
            .expect("runs")
    };
    let output = run();
    assert_exit(&output, 0);
    assert!(
        !stderr(&output).contains("s3cret"),
        "the token is never logged"
    );
    let deployment = std::fs::read_to_string(
        workspace
            .live("staging")
            .join("shop/Deployment.apps/web.yaml"),
    )
    .expect("reconciled over https");
    assert!(deployment.contains("replicas: 2"));

    // A wrong token is refused by the server, and the pass fails.
    std::fs::write(workspace.path("token"), "wrong\n").expect("token file");
    write_environment(&workspace.repo, "staging", 3);
    workspace.repo.commit("three");
    let before = server.unauthorized.load(Ordering::SeqCst);
    let output = run();
    assert_exit(&output, 1);
    assert!(server.unauthorized.load(Ordering::SeqCst) > before);
    assert!(
        stderr(&output).contains("fetch failed"),
        "{}",
        stderr(&output)
    );
}
