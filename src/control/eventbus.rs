//! The event bus (seam `eventBus`): every event recorded in the store's durable log, delivered to
//! the active event sinks.
//!
//! The bus follows the log by id, woken by the store's change counter (like the API's event
//! stream), and hands each event to every active activation with a sink whose filters match, through
//! a bounded queue per activation. A worker per activation empties its queue, calling the sinks
//! on the blocking pool.
//!
//! # Guarantees
//! - Delivery never blocks anything else: the store's lock is held only to read the log, calls run
//!   off it and off the reconcile path, and a full queue drops its **oldest** event, counted as
//!   `dropped` in the activation's statistics (copied into its `status.stats`).
//! - Sinks fail open: a failing sink only counts failures, opens its breaker (its events are then
//!   skipped, also counted as `dropped`) and records one Warning event per opening, with source
//!   `eventBus`. Events of source `eventBus` are never delivered to a sink, so a failing sink cannot
//!   feed itself (or another sink) in a loop.
//! - A sink sees metadata only (`id`, `type`, `reason`, `involvedObject`, `time`,
//!   `firstTimestamp`, `count`, `source`) unless its activation grants `content`; then also the
//!   `message`.
//!
//! # Caveats
//! - Events recorded before the daemon started are not delivered; an event repeated (its count
//!   grows) is delivered again with the new count, as the log moves it to a new id.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use crate::api::plugin::{EventSink, Point};
use crate::control::controllers::SharedStore;
use crate::control::plugins::{ActiveCode, PluginHost, plugin_objects};
use crate::control::store::{Event, EventType};

/// The source of the events the bus records about its sinks; never delivered to a sink.
pub const BUS_SOURCE: &str = "eventBus";

/// The events waiting for one activation's sinks.
struct SinkQueue {
    activation: String,
    events: Mutex<VecDeque<Event>>,
    capacity: Mutex<usize>,
    codes: Mutex<Vec<ActiveCode>>,
    wake: Notify,
    closed: std::sync::atomic::AtomicBool,
}

impl SinkQueue {
    /// Queues `e`, dropping the oldest events beyond the capacity; returns how many it dropped.
    fn push(&self, e: Event) -> u64 {
        let cap = *self.capacity.lock().unwrap_or_else(|p| p.into_inner());
        let mut q = self.events.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back(e);
        let mut dropped = 0;
        while q.len() > cap.max(1) {
            q.pop_front();
            dropped += 1;
        }
        drop(q);
        self.wake.notify_one();
        dropped
    }

    fn pop(&self) -> Option<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }
}

/// Whether a sink's filters let `e` through (empty filters match everything).
pub fn matches(sink: &EventSink, e: &Event) -> bool {
    let type_ = match e.type_ {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    };
    (sink.kinds.is_empty() || sink.kinds.iter().any(|k| k == &e.kind))
        && (sink.reasons.is_empty() || sink.reasons.iter().any(|r| r == &e.reason))
        && (sink.types.is_empty() || sink.types.iter().any(|t| t.as_str() == type_))
}

/// What a sink is handed for `e`: metadata, and the message only with `content`.
pub fn sink_input(e: &Event, content: bool, config: &Value) -> Value {
    let mut event = json!({
        "id": e.id,
        "type": e.type_,
        "reason": e.reason,
        "involvedObject": {"kind": e.kind, "name": e.name},
        "time": e.time,
        "firstTimestamp": e.first_timestamp,
        "count": e.count,
    });
    if let Some(s) = &e.source {
        event["source"] = json!(s);
    }
    if content {
        event["message"] = json!(e.message);
    }
    json!({"event": event, "config": config})
}

/// Follows the event log until `changes` closes, delivering to the active sinks.
pub async fn run(store: SharedStore, host: Arc<PluginHost>, mut changes: watch::Receiver<u64>) {
    let mut after = store
        .with(|s| s.events(None, 0, 1))
        .await
        .ok()
        .and_then(|e| e.last().map(|e| e.id))
        .unwrap_or(0);
    let mut queues: HashMap<String, Arc<SinkQueue>> = HashMap::new();
    loop {
        let version = *changes.borrow_and_update();
        let active = match host.cached(version) {
            Some(a) => a,
            None => match store.with(|s| plugin_objects(s)).await {
                // Building compiles modules: off the runtime's threads.
                Ok(objects) => {
                    let h = host.clone();
                    tokio::task::spawn_blocking(move || h.active(version, &objects))
                        .await
                        .unwrap_or_default()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event bus: cannot read the plugin activations");
                    Arc::new(Vec::new())
                }
            },
        };
        sync_queues(&mut queues, &active, &store, &host);
        let a = after;
        match store.with(move |s| s.events(None, a, 10_000)).await {
            Ok(events) => {
                for e in events {
                    after = after.max(e.id);
                    if e.source.as_deref() == Some(BUS_SOURCE) {
                        continue;
                    }
                    for q in queues.values() {
                        let wanted = q
                            .codes
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .iter()
                            .any(|c| c.sink.as_ref().is_some_and(|s| matches(s, &e)));
                        if wanted {
                            let dropped = q.push(e.clone());
                            if dropped > 0 {
                                host.count_sink(&q.activation, 0, dropped);
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "event bus: cannot read the event log"),
        }
        if changes.changed().await.is_err() {
            break;
        }
    }
    for q in queues.values() {
        q.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        q.wake.notify_one();
    }
}

/// One queue (and worker) per activation with an active sink; gone activations' workers end.
fn sync_queues(
    queues: &mut HashMap<String, Arc<SinkQueue>>,
    active: &[ActiveCode],
    store: &SharedStore,
    host: &Arc<PluginHost>,
) {
    let mut by_activation: HashMap<&str, Vec<ActiveCode>> = HashMap::new();
    for c in active.iter().filter(|c| c.point == Point::EventSink) {
        by_activation
            .entry(c.activation.as_str())
            .or_default()
            .push(c.clone());
    }
    queues.retain(|name, q| {
        let keep = by_activation.contains_key(name.as_str());
        if !keep {
            q.closed.store(true, std::sync::atomic::Ordering::SeqCst);
            q.wake.notify_one();
        }
        keep
    });
    for (name, codes) in by_activation {
        let capacity = codes
            .iter()
            .filter_map(|c| c.sink.as_ref())
            .map(|s| s.queue_size.unwrap_or(EventSink::DEFAULT_QUEUE) as usize)
            .max()
            .unwrap_or(EventSink::DEFAULT_QUEUE as usize);
        match queues.get(name) {
            Some(q) => {
                *q.codes.lock().unwrap_or_else(|p| p.into_inner()) = codes;
                *q.capacity.lock().unwrap_or_else(|p| p.into_inner()) = capacity;
            }
            None => {
                let q = Arc::new(SinkQueue {
                    activation: name.to_string(),
                    events: Mutex::default(),
                    capacity: Mutex::new(capacity),
                    codes: Mutex::new(codes),
                    wake: Notify::new(),
                    closed: Default::default(),
                });
                queues.insert(name.to_string(), q.clone());
                let span = tracing::info_span!("event_sink", activation = %name);
                tokio::spawn(tracing::Instrument::instrument(
                    worker(q, store.clone(), host.clone()),
                    span,
                ));
            }
        }
    }
}

/// Empties one activation's queue, one event at a time, into each of its matching sinks.
async fn worker(q: Arc<SinkQueue>, store: SharedStore, host: Arc<PluginHost>) {
    loop {
        let Some(e) = q.pop() else {
            if q.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            q.wake.notified().await;
            continue;
        };
        let codes = q.codes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for c in codes {
            if !c.sink.as_ref().is_some_and(|s| matches(s, &e)) {
                continue;
            }
            if host.breaker_open(&c.activation) {
                // Skipped while the breaker is open: lost for this sink, and counted.
                host.count_sink(&c.activation, 0, 1);
                continue;
            }
            let input = sink_input(&e, c.content, &c.config);
            let (h, code) = (host.clone(), c.clone());
            let r = tokio::task::spawn_blocking(move || h.call(&code, &input))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            match r {
                Ok(_) => host.count_sink(&c.activation, 1, 0),
                Err(err) => {
                    tracing::debug!(activation = %c.activation, sink = %c.id, error = %err, "event sink failed");
                    if host.breaker_open(&c.activation) {
                        let (name, id) = (c.activation.clone(), c.id.clone());
                        let message = format!(
                            "event sink {id} failed {} times in a row; its events are skipped for {} s (last error: {err})",
                            crate::control::plugins::BREAKER_THRESHOLD,
                            crate::control::plugins::BREAKER_OPEN.as_secs()
                        );
                        let r = store
                            .with(move |s| {
                                s.record_event_from(
                                    BUS_SOURCE,
                                    crate::api::Kind::PluginActivation.as_str(),
                                    &name,
                                    EventType::Warning,
                                    "SinkFailing",
                                    &message,
                                )
                            })
                            .await;
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "event bus: cannot record an event");
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::plugin::SinkEventType;

    fn event(kind: &str, reason: &str, type_: EventType) -> Event {
        Event {
            id: 7,
            time: "2026-01-01T00:00:00.000Z".into(),
            kind: kind.into(),
            name: "web".into(),
            type_,
            reason: reason.into(),
            message: "secret".into(),
            count: 2,
            first_timestamp: "2026-01-01T00:00:00.000Z".into(),
            last_timestamp: "2026-01-01T00:00:00.000Z".into(),
            source: None,
        }
    }

    fn sink() -> EventSink {
        EventSink {
            id: "s".into(),
            entry: "on_event".into(),
            kinds: vec![],
            reasons: vec![],
            types: vec![],
            queue_size: None,
            config_schema: None,
        }
    }

    #[test]
    fn empty_filters_match_everything_and_filters_are_anded() {
        let e = event("Module", "Ready", EventType::Normal);
        assert!(matches(&sink(), &e));
        let s = EventSink {
            kinds: vec!["Module".into()],
            types: vec![SinkEventType::Warning],
            ..sink()
        };
        assert!(!matches(&s, &e));
        assert!(matches(&s, &event("Module", "Stalled", EventType::Warning)));
        let r = EventSink {
            reasons: vec!["Ready".into(), "Started".into()],
            ..sink()
        };
        assert!(matches(&r, &e));
        assert!(!matches(&r, &event("Module", "Stalled", EventType::Normal)));
    }

    #[test]
    fn metadata_only_unless_content() {
        let e = event("Module", "Ready", EventType::Normal);
        let meta = sink_input(&e, false, &Value::Null);
        assert!(meta["event"].get("message").is_none(), "{meta}");
        assert_eq!(meta["event"]["involvedObject"]["kind"], "Module");
        assert_eq!(meta["event"]["count"], 2);
        let full = sink_input(&e, true, &Value::Null);
        assert_eq!(full["event"]["message"], "secret");
    }

    #[test]
    fn a_full_queue_drops_the_oldest_first() {
        let q = SinkQueue {
            activation: "a".into(),
            events: Mutex::default(),
            capacity: Mutex::new(2),
            codes: Mutex::default(),
            wake: Notify::new(),
            closed: Default::default(),
        };
        let mut dropped = 0;
        for id in 1..=5 {
            let mut e = event("Module", "Ready", EventType::Normal);
            e.id = id;
            dropped += q.push(e);
        }
        assert_eq!(dropped, 3);
        assert_eq!(q.pop().map(|e| e.id), Some(4));
        assert_eq!(q.pop().map(|e| e.id), Some(5));
        assert!(q.pop().is_none());
    }
}
