//! A container registry for tests, speaking the Docker Registry HTTP API V2 (the subset `docker
//! push` and `docker pull` use: blob uploads in chunks or whole, blob and manifest GET/HEAD,
//! manifest PUT), in memory, on 127.0.0.1 (which the Docker engine treats as an insecure registry
//! by default). This machine reaches no registry; this one gives images real repository digests,
//! so digest-pinned references (`127.0.0.1:PORT/name@sha256:…`) can be pushed, pulled and run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use sha2::Digest;

#[derive(Default)]
struct Data {
    blobs: HashMap<String, Bytes>,
    /// (repository, tag or digest) → (media type, bytes)
    manifests: HashMap<(String, String), (String, Bytes)>,
    uploads: HashMap<String, Vec<u8>>,
}

type Shared = Arc<Mutex<Data>>;

/// A running registry; it stops with the test process.
pub struct Registry {
    pub addr: std::net::SocketAddr,
}

impl Registry {
    pub fn start() -> Registry {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(l.local_addr().unwrap()).unwrap();
                let app = axum::Router::new()
                    .fallback(handle)
                    .with_state(Shared::default());
                axum::serve(l, app).await.unwrap();
            });
        });
        Registry {
            addr: rx.recv().unwrap(),
        }
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

fn digest_of(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

fn reply(code: StatusCode, headers: &[(header::HeaderName, String)], body: Bytes) -> Response {
    let mut r = (code, body).into_response();
    for (k, v) in headers {
        r.headers_mut()
            .insert(k.clone(), HeaderValue::from_str(v).unwrap());
    }
    r
}

/// A blob or manifest: its bytes (none for HEAD) with its digest, type and length.
fn content(method: &Method, content_type: &str, b: &Bytes) -> Response {
    let h = [
        (
            header::HeaderName::from_static("docker-content-digest"),
            digest_of(b),
        ),
        (header::CONTENT_TYPE, content_type.to_string()),
        (header::CONTENT_LENGTH, b.len().to_string()),
    ];
    let body = if *method == Method::HEAD {
        Bytes::new()
    } else {
        b.clone()
    };
    reply(StatusCode::OK, &h, body)
}

fn not_found(what: &str) -> Response {
    let body = format!(r#"{{"errors":[{{"code":"{what}","message":"unknown"}}]}}"#);
    reply(
        StatusCode::NOT_FOUND,
        &[(header::CONTENT_TYPE, "application/json".into())],
        body.into(),
    )
}

fn query(uri: &Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.replace("%3A", ":").replace("%3a", ":"))
    })
}

async fn handle(
    State(data): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let api = (
        header::HeaderName::from_static("docker-distribution-api-version"),
        "registry/2.0".to_string(),
    );
    if path == "/v2/" || path == "/v2" {
        return reply(StatusCode::OK, &[api], Bytes::new());
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return not_found("UNSUPPORTED");
    };
    let mut d = data.lock().unwrap();
    let digest_header = |dg: &str| {
        (
            header::HeaderName::from_static("docker-content-digest"),
            dg.to_string(),
        )
    };
    // Uploads: /v2/<name>/blobs/uploads/[<uuid>]
    if let Some((name, id)) = rest.split_once("/blobs/uploads") {
        let id = id.trim_start_matches('/').to_string();
        let location = |id: &str| (header::LOCATION, format!("/v2/{name}/blobs/uploads/{id}"));
        let uuid_header = |id: &str| {
            (
                header::HeaderName::from_static("docker-upload-uuid"),
                id.to_string(),
            )
        };
        let finish = |d: &mut Data, bytes: Vec<u8>, want: String| {
            let got = digest_of(&bytes);
            if got != want {
                return reply(StatusCode::BAD_REQUEST, &[], "digest mismatch".into());
            }
            d.blobs.insert(got.clone(), bytes.into());
            reply(
                StatusCode::CREATED,
                &[
                    (header::LOCATION, format!("/v2/{name}/blobs/{got}")),
                    digest_header(&got),
                ],
                Bytes::new(),
            )
        };
        return match method {
            Method::POST => {
                if let Some(want) = query(&uri, "digest") {
                    return finish(&mut d, body.to_vec(), want);
                }
                let id = uuid::Uuid::new_v4().to_string();
                d.uploads.insert(id.clone(), Vec::new());
                reply(
                    StatusCode::ACCEPTED,
                    &[
                        location(&id),
                        uuid_header(&id),
                        (header::RANGE, "0-0".into()),
                    ],
                    Bytes::new(),
                )
            }
            Method::PATCH => {
                let Some(buf) = d.uploads.get_mut(&id) else {
                    return not_found("BLOB_UPLOAD_UNKNOWN");
                };
                buf.extend_from_slice(&body);
                let end = buf.len().saturating_sub(1);
                reply(
                    StatusCode::ACCEPTED,
                    &[
                        location(&id),
                        uuid_header(&id),
                        (header::RANGE, format!("0-{end}")),
                    ],
                    Bytes::new(),
                )
            }
            Method::PUT => {
                let Some(mut buf) = d.uploads.remove(&id) else {
                    return not_found("BLOB_UPLOAD_UNKNOWN");
                };
                buf.extend_from_slice(&body);
                let want = query(&uri, "digest").unwrap_or_default();
                finish(&mut d, buf, want)
            }
            _ => reply(StatusCode::METHOD_NOT_ALLOWED, &[], Bytes::new()),
        };
    }
    if let Some((_name, dg)) = rest.split_once("/blobs/") {
        return match d.blobs.get(dg) {
            Some(b) => content(&method, "application/octet-stream", b),
            None => not_found("BLOB_UNKNOWN"),
        };
    }
    if let Some((name, reference)) = rest.split_once("/manifests/") {
        let key = (name.to_string(), reference.to_string());
        if method == Method::PUT {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/vnd.docker.distribution.manifest.v2+json")
                .to_string();
            let dg = digest_of(&body);
            d.manifests.insert(key, (ct.clone(), body.clone()));
            d.manifests
                .insert((name.to_string(), dg.clone()), (ct, body));
            return reply(
                StatusCode::CREATED,
                &[
                    (header::LOCATION, format!("/v2/{name}/manifests/{dg}")),
                    digest_header(&dg),
                ],
                Bytes::new(),
            );
        }
        return match d.manifests.get(&key) {
            Some((ct, b)) => content(&method, ct, b),
            None => not_found("MANIFEST_UNKNOWN"),
        };
    }
    not_found("UNSUPPORTED")
}
