//! Every label and annotation name gitopsd reads or writes, in one place.

// Ownership marks on every applied object.
/// Label that marks every object gitopsd applies (the Kubernetes recommended label).
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`] on objects gitopsd owns.
pub const MANAGER: &str = "gitopsd";
/// Label naming the environment that owns an object.
pub const LABEL_ENVIRONMENT: &str = "gitopsd.io/environment";
/// Annotation holding the git revision an object was last applied from.
pub const ANNOTATION_REVISION: &str = "gitopsd.io/revision";
/// Annotation holding the sha256 of the normalized desired object.
pub const ANNOTATION_HASH: &str = "gitopsd.io/hash";
/// Annotation holding the JSON pointers (a JSON array) of the values that were SOPS-encrypted
/// in git: they are shown nowhere.
pub const ANNOTATION_ENCRYPTED: &str = "gitopsd.io/encrypted";
/// Label on a Namespace gitopsd created for an environment with `create_namespace = true`
/// (value [`MANAGER`]). Such a namespace is no applyset member and is never pruned.
pub const LABEL_CREATED_BY: &str = "gitopsd.io/created-by";
/// Annotation on such a Namespace: the environment it was created for.
pub const ANNOTATION_CREATED_FOR: &str = "gitopsd.io/created-for";
/// Prefix of every label and annotation gitopsd writes itself.
pub const OWN_PREFIX: &str = "gitopsd.io/";

/// Annotation on Deployments: hash of the desired pod template, so a canary is only started
/// when the template really changed (live templates carry server defaults).
pub const ANNOTATION_TEMPLATE_HASH: &str = "gitopsd.io/template-hash";

/// Annotation on a workload: the rollout strategy it asks for (`canary` or `blue-green`),
/// over its environment's `rollout.strategy`. Written by the author, so kept in comparisons.
pub const ANNOTATION_STRATEGY: &str = "gitopsd.io/strategy";

// Canary pods.
/// Pod and selector label that sets canary pods apart.
pub const LABEL_TRACK: &str = "gitopsd.io/track";
/// Value of [`LABEL_TRACK`] on stable pods (template label only, never the selector).
pub const TRACK_STABLE: &str = "stable";
/// Value of [`LABEL_TRACK`] on canary pods, and a blue/green preview's (template and selector).
pub const TRACK_CANARY: &str = "canary";

// ApplySets (KEP-3659): the parent ConfigMap and its members.
/// Label on the parent: the applyset's id.
pub const LABEL_ID: &str = "applyset.kubernetes.io/id";
/// Label on every member: the id of the applyset it belongs to.
pub const LABEL_PART_OF: &str = "applyset.kubernetes.io/part-of";
/// Annotation on the parent: `<tool>/<version>` of the tool that manages the set.
pub const ANNOTATION_TOOLING: &str = "applyset.kubernetes.io/tooling";
/// Annotation on the parent: sorted `Kind.group` list of the members' types.
pub const ANNOTATION_GROUP_KINDS: &str = "applyset.kubernetes.io/contains-group-kinds";
/// Annotation on the parent: namespaces of members other than the parent's own.
pub const ANNOTATION_NAMESPACES: &str = "applyset.kubernetes.io/additional-namespaces";
/// Annotation on the parent: `<repo>#<branch>:<path>` of the environment that owns it.
pub const ANNOTATION_SOURCE: &str = "gitopsd.io/source";
/// Tool name in [`ANNOTATION_TOOLING`].
pub const TOOL: &str = "gitopsd";

// Hooks around a rollout (objects in the revision).
/// Annotation making an object a hook: `pre-rollout`, `post-promotion` or `on-failure`. Such
/// objects are not applied with the rest; they run at that point of a rollout.
pub const ANNOTATION_HOOK: &str = "gitopsd.io/hook";
/// Annotation ordering hooks of the same kind (an integer, lowest first; default 0).
pub const ANNOTATION_HOOK_WEIGHT: &str = "gitopsd.io/hook-weight";
/// Annotation saying when a hook's object is deleted: `before-creation` (the default: when the
/// hook next runs), `succeeded` or `failed`.
pub const ANNOTATION_HOOK_DELETE_POLICY: &str = "gitopsd.io/hook-delete-policy";
/// Annotation (`"true"`) letting a pre-rollout hook run again when a revert returns to its
/// revision.
pub const ANNOTATION_HOOK_ON_REVERT: &str = "gitopsd.io/hook-on-revert";
/// Label on a hook's object naming the hook (its name in the revision), so the runs of
/// earlier revisions are found and deleted by the environment that made them.
pub const LABEL_HOOK: &str = "gitopsd.io/hook";

/// On the Leases of `[ha]`: `environment` (one per environment, `gitopsd-<environment>`) or
/// `daemon` (each daemon's heartbeat, `gitopsd.daemon.<identity>`).
pub const LABEL_LEASE: &str = "gitopsd.io/lease";
/// On an environment's Lease: the history its holder acts on (last healthy revision, held
/// failures, the rollout in flight, approvals, pauses), JSON, written by the holder before
/// each write it makes to the environment.
pub const ANNOTATION_STATE: &str = "gitopsd.io/state";
/// On an environment's Lease: operator actions asked of another daemon (JSON), for the holder
/// to journal and act on.
pub const ANNOTATION_REQUESTS: &str = "gitopsd.io/requests";
