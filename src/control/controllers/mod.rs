//! The controllers: level-triggered, idempotent reconcilers driven by one scheduler.
//!
//! # Guarantees
//! - One reconcile per object at a time; a trigger during a reconcile runs it again afterwards.
//! - A reconcile's own status writes never run it again: an object is woken by changes of its
//!   desired state (spec, deletion, finalizers, labels), by changes of what it depends on
//!   ([`Reconciler::dependents`]), by runtime events and by the resync. A write that changes only
//!   `status.progress` (a download's figures) wakes nothing, dependents included.
//! - Errors back off exponentially with jitter (capped), and nothing but a change of the object's
//!   own desired state cuts a backoff short. Errors no retry can fix mark the object `Stalled`: it
//!   is not reconciled again (the resync included) until its desired state or something it
//!   depends on changes ([`Reconciler::unstalled_by`], [`Reconciler::retry_stalled`]).
//! - Every other object is resynced periodically, so a missed trigger is healed.
//! - Each reconcile runs in a tracing span with `kind`, `name` and `generation`.
//!
//! # Caveats
//! - What the queue knows (backoffs, stalls) lives in memory: after a daemon restart every object
//!   is reconciled once (a Model Stalled on a remote source's digest answers from its status,
//!   without a download).

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
use queue::{Backoff, Finish, Key, Wake, WorkQueue};
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

    /// Stalled objects of this kind whose stall may end because the desired state of `changed`
    /// changed (not its status): e.g. a Module refused by admission when a Policy or another
    /// Module changes.
    fn unstalled_by(&self, changed: &Key, all: &[StoredObject]) -> Vec<Key> {
        let _ = (changed, all);
        Vec::new()
    }

    /// Whether a Stalled object should be tried again at a resync although nothing in the store
    /// changed (e.g. the local file a Model comes from changed). Runs on a blocking thread; must
    /// be cheap (a `stat`, not a hash).
    fn retry_stalled(&self, obj: &StoredObject) -> bool {
        let _ = obj;
        false
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
    let mut seen: HashMap<Key, Seen> = HashMap::new();
    let mut tasks: JoinSet<(Key, Finish)> = JoinSet::new();
    let mut next_resync = Instant::now();
    let mut open = true;
    loop {
        let now = Instant::now();
        if now >= next_resync {
            // Periodic resync: everything but Stalled objects, and the store diff (covers missed
            // triggers).
            let objects = list_all(&store).await;
            let stalled: Vec<StoredObject> = objects
                .iter()
                .filter(|o| queue.is_stalled(&(o.kind, o.name.to_string())))
                .cloned()
                .collect();
            let retry = retry_stalled(&by_kind, stalled).await;
            for o in &objects {
                let key = (o.kind, o.name.to_string());
                let why = if retry.contains(&key) {
                    Wake::Related
                } else {
                    Wake::Look
                };
                queue.wake(key, why);
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
                Some(Trigger::Object(k)) => queue.wake(k, Wake::Look),
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

/// The Stalled objects whose reconciler wants them tried again (see [`Reconciler::retry_stalled`]).
async fn retry_stalled(
    by_kind: &HashMap<Kind, Arc<dyn Reconciler>>,
    stalled: Vec<StoredObject>,
) -> std::collections::HashSet<Key> {
    if stalled.is_empty() {
        return Default::default();
    }
    let by_kind = by_kind.clone();
    tokio::task::spawn_blocking(move || {
        stalled
            .iter()
            .filter(|o| by_kind.get(&o.kind).is_some_and(|r| r.retry_stalled(o)))
            .map(|o| (o.kind, o.name.to_string()))
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// What the scheduler last saw of an object: any write moves `resource_version`; `desired` is a
/// fingerprint of everything but status (uid, generation, deletion, finalizers, labels,
/// annotations), so the object's own status writes can be told apart; `status` is one of the
/// status without `progress`, so a download's progress reports wake nothing at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    resource_version: u64,
    desired: u64,
    status: u64,
}

impl Seen {
    fn of(o: &StoredObject) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &o.uid,
            o.generation,
            &o.deleted_at,
            &o.finalizers,
            &o.labels,
            &o.annotations,
        )
            .hash(&mut h);
        let desired = h.finish();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        match o.status.as_object() {
            Some(m) => m
                .iter()
                .filter(|(k, _)| k.as_str() != "progress")
                .for_each(|(k, v)| (k, v.to_string()).hash(&mut h)),
            None => o.status.to_string().hash(&mut h),
        }
        Seen {
            resource_version: o.resource_version,
            desired,
            status: h.finish(),
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

/// Wakes what a store change concerns. An object whose desired state changed (or that appeared
/// or vanished) is woken as [`Wake::Changed`]; an object whose status alone changed is not woken
/// at all (that write was its own reconcile's), only what depends on it ([`Wake::Related`]).
fn diff_store(
    objects: &[StoredObject],
    seen: &mut HashMap<Key, Seen>,
    queue: &mut WorkQueue,
    by_kind: &HashMap<Kind, Arc<dyn Reconciler>>,
) {
    // (key, whether its desired state changed)
    let mut changed: Vec<(Key, bool)> = Vec::new();
    let mut now_seen = HashMap::with_capacity(objects.len());
    for o in objects {
        let key = (o.kind, o.name.to_string());
        let now = Seen::of(o);
        match seen.get(&key) {
            Some(s) if *s == now => {}
            // Only progress moved: nothing anyone waits for changed.
            Some(s) if s.desired == now.desired && s.status == now.status => {}
            Some(s) if s.desired == now.desired => changed.push((key.clone(), false)),
            _ => changed.push((key.clone(), true)),
        }
        now_seen.insert(key, now);
    }
    for key in seen.keys() {
        if !now_seen.contains_key(key) {
            changed.push((key.clone(), true));
        }
    }
    *seen = now_seen;
    for (key, desired) in changed {
        for r in by_kind.values() {
            for d in r.dependents(&key, objects) {
                queue.wake(d, Wake::Related);
            }
            if desired {
                for d in r.unstalled_by(&key, objects) {
                    if d != key {
                        queue.wake(d, Wake::Related);
                    }
                }
            }
        }
        if desired {
            queue.wake(key, Wake::Changed);
        }
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
            // Debug only: the daemon shows the Warning event this records, once per distinct
            // failure, instead of a line per retry.
            span.in_scope(|| tracing::debug!(reason = %e.reason, message = %e.message, permanent = e.permanent, "reconcile failed"));
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
/// `obj` is the object as the reconcile started; the write goes onto the stored one (the reconcile
/// may have written status meanwhile), and is skipped when the desired state changed (the
/// scheduler runs it again anyway).
fn record_failure(store: &mut Store, obj: &StoredObject, e: &ReconcileError) {
    let obj = match store.get(obj.kind, obj.name.as_str()) {
        Ok(cur) if cur.uid == obj.uid && cur.generation == obj.generation => cur,
        Ok(_) | Err(StoreError::NotFound { .. }) => return,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the object to record its failure");
            return;
        }
    };
    let obj = &obj;
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

    /// Writes its status on every run and tells the scheduler (as the daemon's store watcher
    /// does), plus a runtime event about itself; then ends as `outcome` says. Records its runs.
    struct SelfWriting {
        store: SharedStore,
        tx: mpsc::Sender<Trigger>,
        runs: Mutex<Vec<Instant>>,
        outcome: fn() -> Result<Action, ReconcileError>,
        runtime_event: bool,
    }

    impl Reconciler for SelfWriting {
        fn kind(&self) -> Kind {
            Kind::Model
        }
        fn reconcile(
            &self,
            _key: Key,
            obj: Option<StoredObject>,
        ) -> BoxFuture<'_, Result<Action, ReconcileError>> {
            Box::pin(async move {
                let n = {
                    let mut r = self.runs.lock().unwrap();
                    r.push(Instant::now());
                    r.len()
                };
                let o = obj.expect("stored");
                self.store
                    .with(move |s| {
                        write_status(s, &o, &serde_json::json!({ "run": n }), vec![]).unwrap()
                    })
                    .await;
                self.tx.send(Trigger::StoreChanged).await.unwrap();
                if self.runtime_event {
                    self.tx
                        .send(Trigger::Object((Kind::Model, "m".into())))
                        .await
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                (self.outcome)()
            })
        }
    }

    /// Runs `outcome` for `for_` with a 100 ms backoff base; the gaps between runs.
    async fn self_writing_runs(
        outcome: fn() -> Result<Action, ReconcileError>,
        for_: Duration,
        resync: Duration,
        runtime_event: bool,
    ) -> Vec<Duration> {
        let (_d, store) = store_with_model();
        let (tx, rx) = mpsc::channel(64);
        let r = Arc::new(SelfWriting {
            store: store.clone(),
            tx: tx.clone(),
            runs: Mutex::default(),
            outcome,
            runtime_event,
        });
        let cfg = SchedulerConfig {
            workers: 4,
            resync,
            backoff: Backoff {
                base: Duration::from_millis(100),
                cap: Duration::from_secs(10),
            },
        };
        let h = tokio::spawn(run(
            store,
            vec![r.clone() as Arc<dyn Reconciler>],
            rx,
            cfg,
            Arc::new(ControllerMetrics::default()),
        ));
        tokio::time::sleep(for_).await;
        // The reconciler holds a sender: stop it by aborting.
        h.abort();
        drop(tx);
        let runs = r.runs.lock().unwrap().clone();
        runs.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// Defect 1 of issue 11: a reconcile's own status write (and a runtime event, and a resync
    /// every 50 ms) re-ran a failed reconcile at once; the backoff never applied.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backoff_holds_against_own_writes_resyncs_and_runtime_events_regression() {
        let gaps = self_writing_runs(
            || Err(ReconcileError::retry("SourceUnavailable", "404")),
            Duration::from_millis(1700),
            Duration::from_millis(50),
            true,
        )
        .await;
        // Retries after 100, 200, 400, 800 ms (±20%).
        assert!((3..=5).contains(&gaps.len()), "{gaps:?}");
        for (i, g) in gaps.iter().take(4).enumerate() {
            let nominal = Duration::from_millis(100 << i);
            assert!(
                *g >= nominal.mul_f64(0.8),
                "retry {} after {g:?}, nominal {nominal:?}: {gaps:?}",
                i + 1
            );
        }
    }

    /// Defect 1 of issue 11: a Stalled object was reconciled again and again by its own writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_object_is_not_reconciled_again_by_its_own_writes_regression() {
        let gaps = self_writing_runs(
            || Err(ReconcileError::stalled("DigestMismatch", "bytes differ")),
            Duration::from_millis(600),
            Duration::from_millis(50),
            true,
        )
        .await;
        assert!(gaps.is_empty(), "ran again after stalling: {gaps:?}");
    }

    /// A reconcile that asks to be requeued is not run sooner by its own writes (a runtime event
    /// is a reason to look sooner, and the resync may too).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_requeue_is_not_cut_short_by_own_writes() {
        let gaps = self_writing_runs(
            || Ok(Action::Requeue(Duration::from_millis(300))),
            Duration::from_millis(1000),
            Duration::from_secs(3600),
            false,
        )
        .await;
        assert!((2..=3).contains(&gaps.len()), "{gaps:?}");
        for g in &gaps {
            assert!(*g >= Duration::from_millis(300), "{gaps:?}");
        }
    }
}
