//! The management API and the OpenAI endpoint, end to end: a real server on 127.0.0.1:0 and on a
//! unix socket, a real SQLite store in a temp LAS_HOME, and a small upstream OpenAI server (an
//! axum app standing in for the engine) for the proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::IntoResponse;
use futures_util::StreamExt;
use localaistack::api::Kind;
use localaistack::control::store::Store;
use localaistack::home::LasHome;
use localaistack::interfaces::http::client::{DaemonClient, Endpoint, sse_messages};
use localaistack::interfaces::http::{
    Access, ApiContext, HttpError, Metrics, Server, StaticDaemonInfo, ensure_token, socket_path,
};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

struct TestServer {
    _dir: tempfile::TempDir,
    home: LasHome,
    addr: SocketAddr,
    socket: std::path::PathBuf,
    changes: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    info: Arc<StaticDaemonInfo>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), HttpError>>>,
    http: reqwest::Client,
}

impl TestServer {
    async fn start() -> Self {
        Self::start_with(|ctx| ctx, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    }

    async fn start_with(
        f: impl FnOnce(ApiContext) -> ApiContext,
        listen: SocketAddr,
    ) -> Result<Self, HttpError> {
        let dir = tempfile::tempdir().unwrap();
        let home = LasHome::at(dir.path());
        home.ensure().unwrap();
        let (changes, rx) = watch::channel(0u64);
        let metrics = Arc::new(Metrics::new());
        let info = Arc::new(StaticDaemonInfo::this_build());
        let ctx = f(ApiContext::new(
            home.clone(),
            metrics.clone(),
            rx,
            info.clone(),
        ));
        let socket = socket_path(&home);
        let server = Server::bind(ctx, listen, socket.clone()).await?;
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Ok(TestServer {
            _dir: dir,
            home,
            addr,
            socket,
            changes,
            metrics,
            info,
            stop: Some(stop),
            task: Some(task),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// What the daemon does after every store write.
    fn bump(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    fn store(&self) -> Store {
        Store::open(&self.home.state_db()).unwrap()
    }

    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .header("content-type", "application/yaml")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    /// Stops the server and returns the state directory (kept until the caller drops it).
    async fn shutdown(mut self) -> tempfile::TempDir {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task.take().unwrap())
            .await
            .expect("server stops within 10 s of shutdown")
            .unwrap()
            .unwrap();
        self._dir
    }
}

const MODEL: &str = "apiVersion: localaistack.io/v1alpha1
kind: Model
metadata:
  name: tiny
spec:
  source: /srv/models/tiny.gguf
";

fn module(name: &str, model: &str) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1
kind: Module
metadata:
  name: {name}
spec:
  native:
    command: [/bin/true]
  model: {model}
"
    )
}

#[tokio::test]
async fn list_get_apply_delete() {
    let s = TestServer::start().await;
    let (code, out) = s.post("/api/v1/apply", MODEL).await;
    assert_eq!(code, 201, "{out}");
    assert_eq!(out["changes"][0]["action"], "created");
    assert_eq!(out["generation"], 1);

    // The same body again changes nothing and records no generation.
    let (code, out) = s.post("/api/v1/apply", MODEL).await;
    assert_eq!(code, 200, "{out}");
    assert_eq!(out["changes"][0]["action"], "unchanged");
    assert_eq!(out["generation"], Value::Null);

    let (code, list) = s.get_json("/api/v1/models").await;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["metadata"]["name"], "tiny");

    let (code, obj) = s.get_json("/api/v1/Model/tiny").await;
    assert_eq!(code, 200);
    assert_eq!(obj["spec"]["source"], "file:///srv/models/tiny.gguf");
    assert_eq!(obj["metadata"]["generation"], 1);

    // JSON bodies and POST to the kind's collection work too.
    let json_body = json!({
        "apiVersion": "localaistack.io/v1alpha1", "kind": "Model",
        "metadata": {"name": "other"}, "spec": {"source": "/srv/models/other.gguf"}
    });
    let (code, out) = s.post("/api/v1/models", &json_body.to_string()).await;
    assert_eq!(code, 201, "{out}");
    let (code, out) = s.post("/api/v1/modules", MODEL).await;
    assert_eq!(code, 400, "{out}");
    assert!(
        out["message"].as_str().unwrap().contains("/api/v1/models"),
        "{out}"
    );

    let (code, _) = s.get_json("/api/v1/models/nope").await;
    assert_eq!(code, 404);
    let (code, out) = s.get_json("/api/v1/gadgets").await;
    assert_eq!(code, 404);
    assert!(
        out["message"].as_str().unwrap().contains("unknown kind"),
        "{out}"
    );

    let r = s
        .http
        .delete(s.url("/api/v1/models/tiny"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["changes"][0]["action"], "deleted");
    // No finalizers: the object is gone from the store.
    assert!(s.store().get(Kind::Model, "tiny").is_err());
    let r = s
        .http
        .delete(s.url("/api/v1/models/tiny"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    s.shutdown().await;
}

#[tokio::test]
async fn bad_document_names_file_line_and_field_and_changes_nothing() {
    let s = TestServer::start().await;
    let bad = format!(
        "{MODEL}---\napiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata:\n  name: chat\nspec:\n  native:\n    command: [/bin/true]\n  restartPolicy: Sometimes\n"
    );
    let (code, out) = s.post("/api/v1/apply?filename=stack.yaml", &bad).await;
    assert_eq!(code, 422, "{out}");
    let msg = out["message"].as_str().unwrap();
    assert!(msg.starts_with("stack.yaml:15:"), "{msg}");
    assert!(msg.contains("spec.restartPolicy"), "{msg}");
    let e = &out["details"]["errors"][0];
    assert_eq!(e["line"], 15);
    assert_eq!(e["field"], "spec.restartPolicy");
    // One bad document: nothing of the call is recorded.
    assert!(
        s.store()
            .list(None, &Default::default())
            .unwrap()
            .is_empty()
    );

    // System-set fields other than resourceVersion (as GET returns them) are accepted and
    // ignored, so GET → PUT round-trips (issue 12, defect 10).
    let (code, out) = s
        .post(
            "/api/v1/apply",
            &MODEL.replace("  name: tiny\n", "  name: tiny\n  uid: x\n"),
        )
        .await;
    assert_eq!(code, 201, "{out}");
    assert_ne!(s.store().get(Kind::Model, "tiny").unwrap().uid, "x");
    let (code, _) = s.post("/api/v1/apply", "").await;
    assert_eq!(code, 400);
    s.shutdown().await;
}

#[tokio::test]
async fn stale_resource_version_is_409() {
    let s = TestServer::start().await;
    let (code, _) = s.post("/api/v1/apply", MODEL).await;
    assert_eq!(code, 201);
    let (_, obj) = s.get_json("/api/v1/models/tiny").await;
    let rv = obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    // A write that carries the current resourceVersion succeeds (PUT, in the body)...
    let changed = MODEL.replace(
        "  name: tiny\n",
        &format!("  name: tiny\n  resourceVersion: \"{rv}\"\n  labels: {{team: a}}\n"),
    );
    let r = s
        .http
        .put(s.url("/api/v1/models/tiny"))
        .header("content-type", "application/yaml")
        .body(changed.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());

    // ...and the same write again is stale: 409 with the store's message, nothing changed.
    let r = s
        .http
        .put(s.url("/api/v1/models/tiny"))
        .header("content-type", "application/yaml")
        .body(changed.replace("team: a", "team: b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["reason"], "Conflict");
    assert!(
        out["message"].as_str().unwrap().contains("resourceVersion"),
        "{out}"
    );
    assert_eq!(
        s.store().get(Kind::Model, "tiny").unwrap().labels["team"],
        "a"
    );

    // The query parameter form, and 0 for "must not exist yet".
    let (code, _) = s
        .post(&format!("/api/v1/apply?resourceVersion={rv}"), MODEL)
        .await;
    assert_eq!(code, 409);
    let (code, _) = s.post("/api/v1/apply?resourceVersion=0", MODEL).await;
    assert_eq!(code, 409);
    let (code, out) = s
        .post(
            "/api/v1/apply?resourceVersion=0",
            &MODEL.replace("tiny", "fresh"),
        )
        .await;
    assert_eq!(code, 201, "{out}");

    // DELETE with a stale resourceVersion precondition is 409 and deletes nothing; with the
    // current one it deletes.
    let (_, fresh) = s.get_json("/api/v1/models/fresh").await;
    let rv = fresh["metadata"]["resourceVersion"].as_str().unwrap();
    let stale = rv.parse::<u64>().unwrap() - 1;
    let r = s
        .http
        .delete(s.url(&format!("/api/v1/models/fresh?resourceVersion={stale}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    assert!(
        s.store()
            .get(Kind::Model, "fresh")
            .unwrap()
            .deleted_at
            .is_none()
    );
    let r = s
        .http
        .delete(s.url(&format!("/api/v1/models/fresh?resourceVersion={rv}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    assert!(s.store().get(Kind::Model, "fresh").is_err());

    // PUT whose body names another object is a bad request.
    let r = s
        .http
        .put(s.url("/api/v1/models/other"))
        .header("content-type", "application/yaml")
        .body(MODEL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    s.shutdown().await;
}

#[tokio::test]
async fn events_stream_after_apply_and_resume() {
    let s = TestServer::start().await;
    let resp = s
        .http
        .get(s.url("/api/v1/events?object=model/tiny"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let body = resp.bytes_stream().map(|r| {
        r.map_err(
            |e| localaistack::interfaces::http::client::ClientError::Status {
                status: reqwest::StatusCode::BAD_GATEWAY,
                message: e.to_string(),
            },
        )
    });
    let mut msgs = Box::pin(sse_messages(Box::pin(body)));

    // The daemon records events and bumps the change counter; the stream wakes on the bump.
    let mut store = s.store();
    store
        .record_event(
            "Model",
            "tiny",
            localaistack::control::store::EventType::Normal,
            "Verified",
            "digest ok",
        )
        .unwrap();
    store
        .record_event(
            "Model",
            "other",
            localaistack::control::store::EventType::Normal,
            "Verified",
            "not ours",
        )
        .unwrap();
    s.bump();
    let m = tokio::time::timeout(Duration::from_secs(5), msgs.next())
        .await
        .expect("an event within 5 s of the bump")
        .unwrap()
        .unwrap();
    let ev: Value = serde_json::from_str(&m.data).unwrap();
    assert_eq!(ev["reason"], "Verified");
    assert_eq!(ev["name"], "tiny");
    let first_id = m.id.clone().unwrap();

    // An apply through the API records its own event too.
    let (code, _) = s.post("/api/v1/apply", MODEL).await;
    assert_eq!(code, 201);
    s.bump();
    let m = tokio::time::timeout(Duration::from_secs(5), msgs.next())
        .await
        .expect("the apply's event within 5 s")
        .unwrap()
        .unwrap();
    let ev: Value = serde_json::from_str(&m.data).unwrap();
    assert_eq!(ev["name"], "tiny", "{ev}");

    // Resuming with Last-Event-ID replays exactly what came after it.
    let r = s
        .http
        .get(s.url("/api/v1/events?object=model/tiny&watch=false"))
        .header("last-event-id", &first_id)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert_eq!(ids, vec![m.id.as_deref().unwrap()], "{text}");

    let (code, _) = s.get_json("/api/v1/events?object=nonsense").await;
    assert_eq!(code, 400);
    // Open streams end on shutdown instead of holding it.
    s.shutdown().await;
}

#[tokio::test]
async fn healthz_metrics_runtime_backends_openapi() {
    let s = TestServer::start().await;
    let r = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "ok\n");

    s.metrics.record_reconcile("Module", true);
    s.metrics.set_queue_depth(4);
    s.metrics.set_workloads([("running", 3)]);
    let r = s.http.get(s.url("/metrics")).send().await.unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text().await.unwrap();
    for want in [
        "las_reconciles_total{kind=\"Module\",result=\"success\"} 1",
        "las_queue_depth 4",
        "las_workloads{state=\"running\"} 3",
        "las_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1",
        "las_http_request_duration_seconds_count{route=\"/healthz\"} 1",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }

    let (code, rt) = s.get_json("/api/v1/runtime").await;
    assert_eq!(code, 200);
    assert_eq!(rt["version"], env!("CARGO_PKG_VERSION"));
    let (code, b) = s.get_json("/api/v1/backends").await;
    assert_eq!(code, 200);
    assert!(b["docker"]["reachable"].is_boolean(), "{b}");
    assert!(b["engines"].is_array(), "{b}");

    let (code, doc) = s.get_json("/api/v1/openapi.json").await;
    assert_eq!(code, 200);
    assert_eq!(doc, localaistack::interfaces::http::openapi::document());
    s.shutdown().await;
}

/// Every route the OpenAPI document lists is one the router serves (the metrics label each
/// request with the route template it matched).
#[tokio::test]
async fn every_documented_route_is_served() {
    let s = TestServer::start().await;
    for (method, path) in localaistack::interfaces::http::openapi::ROUTES {
        if *path == "/api/v1/events" {
            continue; // a stream; covered above
        }
        let concrete = path.replace("{kind}", "modules").replace("{name}", "x");
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let r = s
            .http
            .request(m, s.url(&concrete))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_ne!(r.status().as_u16(), 405, "{method} {path}");
    }
    let text = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (method, path) in localaistack::interfaces::http::openapi::ROUTES {
        if *path == "/api/v1/events" || *path == "/metrics" {
            continue;
        }
        let want = format!("method=\"{}\",route=\"{path}\"", method.to_uppercase());
        assert!(text.contains(&want), "{want} not served:\n{text}");
    }
    assert!(!text.contains("route=\"unmatched\""), "{text}");
    s.shutdown().await;
}

#[test]
fn committed_openapi_document_is_fresh() {
    let want = localaistack::interfaces::http::openapi::document_text();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    if std::env::var_os("LAS_UPDATE_OPENAPI").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/openapi.json is stale: run LAS_UPDATE_OPENAPI=1 cargo test --test http_api committed_openapi_document_is_fresh"
    );
}

#[tokio::test]
async fn unix_socket_serves_the_same_api_with_mode_0600() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let s = TestServer::start().await;
    let meta = std::fs::metadata(&s.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let c = DaemonClient {
        endpoint: Endpoint::Unix(s.socket.clone()),
        token: None,
    };
    assert_eq!(&c.get_bytes("/healthz").await.unwrap()[..], b"ok\n");
    let (code, _) = s.post("/api/v1/apply", MODEL).await;
    assert_eq!(code, 201);
    let obj: Value =
        serde_json::from_slice(&c.get_bytes("/api/v1/models/tiny").await.unwrap()).unwrap();
    assert_eq!(obj["metadata"]["name"], "tiny");
    let e = c
        .get_bytes("/api/v1/models/nope")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("404") && e.contains("Model/nope not found"),
        "{e}"
    );

    // Module logs through the socket.
    s.info.push_log("chat", b"one\ntwo\nthree\n");
    let (code, _) = s.post("/api/v1/apply", &module("chat", "tiny")).await;
    assert_eq!(code, 201);
    let logs = c
        .get_bytes("/api/v1/modules/chat/logs?tail=2")
        .await
        .unwrap();
    assert_eq!(&logs[..], b"two\nthree\n");
    let mut follow = c
        .get_stream("/api/v1/modules/chat/logs?follow=true&tail=1", &[])
        .await
        .unwrap();
    assert_eq!(&follow.next().await.unwrap().unwrap()[..], b"three\n");
    s.info.push_log("chat", b"four\n");
    let next = tokio::time::timeout(Duration::from_secs(5), follow.next())
        .await
        .unwrap();
    assert_eq!(&next.unwrap().unwrap()[..], b"four\n");
    drop(follow);

    // A stale socket file (no daemon behind it) is replaced by the next server.
    let socket = s.socket.clone();
    let _dir = s.shutdown().await;
    std::os::unix::net::UnixListener::bind(&socket)
        .map(drop)
        .unwrap();
    assert!(socket.exists());
    let (tx, rx) = watch::channel(0);
    let home = LasHome::at(socket.parent().unwrap().parent().unwrap());
    let ctx = ApiContext::new(
        home,
        Arc::new(Metrics::new()),
        rx,
        Arc::new(StaticDaemonInfo::this_build()),
    );
    let server = Server::bind(ctx, "127.0.0.1:0".parse().unwrap(), socket.clone())
        .await
        .unwrap();
    // A socket that answers is not taken over.
    let (tx2, rx2) = watch::channel(0);
    let ctx2 = ApiContext::new(
        LasHome::at("/nonexistent"),
        Arc::new(Metrics::new()),
        rx2,
        Arc::new(StaticDaemonInfo::this_build()),
    );
    let second = Server::bind(ctx2, "127.0.0.1:0".parse().unwrap(), socket.clone()).await;
    assert!(
        matches!(second, Err(HttpError::SocketInUse { .. })),
        "{:?}",
        second.err()
    );
    drop((server, tx, tx2));
}

#[tokio::test]
async fn non_loopback_bind_without_token_is_refused() {
    let e = TestServer::start_with(|c| c, "0.0.0.0:0".parse().unwrap())
        .await
        .err()
        .expect("refused");
    let msg = e.to_string();
    assert!(matches!(e, HttpError::TokenRequired { .. }));
    assert!(msg.contains("requires a bearer token"), "{msg}");
}

#[tokio::test]
async fn token_required_gives_401_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let home = LasHome::at(dir.path());
    let token = ensure_token(&home).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(home.run().join("token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        ensure_token(&home).unwrap(),
        token,
        "a second call keeps the token"
    );
    assert!(token.len() >= 64);

    let t = token.clone();
    // /v1 as with --v1-requires-token: by default loopback clients may use it without the token.
    let s = TestServer::start_with(
        move |c| c.with_token(t).with_access(Access::new(&[], false)),
        "0.0.0.0:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let url = format!("http://127.0.0.1:{}", s.addr.port());
    let r = s
        .http
        .get(format!("{url}/api/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = s
        .http
        .get(format!("{url}/api/v1/models"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = s.http.get(format!("{url}/v1/models")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let r = s
        .http
        .get(format!("{url}/api/v1/models"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Liveness stays open, metrics too for loopback clients; the unix socket needs no token (its
    // mode protects it).
    let r = s.http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = s.http.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let c = DaemonClient {
        endpoint: Endpoint::Unix(s.socket.clone()),
        token: None,
    };
    c.get_bytes("/api/v1/models").await.unwrap();
    s.shutdown().await;
}

/// A stand-in for the engine: canned JSON and a slow SSE stream, so the test can see chunks
/// arrive through the proxy before the upstream has finished.
async fn fake_upstream() -> (
    SocketAddr,
    oneshot::Sender<()>,
    tokio::sync::mpsc::Sender<()>,
) {
    use axum::routing::{get, post};
    let (gate_tx, gate_rx) = tokio::sync::mpsc::channel::<()>(1);
    let gate = Arc::new(tokio::sync::Mutex::new(gate_rx));
    let app = axum::Router::new()
        .route(
            "/v1/models",
            get(|| async { axum::Json(json!({"object": "list", "data": [{"id": "upstream"}]})) }),
        )
        .route(
            "/v1/completions",
            post(|body: axum::Json<Value>| async move {
                axum::Json(json!({"object": "text_completion", "model": body["model"], "choices": [{"text": "hi"}]}))
            }),
        )
        .route(
            "/v1/chat/completions",
            post(move |body: axum::Json<Value>| {
                let gate = gate.clone();
                async move {
                    if body["stream"] != json!(true) {
                        return (
                            [("x-upstream", "fake")],
                            axum::Json(json!({"object": "chat.completion", "model": body["model"],
                                "choices": [{"message": {"role": "assistant", "content": "hello"}}]})),
                        )
                            .into_response();
                    }
                    // First chunk now; the rest only when the test opens the gate.
                    let s = futures_util::stream::unfold(0, move |i| {
                        let gate = gate.clone();
                        async move {
                            match i {
                                0 => Some((Ok::<_, std::io::Error>("data: {\"delta\":\"a\"}\n\n".to_string()), 1)),
                                1 => {
                                    gate.lock().await.recv().await;
                                    Some((Ok("data: {\"delta\":\"b\"}\n\n".to_string()), 2))
                                }
                                2 => Some((Ok("data: [DONE]\n\n".to_string()), 3)),
                                _ => None,
                            }
                        }
                    });
                    ([("content-type", "text/event-stream")], Body::from_stream(s)).into_response()
                }
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(l, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (addr, tx, gate_tx)
}

/// Records what the controllers would: the Module Ready at its generation with an endpoint.
fn mark_ready(store: &mut Store, name: &str, endpoint: &str) {
    let o = store.get(Kind::Module, name).unwrap();
    store
        .update_status(
            Kind::Module,
            name,
            None,
            &json!({
                "observedGeneration": o.generation,
                "endpoint": endpoint,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Healthy", "message": "ok",
                    "lastTransitionTime": "2026-11-22T10:00:00Z"}],
            }),
        )
        .unwrap();
}

#[tokio::test]
async fn openai_proxy_routes_by_model_and_streams() {
    let (up, up_stop, gate) = fake_upstream().await;
    let s = TestServer::start().await;
    let body = format!(
        "{MODEL}---\n{}---\n{}",
        module("chat", "tiny"),
        module("idle", "tiny")
    );
    let (code, out) = s.post("/api/v1/apply", &body).await;
    assert_eq!(code, 201, "{out}");

    // Nothing Ready yet: nothing served, and the 404 says so in OpenAI's error body.
    let r = s
        .http
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"model": "tiny", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");

    mark_ready(&mut s.store(), "chat", &format!("http://{up}"));
    s.bump();
    let (code, models) = s.get_json("/v1/models").await;
    assert_eq!(code, 200);
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["chat", "tiny"], "{models}");

    // Non-streaming, by model name and by module alias; upstream headers come through.
    for model in ["tiny", "chat"] {
        let r = s
            .http
            .post(s.url("/v1/chat/completions"))
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["x-upstream"], "fake");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "hello");
        // Issue 12 defect 2: a request by module alias reaches the engine under the model's
        // own name (the fake upstream echoes what it was sent), so every listed id works.
        assert_eq!(v["model"], "tiny", "asked for {model}");
    }
    let r = s
        .http
        .post(s.url("/v1/completions"))
        .json(&json!({"model": "tiny", "prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["object"],
        "text_completion"
    );

    // Streaming: the first chunk arrives while the upstream is still holding the rest.
    let r = s
        .http
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"model": "tiny", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut chunks = r.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), chunks.next())
        .await
        .expect("first chunk passed through before the upstream finished")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: {\"delta\":\"a\"}\n\n");
    gate.send(()).await.unwrap();
    let mut rest = Vec::new();
    while let Some(c) = chunks.next().await {
        rest.extend_from_slice(&c.unwrap());
    }
    assert_eq!(
        String::from_utf8(rest).unwrap(),
        "data: {\"delta\":\"b\"}\n\ndata: [DONE]\n\n"
    );

    // Unknown model: 404 listing the served ones; no model: 400.
    let r = s
        .http
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-4", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("\"gpt-4\"") && msg.contains("chat, tiny"),
        "{msg}"
    );
    let r = s
        .http
        .post(s.url("/v1/completions"))
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // A Module whose spec changed keeps its route while its Ready workload serves (a replacement
    // in progress), under the model status says it serves; once status says it is not Ready,
    // it is not served.
    let before = s.get_json("/v1/models").await.1;
    let (code, _) = s
        .post(
            "/api/v1/apply",
            &module("chat", "tiny").replace("/bin/true", "/bin/false"),
        )
        .await;
    assert_eq!(code, 200);
    s.bump();
    let (_, models) = s.get_json("/v1/models").await;
    assert_eq!(models, before);
    {
        let mut st = s.store();
        let o = st.get(Kind::Module, "chat").unwrap();
        let mut status = o.status.clone();
        status["model"] = json!("old-model");
        st.update_status(Kind::Module, "chat", None, &status)
            .unwrap();
    }
    s.bump();
    let (_, models) = s.get_json("/v1/models").await;
    let ids = models.to_string();
    assert!(
        ids.contains("old-model") && !ids.contains("\"tiny\""),
        "{models}"
    );
    {
        let mut st = s.store();
        st.update_status(Kind::Module, "chat", None, &json!({"conditions": []}))
            .unwrap();
    }
    s.bump();
    let (_, models) = s.get_json("/v1/models").await;
    assert_eq!(models["data"].as_array().unwrap().len(), 0, "{models}");

    // An upstream that does not answer is a 502 in OpenAI's error body.
    mark_ready(&mut s.store(), "chat", "http://127.0.0.1:9");
    s.bump();
    let r = s
        .http
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"model": "tiny", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 502);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "upstream_unreachable"
    );
    let _ = up_stop.send(());
    s.shutdown().await;
}
