//! Plugin commands and workflows over HTTP:
//! `GET /api/v1/plugins/{name}/commands`, `POST /api/v1/plugins/{name}/commands/{id}`,
//! `GET /api/v1/workflows`, `POST|GET /api/v1/workflows/{name}/runs`,
//! `GET /api/v1/workflow-runs[/{id}]`. The work is `control::workflows`'; this maps it to HTTP
//! (errors as Kubernetes `Status` bodies: 404 unknown, 409 not active, 400 bad body).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiContext;
use super::resources::ApiError;
use crate::api::Kind;
use crate::control::plugins::{ActiveCode, read_manifest_blob};
use crate::control::workflows::{DaemonIo, Runner, StartError, workflows};

/// A JSON object body as `T` (serde would take a struct from an array too); empty: the default.
fn object_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    expected: &str,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let bad = |e: String| ApiError::BadRequest(format!("expected {expected}: {e}"));
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if !v.is_object() {
        return Err(bad("the body is not a JSON object".into()));
    }
    serde_json::from_value(v).map_err(|e| bad(e.to_string()))
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::NotFound(m) => ApiError::NotFound(m),
            StartError::NotActive(m) => ApiError::Conflict(m),
            StartError::BadInput(m) => ApiError::BadRequest(m),
            StartError::Store(s) => ApiError::Store(s),
        }
    }
}

impl ApiContext {
    /// The active contributions at the store's current change counter (see `plugin_codes`).
    async fn active_codes(&self) -> Result<Arc<Vec<ActiveCode>>, ApiError> {
        let version = *self.changes.borrow();
        if let Some(a) = self.plugins.cached(version) {
            return Ok(a);
        }
        let host = self.plugins.clone();
        Ok(self
            .with_store(move |s| {
                let objects = crate::control::plugins::plugin_objects(s)?;
                Ok(host.active(version, &objects))
            })
            .await?)
    }

    fn runner(&self) -> Runner {
        Runner::new(
            self.plugins.clone(),
            // The daemon's own listener, with its token (the unix listener's context has none).
            Arc::new(DaemonIo::new(
                self.access.base_url(),
                super::read_token(&self.home),
            )),
            self.home.state_db(),
        )
    }

    /// The verified manifest of Plugin `name` (404 when there is no such Plugin; `None` when it
    /// is not Ready).
    async fn manifest_of(
        &self,
        name: &str,
    ) -> Result<Option<crate::api::plugin::ManifestSpec>, ApiError> {
        let n = name.to_string();
        let o = self.with_store(move |s| s.get(Kind::Plugin, &n)).await?;
        let ready = o
            .condition("Ready")
            .is_some_and(|(s, _, _)| s == crate::api::ConditionStatus::True);
        Ok(o.status["digest"]
            .as_str()
            .filter(|_| ready)
            .and_then(|d| read_manifest_blob(&self.home, d, name))
            .map(|m| m.spec))
    }
}

/// `GET /api/v1/plugins/{name}/commands`: the manifest's commands and which activation enables
/// each (null: none does).
pub(super) async fn list_commands(
    State(ctx): State<ApiContext>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let manifest = ctx.manifest_of(&name).await?;
    let active = ctx.active_codes().await?;
    let items: Vec<Value> = manifest
        .iter()
        .flat_map(|m| m.contributes.commands.iter())
        .map(|c| {
            let by = active.iter().find(|a| {
                a.point == crate::api::plugin::Point::Command && a.plugin == name && a.id == c.id
            });
            json!({"id": c.id, "title": c.title, "argsSchema": c.args_schema,
                   "activation": by.map(|a| a.activation.clone())})
        })
        .collect();
    Ok(
        Json(json!({"plugin": name, "ready": manifest.is_some(), "commands": items}))
            .into_response(),
    )
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct CommandBody {
    #[serde(default)]
    args: Option<Value>,
}

/// `POST /api/v1/plugins/{name}/commands/{id}` with `{"args": [...]}` (an empty body: no args).
pub(super) async fn run_command(
    State(ctx): State<ApiContext>,
    Path((name, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let b: CommandBody = object_body(&body, "{\"args\": [ ... ]}")?;
    let manifest = ctx.manifest_of(&name).await?;
    let active = ctx.active_codes().await?;
    let (host, db) = (ctx.plugins.clone(), ctx.home.state_db());
    let out = tokio::task::spawn_blocking(move || {
        crate::control::workflows::run_command(
            &host,
            &db,
            &active,
            &name,
            manifest.as_ref(),
            &id,
            b.args.unwrap_or_else(|| json!([])),
        )
    })
    .await
    .map_err(|e| ApiError::BadRequest(e.to_string()))??;
    Ok(Json(out).into_response())
}

/// `GET /api/v1/workflows`: the active workflows.
pub(super) async fn list_workflows(State(ctx): State<ApiContext>) -> Result<Response, ApiError> {
    let active = ctx.active_codes().await?;
    let items: Vec<Value> = workflows(&active)
        .into_iter()
        .map(|c| {
            let w = c.workflow.as_ref().expect("a workflow");
            json!({"name": c.id, "plugin": c.plugin, "activation": c.activation,
                   "description": w.description, "output": w.output,
                   "nodes": crate::control::workflows::order(w).iter()
                        .map(|n| json!({"id": n.id, "type": n.type_})).collect::<Vec<_>>()})
        })
        .collect();
    Ok(Json(json!({"apiVersion": "v1", "kind": "List", "items": items})).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RunBody {
    #[serde(default)]
    input: Option<Value>,
}

#[derive(Deserialize, Default)]
pub(super) struct RunQuery {
    wait: Option<bool>,
}

/// `POST /api/v1/workflows/{name}/runs` with `{"input": {...}}`: runs it and answers the
/// finished record (200, whatever the outcome), or with `?wait=false` the Pending record at once
/// (202) while it runs on.
pub(super) async fn start_run(
    State(ctx): State<ApiContext>,
    Path(name): Path<String>,
    Query(q): Query<RunQuery>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let b: RunBody = object_body(&body, "{\"input\": { ... }}")?;
    let active = ctx.active_codes().await?;
    let runner = ctx.runner();
    let (r2, a2) = (runner.clone(), active.clone());
    let (run, code) = tokio::task::spawn_blocking(move || {
        r2.prepare(&a2, &name, b.input.unwrap_or_else(|| json!({})))
    })
    .await
    .map_err(|e| ApiError::BadRequest(e.to_string()))??;
    let pending = run.clone();
    // The run goes on in its own task: a client that leaves does not stop it.
    let task = tokio::spawn(async move { runner.execute(run, code, active).await });
    if q.wait == Some(false) {
        return Ok((StatusCode::ACCEPTED, Json(pending)).into_response());
    }
    let done = task
        .await
        .map_err(|e| ApiError::BadRequest(format!("the run's task failed: {e}")))?;
    Ok(Json(done).into_response())
}

#[derive(Deserialize, Default)]
pub(super) struct RunsQuery {
    limit: Option<usize>,
}

/// `GET /api/v1/workflows/{name}/runs`: its runs, newest first (also after a restart, and for a
/// workflow no longer active).
pub(super) async fn list_runs(
    State(ctx): State<ApiContext>,
    Path(name): Path<String>,
    Query(q): Query<RunsQuery>,
) -> Result<Response, ApiError> {
    runs(ctx, Some(name), q.limit).await
}

/// `GET /api/v1/workflow-runs`: every run, newest first.
pub(super) async fn list_all_runs(
    State(ctx): State<ApiContext>,
    Query(q): Query<RunsQuery>,
) -> Result<Response, ApiError> {
    runs(ctx, None, q.limit).await
}

async fn runs(
    ctx: ApiContext,
    name: Option<String>,
    limit: Option<usize>,
) -> Result<Response, ApiError> {
    let limit = limit.unwrap_or(100).min(10_000);
    let items = ctx
        .with_store(move |s| s.workflow_runs(name.as_deref(), &[], limit))
        .await?;
    Ok(Json(json!({"apiVersion": "v1", "kind": "List", "items": items})).into_response())
}

/// `GET /api/v1/workflow-runs/{id}`.
pub(super) async fn get_run(
    State(ctx): State<ApiContext>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let i = id.clone();
    match ctx.with_store(move |s| s.workflow_run(&i)).await? {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(ApiError::NotFound(format!("no workflow run {id:?}"))),
    }
}
