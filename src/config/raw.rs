//! The config file as written: serde types with every field optional and every value
//! [`Checked`], so that reading never stops at a problem.

use figment::value::Value;
use serde::Deserialize;

use super::checked::{Checked, Expected, HumanDuration};

/// The file as written: every field optional and every value [`Checked`], so that reading
/// never stops at a problem; `Checker` then turns it into a `Config`.
#[derive(Debug, Deserialize)]
pub(super) struct RawConfig {
    pub(super) repo: Option<RawRepo>,
    pub(super) state: Option<RawState>,
    pub(super) api: Option<RawApi>,
    pub(super) webhook: Option<Vec<RawWebhook>>,
    pub(super) notify: Option<Vec<super::forge::RawNotify>>,
    pub(super) receivers: Option<super::forge::RawReceivers>,
    pub(super) ha: Option<super::ha::RawHa>,
    pub(super) decryption: Option<RawDecryption>,
    pub(super) environment: Option<Checked<Tables>>,
}

/// `[decryption]` and `[environment.decryption]`.
#[derive(Debug, Deserialize)]
pub(super) struct RawDecryption {
    pub(super) provider: Option<Checked<String>>,
    pub(super) age_key_file: Option<Checked<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawEnvironment {
    pub(super) name: Option<Checked<String>>,
    pub(super) path: Option<Checked<String>>,
    pub(super) namespace: Option<Checked<String>>,
    pub(super) render: Option<RawRender>,
    pub(super) target: Option<RawTarget>,
    pub(super) prune: Option<Checked<bool>>,
    pub(super) allow_empty: Option<Checked<bool>>,
    pub(super) create_namespace: Option<Checked<bool>>,
    // Not `#[serde(flatten)]`: that hides unknown keys from serde_ignored.
    pub(super) allowed_namespaces: Option<Checked<Globs>>,
    pub(super) allowed_kinds: Option<Checked<Globs>>,
    pub(super) denied_kinds: Option<Checked<Globs>>,
    pub(super) cluster_scoped: Option<Checked<RawClusterScoped>>,
    pub(super) rollout: Option<RawRollout>,
    pub(super) health: Option<Vec<RawHealthCheck>>,
    pub(super) hook: Option<Vec<super::hooks::RawHook>>,
    pub(super) after: Option<Checked<String>>,
    pub(super) approval: Option<Checked<String>>,
    pub(super) window: Option<RawWindow>,
    pub(super) decryption: Option<RawDecryption>,
}

/// What an environment may touch, as written.
pub(super) struct RawPolicy {
    pub(super) allowed_namespaces: Option<Checked<Globs>>,
    pub(super) allowed_kinds: Option<Checked<Globs>>,
    pub(super) denied_kinds: Option<Checked<Globs>>,
    pub(super) cluster_scoped: Option<Checked<RawClusterScoped>>,
}

/// A list of glob patterns; each item is checked on its own.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(super) struct Globs(pub(super) Vec<Checked<String>>);

impl Expected for Globs {
    const WHAT: &'static str = "an array of glob patterns";
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawClusterScoped {
    Word(String),
    Globs(Vec<Checked<String>>),
}

impl Expected for RawClusterScoped {
    const WHAT: &'static str = "\"allow\", \"deny\" or a list of group/Kind globs";
}

/// The `[[environment]]` tables, each read on its own so one broken table spoils no other.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(super) struct Tables(pub(super) Vec<Value>);

impl Expected for Tables {
    const WHAT: &'static str = "an array of tables";
}

#[derive(Debug, Deserialize)]
pub(super) struct RawTarget {
    #[serde(rename = "type")]
    pub(super) kind: Option<Checked<String>>,
    pub(super) path: Option<Checked<String>>,
    pub(super) kubeconfig: Option<Checked<String>>,
    pub(super) context: Option<Checked<String>>,
    pub(super) force_conflicts: Option<Checked<bool>>,
    pub(super) adopt: Option<Checked<bool>>,
    pub(super) applyset_namespace: Option<Checked<String>>,
    pub(super) concurrency: Option<Checked<u64>>,
    pub(super) requests_per_second: Option<Checked<u64>>,
    pub(super) delete_foreign_namespaces: Option<Checked<bool>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawRollout {
    pub(super) steps: Option<Checked<Steps>>,
    pub(super) bake: Option<Checked<HumanDuration>>,
    pub(super) timeout: Option<Checked<HumanDuration>>,
    pub(super) verify: Option<Checked<HumanDuration>>,
    pub(super) revert_commit: Option<Checked<bool>>,
    pub(super) max_restarts: Option<Checked<u64>>,
    pub(super) strategy: Option<Checked<String>>,
    pub(super) scale_down_delay: Option<Checked<HumanDuration>>,
    pub(super) auto_promote: Option<Checked<bool>>,
    pub(super) preview_replicas: Option<Checked<u64>>,
    pub(super) preview_service: Option<Checked<String>>,
}

/// Canary weights; each item is checked on its own.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(super) struct Steps(pub(super) Vec<Checked<u64>>);

impl Expected for Steps {
    const WHAT: &'static str = "an array like [10, 50, 100]";
}

#[derive(Debug, Deserialize)]
pub(super) struct RawHealthCheck {
    #[serde(rename = "type")]
    pub(super) kind: Option<Checked<String>>,
    pub(super) name: Option<Checked<String>>,
    pub(super) interval: Option<Checked<HumanDuration>>,
    pub(super) failures: Option<Checked<u64>>,
    pub(super) timeout: Option<Checked<HumanDuration>>,
    pub(super) url: Option<Checked<String>>,
    pub(super) expect_status: Option<Checked<u64>>,
    pub(super) body_contains: Option<Checked<String>>,
    pub(super) query: Option<Checked<String>>,
    pub(super) min: Option<Checked<f64>>,
    pub(super) max: Option<Checked<f64>>,
    pub(super) empty_is_healthy: Option<Checked<bool>>,
    pub(super) command: Option<Checked<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawWindow {
    pub(super) schedule: Option<Checked<String>>,
    pub(super) duration: Option<Checked<HumanDuration>>,
    pub(super) timezone: Option<Checked<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawRender {
    pub(super) kind: Option<Checked<String>>,
    pub(super) timeout: Option<Checked<HumanDuration>>,
    pub(super) env: Option<Checked<Vec<String>>>,
    pub(super) max_output_bytes: Option<Checked<u64>>,
    pub(super) max_tree_bytes: Option<Checked<u64>>,
    pub(super) allow_repo_commands: Option<Checked<bool>>,
    pub(super) binary: Option<Checked<String>>,
    pub(super) chart: Option<Checked<String>>,
    pub(super) values: Option<Checked<Vec<String>>>,
    pub(super) release: Option<Checked<String>>,
    pub(super) namespace: Option<Checked<String>>,
    pub(super) command: Option<Checked<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawRepo {
    pub(super) url: Option<Checked<String>>,
    pub(super) branch: Option<Checked<String>>,
    pub(super) poll_interval: Option<Checked<HumanDuration>>,
    pub(super) token_file: Option<Checked<String>>,
    pub(super) token_username: Option<Checked<String>>,
    pub(super) ssh_key_file: Option<Checked<String>>,
    pub(super) ssh_known_hosts_file: Option<Checked<String>>,
    pub(super) max_file_bytes: Option<Checked<u64>>,
    pub(super) max_files: Option<Checked<u64>>,
    pub(super) max_documents: Option<Checked<u64>>,
    pub(super) max_depth: Option<Checked<u64>>,
    pub(super) max_aliases: Option<Checked<u64>>,
    pub(super) max_total_bytes: Option<Checked<u64>>,
    pub(super) fetch_timeout: Option<Checked<HumanDuration>>,
    pub(super) verify: Option<RawVerify>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawVerify {
    pub(super) allowed_signers: Option<Checked<String>>,
    pub(super) gpg_keyring: Option<Checked<String>>,
    pub(super) signing_key: Option<Checked<String>>,
    pub(super) mode: Option<Checked<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawState {
    pub(super) dir: Option<Checked<String>>,
    pub(super) render_cache_max_bytes: Option<Checked<u64>>,
    pub(super) journal_max_bytes: Option<Checked<u64>>,
    pub(super) journal_max_age: Option<Checked<HumanDuration>>,
    pub(super) journal_keep_records: Option<Checked<u64>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawApi {
    pub(super) listen: Option<Checked<String>>,
    pub(super) token_file: Option<Checked<String>>,
    pub(super) dashboard: Option<Checked<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawWebhook {
    pub(super) url: Option<Checked<String>>,
    pub(super) events: Option<Checked<Vec<String>>>,
    pub(super) timeout: Option<Checked<HumanDuration>>,
    pub(super) secret_file: Option<Checked<String>>,
}
