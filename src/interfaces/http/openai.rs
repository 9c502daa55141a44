//! `/v1/*`: one OpenAI-compatible endpoint in front of every Ready Module that serves a Model.
//!
//! # Guarantees
//! - A request is routed by its `model` field: the name of a served Model, or the name of the
//!   Module serving it. Only Modules that are Ready at their current generation and report a
//!   `status.endpoint` are served.
//! - Response bodies are passed through as they arrive (token streaming is not buffered).
//! - Errors use OpenAI's error body: `{"error":{"message","type","param","code"}}`.
//!
//! # Caveats
//! - The route table is cached and rebuilt when the daemon's change counter moves, or at the latest
//!   after [`ROUTE_TTL`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ApiContext;
use super::resources::wait_true;
use crate::api::plugin::HookStage;
use crate::api::{ConditionStatus, Kind};
use crate::control::plugins::{ActiveCode, Verdict};
use crate::control::store::StoredObject;

/// The longest a cached route table is used without re-reading the store.
pub const ROUTE_TTL: Duration = Duration::from_secs(2);

/// The most time the plugin hooks of one `/v1` request may take together (each call is also
/// bounded by its activation's limits).
pub const PLUGIN_BUDGET: Duration = Duration::from_secs(2);

/// Runs a hook chain off the async threads (a sandboxed call blocks its thread).
async fn run_hooks(
    ctx: &ApiContext,
    chain: Vec<ActiveCode>,
    key: &'static str,
    value: Value,
    context: Value,
    budget: Duration,
) -> Verdict {
    let host = ctx.plugins.clone();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&ActiveCode> = chain.iter().collect();
        host.run_chain(&refs, key, value, &context, budget)
    })
    .await
    .unwrap_or_else(|e| Verdict::Deny {
        activation: String::new(),
        id: String::new(),
        reason: format!("plugin task failed: {e}"),
        field: None,
    })
}

/// A request or response a plugin refused: 403 in OpenAI's error body, naming the activation.
fn denied(v: Verdict) -> Response {
    let Verdict::Deny {
        activation,
        id,
        reason,
        ..
    } = v
    else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "plugin verdict",
            "server_error",
            "plugin",
        );
    };
    error(
        StatusCode::FORBIDDEN,
        &format!("denied by plugin activation {activation} ({id}): {reason}"),
        "invalid_request_error",
        "plugin_denied",
    )
}

/// Where a listed id goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The base URL of the serving workload.
    pub endpoint: String,
    /// The Module that serves it.
    pub module: String,
    /// The model name the engine answers to (a request by module name is rewritten to it, so
    /// every id `/v1/models` lists works).
    pub model: String,
    /// What the served Model's GGUF header says, for plugin scopes.
    pub architecture: Option<String>,
    pub quantization: Option<String>,
}

/// A served model name (or the serving module's name) → its route.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routes {
    pub by_model: BTreeMap<String, Route>,
}

#[derive(Default)]
pub(crate) struct RouteCache {
    inner: Mutex<Option<(u64, Instant, std::sync::Arc<Routes>)>>,
}

/// The routes the objects imply: every Module whose workload is Ready and has `status.endpoint`,
/// under the Model it serves (`status.model`, else `spec.model`) and under its own name. A Model
/// served by two Modules goes to the first by name.
///
/// Readiness is the workload's, not the generation's: while a changed Module is replaced without
/// downtime, its old workload stays Ready and keeps the route until the new one takes over.
pub fn routes_from(objects: &[StoredObject]) -> Routes {
    let mut r = Routes::default();
    let gguf = |model: &str, key: &str| {
        objects
            .iter()
            .find(|o| o.kind == Kind::Model && o.name.as_str() == model)
            .and_then(|o| o.status.get("gguf")?.get(key)?.as_str().map(String::from))
    };
    for o in objects {
        if o.kind != Kind::Module || o.deleted_at.is_some() {
            continue;
        }
        let ready = matches!(o.condition("Ready"), Some((ConditionStatus::True, _, _)));
        let model = o
            .status
            .get("model")
            .or_else(|| o.spec.get("model"))
            .and_then(Value::as_str);
        let endpoint = o.status.get("endpoint").and_then(Value::as_str);
        if let (true, Some(model), Some(endpoint)) = (ready, model, endpoint) {
            let route = Route {
                endpoint: endpoint.trim_end_matches('/').to_string(),
                module: o.name.to_string(),
                model: model.to_string(),
                architecture: gguf(model, "architecture"),
                quantization: gguf(model, "quantization"),
            };
            r.by_model.entry(model.to_string()).or_insert(route.clone());
            r.by_model.insert(route.module.clone(), route);
        }
    }
    r
}

impl ApiContext {
    pub(crate) async fn routes(&self) -> Result<std::sync::Arc<Routes>, Response> {
        let version = *self.changes.borrow();
        {
            let g = self.routes.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((v, at, r)) = g.as_ref()
                && *v == version
                && at.elapsed() < ROUTE_TTL
            {
                return Ok(r.clone());
            }
        }
        let objects = self
            .with_store(|s| s.list(None, &BTreeMap::new()))
            .await
            .map_err(|e| {
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("cannot read the served models: {e}"),
                    "server_error",
                    "store_unavailable",
                )
            })?;
        let r = std::sync::Arc::new(routes_from(&objects));
        *self.routes.inner.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((version, Instant::now(), r.clone()));
        Ok(r)
    }
}

impl ApiContext {
    /// The active plugin contributions at the store's current change counter. Built again (from
    /// the store) whenever the counter moved, so a guard is never skipped for a stale cache.
    pub(crate) async fn plugin_codes(&self) -> Result<std::sync::Arc<Vec<ActiveCode>>, Response> {
        let version = *self.changes.borrow();
        if let Some(a) = self.plugins.cached(version) {
            return Ok(a);
        }
        let host = self.plugins.clone();
        self.with_store(move |s| {
            let objects = crate::control::plugins::plugin_objects(s)?;
            Ok(host.active(version, &objects))
        })
        .await
        .map_err(|e| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("cannot read the plugin activations: {e}"),
                "server_error",
                "store_unavailable",
            )
        })
    }
}

/// An OpenAI-style error response.
pub(crate) fn error(code: StatusCode, message: &str, type_: &str, err_code: &str) -> Response {
    (
        code,
        Json(json!({"error": {
            "message": message,
            "type": type_,
            "param": Value::Null,
            "code": err_code,
        }})),
    )
        .into_response()
}

pub(super) async fn models(State(ctx): State<ApiContext>) -> Response {
    let routes = match ctx.routes().await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let data: Vec<Value> = routes
        .by_model
        .iter()
        .map(|(id, r)| json!({"id": id, "object": "model", "created": 0, "owned_by": r.module}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// Hop-by-hop headers are not forwarded (RFC 9110 §7.6.1), nor is the length (the body is
/// streamed) or the client's credentials for this server.
const SKIP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
    "authorization",
];

pub(super) async fn proxy(
    State(ctx): State<ApiContext>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut request = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("the request body is not JSON: {e}"),
                "invalid_request_error",
                "invalid_json",
            );
        }
    };
    let Some(model) = request
        .get("model")
        .and_then(Value::as_str)
        .map(String::from)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "the request has no \"model\" field: name a served model (see GET /v1/models)",
            "invalid_request_error",
            "missing_model",
        );
    };
    let routes = match ctx.routes().await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let Some(route) = routes.by_model.get(&model) else {
        let served: Vec<&str> = routes.by_model.keys().map(String::as_str).collect();
        let list = if served.is_empty() {
            "none is Ready yet".to_string()
        } else {
            served.join(", ")
        };
        return error(
            StatusCode::NOT_FOUND,
            &format!("the model {model:?} is not served here; served models: {list}"),
            "invalid_request_error",
            "model_not_found",
        );
    };
    let Route {
        endpoint,
        module,
        model: served,
        ..
    } = route;
    let hooks = match ctx.plugin_codes().await {
        Ok(h) => h,
        Err(resp) => return resp,
    };
    let in_scope = |stage: HookStage| -> Vec<ActiveCode> {
        hooks
            .iter()
            .filter(|c| {
                c.stage == Some(stage)
                    && c.scope.matches(
                        Some(module),
                        Some(served),
                        route.architecture.as_deref(),
                        route.quantization.as_deref(),
                    )
            })
            .cloned()
            .collect()
    };
    let (pre, post) = (
        in_scope(HookStage::PreRequest),
        in_scope(HookStage::PostResponse),
    );
    let context = json!({"module": module, "model": served, "path": uri.path()});
    let profiles: Vec<&ActiveCode> = hooks
        .iter()
        .filter(|c| {
            c.profile.is_some()
                && c.scope.matches(
                    Some(module),
                    Some(served),
                    route.architecture.as_deref(),
                    route.quantization.as_deref(),
                )
        })
        .collect();
    let started = Instant::now();
    let mut rewritten = false;
    if !pre.is_empty() {
        match run_hooks(
            &ctx,
            pre,
            "request",
            request.clone(),
            context.clone(),
            PLUGIN_BUDGET,
        )
        .await
        {
            Verdict::Allow(r) => {
                rewritten = r != request;
                request = r;
            }
            deny => return denied(deny),
        }
    }
    for p in &profiles {
        if let Some(profile) = &p.profile {
            rewritten |= crate::control::plugins::merge_profile(&mut request, profile);
        }
    }
    // Asked by module name: the engine knows the model by its own name.
    let body = if *served != model || rewritten {
        request["model"] = Value::String(served.clone());
        Bytes::from(request.to_string())
    } else {
        body
    };
    let streamed = request.get("stream").and_then(Value::as_bool) == Some(true);
    ctx.metrics.record_served(module);
    let url = format!("{endpoint}{}", uri.path());
    let mut req = ctx.upstream.post(&url).body(body);
    for (k, v) in &headers {
        if !SKIP.contains(&k.as_str()) {
            req = req.header(k, v);
        }
    }
    let span = tracing::debug_span!("proxy", %model, %module, %url);
    let resp = match tracing::Instrument::instrument(req.send(), span).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(%model, %module, error = %e, "upstream unreachable");
            return error(
                StatusCode::BAD_GATEWAY,
                &format!("module {module} serving {model:?} did not answer at {endpoint}: {e}"),
                "server_error",
                "upstream_unreachable",
            );
        }
    };
    let mut out = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if !SKIP.contains(&k.as_str()) {
            out = out.header(k.as_str(), v.as_bytes());
        }
    }
    // Ask reverse proxies in front of us not to buffer a token stream either.
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if is_sse {
        out = out.header("x-accel-buffering", "no");
    }
    if !post.is_empty() && !streamed && resp.status().is_success() {
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    &format!("module {module} broke off its answer: {e}"),
                    "server_error",
                    "bad_upstream",
                );
            }
        };
        let Ok(answer) = serde_json::from_slice::<Value>(&body) else {
            return out.body(Body::from(body)).unwrap_or_default();
        };
        let spent = started.elapsed();
        let budget = PLUGIN_BUDGET.saturating_sub(spent);
        return match run_hooks(&ctx, post, "response", answer, context, budget).await {
            Verdict::Allow(v) => out.body(Body::from(v.to_string())).unwrap_or_default(),
            deny => denied(deny),
        };
    }
    let stream =
        futures_util::StreamExt::take_until(resp.bytes_stream(), wait_true(ctx.shutdown_signal()));
    out.body(Body::from_stream(stream)).unwrap_or_else(|e| {
        error(
            StatusCode::BAD_GATEWAY,
            &format!("bad upstream response: {e}"),
            "server_error",
            "bad_upstream",
        )
    })
}
