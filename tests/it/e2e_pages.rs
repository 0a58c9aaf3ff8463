//! Real-cluster suite, the status pages of a Kubernetes environment: during a canary the
//! overview shows the step, and the environment page's stable and canary replicas are the
//! ones the cluster holds; then healthy; and a Secret's planted value is on no page. Run like
//! tests/it/e2e.rs.

use std::time::Duration;

use serde_json::Value;

use crate::e2e::{Cluster, READY_PODS, rollout, skipped_without_controllers, workspace_on};
use crate::e2e_rollout::{commit_web, web_yaml};
use crate::helpers::*;
use crate::pages::{
    PLANTED, TOKEN, assert_no_secret, first_event, request, secret_yaml, start, text_of,
    wait_healthy,
};

fn replicas(object: Option<Value>) -> Option<u64> {
    object?["spec"]["replicas"].as_u64()
}

/// The weight in a page's `rolling out step k of n (w%)` badge.
fn weight_shown(text: &str) -> Option<u8> {
    text.split("rolling out step ")
        .nth(1)?
        .split('(')
        .nth(1)?
        .split('%')
        .next()?
        .parse()
        .ok()
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_the_pages_show_a_kubernetes_canary_with_the_clusters_replicas() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("pages");
    let workspace = workspace_on(
        &cluster,
        &namespace,
        &rollout("[25, 50, 100]").replace("bake = \"3s\"", "bake = \"15s\""),
    );
    workspace.edit_config("poll_interval = \"30s\"", "poll_interval = \"1s\"");
    configure_api(&workspace, TOKEN, "");
    let first = commit_web(
        &workspace,
        &format!(
            "{}---\n{}",
            web_yaml(&namespace, "1", Some(4), "", ""),
            secret_yaml("v1")
        ),
        "v1",
    );
    let (_daemon, address) = start(&workspace);
    wait_healthy(&workspace, "staging", &first);

    let second = commit_web(
        &workspace,
        &format!(
            "{}---\n{}",
            web_yaml(&namespace, "2", Some(4), "", ""),
            secret_yaml(PLANTED)
        ),
        "v2: the next release",
    );
    let overview = wait_for(Duration::from_secs(120), || {
        text_of(&request(&address, "GET", "/", &[], "").body).contains("rolling out step")
    });
    assert!(overview, "the overview never showed the rollout");
    // The page and the cluster are read in turn until the step holds still between two
    // reads of the cluster: then the page's replicas must be the cluster's.
    let mut last = String::new();
    let matched = wait_for(Duration::from_secs(120), || {
        let before = (
            replicas(cluster.get(Some(&namespace), "deployment/web")),
            replicas(cluster.get(Some(&namespace), "deployment/web-canary")),
        );
        last = text_of(&request(&address, "GET", "/env/staging", &[], "").body);
        let after = (
            replicas(cluster.get(Some(&namespace), "deployment/web")),
            replicas(cluster.get(Some(&namespace), "deployment/web-canary")),
        );
        let (Some(weight), (Some(stable), Some(canary))) = (weight_shown(&last), before) else {
            return false;
        };
        before == after
            && weight < 100
            && last.contains(&format!(
                "Deployment.apps {namespace}/web {stable} {canary}"
            ))
            && last.contains(&format!("{weight}% (current)"))
    });
    assert!(
        matched,
        "the page's canary never matched the cluster: {last}"
    );
    assert!(last.contains("kubernetes"), "{last}");
    assert!(last.contains("<redacted>"), "{last}");
    assert_no_secret("the staging page mid-canary", &last);

    wait_healthy(&workspace, "staging", &second);
    let done = wait_for(Duration::from_secs(30), || {
        let text = text_of(&request(&address, "GET", "/", &[], "").body);
        text.contains("healthy")
            && text.contains("v2: the next release")
            && !text.contains("rolling out")
    });
    assert!(done, "the overview never showed the new revision healthy");
    for path in ["/", "/env/staging", "/env/production"] {
        assert_no_secret(path, &request(&address, "GET", path, &[], "").body);
    }
    assert_no_secret(
        "/env/staging/events",
        &first_event(&address, "/env/staging/events", None),
    );
}
