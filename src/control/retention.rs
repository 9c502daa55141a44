//! Retention of the history (stack generations) and the event log, so neither grows without
//! bound. The daemon enforces it at start and then periodically.
//!
//! # Guarantees
//! - At least [`MIN_GENERATIONS`] generations are kept whatever is configured: the model garbage
//!   collection's window (`model_gc::DEFAULT_GC_GENERATIONS`, so a rollback inside it finds its
//!   blobs) and the default rollback target (the previous generation) are never dropped.
//! - Events are dropped oldest first: those last seen before the age limit, then all but the
//!   newest `events` rows (a repeated event is one row, see `store::Event`).

use std::time::Duration;

use crate::control::model_gc::DEFAULT_GC_GENERATIONS;
use crate::control::store::{Store, StoreError};

/// The fewest generations ever kept.
pub const MIN_GENERATIONS: usize = if DEFAULT_GC_GENERATIONS > 2 {
    DEFAULT_GC_GENERATIONS
} else {
    2
};

/// How much history and how many events to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Newest generations kept (raised to [`MIN_GENERATIONS`]).
    pub generations: usize,
    /// Newest event rows kept.
    pub events: usize,
    /// Events last seen longer ago than this are dropped.
    pub event_max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            generations: 50,
            events: 5000,
            event_max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What [`enforce`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub generations: usize,
    pub events: usize,
}

/// Drops what `r` does not keep.
pub fn enforce(store: &mut Store, r: &Retention) -> Result<Pruned, StoreError> {
    let generations = store.prune_generations(r.generations.max(MIN_GENERATIONS))?;
    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(r.event_max_age).unwrap_or(chrono::Duration::MAX);
    let events = store.prune_events(
        &cutoff.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        r.events,
    )?;
    Ok(Pruned {
        generations,
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::decode::{InputFile, decode_files};
    use crate::control::store::{ApplyItem, ApplyRequest, EventType};

    fn apply_model(store: &mut Store, n: usize) {
        let text = format!(
            "apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata: {{name: m}}\nspec: {{source: /m{n}.gguf}}\n"
        );
        let items = decode_files(&[InputFile {
            name: "m.yaml".into(),
            bytes: text.into(),
        }])
        .unwrap()
        .into_iter()
        .map(|d| ApplyItem {
            desired: d,
            source: "t".into(),
            expected_resource_version: None,
        })
        .collect();
        store
            .apply(&ApplyRequest {
                items,
                ..Default::default()
            })
            .unwrap();
    }

    /// Defect 15 of issue 11: history and events grew without bound.
    #[test]
    fn history_and_events_are_bounded_but_the_gc_and_rollback_windows_stay_regression() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state.db")).unwrap();
        for n in 0..30 {
            apply_model(&mut store, n);
        }
        for n in 0..40 {
            // 40 distinct messages (words, not numbers: numbers are one series).
            let msg = format!("event {}", "x".repeat(n + 1));
            store
                .record_event("Model", "m", EventType::Normal, "Tested", &msg)
                .unwrap();
        }
        let r = Retention {
            generations: 10,
            events: 25,
            event_max_age: Duration::from_secs(3600),
        };
        let p = enforce(&mut store, &r).unwrap();
        assert_eq!(p.generations, 20);
        let h = store.history().unwrap();
        assert_eq!(
            h.iter().map(|g| g.number).collect::<Vec<_>>(),
            (21..=30).collect::<Vec<_>>()
        );
        let ev = store.events(None, 0, 1000).unwrap();
        assert_eq!(ev.len(), 25);
        assert_eq!(
            ev.last().unwrap().message,
            format!("event {}", "x".repeat(40))
        );
        // A rollback to the previous generation still works; asking for 1 keeps the GC window.
        store.rollback(None).unwrap();
        enforce(
            &mut store,
            &Retention {
                generations: 1,
                ..r
            },
        )
        .unwrap();
        assert_eq!(store.history().unwrap().len(), MIN_GENERATIONS);
        store.rollback(None).unwrap();
        // Events older than the age limit go.
        std::thread::sleep(Duration::from_millis(5));
        enforce(
            &mut store,
            &Retention {
                event_max_age: Duration::ZERO,
                ..r
            },
        )
        .unwrap();
        assert!(store.events(None, 0, 1000).unwrap().is_empty());
    }
}
