//! Benchmark: a fleet of environments on one daemon and one real API server (issue 20's
//! table). 1,000 environments × 20 objects (a Namespace, ConfigMaps and Services; one
//! Deployment of one replica in every tenth), measured in one run:
//!
//! 1. the floor for writes: 8 parallel `kubectl apply --server-side` of the same objects into
//!    namespaces of their own;
//! 2. `gitopsd run`'s first apply of every environment (from the process start until each one
//!    is healthy at the first commit);
//! 3. no-op passes of every environment with the watch cache synced (a commit that changes no
//!    environment's folder), with the LIST and GET requests counted by
//!    `gitopsd_kube_requests_total`;
//! 4. the daemon's resident memory with every object cached, idle;
//! 5. drift: an owned ConfigMap key changed by `kubectl patch` with `poll_interval = "10m"`,
//!    timed from the outside write to the put-back, both as a watch of the object sees them;
//! 6. a crash loop starting during a 60 s bake (environment `bake`, steps [50, 100]): from the
//!    canary pod's first CrashLoopBackOff to the step failed and the revert done (journal).
//!
//! Needs `GITOPSD_E2E_KUBECONFIG` (a disposable cluster with k8s-lab's stand-in kubelet, whose
//! pods crash-loop on the label `lab/unhealthy=crash`) and `GITOPSD_TEST_KUBECTL`;
//! `benches/fleet.sh` starts a k8s-lab for it. Arguments (after `--`): `--environments N`
//! (default 1,000), `--skip-kubectl` (no floor). Without the kubeconfig it measures nothing.
// Benchmark code drives files and processes directly: the I/O boundary is for the daemon's
// async code.
#![allow(clippy::disallowed_methods)]

mod support;

#[path = "fleet/daemon.rs"]
mod daemon;
#[path = "fleet/events.rs"]
mod events;
#[path = "fleet/fixture.rs"]
mod fixture;
#[path = "fleet/kubectl.rs"]
mod kubectl;
#[path = "fleet/phases.rs"]
mod phases;

use std::path::PathBuf;
use std::time::Duration;

use daemon::Daemon;
use fixture::Fleet;
use kubectl::Kubectl;

/// The parallel `kubectl apply` processes of the floor.
const KUBECTL_PROCESSES: usize = 8;

struct Args {
    environments: usize,
    skip_kubectl: bool,
    /// Environments the kubectl floor applies (default: all).
    kubectl_environments: Option<usize>,
}

fn args() -> Args {
    let mut args = Args {
        environments: 1000,
        skip_kubectl: false,
        kubectl_environments: None,
    };
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        match arg.as_str() {
            "--environments" => {
                args.environments = given
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .expect("--environments takes a positive number");
            }
            "--skip-kubectl" => args.skip_kubectl = true,
            "--kubectl-environments" => {
                args.kubectl_environments =
                    given.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0);
                assert!(
                    args.kubectl_environments.is_some(),
                    "--kubectl-environments takes a positive number"
                );
            }
            // cargo bench passes --bench to benchmarks without a harness.
            "--bench" => {}
            other => panic!(
                "unknown argument {other}: --environments N, --skip-kubectl, --kubectl-environments M"
            ),
        }
    }
    args
}

fn ms(duration: Duration) -> String {
    format!("{:.0} ms", duration.as_secs_f64() * 1000.0)
}

fn secs(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

fn main() {
    let args = args();
    let Some(kubeconfig) = std::env::var_os("GITOPSD_E2E_KUBECONFIG").map(PathBuf::from) else {
        eprintln!("fleet: GITOPSD_E2E_KUBECONFIG is not set; nothing measured");
        return;
    };
    let kubectl = Kubectl {
        binary: std::env::var_os("GITOPSD_TEST_KUBECTL")
            .map_or_else(|| "kubectl".into(), PathBuf::from),
        kubeconfig: kubeconfig.clone(),
    };
    kubectl.wait_for_terminating_namespaces();
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = Fleet::create(dir.path(), args.environments, &kubeconfig);
    let n = args.environments;
    let objects = n * fixture::OBJECTS_PER_ENVIRONMENT;
    eprintln!(
        "fleet: {n} environments × {} objects ({objects}) on {}",
        fixture::OBJECTS_PER_ENVIRONMENT,
        kubeconfig.display()
    );

    let floor_environments = args.kubectl_environments.unwrap_or(n).min(n);
    let floor = (!args.skip_kubectl).then(|| {
        let files: Vec<String> = (0..floor_environments)
            .map(|index| fixture::manifests(&fleet.kubectl_namespace(index), index, &fleet.tag))
            .collect();
        let took = kubectl.parallel_apply(dir.path(), &files, KUBECTL_PROCESSES);
        eprintln!(
            "fleet: {KUBECTL_PROCESSES} parallel kubectl apply of {floor_environments} environments: {}",
            secs(took)
        );
        took
    });
    // The floor's time for all n environments, at its measured rate when it applied fewer.
    let floor_all = floor.map(|took| took.mul_f64(n as f64 / floor_environments as f64));

    let log = dir.path().join("daemon.log");
    let daemon = Daemon::start(&fleet.config, &fleet.state, &log);
    let first = phases::first_apply(&fleet, &daemon);
    let noop = phases::noop_passes(&fleet, &daemon);
    let idle = phases::idle_memory(&daemon);
    let drift = events::drift(&fleet, &kubectl);
    let crash = events::crash_in_bake(&fleet, &daemon, &kubectl);
    let requests = Daemon::requests(&daemon.metrics());
    drop(daemon);
    let errors = std::fs::read_to_string(&log).unwrap_or_default();
    let errors: Vec<&str> = errors.lines().filter(|l| l.contains("ERROR")).collect();
    if std::env::var_os("FLEET_KEEP_CLUSTER_OBJECTS").is_none() {
        // On a lab that fleet.sh started and purges, this is skipped.
        let _ = kubectl
            .command(&[
                "delete",
                "namespaces",
                "-l",
                &format!("{}={}", fixture::RUN_LABEL, fleet.tag),
                "--wait=false",
            ])
            .output();
    }

    println!();
    println!(
        "Fleet: {n} environments × {} objects ({objects}; {} Deployments of 1 replica), plus environment `bake`; {}",
        fixture::OBJECTS_PER_ENVIRONMENT,
        (0..n).filter(|i| fixture::has_deployment(*i)).count(),
        phases::load()
    );
    println!();
    println!("| what | gitopsd | beside it | target |");
    println!("| --- | --- | --- | --- |");
    let ratio = floor_all.map_or(String::new(), |floor| {
        format!(
            " ({:.2}× the floor)",
            first.took.as_secs_f64() / floor.as_secs_f64()
        )
    });
    let beside = match (floor, floor_all) {
        (Some(took), Some(all)) if floor_environments < n => format!(
            "{KUBECTL_PROCESSES} parallel `kubectl apply --server-side`: {} for {floor_environments} environments ({} objects, {:.0} objects/s), so {} for all {n} at that rate",
            secs(took),
            floor_environments * fixture::OBJECTS_PER_ENVIRONMENT,
            (floor_environments * fixture::OBJECTS_PER_ENVIRONMENT) as f64 / took.as_secs_f64(),
            secs(all)
        ),
        (Some(took), _) => format!(
            "{KUBECTL_PROCESSES} parallel `kubectl apply --server-side`: {} ({:.0} objects/s)",
            secs(took),
            objects as f64 / took.as_secs_f64()
        ),
        _ => "kubectl not run".into(),
    };
    println!(
        "| first apply of all {n} environments | {}{ratio}, {:.0} objects/s; {} | {beside} | ≤ 1.5× the floor |",
        secs(first.took),
        objects as f64 / first.took.as_secs_f64(),
        first.detail,
    );
    println!(
        "| no-op pass of all {n} environments, cache synced (median of {}) | {}; {} LIST, {} GET | {} | ≤ 1 s; 0 LIST, 0 GET |",
        noop.rounds,
        ms(noop.wall),
        noop.lists,
        noop.gets,
        noop.detail
    );
    println!(
        "| drift put back, `poll_interval = \"10m\"` (median of {}) | {} after the outside write | slowest {}; from `kubectl patch` starting: {} | ≤ 2 s |",
        drift.trials,
        ms(drift.median),
        ms(drift.slowest),
        ms(drift.from_command)
    );
    println!(
        "| crash loop during a 60 s bake | step failed {} and reverted {} after the first CrashLoopBackOff | {} | ≤ 5 s to failed and reverted |",
        ms(crash.failed),
        ms(crash.reverted),
        crash.detail
    );
    println!(
        "| daemon RSS, {} objects cached, idle | {:.1} MiB | peak {:.1} MiB; {:.2}% CPU over {} s idle; {} | ≤ 150 MiB |",
        idle.cached,
        idle.rss_kib as f64 / 1024.0,
        idle.peak_kib as f64 / 1024.0,
        idle.cpu_percent,
        idle.window.as_secs(),
        idle.split
    );
    println!();
    println!(
        "Requests by verb over the whole run: {}; daemon log lines at ERROR: {}",
        phases::requests_text(&requests),
        errors.len()
    );
    for line in errors.iter().take(5) {
        println!("  {line}");
    }
    if std::env::var_os("FLEET_KEEP").is_some() {
        println!("kept: {}", dir.keep().display());
    }
}
