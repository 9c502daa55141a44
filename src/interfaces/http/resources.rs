//! `/api/v1/` resources: list, get, apply (POST/PUT), delete, logs, runtime and backends.
//!
//! Bodies go through the same decoder as `lasctl apply` ([`decode_files`]) and the same store call
//! ([`Store::apply`]), so the API accepts and refuses exactly what the CLI does.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiContext;
use super::info::{LogOptions, LogsError};
use crate::api::decode::{InputErrors, InputFile, check_document_sizes, decode_files};
use crate::api::{Desired, Kind};
use crate::control::policy::{built_in_policy_objects, object_json};
use crate::control::store::{ApplyItem, ApplyRequest, StoreError};

/// The `source` recorded for objects applied through the API (prune scopes never include it).
pub const API_SOURCE: &str = "<api>";

/// A Kubernetes-style `Status` body: `{"kind":"Status","status":"Failure","reason",..,"message",..}`.
pub(crate) fn status_body(
    code: StatusCode,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> (StatusCode, Json<Value>) {
    let mut v = json!({
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code.as_u16(),
    });
    if let Some(d) = details {
        v["details"] = d;
    }
    (code, Json(v))
}

/// Every way a management request fails, mapped to one status code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    Input(#[from] InputErrors),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Logs(#[from] LogsError),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let msg = self.to_string();
        match &self {
            ApiError::Input(errs) => {
                let details = json!({"errors": errs.0.iter().map(|e| json!({
                    "file": e.file, "line": e.line, "column": e.column,
                    "field": e.path, "message": e.message,
                })).collect::<Vec<_>>()});
                status_body(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    &msg,
                    Some(details),
                )
                .into_response()
            }
            ApiError::Store(e) => {
                let (code, reason) = match e {
                    StoreError::NotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
                    StoreError::Conflict { .. } => (StatusCode::CONFLICT, "Conflict"),
                    StoreError::Deleting { .. } => (StatusCode::CONFLICT, "Deleting"),
                    StoreError::PruneEmpty { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
                    StoreError::NoSuchGeneration(_) | StoreError::NothingToRollBack => {
                        (StatusCode::NOT_FOUND, "NotFound")
                    }
                    _ => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
                };
                status_body(code, reason, &msg, None).into_response()
            }
            ApiError::BadRequest(_) => {
                status_body(StatusCode::BAD_REQUEST, "BadRequest", &msg, None).into_response()
            }
            ApiError::NotFound(_) => {
                status_body(StatusCode::NOT_FOUND, "NotFound", &msg, None).into_response()
            }
            ApiError::Conflict(_) => {
                status_body(StatusCode::CONFLICT, "Conflict", &msg, None).into_response()
            }
            ApiError::Forbidden(_) => {
                status_body(StatusCode::FORBIDDEN, "Forbidden", &msg, None).into_response()
            }
            ApiError::TooLarge(_) => status_body(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &msg,
                None,
            )
            .into_response(),
            ApiError::Logs(LogsError::NoLogs(_)) => {
                status_body(StatusCode::NOT_FOUND, "NotFound", &msg, None).into_response()
            }
            ApiError::Logs(_) => {
                status_body(StatusCode::BAD_GATEWAY, "BackendError", &msg, None).into_response()
            }
        }
    }
}

pub(crate) fn parse_kind(s: &str) -> Result<Kind, ApiError> {
    Kind::parse_loose(s).ok_or_else(|| {
        ApiError::NotFound(format!(
            "unknown kind {s:?}: known kinds are {}",
            Kind::known_list()
        ))
    })
}

fn list_value(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ListQuery {
    /// `k=v[,k=v]`
    label_selector: Option<String>,
}

fn parse_selector(s: Option<&str>) -> Result<BTreeMap<String, String>, ApiError> {
    let mut m = BTreeMap::new();
    for part in s.unwrap_or_default().split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            ApiError::BadRequest(format!(
                "labelSelector {part:?} is not of the form key=value"
            ))
        })?;
        m.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(m)
}

pub(super) async fn list(
    State(ctx): State<ApiContext>,
    Path(kind): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let kind = parse_kind(&kind)?;
    let selector = parse_selector(q.label_selector.as_deref())?;
    let mut objects = ctx
        .with_store(move |s| s.list(Some(kind), &selector))
        .await?;
    // While no Policy is stored, the shipped ones are in effect: listed as built-in, as
    // `lasctl get policies` does.
    if kind == Kind::Policy {
        let sel = parse_selector(q.label_selector.as_deref())?;
        let all = ctx
            .with_store(move |s| s.list(Some(Kind::Policy), &Default::default()))
            .await?;
        objects.extend(
            built_in_policy_objects(&all)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?
                .into_iter()
                .filter(|b| sel.iter().all(|(k, v)| b.labels.get(k) == Some(v))),
        );
    }
    Ok(Json(list_value(objects.iter().map(object_json).collect())))
}

pub(super) async fn get_one(
    State(ctx): State<ApiContext>,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let kind = parse_kind(&kind)?;
    let o = ctx
        .with_store(move |s| match s.get(kind, &name) {
            Err(StoreError::NotFound { .. }) if kind == Kind::Policy => {
                let all = s.list(Some(Kind::Policy), &Default::default())?;
                let builtin = built_in_policy_objects(&all)
                    .ok()
                    .and_then(|b| b.into_iter().find(|o| o.name.as_str() == name));
                builtin.ok_or(StoreError::NotFound { kind, name })
            }
            r => r,
        })
        .await?;
    Ok(Json(object_json(&o)))
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ApplyQuery {
    #[serde(default)]
    dry_run: bool,
    /// Expected resourceVersion of the one object in the body (0: it must not exist yet).
    resource_version: Option<u64>,
    /// The name used for the body in error messages (default `request`).
    filename: Option<String>,
}

/// One document of a body, with the resourceVersion it carried (if any).
struct Decoded {
    desired: Desired,
    expected: Option<u64>,
}

/// Decodes a body of one or more YAML or JSON documents (or a `List`) like `lasctl apply` does;
/// `metadata.resourceVersion` of a document is the expected version of that object, and the
/// other system fields and `status` (as GET returns them) are accepted and ignored.
fn decode_body(bytes: &[u8], filename: &str) -> Result<Vec<Decoded>, ApiError> {
    let file = InputFile {
        name: filename.to_string(),
        bytes: bytes.to_vec(),
    };
    // Before anything parses the whole body: one oversized document is refused by its size.
    check_document_sizes(&file)?;
    Ok(decode_files(std::slice::from_ref(&file))?
        .into_iter()
        .map(|d| Decoded {
            expected: d.resource_version,
            desired: d,
        })
        .collect())
}

/// Reads and decodes an apply body: at most [`super::HEAVY_REQUESTS`] at once (the rest wait
/// before their body is read, so memory stays bounded), at most [`super::MAX_BODY_BYTES`] each,
/// decoded on the blocking pool so the async threads keep answering.
async fn read_body(
    ctx: &ApiContext,
    body: Body,
    filename: String,
) -> Result<Vec<Decoded>, ApiError> {
    use axum::body::HttpBody;
    let too_large = || {
        ApiError::TooLarge(format!(
            "the body is over {} bytes: send at most {} bytes per document and split large sets into several applies",
            super::MAX_BODY_BYTES,
            crate::api::decode::MAX_DOC_BYTES
        ))
    };
    // A declared Content-Length over the limit is refused before anything is read (a client that
    // sent `Expect: 100-continue` never sends the body).
    if body.size_hint().lower() > super::MAX_BODY_BYTES as u64 {
        return Err(too_large());
    }
    let _permit = ctx.heavy.acquire().await.expect("never closed");
    let bytes = axum::body::to_bytes(body, super::MAX_BODY_BYTES)
        .await
        .map_err(|_| too_large())?;
    tokio::task::spawn_blocking(move || decode_body(&bytes, &filename))
        .await
        .map_err(|e| ApiError::BadRequest(format!("decoding failed: {e}")))?
}

/// The active tier's say on writes through the API: under `allowCustomWorkloads: false` no Module
/// with its own command or image is accepted, and Policies cannot be changed here (so the API
/// cannot loosen its own limits; `lasctl apply` on this machine can).
async fn check_write(
    ctx: &ApiContext,
    kinds: &[(Kind, Option<&crate::api::ModuleSpec>)],
) -> Result<(), ApiError> {
    let rt = ctx.daemon.runtime().await;
    let locked = rt
        .capabilities
        .is_some_and(|c| c.allow_custom_workloads == Some(false));
    if !locked {
        return Ok(());
    }
    let tier = rt.tier.unwrap_or_default();
    for (kind, module) in kinds {
        if *kind == Kind::Policy {
            return Err(ApiError::Forbidden(format!(
                "tier {tier} does not allow custom workloads, so Policies cannot be changed through the API: \
                 use lasctl apply on this machine"
            )));
        }
        if let Some(m) = module
            && (m.native.is_some() || m.container.is_some())
        {
            return Err(ApiError::Forbidden(format!(
                "tier {tier} allows only catalog modules (from:) and the built-in engine: \
                 a Module with spec.native or spec.container is refused"
            )));
        }
    }
    Ok(())
}

async fn apply_decoded(
    ctx: &ApiContext,
    mut docs: Vec<Decoded>,
    q: &ApplyQuery,
) -> Result<Response, ApiError> {
    let kinds: Vec<_> = docs
        .iter()
        .map(|d| match &d.desired.spec {
            crate::api::Spec::Module(m) => (Kind::Module, Some(m)),
            other => (other.kind(), None),
        })
        .collect();
    check_write(ctx, &kinds).await?;
    if let Some(rv) = q.resource_version {
        if docs.len() != 1 {
            return Err(ApiError::BadRequest(format!(
                "?resourceVersion applies to exactly one object; the body has {}: put metadata.resourceVersion in each document instead",
                docs.len()
            )));
        }
        docs[0].expected = Some(rv);
    }
    if docs.is_empty() {
        return Err(ApiError::BadRequest(
            "the body has no documents: send one or more YAML or JSON objects".into(),
        ));
    }
    let req = ApplyRequest {
        items: docs
            .into_iter()
            .map(|d| ApplyItem {
                desired: d.desired,
                source: API_SOURCE.into(),
                expected_resource_version: d.expected,
            })
            .collect(),
        prune_sources: vec![],
        allow_empty: false,
        dry_run: q.dry_run,
        description: "api".into(),
    };
    let host = ctx.plugins.clone();
    let admitted = ctx
        .with_store(move |s| {
            Ok(match crate::control::apply::admit_plugins(s, &host, &req) {
                Ok(()) => Ok(s.apply(&req)?),
                Err(crate::control::apply::ApplyError::Input(e)) => Err(e),
                Err(crate::control::apply::ApplyError::Store(e)) => return Err(e),
            })
        })
        .await?;
    let outcome = admitted?;
    let created = outcome
        .changes
        .iter()
        .any(|c| c.action == crate::control::store::Action::Created);
    let code = if created && !q.dry_run {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(json!(outcome))).into_response())
}

/// `POST /api/v1/apply`: any kinds.
pub(super) async fn apply(
    State(ctx): State<ApiContext>,
    Query(q): Query<ApplyQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = q.filename.clone().unwrap_or_else(|| "request".into());
    let docs = read_body(&ctx, body, name).await?;
    apply_decoded(&ctx, docs, &q).await
}

/// `POST /api/v1/{kind}`: every document must be of that kind.
pub(super) async fn apply_kind(
    State(ctx): State<ApiContext>,
    Path(kind): Path<String>,
    Query(q): Query<ApplyQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let kind = parse_kind(&kind)?;
    let name = q.filename.clone().unwrap_or_else(|| "request".into());
    let docs = read_body(&ctx, body, name).await?;
    if let Some(d) = docs.iter().find(|d| d.desired.kind() != kind) {
        return Err(ApiError::BadRequest(format!(
            "{}/{} posted to /api/v1/{}: post it to /api/v1/{} or /api/v1/apply",
            d.desired.kind(),
            d.desired.name,
            kind.plural(),
            d.desired.kind().plural()
        )));
    }
    apply_decoded(&ctx, docs, &q).await
}

/// `PUT /api/v1/{kind}/{name}`: exactly one document, of that kind and name.
pub(super) async fn put_one(
    State(ctx): State<ApiContext>,
    Path((kind, name)): Path<(String, String)>,
    Query(q): Query<ApplyQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let kind = parse_kind(&kind)?;
    let fname = q.filename.clone().unwrap_or_else(|| "request".into());
    let docs = read_body(&ctx, body, fname).await?;
    match docs.as_slice() {
        [d] if d.desired.kind() == kind && d.desired.name.as_str() == name => {}
        [d] => {
            return Err(ApiError::BadRequest(format!(
                "the body is {}/{} but the path names {kind}/{name}",
                d.desired.kind(),
                d.desired.name
            )));
        }
        _ => {
            return Err(ApiError::BadRequest(format!(
                "PUT takes exactly one object; the body has {}",
                docs.len()
            )));
        }
    }
    apply_decoded(&ctx, docs, &q).await
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct DeleteQuery {
    /// Precondition: delete only if the object still has this resourceVersion (else 409).
    #[serde(rename = "resourceVersion")]
    resource_version: Option<u64>,
}

/// `DELETE /api/v1/{kind}/{name}[?resourceVersion=N]`.
pub(super) async fn delete_one(
    State(ctx): State<ApiContext>,
    Path((kind, name)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<Value>, ApiError> {
    let kind = parse_kind(&kind)?;
    check_write(&ctx, &[(kind, None)]).await?;
    let outcome = ctx
        .with_store(move |s| s.delete_checked(&[(kind, name, q.resource_version)], "api delete"))
        .await?;
    Ok(Json(json!(outcome)))
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct LogsQuery {
    #[serde(default)]
    follow: bool,
    tail: Option<usize>,
}

/// `GET /api/v1/{kind}/{name}/logs?follow=&tail=`: text, streamed as the daemon produces it.
pub(super) async fn logs(
    State(ctx): State<ApiContext>,
    Path((kind, name)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let kind = parse_kind(&kind)?;
    if kind != Kind::Module {
        return Err(ApiError::BadRequest(format!(
            "only Modules have logs, not {kind}"
        )));
    }
    let n = name.clone();
    ctx.with_store(move |s| s.get(kind, &n)).await?;
    let stream = ctx
        .daemon
        .logs(
            &name,
            LogOptions {
                follow: q.follow,
                tail: q.tail,
            },
        )
        .await?;
    let stop = ctx.shutdown_signal();
    let stream = futures_util::StreamExt::take_until(stream, wait_true(stop));
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Completes when the shutdown flag turns true (or its sender is gone).
pub(crate) async fn wait_true(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

pub(super) async fn runtime(State(ctx): State<ApiContext>) -> Json<Value> {
    Json(json!(ctx.daemon.runtime().await))
}

pub(super) async fn backends(State(ctx): State<ApiContext>) -> Json<Value> {
    Json(json!(ctx.daemon.backends().await))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata:\n  name: tiny\n  resourceVersion: \"7\"\nspec:\n  source: /srv/tiny.gguf\n";

    #[test]
    fn resource_version_in_yaml_is_taken_and_lines_kept() {
        let d = decode_body(MODEL.as_bytes(), "request").unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].expected, Some(7));
        // An error below the resourceVersion line still names its own line (8).
        let bad = format!("{MODEL}  bogus: 1\n");
        let e = decode_body(bad.as_bytes(), "request")
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("request:8:"), "{e}");
    }

    #[test]
    fn resource_version_in_json_is_taken() {
        let body = br#"{"apiVersion":"localaistack.io/v1alpha1","kind":"Model","metadata":{"name":"tiny","resourceVersion":"3"},"spec":{"source":"/srv/tiny.gguf"}}"#;
        let d = decode_body(body, "request").unwrap();
        assert_eq!(d[0].expected, Some(3));
    }

    #[test]
    fn bad_resource_version_is_an_invalid_document_with_position() {
        let body = MODEL.replace("\"7\"", "seven");
        let e = decode_body(body.as_bytes(), "request").err().unwrap();
        let m = e.to_string();
        assert!(matches!(e, ApiError::Input(_)), "{m}");
        assert!(m.starts_with("request:5:"), "{m}");
        assert!(m.contains("metadata.resourceVersion"), "{m}");
    }

    #[test]
    fn system_fields_and_status_as_get_returns_them_are_accepted() {
        let body = MODEL.replace(
            "resourceVersion: \"7\"",
            "uid: abc\n  generation: 2\n  creationTimestamp: \"2026-11-30T10:00:00Z\"",
        ) + "status:\n  observedGeneration: 2\n";
        let d = decode_body(body.as_bytes(), "request").unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].expected, None);
    }
}

/// `GET /api/v1/plugins/inventory`.
pub(super) async fn plugin_inventory(State(ctx): State<ApiContext>) -> Result<Response, ApiError> {
    let objects = ctx.with_store(|s| s.list(None, &BTreeMap::new())).await?;
    let host = ctx.plugins.clone();
    let version = *ctx.changes.borrow();
    let inv = tokio::task::spawn_blocking(move || {
        let active = host.active(version, &objects);
        crate::control::plugins::inventory(&objects, &active, &host.stats())
    })
    .await
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(Json(inv).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PluginTest {
    contribution: String,
    input: Value,
    #[serde(default)]
    config: Value,
}

/// `POST /api/v1/plugins/{name}/test`: one contribution, once, recording nothing.
pub(super) async fn plugin_test(
    State(ctx): State<ApiContext>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let t: PluginTest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{\"contribution\": ID, \"input\": {{...}}, \"config\": ...}}: {e}"
        ))
    })?;
    let n = name.clone();
    let plugin = ctx.with_store(move |s| s.get(Kind::Plugin, &n)).await?;
    let home = ctx.home.clone();
    let out = tokio::task::spawn_blocking(move || {
        crate::control::plugins::test_contribution(
            &home,
            &plugin,
            &t.contribution,
            t.input,
            t.config,
            &crate::sandbox::WasmiEngine::new(),
        )
    })
    .await
    .map_err(|e| ApiError::BadRequest(e.to_string()))?
    .map_err(ApiError::BadRequest)?;
    Ok(Json(out).into_response())
}
