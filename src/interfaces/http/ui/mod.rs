//! The web console under `/ui/`: server-rendered pages (askama templates in `templates/ui/`),
//! Fluent messages (`locales/`, see [`i18n`]), assets compiled into the binary (`assets/ui/`), and
//! one live stream per tab.
//!
//! # Guarantees
//! - Every console page needs the session cookie (from a one-time login link, see [`door`]) or the
//!   bearer token; without either it answers the sign-in page (401). The unix socket needs neither
//!   (its file mode protects it), as for the API.
//! - Every console response carries a strict Content-Security-Policy: no inline script or style,
//!   nothing loaded from anywhere but the daemon itself.
//! - Forms work without JavaScript: a console write is a form POST
//!   (`application/x-www-form-urlencoded`, accepted by [`super::auth`] only under `/ui/`) that
//!   carries the session's anti-forgery token as the `_csrf` field, checked like `X-LAS-CSRF`.
//! - Pages only record intent, through the same code as the HTTP API: apply and delete call the
//!   API's handlers, rollback calls `control::sources::rollback_guarded` (as `lasctl rollback`).
//!
//! # Caveats
//! - Plugin UI panels are not served here yet.

mod assets;
mod door;
pub mod i18n;
mod pages;
mod stream;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::ApiContext;
use super::auth::{cookie_value, session_or_token};
use i18n::{LANG_COOKIE, Lang, Tr};

pub(super) use door::new_login;

/// The console's routes (the door, pages, actions, the live stream and the assets).
pub(super) fn routes() -> Router<ApiContext> {
    Router::new()
        .route("/ui/", get(pages::overview))
        .route("/ui/login", get(door::login))
        .route("/ui/resources", get(pages::resources))
        .route("/ui/resources/{kind}/{name}", get(pages::object))
        .route("/ui/resources/{kind}/{name}/delete", post(pages::delete))
        .route("/ui/events", get(pages::events))
        .route("/ui/hardware", get(pages::hardware))
        .route("/ui/history", get(pages::history))
        .route("/ui/history/rollback", post(pages::rollback))
        .route("/ui/plan", get(pages::plan_form).post(pages::plan_post))
        .route("/ui/apply", post(pages::apply))
        .route("/ui/plugins", get(pages::plugins))
        .route(
            "/ui/playground",
            get(pages::playground).post(pages::playground_post),
        )
        .route("/ui/stream", get(stream::stream))
        .route("/ui/assets/{file}", get(assets::serve))
}

/// The headers every console response carries.
pub(crate) fn harden(mut resp: Response) -> Response {
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
        // Not `no-referrer`: with it a browser sends `Origin: null` on the console's own form
        // POSTs, which the guard refuses as cross-site. Nothing is sent to other sites.
        ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    resp
}

/// Who is looking, in which language.
#[derive(Debug, Clone)]
pub(crate) struct Viewer {
    pub tr: Tr,
    /// The session's anti-forgery token (empty for a bearer-token or socket caller).
    pub csrf: String,
    /// `?lang=` chose the language: remember it in a cookie.
    pub remember_lang: bool,
}

/// The language of a request (see [`i18n::negotiate`]).
pub(crate) fn lang_of(headers: &HeaderMap, query_lang: Option<&str>) -> (Lang, bool) {
    let lang = i18n::negotiate(
        query_lang,
        cookie_value(headers, LANG_COOKIE),
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    );
    (lang, query_lang.and_then(Lang::parse).is_some())
}

/// The viewer of a console request, or the sign-in page it gets instead.
// The error is the response the handler returns at once; boxing it would gain nothing.
#[allow(clippy::result_large_err)]
pub(crate) fn viewer(
    ctx: &ApiContext,
    headers: &HeaderMap,
    query_lang: Option<&str>,
) -> Result<Viewer, Response> {
    let (lang, remember_lang) = lang_of(headers, query_lang);
    let tr = Tr { lang };
    match session_or_token(&ctx.access, ctx.token.as_deref(), headers) {
        Some(csrf) => Ok(Viewer {
            tr,
            csrf,
            remember_lang,
        }),
        None => Err(door::message_page(
            StatusCode::UNAUTHORIZED,
            tr,
            "signin-title",
            "signin-body",
        )),
    }
}

/// The anti-forgery check of a form POST: the session's token in `_csrf` (a bearer-token or
/// socket caller has none to give and needs none).
pub(crate) fn form_allowed(viewer: &Viewer, given: Option<&str>) -> bool {
    viewer.csrf.is_empty()
        || given.is_some_and(|g| super::auth::same(g.as_bytes(), viewer.csrf.as_bytes()))
}

/// An HTML response with the console's headers (and the language cookie when `?lang=` chose it).
pub(crate) fn html(code: StatusCode, viewer_lang: Option<(Lang, bool)>, body: String) -> Response {
    let mut resp = harden(
        (
            code,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
    );
    if let Some((lang, true)) = viewer_lang
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{LANG_COOKIE}={}; SameSite=Strict; Path=/ui/; Max-Age=31536000",
            lang.code()
        ))
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// A 303 to `to` (after a form POST), with the console's headers.
pub(crate) fn see_other(to: &str) -> Response {
    let mut resp = harden(StatusCode::SEE_OTHER.into_response());
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use tower::ServiceExt;

    use super::super::{ApiContext, Metrics, RuntimeInfo, StaticDaemonInfo, router};
    use crate::control::hardware::HardwareProfile;
    use crate::home::LasHome;

    const PROFILE: &str = include_str!("../../../../tests/cases/profiles/laptop-8g.yaml");

    const DOCS: &str = "apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata: {name: alpha}\nspec: {source: /srv/alpha.gguf}\n---\napiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {name: beta}\nspec:\n  model: alpha\n  engine: {type: llama}\n";

    struct Console {
        _dir: tempfile::TempDir,
        app: axum::Router,
        /// Every word of the data the pages show (objects, profile, the tier and its reason).
        data: BTreeSet<String>,
    }

    fn words(s: &str) -> impl Iterator<Item = String> + '_ {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
    }

    async fn console(token: Option<&str>) -> Console {
        let dir = tempfile::tempdir().unwrap();
        let home = LasHome::at(dir.path());
        home.ensure().unwrap();
        let profile =
            HardwareProfile::from_yaml(std::path::Path::new("laptop-8g.yaml"), PROFILE).unwrap();
        let tier = crate::control::policy::select_tier(
            &crate::control::policy::default_policies().unwrap(),
            &profile,
        )
        .unwrap();
        let info = StaticDaemonInfo::new(
            RuntimeInfo {
                version: "0.1.0".into(),
                hardware: profile.to_json(),
                tier: Some(tier.tier.clone()),
                tier_reason: Some(tier.reason.clone()),
                capabilities: None,
            },
            StaticDaemonInfo::this_build().backends,
        );
        let (_tx, rx) = tokio::sync::watch::channel(0u64);
        let mut ctx = ApiContext::new(home, Arc::new(Metrics::new()), rx, Arc::new(info));
        if let Some(t) = token {
            ctx = ctx.with_token(t);
        }
        let app = router(ctx);
        let r = app
            .clone()
            .oneshot(
                Request::post("/api/v1/apply")
                    .header("host", "127.0.0.1")
                    .header(header::CONTENT_TYPE, "application/yaml")
                    .header(
                        header::AUTHORIZATION,
                        format!("Bearer {}", token.unwrap_or("")),
                    )
                    .body(Body::from(DOCS))
                    .unwrap(),
            )
            .await
            .unwrap();
        let code = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        assert!(
            code.is_success(),
            "{code}: {}",
            String::from_utf8_lossy(&body)
        );
        let mut data: BTreeSet<String> = words(DOCS).collect();
        data.extend(words(PROFILE));
        data.extend(words("laptop-8g.yaml"));
        data.extend(words(&tier.reason));
        data.extend(words(&tier.tier));
        Console {
            _dir: dir,
            app,
            data,
        }
    }

    async fn get(app: &axum::Router, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
        let mut req = Request::get(uri).header("host", "127.0.0.1");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let code = r.status();
        let body = axum::body::to_bytes(r.into_body(), 16 << 20).await.unwrap();
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    /// Elements whose content is data shown as it is (or script and style).
    const DATA_TAGS: &[&str] = &["pre", "code", "time", "script", "style", "title"];

    /// The text a person reads: text nodes and the attributes that show, without script, style
    /// and the contents of `<pre>`, `<code>`, `<time>` and of `class="msg"`/`class="why"` cells
    /// (data and the system's free text, shown as they are).
    fn visible_text(html: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = html;
        let mut skip: Option<String> = None;
        while let Some(lt) = rest.find('<') {
            let text = &rest[..lt];
            if skip.is_none() && !text.trim().is_empty() {
                out.push(text.trim().to_string());
            }
            let gt = rest[lt..]
                .find('>')
                .map(|g| lt + g)
                .unwrap_or(rest.len() - 1);
            let tag = &rest[lt + 1..gt];
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            match &skip {
                Some(s) if tag.starts_with('/') && name == *s => skip = None,
                Some(_) => {}
                None if !tag.starts_with('/')
                    && (DATA_TAGS.contains(&name.as_str())
                        || tag.contains("class=\"msg\"")
                        || tag.contains("class=\"why\"")) =>
                {
                    skip = Some(name.clone());
                }
                None => {
                    for attr in ["aria-label=\"", "placeholder=\"", "title=\""] {
                        if let Some(i) = tag.find(attr) {
                            let v = &tag[i + attr.len()..];
                            out.push(v[..v.find('"').unwrap_or(v.len())].to_string());
                        }
                    }
                }
            }
            rest = &rest[gt + 1..];
        }
        out
    }

    /// Text outside the pseudo-locale's markers that is not data: hard-coded.
    fn hard_coded(text: &str, data: &BTreeSet<String>) -> Vec<String> {
        let mut outside = String::new();
        let mut depth = 0;
        for c in text.chars() {
            match c {
                '⟦' => depth += 1,
                '⟧' => depth -= 1,
                c if depth == 0 => outside.push(c),
                _ => {}
            }
        }
        words(&outside)
            .filter(|w| w.chars().any(|c| c.is_alphabetic()))
            .filter(|w| !data.contains(w))
            // The switcher names each language in its own script, in every locale.
            .filter(|w| !["english", "简体中文", "deutsch"].contains(&w.as_str()))
            // Byte units and hex-free ids produced by formatting numbers.
            .filter(|w| !["b", "kib", "mib", "gib", "tib"].contains(&w.as_str()))
            .collect()
    }

    const PAGES: &[&str] = &[
        "/ui/",
        "/ui/resources",
        "/ui/resources?kind=models&sort=-name&ready=unknown",
        "/ui/resources/modules/beta",
        "/ui/resources/models/alpha",
        "/ui/events",
        "/ui/history",
        "/ui/history?a=0&b=1",
        "/ui/plan",
        "/ui/hardware",
        "/ui/plugins",
        "/ui/playground",
    ];

    #[tokio::test]
    async fn every_page_in_the_pseudo_locale_has_no_hard_coded_text() {
        let c = console(None).await;
        for page in PAGES {
            let sep = if page.contains('?') { '&' } else { '?' };
            let (code, html) = get(&c.app, &format!("{page}{sep}lang=pseudo"), &[]).await;
            assert_eq!(code, StatusCode::OK, "{page}: {html}");
            assert!(
                !html.contains('⚠'),
                "{page}: a key missing in English:\n{html}"
            );
            assert!(html.contains("⟦"), "{page}: no message at all?");
            let bad: Vec<String> = visible_text(&html)
                .iter()
                .flat_map(|t| hard_coded(t, &c.data))
                .collect();
            assert!(bad.is_empty(), "{page}: hard-coded text {bad:?} in\n{html}");
        }
        // The plan page's answer too (a POST form).
        let r = c
            .app
            .clone()
            .oneshot(
                Request::post("/ui/plan")
                    .header("host", "127.0.0.1")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Body::from(format!("lang=pseudo&yaml={}", urlencode(DOCS))))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let html =
            String::from_utf8_lossy(&axum::body::to_bytes(r.into_body(), 16 << 20).await.unwrap())
                .into_owned();
        assert!(html.contains("id=\"refusals\""), "{html}");
        let mut data = c.data.clone();
        // The plan's own sentences (details, refusals) are the system's free text.
        for l in html.lines().filter(|l| l.contains("class=\"msg\"")) {
            data.extend(words(l));
        }
        let bad: Vec<String> = visible_text(&html)
            .iter()
            .flat_map(|t| hard_coded(t, &data))
            .collect();
        assert!(bad.is_empty(), "plan result: hard-coded text {bad:?}");
    }

    fn urlencode(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn pages_need_a_session_or_the_token_and_forms_need_the_csrf_field() {
        let c = console(Some("secret")).await;
        let (code, html) = get(&c.app, "/ui/resources", &[]).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{html}");
        let (code, _) = get(&c.app, "/ui/resources", &[("authorization", "Bearer nope")]).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        let (code, html) = get(
            &c.app,
            "/ui/resources?lang=de",
            &[("authorization", "Bearer secret")],
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        assert!(html.contains("lang=\"de\""), "{html}");
        // A form POST without the session's token changes nothing.
        let r = c
            .app
            .clone()
            .oneshot(
                Request::post("/ui/resources/models/alpha/delete")
                    .header("host", "127.0.0.1")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Body::from("_csrf=wrong"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        // Form bodies are accepted only under /ui/.
        let r = c
            .app
            .clone()
            .oneshot(
                Request::post("/api/v1/apply")
                    .header("host", "127.0.0.1")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(header::AUTHORIZATION, "Bearer secret")
                    .body(Body::from("x=1"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (code, css) = get(&c.app, "/ui/assets/console.css", &[]).await;
        assert_eq!(code, StatusCode::OK);
        assert!(css.contains(".w100"));
    }

    #[tokio::test]
    async fn a_session_form_without_the_csrf_field_is_refused_and_with_it_deletes() {
        let c = console(Some("secret")).await;
        // A session, as the login link makes one.
        let access = {
            // The router holds the context; log in through the door.
            let r = c
                .app
                .clone()
                .oneshot(
                    Request::post("/api/v1/ui/logins")
                        .header("host", "127.0.0.1")
                        .header(header::AUTHORIZATION, "Bearer secret")
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Body::from("{}"))
                        .unwrap(),
                )
                .await
                .unwrap();
            let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            let url: serde_json::Value = serde_json::from_slice(&body).unwrap();
            url["url"].as_str().unwrap().to_string()
        };
        let path = &access[access.find("/ui/login").unwrap()..];
        let r = c
            .app
            .clone()
            .oneshot(
                Request::get(path)
                    .header("host", "127.0.0.1")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let cookie = r.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let (_, html) = get(&c.app, "/ui/resources/models/alpha", &[("cookie", &cookie)]).await;
        let csrf = html
            .split_once("name=\"las-csrf\" content=\"")
            .unwrap()
            .1
            .split('"')
            .next()
            .unwrap()
            .to_string();
        let post = |body: String| {
            c.app.clone().oneshot(
                Request::post("/ui/resources/models/alpha/delete")
                    .header("host", "127.0.0.1")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(header::COOKIE, cookie.clone())
                    .body(Body::from(body))
                    .unwrap(),
            )
        };
        let r = post("_csrf=wrong".into()).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let (code, _) = get(&c.app, "/ui/resources/models/alpha", &[("cookie", &cookie)]).await;
        assert_eq!(code, StatusCode::OK, "still there");
        let r = post(format!("_csrf={csrf}")).await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let (code, body) = get(
            &c.app,
            "/api/v1/models/alpha",
            &[("authorization", "Bearer secret")],
        )
        .await;
        // Deleted through the API's code path (or marked for deletion when a finalizer holds it).
        assert!(
            code == StatusCode::NOT_FOUND || body.contains("deletionTimestamp"),
            "{code} {body}"
        );
    }
}
