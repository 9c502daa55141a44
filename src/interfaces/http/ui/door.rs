//! The console's door, the way Jupyter's works: a one-time login link (printed by the daemon at
//! start and by `lasctl ui`) becomes an HttpOnly, SameSite=Strict session cookie; pages carry the
//! session's anti-forgery token, which every write sends as `X-LAS-CSRF` (scripts) or `_csrf`
//! (forms); every console response forbids framing and loads nothing from elsewhere.

use askama::Template;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::super::ApiContext;
use super::super::auth::SESSION_COOKIE;
use super::i18n::Tr;
use super::{harden, html, lang_of};

/// A page with one title and one sentence, outside the console's navigation (sign-in, an
/// expired link).
#[derive(Template)]
#[template(path = "ui/message.html")]
struct MessagePage {
    tr: Tr,
    title: String,
    body: String,
}

pub(super) fn message_page(code: StatusCode, tr: Tr, title_key: &str, body_key: &str) -> Response {
    let page = MessagePage {
        tr,
        title: tr.t(title_key),
        body: tr.t(body_key),
    };
    html(code, None, page.render().unwrap_or_default())
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginQuery {
    token: String,
}

/// `GET /ui/login?token=ONE_TIME`: consumes the link and sets the session cookie.
pub(super) async fn login(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let Some(s) = ctx.access.login(&q.token) else {
        ctx.metrics.record_refusal("login");
        let (lang, _) = lang_of(&headers, None);
        return message_page(
            StatusCode::UNAUTHORIZED,
            Tr { lang },
            "login-expired-title",
            "login-expired-body",
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

/// `POST /api/v1/ui/logins`: a new one-time login link (owner only: token or unix socket).
pub(in super::super) async fn new_login(State(ctx): State<ApiContext>) -> Response {
    let token = ctx.access.mint_login();
    (
        StatusCode::CREATED,
        Json(json!({"url": format!("{}/ui/login?token={token}", ctx.access.base_url())})),
    )
        .into_response()
}
