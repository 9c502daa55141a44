//! Garbage collection of model blobs by reachability over recent generations.
//!
//! A blob stays while any Model in the last N recorded generations (or any Model object still in
//! the store, such as one waiting for its finalizers) reaches it, so `lasctl rollback` within that
//! window finds its bytes without fetching them again.

use std::collections::{BTreeMap, HashSet};

use crate::api::Kind;
use crate::api::model::{ModelSource, ModelSpec, Sha256};
use crate::artifacts::models::{GcReport, ModelError, ModelStore};
use crate::control::store::{Store, StoreError};

/// Generations whose Models keep their blobs, unless configured otherwise.
pub const DEFAULT_GC_GENERATIONS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ModelGcError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Models(#[from] ModelError),
    /// A recorded spec that no longer decodes: collecting now could remove a blob it needs, so
    /// nothing is collected.
    #[error(
        "Model/{name} in {place} has a spec this lasctl cannot read ({message}); no blob was collected"
    )]
    BadSpec {
        name: String,
        place: String,
        message: String,
    },
}

/// The sources and digests of every Model in the newest `generations` generations and in the
/// store now, without duplicates.
pub fn referenced_models(
    store: &Store,
    generations: usize,
) -> Result<Vec<(ModelSource, Option<Sha256>)>, ModelGcError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut add = |name: &str, place: String, spec: &serde_json::Value| {
        let spec: ModelSpec =
            serde_json::from_value(spec.clone()).map_err(|e| ModelGcError::BadSpec {
                name: name.to_string(),
                place,
                message: e.to_string(),
            })?;
        let r = (spec.source, spec.sha256);
        if seen.insert(r.clone()) {
            out.push(r);
        }
        Ok::<_, ModelGcError>(())
    };
    for (i, state) in store
        .recent_generation_states(generations.max(1))?
        .iter()
        .enumerate()
    {
        for o in state.iter().filter(|o| o.kind == Kind::Model) {
            add(
                &o.name,
                format!("the {}th newest generation", i + 1),
                &o.spec,
            )?;
        }
    }
    let now = store.list(Some(Kind::Model), &BTreeMap::new())?;
    for o in &now {
        add(o.name.as_str(), "the store".to_string(), &o.spec)?;
    }
    // A plugin scheme's pinned resolution: the blob is stored under its URL.
    for o in &now {
        let r = &o.status["resolvedSource"];
        if let (Some(url), Some(sha)) = (r["url"].as_str(), r["sha256"].as_str())
            && let Ok(sha) = Sha256::new(sha)
        {
            out.push((ModelSource::Http(url.to_string()), Some(sha)));
        }
    }
    Ok(out)
}

/// The manifests and artifacts of every Plugin in the newest `generations` generations and in the
/// store now, and of the digest each activation is bound to (an upgrade awaiting approval keeps
/// serving the old one), so that the plugins' blobs are kept like the Models'.
pub fn referenced_by_plugins(
    store: &Store,
    models: &ModelStore,
    generations: usize,
) -> Result<Vec<(ModelSource, Option<Sha256>)>, ModelGcError> {
    let mut digests: Vec<(ModelSource, Sha256)> = Vec::new();
    let mut plugin = |spec: &serde_json::Value| {
        if let Ok(p) = serde_json::from_value::<crate::api::PluginSpec>(spec.clone()) {
            digests.push((p.source, p.sha256));
        }
    };
    for state in store.recent_generation_states(generations.max(1))? {
        for o in state.iter().filter(|o| o.kind == Kind::Plugin) {
            plugin(&o.spec);
        }
    }
    let now = store.list(None, &BTreeMap::new())?;
    for o in now.iter().filter(|o| o.kind == Kind::Plugin) {
        plugin(&o.spec);
    }
    for o in now.iter().filter(|o| o.kind == Kind::PluginActivation) {
        if let Some(d) = o.status.get("boundDigest").and_then(|d| d.as_str())
            && let Ok(d) = Sha256::new(d)
        {
            digests.push((ModelSource::File(models.blob_path(&d)), d));
        }
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (src, d) in digests {
        if !seen.insert(d.clone()) {
            continue;
        }
        // The artifacts a verified manifest pins (a manifest not fetched yet pins nothing here).
        if let Ok(bytes) = std::fs::read(models.blob_path(&d))
            && let Ok(m) = crate::control::plugins::parse_manifest("manifest", &bytes, d.clone())
        {
            for a in &m.spec.runtime.artifacts {
                out.push((src.sibling(&a.path), Some(a.sha256.clone())));
            }
        }
        out.push((src, Some(d)));
    }
    Ok(out)
}

/// Removes the blobs that no Model of the newest `generations` generations reaches.
///
/// Blocking (SQLite reads, then file removals): call it from the task that owns the store or from
/// `spawn_blocking`.
pub fn collect_model_garbage(
    store: &Store,
    models: &ModelStore,
    generations: usize,
) -> Result<GcReport, ModelGcError> {
    let mut refs = referenced_models(store, generations)?;
    refs.extend(referenced_by_plugins(store, models, generations)?);
    let report = models.gc_blocking(&refs)?;
    tracing::info!(
        generations,
        referenced = refs.len(),
        removed = report.removed.len(),
        freed_bytes = report.freed_bytes,
        "model garbage collected"
    );
    Ok(report)
}
