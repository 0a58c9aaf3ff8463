//! Unit tests of the blue/green objects, from inline YAML.

use serde_json::json;

use super::*;
use crate::manifest::{self, ManifestFile, ParseOptions};
use crate::rollout::Strategy;

fn desired(yaml: &str) -> Desired {
    let objects = manifest::parse(
        &[ManifestFile {
            path: "t.yaml".into(),
            bytes: yaml.as_bytes().to_vec(),
            blob: None,
        }],
        Vec::new(),
        &ParseOptions {
            default_namespace: "shop".into(),
        },
    )
    .expect("test manifests are valid");
    Desired::new(objects.first().expect("one object"))
}

fn deployment() -> Desired {
    desired(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, tier: front}}
    spec: {containers: [{name: web, image: "web:2"}]}
"#,
    )
}

fn service(name: &str, namespace: &str, selector: &str) -> Desired {
    desired(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  type: NodePort
  clusterIP: 10.0.0.7
  clusterIPs: [10.0.0.7]
  selector: {selector}
  ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]
"#
    ))
}

fn key(kind: &str, group: &str, name: &str) -> ResourceKey {
    ResourceKey {
        group: group.into(),
        kind: kind.into(),
        namespace: Some("shop".into()),
        name: name.into(),
    }
}

#[test]
fn a_service_selects_a_deployment_when_its_pods_carry_every_selector_label() {
    let web = deployment();
    assert!(selects(&service("web", "shop", "{app: web}"), &web));
    assert!(selects(
        &service("web", "shop", "{app: web, tier: front}"),
        &web
    ));
    assert!(!selects(&service("web", "shop", "{app: api}"), &web));
    assert!(!selects(&service("web", "other", "{app: web}"), &web));
    assert!(
        !selects(&service("web", "shop", "{}"), &web),
        "a Service without a selector has its endpoints managed by hand"
    );
    assert!(
        !selects(
            &service("web", "shop", "{app: web, gitopsd.io/track: preview}"),
            &web
        ),
        "a Service already narrowed to a track is not an active Service of git's"
    );
    let services = [
        service("web", "shop", "{app: web}"),
        service("api", "shop", "{app: api}"),
    ];
    let active = active_services(&services, &[&web]);
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].key, key("Service", "", "web"));
}

#[test]
fn the_active_service_is_pinned_then_switched_by_its_selector_alone() {
    let active = service("web", "shop", "{app: web}");
    let pinned = pinned(&active);
    let switched = switched(&active);
    assert_eq!(
        pinned.body.pointer("/spec/selector"),
        Some(&json!({"app": "web", "gitopsd.io/track": "stable"}))
    );
    assert_eq!(
        switched.body.pointer("/spec/selector"),
        Some(&json!({"app": "web", "gitopsd.io/track": "canary"}))
    );
    let without_selector = |d: &Desired| {
        let mut body = d.body.clone();
        body["spec"]
            .as_object_mut()
            .expect("a spec")
            .remove("selector");
        body
    };
    assert_eq!(without_selector(&pinned), without_selector(&active));
    assert_eq!(without_selector(&switched), without_selector(&active));
    assert_eq!(pinned.key, active.key);
}

#[test]
fn the_preview_service_is_made_from_the_active_one_without_assigned_fields() {
    let preview = preview_service(&service("web", "shop", "{app: web}"));
    assert_eq!(preview.key, key("Service", "", "web-preview"));
    assert_eq!(
        preview.body.pointer("/spec"),
        Some(&json!({
            "type": "NodePort",
            "selector": {"app": "web", "gitopsd.io/track": "canary"},
            "ports": [{"port": 80, "targetPort": 8080}],
        }))
    );
}

#[test]
fn only_deployments_whose_old_pods_are_tracked_can_run_blue_green() {
    let tracked = LiveTemplate {
        hash: Some("h1".into()),
        tracked: true,
    };
    let untracked = LiveTemplate {
        hash: Some("h1".into()),
        tracked: false,
    };
    let web = key("Deployment", "apps", "web");
    assert_eq!(can_run_blue_green(&web, Some(&tracked)), Ok(()));
    assert_eq!(
        can_run_blue_green(&web, None),
        Ok(()),
        "nothing live to pin"
    );
    let untracked = can_run_blue_green(&web, Some(&untracked)).expect_err("refused");
    assert!(
        untracked
            .to_string()
            .contains("lack the label gitopsd.io/track=stable"),
        "{untracked}"
    );
    for kind in ["StatefulSet", "DaemonSet"] {
        let refused =
            can_run_blue_green(&key(kind, "apps", "db"), Some(&tracked)).expect_err("refused");
        let message = refused.to_string();
        assert!(
            message.contains(&format!("a {kind} has no second set of pods"))
                && message.contains("use the canary strategy"),
            "{message}"
        );
    }
}

#[test]
fn strategies_read_from_config_and_annotations() {
    assert_eq!(Strategy::parse("canary"), Some(Strategy::Canary));
    assert_eq!(Strategy::parse("blue-green"), Some(Strategy::BlueGreen));
    assert_eq!(Strategy::parse("bluegreen"), None);
    assert_eq!(Strategy::default(), Strategy::Canary);
    for strategy in [Strategy::Canary, Strategy::BlueGreen] {
        assert_eq!(Strategy::parse(strategy.as_str()), Some(strategy));
    }
}

#[test]
fn a_named_preview_service_replaces_the_made_one_for_the_deployments_it_selects() {
    let web = deployment();
    let services = vec![
        service("web", "shop", "{app: web}"),
        service("web-next", "shop", "{app: web}"),
        service("other", "shop", "{app: other}"),
    ];
    let made = PreviewServices::of(&services, &[&web], None).expect("no name to find");
    let names =
        |list: &[Desired]| -> Vec<String> { list.iter().map(|s| s.key.name.clone()).collect() };
    assert_eq!(names(&made.active), ["web", "web-next"]);
    assert!(made.named.is_empty());
    assert_eq!(names(&made.made), ["web-preview", "web-next-preview"]);

    let named = PreviewServices::of(&services, &[&web], Some("web-next")).expect("declared");
    assert_eq!(
        names(&named.active),
        ["web"],
        "the named Service is not active"
    );
    assert_eq!(names(&named.named), ["web-next"]);
    assert!(
        named.made.is_empty(),
        "no made preview beside the named one"
    );
    let previews = named.previews();
    assert_eq!(
        previews[0].body["spec"]["selector"],
        json!({"app": "web", "gitopsd.io/track": "canary"}),
        "the named preview selects only the new pods while the rollout runs"
    );
    assert_eq!(
        named.as_in_git()[1].body["spec"]["selector"],
        json!({"app": "web"}),
        "and gets git's selector back at the end"
    );

    let missing = PreviewServices::of(&services, &[&web], Some("web-canary-svc"))
        .expect_err("no such Service");
    assert!(
        missing
            .to_string()
            .contains("rollout.preview_service is \"web-canary-svc\""),
        "{missing}"
    );
}

#[test]
fn preview_replicas_cuts_the_preview_short_and_says_so() {
    let preview = deployment();
    let (full, short) = sized(vec![preview.clone()], None);
    assert_eq!(full[0].body["spec"]["replicas"], 4);
    assert!(!short);
    let (cut, short) = sized(vec![preview.clone()], Some(1));
    assert_eq!(cut[0].body["spec"]["replicas"], 1);
    assert!(short);
    let (bigger, short) = sized(vec![preview], Some(9));
    assert_eq!(
        bigger[0].body["spec"]["replicas"], 4,
        "never more than the full count"
    );
    assert!(!short);
}

fn annotated(kind: &str, strategy: Option<&str>) -> Desired {
    let annotations = strategy.map_or(String::new(), |s| {
        format!(", annotations: {{gitopsd.io/strategy: {s}}}")
    });
    desired(&format!(
        r#"
apiVersion: apps/v1
kind: {kind}
metadata: {{name: web, namespace: shop{annotations}}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec: {{containers: [{{name: web, image: "web:2"}}]}}
"#
    ))
}

#[test]
fn a_workload_annotation_overrides_the_environment_strategy_and_is_kept_in_comparisons() {
    let blue = annotated("Deployment", Some("blue-green"));
    assert_eq!(
        blue.body["metadata"]["annotations"]["gitopsd.io/strategy"], "blue-green",
        "normalizing keeps the author's strategy annotation"
    );
    assert_eq!(
        strategy_of(&blue.body, Strategy::Canary),
        Strategy::BlueGreen
    );
    let canary = annotated("Deployment", Some("canary"));
    assert_eq!(
        strategy_of(&canary.body, Strategy::BlueGreen),
        Strategy::Canary
    );
    let plain = annotated("Deployment", None);
    assert_eq!(
        strategy_of(&plain.body, Strategy::BlueGreen),
        Strategy::BlueGreen
    );
    assert_eq!(strategy_of(&plain.body, Strategy::Canary), Strategy::Canary);
}

#[test]
fn statefulsets_and_daemonsets_asking_for_blue_green_are_refused_with_the_way_out() {
    let problem = |kind: &str, strategy: Option<&str>, default: Strategy| {
        let object = annotated(kind, strategy);
        strategy_problem(&object.key, &object.body, default)
    };
    let by_annotation =
        problem("StatefulSet", Some("blue-green"), Strategy::Canary).expect("refused");
    assert!(
        by_annotation.contains(
            "a StatefulSet cannot run blue-green (asked by its annotation gitopsd.io/strategy)"
        ) && by_annotation
            .contains("use the canary strategy, which steps a StatefulSet's partition"),
        "{by_annotation}"
    );
    let by_environment = problem("DaemonSet", None, Strategy::BlueGreen).expect("refused");
    assert!(
        by_environment.contains("(asked by the environment's rollout.strategy)")
            && by_environment.contains("annotate it gitopsd.io/strategy: canary"),
        "{by_environment}"
    );
    assert_eq!(
        problem("StatefulSet", Some("canary"), Strategy::BlueGreen),
        None
    );
    assert_eq!(
        problem("Deployment", Some("blue-green"), Strategy::Canary),
        None
    );
    assert_eq!(problem("StatefulSet", None, Strategy::Canary), None);
    let typo = problem("Deployment", Some("bluegreen"), Strategy::Canary).expect("refused");
    assert!(
        typo.contains("expected \"canary\" or \"blue-green\""),
        "{typo}"
    );
    let service = service("web", "shop", "{app: web}");
    let mut body = service.body.clone();
    body["metadata"]["annotations"] = json!({"gitopsd.io/strategy": "canary"});
    assert!(
        strategy_problem(&service.key, &body, Strategy::Canary)
            .is_some_and(|p| p.contains("applies to Deployments, StatefulSets and DaemonSets")),
    );
}

/// A changed Deployment `name` (pods `app: name`, `tier: front`, using ConfigMap `config`),
/// annotated with `strategy` when given, as one unit of a rollout.
fn changed(name: &str, strategy: Option<&str>, config: &str) -> crate::canary::CanaryUnit {
    let annotations = strategy.map_or(String::new(), |s| {
        format!(", annotations: {{gitopsd.io/strategy: {s}}}")
    });
    let desired = desired(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: shop{annotations}}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}, tier: front}}}}
    spec: {{containers: [{{name: {name}, image: "{name}:2", envFrom: [{{configMapRef: {{name: {config}}}}}]}}]}}
"#
    ));
    crate::canary::CanaryUnit {
        stable_base: desired.body.clone(),
        desired,
        replicas: 4,
        scales_stable: true,
        configs: [key("ConfigMap", "", config)].into(),
    }
}

#[test]
fn a_revision_of_both_strategies_is_split_unless_they_share_a_service_or_a_config() {
    let config = |name: &str| {
        desired(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: shop}}\n"
        ))
    };
    let spec = |api_config: &str| crate::canary::RolloutSpec {
        held: vec![config("web-config"), config("api-config")],
        canaries: vec![
            changed("web", Some("blue-green"), "web-config"),
            changed("api", None, api_config),
        ],
        ..Default::default()
    };
    let services = vec![
        service("web", "shop", "{app: web}"),
        service("api", "shop", "{app: api}"),
    ];
    let split = by_strategy(&spec("api-config"), &services, Strategy::Canary).expect("a mix");
    assert!(split.mixed());
    let names = |spec: &crate::canary::RolloutSpec| -> Vec<String> {
        spec.canaries
            .iter()
            .map(|u| u.desired.key.name.clone())
            .chain(spec.held.iter().map(|d| d.key.name.clone()))
            .collect()
    };
    assert_eq!(names(&split.blue_green), ["web", "web-config"]);
    assert_eq!(names(&split.canary), ["api", "api-config"]);

    let refused = by_strategy(&spec("web-config"), &services, Strategy::Canary)
        .expect_err("a config both use");
    assert_eq!(refused.shared, ["ConfigMap shop/web-config"]);
    let mut shared = services.clone();
    shared.push(service("front", "shop", "{tier: front}"));
    let refused = by_strategy(&spec("api-config"), &shared, Strategy::Canary)
        .expect_err("a Service selecting both");
    assert_eq!(refused.shared, ["Service shop/front"]);
    assert!(
        refused
            .to_string()
            .contains("that share Service shop/front"),
        "{refused}"
    );

    let plain = by_strategy(&spec("api-config"), &services, Strategy::BlueGreen)
        .expect("api follows the environment");
    assert!(plain.blue_green() && !plain.mixed());
}
