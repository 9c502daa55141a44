//! The web console's door, the way Jupyter's works: a one-time login link (printed by the daemon
//! at start and by `lasctl ui`) becomes an HttpOnly, SameSite=Strict session cookie; the page
//! carries the session's anti-forgery token, which every write sends as `X-LAS-CSRF`; every
//! console response forbids framing and loads nothing from elsewhere.
//!
//! The console's pages themselves arrive with the web UI; this module is the security boundary
//! they sit behind.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::ApiContext;
use super::auth::{CSRF_HEADER, SESSION_COOKIE};

/// The headers every console response carries.
fn harden(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    for (k, v) in [
        (
            "content-security-policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
             frame-ancestors 'none'",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    resp
}

fn page(code: StatusCode, title: &str, body: &str, csrf: Option<&str>) -> Response {
    let meta = csrf
        .map(|c| format!("<meta name=\"las-csrf\" content=\"{c}\">"))
        .unwrap_or_default();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{meta}\
         <link rel=\"icon\" href=\"data:,\"><title>{title} — LocalAIStack</title></head>\
         <body><h1>{title}</h1><p>{body}</p></body></html>"
    );
    harden(
        (
            code,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
    )
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginQuery {
    token: String,
}

/// `GET /ui/login?token=ONE_TIME`: consumes the link and sets the session cookie.
pub(super) async fn login(State(ctx): State<ApiContext>, Query(q): Query<LoginQuery>) -> Response {
    let Some(s) = ctx.access.login(&q.token) else {
        ctx.metrics.record_refusal("login");
        return page(
            StatusCode::UNAUTHORIZED,
            "Link expired",
            "This login link was used already or has expired. Run <code>lasctl ui</code> for a new one.",
            None,
        );
    };
    let mut resp = harden(
        (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, "/ui/")],
            String::new(),
        )
            .into_response(),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200",
        s.id
    )) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// `GET /ui/`: the console (for a session), else how to log in.
pub(super) async fn index(State(ctx): State<ApiContext>, headers: HeaderMap) -> Response {
    match ctx.access.session_csrf(&headers) {
        Some(csrf) => page(
            StatusCode::OK,
            "LocalAIStack",
            &format!(
                "Signed in. Writes from this page send the <code>{CSRF_HEADER}</code> header."
            ),
            Some(&csrf),
        ),
        None => page(
            StatusCode::UNAUTHORIZED,
            "Sign in",
            "Open the link that <code>lasctl ui</code> prints (or the daemon printed at start).",
            None,
        ),
    }
}

/// `POST /api/v1/ui/logins`: a new one-time login link (owner only: token or unix socket).
pub(super) async fn new_login(State(ctx): State<ApiContext>) -> Response {
    let token = ctx.access.mint_login();
    (
        StatusCode::CREATED,
        Json(json!({"url": format!("{}/ui/login?token={token}", ctx.access.base_url())})),
    )
        .into_response()
}
