//! What the API server's answers mean: a request's failure described, blamed on the revision
//! or the cluster, and the conflicting field managers and missing objects it names.

use super::FIELD_MANAGER_PREFIX;
use crate::backend::{FailureClass, Missing, TargetError};
use crate::model::ResourceKey;

pub(super) fn connect_error(message: impl Into<String>) -> TargetError {
    TargetError::List {
        location: "kubernetes".into(),
        message: message.into(),
    }
}

/// Why one request failed, and whether trying again may help.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    /// The HTTP status the API server answered with, if it answered.
    pub(super) code: Option<u16>,
    pub(super) retryable: bool,
    pub(super) message: String,
    pub(super) class: FailureClass,
    /// What a `NotFound` answer's details name as missing.
    pub(super) missing: Option<Box<Missing>>,
    /// The field managers a conflict's causes name (`FieldManagerConflict`).
    pub(super) conflicting_managers: Vec<String>,
}

impl Failure {
    pub(super) fn is(&self, code: u16) -> bool {
        self.code == Some(code)
    }

    /// Whether the answer says the server has too much to do: throttled (429), or a retryable
    /// server error or timeout (5xx; a server short of seats for mutating requests times them
    /// out rather than answering 429). Either shrinks the cluster's window of requests.
    pub(super) fn overloaded(&self) -> bool {
        self.retryable && self.code.is_some_and(|code| code == 429 || code >= 500)
    }
}

/// How a v1.28 API server answers a server-side apply with a field its schema lacks: a 500
/// that no retry will change.
pub(super) const UNKNOWN_FIELD: &str = "failed to create typed patch object";

/// Whom an answer of the API server blames. The object itself is at fault when the server
/// judged it (400, 404 for a write, 422, or an apply its schema refuses); everything else
/// (no answer, 401, 403, 409, 429, 5xx) is the cluster's state, and passes.
pub(super) fn classify(code: Option<u16>, message: &str) -> FailureClass {
    match code {
        Some(400 | 404 | 422) => FailureClass::Revision,
        Some(500) if message.contains(UNKNOWN_FIELD) => FailureClass::Revision,
        _ => FailureClass::Infrastructure,
    }
}

pub(super) fn describe(error: &kube::Error) -> Failure {
    match error {
        kube::Error::Api(status) => {
            let what = match status.code {
                409 => "conflict",
                422 => "invalid",
                403 => "forbidden",
                404 => "not found",
                401 => "unauthorized",
                429 => "throttled",
                _ => "refused",
            };
            let class = classify(Some(status.code), &status.message);
            let details = status.details.as_ref();
            Failure {
                code: Some(status.code),
                retryable: (status.code >= 500 || status.code == 429)
                    && class == FailureClass::Infrastructure,
                message: format!(
                    "{what} ({} {}): {}",
                    status.code, status.reason, status.message
                ),
                class,
                missing: details
                    .filter(|details| status.reason == "NotFound" && !details.kind.is_empty())
                    .map(|details| {
                        Box::new(Missing {
                            resource: details.kind.clone(),
                            name: details.name.clone(),
                        })
                    }),
                conflicting_managers: details
                    .map(|details| conflicting_managers(&details.causes))
                    .unwrap_or_default(),
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            Failure::without_answer(error.to_string(), true)
        }
        other => Failure::without_answer(other.to_string(), false),
    }
}

impl Failure {
    /// A request that got no answer from the API server: the cluster's state.
    pub(super) fn without_answer(message: String, retryable: bool) -> Self {
        Self {
            code: None,
            retryable,
            message,
            class: FailureClass::Infrastructure,
            missing: None,
            conflicting_managers: Vec::new(),
        }
    }
}

/// The managers a server-side apply conflicts with, from the causes of its 409: each
/// `FieldManagerConflict` cause says `conflict with "<manager>"` (and `using <version>`).
pub(super) fn conflicting_managers(causes: &[kube::core::response::StatusCause]) -> Vec<String> {
    let mut managers: Vec<String> = causes
        .iter()
        .filter(|cause| cause.reason == "FieldManagerConflict")
        .filter_map(|cause| {
            let rest = cause.message.strip_prefix("conflict with \"")?;
            Some(rest.split('"').next()?.to_string())
        })
        .collect();
    managers.dedup();
    managers
}

/// The environment a conflicting gitopsd field manager belongs to, if one other than `ours`
/// is among `managers`.
pub(super) fn conflicting_environment(managers: &[String], ours: &str) -> Option<String> {
    managers
        .iter()
        .filter(|manager| *manager != ours)
        .find_map(|manager| manager.strip_prefix(FIELD_MANAGER_PREFIX))
        .map(str::to_string)
}

/// A failure on the way to the server (discovery, encoding): the cluster's, not the object's.
pub(super) fn object_error(
    operation: &'static str,
    key: &ResourceKey,
    message: String,
) -> TargetError {
    classed_error(operation, key, message, FailureClass::Infrastructure)
}

pub(super) fn classed_error(
    operation: &'static str,
    key: &ResourceKey,
    message: String,
    class: FailureClass,
) -> TargetError {
    TargetError::Object {
        operation,
        object: key.to_string(),
        message,
        class,
        missing: None,
    }
}

/// The server's answer to a request about one object.
pub(super) fn answer_error(
    operation: &'static str,
    key: &ResourceKey,
    failure: Failure,
) -> TargetError {
    TargetError::Object {
        operation,
        object: key.to_string(),
        message: failure.message,
        class: failure.class,
        missing: failure.missing,
    }
}
