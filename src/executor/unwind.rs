//! What a revert of a blue/green rollout does before its own writes, so the active Services
//! never select pods that are not the old ones: with the old pods all up, the Services are
//! pinned to them and the preview drained ([`unwind_previews`]); once the scale-down had
//! begun, the Deployments named in git first get the old template back and ready behind the
//! preview, and only then are the Services switched back ([`restore_then_switch_back`]).

use chrono::Utc;

use super::effects::Effects;
use super::error::ReconcileError;
use super::writes::ordered;
use crate::backend::Target;
use crate::canary::{self, canary_key};
use crate::journal::Event;
use crate::model::{Object, ResourceKey, Revision};
use crate::plan::Desired;
use crate::preview;
use crate::probe::CheckRunner;
use crate::rollout::Observation;

/// Scales `previews` (preview Deployments) to zero and waits, within `timeout`, until none of
/// their pods is left. A write the cluster refuses is logged and left to the revert.
pub(super) async fn drain<T: Target, P: CheckRunner>(
    fx: &mut Effects<'_, T, P>,
    previews: Vec<Desired>,
    revision: &Revision,
) -> Result<(), ReconcileError> {
    let drained: Vec<Desired> = previews
        .into_iter()
        .map(|desired| {
            let mut body = desired.body;
            body["spec"]["replicas"] = serde_json::Value::from(0);
            Desired::from_body(desired.key, body)
        })
        .collect();
    let keys: Vec<ResourceKey> = drained.iter().map(|d| d.key.clone()).collect();
    let writes = ordered(drained, Vec::new());
    if let Err((_, error)) = fx.write_all(&writes, |_| revision.clone()).await {
        tracing::warn!(env = %fx.config.name, %error, "could not scale the preview down before the revert");
        return Ok(());
    }
    let deadline = Utc::now()
        + chrono::Duration::from_std(fx.config.rollout.timeout).unwrap_or(chrono::Duration::MAX);
    while let Observation::NotReady { .. } = fx.readiness(&keys, deadline).await? {
        if Utc::now() >= deadline {
            break;
        }
    }
    Ok(())
}

/// The preview Deployments (`<name>-canary`) live and not drained yet, of the Deployments
/// named in `previewed` (their keys as journaled; empty: every canary is a preview).
fn live_previews(live: &[Object], previewed: &[String]) -> Vec<Desired> {
    live.iter()
        .filter(|object| {
            object.key.group == "apps"
                && object.key.kind == "Deployment"
                && object.key.name.ends_with(canary::CANARY_SUFFIX)
                // Drained already (by the rollout's own failure path): nothing to move.
                && object.body.pointer("/spec/replicas").and_then(serde_json::Value::as_u64)
                    != Some(0)
        })
        .filter(|object| {
            let stable = ResourceKey {
                name: object
                    .key
                    .name
                    .strip_suffix(canary::CANARY_SUFFIX)
                    .unwrap_or(&object.key.name)
                    .to_string(),
                ..object.key.clone()
            };
            previewed.is_empty() || previewed.contains(&stable.to_string())
        })
        .map(|object| Desired::from_body(object.key.clone(), object.body.clone()))
        .collect()
}

/// The Deployments of `to` whose previews are in `previews`.
fn stables_of<'t>(to: &'t [Desired], previews: &[Desired]) -> Vec<&'t Desired> {
    to.iter()
        .filter(|desired| {
            previews
                .iter()
                .any(|preview| canary_key(&desired.key) == preview.key)
        })
        .collect()
}

/// Before a blue/green rollout whose old pods are all still up is reverted (after a failed
/// or refused write, a failed switch-back, or a restart at any point): each preview
/// Deployment still live (`<name>-canary`, of the Deployments `previewed`) is drained first,
/// with the Services of `to` that select `<name>`'s pods pinned to the old pods
/// (`gitopsd.io/track: stable`), so the revert, which gives them git's selectors back, never
/// sends traffic to preview pods. The pins are one write per Service, as a switch-back.
pub(super) async fn unwind_previews<T: Target, P: CheckRunner>(
    fx: &mut Effects<'_, T, P>,
    revision: &Revision,
    to: &[Desired],
    live: &[Object],
    previewed: &[String],
) -> Result<(), ReconcileError> {
    let previews = live_previews(live, previewed);
    if previews.is_empty() {
        return Ok(());
    }
    let stables = stables_of(to, &previews);
    let pins: Vec<Desired> = preview::active_services(to, &stables)
        .iter()
        .map(preview::pinned)
        .collect();
    tracing::warn!(env = %fx.config.name, revision = %revision.short(), services = pins.len(), previews = previews.len(), "pinning the Services to the old pods and draining the preview before the revert");
    let writes = ordered(pins, Vec::new());
    if let Err((_, error)) = fx.write_all(&writes, |_| revision.clone()).await {
        // Draining now could leave a Service selecting nothing: the revert is left to go on.
        tracing::warn!(env = %fx.config.name, %error, "could not pin the Services to the old pods before the revert");
        return Ok(());
    }
    drain(fx, previews, revision).await
}

/// Before a blue/green rollout whose scale-down had begun is reverted (its Services select
/// the preview, while the Deployments named in git take, or have taken, the new template):
/// those Deployments get `to`'s version back, with the ConfigMaps and Secrets of `to` they
/// use, and once they are ready again (every pod on the old template, within `timeout`)
/// `switched_back` is journaled, the Services of `to` selecting them are pinned to them (one
/// write each) and the previews drained. The revert that follows gives the Services git's
/// selectors back. Until the pin the Services keep selecting only the preview's pods, and
/// from it only the old ones. Without a live preview, or when the old template is not ready
/// in time (or a write is refused), the revert goes on as for a canary.
pub(super) async fn restore_then_switch_back<T: Target, P: CheckRunner>(
    fx: &mut Effects<'_, T, P>,
    revision: &Revision,
    to_revision: &Revision,
    to: &[Desired],
    live: &[Object],
    previewed: &[String],
) -> Result<bool, ReconcileError> {
    let previews = live_previews(live, previewed);
    let stables = stables_of(to, &previews);
    if previews.is_empty() || stables.is_empty() {
        return Ok(false);
    }
    let used: Vec<ResourceKey> = stables
        .iter()
        .flat_map(|stable| canary::referenced_configs(stable))
        .collect();
    let mut restored: Vec<Desired> = stables.iter().map(|d| (*d).clone()).collect();
    restored.extend(to.iter().filter(|d| used.contains(&d.key)).cloned());
    let keys: Vec<ResourceKey> = stables.iter().map(|d| d.key.clone()).collect();
    tracing::warn!(env = %fx.config.name, revision = %revision.short(), deployments = ?keys.iter().map(ToString::to_string).collect::<Vec<_>>(), "restoring the old template behind the preview before switching back");
    let writes = ordered(restored, Vec::new());
    if let Err((_, error)) = fx.write_all(&writes, |_| to_revision.clone()).await {
        tracing::warn!(env = %fx.config.name, %error, "could not restore the old template before the switch back; reverting as for a canary");
        return Ok(false);
    }
    let deadline = Utc::now()
        + chrono::Duration::from_std(fx.config.rollout.timeout).unwrap_or(chrono::Duration::MAX);
    loop {
        match fx.readiness(&keys, deadline).await? {
            Observation::Ready => break,
            Observation::NotReady { .. } if Utc::now() < deadline => {}
            other => {
                tracing::warn!(env = %fx.config.name, observation = ?other, "the old template is not ready; reverting as for a canary");
                return Ok(false);
            }
        }
    }
    fx.journal(Event::SwitchedBack {
        revision: revision.clone(),
        reason: "the old template is ready again behind the preview".into(),
    })
    .await?;
    fx.metrics.switched(&fx.config.name, "switched_back");
    unwind_previews(fx, revision, to, live, previewed).await?;
    Ok(true)
}
