//! Watched directories (GitOps sources) and the store-change trigger.
//!
//! # Guarantees
//! - A change under a watched directory is applied, with prune scoped to that directory, after a
//!   short debounce; a periodic rescan covers missed file events (an unchanged apply writes nothing).
//! - An invalid file is a Warning event and an error on the source's record (`lasctl get sources`);
//!   the last good desired state stays: a typo never tears a stack down.
//! - Emptying a directory does not prune everything (that needs `apply --prune --allow-empty`).
//! - Writes to `state.db` by any process (the CLI, the API) wake the controllers within
//!   milliseconds through inotify on the WAL file: no polling.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::apply::{ApplyOptions, apply_paths, source_key};
use super::controllers::{SharedStore, Trigger};
use super::store::EventType;

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

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

/// Applies `dir` (recursive, with prune scoped to it) and records the outcome. Returns true when
/// desired state changed.
pub async fn apply_source(store: &SharedStore, dir: &Path) -> bool {
    let dir = dir.to_path_buf();
    store
        .with(move |s| {
            let key = source_key(&dir);
            let record_key = format!("{SOURCE_PREFIX}{key}");
            let previous: Option<SourceStatus> = s
                .get_record(&record_key)
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_value(v).ok());
            let now = crate::api::meta::now_rfc3339();
            let opts = ApplyOptions {
                recursive: true,
                prune: true,
                allow_empty: false,
                dry_run: false,
            };
            let (status, changed) = match apply_paths(s, std::slice::from_ref(&dir), &opts) {
                Ok(outcome) => {
                    let changed = outcome.changed_anything();
                    let st = SourceStatus {
                        path: key.clone(),
                        last_applied: Some(now.clone()),
                        generation: outcome
                            .generation
                            .or(previous.as_ref().and_then(|p| p.generation)),
                        objects: outcome
                            .changes
                            .iter()
                            .filter(|c| c.action != crate::control::store::Action::Pruned)
                            .count(),
                        error: None,
                        last_checked: now,
                    };
                    if previous.as_ref().is_some_and(|p| p.error.is_some()) {
                        let _ = s.record_event(
                            "Source",
                            &key,
                            EventType::Normal,
                            "Applied",
                            "the directory applies cleanly again",
                        );
                    }
                    (st, changed)
                }
                Err(e) => {
                    let msg = e.to_string();
                    if previous.as_ref().and_then(|p| p.error.as_ref()) != Some(&msg) {
                        let _ = s.record_event(
                            "Source",
                            &key,
                            EventType::Warning,
                            "InvalidSource",
                            &format!("not applied; the last good desired state stays: {msg}"),
                        );
                    }
                    let st = SourceStatus {
                        path: key.clone(),
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
                p.error == status.error
                    && p.generation == status.generation
                    && p.objects == status.objects
            });
            if !unchanged_record || changed {
                let _ = s.put_record(&record_key, &serde_json::to_value(&status).expect("json"));
            }
            changed
        })
        .await
}

/// Watches `dirs` until `triggers` closes: applies each on change (debounced) and on every
/// `rescan`, and tells the controllers when desired state changed.
pub async fn watch_sources(
    store: SharedStore,
    dirs: Vec<PathBuf>,
    debounce: Duration,
    rescan: Duration,
    triggers: mpsc::Sender<Trigger>,
) -> Result<(), WatchError> {
    let (tx, mut rx) = mpsc::channel::<usize>(64);
    let mut watchers = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let tx = tx.clone();
        let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && !matches!(ev.kind, notify::EventKind::Access(_))
            {
                let _ = tx.try_send(i);
            }
        })
        .map_err(|source| WatchError::Watch {
            path: dir.clone(),
            source,
        })?;
        w.watch(dir, RecursiveMode::Recursive)
            .map_err(|source| WatchError::Watch {
                path: dir.clone(),
                source,
            })?;
        watchers.push(w);
    }
    drop(tx);
    let mut pending: Vec<Option<Instant>> = vec![Some(Instant::now()); dirs.len()];
    let mut next_rescan = Instant::now() + rescan;
    loop {
        let now = Instant::now();
        for (i, due) in pending.iter_mut().enumerate() {
            if due.is_some_and(|d| d <= now) {
                *due = None;
                let changed = apply_source(&store, &dirs[i]).await;
                tracing::debug!(dir = %dirs[i].display(), changed, "applied watched directory");
                if changed && triggers.send(Trigger::StoreChanged).await.is_err() {
                    return Ok(());
                }
            }
        }
        if now >= next_rescan {
            pending.iter_mut().for_each(|p| *p = Some(now));
            next_rescan = now + rescan;
            continue;
        }
        let wake = pending
            .iter()
            .flatten()
            .copied()
            .min()
            .unwrap_or(next_rescan)
            .min(next_rescan);
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(i) => pending[i] = Some(Instant::now() + debounce),
                None => return Ok(()),
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = triggers.closed() => return Ok(()),
        }
    }
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
