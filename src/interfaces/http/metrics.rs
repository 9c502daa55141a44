//! Counters the daemon and the server update, rendered as Prometheus text at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiContext;

/// Upper bounds (seconds) of the request latency histogram.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Shared by the daemon (reconciles, errors, queue depth, workloads) and the server (requests).
/// All methods take `&self`; put it in an `Arc`.
#[derive(Default)]
pub struct Metrics {
    reconciles: Mutex<BTreeMap<(String, &'static str), u64>>,
    queue_depth: AtomicI64,
    workloads: Mutex<BTreeMap<String, i64>>,
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    refused: Mutex<BTreeMap<String, u64>>,
    /// Requests `/v1` routed, by Module.
    served: Mutex<BTreeMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Escapes a label value for the text format.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// `/v1` routed one request to `module`.
    pub fn record_served(&self, module: &str) {
        *lock(&self.served).entry(module.to_string()).or_default() += 1;
    }

    /// Requests routed to each Module since the daemon started.
    pub fn served(&self) -> BTreeMap<String, u64> {
        lock(&self.served).clone()
    }

    /// One reconcile of an object of `kind` finished, successfully or not.
    pub fn record_reconcile(&self, kind: &str, ok: bool) {
        *lock(&self.reconciles)
            .entry((kind.to_string(), if ok { "success" } else { "error" }))
            .or_default() += 1;
    }

    /// Objects waiting in the work queue now.
    pub fn set_queue_depth(&self, n: i64) {
        self.queue_depth.store(n, Ordering::Relaxed);
    }

    /// The number of workloads in each state now (e.g. `running`, `starting`, `stopped`,
    /// `failed`); replaces the previous figures.
    pub fn set_workloads<I, S>(&self, by_state: I)
    where
        I: IntoIterator<Item = (S, i64)>,
        S: Into<String>,
    {
        let mut w = lock(&self.workloads);
        w.clear();
        w.extend(by_state.into_iter().map(|(k, v)| (k.into(), v)));
    }

    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        *lock(&self.requests)
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        let mut l = lock(&self.latency);
        let h = l.entry(route.to_string()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// A request refused before routing (foreign host or origin, no or wrong token, ...).
    pub fn record_refusal(&self, reason: &str) {
        *lock(&self.refused).entry(reason.to_string()).or_default() += 1;
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP las_reconciles_total Reconciles finished, by kind and result.\n# TYPE las_reconciles_total counter"
        );
        for ((kind, result), n) in lock(&self.reconciles).iter() {
            let _ = writeln!(
                o,
                "las_reconciles_total{{kind=\"{}\",result=\"{result}\"}} {n}",
                esc(kind)
            );
        }
        let _ = writeln!(
            o,
            "# HELP las_reconcile_errors_total Reconciles that failed, by kind.\n# TYPE las_reconcile_errors_total counter"
        );
        for ((kind, result), n) in lock(&self.reconciles).iter() {
            if *result == "error" {
                let _ = writeln!(
                    o,
                    "las_reconcile_errors_total{{kind=\"{}\"}} {n}",
                    esc(kind)
                );
            }
        }
        let _ = writeln!(
            o,
            "# HELP las_queue_depth Objects waiting to be reconciled.\n# TYPE las_queue_depth gauge\nlas_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP las_workloads Workloads by state.\n# TYPE las_workloads gauge"
        );
        for (state, n) in lock(&self.workloads).iter() {
            let _ = writeln!(o, "las_workloads{{state=\"{}\"}} {n}", esc(state));
        }
        let _ = writeln!(
            o,
            "# HELP las_http_requests_total HTTP requests, by method, route and status.\n# TYPE las_http_requests_total counter"
        );
        for ((method, route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                o,
                "las_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                esc(method),
                esc(route)
            );
        }
        let _ = writeln!(
            o,
            "# HELP las_http_refused_total Requests refused before routing, by reason.\n# TYPE las_http_refused_total counter"
        );
        for (reason, n) in lock(&self.refused).iter() {
            let _ = writeln!(
                o,
                "las_http_refused_total{{reason=\"{}\"}} {n}",
                esc(reason)
            );
        }
        let _ = writeln!(
            o,
            "# HELP las_http_request_duration_seconds Time to the response head, by route.\n# TYPE las_http_request_duration_seconds histogram"
        );
        for (route, h) in lock(&self.latency).iter() {
            let r = esc(route);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "las_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                o,
                "las_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}\nlas_http_request_duration_seconds_sum{{route=\"{r}\"}} {}\nlas_http_request_duration_seconds_count{{route=\"{r}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        o
    }
}

pub(super) async fn serve(State(ctx): State<ApiContext>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ctx.metrics.render(),
    )
        .into_response()
}

/// Records every request by its route template (never the raw path, so names do not explode the
/// label space).
pub(super) async fn track(State(ctx): State<ApiContext>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let resp = next.run(req).await;
    ctx.metrics.observe_request(
        &method,
        &route,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new();
        m.record_reconcile("Module", true);
        m.record_reconcile("Module", false);
        m.set_queue_depth(3);
        m.set_workloads([("running", 2), ("failed", 1)]);
        m.observe_request("GET", "/healthz", 200, 0.0007);
        m.record_refusal("host");
        let t = m.render();
        for want in [
            "las_reconciles_total{kind=\"Module\",result=\"success\"} 1",
            "las_reconcile_errors_total{kind=\"Module\"} 1",
            "las_queue_depth 3",
            "las_http_refused_total{reason=\"host\"} 1",
            "las_workloads{state=\"running\"} 2",
            "las_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1",
            "las_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.0005\"} 0",
            "las_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.001\"} 1",
            "las_http_request_duration_seconds_count{route=\"/healthz\"} 1",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
    }
}
