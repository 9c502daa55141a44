//! A small client of the daemon's API for `lasctl` verbs: over the unix socket by default, over
//! TCP when `LAS_LISTEN` is set (with the bearer token from `LAS_TOKEN` or `$LAS_HOME/run/token`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use super::auth::read_token;
use crate::home::LasHome;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {at}: {source}; is `lasctl daemon` running?")]
    Connect { at: String, source: std::io::Error },
    #[error("LAS_LISTEN={0:?} is not an address like 127.0.0.1:7411")]
    BadListen(String),
    #[error("request to the daemon failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("request to the daemon failed: {0}")]
    Build(#[from] hyper::http::Error),
    #[error("the daemon answered {status}: {message}")]
    Status { status: StatusCode, message: String },
}

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, ClientError>> + Send>>;

#[derive(Debug, Clone)]
pub struct DaemonClient {
    pub endpoint: Endpoint,
    pub token: Option<String>,
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

impl DaemonClient {
    /// `LAS_LISTEN` (TCP) if set, else the unix socket of `home`.
    pub fn from_env(home: &LasHome) -> Result<Self, ClientError> {
        let token = std::env::var("LAS_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| read_token(home));
        let endpoint = match std::env::var("LAS_LISTEN").ok().filter(|s| !s.is_empty()) {
            Some(s) => {
                let s = s.trim_start_matches("http://");
                Endpoint::Tcp(
                    s.parse()
                        .map_err(|_| ClientError::BadListen(s.to_string()))?,
                )
            }
            None => Endpoint::Unix(super::socket_path(home)),
        };
        Ok(DaemonClient { endpoint, token })
    }

    async fn connect(&self) -> Result<Box<dyn Io>, ClientError> {
        let at = self.endpoint.to_string();
        let io: Box<dyn Io> = match &self.endpoint {
            Endpoint::Unix(p) => Box::new(
                tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(|source| ClientError::Connect { at, source })?,
            ),
            Endpoint::Tcp(a) => Box::new(
                tokio::net::TcpStream::connect(a)
                    .await
                    .map_err(|source| ClientError::Connect { at, source })?,
            ),
        };
        Ok(io)
    }

    /// Sends one request on a fresh connection and returns the status and the body as a stream.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(StatusCode, BodyStream), ClientError> {
        let io = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let host = match &self.endpoint {
            // The daemon answers only to names on its allowlist (a guard against DNS rebinding).
            Endpoint::Tcp(a) if a.ip().is_unspecified() => format!("localhost:{}", a.port()),
            Endpoint::Tcp(a) => a.to_string(),
            Endpoint::Unix(_) => "localhost".into(),
        };
        let mut b = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header("host", host);
        if let Some(t) = &self.token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = sender.send_request(b.body(Full::new(body))?).await?;
        let status = resp.status();
        let stream = http_body_util::BodyStream::new(resp.into_body()).filter_map(|f| async move {
            match f {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(e) => Some(Err(ClientError::Http(e))),
            }
        });
        Ok((status, Box::pin(stream)))
    }

    /// GET, the whole body, and an error carrying the daemon's message for a non-2xx answer.
    pub async fn get_bytes(&self, path_and_query: &str) -> Result<Bytes, ClientError> {
        let (status, mut s) = self
            .send(Method::GET, path_and_query, &[], Bytes::new())
            .await?;
        let mut buf = BytesMut::new();
        while let Some(chunk) = s.next().await {
            buf.extend_from_slice(&chunk?);
        }
        let body = buf.freeze();
        if !status.is_success() {
            return Err(status_error(status, &body));
        }
        Ok(body)
    }

    /// GET a streamed body; a non-2xx answer is an error with the daemon's message.
    pub async fn get_stream(
        &self,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<BodyStream, ClientError> {
        let (status, mut s) = self
            .send(Method::GET, path_and_query, headers, Bytes::new())
            .await?;
        if !status.is_success() {
            let mut buf = BytesMut::new();
            while let Some(Ok(chunk)) = s.next().await {
                buf.extend_from_slice(&chunk);
            }
            return Err(status_error(status, &buf));
        }
        Ok(s)
    }
}

/// The `message` of a Status (or OpenAI error) body, else the body text.
fn status_error(status: StatusCode, body: &[u8]) -> ClientError {
    let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let message = v
        .as_ref()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("error").and_then(|e| e.get("message")))
        })
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    ClientError::Status { status, message }
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseMessage {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Splits a byte stream into server-sent events (comments and keep-alives are dropped).
pub fn sse_messages<S>(body: S) -> impl Stream<Item = Result<SseMessage, ClientError>> + Send
where
    S: Stream<Item = Result<Bytes, ClientError>> + Send + Unpin + 'static,
{
    futures_util::stream::unfold(
        (body, BytesMut::new(), false),
        |(mut body, mut buf, done)| async move {
            loop {
                if let Some(msg) = take_message(&mut buf) {
                    if msg.data.is_empty() && msg.id.is_none() && msg.event.is_none() {
                        continue;
                    }
                    return Some((Ok(msg), (body, buf, done)));
                }
                if done {
                    return None;
                }
                match body.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => return Some((Err(e), (body, buf, true))),
                    None => return None,
                }
            }
        },
    )
}

fn take_message(buf: &mut BytesMut) -> Option<SseMessage> {
    let text = std::str::from_utf8(buf).ok()?;
    let norm_end = text
        .find("\n\n")
        .map(|i| (i, 2))
        .or_else(|| text.find("\r\n\r\n").map(|i| (i, 4)))?;
    let (end, sep) = norm_end;
    let block = text[..end].to_string();
    let _ = buf.split_to(end + sep);
    let mut m = SseMessage::default();
    let mut data = Vec::new();
    for line in block.lines() {
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "id" => m.id = Some(value.to_string()),
            "event" => m.event = Some(value.to_string()),
            "data" => data.push(value.to_string()),
            _ => {}
        }
    }
    m.data = data.join("\n");
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sse_split_across_chunks() {
        let chunks: Vec<Result<Bytes, ClientError>> = vec![
            Ok(Bytes::from_static(b": keep-alive\n\nid: 4\nevent: ev")),
            Ok(Bytes::from_static(
                b"ent\ndata: {\"a\":1}\n\nid: 5\ndata: x\n",
            )),
            Ok(Bytes::from_static(b"data: y\n\n")),
        ];
        let got: Vec<SseMessage> = sse_messages(futures_util::stream::iter(chunks))
            .map(|r| r.unwrap())
            .collect()
            .await;
        assert_eq!(
            got,
            vec![
                SseMessage {
                    id: Some("4".into()),
                    event: Some("event".into()),
                    data: "{\"a\":1}".into()
                },
                SseMessage {
                    id: Some("5".into()),
                    event: None,
                    data: "x\ny".into()
                },
            ]
        );
    }
}
