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

/// Why an object is woken, strongest last. The queue treats them differently so that a reconcile
/// that failed keeps its backoff and a Stalled object stays quiet until something relevant changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Wake {
    /// The periodic resync, or a runtime event about the object's workload: skips Stalled
    /// objects and waits out a backoff.
    Look,
    /// Something the object depends on changed: wakes a Stalled object, but waits out a backoff.
    Related,
    /// The object's own desired state changed (spec, deletion, finalizers, labels): forgets the
    /// backoff and the stall, and runs now.
    Changed,
}

/// The queue. Not thread-safe by itself: the scheduler task owns it.
///
/// # Guarantees
/// - A key is never handed out twice at once; a wake while it runs is kept and applied when it
///   ends (the strongest one, if several).
/// - After a failure the key is not run again before its backoff ends, except on
///   [`Wake::Changed`]: the 1st, 2nd, 3rd retry come `base`, `2·base`, `4·base` (±20%) apart.
/// - A Stalled key is run again only on [`Wake::Related`] or [`Wake::Changed`].
#[derive(Debug, Default)]
pub struct WorkQueue {
    due: BTreeMap<Key, Instant>,
    running: HashSet<Key>,
    /// Objects woken while running: applied as soon as the current reconcile ends.
    dirty: HashMap<Key, Wake>,
    attempts: HashMap<Key, u32>,
    /// Until when a failed key waits.
    backing_off: HashMap<Key, Instant>,
    stalled: HashSet<Key>,
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

    /// Wakes `key` for `why` (see [`Wake`]).
    pub fn wake(&mut self, key: Key, why: Wake) {
        if self.running.contains(&key) {
            let w = self.dirty.entry(key).or_insert(why);
            *w = (*w).max(why);
            return;
        }
        let now = Instant::now();
        match why {
            Wake::Changed => {
                self.attempts.remove(&key);
                self.backing_off.remove(&key);
                self.stalled.remove(&key);
                self.due.insert(key, now);
            }
            Wake::Related | Wake::Look => {
                if why == Wake::Look && self.stalled.contains(&key) {
                    return;
                }
                self.stalled.remove(&key);
                let at = self.backing_off.get(&key).map_or(now, |b| (*b).max(now));
                self.schedule(key, at);
            }
        }
    }

    /// Schedules `key` at `at`, unless it is already due sooner.
    fn schedule(&mut self, key: Key, at: Instant) {
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

    /// Records the end of a reconcile: success resets the backoff; failure schedules a retry;
    /// a stall waits for a relevant change. A wake during the run is applied afterwards.
    pub fn finish(&mut self, key: &Key, result: Finish) {
        self.running.remove(key);
        let now = Instant::now();
        match result {
            Finish::Ok(requeue) => {
                self.attempts.remove(key);
                self.backing_off.remove(key);
                self.stalled.remove(key);
                if let Some(after) = requeue {
                    self.schedule(key.clone(), now + after);
                }
            }
            Finish::Retry => {
                let a = self.attempts.entry(key.clone()).or_insert(0);
                self.seed = self.seed.wrapping_add(1);
                let delay = self.backoff.delay(*a, self.seed);
                *a = a.saturating_add(1);
                self.backing_off.insert(key.clone(), now + delay);
                // The backoff wins over anything scheduled sooner.
                self.due.insert(key.clone(), now + delay);
            }
            Finish::Stalled => {
                // Will not progress without a change: wait for one.
                self.attempts.remove(key);
                self.backing_off.remove(key);
                self.due.remove(key);
                self.stalled.insert(key.clone());
            }
        }
        if let Some(why) = self.dirty.remove(key) {
            self.wake(key.clone(), why);
        }
    }

    pub fn forget(&mut self, key: &Key) {
        self.due.remove(key);
        self.attempts.remove(key);
        self.backing_off.remove(key);
        self.stalled.remove(key);
    }

    pub fn depth(&self) -> usize {
        self.due.len()
    }

    pub fn attempts(&self, key: &Key) -> u32 {
        self.attempts.get(key).copied().unwrap_or(0)
    }

    pub fn is_stalled(&self, key: &Key) -> bool {
        self.stalled.contains(key)
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
        q.wake(k("a"), Wake::Changed);
        let now = Instant::now();
        assert_eq!(q.take_due(now, 10), vec![k("a")]);
        q.wake(k("a"), Wake::Related);
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
        q.wake(k("a"), Wake::Changed);
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
        q.wake(k("a"), Wake::Changed);
        q.take_due(Instant::now(), 10);
        q.finish(&k("a"), Finish::Stalled);
        assert_eq!(q.next_due(), None);
        q.wake(k("a"), Wake::Look);
        assert_eq!(
            q.next_due(),
            None,
            "the resync leaves a Stalled object alone"
        );
        q.wake(k("a"), Wake::Related);
        assert!(q.next_due().is_some());
    }

    /// Defect 1 of issue 11: a wake during a failed reconcile (its own status write, a resync, a
    /// runtime event) re-ran it at once, so the backoff never applied.
    #[test]
    fn backoff_holds_against_wakes_during_and_after_the_run_regression() {
        let base = Duration::from_secs(10);
        let mut q = WorkQueue::new(Backoff {
            base,
            cap: Duration::from_secs(300),
        });
        q.wake(k("a"), Wake::Changed);
        for attempt in 0..3u32 {
            let t0 = Instant::now();
            assert_eq!(q.take_due(t0 + Duration::from_secs(3600), 10).len(), 1);
            // Woken while it runs (a status write, a runtime event) and right after (a resync).
            q.wake(k("a"), Wake::Related);
            q.finish(&k("a"), Finish::Retry);
            q.wake(k("a"), Wake::Look);
            q.wake(k("a"), Wake::Related);
            let next = q.next_due().expect("a retry is scheduled");
            let nominal = base * (1 << attempt);
            assert!(
                next >= t0 + nominal.mul_f64(0.8),
                "retry {} came after {:?}, nominal {nominal:?}",
                attempt + 1,
                next - t0
            );
            assert!(next <= Instant::now() + nominal.mul_f64(1.2));
            assert!(
                q.take_due(Instant::now(), 10).is_empty(),
                "not before the backoff ends"
            );
        }
        // A change of the object itself runs it now and forgets the backoff.
        q.wake(k("a"), Wake::Changed);
        assert_eq!(q.take_due(Instant::now(), 10), vec![k("a")]);
        q.finish(&k("a"), Finish::Retry);
        assert_eq!(q.attempts(&k("a")), 1);
    }

    /// Defect 1 of issue 11: a Stalled object woken by its own status write during the run was
    /// reconciled again and again.
    #[test]
    fn a_stalled_object_woken_by_a_resync_during_its_run_stays_quiet_regression() {
        let mut q = WorkQueue::new(Backoff::default());
        q.wake(k("a"), Wake::Changed);
        q.take_due(Instant::now(), 10);
        q.wake(k("a"), Wake::Look);
        q.finish(&k("a"), Finish::Stalled);
        assert!(q.is_stalled(&k("a")));
        assert_eq!(q.next_due(), None);
    }
}
