//! The history of one object: the generations of desired state that changed it, and what changed
//! (field paths with their old and new values), from the recorded generations.
//!
//! # Caveats
//! - Only the kept generations are known (the daemon keeps `--keep-generations`, 50 by default):
//!   an object that exists in the oldest kept one is reported `Present` there, since what came
//!   before was pruned.
//! - Status is not part of desired state: a generation changes an object's labels, annotations
//!   or spec, never what the controllers report.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::store::{SnapshotObject, Store, StoreError};
use crate::api::Kind;

/// What a generation did to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Revision {
    /// It appeared.
    Created,
    /// Its labels, annotations or spec changed.
    Changed,
    /// It was deleted (or pruned).
    Deleted,
    /// It exists in the oldest kept generation; what came before was pruned.
    Present,
}

impl Revision {
    pub fn as_str(self) -> &'static str {
        match self {
            Revision::Created => "created",
            Revision::Changed => "changed",
            Revision::Deleted => "deleted",
            Revision::Present => "present",
        }
    }
}

/// One field that differs between two generations (`old`/`new` absent: the field was not set).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// e.g. `spec.container.image`, `metadata.labels.team`, `spec.container.ports[0].hostPort`.
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
}

/// A generation that changed the object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectRevision {
    pub generation: u64,
    pub time: String,
    /// How the generation came about (the PATHs applied, `rollback to generation N`, ...).
    pub source: String,
    pub revision: Revision,
    pub changes: Vec<FieldChange>,
}

/// The part of an object a generation records, as one document: `{metadata: {labels,
/// annotations}, spec}`.
pub fn desired_view(o: &SnapshotObject) -> Value {
    let mut meta = Map::new();
    if !o.labels.is_empty() {
        meta.insert("labels".into(), json!(o.labels));
    }
    if !o.annotations.is_empty() {
        meta.insert("annotations".into(), json!(o.annotations));
    }
    json!({"metadata": meta, "spec": o.spec})
}

/// Every generation that created, changed or deleted `kind/name`, oldest first.
pub fn object_history(
    store: &Store,
    kind: Kind,
    name: &str,
) -> Result<Vec<ObjectRevision>, StoreError> {
    let mut out = Vec::new();
    let mut before: Option<Value> = None;
    for (i, g) in store.history()?.into_iter().enumerate() {
        let now = store
            .generation_state(g.number)?
            .into_iter()
            .find(|o| o.kind == kind && o.name == name)
            .map(|o| desired_view(&o));
        let revision = match (&before, &now) {
            (None, Some(_)) if i == 0 && g.number > 1 => Some(Revision::Present),
            (None, Some(_)) => Some(Revision::Created),
            (Some(_), None) => Some(Revision::Deleted),
            (Some(a), Some(b)) if a != b => Some(Revision::Changed),
            _ => None,
        };
        if let Some(revision) = revision {
            let changes = match (revision, &before, &now) {
                (Revision::Changed, Some(a), Some(b)) => {
                    let mut c = Vec::new();
                    diff_values("", a, b, &mut c);
                    c
                }
                _ => Vec::new(),
            };
            out.push(ObjectRevision {
                generation: g.number,
                time: g.time,
                source: g.source,
                revision,
                changes,
            });
        }
        before = now;
    }
    Ok(out)
}

/// The fields that differ between `a` and `b`, depth first: maps by key, arrays of the same
/// length by index, anything else as a whole.
pub fn diff_values(path: &str, a: &Value, b: &Value, out: &mut Vec<FieldChange>) {
    if a == b {
        return;
    }
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => diff_values(&join(k), va, vb, out),
                    (va, vb) => out.push(FieldChange {
                        path: join(k),
                        old: va.cloned(),
                        new: vb.cloned(),
                    }),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                diff_values(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        _ => out.push(FieldChange {
            path: path.to_string(),
            old: Some(a.clone()),
            new: Some(b.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_field_paths_with_old_and_new_values() {
        let a = json!({"metadata": {}, "spec": {"container": {"image": "a:1", "ports": [{"hostPort": 1}]}, "x": 1}});
        let b = json!({"metadata": {"labels": {"t": "d"}}, "spec": {"container": {"image": "a:2", "ports": [{"hostPort": 2}]}}});
        let mut c = Vec::new();
        diff_values("", &a, &b, &mut c);
        let paths: Vec<&str> = c.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "metadata.labels",
                "spec.container.image",
                "spec.container.ports[0].hostPort",
                "spec.x"
            ]
        );
        assert_eq!(c[1].old, Some(json!("a:1")));
        assert_eq!(c[1].new, Some(json!("a:2")));
        assert_eq!((c[3].old.clone(), c[3].new.clone()), (Some(json!(1)), None));
    }
}
