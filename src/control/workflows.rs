//! Workflows (the `ai_agent` track) and commands: plugin contributions run on demand.
//!
//! A workflow is a small acyclic graph of typed nodes (`api::plugin::Workflow`). The runner
//! resolves each node's inputs from the workflow's input and the outputs of the nodes before it,
//! runs the nodes **one at a time in topological order** (ties in manifest order; independent
//! nodes do not run in parallel), and records the run in the store after every transition.
//!
//! Node types: `generate` (a chat completion through the daemon's own `/v1`, so plugin hooks and
//! sampling profiles apply), `hook` (a code contribution of a Ready activation; `deny` fails the
//! run with its reason), `command` (a command of a Ready activation), `http` (GET or POST, only to
//! hosts the activation grants in `networkGrants`) and the plugin's own custom nodes (WASM
//! entries run with the enabling activation's module, limits and config). Generation and HTTP
//! go through the [`WorkflowIo`] seam: [`DaemonIo`] (reqwest to the daemon's own listener with
//! its token) and, in unit tests, a recording fake.
//!
//! # Guarantees
//! - A run is recorded (`Pending`) before anything runs, and rewritten after every node
//!   transition, so its record shows the state, output, timing and error of every node so far.
//! - A run that was `Pending` or `Running` when its daemon died is, at the next start,
//!   `Failed` with "interrupted: the daemon restarted" ([`fail_interrupted`]).
//! - Every finished run records one event on the enabling activation (`WorkflowSucceeded` or
//!   `WorkflowFailed`); every command run records `CommandRun` or `CommandFailed`.
//!
//! # Caveats
//! - A node's plugin call is bounded by the activation's limits; a `generate` node by
//!   [`GENERATE_TIMEOUT`], an `http` node by [`HTTP_TIMEOUT`] and [`HTTP_MAX_BYTES`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::plugin::{ManifestSpec, Point, Workflow, WorkflowNode, check_config, host_granted};
use crate::control::plugins::{ActiveCode, PluginHost};
use crate::control::store::{EventType, Store, StoreError};

pub const GENERATE_TIMEOUT: Duration = Duration::from_secs(300);
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
pub const HTTP_MAX_BYTES: usize = 1 << 20;
/// What a run that was in flight when the daemon died says.
pub const INTERRUPTED: &str = "interrupted: the daemon restarted";

/// Cycles in the manifest's workflow graphs (the resolver's Tarjan), as a field path and message.
pub fn check_graphs(m: &ManifestSpec) -> Result<(), (String, String)> {
    for (i, w) in m.contributes.workflows.iter().enumerate() {
        let graph: BTreeMap<&str, Vec<&str>> = w
            .nodes
            .iter()
            .map(|n| (n.id.as_str(), n.depends_on()))
            .collect();
        if let Some(c) = crate::control::resolver::find_cycles(&graph).first() {
            let j = w
                .nodes
                .iter()
                .position(|n| Some(&n.id) == c.first())
                .unwrap_or(0);
            return Err((
                format!("spec.contributes.workflows[{i}].nodes[{j}].inputs"),
                format!(
                    "the inputs form a cycle: {} (a workflow is an acyclic graph)",
                    c.join(" → ")
                ),
            ));
        }
    }
    Ok(())
}

/// The nodes in the order they run: topological, ties in manifest order. Assumes no cycle
/// (checked when the manifest was read).
pub fn order(w: &Workflow) -> Vec<&WorkflowNode> {
    let mut done: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    while out.len() < w.nodes.len() {
        let next = w.nodes.iter().find(|n| {
            !done.contains(&n.id.as_str()) && n.depends_on().iter().all(|d| done.contains(d))
        });
        match next {
            Some(n) => {
                done.push(&n.id);
                out.push(n);
            }
            None => break,
        }
    }
    out
}

/// A run's or a node's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl RunState {
    pub fn is_finished(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Failed)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "Pending",
            RunState::Running => "Running",
            RunState::Succeeded => "Succeeded",
            RunState::Failed => "Failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRun {
    pub id: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub state: RunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The durable record of one workflow run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowRun {
    pub id: String,
    pub workflow: String,
    pub plugin: String,
    pub activation: String,
    pub state: RunState,
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub nodes: Vec<NodeRun>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Generation and HTTP for the runner: the daemon's own `/v1` and the network.
pub trait WorkflowIo: Send + Sync {
    /// A chat completion (an OpenAI body); the answer's JSON.
    fn generate(&self, body: Value) -> BoxFuture<'_, Result<Value, String>>;
    /// GET or POST `url` (already checked against the grants); status and body (JSON when it
    /// parses, else a string).
    fn http(
        &self,
        method: &str,
        url: &str,
        body: Option<Value>,
    ) -> BoxFuture<'_, Result<(u16, Value), String>>;
}

/// The real [`WorkflowIo`]: reqwest to the daemon's own listener (with its token), and to
/// granted hosts.
pub struct DaemonIo {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl DaemonIo {
    /// `base` is the daemon's own TCP address (`http://127.0.0.1:7411`).
    pub fn new(base: String, token: Option<String>) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        DaemonIo {
            client,
            base,
            token,
        }
    }
}

async fn read_capped(resp: reqwest::Response) -> Result<(u16, Value), String> {
    use futures_util::StreamExt;
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if body.len() + chunk.len() > HTTP_MAX_BYTES {
            return Err(format!("the answer is larger than {HTTP_MAX_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    Ok((status, v))
}

impl WorkflowIo for DaemonIo {
    fn generate(&self, body: Value) -> BoxFuture<'_, Result<Value, String>> {
        Box::pin(async move {
            let mut req = self
                .client
                .post(format!("{}/v1/chat/completions", self.base))
                .timeout(GENERATE_TIMEOUT)
                .json(&body);
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.map_err(|e| e.to_string())?;
            let (status, v) = read_capped(resp).await?;
            if !(200..300).contains(&status) {
                let msg = v["error"]["message"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string());
                return Err(format!("/v1 answered {status}: {msg}"));
            }
            Ok(v)
        })
    }

    fn http(
        &self,
        method: &str,
        url: &str,
        body: Option<Value>,
    ) -> BoxFuture<'_, Result<(u16, Value), String>> {
        let (method, url) = (method.to_string(), url.to_string());
        Box::pin(async move {
            let mut req = if method == "POST" {
                self.client.post(&url)
            } else {
                self.client.get(&url)
            }
            .timeout(HTTP_TIMEOUT);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.map_err(|e| e.to_string())?;
            read_capped(resp).await
        })
    }
}

/// Why a run or a command could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotActive(String),
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs workflows: the plugin host (calls, statistics, breakers), the IO seam, the state db.
#[derive(Clone)]
pub struct Runner {
    pub host: Arc<PluginHost>,
    pub io: Arc<dyn WorkflowIo>,
    pub db: PathBuf,
    /// One connection for the records of this runner's runs (opening one per write cost more
    /// than the write).
    conn: Arc<std::sync::Mutex<Option<Store>>>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(format!("task failed: {e}")))
}

/// Records an event on the object an activation name stands for (`<plugin>/bootstrap` → the
/// Plugin). Failures to record are logged, never fatal.
pub fn activation_event(
    store: &mut Store,
    activation: &str,
    type_: EventType,
    reason: &str,
    message: &str,
) {
    let (kind, name) = match activation.strip_suffix("/bootstrap") {
        Some(p) => ("Plugin", p),
        None => ("PluginActivation", activation),
    };
    if let Err(e) = store.record_event(kind, name, type_, reason, message) {
        tracing::warn!(error = %e, activation, "cannot record the event");
    }
}

/// Every active workflow, by name.
pub fn workflows(active: &[ActiveCode]) -> Vec<&ActiveCode> {
    let mut v: Vec<&ActiveCode> = active
        .iter()
        .filter(|c| c.point == Point::Workflow && c.workflow.is_some())
        .collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

impl Runner {
    pub fn new(host: Arc<PluginHost>, io: Arc<dyn WorkflowIo>, db: PathBuf) -> Self {
        Runner {
            host,
            io,
            db,
            conn: Arc::default(),
        }
    }

    /// `f` on this runner's connection (opened on first use, dropped after an error).
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut g = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(Store::open(&self.db)?);
        }
        let r = f(g.as_mut().expect("opened"));
        if r.is_err() {
            *g = None;
        }
        r
    }

    /// Records a new run of workflow `name` (Pending) and returns it with the code to run.
    pub fn prepare(
        &self,
        active: &[ActiveCode],
        name: &str,
        input: Value,
    ) -> Result<(WorkflowRun, ActiveCode), StartError> {
        let code = active
            .iter()
            .find(|c| c.point == Point::Workflow && c.id == name && c.workflow.is_some())
            .cloned()
            .ok_or_else(|| {
                StartError::NotFound(format!(
                    "no active workflow {name:?}: a Ready PluginActivation must enable it (lasctl workflow list)"
                ))
            })?;
        if !input.is_object() {
            return Err(StartError::BadInput(
                "the workflow input must be a JSON object".into(),
            ));
        }
        let w = code.workflow.as_ref().expect("checked");
        let run = WorkflowRun {
            id: uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
            workflow: name.to_string(),
            plugin: code.plugin.clone(),
            activation: code.activation.clone(),
            state: RunState::Pending,
            input,
            output: None,
            error: None,
            nodes: order(w)
                .into_iter()
                .map(|n| NodeRun {
                    id: n.id.clone(),
                    type_: n.type_.clone(),
                    state: RunState::Pending,
                    started_at: None,
                    finished_at: None,
                    duration_ms: None,
                    output: None,
                    error: None,
                })
                .collect(),
            created_at: now(),
            finished_at: None,
            duration_ms: None,
        };
        let record = serde_json::to_value(&run).expect("serializable");
        self.with_conn(|s| s.put_workflow_run(&record))?;
        Ok((run, code))
    }

    fn save(&self, run: &WorkflowRun) {
        let record = serde_json::to_value(run).expect("serializable");
        if let Err(e) = self.with_conn(|s| s.put_workflow_run(&record)) {
            tracing::warn!(error = %e, run = %run.id, "cannot record the workflow run");
        }
    }

    /// Runs a prepared run to its end, recording every transition and the outcome event.
    pub async fn execute(
        &self,
        mut run: WorkflowRun,
        code: ActiveCode,
        active: Arc<Vec<ActiveCode>>,
    ) -> WorkflowRun {
        let started = Instant::now();
        let w = code.workflow.clone().expect("a workflow");
        run.state = RunState::Running;
        self.save_async(&run).await;
        let mut outputs: BTreeMap<String, Value> = BTreeMap::new();
        let nodes: Vec<WorkflowNode> = order(&w).into_iter().cloned().collect();
        for (i, node) in nodes.iter().enumerate() {
            let t = Instant::now();
            run.nodes[i].state = RunState::Running;
            run.nodes[i].started_at = Some(now());
            self.save_async(&run).await;
            let result = match resolve(node, &run.input, &outputs) {
                Ok(params) => self.node(&code, &active, node, params).await,
                Err(e) => Err(e),
            };
            let n = &mut run.nodes[i];
            n.finished_at = Some(now());
            n.duration_ms = Some(t.elapsed().as_millis() as u64);
            match result {
                Ok(out) => {
                    n.state = RunState::Succeeded;
                    n.output = Some(out.clone());
                    outputs.insert(node.id.clone(), out);
                }
                Err(e) => {
                    n.state = RunState::Failed;
                    n.error = Some(e.clone());
                    run.error = Some(format!("node {}: {e}", node.id));
                    break;
                }
            }
            if i + 1 < nodes.len() {
                self.save_async(&run).await;
            }
        }
        run.state = if run.error.is_some() {
            RunState::Failed
        } else {
            run.output = outputs.get(&w.output).cloned();
            RunState::Succeeded
        };
        run.finished_at = Some(now());
        run.duration_ms = Some(started.elapsed().as_millis() as u64);
        let (this, r) = (self.clone(), run.clone());
        let _ = blocking(move || {
            this.with_conn(|s| {
                s.put_workflow_run(&serde_json::to_value(&r).expect("json"))?;
                let (type_, reason, message) = match &r.error {
                    None => (
                        EventType::Normal,
                        "WorkflowSucceeded",
                        format!(
                            "workflow {} run {} succeeded in {} ms",
                            r.workflow,
                            r.id,
                            r.duration_ms.unwrap_or(0)
                        ),
                    ),
                    Some(e) => (
                        EventType::Warning,
                        "WorkflowFailed",
                        format!("workflow {} run {} failed: {e}", r.workflow, r.id),
                    ),
                };
                activation_event(s, &r.activation, type_, reason, &message);
                Ok(())
            })
            .map_err(|e| e.to_string())
        })
        .await;
        run
    }

    async fn save_async(&self, run: &WorkflowRun) {
        let (this, r) = (self.clone(), run.clone());
        let _ = tokio::task::spawn_blocking(move || this.save(&r)).await;
    }

    async fn call(&self, c: ActiveCode, input: Value) -> Result<Value, String> {
        let host = self.host.clone();
        blocking(move || host.call(&c, &input)).await
    }

    async fn node(
        &self,
        code: &ActiveCode,
        active: &[ActiveCode],
        node: &WorkflowNode,
        mut params: serde_json::Map<String, Value>,
    ) -> Result<Value, String> {
        match node.type_.as_str() {
            "generate" => {
                if let Some(p) = params.remove("prompt")
                    && !params.contains_key("messages")
                {
                    let content = match p {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    params.insert(
                        "messages".into(),
                        json!([{"role": "user", "content": content}]),
                    );
                }
                params.insert("stream".into(), Value::Bool(false));
                let resp = self.io.generate(Value::Object(params)).await?;
                let text = resp["choices"][0]["message"]["content"].clone();
                Ok(json!({"text": text, "response": resp}))
            }
            "hook" => {
                // By activation name, or the first (by priority) Ready activation of a plugin.
                let by_activation = take_str(&mut params, "activation").ok();
                let by_plugin = take_str(&mut params, "plugin").ok();
                let id = take_str(&mut params, "contribution")?;
                let c = active
                    .iter()
                    .find(|c| {
                        c.id == id
                            && c.module.is_some()
                            && by_activation.as_ref().is_none_or(|a| &c.activation == a)
                            && by_plugin.as_ref().is_none_or(|p| &c.plugin == p)
                    })
                    .cloned()
                    .ok_or_else(|| {
                        format!(
                            "no Ready activation{} enables the code contribution {id:?}{}",
                            by_activation
                                .as_ref()
                                .map(|a| format!(" {a}"))
                                .unwrap_or_default(),
                            by_plugin
                                .as_ref()
                                .map(|p| format!(" of plugin {p}"))
                                .unwrap_or_default()
                        )
                    })?;
                let activation = c.activation.clone();
                let mut input = params.clone();
                input.insert("config".into(), c.config.clone());
                let out = self.call(c, Value::Object(input)).await?;
                match out.get("action").and_then(Value::as_str) {
                    Some("allow") => Ok(Value::Object(params)),
                    Some("rewrite") => {
                        for (k, v) in out.as_object().into_iter().flatten() {
                            if k != "action" {
                                params.insert(k.clone(), v.clone());
                            }
                        }
                        Ok(Value::Object(params))
                    }
                    Some("deny") => Err(format!(
                        "denied by plugin activation {activation} ({id}): {}",
                        out.get("reason")
                            .and_then(Value::as_str)
                            .unwrap_or("denied")
                    )),
                    _ => Err(format!(
                        "plugin answered {}, expected an action of allow, rewrite or deny",
                        out
                    )),
                }
            }
            "command" => {
                let id = take_str(&mut params, "command")?;
                let plugin = match params.remove("plugin") {
                    Some(Value::String(p)) => p,
                    _ => code.plugin.clone(),
                };
                let c = active
                    .iter()
                    .find(|c| c.point == Point::Command && c.plugin == plugin && c.id == id)
                    .cloned()
                    .ok_or_else(|| {
                        format!("no Ready activation of plugin {plugin} enables the command {id:?}")
                    })?;
                let args = params.remove("args").unwrap_or_else(|| json!([]));
                self.call(c.clone(), json!({"args": args, "config": c.config}))
                    .await
            }
            "http" => {
                let url_s = take_str(&mut params, "url")?;
                let method = params
                    .get("method")
                    .and_then(Value::as_str)
                    .unwrap_or("GET")
                    .to_string();
                let url = reqwest::Url::parse(&url_s).map_err(|e| format!("url {url_s:?}: {e}"))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(format!("url {url_s:?}: only http and https are allowed"));
                }
                let host = url.host_str().unwrap_or_default().to_string();
                let port = url.port_or_known_default().unwrap_or(80);
                if !code.network.iter().any(|g| host_granted(g, &host, port)) {
                    return Err(format!(
                        "network host {host}:{port} is not granted to plugin activation {} (networkGrants: {})",
                        code.activation,
                        if code.network.is_empty() {
                            "none".to_string()
                        } else {
                            code.network.join(", ")
                        }
                    ));
                }
                let body = params.remove("body");
                let (status, body) = self.io.http(&method, url.as_str(), body).await?;
                if status >= 400 {
                    return Err(format!("{method} {url} answered {status}"));
                }
                Ok(json!({"status": status, "body": body}))
            }
            custom => {
                let entry = code
                    .custom_nodes
                    .iter()
                    .find(|(id, _)| id == custom)
                    .map(|(_, e)| e.clone())
                    .ok_or_else(|| {
                        format!("plugin {} has no custom node {custom:?}", code.plugin)
                    })?;
                let mut c = code.clone();
                c.entry = entry;
                c.id = custom.to_string();
                c.point = Point::CustomNode;
                let mut input = params;
                input.insert("config".into(), c.config.clone());
                self.call(c, Value::Object(input)).await
            }
        }
    }
}

fn take_str(p: &mut serde_json::Map<String, Value>, k: &str) -> Result<String, String> {
    match p.remove(k) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("{k} must be a string, found {other}")),
        None => Err(format!("{k} is missing")),
    }
}

/// A node's parameters: its `with`, then each input resolved over it.
pub fn resolve(
    node: &WorkflowNode,
    input: &Value,
    outputs: &BTreeMap<String, Value>,
) -> Result<serde_json::Map<String, Value>, String> {
    let mut params = node.with.clone();
    for (name, r) in &node.inputs {
        let mut parts = r.split('.');
        let head = parts.next().unwrap_or_default();
        let mut v = if head == "$input" {
            input
        } else {
            outputs
                .get(head)
                .ok_or_else(|| format!("input {name}: node {head} has no output"))?
        };
        for p in parts {
            let next = match v {
                Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get(i)),
                Value::Object(o) => o.get(p),
                _ => None,
            };
            v = next.ok_or_else(|| format!("input {name}: {r} is not there"))?;
        }
        params.insert(name.clone(), v.clone());
    }
    Ok(params)
}

/// Marks every run left `Pending` or `Running` by a daemon that died as `Failed` with
/// [`INTERRUPTED`] (its running node too), recording a `WorkflowFailed` event for each.
/// Returns how many. Called once at daemon start, before the API serves.
pub fn fail_interrupted(store: &mut Store) -> Result<usize, StoreError> {
    let runs = store.workflow_runs(None, &["Pending", "Running"], usize::MAX >> 1)?;
    let mut n = 0;
    for v in runs {
        let Ok(mut run) = serde_json::from_value::<WorkflowRun>(v) else {
            continue;
        };
        let t = now();
        for node in run
            .nodes
            .iter_mut()
            .filter(|x| x.state == RunState::Running)
        {
            node.state = RunState::Failed;
            node.error = Some(INTERRUPTED.into());
            node.finished_at = Some(t.clone());
        }
        run.state = RunState::Failed;
        run.error = Some(INTERRUPTED.into());
        run.finished_at = Some(t);
        store.put_workflow_run(&serde_json::to_value(&run).expect("json"))?;
        activation_event(
            store,
            &run.activation,
            EventType::Warning,
            "WorkflowFailed",
            &format!(
                "workflow {} run {} failed: {INTERRUPTED}",
                run.workflow, run.id
            ),
        );
        n += 1;
    }
    Ok(n)
}

/// Runs command `id` of `plugin` with `args` through the first Ready activation that enables it;
/// records `CommandRun` or `CommandFailed` on that activation. `manifest` is the Plugin's
/// verified manifest (`None`: the Plugin is not Ready).
pub fn run_command(
    host: &PluginHost,
    db: &Path,
    active: &[ActiveCode],
    plugin: &str,
    manifest: Option<&ManifestSpec>,
    id: &str,
    args: Value,
) -> Result<Value, StartError> {
    let c = active
        .iter()
        .find(|c| c.point == Point::Command && c.plugin == plugin && c.id == id);
    let Some(c) = c else {
        return Err(match manifest {
            Some(m) if m.contributes.commands.iter().any(|x| x.id == id) => {
                StartError::NotActive(format!(
                    "command {id} of plugin {plugin} is not enabled by a Ready PluginActivation"
                ))
            }
            Some(m) => StartError::NotFound(format!(
                "plugin {plugin} has no command {id:?} (it has: {})",
                if m.contributes.commands.is_empty() {
                    "none".to_string()
                } else {
                    m.contributes
                        .commands
                        .iter()
                        .map(|x| x.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )),
            None => StartError::NotActive(format!("plugin {plugin} is not Ready")),
        });
    };
    if !args.is_array() {
        return Err(StartError::BadInput("args must be a JSON array".into()));
    }
    if let Some(schema) = manifest
        .and_then(|m| m.contributes.commands.iter().find(|x| x.id == id))
        .and_then(|x| x.args_schema.as_ref())
    {
        check_config(&args, schema, "args")
            .map_err(|(p, e)| StartError::BadInput(format!("{p}: {e}")))?;
    }
    let started = Instant::now();
    let r = host.call(c, &json!({"args": args, "config": c.config}));
    let ms = started.elapsed().as_millis();
    let mut store = Store::open(db)?;
    match &r {
        Ok(_) => activation_event(
            &mut store,
            &c.activation,
            EventType::Normal,
            "CommandRun",
            &format!("command {id} of plugin {plugin} ran in {ms} ms"),
        ),
        Err(e) => activation_event(
            &mut store,
            &c.activation,
            EventType::Warning,
            "CommandFailed",
            &format!("command {id} of plugin {plugin} failed: {e}"),
        ),
    }
    r.map(|output| json!({"plugin": plugin, "command": id, "activation": c.activation, "output": output}))
        .map_err(|e| StartError::BadInput(format!("command {id} failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wf(yaml: &str) -> Workflow {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn nodes_run_in_topological_order_with_manifest_ties() {
        let w = wf(
            "id: w\noutput: c\nnodes:\n- {id: c, type: http, with: {url: x}, inputs: {a: b.x}}\n- {id: a, type: http, with: {url: x}}\n- {id: b, type: http, with: {url: x}, inputs: {p: a}}\n",
        );
        let ids: Vec<&str> = order(&w).iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn inputs_resolve_paths_into_outputs_and_the_input() {
        let w = wf(
            "id: w\noutput: n\nnodes:\n- {id: n, type: http, with: {url: x, k: 1}, inputs: {k: g.choices.0.text, q: $input.q}}\n",
        );
        let mut outs = BTreeMap::new();
        outs.insert("g".to_string(), json!({"choices": [{"text": "hi"}]}));
        let p = resolve(&w.nodes[0], &json!({"q": [1]}), &outs).unwrap();
        assert_eq!(Value::Object(p), json!({"url": "x", "k": "hi", "q": [1]}));
        let e = resolve(&w.nodes[0], &json!({}), &outs).unwrap_err();
        assert!(e.contains("$input.q"), "{e}");
    }

    /// The test [`WorkflowIo`]: records generation bodies, answers a fixed completion and a
    /// fixed HTTP body.
    #[derive(Default)]
    struct FakeIo {
        bodies: std::sync::Mutex<Vec<Value>>,
        urls: std::sync::Mutex<Vec<String>>,
    }

    impl WorkflowIo for FakeIo {
        fn generate(&self, body: Value) -> BoxFuture<'_, Result<Value, String>> {
            self.bodies.lock().unwrap().push(body);
            Box::pin(async {
                Ok(json!({"choices": [{"message": {"role": "assistant", "content": "four"}}]}))
            })
        }
        fn http(
            &self,
            _method: &str,
            url: &str,
            _body: Option<Value>,
        ) -> BoxFuture<'_, Result<(u16, Value), String>> {
            self.urls.lock().unwrap().push(url.to_string());
            Box::pin(async { Ok((200, json!({"n": 4}))) })
        }
    }

    fn code_for(w: Workflow, network: Vec<String>) -> ActiveCode {
        ActiveCode {
            activation: "act".into(),
            plugin: "p".into(),
            id: w.id.clone(),
            point: Point::Workflow,
            stage: None,
            kinds: Vec::new(),
            scheme: None,
            entry: String::new(),
            module: None,
            profile: None,
            limits: Default::default(),
            failure: crate::api::plugin::FailurePolicy::Fail,
            priority: 0,
            scope: Default::default(),
            config: Value::Null,
            workflow: Some(w),
            custom_nodes: Vec::new(),
            network,
            sink: None,
            panel: None,
            content: false,
            digest: String::new(),
        }
    }

    #[tokio::test]
    async fn a_run_wires_outputs_by_name_and_records_every_node() {
        let dir = tempfile::tempdir().unwrap();
        let home = crate::home::LasHome::at(dir.path());
        let io = Arc::new(FakeIo::default());
        let runner = Runner::new(
            Arc::new(PluginHost::new(
                home.clone(),
                Arc::new(crate::sandbox::WasmiEngine::new()),
            )),
            io.clone(),
            home.state_db(),
        );
        let w = wf(
            "id: w\noutput: fetch\nnodes:\n- {id: fetch, type: http, with: {method: POST}, inputs: {url: $input.url, body: ask.text}}\n- {id: ask, type: generate, with: {model: tiny, max_tokens: 4}, inputs: {prompt: $input.q}}\n",
        );
        let active = Arc::new(vec![code_for(w, vec!["127.0.0.1:9".into()])]);
        let (run, code) = runner
            .prepare(
                &active,
                "w",
                json!({"q": "2+2?", "url": "http://127.0.0.1:9/x"}),
            )
            .unwrap();
        let done = runner.execute(run, code, active.clone()).await;
        assert_eq!(done.state, RunState::Succeeded, "{done:?}");
        assert_eq!(done.output, Some(json!({"status": 200, "body": {"n": 4}})));
        assert_eq!(
            io.bodies.lock().unwrap()[0],
            json!({"model": "tiny", "max_tokens": 4, "stream": false,
                   "messages": [{"role": "user", "content": "2+2?"}]})
        );
        let stored = Store::open(&home.state_db())
            .unwrap()
            .workflow_run(&done.id)
            .unwrap()
            .unwrap();
        assert_eq!(stored, serde_json::to_value(&done).unwrap());
        assert_eq!(stored["nodes"][0]["id"], "ask");
        assert_eq!(stored["nodes"][1]["state"], "Succeeded");

        // A host the activation does not grant: refused before any request.
        let (run, code) = runner
            .prepare(
                &active,
                "w",
                json!({"q": "x", "url": "http://127.0.0.2:9/x"}),
            )
            .unwrap();
        let failed = runner.execute(run, code, active.clone()).await;
        assert_eq!(failed.state, RunState::Failed);
        assert!(
            failed
                .error
                .as_deref()
                .unwrap()
                .contains("127.0.0.2:9 is not granted")
        );
        assert_eq!(io.urls.lock().unwrap().len(), 1);

        // A run left Running by a dead daemon is Failed, interrupted, at the next start.
        let (mut run, _) = runner.prepare(&active, "w", json!({})).unwrap();
        run.state = RunState::Running;
        run.nodes[0].state = RunState::Running;
        let mut store = Store::open(&home.state_db()).unwrap();
        store
            .put_workflow_run(&serde_json::to_value(&run).unwrap())
            .unwrap();
        assert_eq!(fail_interrupted(&mut store).unwrap(), 1);
        let r = store.workflow_run(&run.id).unwrap().unwrap();
        assert_eq!(r["state"], "Failed");
        assert_eq!(r["error"], INTERRUPTED);
        assert_eq!(r["nodes"][0]["state"], "Failed");
        assert_eq!(fail_interrupted(&mut store).unwrap(), 0);
        assert_eq!(store.workflow_runs(Some("w"), &[], 10).unwrap().len(), 3);
    }
}
