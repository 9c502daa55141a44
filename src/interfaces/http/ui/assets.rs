//! The console's static files, compiled into the binary (no CDN, nothing fetched at run time).

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::harden;

/// (file name, content type, bytes).
pub(super) const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../../assets/ui/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../../assets/ui/console.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../../../assets/ui/favicon.svg"),
    ),
];

/// `GET /ui/assets/{file}`.
pub(super) async fn serve(Path(file): Path<String>) -> Response {
    let Some((_, ct, bytes)) = ASSETS.iter().find(|(n, _, _)| *n == file) else {
        return harden(StatusCode::NOT_FOUND.into_response());
    };
    let mut resp = harden(([(header::CONTENT_TYPE, *ct)], *bytes).into_response());
    // Assets change only with the binary.
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    resp
}
