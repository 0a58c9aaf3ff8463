//! `[ha]`: several daemons sharing a cluster, one actor per environment through a Lease.

use std::time::Duration;

use serde::Deserialize;

use super::check::Checker;
use super::checked::{Checked, HumanDuration};
use super::{EnvironmentConfig, HaConfig, TargetConfig};
use crate::lease::Timing;

#[derive(Debug, Deserialize)]
pub(super) struct RawHa {
    pub(super) enabled: Option<Checked<bool>>,
    pub(super) lease_namespace: Option<Checked<String>>,
    pub(super) identity: Option<Checked<String>>,
    pub(super) lease_duration: Option<Checked<HumanDuration>>,
    pub(super) renew_interval: Option<Checked<HumanDuration>>,
    pub(super) max_clock_skew: Option<Checked<HumanDuration>>,
}

/// A DNS-1123 subdomain's rules, as a Lease name's part and a holder identity must follow.
fn valid_identity(identity: &str) -> bool {
    !identity.is_empty()
        && identity.len() <= 63
        && identity
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !identity.starts_with(['-', '.'])
        && !identity.ends_with(['-', '.'])
}

/// This host's name, lowercased, as the default identity.
fn host_name() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname writes at most that.
    let status = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if status != 0 {
        return None;
    }
    let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
    let name = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
    (!name.is_empty()).then_some(name)
}

impl Checker {
    /// `[ha]`, or `None` when it is absent or `enabled = false`.
    pub(super) fn ha(&mut self, raw: RawHa) -> Option<HaConfig> {
        let mut read = self.reader("ha");
        let enabled = read.get("enabled", raw.enabled).unwrap_or(false);
        let lease_namespace = read.get("lease_namespace", raw.lease_namespace);
        let identity = read.get("identity", raw.identity).or_else(host_name);
        let duration = read
            .duration("lease_duration", raw.lease_duration)
            .unwrap_or(Duration::from_secs(15));
        let renew_interval = read
            .duration("renew_interval", raw.renew_interval)
            .unwrap_or(Duration::from_secs(5));
        let max_skew = read
            .duration("max_clock_skew", raw.max_clock_skew)
            .unwrap_or(Duration::from_secs(2));
        if !enabled {
            return None;
        }
        if lease_namespace.is_none() {
            read.problem(
                "lease_namespace",
                "missing: the namespace the Leases live in, e.g. \"gitopsd-system\"",
            );
        }
        match &identity {
            None => read.problem("identity", "missing, and this host's name is unknown"),
            Some(identity) if !valid_identity(identity) => read.problem(
                "identity",
                format!("{identity:?}: use lowercase letters, digits, '-' and '.', at most 63"),
            ),
            Some(_) => {}
        }
        if renew_interval.is_zero() || renew_interval * 2 > duration {
            read.problem(
                "renew_interval",
                "must be more than zero and at most half of lease_duration, so that one lost renewal does not lose the lease",
            );
        }
        if max_skew * 2 >= duration.saturating_sub(renew_interval) {
            read.problem(
                "max_clock_skew",
                "too large for lease_duration: twice the skew must stay below lease_duration - renew_interval",
            );
        }
        Some(HaConfig {
            lease_namespace: lease_namespace?,
            identity: identity?,
            timing: Timing {
                duration,
                renew_interval,
                max_skew,
            },
        })
    }

    /// `[ha]` needs every environment to write to a cluster: a folder on this host cannot be
    /// handed over to another.
    pub(super) fn ha_targets(&mut self, environments: &[EnvironmentConfig]) {
        for environment in environments {
            if let TargetConfig::Directory { .. } = environment.target {
                self.problem(
                    "ha.enabled".into(),
                    format!(
                        "environment {:?} has a directory target, which is local to this host: [ha] needs every environment on a Kubernetes target",
                        environment.name
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn config(ha: &str, target: &str) -> Result<Config, Vec<crate::config::ConfigProblem>> {
        let toml = format!(
            "[repo]\nurl = \"/srv/repo\"\n{ha}\n[[environment]]\nname = \"prod\"\npath = \"prod\"\n{target}\n"
        );
        Config::from_toml(&toml, Path::new("/etc/gitopsd"))
    }

    const KUBE: &str = "target = { type = \"kubernetes\" }";

    #[test]
    fn ha_is_read_with_its_defaults() {
        let read = config(
            "[ha]\nenabled = true\nlease_namespace = \"gitopsd-system\"\nidentity = \"host-a\"",
            KUBE,
        )
        .expect("valid");
        let ha = read.ha.expect("ha on");
        assert_eq!(ha.lease_namespace, "gitopsd-system");
        assert_eq!(ha.identity, "host-a");
        assert_eq!(ha.timing.duration, Duration::from_secs(15));
        assert_eq!(ha.timing.renew_interval, Duration::from_secs(5));
        assert_eq!(ha.timing.max_skew, Duration::from_secs(2));
        let off = config("[ha]\nenabled = false", KUBE).expect("valid");
        assert_eq!(off.ha, None);
    }

    #[test]
    fn a_directory_environment_under_ha_is_refused_by_name() {
        let problems = config(
            "[ha]\nenabled = true\nlease_namespace = \"gitopsd-system\"",
            "target = { type = \"directory\", path = \"/srv/live\" }",
        )
        .expect_err("refused");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "ha.enabled");
        assert!(
            problems[0]
                .message
                .contains("\"prod\" has a directory target"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn bad_ha_values_are_each_named() {
        let problems = config(
            "[ha]\nenabled = true\nidentity = \"Host_A\"\nlease_duration = \"6s\"\nrenew_interval = \"5s\"",
            KUBE,
        )
        .expect_err("refused");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "ha.lease_namespace",
                "ha.identity",
                "ha.renew_interval",
                "ha.max_clock_skew"
            ],
            "{problems:?}"
        );
    }
}
