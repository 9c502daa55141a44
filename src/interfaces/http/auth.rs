//! Who may drive the daemon over HTTP.
//!
//! The management API is as powerful as the Docker socket (a native Module runs any command), so
//! every request passes [`guard`] before it is routed:
//!
//! 1. **Host allowlist** (every listener): the `Host` must be an IP literal (`127.0.0.1`, `[::1]`,
//!    an address of this machine), `localhost`, or a name given with `--allow-host`. A page that
//!    rebinds its own DNS name to 127.0.0.1 still sends its own name, and is refused (403); a page
//!    cannot make a browser send an IP literal that does not route to this machine.
//! 2. **No cross-site writes**: a request with any method but GET/HEAD/OPTIONS is refused when its
//!    `Origin` is not the daemon's own (`http://<allowed host>:<our port>`) or its `Sec-Fetch-Site`
//!    is not `same-origin`/`none` (403), and when its body is not `application/json` or
//!    `application/yaml` (415). Browsers must preflight such a request, and the daemon answers no
//!    CORS, so no page on another origin can send one. The one exception: the web console's own
//!    forms (`application/x-www-form-urlencoded`, `POST /ui/…` only), which still need our own
//!    `Origin`, the SameSite=Strict session cookie and its anti-forgery `_csrf` field (checked by
//!    the console's handlers).
//! 3. **Only the owner** (TCP, when a token is configured — the daemon always configures one): the
//!    bearer token from `$LAS_HOME/run/token` (0600), or the web console's session cookie (with its
//!    anti-forgery header on writes). Open without a token: `/healthz` to anyone; `/metrics` and
//!    `/v1/*` to loopback peers only (`/v1` can be closed with `--v1-requires-token`). The unix
//!    socket is protected by its file mode (0600) instead.
//!
//! Refusals are counted in `/metrics` (`las_http_refused_total{reason}`) and logged with the
//! route, the peer and the reason, never with a token. Tokens are compared in constant time.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiContext, HttpError};
use crate::home::LasHome;

/// The token file name under `$LAS_HOME/run/`.
pub const TOKEN_FILE: &str = "token";
/// The web console's session cookie.
pub const SESSION_COOKIE: &str = "las_session";
/// The header a console write carries with the session's anti-forgery token.
pub const CSRF_HEADER: &str = "x-las-csrf";
/// How long a console session lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long a one-time login link stays valid.
const LOGIN_TTL: Duration = Duration::from_secs(15 * 60);

/// Returns the token in `$LAS_HOME/run/token`, generating it (128 random bits as hex, mode 0600)
/// if the file does not exist yet. The daemon calls this at every start.
pub fn ensure_token(home: &LasHome) -> Result<String, HttpError> {
    let path = home.run().join(TOKEN_FILE);
    if let Some(t) = read_token(home) {
        return Ok(t);
    }
    let err = |source| HttpError::Token {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(err)?;
    }
    let token = random_hex();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    f.write_all(token.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    Ok(token)
}

/// The token in `$LAS_HOME/run/token`, if there is a non-empty one that this user can read.
pub fn read_token(home: &LasHome) -> Option<String> {
    let t = std::fs::read_to_string(home.run().join(TOKEN_FILE)).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// 256 random bits as hex (two v4 UUIDs: the OS's random source).
fn random_hex() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Compares in time independent of where the strings first differ.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where a connection comes from; the server puts one into every request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix,
}

impl Peer {
    fn is_loopback(self) -> bool {
        match self {
            Peer::Tcp(a) => a.ip().is_loopback(),
            Peer::Unix => true,
        }
    }
}

/// The access rules of one server (see the module docs).
#[derive(Debug)]
pub struct Access {
    /// Host names (lower case, IPv6 without brackets) a request may name.
    hosts: BTreeSet<String>,
    /// The TCP address once bound: its port recognises our own `Origin`.
    bound: OnceLock<SocketAddr>,
    /// `/v1/*` answers loopback peers without a token.
    open_v1: bool,
    logins: Mutex<HashMap<String, Instant>>,
    sessions: Mutex<HashMap<String, Session>>,
}

#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    expires: Instant,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            hosts: ["localhost"].into_iter().map(String::from).collect(),
            bound: OnceLock::new(),
            open_v1: true,
            logins: Mutex::default(),
            sessions: Mutex::default(),
        }
    }
}

/// A console session: the cookie value and the anti-forgery token its writes carry.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: String,
    pub csrf: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Access {
    /// The defaults plus `extra` host names (`--allow-host`).
    pub fn new(extra_hosts: &[String], open_v1: bool) -> Self {
        let mut a = Access {
            open_v1,
            ..Default::default()
        };
        for h in extra_hosts {
            a.hosts.insert(normalise_host(h));
        }
        a
    }

    /// Called once the TCP address is known: its port is part of our own `Origin`.
    pub(crate) fn bound(&self, addr: SocketAddr) {
        let _ = self.bound.set(addr);
    }

    /// `http://HOST:PORT` of the TCP listener, for links a browser opens on this machine.
    pub fn base_url(&self) -> String {
        match self.bound.get() {
            Some(a) if a.ip().is_unspecified() => format!("http://127.0.0.1:{}", a.port()),
            Some(a) => format!("http://{a}"),
            None => "http://127.0.0.1:7411".into(),
        }
    }

    /// The host names requests may use, for messages.
    pub fn hosts(&self) -> Vec<String> {
        self.hosts.iter().cloned().collect()
    }

    /// An IP literal cannot be rebound by a web page (only names can), so it is always allowed;
    /// a name must be on the allowlist.
    fn host_allowed(&self, host: &str) -> bool {
        let h = normalise_host(strip_port(host));
        h.parse::<IpAddr>().is_ok() || self.hosts.contains(&h)
    }

    /// `Origin` is ours: `http://<allowed host>:<our port>`.
    fn origin_is_ours(&self, origin: &str) -> bool {
        let Some(rest) = origin.strip_prefix("http://") else {
            return false;
        };
        let (host, port) = split_host_port(rest);
        self.host_allowed(host)
            && port.and_then(|p| p.parse::<u16>().ok()) == self.bound.get().map(|a| a.port())
    }

    /// A one-time login token for the web console (valid for 15 minutes, consumed on use).
    pub fn mint_login(&self) -> String {
        let t = random_hex();
        let mut l = lock(&self.logins);
        l.retain(|_, exp| *exp > Instant::now());
        l.insert(t.clone(), Instant::now() + LOGIN_TTL);
        t
    }

    /// Consumes a one-time login token and opens a session.
    pub fn login(&self, one_time: &str) -> Option<NewSession> {
        let valid = {
            let mut l = lock(&self.logins);
            let key = l
                .keys()
                .find(|k| same(k.as_bytes(), one_time.as_bytes()))?
                .clone();
            l.remove(&key).is_some_and(|exp| exp > Instant::now())
        };
        if !valid {
            return None;
        }
        let s = NewSession {
            id: random_hex(),
            csrf: random_hex(),
        };
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, v| v.expires > Instant::now());
        sessions.insert(
            s.id.clone(),
            Session {
                csrf: s.csrf.clone(),
                expires: Instant::now() + SESSION_TTL,
            },
        );
        Some(s)
    }

    /// The anti-forgery token of a live session named by the request's cookie.
    pub fn session_csrf(&self, headers: &HeaderMap) -> Option<String> {
        let id = cookie_value(headers, SESSION_COOKIE)?;
        let sessions = lock(&self.sessions);
        let (_, s) = sessions
            .iter()
            .find(|(k, s)| same(k.as_bytes(), id.as_bytes()) && s.expires > Instant::now())?;
        Some(s.csrf.clone())
    }
}

fn normalise_host(h: &str) -> String {
    h.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// `host[:port]` or `[v6][:port]` → (host, port).
fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if let Some(rest) = s.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (s, None),
    }
}

fn strip_port(s: &str) -> &str {
    split_host_port(s).0
}

/// The value of cookie `name` in a request.
pub(crate) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A console page's caller: a live session (its anti-forgery token), or — on a server that
/// requires no token (the unix socket) or with the right bearer token — the owner (an empty
/// token: such callers need none). `None`: neither.
pub(crate) fn session_or_token(
    access: &Access,
    token: Option<&str>,
    headers: &HeaderMap,
) -> Option<String> {
    if let Some(csrf) = access.session_csrf(headers) {
        return Some(csrf);
    }
    let Some(token) = token else {
        return Some(String::new());
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)?;
    same(bearer.as_bytes(), token.as_bytes()).then(String::new)
}

/// A console form's body (`application/x-www-form-urlencoded`), accepted only by `POST /ui/…`:
/// those handlers check the session and its `_csrf` field themselves.
fn console_form(req: &Request) -> bool {
    req.method() == Method::POST
        && req.uri().path().starts_with("/ui/")
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
}

/// Why a request was refused; the label of `las_http_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Host,
    Origin,
    FetchSite,
    ContentType,
    NoToken,
    WrongToken,
    Csrf,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Host => "host",
            Refusal::Origin => "origin",
            Refusal::FetchSite => "fetch-site",
            Refusal::ContentType => "content-type",
            Refusal::NoToken => "no-token",
            Refusal::WrongToken => "wrong-token",
            Refusal::Csrf => "csrf",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Refusal::Host | Refusal::Origin | Refusal::FetchSite | Refusal::Csrf => {
                StatusCode::FORBIDDEN
            }
            Refusal::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::NoToken | Refusal::WrongToken => StatusCode::UNAUTHORIZED,
        }
    }
}

/// A body type writes accept (so that no HTML form and no "simple" cross-origin fetch can send one).
fn write_content_type_ok(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "application/json" | "application/yaml" | "application/x-yaml"
    ) || (essence.starts_with("application/")
        && (essence.ends_with("+json") || essence.ends_with("+yaml")))
}

fn is_write(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The checks of the module docs, in order, for a request from `peer` to a server that requires
/// `token` (if any). `Ok(())` lets the request through; an error is the reason and a sentence.
pub fn check(
    access: &Access,
    token: Option<&str>,
    peer: Peer,
    req: &Request,
) -> Result<(), (Refusal, String)> {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    match host {
        Some(h) if access.host_allowed(h) => {}
        None if peer == Peer::Unix => {}
        other => {
            return Err((
                Refusal::Host,
                format!(
                    "host {:?} is not served here: the daemon answers to IP addresses and {} (add names \
                     with --allow-host); this guards against DNS rebinding",
                    other.unwrap_or(""),
                    access.hosts().join(", ")
                ),
            ));
        }
    }
    if is_write(req.method()) {
        if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
            && !matches!(site, "same-origin" | "none")
        {
            return Err((
                Refusal::FetchSite,
                format!("a {site} request may not change anything here"),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let o = origin.to_str().unwrap_or("");
            if peer == Peer::Unix || !access.origin_is_ours(o) {
                return Err((
                    Refusal::Origin,
                    format!("origin {o:?} may not change anything here (cross-site request)"),
                ));
            }
        }
        if req.method() != Method::DELETE && !write_content_type_ok(headers) && !console_form(req) {
            return Err((
                Refusal::ContentType,
                "send the body as application/json or application/yaml".into(),
            ));
        }
    }
    let Some(token) = token else {
        return Ok(());
    };
    if peer == Peer::Unix {
        return Ok(());
    }
    let path = req.uri().path();
    let open = path == "/healthz"
        || path.starts_with("/ui/")
        || path == "/ui"
        || (peer.is_loopback()
            && (path == "/metrics" || (access.open_v1 && path.starts_with("/v1/"))));
    if open {
        return Ok(());
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match bearer {
        Some(g) if same(g.as_bytes(), token.as_bytes()) => return Ok(()),
        Some(_) => {
            return Err((
                Refusal::WrongToken,
                "the bearer token is wrong: use the one in $LAS_HOME/run/token of this daemon's home".into(),
            ));
        }
        None => {}
    }
    if let Some(csrf) = access.session_csrf(headers) {
        if !is_write(req.method()) {
            return Ok(());
        }
        let given = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        return match given {
            Some(g) if same(g.as_bytes(), csrf.as_bytes()) => Ok(()),
            _ => Err((
                Refusal::Csrf,
                format!("a console write must carry the session's {CSRF_HEADER} header"),
            )),
        };
    }
    Err((
        Refusal::NoToken,
        "a bearer token is required: send Authorization: Bearer <token> (the token is in $LAS_HOME/run/token)".into(),
    ))
}

/// The middleware: refuses what [`check`] refuses, before routing.
pub(super) async fn guard(State(ctx): State<ApiContext>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<Peer>()
        .copied()
        .unwrap_or(Peer::Tcp(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0)));
    let Err((why, message)) = check(&ctx.access, ctx.token.as_deref(), peer, &req) else {
        return next.run(req).await;
    };
    ctx.metrics.record_refusal(why.label());
    tracing::warn!(
        method = %req.method(),
        path = req.uri().path(),
        peer = ?peer,
        reason = why.label(),
        "request refused"
    );
    let code = why.status();
    let mut resp = if req.uri().path().starts_with("/v1/") {
        // OpenAI's own code for a missing or wrong key, so its clients say the right thing.
        let err_code = match why {
            Refusal::NoToken | Refusal::WrongToken => "invalid_api_key",
            other => other.label(),
        };
        super::openai::error(code, &message, "invalid_request_error", err_code)
    } else {
        let reason = code
            .canonical_reason()
            .unwrap_or("Forbidden")
            .replace(' ', "");
        super::resources::status_body(code, &reason, &message, None).into_response()
    };
    if code == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_origins() {
        let a = Access::new(&["My-Box.lan".into()], true);
        a.bound("127.0.0.1:7411".parse().unwrap());
        for ok in [
            "localhost",
            "localhost:7411",
            "127.0.0.1:7411",
            "[::1]:7411",
            "my-box.lan",
            "LOCALHOST.",
        ] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:7411",
            "127.0.0.1.nip.io",
            "",
            "localhost.evil",
            "0x7f.1",
        ] {
            assert!(!a.host_allowed(bad), "{bad}");
        }
        assert!(a.origin_is_ours("http://localhost:7411"));
        assert!(a.origin_is_ours("http://[::1]:7411"));
        for bad in [
            "http://localhost:3000",
            "http://evil.example:7411",
            "https://localhost:7411",
            "null",
            "http://localhost",
        ] {
            assert!(!a.origin_is_ours(bad), "{bad}");
        }
    }

    #[test]
    fn ip_literals_are_allowed() {
        let a = Access::default();
        a.bound("0.0.0.0:7411".parse().unwrap());
        assert!(a.host_allowed("192.0.2.7:7411"));
        assert!(a.host_allowed("[2001:db8::1]:7411"));
        assert!(a.origin_is_ours("http://192.0.2.7:7411"));
    }

    #[test]
    fn login_tokens_are_one_time() {
        let a = Access::default();
        let t = a.mint_login();
        let s = a.login(&t).expect("first use");
        assert!(a.login(&t).is_none(), "second use");
        assert!(a.login("nope").is_none());
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {SESSION_COOKIE}={}", s.id)).unwrap(),
        );
        assert_eq!(a.session_csrf(&h), Some(s.csrf));
    }

    #[test]
    fn only_json_and_yaml_bodies_may_write() {
        let mut h = HeaderMap::new();
        assert!(!write_content_type_ok(&h));
        for (ct, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("application/yaml", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("multipart/form-data; boundary=x", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(write_content_type_ok(&h), ok, "{ct}");
        }
    }
}
