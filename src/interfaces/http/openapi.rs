//! The OpenAPI 3.1 description of the HTTP surface, served at `/api/v1/openapi.json` and committed
//! as `docs/openapi.json` (a test fails when the committed file is stale, and another when a route
//! of the router is missing here).

use axum::Json;
use serde_json::{Value, json};

/// Every (method, path) the router serves; the OpenAPI document and the route test use this list.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/runtime"),
    ("get", "/api/v1/backends"),
    ("get", "/api/v1/ps"),
    ("get", "/api/v1/events"),
    ("post", "/api/v1/events"),
    ("post", "/api/v1/apply"),
    ("get", "/api/v1/{kind}"),
    ("post", "/api/v1/{kind}"),
    ("get", "/api/v1/{kind}/{name}"),
    ("put", "/api/v1/{kind}/{name}"),
    ("delete", "/api/v1/{kind}/{name}"),
    ("get", "/api/v1/{kind}/{name}/logs"),
    ("get", "/v1/models"),
    ("post", "/v1/chat/completions"),
    ("post", "/v1/completions"),
    ("post", "/api/v1/ui/logins"),
    ("get", "/ui/"),
    ("get", "/ui/login"),
    ("get", "/api/v1/plugins/inventory"),
    ("post", "/api/v1/plugins/{name}/test"),
    ("get", "/api/v1/plugins/{name}/commands"),
    ("post", "/api/v1/plugins/{name}/commands/{id}"),
    ("get", "/api/v1/workflows"),
    ("get", "/api/v1/workflows/{name}/runs"),
    ("post", "/api/v1/workflows/{name}/runs"),
    ("get", "/api/v1/workflow-runs"),
    ("get", "/api/v1/workflow-runs/{id}"),
];

fn op(summary: &str, params: Value, responses: Value) -> Value {
    json!({"summary": summary, "parameters": params, "responses": responses})
}

fn path_param(name: &str, desc: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": desc, "schema": {"type": "string"}})
}

fn query_param(name: &str, ty: &str, desc: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": desc, "schema": {"type": ty}})
}

fn status_ref(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}})
}

fn openai_err(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}}})
}

fn json_ok(desc: &str, schema: Value) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": schema}}})
}

fn yaml_body() -> Value {
    json!({
        "required": true,
        "description": "One or more YAML or JSON documents, as `lasctl apply -f` reads them. `metadata.resourceVersion` (as GET returns it) makes the write conditional.",
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/Object"}},
        }
    })
}

/// The document.
pub fn document() -> Value {
    let mut doc = base_document();
    let paths = doc["paths"].as_object_mut().expect("paths");
    for (p, v) in flow_paths() {
        paths.insert(p.to_string(), v);
    }
    doc["components"]["schemas"]["WorkflowRun"] = workflow_run_schema();
    doc
}

/// Commands and workflows (`interfaces/http/workflows.rs`).
fn flow_paths() -> Vec<(&'static str, Value)> {
    let run_ref = json!({"$ref": "#/components/schemas/WorkflowRun"});
    let runs = json_ok(
        "runs, newest first",
        json!({"type": "object", "properties": {"kind": {"const": "List"}, "items": {"type": "array", "items": run_ref.clone()}}}),
    );
    let limit = query_param("limit", "integer", "at most this many (default 100)");
    vec![
        (
            "/api/v1/plugins/{name}/commands",
            json!({"get": op(
                "The commands a Plugin's manifest contributes, with the activation that enables each (null: none)",
                json!([path_param("name", "the Plugin")]),
                json!({
                    "200": json_ok("the commands", json!({"type": "object", "properties": {"plugin": {"type": "string"}, "ready": {"type": "boolean"}, "commands": {"type": "array"}}})),
                    "404": status_ref("no such Plugin"),
                }),
            )}),
        ),
        (
            "/api/v1/plugins/{name}/commands/{id}",
            json!({"post": {
                "summary": "Run a command of a Plugin through the Ready activation that enables it (recorded as a CommandRun or CommandFailed event on it)",
                "parameters": [path_param("name", "the Plugin"), path_param("id", "the command id")],
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "properties": {"args": {"type": "array"}}}}}},
                "responses": {
                    "200": json_ok("the command's output", json!({"type": "object", "properties": {"plugin": {"type": "string"}, "command": {"type": "string"}, "activation": {"type": "string"}, "output": {}}})),
                    "400": status_ref("bad body, args its schema refuses, or the command failed"),
                    "404": status_ref("no such Plugin or command"),
                    "409": status_ref("the command is not enabled by a Ready activation, or the Plugin is not Ready"),
                },
            }}),
        ),
        (
            "/api/v1/workflows",
            json!({"get": op(
                "The workflows of Ready activations, with their nodes in run order",
                json!([]),
                json!({"200": json_ok("the workflows", json!({"type": "object", "properties": {"items": {"type": "array"}}}))}),
            )}),
        ),
        (
            "/api/v1/workflows/{name}/runs",
            json!({
                "get": op("The recorded runs of a workflow (kept across restarts)", json!([path_param("name", "the workflow"), limit.clone()]), json!({"200": runs.clone()})),
                "post": {
                    "summary": "Run a workflow: waits and answers the finished run, or with wait=false answers the Pending run at once",
                    "parameters": [path_param("name", "the workflow"), query_param("wait", "boolean", "false: answer 202 with the run id at once (default true)")],
                    "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "properties": {"input": {"type": "object"}}}}}},
                    "responses": {
                        "200": json_ok("the finished run (Succeeded or Failed)", run_ref.clone()),
                        "202": json_ok("the run, Pending, running on", run_ref.clone()),
                        "400": status_ref("bad body"),
                        "404": status_ref("no active workflow of that name"),
                    },
                },
            }),
        ),
        (
            "/api/v1/workflow-runs",
            json!({"get": op("Every recorded workflow run, newest first", json!([limit]), json!({"200": runs}))}),
        ),
        (
            "/api/v1/workflow-runs/{id}",
            json!({"get": op(
                "One workflow run: state, input, output, and each node's state, output, timing and error",
                json!([path_param("id", "the run id")]),
                json!({"200": json_ok("the run", run_ref), "404": status_ref("no such run")}),
            )}),
        ),
    ]
}

fn workflow_run_schema() -> Value {
    json!({"type": "object", "required": ["id", "workflow", "plugin", "activation", "state", "nodes"], "properties": {
        "id": {"type": "string"}, "workflow": {"type": "string"}, "plugin": {"type": "string"}, "activation": {"type": "string"},
        "state": {"enum": ["Pending", "Running", "Succeeded", "Failed"]}, "input": {}, "output": {}, "error": {"type": "string"},
        "createdAt": {"type": "string"}, "finishedAt": {"type": "string"}, "durationMs": {"type": "integer"},
        "nodes": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "string"}, "type": {"type": "string"}, "state": {"enum": ["Pending", "Running", "Succeeded", "Failed"]},
            "startedAt": {"type": "string"}, "finishedAt": {"type": "string"}, "durationMs": {"type": "integer"}, "output": {}, "error": {"type": "string"},
        }}},
    }})
}

fn base_document() -> Value {
    let kind = path_param(
        "kind",
        "model, module or policy (singular, plural or capitalized)",
    );
    let name = path_param("name", "the object's name");
    let apply_q = json!([
        query_param("dryRun", "boolean", "validate and report, record nothing"),
        query_param(
            "resourceVersion",
            "integer",
            "expected resourceVersion of the one object in the body (0: must not exist)"
        ),
        query_param(
            "filename",
            "string",
            "the name used for the body in error messages"
        ),
    ]);
    let apply_responses = json!({
        "200": json_ok("applied (nothing created)", json!({"$ref": "#/components/schemas/Outcome"})),
        "201": json_ok("applied, something created", json!({"$ref": "#/components/schemas/Outcome"})),
        "400": status_ref("malformed request"),
        "409": status_ref("stale resourceVersion, or the object is being deleted"),
        "422": status_ref("invalid document: details.errors name file, line, column and field"),
    });
    let mut apply_kind = op(
        "Apply documents of one kind",
        json!([
            kind.clone(),
            apply_q[0].clone(),
            apply_q[1].clone(),
            apply_q[2].clone()
        ]),
        apply_responses.clone(),
    );
    apply_kind["requestBody"] = yaml_body();
    let mut apply_any = op(
        "Apply documents of any kind",
        apply_q.clone(),
        apply_responses.clone(),
    );
    apply_any["requestBody"] = yaml_body();
    let mut put = op(
        "Apply one object (its kind and name must match the path)",
        json!([
            kind.clone(),
            name.clone(),
            apply_q[0].clone(),
            apply_q[1].clone(),
            apply_q[2].clone()
        ]),
        apply_responses,
    );
    put["requestBody"] = yaml_body();
    let chat = |summary: &str| {
        json!({
            "summary": summary,
            "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object", "required": ["model"],
                "properties": {"model": {"type": "string"}, "stream": {"type": "boolean"}},
            }}}},
            "responses": {
                "200": {"description": "the upstream engine's answer, passed through (text/event-stream when stream is true)"},
                "400": openai_err("no model field, or not JSON"),
                "404": openai_err("the model is not served; the message lists the served ones"),
                "502": openai_err("the serving module did not answer"),
            }
        })
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "LocalAIStack daemon API",
            "version": "v1alpha1",
            "description": "The management API of `lasctl daemon` (TCP, default 127.0.0.1:7411, and the unix socket $LAS_HOME/run/lasd.sock) and its OpenAI-compatible endpoint. On TCP every request but /healthz needs `Authorization: Bearer <token>` (the token is in $LAS_HOME/run/token; a missing or wrong token is 401), except /metrics and /v1/* from loopback clients (/v1 too with --v1-requires-token). Every request must name an allowed Host (localhost, 127.0.0.1, [::1], --allow-host names; else 403); writes with a foreign Origin or Sec-Fetch-Site are 403, and writes must send application/json or application/yaml (else 415). Bodies are capped at 8 MiB (413).",
        },
        "paths": {
            "/healthz": {"get": op("Health: 200 `ok` while the state database opens and reads; 503 `unhealthy: <reason>` when it is missing, replaced or corrupt", json!([]), json!({"200": {"description": "ok", "content": {"text/plain": {"schema": {"type": "string"}}}}, "503": {"description": "unhealthy, with the reason", "content": {"text/plain": {"schema": {"type": "string"}}}}}))},
            "/metrics": {"get": op("Prometheus metrics: reconciles, errors, queue depth, workloads by state, request latency", json!([]), json!({"200": {"description": "text exposition format 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}}}))},
            "/api/v1/openapi.json": {"get": op("This document", json!([]), json!({"200": json_ok("OpenAPI 3.1", json!({"type": "object"}))}))},
            "/api/v1/runtime": {"get": op("Version, hardware profile and policy tier", json!([]), json!({"200": json_ok("runtime", json!({"$ref": "#/components/schemas/RuntimeInfo"}))}))},
            "/api/v1/backends": {"get": op("Docker reachability and the built-in engines", json!([]), json!({"200": json_ok("backends", json!({"$ref": "#/components/schemas/BackendsInfo"}))}))},
            "/api/v1/ps": {"get": op("What runs now: each Module's workload with pid or container, endpoint, start time, memory and GPU memory in use, and the requests /v1 routed to it (lasctl ps)", json!([]), json!({"200": json_ok("workloads", json!({"$ref": "#/components/schemas/WorkloadList"}))}))},
            "/api/v1/events": {"get": op(
                "The durable event log as server-sent events (each with its id; resume with Last-Event-ID)",
                json!([
                    query_param("object", "string", "KIND/NAME: only this object's events"),
                    query_param("after", "integer", "only events with a larger id"),
                    query_param("limit", "integer", "backlog size without after (default 100)"),
                    query_param("watch", "boolean", "false: send the backlog and end (default true)"),
                    {"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "string"}},
                ]),
                json!({
                    "200": {"description": "text/event-stream; each data is an Event", "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/Event"}}}},
                    "400": status_ref("bad object or Last-Event-ID"),
                    "404": status_ref("unknown kind"),
                }),
            ),
            "post": {
                "summary": "Publish a custom event: recorded in the durable event log with source `published` (lasctl events, the stream) and delivered to event sinks",
                "parameters": [],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["type", "reason", "message"], "additionalProperties": false, "properties": {
                    "type": {"type": "string", "enum": ["Normal", "Warning"]},
                    "reason": {"type": "string", "pattern": "^[A-Z][A-Za-z0-9]*$", "maxLength": 128},
                    "message": {"type": "string", "maxLength": 4096},
                    "involvedObject": {"type": "object", "additionalProperties": false, "required": ["kind", "name"], "properties": {"kind": {"type": "string", "pattern": "^[A-Z][A-Za-z0-9]*$"}, "name": {"type": "string"}}},
                }}}}},
                "responses": {
                    "201": json_ok("the recorded event", json!({"$ref": "#/components/schemas/Event"})),
                    "401": status_ref("no or wrong bearer token (TCP)"),
                    "403": status_ref("a foreign Origin"),
                    "422": status_ref("invalid event: every bad field with its path (details.errors[].field)"),
                },
            }},
            "/api/v1/apply": {"post": apply_any},
            "/api/v1/{kind}": {
                "get": op("List objects of a kind", json!([kind.clone(), query_param("labelSelector", "string", "k=v[,k=v]")]), json!({
                    "200": json_ok("a List", json!({"$ref": "#/components/schemas/List"})),
                    "404": status_ref("unknown kind"),
                })),
                "post": apply_kind,
            },
            "/api/v1/{kind}/{name}": {
                "get": op("Get one object", json!([kind.clone(), name.clone()]), json!({
                    "200": json_ok("the object", json!({"$ref": "#/components/schemas/Object"})),
                    "404": status_ref("no such object or kind"),
                })),
                "put": put,
                "delete": op("Record the deletion of an object (finalizers clean up what runs)", json!([kind.clone(), name.clone(), query_param("resourceVersion", "integer", "precondition: delete only if the object still has this resourceVersion")]), json!({
                    "200": json_ok("deleted", json!({"$ref": "#/components/schemas/Outcome"})),
                    "404": status_ref("no such object"),
                    "409": status_ref("the object's resourceVersion is not the one given"),
                })),
            },
            "/api/v1/{kind}/{name}/logs": {"get": op(
                "A Module's output",
                json!([kind, name, query_param("follow", "boolean", "keep streaming new output"), query_param("tail", "integer", "only the last N lines")]),
                json!({
                    "200": {"description": "text, streamed", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "400": status_ref("not a Module"),
                    "404": status_ref("no such object, or no logs yet"),
                }),
            )},
            "/v1/models": {"get": op("Served models (and the modules serving them, as aliases)", json!([]), json!({"200": json_ok("OpenAI model list", json!({"type": "object"}))}))},
            "/v1/chat/completions": {"post": chat("OpenAI chat completions, routed by model")},
            "/v1/completions": {"post": chat("OpenAI completions, routed by model")},
            "/api/v1/plugins/inventory": {"get": op("Plugin inventory: every seam with what it accepts (or why not), its active contributions with calls, failures, fuel and breaker state; plugins and activations with requested and granted capabilities", json!([]), json!({
                "200": json_ok("the inventory", json!({"type": "object", "properties": {"seams": {"type": "array"}, "plugins": {"type": "array"}, "activations": {"type": "array"}}})),
            }))},
            "/api/v1/plugins/{name}/test": {"post": {
                "summary": "Dry-run one contribution of a Ready Plugin on an input: its output, fuel used and logs (records nothing)",
                "parameters": [path_param("name", "the Plugin")],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["contribution", "input"], "properties": {"contribution": {"type": "string"}, "input": {"type": "object"}, "config": {}}}}}},
                "responses": {
                    "200": json_ok("the contribution's answer", json!({"type": "object", "properties": {"output": {}, "fuelUsed": {"type": "integer"}, "logs": {"type": "array"}}})),
                    "400": status_ref("bad body, unknown contribution, config its schema refuses, or the plugin failed"),
                    "404": status_ref("no such Plugin"),
                },
            }},
            "/api/v1/ui/logins": {"post": op("A one-time web console login link (what `lasctl ui` prints)", json!([]), json!({
                "201": json_ok("the link, valid once within 15 minutes", json!({"type": "object", "properties": {"url": {"type": "string"}}})),
                "401": status_ref("no or wrong bearer token"),
            }))},
            "/ui/": {"get": op("The web console (needs the session cookie)", json!([]), json!({
                "200": {"description": "HTML with the session's anti-forgery token", "content": {"text/html": {"schema": {"type": "string"}}}},
                "401": {"description": "not signed in: how to get a login link", "content": {"text/html": {"schema": {"type": "string"}}}},
            }))},
            "/ui/login": {"get": op("Consumes a one-time login link and sets an HttpOnly, SameSite=Strict session cookie", json!([query_param("token", "string", "the one-time token of the link")]), json!({
                "303": {"description": "signed in: redirect to /ui/"},
                "401": {"description": "the link was used already or has expired", "content": {"text/html": {"schema": {"type": "string"}}}},
            }))},
        },
        "components": {"schemas": {
            "Status": {"type": "object", "required": ["kind", "status", "reason", "message", "code"], "properties": {
                "apiVersion": {"const": "v1"}, "kind": {"const": "Status"}, "status": {"const": "Failure"},
                "reason": {"type": "string"}, "message": {"type": "string"}, "code": {"type": "integer"},
                "details": {"type": "object", "properties": {"errors": {"type": "array", "items": {"type": "object", "properties": {
                    "file": {"type": "string"}, "line": {"type": "integer"}, "column": {"type": "integer"},
                    "field": {"type": "string"}, "message": {"type": "string"},
                }}}}},
            }},
            "OpenAIError": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "message": {"type": "string"}, "type": {"type": "string"}, "param": {}, "code": {"type": "string"},
            }}}},
            "Object": {"type": "object", "description": "A Model, Module or Policy; see crds/ for each kind's schema", "required": ["apiVersion", "kind", "metadata"]},
            "List": {"type": "object", "properties": {"apiVersion": {"const": "v1"}, "kind": {"const": "List"}, "items": {"type": "array", "items": {"$ref": "#/components/schemas/Object"}}}},
            "Outcome": {"type": "object", "properties": {
                "generation": {"type": ["integer", "null"]},
                "changes": {"type": "array", "items": {"type": "object", "properties": {
                    "kind": {"type": "string"}, "name": {"type": "string"},
                    "action": {"enum": ["created", "configured", "unchanged", "pruned", "deleted"]},
                }}},
            }},
            "Event": {"type": "object", "properties": {
                "id": {"type": "integer"}, "time": {"type": "string"}, "kind": {"type": "string"}, "name": {"type": "string"},
                "type": {"enum": ["Normal", "Warning"]}, "reason": {"type": "string"}, "message": {"type": "string"},
                "count": {"type": "integer", "description": "how many times it happened (one row per object, type, reason and message up to ids and numbers); a repeat moves it to a new id"},
                "firstTimestamp": {"type": "string"}, "lastTimestamp": {"type": "string"},
                "source": {"type": "string", "description": "published (POST /api/v1/events) or eventBus; absent for the system's own events"},
            }},
            "RuntimeInfo": {"type": "object", "properties": {
                "version": {"type": "string"}, "hardware": {}, "tier": {"type": ["string", "null"]}, "tierReason": {"type": ["string", "null"]},
            }},
            "WorkloadList": {"type": "object", "properties": {
                "kind": {"const": "WorkloadList"},
                "items": {"type": "array", "items": {"type": "object", "required": ["module", "slot", "runtime", "state", "restarts", "requests"], "properties": {
                    "module": {"type": "string"}, "slot": {"type": "integer"},
                    "runtime": {"type": "string", "enum": ["native", "container"]}, "state": {"type": "string"},
                    "pid": {"type": "integer"}, "containerId": {"type": "string"}, "endpoint": {"type": "string"},
                    "startedAt": {"type": "string", "format": "date-time"},
                    "memoryBytes": {"type": "integer"}, "vramBytes": {"type": "integer", "description": "absent where NVML cannot tell"},
                    "restarts": {"type": "integer"}, "requests": {"type": "integer", "description": "requests /v1 routed to the Module since the daemon started"},
                }}},
            }},
            "BackendsInfo": {"type": "object", "properties": {
                "docker": {"type": "object", "properties": {"reachable": {"type": "boolean"}, "version": {"type": ["string", "null"]}, "error": {"type": ["string", "null"]}}},
                "engines": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "builtIn": {"type": "boolean"}, "features": {"type": "array", "items": {"type": "string"}}}}},
            }},
        }},
    })
}

/// The committed form: pretty JSON with a trailing newline.
pub fn document_text() -> String {
    let mut s = serde_json::to_string_pretty(&document()).unwrap_or_default();
    s.push('\n');
    s
}

pub(super) async fn serve() -> Json<Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = super::document();
        let paths = doc["paths"].as_object().unwrap();
        let mut documented = Vec::new();
        for (p, ops) in paths {
            for m in ops.as_object().unwrap().keys() {
                documented.push((m.clone(), p.clone()));
            }
        }
        documented.sort();
        let mut routes: Vec<(String, String)> = super::ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        routes.sort();
        assert_eq!(documented, routes);
    }
}
