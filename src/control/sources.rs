//! Watched directories (GitOps sources) and the store-change trigger.
//!
//! # Guarantees
//! - A change under a watched directory is applied, with prune scoped to that directory, only once
//!   the directory is *stable*: two reads [`SourcesConfig::settle`] apart (300 ms) that agree (same
//!   files, same bytes). An apply that would prune objects waits until the directory has been stable
//!   for [`SourcesConfig::prune_settle`] (3 s), so a non-atomic write (truncate, then write) or a
//!   `git checkout` moving an object between files never deletes or restarts anything.
//! - A periodic rescan covers missed file events (an unchanged apply writes nothing). The parent of
//!   each directory is watched too: a directory deleted and re-created is watched again.
//! - Only regular files are read, opened non-blocking, with a time limit and never while holding the
//!   store: a FIFO or a stuck file is an error on that source, the rest of the daemon goes on.
//! - An invalid file is a Warning event and an error on the source's record (`lasctl get sources`);
//!   the last good desired state stays: a typo never tears a stack down.
//! - An object another watched directory already owns is a conflict error on the second source (the
//!   first keeps it), never a tug of war.
//! - A suspended source (`suspended-source/<path>`, written by `lasctl rollback --suspend-source`) is
//!   not applied, checked inside the write transaction; `lasctl resume source PATH` deletes the record
//!   and the daemon applies the directory at once.
//! - Emptying a directory does not prune everything (that needs `apply --prune --allow-empty`).
//! - Writes to `state.db` by any process (the CLI, the API) wake the controllers within
//!   milliseconds through inotify on the WAL file: no polling.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::apply::{ApplyOptions, request, source_key};
use super::controllers::{SharedStore, Trigger};
use super::store::{Action, EventType, Store, StoreError};
use crate::api::Desired;
use crate::api::decode::{InputFile, decode_files_skipping, read_paths};
/// The record of one watched directory, stored under `source/<path>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    pub path: String,
    /// When the directory last applied cleanly.
    pub last_applied: Option<String>,
    /// The generation its last change recorded.
    pub generation: Option<u64>,
    pub objects: usize,
    /// The current error, if the directory does not apply.
    pub error: Option<String>,
    pub last_checked: String,
}

pub const SOURCE_PREFIX: &str = "source/";
/// Records of suspended sources: `suspended-source/<path>` → [`Suspension`].
pub const SUSPENDED_PREFIX: &str = "suspended-source/";

/// Why and since when a watched directory is not applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Suspension {
    pub path: String,
    pub since: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

/// Timing of watched directories.
#[derive(Debug, Clone)]
pub struct SourcesConfig {
    /// Quiet time after a file event before the directory is read.
    pub debounce: Duration,
    /// Two reads this far apart must agree before a change is applied.
    pub settle: Duration,
    /// How long the directory must have been stable before an apply that prunes.
    pub prune_settle: Duration,
    /// Full re-read of every directory.
    pub rescan: Duration,
    /// A read of a directory taking longer is an error on that source.
    pub read_timeout: Duration,
}

impl Default for SourcesConfig {
    fn default() -> Self {
        SourcesConfig {
            debounce: Duration::from_millis(25),
            settle: Duration::from_millis(300),
            prune_settle: Duration::from_secs(3),
            rescan: Duration::from_secs(30),
            read_timeout: Duration::from_secs(10),
        }
    }
}

pub fn suspension_key(source: &str) -> String {
    format!("{SUSPENDED_PREFIX}{source}")
}

/// Records that `source` (a source key, see [`source_key`]) must not be applied. Returns false when
/// it already was suspended (the earlier record stays).
pub fn suspend(store: &mut Store, source: &str, reason: &str) -> Result<bool, StoreError> {
    let key = suspension_key(source);
    if store.get_record(&key)?.is_some() {
        return Ok(false);
    }
    let s = Suspension {
        path: source.to_string(),
        since: crate::api::meta::now_rfc3339(),
        reason: reason.to_string(),
    };
    store.put_record(&key, &serde_json::to_value(&s).expect("json"))?;
    let _ = store.record_event(
        "Source",
        source,
        EventType::Normal,
        "Suspended",
        &format!("not applied until `lasctl resume source {source}`: {reason}"),
    );
    Ok(true)
}

/// Lifts a suspension; returns false when `source` was not suspended.
pub fn resume(store: &mut Store, source: &str) -> Result<bool, StoreError> {
    let key = suspension_key(source);
    if store.get_record(&key)?.is_none() {
        return Ok(false);
    }
    store.delete_record(&key)?;
    let _ = store.record_event(
        "Source",
        source,
        EventType::Normal,
        "Resumed",
        "the daemon applies the directory again",
    );
    Ok(true)
}

/// Whether a rollback suspended the watched directory `src` (until `resume source`).
pub fn is_suspended(store: &Store, src: &str) -> bool {
    store
        .get_record(&suspension_key(src))
        .ok()
        .flatten()
        .is_some()
}

/// The watched sources (those with a `source/` record) that own objects a rollback to `target`
/// would change, with those objects (`Kind/name`).
pub fn rollback_owners(
    store: &Store,
    target: u64,
) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
    let watched: BTreeSet<String> = store
        .records_with_prefix(SOURCE_PREFIX)?
        .into_iter()
        .map(|(k, _)| k[SOURCE_PREFIX.len()..].to_string())
        .collect();
    let owners = store.owners()?;
    let wanted = store.generation_state(target)?;
    let current: BTreeMap<(crate::api::Kind, String), _> = store
        .list(None, &Default::default())?
        .into_iter()
        .filter(|o| o.deleted_at.is_none())
        .map(|o| ((o.kind, o.name.to_string()), o))
        .collect();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut note = |source: Option<&String>, kind: crate::api::Kind, name: &str| {
        if let Some(src) = source.filter(|s| watched.contains(*s)) {
            let v = out.entry(src.clone()).or_default();
            let id = format!("{kind}/{name}");
            if !v.contains(&id) {
                v.push(id);
            }
        }
    };
    let mut seen = BTreeSet::new();
    for o in &wanted {
        let key = (o.kind, o.name.clone());
        let changes = match current.get(&key) {
            None => true,
            Some(c) => c.spec != o.spec || c.labels != o.labels || c.annotations != o.annotations,
        };
        if changes {
            note(owners.get(&key), o.kind, &o.name);
            note(Some(&o.source), o.kind, &o.name);
        }
        seen.insert(key);
    }
    for key in current.keys().filter(|k| !seen.contains(*k)) {
        note(owners.get(key), key.0, &key.1);
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error(
        "rollback to generation {target} changes objects that {} {}: {}; the daemon \
         would apply {} again and undo the rollback. Pass --suspend-source to suspend {} (resume with \
         `lasctl resume source PATH`), or revert the files instead",
        if owned.len() == 1 { "a watched directory" } else { "watched directories" },
        if owned.len() == 1 { "owns" } else { "own" },
        owned.iter().map(|(s, o)| format!("{s} ({})", o.join(", "))).collect::<Vec<_>>().join("; "),
        if owned.len() == 1 { "it" } else { "them" },
        if owned.len() == 1 { "it" } else { "them" }
    )]
    OwnedByWatchedSource {
        target: u64,
        owned: BTreeMap<String, Vec<String>>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `lasctl rollback [GENERATION] [--suspend-source]`: refuses to roll back objects that a watched
/// (not suspended) directory owns, unless `suspend_source`, which first suspends those sources
/// durably (the daemon checks that record inside its write transaction, so it can never undo the
/// rollback in between). Returns the outcome and the sources it suspended.
pub fn rollback_guarded(
    store: &mut Store,
    target: Option<u64>,
    suspend_source: bool,
) -> Result<(super::store::Outcome, Vec<String>), RollbackError> {
    let target = store.rollback_target(target)?;
    let mut owned = rollback_owners(store, target)?;
    owned.retain(|src, _| {
        store
            .get_record(&suspension_key(src))
            .ok()
            .flatten()
            .is_none()
    });
    if !owned.is_empty() && !suspend_source {
        return Err(RollbackError::OwnedByWatchedSource { target, owned });
    }
    let mut suspended = Vec::new();
    for src in owned.keys() {
        if suspend(store, src, &format!("rollback to generation {target}"))? {
            suspended.push(src.clone());
        }
    }
    match store.rollback(Some(target)) {
        Ok(o) => Ok((o, suspended)),
        Err(e) => {
            for src in &suspended {
                let _ = store.delete_record(&suspension_key(src));
            }
            Err(e.into())
        }
    }
}

/// Reads a directory's files (only regular files, see [`read_paths`]); the error as text.
type Snapshot = Result<Vec<InputFile>, String>;

fn snapshot_hash(s: &Snapshot) -> u64 {
    // SipHash with fixed keys: the same bytes give the same hash for the life of the process.
    let mut h = std::hash::DefaultHasher::new();
    match s {
        Ok(files) => {
            for f in files {
                f.name.hash(&mut h);
                f.bytes.hash(&mut h);
            }
        }
        Err(e) => e.hash(&mut h),
    }
    h.finish()
}

/// What one attempt at a source came to.
enum Attempt {
    /// Applied (or failed, recorded on the source); true when desired state changed.
    Done(bool),
    /// Try again at this moment (not settled yet).
    Later(Instant),
    /// The source is suspended: nothing read, nothing applied.
    Suspended,
}

/// A watched directory and what the loop knows about it.
struct Dir {
    path: PathBuf,
    key: String,
    /// Device and inode of the directory the watch is armed on.
    armed: Option<(u64, u64)>,
    /// The last snapshot's hash, and since when it has been the same.
    stable: Option<(u64, Instant)>,
    /// A read that overran its time limit and may still be blocked.
    stuck: Option<tokio::task::JoinHandle<Snapshot>>,
    suspended: bool,
    /// Set by the watcher when the directory itself was created or removed.
    moved: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn identity(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Records the outcome of applying (or failing to apply) a source. Returns true when desired state
/// changed.
fn record_outcome(
    s: &mut Store,
    key: &str,
    result: Result<super::store::Outcome, (&str, String)>,
) -> bool {
    let record_key = format!("{SOURCE_PREFIX}{key}");
    let previous: Option<SourceStatus> = s
        .get_record(&record_key)
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_value(v).ok());
    let now = crate::api::meta::now_rfc3339();
    let (status, changed) = match result {
        Ok(outcome) => {
            let changed = outcome.changed_anything();
            let st = SourceStatus {
                path: key.to_string(),
                last_applied: Some(now.clone()),
                generation: outcome
                    .generation
                    .or(previous.as_ref().and_then(|p| p.generation)),
                objects: outcome
                    .changes
                    .iter()
                    .filter(|c| c.action != Action::Pruned)
                    .count(),
                error: None,
                last_checked: now,
            };
            if previous.as_ref().is_some_and(|p| p.error.is_some()) {
                let _ = s.record_event(
                    "Source",
                    key,
                    EventType::Normal,
                    "Applied",
                    "the directory applies cleanly again",
                );
            }
            (st, changed)
        }
        Err((reason, msg)) => {
            if previous.as_ref().and_then(|p| p.error.as_ref()) != Some(&msg) {
                let _ = s.record_event(
                    "Source",
                    key,
                    EventType::Warning,
                    reason,
                    &format!("not applied; the last good desired state stays: {msg}"),
                );
            }
            let st = SourceStatus {
                path: key.to_string(),
                last_applied: previous.as_ref().and_then(|p| p.last_applied.clone()),
                generation: previous.as_ref().and_then(|p| p.generation),
                objects: previous.as_ref().map_or(0, |p| p.objects),
                error: Some(msg),
                last_checked: now,
            };
            (st, false)
        }
    };
    let unchanged_record = previous.as_ref().is_some_and(|p| {
        p.error == status.error && p.generation == status.generation && p.objects == status.objects
    });
    if !unchanged_record || changed {
        let _ = s.put_record(&record_key, &serde_json::to_value(&status).expect("json"));
    }
    changed
}

/// Decides and records one stable snapshot of a source, under the store.
struct Commit {
    key: String,
    dir: PathBuf,
    objects: Result<Vec<Desired>, String>,
    /// The other watched directories: an object one of them owns is a conflict here.
    others: BTreeSet<String>,
    /// Whether an apply that prunes must wait, and until when.
    prune_wait: Option<Instant>,
}

impl Commit {
    fn run(self, s: &mut Store) -> Attempt {
        let key = self.key.clone();
        let objects = match self.objects {
            Ok(o) => o,
            Err(msg) => return Attempt::Done(record_outcome(s, &key, Err(("InvalidSource", msg)))),
        };
        let owners = match s.owners() {
            Ok(o) => o,
            Err(e) => {
                return Attempt::Done(record_outcome(s, &key, Err(("StoreError", e.to_string()))));
            }
        };
        let conflicts: Vec<String> = objects
            .iter()
            .filter_map(|d| {
                let owner = owners.get(&(d.kind(), d.name.to_string()))?;
                (owner != &key && self.others.contains(owner)).then(|| {
                    format!(
                        "{}/{} ({}:{}) is owned by watched directory {owner}",
                        d.kind(),
                        d.name,
                        d.origin.file,
                        d.origin.line
                    )
                })
            })
            .collect();
        if !conflicts.is_empty() {
            let msg = format!(
                "conflict: {}; an object belongs to one watched directory: remove it from one of them",
                conflicts.join("; ")
            );
            return Attempt::Done(record_outcome(s, &key, Err(("SourceConflict", msg))));
        }
        let opts = ApplyOptions {
            recursive: true,
            prune: true,
            allow_empty: false,
            dry_run: false,
            stdin_scope: None,
        };
        let paths = [self.dir.clone()];
        let mut req = request(
            &paths,
            objects.into_iter().map(|d| (d, key.clone())).collect(),
            &opts,
        );
        let guard = suspension_key(&key);
        if let Some(until) = self.prune_wait {
            req.dry_run = true;
            let prunes = s
                .apply_unless_record(&req, Some(guard.as_str()))
                .is_ok_and(|o| o.changes.iter().any(|c| c.action == Action::Pruned));
            if prunes {
                tracing::info!(dir = %key, "an apply would prune: waiting for the directory to settle");
                return Attempt::Later(until);
            }
            req.dry_run = false;
        }
        match s.apply_unless_record(&req, Some(guard.as_str())) {
            Ok(outcome) => Attempt::Done(record_outcome(s, &key, Ok(outcome))),
            Err(StoreError::Suspended { .. }) => Attempt::Suspended,
            Err(e) => {
                let reason = match &e {
                    StoreError::PruneEmpty { .. } => "InvalidSource",
                    _ => "ApplyFailed",
                };
                Attempt::Done(record_outcome(s, &key, Err((reason, e.to_string()))))
            }
        }
    }
}

fn read_dir_snapshot(dir: &Path) -> Snapshot {
    read_paths(&[dir.to_path_buf()], true).map_err(|e| e.to_string())
}

/// Watches `dirs` until `triggers` closes: applies each on change (once settled) and on every
/// rescan, and tells the controllers when desired state changed. `changes` (the store's change
/// counter) lets a resumed source apply at once.
pub async fn watch_sources(
    store: SharedStore,
    dirs: Vec<PathBuf>,
    config: SourcesConfig,
    triggers: mpsc::Sender<Trigger>,
    mut changes: Option<watch::Receiver<u64>>,
) -> Result<(), WatchError> {
    let (tx, mut rx) = mpsc::channel::<usize>(64);
    let mut state: Vec<Dir> = dirs
        .iter()
        .map(|d| {
            let path = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
            Dir {
                key: source_key(&path),
                path,
                armed: None,
                stable: None,
                stuck: None,
                suspended: false,
                moved: Default::default(),
            }
        })
        .collect();
    let keys: BTreeSet<String> = state.iter().map(|d| d.key.clone()).collect();
    // One watcher per directory: its files (recursive) and its parent (not recursive, filtered to
    // the directory itself), so a directory removed and created again is noticed and re-armed.
    let mut watchers = Vec::new();
    for (i, d) in state.iter_mut().enumerate() {
        let (tx, path) = (tx.clone(), d.path.clone());
        let watch_err = |source| WatchError::Watch {
            path: d.path.clone(),
            source,
        };
        let moved = d.moved.clone();
        let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && !matches!(ev.kind, notify::EventKind::Access(_))
                && ev.paths.iter().any(|p| p.starts_with(&path))
            {
                // The directory itself created or removed: its watch must be armed again (its
                // inode number may well be the same, so only this event tells).
                if matches!(
                    ev.kind,
                    notify::EventKind::Create(_) | notify::EventKind::Remove(_)
                ) && ev.paths.iter().any(|p| p == &path)
                {
                    moved.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                let _ = tx.try_send(i);
            }
        })
        .map_err(watch_err)?;
        if let Some(parent) = d.path.parent() {
            // Best effort: without it only the rescan notices a re-created directory.
            if let Err(e) = w.watch(parent, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %d.path.display(), error = %e, "cannot watch the parent directory");
            }
        }
        w.watch(&d.path, RecursiveMode::Recursive)
            .map_err(watch_err)?;
        d.armed = identity(&d.path);
        watchers.push(w);
    }
    drop(tx);
    let mut pending: Vec<Option<Instant>> = vec![Some(Instant::now()); state.len()];
    let mut next_rescan = Instant::now() + config.rescan;
    loop {
        let now = Instant::now();
        for i in 0..state.len() {
            if pending[i].is_none_or(|d| d > now) {
                continue;
            }
            pending[i] = None;
            rearm(&mut watchers[i], &mut state[i]);
            match attempt(&store, &mut state[i], &keys, &config).await {
                Attempt::Done(changed) => {
                    tracing::debug!(dir = %state[i].key, changed, "applied watched directory");
                    if changed && triggers.send(Trigger::StoreChanged).await.is_err() {
                        return Ok(());
                    }
                }
                Attempt::Later(at) => pending[i] = Some(at),
                Attempt::Suspended => {}
            }
        }
        if now >= next_rescan {
            pending.iter_mut().for_each(|p| *p = Some(now));
            next_rescan = now + config.rescan;
            continue;
        }
        let wake = pending
            .iter()
            .flatten()
            .copied()
            .min()
            .unwrap_or(next_rescan)
            .min(next_rescan);
        let any_suspended = state.iter().any(|d| d.suspended);
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(i) => {
                    let at = Instant::now() + config.debounce;
                    // An event brings a check forward (a burst is then caught by the settle rule).
                    pending[i] = Some(pending[i].map_or(at, |p| p.min(at)));
                }
                None => return Ok(()),
            },
            r = async { changes.as_mut().expect("checked").changed().await }, if any_suspended && changes.is_some() => {
                if r.is_err() {
                    changes = None;
                    continue;
                }
                // A store write: maybe a `resume source`. Look only at the suspended ones.
                for (i, d) in state.iter_mut().enumerate() {
                    if d.suspended {
                        let k = suspension_key(&d.key);
                        let still = store.with(move |s| s.get_record(&k).ok().flatten().is_some()).await;
                        if !still {
                            tracing::info!(dir = %d.key, "source resumed");
                            d.suspended = false;
                            pending[i] = Some(Instant::now());
                        }
                    }
                }
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = triggers.closed() => return Ok(()),
        }
    }
}

/// Arms the watch again when the directory was removed and created anew (an event on the
/// directory itself, or another inode).
fn rearm(w: &mut notify::RecommendedWatcher, d: &mut Dir) {
    let now = identity(&d.path);
    let moved = d.moved.swap(false, std::sync::atomic::Ordering::SeqCst);
    if now.is_none() {
        // Not there (yet): try again on the next event.
        d.moved.store(moved, std::sync::atomic::Ordering::SeqCst);
        return;
    }
    if !moved && now == d.armed {
        return;
    }
    let _ = w.unwatch(&d.path);
    match w.watch(&d.path, RecursiveMode::Recursive) {
        Ok(()) => {
            tracing::info!(dir = %d.key, "watching the re-created directory");
            d.armed = now;
        }
        Err(e) => tracing::warn!(dir = %d.key, error = %e, "cannot watch the re-created directory"),
    }
}

/// Reads a source (off the store, with a time limit), waits for it to settle, then commits it.
async fn attempt(
    store: &SharedStore,
    d: &mut Dir,
    all: &BTreeSet<String>,
    config: &SourcesConfig,
) -> Attempt {
    let k = suspension_key(&d.key);
    if store
        .with(move |s| s.get_record(&k).ok().flatten().is_some())
        .await
    {
        if !d.suspended {
            tracing::info!(dir = %d.key, "source suspended: not applied");
        }
        d.suspended = true;
        return Attempt::Suspended;
    }
    d.suspended = false;
    let key = d.key.clone();
    let snapshot = match d.stuck.take() {
        Some(h) if !h.is_finished() => {
            d.stuck = Some(h);
            Err(format!(
                "reading {} is still blocked after {:?}: a file that cannot be read (a FIFO, a hung mount?)",
                d.path.display(),
                config.read_timeout
            ))
        }
        _ => {
            let p = d.path.clone();
            let mut h = tokio::task::spawn_blocking(move || read_dir_snapshot(&p));
            match tokio::time::timeout(config.read_timeout, &mut h).await {
                Ok(r) => r.unwrap_or_else(|e| Err(e.to_string())),
                Err(_) => {
                    d.stuck = Some(h);
                    let msg = format!(
                        "reading {} took longer than {:?}: a file that cannot be read (a FIFO, a hung mount?)",
                        d.path.display(),
                        config.read_timeout
                    );
                    return Attempt::Done(
                        store
                            .with(move |s| record_outcome(s, &key, Err(("InvalidSource", msg))))
                            .await,
                    );
                }
            }
        }
    };
    let h = snapshot_hash(&snapshot);
    let now = Instant::now();
    let since = match d.stable {
        Some((prev, since)) if prev == h => since,
        _ => {
            d.stable = Some((h, now));
            return Attempt::Later(now + config.settle);
        }
    };
    if now < since + config.settle {
        return Attempt::Later(since + config.settle);
    }
    let prune_at = since + config.prune_settle;
    let commit = Commit {
        key: key.clone(),
        dir: d.path.clone(),
        // Someone else's files in the directory (a compose file, a package.json) are skipped,
        // as `lasctl apply` skips them, instead of blocking the whole directory.
        objects: snapshot.and_then(|f| {
            decode_files_skipping(&f, |_| true)
                .map(|(objects, skipped)| {
                    for s in &skipped {
                        tracing::info!(file = %s.file, reason = %s.reason, "skipped a file of a watched directory");
                    }
                    objects
                })
                .map_err(|e| e.to_string())
        }),
        others: all.iter().filter(|k| **k != key).cloned().collect(),
        prune_wait: (now < prune_at).then_some(prune_at),
    };
    let r = store.with(move |s| commit.run(s)).await;
    if matches!(r, Attempt::Suspended) {
        d.suspended = true;
    }
    r
}

/// Calls `on_change` whenever `state.db` (or its WAL) is written, by any process.
pub fn watch_store(
    home_root: &Path,
    on_change: impl Fn() + Send + 'static,
) -> Result<notify::RecommendedWatcher, WatchError> {
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && matches!(
                ev.kind,
                notify::EventKind::Modify(_) | notify::EventKind::Create(_)
            )
            && ev.paths.iter().any(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n == "state.db" || n == "state.db-wal")
            })
        {
            on_change();
        }
    })
    .map_err(|source| WatchError::Watch {
        path: home_root.to_path_buf(),
        source,
    })?;
    w.watch(home_root, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError::Watch {
            path: home_root.to_path_buf(),
            source,
        })?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(source: &str) -> String {
        format!(
            "apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata:\n  name: tiny\nspec:\n  source: {source}\n"
        )
    }

    fn commit(dir: &Path, others: &[&str]) -> Commit {
        let files = read_dir_snapshot(dir).unwrap();
        Commit {
            key: source_key(dir),
            dir: dir.to_path_buf(),
            objects: crate::api::decode::decode_files(&files).map_err(|e| e.to_string()),
            others: others.iter().map(|s| s.to_string()).collect(),
            prune_wait: None,
        }
    }

    fn spec_source(s: &Store) -> String {
        s.get(crate::api::Kind::Model, "tiny").unwrap().spec["source"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn rollback_of_a_watched_source_is_refused_or_suspends_it_and_resume_lifts_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("stack");
        std::fs::create_dir(&dir).unwrap();
        let key = source_key(&dir);
        let mut s = Store::open(&tmp.path().join("state.db")).unwrap();
        std::fs::write(dir.join("a.yaml"), model("/srv/one.gguf")).unwrap();
        assert!(matches!(commit(&dir, &[]).run(&mut s), Attempt::Done(true)));
        std::fs::write(dir.join("a.yaml"), model("/srv/two.gguf")).unwrap();
        assert!(matches!(commit(&dir, &[]).run(&mut s), Attempt::Done(true)));

        let e = rollback_guarded(&mut s, None, false).unwrap_err();
        assert!(e.to_string().contains("--suspend-source"), "{e}");
        assert!(e.to_string().contains("Model/tiny"), "{e}");
        assert_eq!(spec_source(&s), "file:///srv/two.gguf");

        let (o, suspended) = rollback_guarded(&mut s, None, true).unwrap();
        assert_eq!(o.generation, Some(3));
        assert_eq!(suspended, vec![key.clone()]);
        assert_eq!(spec_source(&s), "file:///srv/one.gguf");
        // The directory still says two: not applied while suspended.
        assert!(matches!(commit(&dir, &[]).run(&mut s), Attempt::Suspended));
        assert_eq!(spec_source(&s), "file:///srv/one.gguf");
        // Another rollback needs no flag: the source is suspended already.
        assert!(rollback_guarded(&mut s, Some(2), false).is_ok());

        assert!(resume(&mut s, &key).unwrap());
        assert!(!resume(&mut s, &key).unwrap());
        commit(&dir, &[]).run(&mut s);
        assert_eq!(spec_source(&s), "file:///srv/two.gguf");
    }

    #[test]
    fn an_object_another_watched_directory_owns_is_a_conflict_on_the_second() {
        let tmp = tempfile::tempdir().unwrap();
        let (d1, d2) = (tmp.path().join("one"), tmp.path().join("two"));
        for (d, src) in [(&d1, "/srv/one.gguf"), (&d2, "/srv/two.gguf")] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("a.yaml"), model(src)).unwrap();
        }
        let (k1, k2) = (source_key(&d1), source_key(&d2));
        let mut s = Store::open(&tmp.path().join("state.db")).unwrap();
        for _ in 0..3 {
            commit(&d1, &[&k2]).run(&mut s);
            commit(&d2, &[&k1]).run(&mut s);
        }
        assert_eq!(s.history().unwrap().len(), 1);
        assert_eq!(spec_source(&s), "file:///srv/one.gguf");
        let rec: SourceStatus = serde_json::from_value(
            s.get_record(&format!("{SOURCE_PREFIX}{k2}"))
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        let err = rec.error.unwrap();
        assert!(err.contains("conflict") && err.contains(&k1), "{err}");
    }

    #[test]
    fn a_fifo_is_an_error_on_the_source_not_a_hang() {
        let tmp = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(
            &tmp.path().join("x.yaml"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let e = read_dir_snapshot(tmp.path()).unwrap_err();
        assert!(e.contains("x.yaml") && e.contains("a FIFO"), "{e}");
    }
}
