//! Real-cluster tests of `[ha]`: two daemons with separate state folders and one config share
//! environments through Leases: the split, failover in the middle of a canary, fencing of a
//! paused holder, a held revision across failover, and the handover on a clean stop.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use gitopsd::journal::{Event, Record};
use serde_json::Value;
use tempfile::TempDir;

use crate::e2e::{Cluster, READY_PODS, marker_check, skipped_without_controllers};
use crate::e2e_rollout::{ReadyWatch, web_yaml};
use crate::helpers::*;

const TOKEN: &str = "e2e-ha-token";
/// The default lease: 15 s, renewed every 5 s, 2 s of clock skew.
const LEASE: Duration = Duration::from_secs(15);

/// One repository and one config, run by daemons `a` and `b` (identities `host-a`, `host-b`),
/// each with a state folder of its own (`GITOPSD_STATE__DIR`, `GITOPSD_HA__IDENTITY`).
struct Pair {
    root: TempDir,
    repo: Repo,
    config: PathBuf,
    /// Each environment's namespace.
    namespaces: BTreeMap<String, String>,
    /// Where the Leases are.
    leases: String,
    daemons: BTreeMap<&'static str, (ChildGuard, String)>,
}

impl Pair {
    /// Environments `names`, each into a namespace of `cluster` named after `tag` and it, with
    /// `extra` appended to each (rollout and checks); Leases in a namespace of their own.
    fn new(cluster: &mut Cluster, tag: &str, names: &[&str], extra: &str) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let repo = Repo::init(root.path().join("repo"));
        let leases = cluster.namespace(&format!("ha-{tag}-leases"));
        cluster.kubectl(&["create", "namespace", &leases]);
        let mut text = format!(
            "[repo]\nurl = \"{}\"\nbranch = \"main\"\npoll_interval = \"2s\"\n\n[state]\ndir = \"state-unset\"\n\n[api]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"api-token\"\n\n[ha]\nenabled = true\nlease_namespace = \"{leases}\"\n",
            repo.dir.display()
        );
        for name in names {
            let namespace = cluster.namespace(&format!("ha-{tag}-{name}"));
            text.push_str(&format!(
                "\n[[environment]]\nname = \"{name}\"\npath = \"environments/{name}\"\nnamespace = \"{namespace}\"\ntarget = {{ type = \"kubernetes\", kubeconfig = \"{}\" }}\n{extra}\n",
                cluster.kubeconfig.display()
            ));
            repo.write(
                &format!("environments/{name}/app.yaml"),
                &format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: one\n"
                ),
            );
        }
        repo.commit("environments");
        let namespaces = names
            .iter()
            .map(|name| {
                let namespace = format!("gitopsd-e2e-{}-ha-{tag}-{name}", std::process::id());
                (name.to_string(), namespace)
            })
            .collect();
        let config = root.path().join("gitopsd.toml");
        std::fs::write(&config, text).expect("config");
        {
            use std::os::unix::fs::PermissionsExt as _;
            let token = root.path().join("api-token");
            std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
        }
        Self {
            root,
            repo,
            config,
            namespaces,
            leases,
            daemons: BTreeMap::new(),
        }
    }

    /// Adds top-level TOML (a `[[webhook]]`) to the shared config.
    fn add_top(&self, text: &str) {
        let config = std::fs::read_to_string(&self.config).expect("config");
        std::fs::write(
            &self.config,
            config.replacen("[state]", &format!("{text}\n[state]"), 1),
        )
        .expect("config");
    }

    fn state(&self, who: &str) -> PathBuf {
        self.root.path().join(format!("state-{who}"))
    }

    /// Starts daemon `who` and waits for its API.
    fn start(&mut self, who: &'static str) {
        let address_file = self.state(who).join("api.addr");
        let _ = std::fs::remove_file(&address_file);
        let child = ChildGuard(
            gitopsd_with_config(&self.config, &["run"])
                .env("GITOPSD_STATE__DIR", self.state(who))
                .env("GITOPSD_HA__IDENTITY", format!("host-{who}"))
                .stdout(Stdio::null())
                .stderr(
                    std::fs::File::create(self.root.path().join(format!("{who}.log")))
                        .expect("log file"),
                )
                .spawn()
                .expect("gitopsd starts"),
        );
        let mut address = String::new();
        let up = wait_for(Duration::from_secs(30), || {
            address = std::fs::read_to_string(&address_file)
                .unwrap_or_default()
                .trim()
                .to_string();
            !address.is_empty()
        });
        assert!(up, "daemon {who} never reported its API address");
        self.daemons.insert(who, (child, address));
    }

    fn address(&self, who: &str) -> &str {
        &self.daemons[who].1
    }

    fn signal(&self, who: &str, signal: i32) {
        self.daemons[who].0.signal(signal);
    }

    /// Waits for daemon `who` to exit (after SIGKILL or SIGTERM) and forgets it.
    fn reap(&mut self, who: &str) {
        if let Some((mut child, _)) = self.daemons.remove(who) {
            assert!(
                child.wait_timeout(Duration::from_secs(30)).is_some(),
                "daemon {who} did not exit"
            );
        }
    }

    /// Starts both daemons and waits until one holds `environment` with `revision` healthy;
    /// answers the holder and the other.
    fn start_both_until_healthy(
        &mut self,
        environment: &str,
        revision: &str,
    ) -> (&'static str, &'static str) {
        self.start("a");
        self.start("b");
        let mut holder = "a";
        let healthy = wait_for(Duration::from_secs(120), || {
            let holders = self.holders(environment);
            holders.len() == 1 && {
                holder = holders[0];
                self.status(holder)
                    .get(environment)
                    .is_some_and(|row| row["last_healthy"] == revision)
            }
        });
        assert!(
            healthy,
            "{revision} never rolled out:\n{}",
            self.log(holder)
        );
        (holder, if holder == "a" { "b" } else { "a" })
    }

    /// `/status` of daemon `who`, by environment.
    fn status(&self, who: &str) -> BTreeMap<String, Value> {
        let Some((200, body)) = http_request(self.address(who), "GET", "/status", &[], "") else {
            return BTreeMap::new();
        };
        let rows: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
        rows.into_iter()
            .map(|row| (row["environment"].as_str().unwrap_or("").to_string(), row))
            .collect()
    }

    /// Which daemon says it holds `environment` now.
    fn holders(&self, environment: &str) -> Vec<&'static str> {
        self.daemons
            .keys()
            .copied()
            .filter(|who| {
                self.status(who)
                    .get(environment)
                    .is_some_and(|row| row["lease"]["held_here"] == true)
            })
            .collect()
    }

    /// `jsonpath` of the environment's Lease, as kubectl prints it.
    fn lease_field(&self, cluster: &Cluster, environment: &str, jsonpath: &str) -> String {
        cluster.kubectl(&[
            "get",
            "lease",
            &format!("gitopsd-{environment}"),
            "-n",
            &self.leases,
            "-o",
            &format!("jsonpath={jsonpath}"),
        ])
    }

    fn journal(&self, who: &str, environment: &str) -> Vec<Record> {
        gitopsd::journal::load_all(&self.state(who), environment).expect("journal reads back whole")
    }

    fn log(&self, who: &str) -> String {
        std::fs::read_to_string(self.root.path().join(format!("{who}.log"))).unwrap_or_default()
    }

    fn control(&self, who: &str, environment: &str, action: &str) -> (u16, String) {
        http_request(
            self.address(who),
            "POST",
            &format!("/api/v1/environments/{environment}/{action}"),
            &[("Authorization", &format!("Bearer {TOKEN}"))],
            "",
        )
        .expect("the API answers")
    }
}

fn healthy_at(records: &[Record], revision: &str) -> bool {
    records
        .iter()
        .any(|r| matches!(&r.event, Event::Healthy { revision: at } if at.0 == revision))
}

/// The `acquired` records of a journal: (from, whether it adopted the cluster's history).
fn acquisitions(records: &[Record]) -> Vec<(Option<String>, bool)> {
    records
        .iter()
        .filter_map(|record| match &record.event {
            Event::Acquired { from, state, .. } => Some((from.clone(), state.is_some())),
            _ => None,
        })
        .collect()
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_ha_two_daemons_split_six_environments_each_held_by_exactly_one() {
    let mut cluster = Cluster::new();
    let names = ["e1", "e2", "e3", "e4", "e5", "e6"];
    let mut pair = Pair::new(&mut cluster, "split", &names, "");
    pair.start("a");
    pair.start("b");
    let split = wait_for(Duration::from_secs(90), || {
        names.iter().all(|name| pair.holders(name).len() == 1)
            && ["a", "b"].iter().all(|who| {
                let held = names
                    .iter()
                    .filter(|name| pair.holders(name) == [*who])
                    .count();
                (2..=4).contains(&held)
            })
    });
    assert!(
        split,
        "no even split: {:?}\n--- a ---\n{}\n--- b ---\n{}",
        names.map(|name| (name, pair.holders(name))),
        pair.log("a"),
        pair.log("b")
    );
    // Sampled for a while: never two holders, never none, each daemon within 2–4.
    for _ in 0..20 {
        let mut per_daemon: BTreeMap<&str, usize> = BTreeMap::new();
        for name in names {
            let holders = pair.holders(name);
            assert_eq!(holders.len(), 1, "{name} is held by {holders:?}");
            *per_daemon.entry(holders[0]).or_default() += 1;
        }
        assert!(
            per_daemon.values().all(|held| (2..=4).contains(held)),
            "{per_daemon:?}"
        );
        std::thread::sleep(Duration::from_millis(250)); // sampling pace, not a wait
    }
    // Every environment is deployed, and its holder (which may have taken it over from the
    // daemon that deployed it, as the split settled) says so from the history it acts on.
    let tip = git(&pair.repo.dir, &["rev-parse", "HEAD"]);
    for name in names {
        let holder = pair.holders(name)[0];
        assert!(
            wait_for(Duration::from_secs(60), || {
                let status = pair.status(holder);
                status
                    .get(name)
                    .is_some_and(|row| row["last_healthy"] == tip.as_str())
            }),
            "{name}: its holder {holder} does not have it healthy: {:?}",
            pair.status(holder).get(name)
        );
        assert!(
            cluster
                .get(Some(&pair.namespaces[name]), "configmap/settings")
                .is_some(),
            "{name} is not deployed"
        );
    }
}

/// A Deployment `web` of 4 replicas and its Service in environment `name`'s folder, with
/// release `release`.
fn commit_web(pair: &Pair, name: &str, release: &str) -> String {
    pair.repo.write(
        &format!("environments/{name}/app.yaml"),
        &web_yaml(&pair.namespaces[name], release, Some(4), "", ""),
    );
    pair.repo.commit(&format!("web {release}"))
}

fn step_started(records: &[Record], revision: &str) -> Vec<usize> {
    records
        .iter()
        .filter_map(|record| match &record.event {
            Event::StepStarted {
                revision: r, step, ..
            } if r.0 == revision => Some(*step),
            _ => None,
        })
        .collect()
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_ha_a_holder_killed_in_step_two_is_succeeded_at_step_two_with_capacity_kept() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let rollout = "[environment.rollout]\nsteps = [25, 50, 100]\nbake = \"10s\"\nverify = \"2s\"\ntimeout = \"3m\"\n";
    let mut pair = Pair::new(&mut cluster, "kill", &["web"], rollout);
    let namespace = pair.namespaces["web"].clone();
    let v1 = commit_web(&pair, "web", "1");
    let (holder, successor) = pair.start_both_until_healthy("web", &v1);
    let watch = ReadyWatch::start(&cluster, &namespace);
    watch.arm_at(4);
    let v2 = commit_web(&pair, "web", "2");
    assert!(
        wait_for(Duration::from_secs(120), || step_started(
            &pair.journal(holder, "web"),
            &v2
        )
        .contains(&1)),
        "{holder} never started step 2"
    );
    pair.signal(holder, libc::SIGKILL);
    let killed = Instant::now();
    pair.reap(holder);
    let took_over = wait_for(LEASE + Duration::from_secs(5), || {
        pair.holders("web") == [successor]
    });
    println!("taken over {:?} after SIGKILL", killed.elapsed());
    assert!(
        took_over,
        "{successor} did not take over within the lease + 5 s:\n{}",
        pair.log(successor)
    );
    assert!(
        wait_for(Duration::from_secs(120), || healthy_at(
            &pair.journal(successor, "web"),
            &v2
        )),
        "the successor never finished the rollout:\n{}",
        pair.log(successor)
    );
    let records = pair.journal(successor, "web");
    assert_eq!(
        acquisitions(&records).last(),
        Some(&(Some(format!("host-{holder}")), true)),
        "took it from the killed holder, with the cluster's history"
    );
    let resumed: Vec<usize> = records
        .iter()
        .filter_map(|record| match &record.event {
            Event::RolloutResumed { revision, step } if revision.0 == v2 => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(resumed, vec![1], "resumed at step 2");
    assert_eq!(
        step_started(&records, &v2),
        vec![1, 2],
        "step 2 is written again (its bake starts over), then step 3; step 1 is not redone"
    );
    assert!(
        !records
            .iter()
            .any(|record| record.event.name() == "revert_started"),
        "nothing was reverted"
    );
    assert!(
        watch.wait_for_canaries_gone(4),
        "the canary never went: {:?}",
        watch.lowest_and_names()
    );
    let (lowest, names) = watch.lowest_and_names();
    assert!(
        lowest >= 3,
        "ready pods dropped to {lowest} (floor 3) through the takeover: {names:?}"
    );
}

/// The resourceVersion of every object in `namespace` gitopsd writes.
fn versions(cluster: &Cluster, namespace: &str) -> BTreeMap<String, String> {
    let text = cluster.kubectl(&[
        "get",
        "deployments,services,configmaps",
        "-n",
        namespace,
        "-o",
        "json",
    ]);
    let list: Value = serde_json::from_str(&text).expect("kubectl JSON");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| {
            (
                format!(
                    "{}/{}",
                    item["kind"].as_str().unwrap_or(""),
                    item["metadata"]["name"].as_str().unwrap_or("")
                ),
                item["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_ha_a_paused_holder_writes_nothing_after_another_took_over() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let rollout = "[environment.rollout]\nsteps = [50, 100]\nbake = \"30s\"\nverify = \"2s\"\ntimeout = \"3m\"\n";
    let mut pair = Pair::new(&mut cluster, "stop", &["web"], rollout);
    let namespace = pair.namespaces["web"].clone();
    let v1 = commit_web(&pair, "web", "1");
    let (holder, successor) = pair.start_both_until_healthy("web", &v1);
    let v2 = commit_web(&pair, "web", "2");
    // Stopped in its 30 s bake of step 1: it wakes wanting to pass the step and write step 2.
    assert!(
        wait_for(Duration::from_secs(120), || step_started(
            &pair.journal(holder, "web"),
            &v2
        )
        .contains(&0)),
        "{holder} never started step 1"
    );
    pair.signal(holder, libc::SIGSTOP);
    let stopped_records = pair.journal(holder, "web").len();
    // The successor takes over once the term has run out, and finishes the rollout.
    let finished = wait_for(Duration::from_secs(150), || {
        healthy_at(&pair.journal(successor, "web"), &v2)
    });
    assert!(
        finished,
        "the successor never finished:\n{}",
        pair.log(successor)
    );
    let before = versions(&cluster, &namespace);
    let journal_before = pair.journal(holder, "web").len();
    assert_eq!(journal_before, stopped_records);
    pair.signal(holder, libc::SIGCONT);
    // Woken: its coordinator finds the Lease gone and says so; its pass is refused.
    let noticed = wait_for(Duration::from_secs(60), || {
        pair.status(holder)
            .get("web")
            .is_some_and(|row| row["lease"]["holder"] == format!("host-{successor}"))
            && pair.log(holder).contains("standing by")
    });
    assert!(
        noticed,
        "the woken daemon {holder} never stood by: {:?}\n{}",
        pair.status(holder).get("web"),
        pair.log(holder)
    );
    assert!(wait_for_pass_after_now(pair.address(successor), "web"));
    assert_eq!(
        versions(&cluster, &namespace),
        before,
        "an object changed after the paused daemon woke"
    );
    let after: Vec<String> = pair.journal(holder, "web")[journal_before..]
        .iter()
        .map(|record| record.event.name().to_string())
        .collect();
    assert!(after.is_empty(), "the woken daemon journaled {after:?}");
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_ha_a_held_revision_stays_held_after_failover_and_a_retry_on_either_clears_it() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let marker = tempfile::NamedTempFile::new().expect("marker");
    let extra = format!(
        "[environment.rollout]\nsteps = [50, 100]\nbake = \"3s\"\nverify = \"3s\"\ntimeout = \"2m\"\n{}",
        marker_check(marker.path())
    );
    let mut pair = Pair::new(&mut cluster, "held", &["web"], &extra);
    let v1 = commit_web(&pair, "web", "1");
    std::fs::remove_file(marker.path()).expect("healthy while v1 rolls out");
    let (holder, successor) = pair.start_both_until_healthy("web", &v1);
    std::fs::write(marker.path(), "failing").expect("marker");
    let v2 = commit_web(&pair, "web", "2");
    let held = |pair: &Pair, who: &str| {
        pair.status(who)
            .get("web")
            .and_then(|row| row["held"].as_array().cloned())
            .unwrap_or_default()
            .contains(&Value::String(v2.clone()))
    };
    assert!(
        wait_for(Duration::from_secs(120), || held(&pair, holder)),
        "v2 was never held"
    );
    // What survives the holder is what is on the Lease: the local journal (and /status) may
    // be a write ahead of it for a moment.
    let on_lease = || {
        let text = pair.lease_field(
            &cluster,
            "web",
            "{.metadata.annotations.gitopsd\\.io/state}",
        );
        serde_json::from_str::<Value>(&text).is_ok_and(|state| {
            state["failed"]
                .as_array()
                .is_some_and(|failed| failed.contains(&Value::String(v2.clone())))
        })
    };
    assert!(
        wait_for(Duration::from_secs(30), on_lease),
        "the held revision never reached the Lease"
    );
    std::fs::remove_file(marker.path()).expect("the check passes from now on");
    pair.signal(holder, libc::SIGKILL);
    pair.reap(holder);
    assert!(
        wait_for(LEASE + Duration::from_secs(5), || pair.holders("web")
            == [successor]),
        "no takeover"
    );
    // Still held by the successor, with the check passing now: it does not retry it.
    assert!(wait_for_pass_after_now(pair.address(successor), "web"));
    assert!(
        held(&pair, successor),
        "the successor forgot the held revision"
    );
    let records = pair.journal(successor, "web");
    let since_taken: Vec<&Event> = records
        .iter()
        .rev()
        .take_while(|record| !matches!(record.event, Event::Acquired { .. }))
        .map(|record| &record.event)
        .collect();
    assert!(
        !since_taken.iter().any(
            |event| matches!(event, Event::RolloutStarted { revision, .. } if revision.0 == v2)
        ),
        "the successor rolled the held revision out again: {since_taken:?}"
    );
    // The killed daemon comes back on standby; a retry there goes to the holder.
    pair.start(holder);
    assert!(
        wait_for(Duration::from_secs(30), || pair
            .status(holder)
            .get("web")
            .is_some_and(
                |row| row["lease"]["holder"] == format!("host-{successor}")
            )),
        "the restarted daemon does not see the holder"
    );
    assert!(
        held(&pair, holder),
        "the standby daemon shows the cluster's hold"
    );
    let (status, body) = pair.control(holder, "web", "retry");
    assert_eq!(status, 202, "forwarded: {body}");
    assert!(
        wait_for(Duration::from_secs(120), || healthy_at(
            &pair.journal(successor, "web"),
            &v2
        )),
        "the retried revision never rolled out:\n{}",
        pair.log(successor)
    );
    let retried_by = pair
        .journal(successor, "web")
        .iter()
        .find(|record| matches!(&record.event, Event::Retried { revision } if revision.0 == v2))
        .and_then(|record| record.by.clone())
        .unwrap_or_default();
    assert!(
        retried_by.contains(&format!("via host-{holder}")),
        "{retried_by}"
    );
    assert!(
        wait_for(Duration::from_secs(30), || !held(&pair, holder)
            && !held(&pair, successor)),
        "the hold is not cleared on both"
    );
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_ha_sigterm_on_the_holder_hands_over_without_waiting_out_the_lease() {
    let mut cluster = Cluster::new();
    let mut pair = Pair::new(&mut cluster, "term", &["web"], "");
    let (hook, received) = crate::webhook::receiver();
    pair.add_top(&format!(
        "[[webhook]]\nurl = \"http://{hook}/hook\"\ntimeout = \"2s\"\n"
    ));
    let tip = git(&pair.repo.dir, &["rev-parse", "HEAD"]);
    let (holder, successor) = pair.start_both_until_healthy("web", &tip);
    pair.signal(holder, libc::SIGTERM);
    let stopped = Instant::now();
    assert!(
        wait_for(LEASE, || pair.holders("web") == [successor]),
        "no takeover"
    );
    println!("taken over {:?} after SIGTERM", stopped.elapsed());
    pair.reap(holder);
    let records = pair.journal(successor, "web");
    // Released, not run out: the successor found no holder on it.
    assert_eq!(
        acquisitions(&records).last().map(|(from, _)| from.clone()),
        Some(None),
        "{records:?}"
    );
    let lease = pair.lease_field(
        &cluster,
        "web",
        "{.spec.holderIdentity} {.spec.leaseTransitions}",
    );
    assert!(lease.starts_with(&format!("host-{successor} ")), "{lease}");
    // The handover is a webhook event, from the successor, naming no previous holder.
    let told = wait_for(Duration::from_secs(30), || {
        received.lock().expect("lock").iter().any(|event| {
            event["event"] == "acquired"
                && event["holder"] == format!("host-{successor}")
                && event["from"].is_null()
        })
    });
    assert!(
        told,
        "no acquired webhook: {:?}",
        received.lock().expect("lock")
    );
    assert_eq!(
        metric_sum(
            pair.address(successor),
            "gitopsd_lease_held",
            "environment=\"web\""
        ),
        Some(1)
    );
    assert!(
        metric_sum(
            pair.address(successor),
            "gitopsd_lease_transitions_total",
            "environment=\"web\""
        )
        .is_some_and(|transitions| transitions >= 1)
    );
    // The stopped daemon's heartbeat went with it.
    let heartbeats = cluster.kubectl(&[
        "get",
        "leases",
        "-n",
        &pair.leases,
        "-l",
        "gitopsd.io/lease=daemon",
        "-o",
        "jsonpath={.items[*].spec.holderIdentity}",
    ]);
    assert_eq!(heartbeats.trim(), format!("host-{successor}"));
}
