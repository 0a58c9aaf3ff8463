//! The repository settings the source works from (`[repo]`, checked and built by config).

use std::path::PathBuf;
use std::time::Duration;

use super::verify::VerifyConfig;
use crate::manifest::Limits;

/// The repository (`[repo]`): where it is, how to reach it, and how much of it to read.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoConfig {
    /// URL as gix understands it; local paths are made absolute.
    pub url: String,
    /// Set when the repository is on this host (a path or `file://`): watched for new commits.
    pub local_path: Option<PathBuf>,
    pub branch: String,
    pub poll_interval: Duration,
    pub token_file: Option<PathBuf>,
    pub token_username: String,
    pub ssh_key_file: Option<PathBuf>,
    /// known_hosts for ssh; host keys are then checked strictly against it alone.
    pub ssh_known_hosts_file: Option<PathBuf>,
    pub max_file_bytes: u64,
    /// How long one fetch may take before it is interrupted.
    pub fetch_timeout: Duration,
    /// Manifest files one environment folder may hold.
    pub max_files: usize,
    /// Bytes of manifests one environment folder may hold.
    pub max_total_bytes: u64,
    /// Documents, nesting and aliases one revision's YAML may use.
    pub limits: Limits,
    /// `[repo.verify]`: only signed commits are applied.
    pub verify: Option<VerifyConfig>,
}
