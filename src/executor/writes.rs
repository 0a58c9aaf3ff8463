//! Writes a pass makes, in the order they are made: plans and rollout steps turned into
//! ordered applies and deletions, and the marks a revert restores.

use std::collections::BTreeMap;

use crate::backend::{DriftCheck, Target, TargetError};
use crate::canary::{self, RolloutSpec, StepObjects};
use crate::journal::{Baseline, ChangeRecord};
use crate::labels::{ANNOTATION_HASH, ANNOTATION_REVISION};
use crate::model::{Action, Object, ResourceKey, Revision};
use crate::plan::{Change, Desired, Plan, stage};

/// The journal form of a plan's changes.
pub fn change_records(changes: &[Change]) -> Vec<ChangeRecord> {
    changes
        .iter()
        .map(|change| ChangeRecord {
            action: change.action(),
            object: change.key().to_string(),
            hash: change.desired().map(|d| d.hash.clone()),
        })
        .collect()
}

/// One step of writing: apply or delete.
pub enum Write {
    Apply(Desired),
    Delete(ResourceKey),
}

impl Write {
    pub fn key(&self) -> &ResourceKey {
        match self {
            Write::Apply(desired) => &desired.key,
            Write::Delete(key) => key,
        }
    }
}

/// Applies in stage order, then deletes in reverse stage order.
pub fn ordered(mut applies: Vec<Desired>, mut deletes: Vec<ResourceKey>) -> Vec<Write> {
    applies.sort_by(|a, b| (stage(&a.key), &a.key).cmp(&(stage(&b.key), &b.key)));
    deletes.sort_by(|a, b| (stage(b), b).cmp(&(stage(a), a)));
    applies
        .into_iter()
        .map(Write::Apply)
        .chain(deletes.into_iter().map(Write::Delete))
        .collect()
}

pub fn applied_keys(writes: &[Write]) -> Vec<ResourceKey> {
    writes
        .iter()
        .filter_map(|write| match write {
            Write::Apply(desired) => Some(desired.key.clone()),
            Write::Delete(_) => None,
        })
        .collect()
}

/// The objects of a step at `weight`; the `first` step of a run also writes every change with
/// no canary meaning.
pub fn step_objects(spec: &RolloutSpec, first: bool, weight: u8) -> StepObjects {
    let mut objects = if weight < 100 {
        canary::canary_step(spec, weight)
    } else {
        canary::promotion(spec)
    };
    if first {
        objects.apply.extend(
            spec.immediate
                .iter()
                .filter_map(|change| change.desired().cloned()),
        );
    }
    objects
}

/// A plan's changes as ordered writes.
pub fn plan_writes(plan: &Plan) -> Vec<Write> {
    plan.changes
        .iter()
        .map(|change| match change {
            Change::Create { desired } | Change::Update { desired, .. } => {
                Write::Apply(desired.clone())
            }
            Change::Delete { key, .. } => Write::Delete(key.clone()),
        })
        .collect()
}

/// How the objects a rollout will touch are marked now, so a revert can restore the marks.
pub fn baseline(plan: &Plan, spec: &RolloutSpec, live: &[Object]) -> Vec<Baseline> {
    let mut touched: Vec<&ResourceKey> = plan
        .changes
        .iter()
        .filter(|change| change.action() != Action::Create)
        .map(Change::key)
        .collect();
    touched.extend(spec.canaries.iter().map(|unit| &unit.desired.key));
    let live_by_key: BTreeMap<&ResourceKey, &Object> =
        live.iter().map(|object| (&object.key, object)).collect();
    let mut seen = std::collections::BTreeSet::new();
    touched
        .into_iter()
        .filter(|key| seen.insert(*key))
        .filter_map(|key| {
            let object = live_by_key.get(key)?;
            Some(Baseline {
                object: key.to_string(),
                revision: Revision(object.annotation(ANNOTATION_REVISION)?.to_string()),
                hash: object.annotation(ANNOTATION_HASH)?.to_string(),
            })
        })
        .collect()
}

/// Asks the target about each suspected drift: a server-side dry run clears false suspicions
/// (and remembers them) and names the fields that would really change.
pub async fn confirm_drift<T: Target>(
    target: &T,
    plan: &mut Plan,
    live: &[Object],
    environment: &str,
    revision: &Revision,
) -> Result<(), TargetError> {
    let live_by_key: BTreeMap<&ResourceKey, &Object> =
        live.iter().map(|object| (&object.key, object)).collect();
    let mut kept = Vec::with_capacity(plan.changes.len());
    for change in std::mem::take(&mut plan.changes) {
        let Change::Update {
            desired,
            live: normalized,
            drift,
        } = change
        else {
            kept.push(change);
            continue;
        };
        let Some(object) = live_by_key.get(&desired.key).filter(|_| !drift.is_empty()) else {
            kept.push(Change::Update {
                desired,
                live: normalized,
                drift,
            });
            continue;
        };
        let body = desired.stamped(environment, revision);
        match target.check_drift(&desired.key, &body, object).await? {
            DriftCheck::Cleared => plan.unchanged += 1,
            DriftCheck::Unchecked => kept.push(Change::Update {
                desired,
                live: normalized,
                drift,
            }),
            DriftCheck::Confirmed(fields) => kept.push(Change::Update {
                desired,
                live: normalized,
                drift: if fields.is_empty() { drift } else { fields },
            }),
        }
    }
    plan.changes = kept;
    Ok(())
}
