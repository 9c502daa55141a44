//! The bearer token: generated into `$LAS_HOME/run/token` (mode 0600) and checked on TCP requests.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiContext, HttpError};
use crate::home::LasHome;

/// The token file name under `$LAS_HOME/run/`.
pub const TOKEN_FILE: &str = "token";

/// Returns the token in `$LAS_HOME/run/token`, generating it (32 random bytes, hex, mode 0600) if
/// the file does not exist yet. The daemon calls this before a non-loopback bind.
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
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
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

/// Compares in time independent of where the strings first differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) async fn require_token(
    State(ctx): State<ApiContext>,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = ctx.token.as_deref() else {
        return next.run(req).await;
    };
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
        return next.run(req).await;
    }
    let message = "a bearer token is required: send Authorization: Bearer <token> (the token is in $LAS_HOME/run/token)";
    let mut resp = if req.uri().path().starts_with("/v1/") {
        super::openai::error(
            StatusCode::UNAUTHORIZED,
            message,
            "invalid_request_error",
            "invalid_api_key",
        )
    } else {
        super::resources::status_body(StatusCode::UNAUTHORIZED, "Unauthorized", message, None)
            .into_response()
    };
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}
