//! The work queue of the controllers: one entry per object, due times, exponential backoff with
//! jitter, and the rule that one object is never reconciled twice at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::api::Kind;

/// The identity of an object in the queue.
pub type Key = (Kind, String);

/// Backoff: `base * 2^attempts`, capped, with ±20% jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    pub fn delay(&self, attempts: u32, jitter_seed: u64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempts.min(20));
        let d = exp.min(self.cap);
        // Deterministic per-seed jitter in [-20%, +20%): no RNG state to share between tasks.
        let frac = (splitmix(jitter_seed) % 4000) as f64 / 10000.0 - 0.2;
        d.mul_f64(1.0 + frac)
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E3779B97F4A7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D049BB133111EB);
    x ^ (x >> 31)
}

/// The queue. Not thread-safe by itself: the scheduler task owns it.
#[derive(Debug, Default)]
pub struct WorkQueue {
    due: BTreeMap<Key, Instant>,
    running: HashSet<Key>,
    /// Objects triggered while running: run again as soon as the current reconcile ends.
    dirty: HashSet<Key>,
    attempts: HashMap<Key, u32>,
    backoff: Backoff,
    seed: u64,
}

impl WorkQueue {
    pub fn new(backoff: Backoff) -> Self {
        WorkQueue {
            backoff,
            ..Default::default()
        }
    }

    /// Schedules `key` now (or keeps an earlier due time).
    pub fn trigger(&mut self, key: Key) {
        self.schedule(key, Instant::now());
    }

    /// Schedules `key` at `at`, unless it is already due sooner.
    pub fn schedule(&mut self, key: Key, at: Instant) {
        if self.running.contains(&key) {
            if at <= Instant::now() {
                self.dirty.insert(key);
            } else {
                self.due
                    .entry(key)
                    .and_modify(|d| *d = (*d).min(at))
                    .or_insert(at);
            }
            return;
        }
        self.due
            .entry(key)
            .and_modify(|d| *d = (*d).min(at))
            .or_insert(at);
    }

    /// Takes every due key that is not running and marks it running.
    pub fn take_due(&mut self, now: Instant, max: usize) -> Vec<Key> {
        let ready: Vec<Key> = self
            .due
            .iter()
            .filter(|(k, at)| **at <= now && !self.running.contains(*k))
            .map(|(k, _)| k.clone())
            .take(max)
            .collect();
        for k in &ready {
            self.due.remove(k);
            self.running.insert(k.clone());
        }
        ready
    }

    /// The next time something becomes due (for the scheduler's sleep).
    pub fn next_due(&self) -> Option<Instant> {
        self.due
            .iter()
            .filter(|(k, _)| !self.running.contains(*k))
            .map(|(_, at)| *at)
            .min()
    }

    /// Records the end of a reconcile: success resets the backoff; failure schedules a retry.
    /// `requeue_after` is the reconciler's own request on success.
    pub fn finish(&mut self, key: &Key, result: Finish) {
        self.running.remove(key);
        let now = Instant::now();
        match result {
            Finish::Ok(requeue) => {
                self.attempts.remove(key);
                if let Some(after) = requeue {
                    self.schedule(key.clone(), now + after);
                }
            }
            Finish::Retry => {
                let a = self.attempts.entry(key.clone()).or_insert(0);
                self.seed = self.seed.wrapping_add(1);
                let delay = self.backoff.delay(*a, self.seed);
                *a = a.saturating_add(1);
                self.schedule(key.clone(), now + delay);
            }
            Finish::Stalled => {
                // Will not progress without a change: wait for a trigger.
                self.attempts.remove(key);
            }
        }
        if self.dirty.remove(key) {
            self.schedule(key.clone(), now);
        }
    }

    pub fn forget(&mut self, key: &Key) {
        self.due.remove(key);
        self.attempts.remove(key);
    }

    pub fn depth(&self) -> usize {
        self.due.len()
    }

    pub fn attempts(&self, key: &Key) -> u32 {
        self.attempts.get(key).copied().unwrap_or(0)
    }
}

/// How a reconcile ended, as the queue sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Finish {
    Ok(Option<Duration>),
    Retry,
    Stalled,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: &str) -> Key {
        (Kind::Module, n.to_string())
    }

    #[test]
    fn never_runs_one_key_twice_at_once() {
        let mut q = WorkQueue::new(Backoff::default());
        q.trigger(k("a"));
        let now = Instant::now();
        assert_eq!(q.take_due(now, 10), vec![k("a")]);
        q.trigger(k("a"));
        assert!(q.take_due(Instant::now(), 10).is_empty(), "a is running");
        q.finish(&k("a"), Finish::Ok(None));
        assert_eq!(
            q.take_due(Instant::now(), 10),
            vec![k("a")],
            "the trigger during the run is kept"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
        };
        let d: Vec<f64> = (0..12).map(|a| b.delay(a, 7).as_secs_f64()).collect();
        assert!(d[1] > d[0] && d[4] > d[3]);
        assert!(d[11] <= 360.0 && d[11] >= 240.0, "{d:?}");
        for a in 0..10 {
            let x = b.delay(a, a as u64 * 31).as_secs_f64();
            let nominal = (1u64 << a).min(300) as f64;
            assert!(x >= nominal * 0.8 && x < nominal * 1.2, "{a}: {x}");
        }
    }

    #[test]
    fn failures_back_off_and_success_resets() {
        let mut q = WorkQueue::new(Backoff::default());
        q.trigger(k("a"));
        for expected in 1..4 {
            let now = Instant::now() + Duration::from_secs(3600);
            assert_eq!(q.take_due(now, 10).len(), 1);
            q.finish(&k("a"), Finish::Retry);
            assert_eq!(q.attempts(&k("a")), expected);
        }
        q.take_due(Instant::now() + Duration::from_secs(3600), 10);
        q.finish(&k("a"), Finish::Ok(None));
        assert_eq!(q.attempts(&k("a")), 0);
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn stalled_waits_for_a_change() {
        let mut q = WorkQueue::new(Backoff::default());
        q.trigger(k("a"));
        q.take_due(Instant::now(), 10);
        q.finish(&k("a"), Finish::Stalled);
        assert_eq!(q.next_due(), None);
        q.trigger(k("a"));
        assert!(q.next_due().is_some());
    }
}
