//! `[[environment.health]]`: each health check's table, read and checked by its type.

use std::time::Duration;

use crate::health::{CheckKind, HealthCheckConfig};

use super::check::{Checker, Unknown};
use super::checked::{Checked, Reader};
use super::join;
use super::raw::RawHealthCheck;

impl Checker {
    pub(super) fn health_checks(
        &mut self,
        raw: Vec<RawHealthCheck>,
        prefix: &str,
        unknown: &mut Unknown,
    ) -> Vec<HealthCheckConfig> {
        let mut checks = Vec::new();
        for (index, raw) in raw.into_iter().enumerate() {
            let table = format!("health[{index}]");
            if let Some(check) = self.health_check(raw, &join(prefix, &table), &table, unknown) {
                checks.push(check);
            }
            self.problems.extend(unknown.under(&table));
        }
        checks
    }

    fn health_check(
        &mut self,
        mut raw: RawHealthCheck,
        key: &str,
        table: &str,
        unknown: &mut Unknown,
    ) -> Option<HealthCheckConfig> {
        let mut read = self.reader(key);
        let kind = read.required("type", raw.kind.take());
        let name = read.get("name", raw.name.take());
        let interval = read
            .duration("interval", raw.interval.take())
            .unwrap_or(Duration::from_secs(10));
        let failures = read.get("failures", raw.failures.take()).unwrap_or(3);
        if failures == 0 {
            read.problem("failures", "must be at least 1");
        }
        let timeout = read.duration("timeout", raw.timeout.take());
        let kind = kind?;
        let specific = [
            ("url", raw.url.is_some()),
            ("expect_status", raw.expect_status.is_some()),
            ("body_contains", raw.body_contains.is_some()),
            ("query", raw.query.is_some()),
            ("min", raw.min.is_some()),
            ("max", raw.max.is_some()),
            ("empty_is_healthy", raw.empty_is_healthy.is_some()),
            ("command", raw.command.is_some()),
        ];
        let check = match kind.as_str() {
            "http" => http(&mut read, raw, &specific, timeout)?,
            "prometheus" => prometheus(&mut read, raw, &specific, timeout)?,
            "exec" => exec(&mut read, raw, &specific, timeout)?,
            other => {
                read.problem(
                    "type",
                    format!("unknown check type {other:?}; expected \"http\", \"prometheus\" or \"exec\""),
                );
                unknown.drop_under(table);
                return None;
            }
        };
        let name = name.unwrap_or_else(|| match &check {
            CheckKind::Http { url, .. } => format!("http {url}"),
            CheckKind::Prometheus { query, .. } => format!("prometheus {query}"),
            CheckKind::Exec { argv, .. } => format!("exec {}", argv.join(" ")),
        });
        Some(HealthCheckConfig {
            name,
            check,
            interval,
            failures: u32::try_from(failures).unwrap_or(u32::MAX).max(1),
        })
    }
}

/// `type = "http"`: a status to expect and, optionally, text the body must hold.
fn http(
    read: &mut Reader<'_>,
    raw: RawHealthCheck,
    specific: &[(&str, bool)],
    timeout: Option<Duration>,
) -> Option<CheckKind> {
    let url = read.required("url", raw.url);
    let expect_status = read.get("expect_status", raw.expect_status).unwrap_or(200);
    let body_contains = read.get("body_contains", raw.body_contains);
    if !(100..=599).contains(&expect_status) {
        read.problem("expect_status", "must be an HTTP status (100-599)");
    }
    read.unknown_unless(specific, &["url", "expect_status", "body_contains"]);
    Some(CheckKind::Http {
        url: url?,
        expect_status: u16::try_from(expect_status).unwrap_or(200),
        body_contains,
        timeout: timeout.unwrap_or(Duration::from_secs(5)),
    })
}

/// `type = "prometheus"`: a query whose value must stay within `min` and `max`.
fn prometheus(
    read: &mut Reader<'_>,
    raw: RawHealthCheck,
    specific: &[(&str, bool)],
    timeout: Option<Duration>,
) -> Option<CheckKind> {
    let url = read.required("url", raw.url);
    let query = read.required("query", raw.query);
    let min = finite(read, "min", raw.min);
    let max = finite(read, "max", raw.max);
    let empty_is_healthy = read
        .get("empty_is_healthy", raw.empty_is_healthy)
        .unwrap_or(false);
    if min.is_none() && max.is_none() {
        read.problem("max", "a prometheus check needs min, max or both");
    }
    read.unknown_unless(
        specific,
        &["url", "query", "min", "max", "empty_is_healthy"],
    );
    Some(CheckKind::Prometheus {
        url: url?.trim_end_matches('/').to_string(),
        query: query?,
        min,
        max,
        empty_is_healthy,
        timeout: timeout.unwrap_or(Duration::from_secs(5)),
    })
}

/// A bound of a prometheus check: a finite number.
fn finite(read: &mut Reader<'_>, key: &str, value: Option<Checked<f64>>) -> Option<f64> {
    let number = read.get(key, value)?;
    if !number.is_finite() {
        read.problem(key, "must be a number");
        return None;
    }
    Some(number)
}

/// `type = "exec"`: a command line, split like a shell would but run without one.
fn exec(
    read: &mut Reader<'_>,
    raw: RawHealthCheck,
    specific: &[(&str, bool)],
    timeout: Option<Duration>,
) -> Option<CheckKind> {
    let command = read.required("command", raw.command);
    read.unknown_unless(specific, &["command"]);
    let command = command?;
    let argv = match shell_words::split(&command) {
        Ok(argv) if !argv.is_empty() => argv,
        Ok(_) => {
            read.problem("command", "must not be empty");
            return None;
        }
        Err(error) => {
            read.problem("command", format!("cannot split {command:?}: {error}"));
            return None;
        }
    };
    Some(CheckKind::Exec {
        argv,
        timeout: timeout.unwrap_or(Duration::from_secs(30)),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::parse;
    use super::CheckKind;

    #[test]
    fn rollout_and_health_checks_are_read_and_checked() {
        let config = parse(
            r#"
            [repo]
            url = "r"
            [[environment]]
            name = "a"
            path = "a"
            target = { type = "directory", path = "a" }
            [environment.rollout]
            steps = [10, 50, 100]
            bake = "1m"
            verify = "0s"
            [[environment.health]]
            type = "exec"
            command = "smoke-test --name 'two words'"
            [[environment.health]]
            type = "prometheus"
            url = "http://127.0.0.1:9090/"
            query = "up"
            min = 1
            "#,
        )
        .expect("valid");
        let env = &config.environments[0];
        assert_eq!(env.rollout.steps, [10, 50, 100]);
        assert_eq!(env.rollout.bake, Duration::from_secs(60));
        assert_eq!(env.rollout.verify, Duration::ZERO);
        assert_eq!(env.health[0].failures, 3);
        assert_eq!(env.health[0].name, "exec smoke-test --name two words");
        let CheckKind::Exec { argv, .. } = &env.health[0].check else {
            panic!("exec check expected");
        };
        assert_eq!(argv, &["smoke-test", "--name", "two words"]);
        let CheckKind::Prometheus { url, min, max, .. } = &env.health[1].check else {
            panic!("prometheus check expected");
        };
        assert_eq!(url, "http://127.0.0.1:9090");
        assert_eq!((*min, *max), (Some(1.0), None));

        let problems = parse(
            r#"
            [repo]
            url = "r"
            [[environment]]
            name = "a"
            path = "a"
            target = { type = "directory", path = "a" }
            [environment.rollout]
            steps = [50, 10]
            [[environment.health]]
            type = "prometheus"
            url = "http://p"
            query = "up"
            failures = 0
            [[environment.health]]
            type = "smoke"
            "#,
        )
        .expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "environment[0].rollout.steps",
                "environment[0].health[0].failures",
                "environment[0].health[0].max",
                "environment[0].health[1].type",
            ]
        );
    }
}
