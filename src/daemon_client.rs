//! Asking the running daemon: where its API listens, and what its `/status` knows that the
//! journal does not (the watch cache's stores, what the cluster refuses now).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::config::{ApiConfig, Config};

/// How long `status` waits for the daemon before printing the journal's view alone.
const STATUS_WAIT: Duration = Duration::from_secs(2);

/// Why `<state dir>/api.addr` names no address.
#[derive(Debug, Error)]
pub enum AddressFileError {
    #[error(transparent)]
    Read(#[from] std::io::Error),
    #[error("it does not hold an address: {0}")]
    Parse(#[from] std::net::AddrParseError),
}

/// The address the running daemon's API listens on: the configured one, or for port 0 the one
/// the daemon wrote to `<state dir>/api.addr` (the file, and why not, on failure).
pub async fn address(
    config: &Config,
    api: &ApiConfig,
) -> Result<SocketAddr, (PathBuf, AddressFileError)> {
    if api.listen.port() != 0 {
        return Ok(api.listen);
    }
    let path = crate::server::address_file(&config.state.dir);
    let read = async {
        let text = tokio::fs::read_to_string(&path).await?;
        Ok::<_, AddressFileError>(text.trim().parse::<SocketAddr>()?)
    };
    read.await.map_err(|source| (path, source))
}

/// One store of the watch cache, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CacheRow {
    #[serde(rename = "type")]
    pub kind: String,
    pub state: String,
    pub objects: usize,
    pub restarts: u64,
}

/// What the running daemon says of one environment.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LiveStatus {
    pub environment: String,
    #[serde(default)]
    pub blocked: Option<String>,
    #[serde(default)]
    pub cache: Vec<CacheRow>,
    /// `[ha]`: who holds the environment's Lease.
    #[serde(default)]
    pub lease: Option<LeaseRow>,
    /// `[ha]`, while another daemon holds it: the history the cluster keeps.
    #[serde(default)]
    pub cluster_history: Option<crate::history::History>,
}

/// `[ha]`: an environment's Lease as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LeaseRow {
    pub holder: Option<String>,
    pub expires: Option<String>,
    #[serde(default)]
    pub held_here: bool,
}

/// The running daemon's view by environment; `None` when no API is configured or no daemon
/// answers within [`STATUS_WAIT`] (`status` then shows the journal's view alone).
pub async fn status(config: &Config) -> Option<BTreeMap<String, LiveStatus>> {
    let api = config.api.as_ref()?;
    let address = address(config, api).await.ok()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(STATUS_WAIT)
        .build()
        .ok()?;
    let response = client
        .get(format!("http://{address}/status"))
        .send()
        .await
        .ok()?;
    let body = response.bytes().await.ok()?;
    let environments: Vec<LiveStatus> = serde_json::from_slice(&body).ok()?;
    Some(
        environments
            .into_iter()
            .map(|environment| (environment.environment.clone(), environment))
            .collect(),
    )
}

/// The daemon's lines under an environment's `status`: what blocks it, and each store it reads.
pub fn write_live(live: &LiveStatus, out: &mut dyn Write) -> io::Result<()> {
    if let Some(lease) = &live.lease {
        let holder = lease.holder.as_deref().unwrap_or("nobody");
        let here = if lease.held_here {
            " (this daemon)"
        } else {
            ""
        };
        let until = lease
            .expires
            .as_deref()
            .map(|expires| format!(", Lease until {expires}"))
            .unwrap_or_default();
        writeln!(out, "  held by:                {holder}{here}{until}")?;
    }
    if let Some(blocked) = &live.blocked {
        writeln!(out, "  blocked:                {blocked}")?;
    }
    if live.cache.is_empty() {
        return Ok(());
    }
    writeln!(out, "  watch cache:")?;
    for row in &live.cache {
        writeln!(
            out,
            "    {:<40} {:<8} {} objects, {} restarts",
            row.kind, row.state, row.objects, row.restarts
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `gitopsd status` prints for `row`.
    fn printed(row: &LiveStatus) -> String {
        let mut out = Vec::new();
        write_live(row, &mut out).expect("written");
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn a_standby_daemon_names_the_holder_and_brings_the_clusters_history() {
        let body = r#"[{"environment": "web", "lease": {"holder": "host-b",
            "expires": "2026-12-07T10:00:17Z", "held_here": false},
            "cluster_history": {"last_healthy": "abc", "failed": ["def"]}},
            {"environment": "api", "lease": {"holder": "host-a", "expires": null, "held_here": true}}]"#;
        let parsed: Vec<LiveStatus> = serde_json::from_str(body).expect("a /status body");
        let text = printed(&parsed[0]);
        assert!(
            text.contains("held by:                host-b, Lease until 2026-12-07T10:00:17Z"),
            "{text}"
        );
        let history = parsed[0]
            .cluster_history
            .as_ref()
            .expect("the cluster's history");
        assert_eq!(
            history.last_healthy.as_ref().map(|r| r.0.as_str()),
            Some("abc")
        );
        assert!(history.failed.iter().any(|r| r.0 == "def"));
        let text = printed(&parsed[1]);
        assert!(
            text.contains("held by:                host-a (this daemon)"),
            "{text}"
        );
    }

    #[test]
    fn the_daemons_view_reads_the_status_endpoints_rows() {
        let body = r#"[{"environment": "staging", "paused": false, "blocked": "cache syncing (v1/Service)",
            "cache": [{"type": "v1/ConfigMap", "state": "synced", "objects": 12, "restarts": 1},
                      {"type": "v1/Service", "state": "syncing", "objects": 0, "restarts": 0}]},
            {"environment": "production"}]"#;
        let parsed: Vec<LiveStatus> = serde_json::from_str(body).expect("a /status body");
        let text = printed(&parsed[0]);
        assert!(text.contains("blocked:                cache syncing (v1/Service)"));
        assert!(text.contains("v1/ConfigMap"));
        assert!(text.contains("synced   12 objects, 1 restarts"), "{text}");
        assert!(text.contains("syncing  0 objects"), "{text}");
        assert!(
            printed(&parsed[1]).is_empty(),
            "a directory target shows nothing more"
        );
    }
}
