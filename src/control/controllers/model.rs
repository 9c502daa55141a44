//! The Model controller: makes a Model verified bytes on disk and reports what they are.
//!
//! Ready=True (`Verified`) once the blob is in the store with the expected digest and its GGUF
//! header reads. A digest mismatch or an unreadable GGUF stalls the Model until its spec changes
//! (or, for a local file, until the file's stamp changes: [`Reconciler::retry_stalled`]), also
//! across daemon restarts for a remote source (its status says so); an unavailable source is
//! retried with backoff. Every `integrity` interval the blob is re-hashed: a blob changed on disk is
//! drift — reported, moved away, and fetched again from the source. A local source file whose stamp
//! changed (rewritten in place or replaced by a rename) is checked on every reconcile and imported
//! again as a new revision (`SourceChanged`): the digest in status follows, or the Model stalls with
//! `DigestMismatch` when `spec.sha256` pins the old bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde_json::json;
use tokio::sync::watch;

use super::module::Admission;
use super::queue::Key;
use super::status::{cond, event, update_status, write_status};
use super::{Action, ReconcileError, Reconciler, SharedStore};
use crate::api::{ConditionStatus, Kind, Spec};
use crate::artifacts::gguf;
use crate::artifacts::models::{EnsureOptions, ModelError, ModelStore};
use crate::control::store::{EventType, StoredObject};

pub struct ModelReconciler {
    store: SharedStore,
    models: ModelStore,
    integrity: Duration,
    last_verified: Mutex<HashMap<Key, Instant>>,
    /// Where the active tier's `maxModelBytes` comes from (none: no cap).
    limits: Option<Arc<dyn Admission>>,
    /// Models found too large: (uid, generation, limit) and the message. Not fetched again until
    /// one of those changes (each attempt would download `limit` bytes to find out again).
    too_large: Mutex<HashMap<Key, (TooLargeAt, String)>>,
    /// The stamp of the local source file of each Stalled Model, when it stalled.
    stalled_stamps: Mutex<HashMap<Key, Option<SourceStamp>>>,
}

/// What tells a changed local file: identity, size and modification time. Not the change time:
/// importing (a hardlink) and quarantining the bytes move it without changing the file.
type SourceStamp = (u64, u64, u64, i64, i64);

fn source_stamp(spec: &crate::api::ModelSpec) -> Option<SourceStamp> {
    use std::os::unix::fs::MetadataExt;
    let crate::api::model::ModelSource::File(p) = &spec.source else {
        return None;
    };
    let m = std::fs::metadata(p).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// What a "too large" verdict holds for: the object's uid and generation, and the limit.
type TooLargeAt = (String, u64, u64);

impl ModelReconciler {
    pub fn new(store: SharedStore, models: ModelStore, integrity: Duration) -> Self {
        ModelReconciler {
            store,
            models,
            integrity,
            last_verified: Mutex::default(),
            limits: None,
            too_large: Mutex::default(),
            stalled_stamps: Mutex::default(),
        }
    }

    /// Enforces the active tier's `maxModelBytes` while Models download.
    pub fn with_limits(mut self, limits: Arc<dyn Admission>) -> Self {
        self.limits = Some(limits);
        self
    }

    /// A flag that turns true once `obj` is deleted (or replaced by another object of its name),
    /// polled from the store while a fetch runs, so that deleting a Model cancels its download.
    fn watch_deleted(&self, obj: &StoredObject) -> (watch::Receiver<bool>, AbortOnDrop) {
        let (tx, rx) = watch::channel(false);
        let store = self.store.clone();
        let (kind, name, uid) = (obj.kind, obj.name.to_string(), obj.uid.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if is_gone(&store, kind, &name, &uid).await {
                    let _ = tx.send(true);
                    return;
                }
            }
        });
        (rx, AbortOnDrop(task))
    }

    async fn converge_recording_stalls(
        &self,
        key: Key,
        obj: StoredObject,
    ) -> Result<Action, ReconcileError> {
        let stamp = match obj.typed_spec() {
            Ok(Spec::Model(spec)) => source_stamp(&spec),
            _ => None,
        };
        let r = self.converge(key.clone(), obj).await;
        let mut stalls = self
            .stalled_stamps
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &r {
            // The stamp from before the fetch: a file replaced while it was read is tried again.
            Err(e) if e.permanent => stalls.insert(key, stamp),
            _ => stalls.remove(&key),
        };
        r
    }

    async fn converge(&self, key: Key, obj: StoredObject) -> Result<Action, ReconcileError> {
        let Spec::Model(spec) = obj.typed_spec()? else {
            return Ok(Action::AwaitChange);
        };
        // Stalled on a digest mismatch at this generation (by an earlier life of the daemon: a
        // restart, kill -9): a remote source would give the same bytes again, so it stays
        // Stalled without a download. A local file is looked at again (it may have changed).
        if let Some((ConditionStatus::True, reason, message)) = obj.condition("Stalled")
            && reason == "DigestMismatch"
            && obj.observed_generation() == Some(obj.generation)
            && !matches!(spec.source, crate::api::model::ModelSource::File(_))
        {
            return Err(ReconcileError::stalled("DigestMismatch", message));
        }
        let was_ready = super::status::is_ready(&obj);
        let stored_digest = obj
            .status
            .get("digest")
            .and_then(|d| d.as_str())
            .map(String::from);
        let due = self
            .last_verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .is_none_or(|t| t.elapsed() >= self.integrity);
        // A local source file rewritten or replaced is a new revision (one stat per reconcile).
        let source_changed = was_ready && self.models.source_changed(&spec.source);
        if was_ready && !due && !source_changed {
            return Ok(Action::Requeue(self.integrity));
        }
        // Found too large before at this generation and limit: say so again without fetching
        // (and before any status write, so a stalled Model is quiet).
        let limit = match &self.limits {
            Some(a) => {
                let all = self
                    .store
                    .with(|s| s.list(None, &Default::default()))
                    .await?;
                a.max_model_bytes(&all)
            }
            None => None,
        };
        if let Some((max, _)) = &limit {
            let seen = (obj.uid.clone(), obj.generation, *max);
            let known = self
                .too_large
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .filter(|(k, _)| *k == seen)
                .map(|(_, m)| m.clone());
            if let Some(message) = known {
                return Err(ReconcileError::stalled("TooLarge", message));
            }
        }
        if source_changed {
            let o = obj.clone();
            let msg = format!(
                "{} changed since it was imported; verifying it as a new revision (the stored blob is unchanged)",
                spec.source
            );
            self.store
                .with(move |s| event(s, &o, EventType::Normal, "SourceChanged", &msg))
                .await;
        } else if was_ready
            // Integrity of a blob we already serve: re-hash it.
            && let Some(d) = stored_digest
                .as_deref()
                .and_then(|d| crate::api::model::Sha256::new(d).ok())
        {
            let models = self.models.clone();
            let verdict = tokio::task::spawn_blocking(move || models.verify_blocking(&d))
                .await
                .map_err(|e| ReconcileError::retry("Verifying", e.to_string()))?;
            match verdict {
                Ok(_) => {
                    self.mark_verified(&key);
                    return Ok(Action::Requeue(self.integrity));
                }
                Err(e) => {
                    let o = obj.clone();
                    let msg = format!("model file changed on disk; fetching it again: {e}");
                    self.store
                        .with(move |s| event(s, &o, EventType::Warning, "DriftDetected", &msg))
                        .await;
                }
            }
        } else {
            update_status(
                &self.store,
                &obj,
                json!({}),
                vec![cond(
                    "Reconciling",
                    ConditionStatus::True,
                    "Downloading",
                    "fetching and verifying the weights",
                )],
            )
            .await?;
        }
        let (cancel, _watch) = self.watch_deleted(&obj);
        let opts = EnsureOptions {
            max_bytes: limit.as_ref().map(|l| l.0),
            cancel: Some(cancel),
            ..Default::default()
        };
        let ensured = self.models.ensure(&spec, &opts).await;
        let blob = match ensured {
            Ok(b) => b,
            // Deleted meanwhile: nothing to report on an object that is gone (no Warning either).
            Err(ModelError::Cancelled { .. }) => return Ok(Action::AwaitChange),
            Err(_) if is_gone(&self.store, obj.kind, obj.name.as_str(), &obj.uid).await => {
                return Ok(Action::AwaitChange);
            }
            Err(e @ ModelError::TooLarge { .. }) => {
                let (max, tier) = limit.unwrap_or_default();
                let message = format!("tier {tier} (maxModelBytes): {e}");
                self.too_large
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(
                        key,
                        ((obj.uid.clone(), obj.generation, max), message.clone()),
                    );
                return Err(ReconcileError::stalled(e.reason(), message));
            }
            Err(e @ (ModelError::DigestMismatch { .. } | ModelError::UnpinnedRevision { .. })) => {
                return Err(ReconcileError::stalled(e.reason(), e.to_string()));
            }
            Err(e) => return Err(ReconcileError::retry(e.reason(), e.to_string())),
        };
        let path = blob.path.clone();
        let info = tokio::task::spawn_blocking(move || gguf::read_header(&path).map(|h| h.info()))
            .await
            .map_err(|e| ReconcileError::retry("Verifying", e.to_string()))?
            .map_err(|e| {
                ReconcileError::stalled(
                    "InvalidModel",
                    format!("{}: not a readable GGUF: {e}", blob.path.display()),
                )
            })?;
        let fields = json!({
            "digest": blob.digest.as_str(),
            "sizeBytes": blob.size_bytes,
            "path": blob.path.display().to_string(),
            "gguf": info,
        });
        let o = obj.clone();
        let msg = format!(
            "sha256 {} verified ({} bytes)",
            blob.digest, blob.size_bytes
        );
        self.store
            .with(move |s| {
                let ok = write_status(
                    s,
                    &o,
                    &fields,
                    vec![
                        cond("Ready", ConditionStatus::True, "Verified", msg.clone()),
                        cond(
                            "Reconciling",
                            ConditionStatus::False,
                            "Verified",
                            "converged",
                        ),
                        cond("Stalled", ConditionStatus::False, "Verified", ""),
                    ],
                )?;
                if ok && !was_ready {
                    event(s, &o, EventType::Normal, "Verified", &msg);
                }
                Ok::<_, crate::control::store::StoreError>(())
            })
            .await?;
        self.mark_verified(&key);
        Ok(Action::Requeue(self.integrity))
    }

    fn mark_verified(&self, key: &Key) {
        self.last_verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), Instant::now());
    }
}

/// Aborts a helper task when the reconcile that started it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether the object `kind/name` with `uid` is gone: deleted, being deleted, or replaced.
async fn is_gone(store: &SharedStore, kind: Kind, name: &str, uid: &str) -> bool {
    let (name, uid) = (name.to_string(), uid.to_string());
    store
        .with(move |s| match s.get(kind, &name) {
            Ok(o) => o.deleted_at.is_some() || o.uid != uid,
            Err(crate::control::store::StoreError::NotFound { .. }) => true,
            Err(_) => false,
        })
        .await
}

impl Reconciler for ModelReconciler {
    fn kind(&self) -> Kind {
        Kind::Model
    }

    fn reconcile(
        &self,
        key: Key,
        obj: Option<StoredObject>,
    ) -> BoxFuture<'_, Result<Action, ReconcileError>> {
        Box::pin(async move {
            match obj {
                // Deleted: its blob is left to the store's garbage collection by reachability.
                None => {
                    self.last_verified
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key);
                    self.too_large
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key);
                    self.stalled_stamps
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key);
                    Ok(Action::AwaitChange)
                }
                Some(o) if o.deleted_at.is_some() => Ok(Action::AwaitChange),
                Some(o) => self.converge_recording_stalls(key, o).await,
            }
        })
    }

    fn retry_stalled(&self, obj: &StoredObject) -> bool {
        let key = (obj.kind, obj.name.to_string());
        let Some(Some(then)) = self
            .stalled_stamps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned()
        else {
            return false;
        };
        match obj.typed_spec() {
            Ok(Spec::Model(spec)) => source_stamp(&spec) != Some(then),
            _ => false,
        }
    }
}
