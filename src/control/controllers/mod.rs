//! The controllers: level-triggered, idempotent reconcilers driven by one scheduler.
//!
//! # Guarantees
//! - One reconcile per object at a time; a trigger during a reconcile runs it again afterwards.
//! - Errors back off exponentially with jitter (capped); errors no retry can fix mark the object
//!   `Stalled` until its spec changes.
//! - Every object is resynced periodically, so a missed trigger is healed.
//! - Each reconcile runs in a tracing span with `kind`, `name` and `generation`.

pub mod from_catalog;
pub mod model;
pub mod module;
pub mod queue;
pub mod status;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::api::{ConditionStatus, Kind};
use crate::control::store::{EventType, Store, StoreError, StoredObject};
use queue::{Backoff, Finish, Key, WorkQueue};
use status::{cond, event, write_status};

/// A store shared by the daemon's tasks; every use happens on a blocking thread.
#[derive(Clone)]
pub struct SharedStore(Arc<Mutex<Store>>);

impl SharedStore {
    pub fn new(store: Store) -> Self {
        SharedStore(Arc::new(Mutex::new(store)))
    }

    /// Runs `f` with the store on a blocking thread.
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> T + Send + 'static,
    ) -> T {
        let inner = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = inner.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut s)
        })
        .await
        .expect("store task panicked")
    }
}

/// What a successful reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// Run again after this long (e.g. waiting for health).
    Requeue(Duration),
    /// Nothing to do until something changes (the periodic resync still runs).
    AwaitChange,
}

/// A reconcile failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ReconcileError {
    /// CamelCase, e.g. `SourceUnavailable`.
    pub reason: String,
    pub message: String,
    /// No retry can fix it: the object is Stalled until its spec changes.
    pub permanent: bool,
}

impl ReconcileError {
    pub fn retry(reason: &str, message: impl Into<String>) -> Self {
        ReconcileError {
            reason: reason.into(),
            message: message.into(),
            permanent: false,
        }
    }
    pub fn stalled(reason: &str, message: impl Into<String>) -> Self {
        ReconcileError {
            reason: reason.into(),
            message: message.into(),
            permanent: true,
        }
    }
}

impl From<StoreError> for ReconcileError {
    fn from(e: StoreError) -> Self {
        ReconcileError::retry("StoreError", e.to_string())
    }
}

/// One controller: converges objects of one kind.
pub trait Reconciler: Send + Sync + 'static {
    fn kind(&self) -> Kind;

    /// Converges one object. `obj` is `None` when the object no longer exists in the store (deleted
    /// without finalizers): clean up anything left of it. Must be idempotent.
    fn reconcile(
        &self,
        key: Key,
        obj: Option<StoredObject>,
    ) -> BoxFuture<'_, Result<Action, ReconcileError>>;

    /// The keys of objects of this kind that should be reconciled when `changed` changes (e.g.
    /// modules that wait for a model).
    fn dependents(&self, changed: &Key, all: &[StoredObject]) -> Vec<Key> {
        let _ = (changed, all);
        Vec::new()
    }
}

/// Where the scheduler reports what it does (the daemon's /metrics).
pub trait MetricsSink: Send + Sync {
    fn reconciled(&self, kind: Kind, ok: bool);
    fn queue_depth(&self, n: usize);
}

/// Plain counters, for tests and for running without an HTTP server.
#[derive(Debug, Default)]
pub struct ControllerMetrics {
    pub reconciles: AtomicU64,
    pub errors: AtomicU64,
    pub queue_depth: AtomicU64,
}

impl MetricsSink for ControllerMetrics {
    fn reconciled(&self, _kind: Kind, ok: bool) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn queue_depth(&self, n: usize) {
        self.queue_depth.store(n as u64, Ordering::Relaxed);
    }
}

/// What wakes the scheduler.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// Something in the store may have changed: diff resourceVersions.
    StoreChanged,
    /// Reconcile this object now (e.g. its process exited).
    Object(Key),
}

/// Configuration of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub workers: usize,
    pub resync: Duration,
    pub backoff: Backoff,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            workers: 4,
            resync: Duration::from_secs(30),
            backoff: Backoff::default(),
        }
    }
}

/// Runs the controllers until `triggers` closes. Returns after in-flight reconciles finish.
pub async fn run(
    store: SharedStore,
    reconcilers: Vec<Arc<dyn Reconciler>>,
    mut triggers: mpsc::Receiver<Trigger>,
    config: SchedulerConfig,
    metrics: Arc<dyn MetricsSink>,
) {
    let by_kind: HashMap<Kind, Arc<dyn Reconciler>> =
        reconcilers.iter().map(|r| (r.kind(), r.clone())).collect();
    let mut queue = WorkQueue::new(config.backoff);
    let mut seen: HashMap<Key, u64> = HashMap::new();
    let mut tasks: JoinSet<(Key, Finish)> = JoinSet::new();
    let mut next_resync = Instant::now();
    let mut open = true;
    loop {
        let now = Instant::now();
        if now >= next_resync {
            // Periodic resync: everything, and the store diff (covers missed triggers).
            let objects = list_all(&store).await;
            for o in &objects {
                queue.trigger((o.kind, o.name.to_string()));
            }
            diff_store(&objects, &mut seen, &mut queue, &by_kind);
            next_resync = now + config.resync;
        }
        for key in queue.take_due(Instant::now(), config.workers.saturating_sub(tasks.len())) {
            let Some(r) = by_kind.get(&key.0).cloned() else {
                queue.finish(&key, Finish::Ok(None));
                continue;
            };
            let store = store.clone();
            let metrics = metrics.clone();
            tasks.spawn(async move {
                let finish = reconcile_one(&store, r.as_ref(), key.clone(), metrics.as_ref()).await;
                (key, finish)
            });
        }
        metrics.queue_depth(queue.depth());
        if !open && tasks.is_empty() {
            return;
        }
        let wake = queue.next_due().unwrap_or(next_resync).min(next_resync);
        tokio::select! {
            t = triggers.recv(), if open => match t {
                Some(Trigger::StoreChanged) => {
                    let objects = list_all(&store).await;
                    diff_store(&objects, &mut seen, &mut queue, &by_kind);
                }
                Some(Trigger::Object(k)) => queue.trigger(k),
                None => open = false,
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok((key, finish)) = done {
                    queue.finish(&key, finish);
                }
            }
            _ = tokio::time::sleep_until(wake.into()), if open => {}
        }
    }
}

async fn list_all(store: &SharedStore) -> Vec<StoredObject> {
    store
        .with(|s| s.list(None, &Default::default()))
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot list objects");
            Vec::new()
        })
}

/// Enqueues objects whose resourceVersion changed, objects that vanished, and their dependents.
fn diff_store(
    objects: &[StoredObject],
    seen: &mut HashMap<Key, u64>,
    queue: &mut WorkQueue,
    by_kind: &HashMap<Kind, Arc<dyn Reconciler>>,
) {
    let mut changed: Vec<Key> = Vec::new();
    let mut now_seen = HashMap::with_capacity(objects.len());
    for o in objects {
        let key = (o.kind, o.name.to_string());
        if seen.get(&key) != Some(&o.resource_version) {
            changed.push(key.clone());
        }
        now_seen.insert(key, o.resource_version);
    }
    for key in seen.keys() {
        if !now_seen.contains_key(key) {
            changed.push(key.clone());
        }
    }
    *seen = now_seen;
    for key in changed {
        for r in by_kind.values() {
            for d in r.dependents(&key, objects) {
                queue.trigger(d);
            }
        }
        queue.trigger(key);
    }
}

async fn reconcile_one(
    store: &SharedStore,
    r: &dyn Reconciler,
    key: Key,
    metrics: &dyn MetricsSink,
) -> Finish {
    let k = key.clone();
    let obj = store.with(move |s| s.get(k.0, &k.1)).await;
    let obj = match obj {
        Ok(o) => Some(o),
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => {
            tracing::error!(error = %e, "cannot read object");
            return Finish::Retry;
        }
    };
    let span = tracing::info_span!(
        "reconcile",
        kind = %key.0,
        name = %key.1,
        generation = obj.as_ref().map(|o| o.generation).unwrap_or(0)
    );
    let result = r
        .reconcile(key.clone(), obj.clone())
        .instrument(span.clone())
        .await;
    metrics.reconciled(key.0, result.is_ok());
    match result {
        Ok(Action::Requeue(d)) => Finish::Ok(Some(d)),
        Ok(Action::AwaitChange) => Finish::Ok(None),
        Err(e) => {
            span.in_scope(|| tracing::warn!(reason = %e.reason, message = %e.message, permanent = e.permanent, "reconcile failed"));
            if let Some(o) = obj {
                let e2 = e.clone();
                store.with(move |s| record_failure(s, &o, &e2)).await;
            }
            if e.permanent {
                Finish::Stalled
            } else {
                Finish::Retry
            }
        }
    }
}

/// The error policy's visible half: conditions and a Warning event (once per distinct message).
fn record_failure(store: &mut Store, obj: &StoredObject, e: &ReconcileError) {
    let already = obj.condition("Ready").is_some_and(|(s, reason, msg)| {
        s == ConditionStatus::False && reason == e.reason && msg == e.message
    });
    let mut conds = vec![cond(
        "Ready",
        ConditionStatus::False,
        &e.reason,
        e.message.clone(),
    )];
    if e.permanent {
        conds.push(cond(
            "Stalled",
            ConditionStatus::True,
            &e.reason,
            e.message.clone(),
        ));
        conds.push(cond(
            "Reconciling",
            ConditionStatus::False,
            &e.reason,
            "will not progress without a change",
        ));
    } else {
        conds.push(cond(
            "Reconciling",
            ConditionStatus::True,
            &e.reason,
            "retrying with backoff",
        ));
    }
    if let Err(err) = write_status(store, obj, &serde_json::json!({}), conds) {
        tracing::warn!(error = %err, "cannot write status");
    }
    if !already {
        event(store, obj, EventType::Warning, &e.reason, &e.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts reconciles and fails the first `fail` times.
    struct Counting {
        calls: AtomicUsize,
        concurrent: AtomicUsize,
        max_concurrent: AtomicUsize,
        fail: usize,
        permanent: bool,
    }

    impl Reconciler for Counting {
        fn kind(&self) -> Kind {
            Kind::Model
        }
        fn reconcile(
            &self,
            _key: Key,
            _obj: Option<StoredObject>,
        ) -> BoxFuture<'_, Result<Action, ReconcileError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                let c = self.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
                self.max_concurrent.fetch_max(c, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.concurrent.fetch_sub(1, Ordering::SeqCst);
                if n < self.fail {
                    return Err(if self.permanent {
                        ReconcileError::stalled("DigestMismatch", "bytes differ")
                    } else {
                        ReconcileError::retry("SourceUnavailable", "offline")
                    });
                }
                Ok(Action::AwaitChange)
            })
        }
    }

    fn store_with_model() -> (tempfile::TempDir, SharedStore) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state.db")).unwrap();
        let text = "apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata: {name: m}\nspec: {source: /m.gguf}\n";
        let objs = crate::api::decode::decode_files(&[crate::api::decode::InputFile {
            name: "m.yaml".into(),
            bytes: text.into(),
        }])
        .unwrap();
        store
            .apply(&crate::control::store::ApplyRequest {
                items: objs
                    .into_iter()
                    .map(|d| crate::control::store::ApplyItem {
                        desired: d,
                        source: "t".into(),
                        expected_resource_version: None,
                    })
                    .collect(),
                ..Default::default()
            })
            .unwrap();
        (dir, SharedStore::new(store))
    }

    async fn drive(r: Arc<Counting>, store: SharedStore, triggers: usize) {
        let (tx, rx) = mpsc::channel(16);
        let cfg = SchedulerConfig {
            workers: 4,
            resync: Duration::from_secs(3600),
            backoff: Backoff {
                base: Duration::from_millis(10),
                cap: Duration::from_millis(40),
            },
        };
        let h = tokio::spawn(run(
            store,
            vec![r as Arc<dyn Reconciler>],
            rx,
            cfg,
            Arc::new(ControllerMetrics::default()),
        ));
        for _ in 0..triggers {
            tx.send(Trigger::Object((Kind::Model, "m".into())))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        drop(tx);
        h.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retries_with_backoff_then_converges_and_never_overlaps() {
        let (_d, store) = store_with_model();
        let r = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            concurrent: AtomicUsize::new(0),
            max_concurrent: AtomicUsize::new(0),
            fail: 3,
            permanent: false,
        });
        drive(r.clone(), store.clone(), 10).await;
        assert_eq!(
            r.max_concurrent.load(Ordering::SeqCst),
            1,
            "one reconcile per object at a time"
        );
        let calls = r.calls.load(Ordering::SeqCst);
        assert!(
            (4..=6).contains(&calls),
            "3 failures, then success (plus a queued trigger): {calls}"
        );
        let o = store.with(|s| s.get(Kind::Model, "m")).await.unwrap();
        let events = store
            .with(|s| s.events(Some(("Model", "m")), 0, 50))
            .await
            .unwrap();
        assert_eq!(
            events
                .iter()
                .filter(|e| e.reason == "SourceUnavailable")
                .count(),
            1,
            "one event per distinct failure"
        );
        assert_eq!(o.condition("Reconciling").unwrap().1, "SourceUnavailable");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn permanent_errors_stall_until_a_change() {
        let (_d, store) = store_with_model();
        let r = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            concurrent: AtomicUsize::new(0),
            max_concurrent: AtomicUsize::new(0),
            fail: 100,
            permanent: true,
        });
        // The initial resync reconciles once; a stalled object is not retried without a change.
        drive(r.clone(), store.clone(), 0).await;
        assert_eq!(
            r.calls.load(Ordering::SeqCst),
            1,
            "stalled objects are not retried"
        );
        let o = store.with(|s| s.get(Kind::Model, "m")).await.unwrap();
        let (st, reason, _) = o.condition("Stalled").unwrap();
        assert_eq!(
            (st, reason.as_str()),
            (ConditionStatus::True, "DigestMismatch")
        );
        assert_eq!(o.observed_generation(), Some(1));
    }
}
