//! Health verdicts (pure): raw probe answers → check results → a check that failed its step.

use std::time::Duration;

use serde_json::Value;

/// One health check of an environment.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    /// Name shown in logs, status and the journal.
    pub name: String,
    pub check: CheckKind,
    pub interval: Duration,
    /// Consecutive bad results that fail the step.
    pub failures: u32,
}

/// Placeholder in an HTTP check's URL for the host of the new version's Service (see
/// [`HealthCheckConfig::with_preview`]).
pub const PREVIEW_PLACEHOLDER: &str = "{preview}";

impl HealthCheckConfig {
    /// Whether the check names the new version's Service (`{preview}` in an HTTP URL).
    pub fn names_preview(&self) -> bool {
        matches!(&self.check, CheckKind::Http { url, .. } if url.contains(PREVIEW_PLACEHOLDER))
    }

    /// The check with `{preview}` in its HTTP URL replaced by `host`; others as they are.
    pub fn with_preview(&self, host: &str) -> Self {
        let mut check = self.clone();
        if let CheckKind::Http { url, .. } = &mut check.check {
            *url = url.replace(PREVIEW_PLACEHOLDER, host);
        }
        check
    }
}

/// What a health check asks, by its `type`.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    Http {
        url: String,
        expect_status: u16,
        body_contains: Option<String>,
        timeout: Duration,
    },
    Prometheus {
        url: String,
        query: String,
        min: Option<f64>,
        max: Option<f64>,
        /// Whether an empty result counts as healthy.
        empty_is_healthy: bool,
        timeout: Duration,
    },
    Exec {
        /// Program and arguments, split like a shell would but run without one.
        argv: Vec<String>,
        timeout: Duration,
    },
}

/// One probe's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckResult {
    Healthy,
    Unhealthy(String),
}

impl CheckResult {
    pub fn is_healthy(&self) -> bool {
        matches!(self, CheckResult::Healthy)
    }
}

/// A check that had `failures` bad results in a row.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckFailure {
    pub check: String,
    pub detail: String,
    pub consecutive: u32,
}

#[derive(Debug, Clone)]
struct Tracked {
    name: String,
    threshold: u32,
    consecutive: u32,
    last_detail: Option<String>,
}

/// Counts consecutive bad results per check; a check fails once it reaches its `failures`.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    checks: Vec<Tracked>,
}

impl HealthTracker {
    pub fn new(checks: &[HealthCheckConfig]) -> Self {
        Self {
            checks: checks
                .iter()
                .map(|check| Tracked {
                    name: check.name.clone(),
                    threshold: check.failures,
                    consecutive: 0,
                    last_detail: None,
                })
                .collect(),
        }
    }

    /// Records the result of check `index`; returns the failure when this result reaches the
    /// check's threshold. A healthy result resets the count.
    pub fn record(&mut self, index: usize, result: &CheckResult) -> Option<CheckFailure> {
        let tracked = self.checks.get_mut(index)?;
        match result {
            CheckResult::Healthy => {
                tracked.consecutive = 0;
                tracked.last_detail = None;
                None
            }
            CheckResult::Unhealthy(detail) => {
                tracked.consecutive += 1;
                tracked.last_detail = Some(detail.clone());
                (tracked.consecutive >= tracked.threshold).then(|| CheckFailure {
                    check: tracked.name.clone(),
                    detail: detail.clone(),
                    consecutive: tracked.consecutive,
                })
            }
        }
    }

    /// Checks whose last result was bad, with how many bad results in a row.
    pub fn failing(&self) -> Vec<(String, u32, String)> {
        self.checks
            .iter()
            .filter_map(|t| {
                t.last_detail
                    .as_ref()
                    .map(|detail| (t.name.clone(), t.consecutive, detail.clone()))
            })
            .collect()
    }
}

/// Verdict on an HTTP answer.
pub fn http_verdict(
    status: u16,
    body: &str,
    expect_status: u16,
    body_contains: Option<&str>,
) -> CheckResult {
    if status != expect_status {
        return CheckResult::Unhealthy(format!("status {status}, expected {expect_status}"));
    }
    match body_contains {
        Some(needle) if !body.contains(needle) => {
            CheckResult::Unhealthy(format!("body does not contain {needle:?}"))
        }
        _ => CheckResult::Healthy,
    }
}

/// Verdict on a Prometheus `/api/v1/query` answer: every sample must lie within
/// `[min, max]`; an empty result is unhealthy unless `empty_is_healthy`.
pub fn prometheus_verdict(
    answer: &Value,
    min: Option<f64>,
    max: Option<f64>,
    empty_is_healthy: bool,
) -> CheckResult {
    if answer.get("status").and_then(Value::as_str) != Some("success") {
        let error = answer
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("query did not succeed");
        return CheckResult::Unhealthy(format!("prometheus: {error}"));
    }
    let data = &answer["data"];
    let samples: Vec<&Value> = match data.get("resultType").and_then(Value::as_str) {
        Some("vector") => data["result"]
            .as_array()
            .map(|items| items.iter().map(|item| &item["value"]).collect())
            .unwrap_or_default(),
        Some("scalar") => vec![&data["result"]],
        other => {
            return CheckResult::Unhealthy(format!(
                "prometheus: result type {} is not a vector or scalar",
                other.unwrap_or("missing")
            ));
        }
    };
    if samples.is_empty() {
        return if empty_is_healthy {
            CheckResult::Healthy
        } else {
            CheckResult::Unhealthy("query returned no samples".into())
        };
    }
    for sample in samples {
        // A sample is [timestamp, "value"]; the value is a string so NaN and ±Inf fit.
        let Some(value) = sample
            .get(1)
            .and_then(Value::as_str)
            .and_then(|text| text.parse::<f64>().ok())
        else {
            return CheckResult::Unhealthy(format!("unreadable sample {sample}"));
        };
        if value.is_nan() {
            return CheckResult::Unhealthy("value is NaN".into());
        }
        if let Some(min) = min
            && value < min
        {
            return CheckResult::Unhealthy(format!("value {value} is below min {min}"));
        }
        if let Some(max) = max
            && value > max
        {
            return CheckResult::Unhealthy(format!("value {value} is above max {max}"));
        }
    }
    CheckResult::Healthy
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(name: &str, failures: u32) -> HealthCheckConfig {
        HealthCheckConfig {
            name: name.into(),
            check: CheckKind::Exec {
                argv: vec!["true".into()],
                timeout: Duration::from_secs(1),
            },
            interval: Duration::from_secs(1),
            failures,
        }
    }

    #[test]
    fn a_check_fails_only_after_consecutive_bad_results() {
        let mut tracker = HealthTracker::new(&[check("a", 3)]);
        let bad = CheckResult::Unhealthy("500".into());
        assert_eq!(tracker.record(0, &bad), None);
        assert_eq!(tracker.record(0, &bad), None);
        assert_eq!(tracker.record(0, &CheckResult::Healthy), None, "reset");
        assert_eq!(tracker.record(0, &bad), None);
        assert_eq!(tracker.failing(), [("a".to_string(), 1, "500".to_string())]);
        assert_eq!(tracker.record(0, &bad), None);
        let failure = tracker.record(0, &bad).expect("third bad result in a row");
        assert_eq!(failure.consecutive, 3);
        assert_eq!(failure.check, "a");
    }

    #[test]
    fn http_status_and_body() {
        assert!(http_verdict(200, "ok", 200, None).is_healthy());
        assert!(!http_verdict(503, "", 200, None).is_healthy());
        assert!(http_verdict(200, "status: ok", 200, Some("ok")).is_healthy());
        assert!(!http_verdict(200, "status: degraded", 200, Some("ok\n")).is_healthy());
    }

    #[test]
    fn prometheus_thresholds_and_empty_results() {
        let vector = |value: &str| {
            json!({"status": "success", "data": {"resultType": "vector",
                "result": [{"metric": {}, "value": [1700000000.0, value]}]}})
        };
        assert!(prometheus_verdict(&vector("0.001"), None, Some(0.01), false).is_healthy());
        assert!(!prometheus_verdict(&vector("0.2"), None, Some(0.01), false).is_healthy());
        assert!(!prometheus_verdict(&vector("1"), Some(2.0), None, false).is_healthy());
        assert!(!prometheus_verdict(&vector("NaN"), None, Some(1.0), false).is_healthy());
        let empty = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert!(!prometheus_verdict(&empty, None, Some(1.0), false).is_healthy());
        assert!(prometheus_verdict(&empty, None, Some(1.0), true).is_healthy());
        let scalar =
            json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "5"]}});
        assert!(prometheus_verdict(&scalar, Some(1.0), Some(10.0), false).is_healthy());
        let error = json!({"status": "error", "error": "parse error"});
        assert_eq!(
            prometheus_verdict(&error, None, Some(1.0), false),
            CheckResult::Unhealthy("prometheus: parse error".into())
        );
    }
}
