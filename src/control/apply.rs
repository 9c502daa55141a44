//! Applying PATHs (files, directories, stdin): read, validate every document, record in one
//! transaction. Shared by `lasctl apply`, `lasctl diff` and the daemon's watched directories.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::api::decode::{
    InputError, InputErrors, InputFile, Skipped, decode_files_skipping, fixed_host_ports,
    read_paths,
};
use crate::api::{Desired, Kind, Spec};

use super::store::{Action, ApplyItem, ApplyRequest, ObjectChange, Outcome, Store, StoreError};

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
    /// The prune scope of stdin (`--prune-scope NAME`): its objects are recorded under
    /// `<stdin:NAME>`, so unrelated stdin applies never prune each other's.
    pub stdin_scope: Option<String>,
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

/// What [`load`] read: each object with the source key of its PATH, and the files of
/// directories that were left out as someone else's (see [`decode_files_skipping`]).
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: Vec<(Desired, String)>,
    pub skipped: Vec<Skipped>,
}

impl Loaded {
    pub fn desired(&self) -> Vec<Desired> {
        self.objects.iter().map(|(d, _)| d.clone()).collect()
    }
}

/// Reads and validates every PATH; returns each object with the source key of its PATH.
///
/// # Guarantees
/// Either every document of every PATH is valid and returned, or the errors of all are returned.
/// A file found in a directory whose documents are all someone else's (a compose file, a
/// Kubernetes manifest, a `package.json`) is skipped and named in [`Loaded::skipped`]; a file
/// named on the command line is always decoded.
pub fn load(paths: &[PathBuf], recursive: bool) -> Result<Loaded, InputErrors> {
    let mut all: Vec<InputFile> = Vec::new();
    let mut file_source: BTreeMap<String, String> = BTreeMap::new();
    let mut in_dir: std::collections::BTreeSet<String> = Default::default();
    for p in paths {
        let key = source_key(p);
        let dir = p.as_os_str() != "-" && p.is_dir();
        for f in read_paths(std::slice::from_ref(p), recursive)? {
            file_source.insert(f.name.clone(), key.clone());
            if dir {
                in_dir.insert(f.name.clone());
            }
            all.push(f);
        }
    }
    let (objects, skipped) = decode_files_skipping(&all, |name| in_dir.contains(name))?;
    Ok(Loaded {
        objects: objects
            .into_iter()
            .map(|d| {
                let src = file_source.get(&d.origin.file).cloned().unwrap_or_default();
                (d, src)
            })
            .collect(),
        skipped,
    })
}

/// Why an apply of PATHs is refused before anything is read: `--prune` needs a scope, and the
/// scope must be read the way the daemon reads a watched directory.
pub fn check_prune_scope(paths: &[PathBuf], opts: &ApplyOptions) -> Result<(), InputErrors> {
    if !opts.prune {
        return Ok(());
    }
    let whole = |file: String, message: String| {
        InputErrors(vec![InputError {
            file,
            line: 1,
            column: 1,
            path: String::new(),
            message,
        }])
    };
    for p in paths {
        if p.as_os_str() == "-" && opts.stdin_scope.is_none() {
            return Err(whole(
                "<stdin>".into(),
                "--prune with stdin has no scope: every apply from stdin would share one and \
                 prune the others' objects; name one with --prune-scope NAME (the same NAME \
                 each time)"
                    .into(),
            ));
        }
        if p.is_dir() && !opts.recursive && has_manifests_below(p) {
            return Err(whole(
                p.display().to_string(),
                "--prune of a directory with subdirectories of manifests needs -R: the daemon                  reads a watched directory recursively, and pruning without -R would delete what                  the subdirectories define"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// Whether a subdirectory of `dir` (at any depth, hidden ones excepted) holds a manifest file.
fn has_manifests_below(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let hidden = e.file_name().to_string_lossy().starts_with('.');
        let sub = e.path();
        !hidden
            && e.file_type().is_ok_and(|t| t.is_dir())
            && read_paths(std::slice::from_ref(&sub), true).is_ok_and(|f| !f.is_empty())
    })
}

/// Builds the store request for PATHs already loaded.
pub fn request(
    paths: &[PathBuf],
    objects: Vec<(Desired, String)>,
    opts: &ApplyOptions,
) -> ApplyRequest {
    let stdin_key = |k: String| match &opts.stdin_scope {
        Some(scope) if k == "<stdin>" => format!("<stdin:{scope}>"),
        _ => k,
    };
    let keys: Vec<String> = paths.iter().map(|p| stdin_key(source_key(p))).collect();
    ApplyRequest {
        items: objects
            .into_iter()
            .map(|(desired, source)| ApplyItem {
                expected_resource_version: desired.resource_version,
                desired,
                source: stdin_key(source),
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
    check_prune_scope(paths, opts)?;
    let loaded = load(paths, opts.recursive)?;
    apply_loaded(store, paths, loaded.objects, opts)
}

/// Records objects already [`load`]ed from `paths`, after the checks that need the store:
/// `dependsOn` cycles and fixed host ports another stored Module binds.
pub fn apply_loaded(
    store: &mut Store,
    paths: &[PathBuf],
    objects: Vec<(Desired, String)>,
    opts: &ApplyOptions,
) -> Result<Outcome, ApplyError> {
    let req = request(paths, objects, opts);
    refuse_cycles(store, &req)?;
    refuse_port_conflicts(store, &req)?;
    Ok(store.apply(&req)?)
}

/// Refuses Modules of `req` that bind a fixed host port a stored Module (not in `req`, not
/// being deleted) binds: one would never start.
pub fn refuse_port_conflicts(store: &mut Store, req: &ApplyRequest) -> Result<(), ApplyError> {
    let applied: std::collections::BTreeSet<&str> = req
        .items
        .iter()
        .filter(|i| i.desired.kind() == Kind::Module)
        .map(|i| i.desired.name.as_str())
        .collect();
    if applied.is_empty() {
        return Ok(());
    }
    let pruned = pruned_modules(store, req)?;
    let mut bound: BTreeMap<(u16, &'static str), String> = BTreeMap::new();
    let stored = store.list(Some(Kind::Module), &Default::default())?;
    for o in &stored {
        if o.deleted_at.is_some()
            || applied.contains(o.name.as_str())
            || pruned.iter().any(|p| p == o.name.as_str())
        {
            continue;
        }
        if let Ok(Spec::Module(m)) = o.typed_spec() {
            for (key, _) in fixed_host_ports(&m) {
                bound.insert(key, o.name.to_string());
            }
        }
    }
    let mut errors = Vec::new();
    for i in &req.items {
        let Spec::Module(m) = &i.desired.spec else {
            continue;
        };
        for ((port, proto), field) in fixed_host_ports(m) {
            if let Some(other) = bound.get(&(port, proto)) {
                errors.push(InputError {
                    file: i.desired.origin.file.clone(),
                    line: i.desired.origin.line,
                    column: 1,
                    path: field,
                    message: format!(
                        "host port {port}/{proto} is already bound by module/{other}: each fixed host port can be bound once (change one of them, or delete module/{other})"
                    ),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApplyError::Input(InputErrors(errors)))
    }
}

/// Refuses `req` when its Modules would be on a `dependsOn` cycle with what is stored (minus
/// what it prunes): one input error per applied member, naming the whole cycle.
pub fn refuse_cycles(store: &mut Store, req: &ApplyRequest) -> Result<(), ApplyError> {
    let desired: Vec<&Desired> = req.items.iter().map(|i| &i.desired).collect();
    if !desired.iter().any(|d| d.kind() == Kind::Module) {
        return Ok(());
    }
    let stored = store.list(None, &Default::default())?;
    let removed = pruned_modules(store, req)?;
    let errors = super::cycles::check(&stored, &desired, &removed);
    if errors.0.is_empty() {
        Ok(())
    } else {
        Err(ApplyError::Input(errors))
    }
}

/// The Modules `req` would prune.
fn pruned_modules(store: &mut Store, req: &ApplyRequest) -> Result<Vec<String>, ApplyError> {
    if req.prune_sources.is_empty() {
        return Ok(Vec::new());
    }
    let dry = store.apply(&ApplyRequest {
        dry_run: true,
        ..req.clone()
    })?;
    Ok(dry
        .changes
        .iter()
        .filter(|c| c.kind == Kind::Module && c.action == Action::Pruned)
        .map(|c| c.name.clone())
        .collect())
}

/// What applying `objects` would do to a home that has no state yet, computed without creating
/// one (`apply --dry-run` in a fresh home writes nothing): everything is created.
pub fn preview_into_empty(
    paths: &[PathBuf],
    objects: Vec<(Desired, String)>,
    opts: &ApplyOptions,
) -> Result<Outcome, ApplyError> {
    let req = request(paths, objects, opts);
    let desired: Vec<&Desired> = req.items.iter().map(|i| &i.desired).collect();
    let errors = super::cycles::check(&[], &desired, &[]);
    if !errors.0.is_empty() {
        return Err(ApplyError::Input(errors));
    }
    let mut changes = Vec::new();
    for i in &req.items {
        if let Some(rv) = i.expected_resource_version
            && rv != 0
        {
            return Err(StoreError::Conflict {
                kind: i.desired.kind(),
                name: i.desired.name.to_string(),
                expected: rv,
                actual: 0,
            }
            .into());
        }
        changes.push(ObjectChange {
            kind: i.desired.kind(),
            name: i.desired.name.to_string(),
            action: Action::Created,
        });
    }
    Ok(Outcome {
        generation: None,
        changes,
    })
}
