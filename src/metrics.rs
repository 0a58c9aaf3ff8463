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
pub struct CauseLabels {
    pub environment: String,
    pub cause: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    pub result: String,
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
    /// The revision label last set per environment, so its old series can be removed.
    revisions_set: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gitopsd");
        let reconcile_seconds =
            Family::<EnvironmentLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                seconds_histogram,
            );
        let rollouts = Family::<ResultLabels, Counter>::default();
        let revision = Family::<RevisionLabels, Gauge>::default();
        let last_success = Family::<EnvironmentLabel, Gauge>::default();
        let fetch_seconds =
            Family::<FetchLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                seconds_histogram,
            );
        let checks = Family::<CheckLabels, Counter>::default();
        let drift = Family::<EnvironmentLabel, Counter>::default();
        let failures = Family::<CauseLabels, Counter>::default();
        let blocked = Family::<EnvironmentLabel, Gauge>::default();
        let verify_failures = Family::<EnvironmentLabel, Counter>::default();
        registry.register(
            "verify_failures",
            "Branch tips refused because a commit was unsigned or not signed by an allowed key ([repo.verify])",
            verify_failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one pass over an environment took (rollouts include their bake and verify time)",
            reconcile_seconds.clone(),
        );
        registry.register(
            "rollouts",
            "Rollouts by result: healthy, reverted, failed (a first deploy with nothing to revert to)",
            rollouts.clone(),
        );
        registry.register(
            "revision_info",
            "The revision each environment is at (value 1)",
            revision.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the last pass that left the environment healthy",
            last_success.clone(),
        );
        registry.register(
            "git_fetch_duration_seconds",
            "Time a git fetch took, by result",
            fetch_seconds.clone(),
        );
        registry.register(
            "check_results",
            "Health check results, by check and result (healthy, unhealthy)",
            checks.clone(),
        );
        registry.register(
            "drift",
            "Objects found changed outside git and put back",
            drift.clone(),
        );
        registry.register(
            "rollout_failures",
            "Failed rollouts by cause: a Kubernetes reason (CrashLoopBackOff, ImagePullBackOff, ProgressDeadlineExceeded, JobFailed, Restarts), CheckFailed, Timeout or Rejected",
            failures.clone(),
        );
        registry.register(
            "blocked",
            "1 while the cluster refuses an environment's writes or reads (unreachable, 5xx, 429, conflict): the revision is not blamed and is retried",
            blocked.clone(),
        );
        Self {
            registry,
            failures,
            blocked,
            verify_failures,
            reconcile_seconds,
            rollouts,
            revision,
            last_success,
            fetch_seconds,
            checks,
            drift,
            revisions_set: Default::default(),
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, environment: &str, took: Duration) {
        self.reconcile_seconds
            .get_or_create(&EnvironmentLabel {
                environment: environment.into(),
            })
            .observe(took.as_secs_f64());
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

    pub fn verify_failed(&self, environment: &str) {
        self.verify_failures
            .get_or_create(&EnvironmentLabel {
                environment: environment.into(),
            })
            .inc();
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
}
