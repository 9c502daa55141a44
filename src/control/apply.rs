//! Applying PATHs (files, directories, stdin): read, validate every document, record in one
//! transaction. Shared by `lasctl apply`, `lasctl diff` and the daemon's watched directories.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::api::decode::{InputErrors, InputFile, decode_files, read_paths};
use crate::api::{Desired, Kind};

use super::store::{Action, ApplyItem, ApplyRequest, Outcome, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Input(#[from] InputErrors),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How to apply.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    pub recursive: bool,
    pub prune: bool,
    pub allow_empty: bool,
    pub dry_run: bool,
}

/// The key under which an apply of PATH records its objects, for prune: the canonical path, or
/// `<stdin>`.
pub fn source_key(p: &Path) -> String {
    if p.as_os_str() == "-" {
        return "<stdin>".into();
    }
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// Reads and validates every PATH; returns each object with the source key of its PATH.
///
/// # Guarantees
/// Either every document of every PATH is valid and returned, or the errors of all are returned.
pub fn load(paths: &[PathBuf], recursive: bool) -> Result<Vec<(Desired, String)>, InputErrors> {
    let mut all: Vec<InputFile> = Vec::new();
    let mut file_source: BTreeMap<String, String> = BTreeMap::new();
    for p in paths {
        let key = source_key(p);
        for f in read_paths(std::slice::from_ref(p), recursive)? {
            file_source.insert(f.name.clone(), key.clone());
            all.push(f);
        }
    }
    let objects = decode_files(&all)?;
    Ok(objects
        .into_iter()
        .map(|d| {
            let src = file_source.get(&d.origin.file).cloned().unwrap_or_default();
            (d, src)
        })
        .collect())
}

/// Builds the store request for PATHs already loaded.
pub fn request(
    paths: &[PathBuf],
    objects: Vec<(Desired, String)>,
    opts: &ApplyOptions,
) -> ApplyRequest {
    let keys: Vec<String> = paths.iter().map(|p| source_key(p)).collect();
    ApplyRequest {
        items: objects
            .into_iter()
            .map(|(desired, source)| ApplyItem {
                desired,
                source,
                expected_resource_version: None,
            })
            .collect(),
        prune_sources: if opts.prune { keys.clone() } else { Vec::new() },
        allow_empty: opts.allow_empty,
        dry_run: opts.dry_run,
        description: format!("apply {}", keys.join(", ")),
    }
}

/// Reads, validates and records PATHs in one transaction. A `dependsOn` cycle among the
/// Modules (stored and applied together) refuses the whole apply, dry runs included.
pub fn apply_paths(
    store: &mut Store,
    paths: &[PathBuf],
    opts: &ApplyOptions,
) -> Result<Outcome, ApplyError> {
    let objects = load(paths, opts.recursive)?;
    let req = request(paths, objects, opts);
    refuse_cycles(store, &req)?;
    admit_plugins(
        store,
        &crate::control::plugins::PluginHost::for_cli(store),
        &req,
    )?;
    Ok(store.apply(&req)?)
}

/// The plugins' say on `req`: activations within their manifests' requests, and every active
/// admission check (see [`crate::control::plugins::admit`]).
pub fn admit_plugins(
    store: &Store,
    host: &crate::control::plugins::PluginHost,
    req: &ApplyRequest,
) -> Result<(), ApplyError> {
    let desired: Vec<&Desired> = req.items.iter().map(|i| &i.desired).collect();
    Ok(crate::control::plugins::admit(store, host, &desired)?)
}

/// Refuses `req` when its Modules would be on a `dependsOn` cycle with what is stored (minus
/// what it prunes): one input error per applied member, naming the whole cycle.
pub fn refuse_cycles(store: &mut Store, req: &ApplyRequest) -> Result<(), ApplyError> {
    let desired: Vec<&Desired> = req.items.iter().map(|i| &i.desired).collect();
    if !desired.iter().any(|d| d.kind() == Kind::Module) {
        return Ok(());
    }
    let stored = store.list(None, &Default::default())?;
    let removed: Vec<String> = if req.prune_sources.is_empty() {
        Vec::new()
    } else {
        let dry = store.apply(&ApplyRequest {
            dry_run: true,
            ..req.clone()
        })?;
        dry.changes
            .iter()
            .filter(|c| c.kind == Kind::Module && c.action == Action::Pruned)
            .map(|c| c.name.clone())
            .collect()
    };
    let errors = super::cycles::check(&stored, &desired, &removed);
    if errors.0.is_empty() {
        Ok(())
    } else {
        Err(ApplyError::Input(errors))
    }
}
