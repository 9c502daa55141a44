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
use crate::api::model::binary_bytes;
use crate::api::{ConditionStatus, Kind, Spec};
use crate::artifacts::gguf;
use crate::artifacts::models::{EnsureOptions, ModelError, ModelStore, Phase, Progress};
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
    /// Where active `modelVerifiers` come from (none: no plugin verifies).
    plugins: Option<Arc<crate::control::plugins::PluginHost>>,
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
            plugins: None,
        }
    }

    /// Runs the active plugins' `modelVerifiers` on every blob before it is Ready.
    pub fn with_plugins(mut self, plugins: Arc<crate::control::plugins::PluginHost>) -> Self {
        self.plugins = Some(plugins);
        self
    }

    /// A source of another scheme, resolved by the active `modelSources` contribution for it to
    /// a `(url, sha256)` the host fetches. The resolution is pinned in `status.resolvedSource`:
    /// later reconciles and restarts use it without the plugin (or the network, once fetched).
    async fn resolve_plugin_source(
        &self,
        obj: &StoredObject,
        spec: &crate::api::ModelSpec,
        uri: &str,
    ) -> Result<crate::api::ModelSpec, ReconcileError> {
        use crate::api::model::{ModelSource, Sha256};
        let pinned = &obj.status["resolvedSource"];
        let (url, sha, by) = if pinned["uri"].as_str() == Some(uri)
            && let (Some(url), Some(sha)) = (pinned["url"].as_str(), pinned["sha256"].as_str())
        {
            (url.to_string(), sha.to_string(), None)
        } else {
            let scheme = uri.split_once("://").map_or("", |(s, _)| s).to_string();
            let host = self.plugins.clone().ok_or_else(|| {
                ReconcileError::retry("NoModelSource", format!("no plugin resolves {scheme}://"))
            })?;
            let acts = self
                .store
                .with(|s| crate::control::plugins::plugin_objects(s))
                .await?;
            let u = uri.to_string();
            let out = tokio::task::spawn_blocking(move || {
                let active = host.build(&acts);
                let Some(c) = active.iter().find(|c| c.scheme.as_deref() == Some(scheme.as_str()))
                else {
                    return Err(ReconcileError::retry(
                        "NoModelSource",
                        format!("no active plugin activation resolves {scheme}:// (activate a modelSources contribution for it)"),
                    ));
                };
                host.call(c, &json!({"uri": u, "config": c.config}))
                    .map(|v| (v, c.activation.clone()))
                    .map_err(|e| {
                        ReconcileError::retry(
                            "SourceUnavailable",
                            format!("plugin activation {} could not resolve it: {e}", c.activation),
                        )
                    })
            })
            .await
            .map_err(|e| ReconcileError::retry("SourceUnavailable", e.to_string()))??;
            let (v, activation) = out;
            let url = v["url"].as_str().unwrap_or_default().to_string();
            let sha = v["sha256"].as_str().unwrap_or_default().to_string();
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || Sha256::new(&sha).is_err()
            {
                return Err(ReconcileError::retry(
                    "SourceUnavailable",
                    format!(
                        "plugin activation {activation} answered {v}, expected {{\"url\": \"http(s)://…\", \"sha256\": \"<64 hex>\"}}"
                    ),
                ));
            }
            (url, sha, Some(activation))
        };
        let sha = Sha256::new(&sha).map_err(|e| ReconcileError::retry("SourceUnavailable", e))?;
        if let Some(want) = &spec.sha256
            && *want != sha
        {
            return Err(ReconcileError::stalled(
                "DigestMismatch",
                format!("{uri} resolves to sha256 {sha}, but spec.sha256 is {want}"),
            ));
        }
        if let Some(activation) = by {
            update_status(
                &self.store,
                obj,
                json!({"resolvedSource": {"uri": uri, "url": url, "sha256": sha.as_str(), "activation": activation}}),
                vec![],
            )
            .await?;
        }
        Ok(crate::api::ModelSpec {
            source: ModelSource::Http(url),
            sha256: Some(sha),
            format: spec.format,
        })
    }

    /// The verdict of the active model verifiers in scope: `Err` stalls the Model (a verifier
    /// fails closed unless its activation says `Ignore`).
    async fn run_verifiers(
        &self,
        obj: &StoredObject,
        fields: &serde_json::Value,
    ) -> Result<(), ReconcileError> {
        let Some(host) = self.plugins.clone() else {
            return Ok(());
        };
        let acts = self
            .store
            .with(|s| crate::control::plugins::plugin_objects(s))
            .await?;
        if acts.is_empty() {
            return Ok(());
        }
        let name = obj.name.to_string();
        let model = json!({"name": name, "digest": fields["digest"], "sizeBytes": fields["sizeBytes"], "gguf": fields["gguf"]});
        let verdict = tokio::task::spawn_blocking(move || {
            let active = host.build(&acts);
            let arch = model["gguf"]["architecture"].as_str().map(String::from);
            let quant = model["gguf"]["quantization"].as_str().map(String::from);
            let chain: Vec<&crate::control::plugins::ActiveCode> = active
                .iter()
                .filter(|c| {
                    c.point == crate::api::plugin::Point::ModelVerifier
                        && c.scope
                            .matches(None, Some(&name), arch.as_deref(), quant.as_deref())
                })
                .collect();
            host.run_chain(&chain, "model", model, &json!({}), Duration::from_secs(10))
        })
        .await
        .map_err(|e| ReconcileError::retry("Verifying", e.to_string()))?;
        match verdict {
            crate::control::plugins::Verdict::Allow(_) => Ok(()),
            crate::control::plugins::Verdict::Deny {
                activation,
                id,
                reason,
                ..
            } => Err(ReconcileError::stalled(
                "VerifierDenied",
                format!("denied by plugin activation {activation} ({id}): {reason}"),
            )),
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
        // A Model already Ready keeps serving its blob while it is fetched again: its progress
        // is reported, but Ready stays as it is.
        let progress = ProgressWriter::start(
            self.store.clone(),
            obj.clone(),
            !matches!(spec.source, crate::api::model::ModelSource::File(_)),
            !was_ready,
        );
        let opts = EnsureOptions {
            max_bytes: limit.as_ref().map(|l| l.0),
            cancel: Some(cancel),
            progress: Some(progress.callback()),
            ..Default::default()
        };
        let spec = match &spec.source {
            crate::api::model::ModelSource::Plugin(uri) => {
                let uri = uri.clone();
                self.resolve_plugin_source(&obj, &spec, &uri).await?
            }
            _ => spec,
        };
        let ensured = self.models.ensure(&spec, &opts).await;
        drop(opts);
        // No progress write may land after the writes below (it would undo them).
        let wrote_progress = progress.stop().await;
        if wrote_progress && ensured.is_err() {
            update_status(&self.store, &obj, json!({"progress": null}), vec![]).await?;
        }
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
            "progress": null,
        });
        self.run_verifiers(&obj, &fields).await?;
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

/// The least time between two progress writes of one Model.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Turns a fetch's progress reports into `status.progress` (and, for a Model not yet Ready,
/// `Ready=False` with the phase as reason), at most once per
/// [`PROGRESS_EVERY`], plus one `Downloading` event when a network download starts.
///
/// # Guarantees
/// - These writes are status only: they never wake the Model itself, and the scheduler does not
///   wake its dependents for them either (a change of `status.progress` alone is no change).
/// - After [`ProgressWriter::stop`] returns, no write of this writer is in flight or to come.
struct ProgressWriter {
    latest: Arc<watch::Sender<Option<Progress>>>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<bool>,
}

impl ProgressWriter {
    fn start(store: SharedStore, obj: StoredObject, network: bool, set_ready: bool) -> Self {
        let (latest, mut rx) = watch::channel(None::<Progress>);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut wrote = false;
            let mut announced = !network;
            let mut last: Option<(Instant, Phase, u64)> = None;
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stopped => return wrote,
                    r = rx.changed() => if r.is_err() { return wrote },
                }
                let Some(p) = *rx.borrow_and_update() else {
                    continue;
                };
                if p.phase == Phase::Verified {
                    continue;
                }
                let now = Instant::now();
                let rate = match last {
                    Some((t, phase, done)) if phase == p.phase && p.done_bytes >= done => {
                        ((p.done_bytes - done) as f64 / (now - t).as_secs_f64().max(1e-3)) as u64
                    }
                    _ => 0,
                };
                last = Some((now, p.phase, p.done_bytes));
                let announce = !announced && p.phase == Phase::Downloading;
                announced |= announce;
                let o = obj.clone();
                let written = store
                    .with(move |s| write_progress(s, &o, p, rate, set_ready, announce))
                    .await;
                match written {
                    Ok(true) => wrote = true,
                    Ok(false) => {}
                    Err(e) => tracing::debug!(error = %e, "cannot write download progress"),
                }
                tokio::select! {
                    biased;
                    _ = &mut stopped => return wrote,
                    _ = tokio::time::sleep(PROGRESS_EVERY) => {}
                }
            }
        });
        ProgressWriter {
            latest: Arc::new(latest),
            stop,
            task,
        }
    }

    /// The callback for [`EnsureOptions::progress`]: keeps only the latest report.
    fn callback(&self) -> crate::artifacts::models::ProgressFn {
        let latest = self.latest.clone();
        Arc::new(move |p| {
            latest.send_replace(Some(p));
        })
    }

    /// Stops the writer once its write in flight (if any) is done; whether it wrote anything.
    async fn stop(self) -> bool {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(false)
    }
}

/// One progress write (see [`ProgressWriter`]).
fn write_progress(
    s: &mut crate::control::store::Store,
    obj: &StoredObject,
    p: Progress,
    rate: u64,
    set_ready: bool,
    announce: bool,
) -> Result<bool, crate::control::store::StoreError> {
    let progress = crate::api::model::ModelProgress {
        phase: p.phase.reason().to_string(),
        bytes_done: p.done_bytes,
        bytes_total: p.total_bytes,
        bytes_per_second: rate,
    };
    // The figures live in `status.progress` only: conditions change at transitions, so a
    // progress write is no change to anyone who waits on them (see the scheduler's `Seen`).
    let source = obj
        .spec
        .get("source")
        .and_then(|v| v.as_str())
        .unwrap_or("?");
    let message = match p.phase {
        Phase::Verifying => format!("hashing the bytes of {source}"),
        _ => format!("fetching {source}"),
    };
    let mut conds = vec![cond(
        "Reconciling",
        ConditionStatus::True,
        p.phase.reason(),
        message.clone(),
    )];
    if set_ready {
        conds.push(cond(
            "Ready",
            ConditionStatus::False,
            p.phase.reason(),
            message,
        ));
    }
    let ok = write_status(s, obj, &json!({ "progress": progress }), conds)?;
    if ok && announce {
        let msg = match (p.done_bytes, p.total_bytes) {
            (0, Some(t)) => format!("downloading {source} ({})", binary_bytes(t)),
            (0, None) => format!("downloading {source} (size unknown)"),
            (d, Some(t)) => format!(
                "resuming the download of {source} at {} of {}",
                binary_bytes(d),
                binary_bytes(t)
            ),
            (d, None) => format!("resuming the download of {source} at {}", binary_bytes(d)),
        };
        event(s, obj, EventType::Normal, "Downloading", &msg);
    }
    Ok(ok)
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

    /// A Model a plugin verifier refused is tried again when activations or plugins change.
    fn unstalled_by(&self, changed: &Key, all: &[StoredObject]) -> Vec<Key> {
        if !matches!(changed.0, Kind::PluginActivation | Kind::Plugin) {
            return Vec::new();
        }
        all.iter()
            .filter(|o| {
                o.kind == Kind::Model
                    && o.condition("Stalled").is_some_and(|(s, r, _)| {
                        s == ConditionStatus::True && r == "VerifierDenied"
                    })
            })
            .map(|o| (o.kind, o.name.to_string()))
            .collect()
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
