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
use crate::api::{ConditionStatus, Kind};
use crate::control::store::StoredObject;

/// The longest a cached route table is used without re-reading the store.
pub const ROUTE_TTL: Duration = Duration::from_secs(2);

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
            .with_store(|s| s.list(Some(Kind::Module), &BTreeMap::new()))
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
    let Some(Route {
        endpoint,
        module,
        model: served,
    }) = routes.by_model.get(&model)
    else {
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
    // Asked by module name: the engine knows the model by its own name.
    let body = if *served != model {
        request["model"] = Value::String(served.clone());
        Bytes::from(request.to_string())
    } else {
        body
    };
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
