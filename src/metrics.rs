//! Prometheus metrics (prefixed `gitopsd_`), rendered in the text exposition format.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EnvironmentLabel {
    pub environment: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub environment: String,
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabels {
    pub environment: String,
    pub revision: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub environment: String,
    pub check: String,
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SwitchLabels {
    pub environment: String,
    pub direction: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    pub environment: String,
    pub cause: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabel {
    pub verb: String,
}

/// What the Kubernetes client and the watch caches report. Process-wide (one client and one
/// cache per cluster serve every environment), so the backend reaches it through [`kube`];
/// every [`Metrics`] exports it.
#[derive(Debug, Clone, Default)]
pub struct KubeMetrics {
    cache_objects: Family<TypeLabel, Gauge>,
    watch_restarts: Family<TypeLabel, Counter>,
    requests: Family<VerbLabel, Counter>,
}

impl KubeMetrics {
    /// Counts one request to an API server (`get`, `list`, `watch`, `patch`, ...).
    pub fn request(&self, verb: &str) {
        self.requests
            .get_or_create(&VerbLabel { verb: verb.into() })
            .inc();
    }

    /// How many objects the cache of one type holds now.
    pub fn cache_objects(&self, kind: &str, objects: usize) {
        self.cache_objects
            .get_or_create(&TypeLabel {
                r#type: kind.into(),
            })
            .set(i64::try_from(objects).unwrap_or(i64::MAX));
    }

    /// A type's watch started over with a full list (after a 410 Gone or a failed list).
    pub fn watch_restarted(&self, kind: &str) {
        self.watch_restarts
            .get_or_create(&TypeLabel {
                r#type: kind.into(),
            })
            .inc();
    }

    /// A type no environment needs any more: its cache series goes.
    pub fn cache_stopped(&self, kind: &str) {
        self.cache_objects.remove(&TypeLabel {
            r#type: kind.into(),
        });
    }
}

/// The process-wide Kubernetes metrics.
pub fn kube() -> &'static KubeMetrics {
    static KUBE: std::sync::OnceLock<KubeMetrics> = std::sync::OnceLock::new();
    KUBE.get_or_init(KubeMetrics::default)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    pub hook: String,
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// What the push receivers and the commit-status deliveries report. Process-wide (the
/// receiver listener outlives config generations), reached through [`forge`]; every
/// [`Metrics`] exports it.
#[derive(Debug, Clone, Default)]
pub struct ForgeMetrics {
    receiver_requests: Family<HookLabels, Counter>,
    status_deliveries: Family<ResultLabel, Counter>,
}

impl ForgeMetrics {
    /// Counts one request to a configured receiver hook, by what it got (`fetch`, `ignored`,
    /// `ping`, `unauthorized`, `rate_limited`, `too_large`, `malformed`, `timeout`).
    pub fn receiver_request(&self, hook: &str, result: &str) {
        self.receiver_requests
            .get_or_create(&HookLabels {
                hook: hook.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Counts one commit-status attempt (`delivered`, `retried`, `failed`).
    pub fn status_delivery(&self, result: &str) {
        self.status_deliveries
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }
}

/// The process-wide receiver and commit-status metrics.
pub fn forge() -> &'static ForgeMetrics {
    static FORGE: std::sync::OnceLock<ForgeMetrics> = std::sync::OnceLock::new();
    FORGE.get_or_init(ForgeMetrics::default)
}

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// Every metric gitopsd exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconcile_seconds: Family<EnvironmentLabel, Histogram, fn() -> Histogram>,
    rollouts: Family<ResultLabels, Counter>,
    revision: Family<RevisionLabels, Gauge>,
    last_success: Family<EnvironmentLabel, Gauge>,
    fetch_seconds: Family<FetchLabels, Histogram, fn() -> Histogram>,
    checks: Family<CheckLabels, Counter>,
    drift: Family<EnvironmentLabel, Counter>,
    failures: Family<CauseLabels, Counter>,
    verify_failures: Family<EnvironmentLabel, Counter>,
    blocked: Family<EnvironmentLabel, Gauge>,
    switches: Family<SwitchLabels, Counter>,
    passes: Family<ResultLabels, Counter>,
    lease_held: Family<EnvironmentLabel, Gauge>,
    lease_transitions: Family<EnvironmentLabel, Counter>,
    /// The revision label last set per environment, so its old series can be removed.
    revisions_set: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("gitopsd"),
            reconcile_seconds:
                Family::<EnvironmentLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                    seconds_histogram,
                ),
            rollouts: Family::default(),
            revision: Family::default(),
            last_success: Family::default(),
            fetch_seconds:
                Family::<FetchLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                    seconds_histogram,
                ),
            checks: Family::default(),
            drift: Family::default(),
            failures: Family::default(),
            verify_failures: Family::default(),
            blocked: Family::default(),
            switches: Family::default(),
            passes: Family::default(),
            lease_held: Family::default(),
            lease_transitions: Family::default(),
            revisions_set: Default::default(),
        };
        // Two groups, registered in this order so the exposition keeps its order.
        metrics.register_pass_families();
        metrics.register_trouble_families();
        metrics.register_forge_families();
        metrics.register_kube_families();
        metrics
    }
}

impl Metrics {
    /// Registers how passes go: refused tips, pass times, rollout results, the revision and
    /// last success of each environment, fetch times.
    fn register_pass_families(&mut self) {
        self.registry.register(
            "verify_failures",
            "Branch tips refused because a commit was unsigned or not signed by an allowed key ([repo.verify])",
            self.verify_failures.clone(),
        );
        self.registry.register(
            "reconcile_duration_seconds",
            "Time one pass over an environment took (rollouts include their bake and verify time)",
            self.reconcile_seconds.clone(),
        );
        self.registry.register(
            "rollouts",
            "Rollouts by result: healthy, reverted, failed (a first deploy with nothing to revert to)",
            self.rollouts.clone(),
        );
        self.registry.register(
            "revision_info",
            "The revision each environment is at (value 1)",
            self.revision.clone(),
        );
        self.registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the last pass that left the environment healthy",
            self.last_success.clone(),
        );
        self.registry.register(
            "git_fetch_duration_seconds",
            "Time a git fetch took, by result",
            self.fetch_seconds.clone(),
        );
        self.registry.register(
            "blue_green_switches",
            "Blue/green Service switches, by direction: switched (to the new pods), switched_back (to the old pods after a failure)",
            self.switches.clone(),
        );
        self.registry.register(
            "passes",
            "Passes by how much they did: full (read the revision and planned), unchanged (tip, journal and live state as the last pass left them: nothing read), same_folder (a new tip whose folder is the healthy revision's, over unchanged live state: journaled healthy, nothing read)",
            self.passes.clone(),
        );
    }

    /// Registers what goes wrong: check results, drift, rollout failures by cause, blocked
    /// environments.
    fn register_trouble_families(&mut self) {
        self.registry.register(
            "check_results",
            "Health check results, by check and result (healthy, unhealthy)",
            self.checks.clone(),
        );
        self.registry.register(
            "drift",
            "Objects found changed outside git and put back",
            self.drift.clone(),
        );
        self.registry.register(
            "rollout_failures",
            "Failed rollouts by cause: a Kubernetes reason (CrashLoopBackOff, ImagePullBackOff, ProgressDeadlineExceeded, JobFailed, Restarts), CheckFailed, Timeout or Rejected",
            self.failures.clone(),
        );
        self.registry.register(
            "blocked",
            "1 while the cluster refuses an environment's writes or reads (unreachable, 5xx, 429, conflict): the revision is not blamed and is retried",
            self.blocked.clone(),
        );
        self.registry.register(
            "lease_held",
            "[ha]: 1 while this daemon holds the environment's Lease (and acts for it)",
            self.lease_held.clone(),
        );
        self.registry.register(
            "lease_transitions",
            "[ha]: times the environment's Lease came to or left this daemon",
            self.lease_transitions.clone(),
        );
    }

    /// Registers the process-wide Kubernetes client and cache families.
    fn register_kube_families(&mut self) {
        let kube = kube();
        self.registry.register(
            "cache_objects",
            "Objects the daemon's watch cache holds, by type (gitopsd's members only)",
            kube.cache_objects.clone(),
        );
        self.registry.register(
            "watch_restarts",
            "Times a type's watch started over with a full list (410 Gone, a failed list)",
            kube.watch_restarts.clone(),
        );
        self.registry.register(
            "kube_requests",
            "Requests gitopsd's Kubernetes client sent, by verb (get, list, watch, patch, delete, create, discovery)",
            kube.requests.clone(),
        );
    }

    /// Registers the process-wide receiver and commit-status families.
    fn register_forge_families(&mut self) {
        let forge = forge();
        self.registry.register(
            "receiver_requests",
            "Requests to the push receivers, by hook and result (fetch, ignored, ping, unauthorized, rate_limited, too_large, malformed, timeout)",
            forge.receiver_requests.clone(),
        );
        self.registry.register(
            "commit_status_deliveries",
            "Commit status posts to the forge, by result (delivered, retried, failed)",
            forge.status_deliveries.clone(),
        );
    }

    pub fn reconciled(&self, environment: &str, took: Duration) {
        self.reconcile_seconds
            .get_or_create(&EnvironmentLabel {
                environment: environment.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// One pass, by how much it did: `full`, `unchanged` or `same_folder`.
    pub fn pass(&self, environment: &str, result: &str) {
        self.passes
            .get_or_create(&ResultLabels {
                environment: environment.into(),
                result: result.into(),
            })
            .inc();
    }

    pub fn rollout(&self, environment: &str, result: &str) {
        self.rollouts
            .get_or_create(&ResultLabels {
                environment: environment.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Records that `environment` is at `revision` (and no longer at any other).
    pub fn at_revision(&self, environment: &str, revision: &str) {
        let labels = RevisionLabels {
            environment: environment.into(),
            revision: revision.into(),
        };
        let previous = self
            .revisions_set
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(environment.to_string(), revision.to_string());
        if let Some(previous) = previous
            && previous != revision
        {
            self.revision.remove(&RevisionLabels {
                environment: environment.into(),
                revision: previous,
            });
        }
        self.revision.get_or_create(&labels).set(1);
    }

    pub fn succeeded(&self, environment: &str, unix_seconds: i64) {
        self.last_success
            .get_or_create(&EnvironmentLabel {
                environment: environment.into(),
            })
            .set(unix_seconds);
    }

    pub fn fetched(&self, ok: bool, took: Duration) {
        self.fetch_seconds
            .get_or_create(&FetchLabels {
                result: if ok { "ok" } else { "error" }.into(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn check(&self, environment: &str, check: &str, healthy: bool) {
        self.checks
            .get_or_create(&CheckLabels {
                environment: environment.into(),
                check: check.into(),
                result: if healthy { "healthy" } else { "unhealthy" }.into(),
            })
            .inc();
    }

    pub fn drifted(&self, environment: &str, objects: u64) {
        self.drift
            .get_or_create(&EnvironmentLabel {
                environment: environment.into(),
            })
            .inc_by(objects);
    }

    pub fn rollout_failed(&self, environment: &str, cause: &str) {
        self.failures
            .get_or_create(&CauseLabels {
                environment: environment.into(),
                cause: cause.into(),
            })
            .inc();
    }

    /// A blue/green switch, `direction` `switched` or `switched_back`.
    pub fn switched(&self, environment: &str, direction: &str) {
        self.switches
            .get_or_create(&SwitchLabels {
                environment: environment.into(),
                direction: direction.into(),
            })
            .inc();
    }

    pub fn verify_failed(&self, environment: &str) {
        self.verify_failures
            .get_or_create(&EnvironmentLabel {
                environment: environment.into(),
            })
            .inc();
    }

    /// `[ha]`: this daemon took (`true`) or lost or gave up (`false`) the environment's Lease.
    pub fn lease_changed(&self, environment: &str, held: bool) {
        let label = EnvironmentLabel {
            environment: environment.into(),
        };
        self.lease_held.get_or_create(&label).set(i64::from(held));
        self.lease_transitions.get_or_create(&label).inc();
    }

    /// `[ha]`: the environment's Lease is not this daemon's (yet).
    pub fn lease_standby(&self, environment: &str) {
        let label = EnvironmentLabel {
            environment: environment.into(),
        };
        self.lease_held.get_or_create(&label).set(0);
    }

    pub fn set_blocked(&self, environment: &str, blocked: bool) {
        self.blocked
            .get_or_create(&EnvironmentLabel {
                environment: environment.into(),
            })
            .set(i64::from(blocked));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_metrics_and_moves_the_revision_label() {
        let metrics = Metrics::default();
        metrics.at_revision("metrics-test", "aaa");
        metrics.at_revision("metrics-test", "bbb");
        metrics.rollout("metrics-test", "healthy");
        metrics.check("metrics-test", "web", false);
        let text = metrics.render();
        assert!(
            text.contains("gitopsd_revision_info{environment=\"metrics-test\",revision=\"bbb\"} 1"),
            "{text}"
        );
        assert!(!text.contains("revision=\"aaa\""), "{text}");
        assert!(
            text.contains(
                "gitopsd_rollouts_total{environment=\"metrics-test\",result=\"healthy\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("gitopsd_check_results_total{environment=\"metrics-test\",check=\"web\",result=\"unhealthy\"} 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn failures_count_by_cause_and_blocked_is_a_gauge() {
        let metrics = Metrics::default();
        metrics.rollout_failed("staging", "CrashLoopBackOff");
        metrics.rollout_failed("staging", "CrashLoopBackOff");
        metrics.set_blocked("staging", true);
        metrics.verify_failed("staging");
        metrics.switched("staging", "switched");
        let text = metrics.render();
        assert!(
            text.contains("gitopsd_verify_failures_total{environment=\"staging\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gitopsd_rollout_failures_total{environment=\"staging\",cause=\"CrashLoopBackOff\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("gitopsd_blocked{environment=\"staging\"} 1"),
            "{text}"
        );
        metrics.set_blocked("staging", false);
        assert!(
            metrics
                .render()
                .contains("gitopsd_blocked{environment=\"staging\"} 0")
        );
    }

    const KUBE_FAMILIES: [&str; 3] = ["cache_objects", "watch_restarts", "kube_requests"];
    const FORGE_FAMILIES: [&str; 2] = ["receiver_requests", "commit_status_deliveries"];

    #[test]
    fn forge_families_are_process_wide_and_exported_before_kube() {
        forge().receiver_request("metrics-test", "ignored");
        forge().status_delivery("delivered");
        let text = Metrics::default().render();
        assert!(
            text.contains(
                "gitopsd_receiver_requests_total{hook=\"metrics-test\",result=\"ignored\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("gitopsd_commit_status_deliveries_total{result=\"delivered\"}"),
            "{text}"
        );
        let families: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE gitopsd_"))
            .filter_map(|rest| rest.split_whitespace().next())
            .filter(|family| FORGE_FAMILIES.contains(family) || KUBE_FAMILIES.contains(family))
            .take(2)
            .collect();
        assert_eq!(families, FORGE_FAMILIES, "{text}");
    }

    #[test]
    fn kube_families_are_process_wide_and_exported_last() {
        kube().request("list");
        kube().cache_objects("v1/ConfigMap", 3);
        kube().watch_restarted("v1/ConfigMap");
        let text = Metrics::default().render();
        assert!(
            text.contains("gitopsd_cache_objects{type=\"v1/ConfigMap\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("gitopsd_watch_restarts_total{type=\"v1/ConfigMap\"}"),
            "{text}"
        );
        assert!(
            text.contains("gitopsd_kube_requests_total{verb=\"list\"}"),
            "{text}"
        );
        let last: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE gitopsd_"))
            .filter_map(|rest| rest.split_whitespace().next())
            .skip_while(|family| *family != "cache_objects")
            .collect();
        assert_eq!(last, KUBE_FAMILIES, "{text}");
        kube().cache_stopped("v1/ConfigMap");
        assert!(
            !Metrics::default()
                .render()
                .contains("gitopsd_cache_objects{")
        );
    }

    #[test]
    fn every_family_is_exported_in_registration_order() {
        let metrics = Metrics::default();
        // A family with no series is not rendered: give each one.
        metrics.set_blocked("staging", true);
        metrics.rollout_failed("staging", "Timeout");
        metrics.drifted("staging", 1);
        metrics.check("staging", "web", true);
        metrics.fetched(true, Duration::from_millis(10));
        metrics.succeeded("staging", 1_800_000_000);
        metrics.at_revision("staging", "aaa");
        metrics.rollout("staging", "healthy");
        metrics.reconciled("staging", Duration::from_millis(10));
        metrics.verify_failed("staging");
        metrics.switched("staging", "switched");
        let text = metrics.render();
        let families: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE gitopsd_"))
            .filter_map(|rest| rest.split_whitespace().next())
            // Process-wide: other tests in this process may have given them series.
            .filter(|family| !KUBE_FAMILIES.contains(family) && !FORGE_FAMILIES.contains(family))
            .collect();
        assert_eq!(
            families,
            [
                "verify_failures",
                "reconcile_duration_seconds",
                "rollouts",
                "revision_info",
                "last_success_timestamp_seconds",
                "git_fetch_duration_seconds",
                "blue_green_switches",
                "check_results",
                "drift",
                "rollout_failures",
                "blocked",
            ],
            "{text}"
        );
    }
}
