//! Writing status truthfully: conditions with CamelCase reasons, observedGeneration, and an event
//! for every change a user should see.

use serde_json::{Value, json};

use crate::api::meta::{Condition, ConditionStatus, now_rfc3339, set_condition};
use crate::control::store::{EventType, Store, StoreError, StoredObject};

/// A condition to set.
pub fn cond(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message: message.into(),
        last_transition_time: now_rfc3339(),
    }
}

/// Merges `fields` into the object's status (a null removes the field), sets `conditions`, stamps
/// observedGeneration (unless `fields` sets it), and writes it compare-and-swap on the
/// object's resourceVersion. Writes nothing when nothing changed.
///
/// `obj` is the object as the reconcile read it; the merge is onto the stored status, which
/// may hold the same reconcile's earlier writes (they do not wake it again, so a write against the
/// stale copy would be lost). Returns false, writing nothing, when the object's desired state
/// changed meanwhile (its generation, uid or deletion: the scheduler runs it again anyway) or on a
/// conflict with a concurrent writer.
pub fn write_status(
    store: &mut Store,
    obj: &StoredObject,
    fields: &Value,
    conditions: Vec<Condition>,
) -> Result<bool, StoreError> {
    let obj = &match store.get(obj.kind, obj.name.as_str()) {
        Ok(cur)
            if cur.uid == obj.uid
                && cur.generation == obj.generation
                && cur.deleted_at.is_some() == obj.deleted_at.is_some() =>
        {
            cur
        }
        Ok(_) | Err(StoreError::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut status = obj.status.clone();
    if !status.is_object() {
        status = json!({});
    }
    let map = status.as_object_mut().expect("object");
    if let Some(f) = fields.as_object() {
        for (k, v) in f {
            if v.is_null() {
                map.remove(k);
            } else {
                map.insert(k.clone(), v.clone());
            }
        }
    }
    let mut conds: Vec<Condition> = map
        .get("conditions")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    for c in conditions {
        set_condition(&mut conds, c);
    }
    map.insert(
        "conditions".into(),
        serde_json::to_value(&conds).expect("json"),
    );
    // A replacement in progress keeps the generation it last converged (passed in `fields`).
    if !fields
        .as_object()
        .is_some_and(|f| f.contains_key("observedGeneration"))
    {
        map.insert("observedGeneration".into(), json!(obj.generation));
    }
    if status == obj.status {
        return Ok(true);
    }
    match store.update_status(
        obj.kind,
        obj.name.as_str(),
        Some(obj.resource_version),
        &status,
    ) {
        Ok(_) => Ok(true),
        Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// [`write_status`] on the daemon's shared store, from async code.
pub async fn update_status(
    store: &super::SharedStore,
    obj: &StoredObject,
    fields: Value,
    conditions: Vec<Condition>,
) -> Result<bool, StoreError> {
    let o = obj.clone();
    store
        .with(move |s| write_status(s, &o, &fields, conditions))
        .await
}

/// Records an event about an object.
pub fn event(store: &mut Store, obj: &StoredObject, type_: EventType, reason: &str, message: &str) {
    if let Err(e) = store.record_event(obj.kind.as_str(), obj.name.as_str(), type_, reason, message)
    {
        tracing::warn!(error = %e, "cannot record event");
    }
}

/// The Ready condition of a stored object, if it holds at the object's current generation.
pub fn is_ready(obj: &StoredObject) -> bool {
    obj.deleted_at.is_none()
        && obj.observed_generation() == Some(obj.generation)
        && matches!(obj.condition("Ready"), Some((ConditionStatus::True, _, _)))
}
