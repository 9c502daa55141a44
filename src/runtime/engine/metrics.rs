//! Counters of the engine, rendered as Prometheus text on `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the request latency histogram.
const BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Nanoseconds the inference thread spent in llama.cpp decode calls.
    pub decode_nanos: AtomicU64,
    pub slots_busy: AtomicU64,
    pub queued: AtomicU64,
    pub loaded: AtomicU64,
}

impl Metrics {
    /// Counts a finished request (any status) of an endpoint.
    pub fn request(&self, endpoint: &'static str, status: u16, took: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((endpoint, status)).or_default() += 1;
        }
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn render(&self, model: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP las_engine_requests_total Requests answered, by endpoint and HTTP status.\n# TYPE las_engine_requests_total counter"
        );
        if let Ok(m) = self.requests.lock() {
            for ((endpoint, status), n) in m.iter() {
                let _ = writeln!(
                    s,
                    "las_engine_requests_total{{endpoint=\"{endpoint}\",code=\"{status}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP las_engine_request_duration_seconds Time from request to last byte of the answer.\n# TYPE las_engine_request_duration_seconds histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "las_engine_request_duration_seconds_bucket{{le=\"{b}\"}} {}",
                self.latency_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "las_engine_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}\nlas_engine_request_duration_seconds_sum {}\nlas_engine_request_duration_seconds_count {count}",
            self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let counters = [
            (
                "las_engine_prompt_tokens_total",
                "Prompt tokens evaluated.",
                "counter",
                self.prompt_tokens.load(Ordering::Relaxed) as f64,
            ),
            (
                "las_engine_completion_tokens_total",
                "Tokens generated.",
                "counter",
                self.completion_tokens.load(Ordering::Relaxed) as f64,
            ),
            (
                "las_engine_decode_seconds_total",
                "Time spent in llama.cpp decode calls.",
                "counter",
                self.decode_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            ),
            (
                "las_engine_slots_busy",
                "Slots decoding a request now.",
                "gauge",
                self.slots_busy.load(Ordering::Relaxed) as f64,
            ),
            (
                "las_engine_requests_queued",
                "Requests waiting for a slot.",
                "gauge",
                self.queued.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, help, kind, v) in counters {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        let _ = writeln!(
            s,
            "# HELP las_engine_model_loaded 1 once the model is loaded.\n# TYPE las_engine_model_loaded gauge\nlas_engine_model_loaded{{model=\"{}\"}} {}",
            model.replace('\\', "\\\\").replace('"', "\\\""),
            self.loaded.load(Ordering::Relaxed)
        );
        s
    }
}
