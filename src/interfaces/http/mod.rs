//! The daemon's HTTP surface: the management API under `/api/v1/`, `/healthz`, `/metrics`, and the
//! OpenAI-compatible endpoint under `/v1/`.
//!
//! This layer reads and records state through the store ([`crate::control::store`]) only; what only
//! the running daemon knows (hardware, backends, module logs) comes through [`DaemonInfo`]. It never
//! talks to Docker or processes itself.
//!
//! # Guarantees
//! - The same router is served on TCP and on the unix socket `$LAS_HOME/run/lasd.sock` (mode 0600).
//! - Every request passes [`auth`]'s guard before routing: a Host allowlist, no cross-site writes,
//!   and the bearer token on TCP (see that module for what stays open and why). A non-loopback
//!   TCP bind is refused unless a bearer token is configured.
//! - Resources are bounded per request and per peer: request heads must arrive within
//!   [`HEADER_TIMEOUT`], at most [`MAX_CONNECTIONS`] connections are served at once per listener,
//!   bodies are capped at [`MAX_BODY_BYTES`], and at most [`HEAVY_REQUESTS`] applies are read and
//!   decoded at once (off the async threads), so `/healthz` answers while they run.
//! - Streams (server-sent events, followed logs, proxied completions) end when the server shuts
//!   down, so a graceful shutdown never waits on an idle client.

mod auth;
pub mod client;
mod events;
mod info;
mod metrics;
mod openai;
pub mod openapi;
pub mod ps;
mod resources;
mod ui;
mod workflows;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use tokio::sync::watch;

pub use auth::{
    Access, CSRF_HEADER, Peer, Refusal, SESSION_COOKIE, TOKEN_FILE, check, ensure_token, read_token,
};
pub use info::{
    BackendsInfo, BoxFuture, ByteStream, DaemonInfo, DockerInfo, EngineInfo, LogOptions, LogsError,
    RuntimeInfo, StaticDaemonInfo, built_in_engines,
};
pub use metrics::Metrics;

use crate::control::store::{Store, StoreError};
use crate::home::LasHome;

/// The socket file name under `$LAS_HOME/run/`.
pub const SOCKET_FILE: &str = "lasd.sock";
/// The default TCP address of the management API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7411";
/// A connection must send a whole request head within this time (slow-header clients are cut).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once per listener; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// The largest request body: a call of several documents of at most
/// [`crate::api::decode::MAX_DOC_BYTES`] each (a bigger set is split into several applies).
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// Applies read and decoded at once; others wait their turn before their body is read.
pub const HEAVY_REQUESTS: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "refusing to listen on {addr}: binding anything other than loopback requires a bearer token; \
         generate one into $LAS_HOME/run/token (the daemon does this with --token) or listen on 127.0.0.1"
    )]
    TokenRequired { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    BindTcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on unix socket {path}: {source}")]
    BindUnix {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another daemon already answers on {path}: stop it first (or remove the socket if it is stale)"
    )]
    SocketInUse { path: PathBuf },
    #[error("cannot write token file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// Everything the handlers share. Cheap to clone.
///
/// The daemon keeps the `watch::Sender<u64>` whose receiver is passed here and bumps it after every
/// write to the store; server-sent event streams and the OpenAI route table wake on it.
#[derive(Clone)]
pub struct ApiContext {
    pub home: LasHome,
    pub metrics: Arc<Metrics>,
    pub changes: watch::Receiver<u64>,
    pub daemon: Arc<dyn DaemonInfo>,
    /// The bearer token TCP requests must carry; `None` means no token is required (loopback only).
    pub token: Option<String>,
    /// Host allowlist, console sessions and what stays open without a token.
    pub access: Arc<Access>,
    /// Permits for reading and decoding apply bodies ([`HEAVY_REQUESTS`]).
    pub(crate) heavy: Arc<tokio::sync::Semaphore>,
    /// A failure the daemon found that `/healthz` must report.
    pub health: Health,
    pub(crate) shutdown: Arc<watch::Sender<bool>>,
    pub(crate) upstream: reqwest::Client,
    pub(crate) routes: Arc<openai::RouteCache>,
    /// The active plugin contributions the `/v1` path and applies call.
    pub plugins: Arc<crate::control::plugins::PluginHost>,
}

impl ApiContext {
    pub fn new(
        home: LasHome,
        metrics: Arc<Metrics>,
        changes: watch::Receiver<u64>,
        daemon: Arc<dyn DaemonInfo>,
    ) -> Self {
        let upstream = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        let home_for_plugins = home.clone();
        ApiContext {
            home,
            metrics,
            changes,
            daemon,
            token: None,
            access: Arc::new(Access::default()),
            heavy: Arc::new(tokio::sync::Semaphore::new(HEAVY_REQUESTS)),
            health: Health::default(),
            shutdown: Arc::new(watch::channel(false).0),
            upstream,
            routes: Arc::new(openai::RouteCache::default()),
            plugins: Arc::new(crate::control::plugins::PluginHost::new(
                home_for_plugins,
                Arc::new(crate::sandbox::WasmiEngine::new()),
            )),
        }
    }

    /// Shares the daemon's plugin host (its compiled modules and statistics).
    pub fn with_plugins(mut self, plugins: Arc<crate::control::plugins::PluginHost>) -> Self {
        self.plugins = plugins;
        self
    }

    /// Requires `token` on TCP requests (see [`auth`] for what stays open).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Replaces the access rules (extra host names, `/v1` without a token).
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = Arc::new(access);
        self
    }

    /// Runs `f` with a store opened for this call, on the blocking pool (SQLite WAL lets these run
    /// beside the daemon's own connection).
    pub(crate) async fn with_store<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.home.state_db();
        tokio::task::spawn_blocking(move || {
            let mut store = Store::open(&db)?;
            f(&mut store)
        })
        .await
        .unwrap_or_else(|e| {
            Err(StoreError::Corrupt {
                kind: "request".into(),
                name: "store".into(),
                message: format!("store task failed: {e}"),
            })
        })
    }

    /// A receiver that turns true when the server shuts down; streams end on it.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// The whole HTTP surface as one router (auth applies when `ctx.token` is set).
pub fn router(ctx: ApiContext) -> Router {
    let api = Router::new()
        .route("/api/v1/openapi.json", get(openapi::serve))
        .route("/api/v1/runtime", get(resources::runtime))
        .route("/api/v1/backends", get(resources::backends))
        .route("/api/v1/ps", get(ps::list))
        .route("/api/v1/events", get(events::stream).post(events::publish))
        .route("/api/v1/apply", post(resources::apply))
        .route(
            "/api/v1/{kind}",
            get(resources::list).post(resources::apply_kind),
        )
        .route(
            "/api/v1/{kind}/{name}",
            get(resources::get_one)
                .put(resources::put_one)
                .delete(resources::delete_one),
        )
        .route("/api/v1/{kind}/{name}/logs", get(resources::logs))
        .route(
            "/api/v1/plugins/inventory",
            get(resources::plugin_inventory),
        )
        .route("/api/v1/plugins/{name}/test", post(resources::plugin_test))
        .route(
            "/api/v1/plugins/{name}/commands",
            get(workflows::list_commands),
        )
        .route(
            "/api/v1/plugins/{name}/commands/{id}",
            post(workflows::run_command),
        )
        .route("/api/v1/workflows", get(workflows::list_workflows))
        .route(
            "/api/v1/workflows/{name}/runs",
            get(workflows::list_runs).post(workflows::start_run),
        )
        .route("/api/v1/workflow-runs", get(workflows::list_all_runs))
        .route("/api/v1/workflow-runs/{id}", get(workflows::get_run))
        .route("/api/v1/ui/logins", post(ui::new_login))
        .merge(ui::routes())
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::proxy))
        .route("/v1/completions", post(openai::proxy))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::serve))
        // An empty 404 that `error_bodies` gives its body.
        .fallback(|| async { axum::http::StatusCode::NOT_FOUND });
    api.layer(axum::middleware::from_fn(error_bodies))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            auth::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            metrics::track,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(ctx)
}

/// Gives every error one body shape, whoever produced it (a handler, an extractor's rejection
/// such as a bad query parameter, the router's 404 and 405): a Kubernetes `Status` under
/// `/api/`, OpenAI's error body under `/v1/`. `/healthz`, `/metrics` and the console's pages
/// keep their plain text. An error that already has a JSON body is left as it is.
async fn error_bodies(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::header;
    use axum::response::IntoResponse;
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let res = next.run(req).await;
    let code = res.status();
    let json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let plain_route = path == "/healthz" || path == "/metrics" || path.starts_with("/ui/");
    if !(code.is_client_error() || code.is_server_error()) || json || plain_route {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if !text.is_empty() {
        text
    } else if code == axum::http::StatusCode::METHOD_NOT_ALLOWED {
        let allow = parts
            .headers
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        format!("{method} is not allowed on {path}; allowed: {allow}")
    } else if code == axum::http::StatusCode::NOT_FOUND {
        format!("no route {path}: see /api/v1/openapi.json")
    } else {
        code.canonical_reason().unwrap_or("error").to_string()
    };
    let reason = match code {
        axum::http::StatusCode::BAD_REQUEST => "BadRequest",
        axum::http::StatusCode::NOT_FOUND => "NotFound",
        axum::http::StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => "RequestEntityTooLarge",
        axum::http::StatusCode::UNPROCESSABLE_ENTITY => "Invalid",
        c if c.is_server_error() => "InternalError",
        _ => "BadRequest",
    };
    let mut fresh = if path.starts_with("/v1/") {
        openai::error(
            code,
            &message,
            "invalid_request_error",
            &reason.to_lowercase(),
        )
    } else {
        resources::status_body(code, reason, &message, None).into_response()
    };
    // Keep what the original said beyond its body (Allow on a 405, WWW-Authenticate, ...).
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            fresh.headers_mut().insert(k.clone(), v.clone());
        }
    }
    fresh
}

/// What `/healthz` reports beyond "the server answers": a failure the daemon found (its state
/// database deleted, replaced or corrupt). Cheap to clone; shared with the daemon.
#[derive(Clone, Default)]
pub struct Health(Arc<HealthInner>);

#[derive(Default)]
struct HealthInner {
    failure: std::sync::Mutex<Option<String>>,
    /// The daemon opened `state.db`: its absence is a failure (and never a reason to create one).
    db_required: std::sync::atomic::AtomicBool,
}

impl Health {
    pub fn fail(&self, reason: String) {
        *self.0.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }
    pub fn clear(&self) {
        *self.0.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
    pub fn failure(&self) -> Option<String> {
        self.0
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// From now on a missing `state.db` is unhealthy.
    pub fn require_db(&self) {
        self.0
            .db_required
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// 200 `ok` only when the daemon reports no failure and the state database opens and answers a
/// read the way every API request's does; else 503 with the reason.
async fn healthz(
    axum::extract::State(ctx): axum::extract::State<ApiContext>,
) -> (axum::http::StatusCode, String) {
    let unhealthy = |r: String| {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {r}\n"),
        )
    };
    if let Some(r) = ctx.health.failure() {
        return unhealthy(r);
    }
    let db = ctx.home.state_db();
    if !db.exists() {
        if ctx
            .health
            .0
            .db_required
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return unhealthy(format!("state database {} is missing", db.display()));
        }
        return (axum::http::StatusCode::OK, "ok\n".into());
    }
    match ctx.with_store(|s| s.current_resource_version()).await {
        Ok(_) => (axum::http::StatusCode::OK, "ok\n".into()),
        Err(e) => unhealthy(format!("state database {}: {e}", db.display())),
    }
}

/// The default socket path for a state directory.
pub fn socket_path(home: &LasHome) -> PathBuf {
    home.run().join(SOCKET_FILE)
}

/// A bound server: TCP and unix listeners, not yet serving.
pub struct Server {
    ctx: ApiContext,
    tcp: tokio::net::TcpListener,
    unix: tokio::net::UnixListener,
    socket: PathBuf,
}

impl Server {
    /// Binds both listeners.
    ///
    /// # Caveats
    /// A socket file left by a dead daemon is removed; one that still answers is an error.
    pub async fn bind(
        ctx: ApiContext,
        listen: SocketAddr,
        unix_socket: PathBuf,
    ) -> Result<Server, HttpError> {
        if !listen.ip().is_loopback() && ctx.token.is_none() {
            return Err(HttpError::TokenRequired { addr: listen });
        }
        let unix = bind_unix(&unix_socket).await?;
        let tcp = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| HttpError::BindTcp {
                addr: listen,
                source,
            })?;
        if let Ok(a) = tcp.local_addr() {
            ctx.access.bound(a);
        }
        Ok(Server {
            ctx,
            tcp,
            unix,
            socket: unix_socket,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Serves until `shutdown` completes, then drains: open streams end, in-flight requests finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), HttpError> {
        let Server {
            ctx,
            tcp,
            unix,
            socket,
        } = self;
        let tx = ctx.shutdown.clone();
        let mut unix_ctx = ctx.clone();
        // The socket is protected by its file mode (0600 in a 0700 directory), not by the token.
        unix_ctx.token = None;
        let tcp_app = router(ctx);
        let unix_app = router(unix_ctx);
        let rx1 = tx.subscribe();
        let rx2 = tx.subscribe();
        tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        let (a, b) = tokio::join!(
            accept_loop(tcp, tcp_app, |a: &SocketAddr| Peer::Tcp(*a), rx1),
            accept_loop(unix, unix_app, |_| Peer::Unix, rx2),
        );
        let _ = std::fs::remove_file(&socket);
        a.map_err(HttpError::Serve)?;
        b.map_err(HttpError::Serve)?;
        Ok(())
    }
}

/// Completes when the shutdown flag turns true (holding no borrow of it afterwards).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Serves `app` on `listener` until `stop` turns true, then lets open connections finish their
/// requests. Each connection is HTTP/1.1 with a request-head timeout ([`HEADER_TIMEOUT`]), at most
/// [`MAX_CONNECTIONS`] at once, and its [`Peer`] in every request's extensions.
async fn accept_loop<L>(
    mut listener: L,
    app: Router,
    peer_of: fn(&L::Addr) -> Peer,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("never closed"),
            _ = stopped(&mut stop) => break,
        };
        let (io, addr) = tokio::select! {
            c = listener.accept() => c,
            _ = stopped(&mut stop) => break,
        };
        let peer = peer_of(&addr);
        let app = app.clone();
        let mut stop = stop.clone();
        conns.spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(
                move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer);
                    app.clone().oneshot(req.map(axum::body::Body::new))
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(io), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        // Reap finished connections so the set does not grow with the server's lifetime.
        while conns.try_join_next().is_some() {}
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Binds the same router on `listen` and on `unix_socket` and serves until `shutdown` completes.
pub async fn serve(
    ctx: ApiContext,
    listen: SocketAddr,
    unix_socket: PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    Server::bind(ctx, listen, unix_socket)
        .await?
        .run(shutdown)
        .await
}

async fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, HttpError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let err = |source| HttpError::BindUnix {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() && tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(HttpError::SocketInUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    if let Some(parent) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(err)?;
    }
    let l = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(l)
}
