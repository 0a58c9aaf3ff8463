//! The 2,004-object environment of the scale tests and benchmarks.

/// 4 Namespaces, 1,000 ConfigMaps, 500 Deployments (0 replicas: no pods) and 500 Services, in
/// 20 files.
pub fn scale_manifests(namespaces: &[String]) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut text = String::new();
    for namespace in namespaces {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n"
        ));
    }
    files.push(("namespaces.yaml".to_string(), std::mem::take(&mut text)));
    for part in 0..19 {
        for index in (part * 1000 / 19)..((part + 1) * 1000 / 19) {
            let namespace = &namespaces[index % namespaces.len()];
            text.push_str(&format!(
                "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-{index:04}\n  namespace: {namespace}\ndata:\n  value: \"{index}\"\n"
            ));
            if index % 2 == 0 {
                text.push_str(&format!(
                    "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app-{index:04}\n  namespace: {namespace}\nspec:\n  replicas: 0\n  selector:\n    matchLabels: {{app: app-{index:04}}}\n  template:\n    metadata:\n      labels: {{app: app-{index:04}}}\n    spec:\n      containers:\n        - name: app\n          image: registry.k8s.io/pause:3.9\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: app-{index:04}\n  namespace: {namespace}\nspec:\n  selector: {{app: app-{index:04}}}\n  ports: [{{port: 80}}]\n"
                ));
            }
        }
        files.push((format!("part-{part:02}.yaml"), std::mem::take(&mut text)));
    }
    files
}
