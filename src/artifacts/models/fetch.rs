//! Downloads over HTTP(S): streamed, hashed while streaming, resumable with `Range`.
//!
//! A download writes `blobs/.partial-<k>` (k: a hash of the URL) and `blobs/.partial-<k>.json`
//! (the URL, the validator, and the offset known to be on disk). After an interruption the next
//! attempt re-hashes the kept prefix, asks for the rest with `Range` (and `If-Range` when the server
//! gave a strong ETag or a Last-Modified), and appends. A server that ignores the range gets a
//! fresh start.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::StreamExt;
use nix::fcntl::{Flock, FlockArg};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256 as Hasher};

use super::blobs::{self, PARTIAL_PREFIX, check_disk, finish, hash_reader, write_atomic};
use super::error::{ModelError, Phase};
use super::progress::Reporter;
use super::{EnsureOptions, ModelStore};
use crate::api::model::Sha256;

/// How often a download fsyncs and records its offset, so a crash loses at most this much.
const SYNC_EVERY: u64 = 64 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PartialMeta {
    pub source: String,
    pub url: String,
    #[serde(default)]
    pub validator: Option<String>,
    /// Bytes known to be durably on disk.
    pub offset: u64,
    #[serde(default)]
    pub total: Option<u64>,
}

/// Bytes fetched into a temporary file of the blob directory, not yet under their final name.
pub(crate) struct Fetched {
    pub path: PathBuf,
    pub digest: Sha256,
    pub size: u64,
    pub hardlinked: bool,
    /// Held until the bytes are renamed into place, so no other process fetches the same URL.
    pub _lock: Option<Flock<File>>,
    /// Removed once the bytes are in place.
    pub sidecar: Option<PathBuf>,
}

enum Attempt {
    Done { digest: Sha256, size: u64 },
    Retry(String),
}

pub(crate) fn partial_paths(blobs_dir: &Path, url: &str) -> (PathBuf, PathBuf) {
    let k = &hex::encode(Hasher::digest(url.as_bytes()))[..32];
    (
        blobs_dir.join(format!("{PARTIAL_PREFIX}{k}")),
        blobs_dir.join(format!("{PARTIAL_PREFIX}{k}.json")),
    )
}

pub(crate) fn read_meta(path: &Path) -> Option<PartialMeta> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

fn unavailable(src: &str, message: impl Into<String>) -> ModelError {
    ModelError::SourceUnavailable {
        model_source: src.to_string(),
        message: message.into(),
    }
}

/// The error chain of a reqwest error in one line ("error sending request: connection refused").
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        format!("timed out: {e}")
    } else {
        e.to_string()
    };
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Resolves once `cancel` turns true; never when there is none (or its sender is gone).
async fn cancelled(cancel: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    if let Some(rx) = cancel
        && rx.wait_for(|c| *c).await.is_ok()
    {
        return;
    }
    std::future::pending::<()>().await
}

/// `Content-Range: bytes START-END/TOTAL` or `bytes */TOTAL` → (start, total).
fn parse_content_range(v: &str) -> (Option<u64>, Option<u64>) {
    let Some(rest) = v.trim().strip_prefix("bytes ") else {
        return (None, None);
    };
    let (range, total) = rest.split_once('/').unwrap_or((rest, "*"));
    let start = range.split_once('-').and_then(|(s, _)| s.parse().ok());
    (start, total.parse().ok())
}

impl ModelStore {
    /// Fetches `url` into a partial file, retrying interruptions with `Range`.
    pub(crate) async fn download(
        &self,
        src: &str,
        url: &str,
        bearer: Option<&str>,
        rep: &Reporter,
        opts: &EnsureOptions,
    ) -> Result<Fetched, ModelError> {
        let cfg = &self.inner.config;
        if cfg.offline {
            return Err(unavailable(
                src,
                "offline mode (LAS_OFFLINE or HF_HUB_OFFLINE is set) and no blob for it is in the store",
            ));
        }
        let (partial, meta_path) = partial_paths(&self.inner.blobs, url);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&partial)
            .map_err(ModelError::io("create", &partial))?;
        let lock = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(ModelError::InProgress {
                    model_source: src.to_string(),
                });
            }
            Err((_, e)) => {
                return Err(ModelError::io("lock", &partial)(
                    std::io::Error::from_raw_os_error(e as i32),
                ));
            }
        };
        let mut failures = 0u32;
        let mut cancel = opts.cancel.clone();
        loop {
            let attempt = self
                .attempt(src, url, bearer, &partial, &meta_path, rep, opts)
                .await;
            let attempt = match attempt {
                Ok(a) => a,
                // Too large, cancelled, or the disk is full: nothing of it is worth keeping.
                Err(
                    e @ (ModelError::TooLarge { .. }
                    | ModelError::Cancelled { .. }
                    | ModelError::InsufficientDisk { .. }),
                ) => {
                    let _ = fs::remove_file(&meta_path);
                    let _ = fs::remove_file(&partial);
                    tracing::info!(source = %src, reason = e.reason(), "download stopped; its partial file is removed");
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            match attempt {
                Attempt::Done { digest, size } => {
                    return Ok(Fetched {
                        path: partial,
                        digest,
                        size,
                        hardlinked: false,
                        _lock: Some(lock),
                        sidecar: Some(meta_path),
                    });
                }
                Attempt::Retry(why) => {
                    failures += 1;
                    if failures > cfg.retries {
                        return Err(unavailable(
                            src,
                            format!(
                                "{why}; gave up after {failures} attempts (the partial download is kept and the next attempt resumes it)"
                            ),
                        ));
                    }
                    tracing::warn!(source = %src, attempt = failures, reason = %why, "download interrupted; resuming");
                    tokio::select! {
                        _ = tokio::time::sleep(cfg.retry_backoff * failures) => {}
                        _ = cancelled(&mut cancel) => {
                            let _ = fs::remove_file(&meta_path);
                            let _ = fs::remove_file(&partial);
                            return Err(ModelError::Cancelled { model_source: src.to_string() });
                        }
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        src: &str,
        url: &str,
        bearer: Option<&str>,
        partial: &Path,
        meta_path: &Path,
        rep: &Reporter,
        opts: &EnsureOptions,
    ) -> Result<Attempt, ModelError> {
        let mut cancel = opts.cancel.clone();
        let cancelled_err = || ModelError::Cancelled {
            model_source: src.to_string(),
        };
        let prior = read_meta(meta_path).filter(|m| m.url == url);
        let on_disk = fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        let offset = prior.as_ref().map_or(0, |m| m.offset.min(on_disk));
        let mut req = self.inner.client.get(url);
        if offset > 0 {
            req = req.header(RANGE, format!("bytes={offset}-"));
            if let Some(v) = prior.as_ref().and_then(|m| m.validator.as_deref()) {
                req = req.header(IF_RANGE, v);
            }
        }
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        // A refused connection, an unknown host or a connect timeout is not worth retrying at
        // once: the caller's backoff decides when to try again.
        // Bounded even if a server accepts the connection and never answers.
        let cfg = &self.inner.config;
        let send = tokio::time::timeout(cfg.connect_timeout + cfg.read_timeout, req.send());
        let resp = tokio::select! {
            r = send => r,
            _ = cancelled(&mut cancel) => return Err(cancelled_err()),
        };
        let resp = resp
            .map_err(|_| {
                unavailable(
                    src,
                    format!(
                        "{url} sent no response within {:?}",
                        cfg.connect_timeout + cfg.read_timeout
                    ),
                )
            })?
            .map_err(|e| unavailable(src, describe(&e)))?;
        let status = resp.status();
        let content_range = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .map(parse_content_range);
        let start = match status {
            StatusCode::PARTIAL_CONTENT => match content_range {
                Some((Some(s), _)) if s == offset => offset,
                _ => {
                    self.restart(partial, meta_path)?;
                    return Ok(Attempt::Retry(format!(
                        "{url} answered a range other than the one asked for; starting over"
                    )));
                }
            },
            StatusCode::OK => 0,
            StatusCode::RANGE_NOT_SATISFIABLE => {
                if offset > 0 && matches!(content_range, Some((_, Some(t))) if t == offset) {
                    // Everything was already here: the last attempt died between the last byte
                    // and the rename.
                    let (digest, size) = self.hash_partial(partial, rep).await?;
                    return Ok(Attempt::Done { digest, size });
                }
                self.restart(partial, meta_path)?;
                return Ok(Attempt::Retry(format!(
                    "{url} refused to resume at byte {offset}; starting over"
                )));
            }
            s if s.is_server_error()
                || s == StatusCode::TOO_MANY_REQUESTS
                || s == StatusCode::REQUEST_TIMEOUT =>
            {
                return Ok(Attempt::Retry(format!("{url} answered HTTP {s}")));
            }
            s => return Err(unavailable(src, format!("{url} answered HTTP {s}"))),
        };
        let remaining = resp.content_length();
        let total = remaining.map(|r| start + r);
        if let (Some(limit), Some(t)) = (opts.max_bytes, total)
            && t > limit
        {
            return Err(ModelError::TooLarge {
                model_source: src.to_string(),
                limit,
                seen: t,
            });
        }
        if let Some(r) = remaining {
            check_disk(&self.inner.blobs, r, self.inner.config.disk_reserve_bytes)?;
        }
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let validator = header(ETAG)
            .filter(|e| !e.starts_with("W/"))
            .or_else(|| header(LAST_MODIFIED));
        let meta = PartialMeta {
            source: src.to_string(),
            url: url.to_string(),
            validator,
            offset: start,
            total,
        };
        write_atomic(meta_path, &serde_json::to_vec(&meta).unwrap_or_default())?;

        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let (p, m, r) = (partial.to_path_buf(), meta_path.to_path_buf(), rep.clone());
        let writer = tokio::task::spawn_blocking(move || write_partial(&p, &m, meta, rx, &r));
        let mut stream = resp.bytes_stream();
        let mut interrupted = None;
        let mut stop = None;
        let mut received = start;
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = cancelled(&mut cancel) => {
                    stop = Some(cancelled_err());
                    break;
                }
            };
            let Some(item) = item else { break };
            match item {
                Ok(b) => {
                    received += b.len() as u64;
                    if let Some(limit) = opts.max_bytes
                        && received > limit
                    {
                        stop = Some(ModelError::TooLarge {
                            model_source: src.to_string(),
                            limit,
                            seen: received,
                        });
                        break;
                    }
                    if tx.send(b).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
                Err(e) => {
                    interrupted = Some(describe(&e));
                    break;
                }
            }
        }
        drop(tx);
        let written = writer
            .await
            .map_err(|e| ModelError::io("write", partial)(std::io::Error::other(e.to_string())))?;
        if let Some(e) = stop {
            return Err(e);
        }
        let (h, len) = match written {
            Ok(w) => w,
            Err(e) if e.is_no_space() => {
                return Err(ModelError::InsufficientDisk {
                    path: self.inner.blobs.clone(),
                    needed: total.unwrap_or(received),
                    available: blobs::free_bytes(&self.inner.blobs).unwrap_or(0),
                });
            }
            Err(e) => return Err(e),
        };
        if let Some(why) = interrupted {
            return Ok(Attempt::Retry(format!("{url}: {why} (after {len} bytes)")));
        }
        if let Some(t) = total
            && len != t
        {
            return Ok(Attempt::Retry(format!(
                "{url}: the connection closed after {len} of {t} bytes"
            )));
        }
        Ok(Attempt::Done {
            digest: finish(h),
            size: len,
        })
    }

    fn restart(&self, partial: &Path, meta_path: &Path) -> Result<(), ModelError> {
        let _ = fs::remove_file(meta_path);
        OpenOptions::new()
            .write(true)
            .open(partial)
            .and_then(|f| f.set_len(0))
            .map_err(ModelError::io("truncate", partial))
    }

    async fn hash_partial(
        &self,
        partial: &Path,
        rep: &Reporter,
    ) -> Result<(Sha256, u64), ModelError> {
        let p = partial.to_path_buf();
        let r = rep.clone();
        tokio::task::spawn_blocking(move || {
            r.start(Phase::Verifying, fs::metadata(&p).ok().map(|m| m.len()));
            blobs::hash_file(&p, |n| r.set(n))
        })
        .await
        .map_err(|e| ModelError::io("hash", partial)(std::io::Error::other(e.to_string())))?
    }
}

/// The blocking half of a download: re-hashes the kept prefix, then appends and hashes what the
/// network half sends, fsyncing and recording the offset every [`SYNC_EVERY`] bytes.
fn write_partial(
    partial: &Path,
    meta_path: &Path,
    mut meta: PartialMeta,
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
    rep: &Reporter,
) -> Result<(Hasher, u64), ModelError> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(partial)
        .map_err(ModelError::io("open", partial))?;
    // Anything past the recorded offset may not have been synced: drop it.
    f.set_len(meta.offset)
        .map_err(ModelError::io("truncate", partial))?;
    let mut h = Hasher::new();
    if meta.offset > 0 {
        rep.start(Phase::Verifying, Some(meta.offset));
        f.seek(SeekFrom::Start(0))
            .map_err(ModelError::io("seek", partial))?;
        let got = hash_reader(&mut f, &mut h, meta.offset, partial, &mut |n| rep.set(n))?;
        if got != meta.offset {
            return Err(ModelError::io("re-read", partial)(std::io::Error::other(
                "the partial download shrank while it was being resumed",
            )));
        }
    }
    f.seek(SeekFrom::Start(meta.offset))
        .map_err(ModelError::io("seek", partial))?;
    rep.start(Phase::Downloading, meta.total);
    rep.set(meta.offset);
    let mut written = meta.offset;
    let mut since_sync = 0u64;
    let result = (|| {
        while let Some(b) = rx.blocking_recv() {
            h.update(&b);
            f.write_all(&b).map_err(ModelError::io("write", partial))?;
            written += b.len() as u64;
            since_sync += b.len() as u64;
            rep.set(written);
            if since_sync >= SYNC_EVERY {
                f.sync_data().map_err(ModelError::io("fsync", partial))?;
                meta.offset = written;
                write_atomic(meta_path, &serde_json::to_vec(&meta).unwrap_or_default())?;
                since_sync = 0;
            }
        }
        Ok::<_, ModelError>(())
    })();
    // Whatever happened, keep what reached the disk for the next attempt.
    let synced = f.sync_all().map_err(ModelError::io("fsync", partial));
    if synced.is_ok() && result.is_ok() {
        meta.offset = written;
        write_atomic(meta_path, &serde_json::to_vec(&meta).unwrap_or_default())?;
    }
    result?;
    synced?;
    Ok((h, written))
}
