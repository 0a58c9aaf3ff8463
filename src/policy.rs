//! What an environment may touch (pure): allowed namespaces, allowed and denied kinds, and
//! cluster-scoped objects, checked on every object of a revision before anything is applied.

use glob::Pattern;

use crate::model::ResourceKey;

/// Which cluster-scoped objects an environment may hold.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterScoped {
    Allow,
    Deny,
    /// Only kinds matching one of these `group/Kind` globs.
    Only(Vec<Glob>),
}

/// A glob with the text it was written as.
#[derive(Debug, Clone, PartialEq)]
pub struct Glob {
    pub text: String,
    pattern: Pattern,
}

impl Glob {
    pub fn new(text: &str) -> Result<Self, glob::PatternError> {
        Ok(Self {
            text: text.to_string(),
            pattern: Pattern::new(text)?,
        })
    }

    fn matches(&self, candidate: &str) -> bool {
        self.pattern.matches(candidate)
    }
}

/// An environment's limits. Empty allow-lists allow everything.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub allowed_namespaces: Vec<Glob>,
    pub allowed_kinds: Vec<Glob>,
    pub denied_kinds: Vec<Glob>,
    pub cluster_scoped: ClusterScoped,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allowed_namespaces: Vec::new(),
            allowed_kinds: Vec::new(),
            denied_kinds: Vec::new(),
            cluster_scoped: ClusterScoped::Allow,
        }
    }
}

/// `group/Kind` as policies name it: the core group is `core` (`core/Secret`, `apps/Deployment`).
pub fn kind_name(key: &ResourceKey) -> String {
    let group = if key.group.is_empty() {
        "core"
    } else {
        key.group.as_str()
    };
    format!("{group}/{}", key.kind)
}

fn any_matches(globs: &[Glob], candidate: &str) -> Option<String> {
    globs
        .iter()
        .find(|glob| glob.matches(candidate))
        .map(|glob| glob.text.clone())
}

fn listed(globs: &[Glob]) -> String {
    globs
        .iter()
        .map(|glob| format!("{:?}", glob.text))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Policy {
    /// The namespaces the environment is limited to, when each is named outright (no glob):
    /// the only ones its namespaced members can live in. `None` when any namespace may hold
    /// them, or a pattern does.
    pub fn named_namespaces(&self) -> Option<Vec<String>> {
        if self.allowed_namespaces.is_empty()
            || self
                .allowed_namespaces
                .iter()
                .any(|glob| glob.text.contains(['*', '?', '[']))
        {
            return None;
        }
        Some(
            self.allowed_namespaces
                .iter()
                .map(|glob| glob.text.clone())
                .collect(),
        )
    }

    /// Why the environment may not hold `key` (its namespace already settled); `None` when it
    /// may.
    pub fn refusal(&self, key: &ResourceKey) -> Option<String> {
        let kind = kind_name(key);
        if let Some(glob) = any_matches(&self.denied_kinds, &kind) {
            return Some(format!("kind {kind} is denied (denied_kinds {glob:?})"));
        }
        if !self.allowed_kinds.is_empty() && any_matches(&self.allowed_kinds, &kind).is_none() {
            return Some(format!(
                "kind {kind} is not allowed (allowed_kinds: {})",
                listed(&self.allowed_kinds)
            ));
        }
        match &key.namespace {
            None => {
                match &self.cluster_scoped {
                    ClusterScoped::Allow => {}
                    ClusterScoped::Deny => {
                        return Some(format!(
                            "{kind} is cluster-scoped and this environment may hold no cluster-scoped objects (cluster_scoped = \"deny\")"
                        ));
                    }
                    ClusterScoped::Only(globs) if any_matches(globs, &kind).is_none() => {
                        return Some(format!(
                            "{kind} is cluster-scoped and not among cluster_scoped ({})",
                            listed(globs)
                        ));
                    }
                    ClusterScoped::Only(_) => {}
                }
                // A Namespace is where objects will live: it must be one they may live in.
                let is_namespace = key.group.is_empty() && key.kind == "Namespace";
                if is_namespace {
                    return self.namespace_refusal(&key.name);
                }
                None
            }
            Some(namespace) => self.namespace_refusal(namespace),
        }
    }

    fn namespace_refusal(&self, namespace: &str) -> Option<String> {
        (!self.allowed_namespaces.is_empty()
            && any_matches(&self.allowed_namespaces, namespace).is_none())
        .then(|| {
            format!(
                "namespace {namespace:?} is not allowed (allowed_namespaces: {})",
                listed(&self.allowed_namespaces)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globs(texts: &[&str]) -> Vec<Glob> {
        texts
            .iter()
            .map(|text| Glob::new(text).expect("valid glob"))
            .collect()
    }

    fn key(group: &str, kind: &str, namespace: Option<&str>, name: &str) -> ResourceKey {
        ResourceKey {
            group: group.into(),
            kind: kind.into(),
            namespace: namespace.map(str::to_string),
            name: name.into(),
        }
    }

    fn locked_down() -> Policy {
        Policy {
            allowed_namespaces: globs(&["shop", "shop-*"]),
            allowed_kinds: globs(&["apps/*", "core/*", "networking.k8s.io/Ingress"]),
            denied_kinds: globs(&["core/Secret"]),
            cluster_scoped: ClusterScoped::Only(globs(&["core/Namespace"])),
        }
    }

    #[test]
    fn everything_is_allowed_by_default() {
        let policy = Policy::default();
        assert_eq!(
            policy.refusal(&key("rbac.authorization.k8s.io", "ClusterRole", None, "x")),
            None
        );
        assert_eq!(
            policy.refusal(&key("", "Secret", Some("kube-system"), "x")),
            None
        );
    }

    #[test]
    fn a_locked_down_environment_names_the_rule_that_refuses() {
        let policy = locked_down();
        assert_eq!(
            policy.refusal(&key("apps", "Deployment", Some("shop"), "web")),
            None
        );
        assert_eq!(
            policy.refusal(&key("", "ConfigMap", Some("shop-eu"), "c")),
            None
        );
        assert_eq!(policy.refusal(&key("", "Namespace", None, "shop-eu")), None);
        let refused = |key: ResourceKey| policy.refusal(&key).expect("refused");
        assert!(
            refused(key("", "ConfigMap", Some("kube-system"), "c"))
                .starts_with("namespace \"kube-system\" is not allowed"),
        );
        assert!(refused(key("", "Namespace", None, "kube-public")).contains("not allowed"));
        assert_eq!(
            refused(key("", "Secret", Some("shop"), "s")),
            "kind core/Secret is denied (denied_kinds \"core/Secret\")"
        );
        assert!(
            refused(key("batch", "CronJob", Some("shop"), "j"))
                .starts_with("kind batch/CronJob is not allowed (allowed_kinds: \"apps/*\""),
        );
        let deny = Policy {
            cluster_scoped: ClusterScoped::Deny,
            ..Policy::default()
        };
        assert!(
            deny.refusal(&key(
                "rbac.authorization.k8s.io",
                "ClusterRole",
                None,
                "admin"
            ))
            .expect("refused")
            .contains("cluster_scoped = \"deny\"")
        );
        assert!(
            policy
                .refusal(&key("", "PersistentVolume", None, "pv"))
                .is_some_and(|why| why.contains("not among cluster_scoped")),
            "core/* allows the kind, but not cluster-wide"
        );
    }

    #[test]
    fn only_namespaces_named_outright_limit_what_is_watched() {
        let mut policy = Policy::default();
        assert_eq!(policy.named_namespaces(), None, "no limit");
        policy.allowed_namespaces = globs(&["shop", "shop-admin"]);
        assert_eq!(
            policy.named_namespaces(),
            Some(vec!["shop".to_string(), "shop-admin".to_string()])
        );
        policy.allowed_namespaces = globs(&["shop", "shop-*"]);
        assert_eq!(
            policy.named_namespaces(),
            None,
            "a pattern matches any number"
        );
    }
}
