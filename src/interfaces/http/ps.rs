//! `GET /api/v1/ps`: what runs now, for `lasctl ps` — each Module's workload with its runtime,
//! pid or container, endpoint, start time, memory and GPU memory in use, and the requests the
//! OpenAI endpoint routed to it since the daemon started.
//!
//! Read-only; the same guard as every `/api` route (the bearer token on TCP). The measurements
//! come from the daemon's runtimes through [`super::DaemonInfo::workloads`]; this layer only adds
//! the request counts it keeps itself.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use serde_json::{Value, json};

use super::ApiContext;

/// One running (or restarting) workload of a Module.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// The Module it belongs to.
    pub module: String,
    /// The replacement slot (0, or 1 while a changed Module's new workload starts beside the old).
    pub slot: u8,
    /// `native` or `container`.
    pub runtime: String,
    /// The runtime's state, e.g. `Ready`, `Running`, `CrashLoop`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// GPU memory in use (NVML); absent where unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vram_bytes: Option<u64>,
    pub restarts: u32,
    /// Requests `/v1` routed to this Module since the daemon started.
    pub requests: u64,
}

pub(super) async fn list(State(ctx): State<ApiContext>) -> Json<Value> {
    let mut items = ctx.daemon.workloads().await;
    let served = ctx.metrics.served();
    for w in &mut items {
        // Both slots serve under the Module's name; the count is the Module's.
        w.requests = served.get(&w.module).copied().unwrap_or(0);
    }
    items.sort_by(|a, b| (&a.module, a.slot).cmp(&(&b.module, b.slot)));
    Json(json!({"kind": "WorkloadList", "items": items}))
}
