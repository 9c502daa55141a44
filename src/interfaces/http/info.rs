//! What only the running daemon knows, behind a trait: runtime facts, backends, module logs.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::Stream;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A byte stream of log output; it ends when the log ends (or, following, when the module is gone).
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static>>;

/// `GET /api/v1/runtime`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeInfo {
    pub version: String,
    /// The detected hardware profile, as `lasctl hardware -o json` prints it.
    pub hardware: Value,
    /// The policy tier that applies, if one does.
    pub tier: Option<String>,
    /// Why that tier was chosen.
    pub tier_reason: Option<String>,
    /// What that tier grants (writes through the API are checked against it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<crate::api::policy::Capabilities>,
}

/// `GET /api/v1/backends`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackendsInfo {
    pub docker: DockerInfo,
    pub engines: Vec<EngineInfo>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DockerInfo {
    pub reachable: bool,
    pub version: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EngineInfo {
    /// e.g. `llama`.
    pub name: String,
    pub built_in: bool,
    /// Accelerations compiled in, e.g. `cpu`, `cuda`.
    pub features: Vec<String>,
}

/// `?follow=&tail=` of a logs request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    /// Only the last N lines of what is there now.
    pub tail: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("{0} has no logs: it has not run yet")]
    NoLogs(String),
    #[error("cannot read logs of {name}: {message}")]
    Backend { name: String, message: String },
}

/// The daemon's side of the API. The daemon implements it over its runtime; tests use
/// [`StaticDaemonInfo`].
pub trait DaemonInfo: Send + Sync + 'static {
    fn runtime(&self) -> BoxFuture<'_, RuntimeInfo>;
    fn backends(&self) -> BoxFuture<'_, BackendsInfo>;
    /// The output of the Module `name` (stdout and stderr interleaved as the runtime keeps them).
    fn logs(&self, name: &str, opts: LogOptions) -> BoxFuture<'_, Result<ByteStream, LogsError>>;
    /// What runs now, measured by the runtimes (`GET /api/v1/ps`; request counts are added by the
    /// route). The default runs nothing.
    fn workloads(&self) -> BoxFuture<'_, Vec<super::ps::Workload>> {
        Box::pin(async { Vec::new() })
    }
}

/// A fixed [`DaemonInfo`] for tests and for serving without a runtime: logs are kept in memory and
/// `push_log` appends to them (and wakes followers).
pub struct StaticDaemonInfo {
    pub runtime: RuntimeInfo,
    pub backends: BackendsInfo,
    logs: Mutex<HashMap<String, Vec<u8>>>,
    live: broadcast::Sender<(String, Bytes)>,
}

impl StaticDaemonInfo {
    pub fn new(runtime: RuntimeInfo, backends: BackendsInfo) -> Self {
        StaticDaemonInfo {
            runtime,
            backends,
            logs: Mutex::new(HashMap::new()),
            live: broadcast::channel(1024).0,
        }
    }

    /// A plausible description of this build: version, no hardware, the built-in engines.
    pub fn this_build() -> Self {
        Self::new(
            RuntimeInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                hardware: Value::Null,
                tier: None,
                tier_reason: None,
                capabilities: None,
            },
            BackendsInfo {
                docker: DockerInfo {
                    reachable: false,
                    version: None,
                    error: Some("not probed".into()),
                },
                engines: built_in_engines(),
            },
        )
    }

    pub fn push_log(&self, module: &str, bytes: &[u8]) {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        logs.entry(module.to_string())
            .or_default()
            .extend_from_slice(bytes);
        let _ = self
            .live
            .send((module.to_string(), Bytes::copy_from_slice(bytes)));
    }
}

/// The engines compiled into this binary.
pub fn built_in_engines() -> Vec<EngineInfo> {
    let mut v = Vec::new();
    if cfg!(feature = "llama") {
        let mut features = vec!["cpu".to_string()];
        for (on, name) in [
            (cfg!(feature = "cuda"), "cuda"),
            (cfg!(feature = "vulkan"), "vulkan"),
            (cfg!(feature = "metal"), "metal"),
        ] {
            if on {
                features.push(name.into());
            }
        }
        v.push(EngineInfo {
            name: "llama".into(),
            built_in: true,
            features,
        });
    }
    v
}

/// The last `n` lines of `buf` (a trailing partial line counts as one).
pub fn tail_lines(buf: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &buf[buf.len()..];
    }
    let body = buf.strip_suffix(b"\n").unwrap_or(buf);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &buf[i + 1..];
            }
        }
    }
    buf
}

impl DaemonInfo for StaticDaemonInfo {
    fn runtime(&self) -> BoxFuture<'_, RuntimeInfo> {
        Box::pin(async move { self.runtime.clone() })
    }
    fn backends(&self) -> BoxFuture<'_, BackendsInfo> {
        Box::pin(async move { self.backends.clone() })
    }
    fn logs(&self, name: &str, opts: LogOptions) -> BoxFuture<'_, Result<ByteStream, LogsError>> {
        let name = name.to_string();
        Box::pin(async move {
            // Subscribe before reading so nothing pushed in between is lost.
            let rx = self.live.subscribe();
            let now = {
                let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
                match logs.get(&name) {
                    Some(b) => Bytes::copy_from_slice(match opts.tail {
                        Some(n) => tail_lines(b, n),
                        None => b,
                    }),
                    None if opts.follow => Bytes::new(),
                    None => return Err(LogsError::NoLogs(name)),
                }
            };
            let head = futures_util::stream::iter([Ok(now)]);
            if !opts.follow {
                return Ok(Box::pin(head) as ByteStream);
            }
            let live = futures_util::stream::unfold(rx, move |mut rx| {
                let name = name.clone();
                async move {
                    loop {
                        match rx.recv().await {
                            Ok((m, b)) if m == name => return Some((Ok(b), rx)),
                            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                }
            });
            Ok(Box::pin(futures_util::StreamExt::chain(head, live)) as ByteStream)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::tail_lines;

    #[test]
    fn tail_takes_last_lines() {
        let cases: &[(&str, usize, &str)] = &[
            ("a\nb\nc\n", 2, "b\nc\n"),
            ("a\nb\nc", 2, "b\nc"),
            ("a\nb\n", 5, "a\nb\n"),
            ("a\nb\n", 0, ""),
            ("", 3, ""),
        ];
        for (input, n, want) in cases {
            assert_eq!(
                std::str::from_utf8(tail_lines(input.as_bytes(), *n)).unwrap(),
                *want,
                "tail {n} of {input:?}"
            );
        }
    }
}
