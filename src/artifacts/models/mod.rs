//! The model store: content-addressed blobs under `$LAS_HOME/models/`.
//!
//! ```text
//! models/blobs/sha256-<hex>        the bytes, named by their sha256 (read-only, mode 0444, unless hardlinked)
//! models/blobs/.partial-<k>[.json] a download in progress or interrupted, and its resume point
//! models/blobs/.tmp-<uuid>         an import or index write in progress
//! models/quarantine/<t>-…[.json]   bytes that did not match spec.sha256, or a blob that changed on disk
//! models/index.json                source → digest, and when each blob was last hashed
//! ```
//!
//! The Model controller calls [`ModelStore::ensure`] with a Model's spec and reports the [`Blob`] (or
//! the error's [`ModelError::reason`]) in status; the daemon calls [`ModelStore::verify`] on a schedule
//! and `control::model_gc` to collect garbage.
//!
//! # Guarantees
//! - A final name `blobs/sha256-<hex>` only ever holds bytes whose sha256 was `<hex>` when they were
//!   put there: bytes reach it by `rename` from a temporary name in the same directory after an
//!   fsync, and the directory is fsynced after. A crash leaves a whole blob or none.
//! - Identical bytes are stored once, whatever sources they came from.
//! - With `spec.sha256`, bytes that hash differently are moved to `quarantine/` and never served.
//! - [`ModelStore::ensure`] is idempotent: when the blob is present and unchanged since it was last
//!   hashed (same inode, size, mtime and ctime), it returns without reading the bytes or touching
//!   the network. A changed blob is re-hashed, and quarantined if its bytes no longer match.
//! - A local file is copied (hashing while copying) into a read-only blob by default, so nothing
//!   done to the user's file — rewritten in place (`cp new old`) or replaced by a rename — changes
//!   a stored blob. A source file whose stamp (device, inode, size, mtime) differs from the one it
//!   had when imported is imported again, as a new revision ([`ModelStore::source_changed`]
//!   tells cheaply); with `spec.sha256` pinning the old bytes that is a `DigestMismatch`.
//! - An interrupted download keeps its bytes (fsynced every 64 MiB and on interruption) and the next
//!   attempt — in the same call, up to [`StoreConfig::retries`] times, or a later call — resumes
//!   with `Range`.
//! - One fetch per source at a time in this process (others wait); across processes a second
//!   fetch of the same URL fails at once with `InProgress` (reason `Downloading`).
//! - [`ModelStore::gc`] removes only blobs that no given source or digest reaches, and never a blob
//!   put in place less than [`StoreConfig::gc_grace`] ago (a Model applied while GC ran).
//!
//! # Caveats
//! - Hardlinking is an opt-in ([`ImportMode::HardlinkOrCopy`], `LAS_MODEL_IMPORT=hardlink`): such
//!   a blob shares its inode with the source file and is not made read-only; if someone rewrites
//!   that file in place, the blob changes too. `ensure` (blob stamp) and `verify` (hash) detect
//!   it — the blob is quarantined and re-imported — but an engine reading it meanwhile sees the
//!   new bytes.
//! - Without `spec.sha256`, an `http(s)://` or floating `hf://` source is fetched once: later calls
//!   return the blob it gave then, even if the server now has other bytes. Pin with `sha256`.
//! - A server without `ETag`/`Last-Modified` gets `Range` without `If-Range`; if the file changed
//!   between attempts, only `spec.sha256` catches the mix.
//! - The cheap "unchanged" check compares file stamps, whose clock ticks every few milliseconds: a
//!   write in the same tick as the last hash can go unseen until the next scheduled `verify`.
//! - The free-disk check needs a `Content-Length`; a chunked response is not checked up front.

mod blobs;
mod error;
mod fetch;
mod index;
mod progress;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use tracing::Instrument;

pub use error::{ModelError, Phase};
pub use progress::{Progress, ProgressFn};

use crate::api::model::{ModelSource, ModelSpec, Sha256};
use crate::home::LasHome;
use blobs::{
    FileStamp, PARTIAL_PREFIX, QuarantineNote, TMP_PREFIX, blob_name, check_disk, copy_hashing,
    fsync_dir, hash_file, make_read_only, parse_blob_name,
};
use fetch::Fetched;
use index::{BlobRecord, Index, SourceEntry, now};
use progress::Reporter;

/// How local files are imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImportMode {
    /// A copy, hashed while copying, made read-only: the blob never shares an inode with the
    /// user's file, so nothing done to that file changes it.
    #[default]
    Copy,
    /// Opt-in (`LAS_MODEL_IMPORT=hardlink`): a hardlink when the file is on the same filesystem
    /// and linking is allowed, else a copy. Saves the space and time of a copy, at the price that
    /// rewriting the source in place rewrites the blob (detected by its stamp, see the caveats).
    HardlinkOrCopy,
}

/// Settings of the store. [`StoreConfig::from_env`] reads the environment; `Default` does not.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Base URL of the Hugging Face hub (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub hf_endpoint: String,
    /// Bearer token for the hub (`HF_TOKEN`); sent only to the hub's host (reqwest drops it on a
    /// redirect to another host).
    pub hf_token: Option<String>,
    /// No network at all (`LAS_OFFLINE=1` or `HF_HUB_OFFLINE=1`): network sources not already in
    /// the store fail at once with `SourceUnavailable`.
    pub offline: bool,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response; a stalled download counts as interrupted.
    pub read_timeout: Duration,
    pub max_redirects: usize,
    /// Resumptions of an interrupted download within one `ensure` call.
    pub retries: u32,
    /// Pause before the n-th resumption: n × this.
    pub retry_backoff: Duration,
    pub import_mode: ImportMode,
    /// Free space that a fetch must leave on the disk (`LAS_DISK_RESERVE_BYTES`, default 64 MiB).
    pub disk_reserve_bytes: u64,
    /// Draw a progress bar on stderr when it is a terminal.
    pub progress_bar: bool,
    /// GC never removes a blob put in place more recently than this.
    pub gc_grace: Duration,
    /// GC removes quarantined bytes older than this.
    pub quarantine_retention: Duration,
    /// GC removes the oldest quarantined bytes while they take more than this.
    pub quarantine_max_bytes: u64,
    /// GC removes leftover temporary files older than this (a crashed import).
    pub temp_max_age: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            hf_endpoint: "https://huggingface.co".into(),
            hf_token: None,
            offline: false,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            max_redirects: 10,
            retries: 3,
            retry_backoff: Duration::from_millis(500),
            import_mode: ImportMode::Copy,
            disk_reserve_bytes: 64 << 20,
            progress_bar: true,
            gc_grace: Duration::from_secs(600),
            quarantine_retention: Duration::from_secs(7 * 24 * 3600),
            quarantine_max_bytes: 4 << 30,
            temp_max_age: Duration::from_secs(3600),
        }
    }
}

impl StoreConfig {
    /// Defaults, with `HF_ENDPOINT`, `HF_TOKEN`, `LAS_OFFLINE` and `HF_HUB_OFFLINE` applied.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Like [`StoreConfig::from_env`], reading variables through `var`.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Self {
        let set = |k: &str| var(k).filter(|v| !v.is_empty());
        let truthy = |k: &str| set(k).is_some_and(|v| !matches!(v.as_str(), "0" | "false" | "no"));
        let mut c = StoreConfig::default();
        if let Some(e) = set("HF_ENDPOINT") {
            c.hf_endpoint = e.trim_end_matches('/').to_string();
        }
        c.hf_token = set("HF_TOKEN");
        c.offline = truthy("LAS_OFFLINE") || truthy("HF_HUB_OFFLINE");
        if let Some(r) = set("LAS_DISK_RESERVE_BYTES").and_then(|v| v.parse().ok()) {
            c.disk_reserve_bytes = r;
        }
        if set("LAS_MODEL_IMPORT").is_some_and(|v| v == "hardlink") {
            c.import_mode = ImportMode::HardlinkOrCopy;
        }
        c
    }
}

/// Per-call options of [`ModelStore::ensure`].
#[derive(Clone, Default)]
pub struct EnsureOptions {
    /// Accept `hf://` sources without `@revision` (they then follow `main`). A policy decides.
    pub allow_floating: bool,
    pub progress: Option<ProgressFn>,
    /// The most bytes the Model may have (a tier's `maxModelBytes`). A download stops as soon as
    /// it passes this (or at once when the announced length does) and keeps nothing: `TooLarge`.
    pub max_bytes: Option<u64>,
    /// Set to `true` to abort an in-flight download (its Model was deleted): `Cancelled`, and
    /// nothing of it is kept.
    pub cancel: Option<tokio::sync::watch::Receiver<bool>>,
}

/// A verified blob in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: Sha256,
    pub size_bytes: u64,
    pub path: PathBuf,
}

/// What [`ModelStore::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed, with their sizes.
    pub removed: Vec<(Sha256, u64)>,
    /// Blobs kept (reachable, or younger than the grace period).
    pub kept: Vec<Sha256>,
    pub freed_bytes: u64,
    pub removed_partials: usize,
    pub removed_temporaries: usize,
    pub removed_quarantined: usize,
}

/// The content-addressed model store. Cheap to clone; clones share locks and the HTTP client.
#[derive(Clone)]
pub struct ModelStore {
    inner: Arc<Inner>,
}

struct Inner {
    blobs: PathBuf,
    quarantine: PathBuf,
    config: StoreConfig,
    client: reqwest::Client,
    index: Index,
    /// Read: a blob is being put in place or checked. Write: GC is deciding what to remove.
    gc_lock: RwLock<()>,
    source_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for ModelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStore")
            .field("blobs", &self.inner.blobs)
            .finish_non_exhaustive()
    }
}

fn join_error(e: tokio::task::JoinError) -> ModelError {
    ModelError::Io {
        op: "run the blocking part of",
        path: PathBuf::from("the model store"),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Where the blob with `digest` lives under `home`'s model store (whether or not it is there),
/// for readers that do not hold a [`ModelStore`] (the plugin host reading verified manifests).
pub fn blob_path_in(home: &LasHome, digest: &str) -> PathBuf {
    home.models()
        .join("blobs")
        .join(format!("{}{digest}", blobs::BLOB_PREFIX))
}

impl ModelStore {
    /// Opens (creating if needed) the store under `home`, configured from the environment.
    pub fn open(home: &LasHome) -> Result<Self, ModelError> {
        Self::open_with(home, StoreConfig::from_env())
    }

    pub fn open_with(home: &LasHome, config: StoreConfig) -> Result<Self, ModelError> {
        use std::os::unix::fs::DirBuilderExt;
        let models = home.models();
        let blobs = models.join("blobs");
        let quarantine = models.join("quarantine");
        for dir in [&models, &blobs, &quarantine] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(ModelError::io("create", dir))?;
        }
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .redirect(reqwest::redirect::Policy::limited(config.max_redirects))
            .user_agent(concat!("localaistack/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ModelError::Client(e.to_string()))?;
        Ok(ModelStore {
            inner: Arc::new(Inner {
                index: Index::new(&models),
                blobs,
                quarantine,
                config,
                client,
                gc_lock: RwLock::new(()),
                source_locks: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Where the blob with digest `d` lives (whether or not it is there).
    pub fn blob_path(&self, d: &Sha256) -> PathBuf {
        self.inner.blobs.join(blob_name(d))
    }

    pub fn quarantine_dir(&self) -> &Path {
        &self.inner.quarantine
    }

    /// The URL a network source is fetched from (`None` for local files).
    pub fn resolve_url(&self, src: &ModelSource) -> Option<String> {
        match src {
            ModelSource::File(_) | ModelSource::Plugin(_) => None,
            ModelSource::Http(u) => Some(u.clone()),
            ModelSource::Hf {
                owner,
                repo,
                file,
                revision,
            } => {
                // A revision such as refs/pr/1 is one path segment for the hub.
                let rev = revision.as_deref().unwrap_or("main").replace('/', "%2F");
                Some(format!(
                    "{}/{owner}/{repo}/resolve/{rev}/{file}",
                    self.inner.config.hf_endpoint.trim_end_matches('/')
                ))
            }
        }
    }

    /// The digest `src` gave when it was last fetched, if the index remembers it.
    pub fn lookup(&self, src: &ModelSource) -> Option<Sha256> {
        let idx = self.inner.index.load();
        idx.sources.get(&src.to_string()).map(|e| e.digest.clone())
    }

    /// Whether the local file `src` names was changed or replaced (device, inode, size or mtime
    /// differ) since its bytes were last imported. Cheap: one `stat`. `false` for network sources,
    /// for files never imported, and for a file that is gone (its verified blob keeps serving).
    pub fn source_changed(&self, src: &ModelSource) -> bool {
        let ModelSource::File(p) = src else {
            return false;
        };
        let idx = self.inner.index.load();
        let Some(origin) = idx
            .sources
            .get(&src.to_string())
            .and_then(|e| e.origin.as_ref())
        else {
            return false;
        };
        fs::metadata(p).is_ok_and(|m| !origin.same_version(&FileStamp::of(&m)))
    }

    /// The blobs now in the store (not re-hashed).
    pub fn list_blobs(&self) -> Result<Vec<Blob>, ModelError> {
        let dir = &self.inner.blobs;
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(ModelError::io("list", dir))? {
            let entry = entry.map_err(ModelError::io("list", dir))?;
            let Some(d) = entry.file_name().to_str().and_then(parse_blob_name) else {
                continue;
            };
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push(Blob {
                path: entry.path(),
                digest: d,
                size_bytes: size,
            });
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Makes the Model's bytes present and verified, and returns their blob.
    ///
    /// Present and unchanged → returns at once. Otherwise imports or downloads, hashing while the
    /// bytes stream, and checks `spec.sha256` when given. See the module docs for the guarantees.
    pub async fn ensure(&self, spec: &ModelSpec, opts: &EnsureOptions) -> Result<Blob, ModelError> {
        let key = spec.source.to_string();
        let span = tracing::info_span!("model_ensure", source = %key);
        async move {
            if let ModelSource::Hf { revision: None, .. } = &spec.source
                && !opts.allow_floating
            {
                return Err(ModelError::UnpinnedRevision { model_source: key });
            }
            let lock = {
                let mut locks = self
                    .inner
                    .source_locks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                locks.entry(key.clone()).or_default().clone()
            };
            let _serial = lock.lock().await;
            let rep = Reporter::new(&key, opts.progress.clone(), self.inner.config.progress_bar);

            let this = self.clone();
            let (src, expected, r) = (spec.source.clone(), spec.sha256.clone(), rep.clone());
            let cached = tokio::task::spawn_blocking(move || {
                this.cached_blocking(&src, expected.as_ref(), &r)
            })
            .await
            .map_err(join_error)??;
            if let Some(b) = cached {
                rep.finish();
                tracing::debug!(digest = %b.digest, "model already in the store");
                return Ok(b);
            }

            if let ModelSource::Plugin(_) = &spec.source {
                return Err(ModelError::SourceUnavailable {
                    model_source: key,
                    message: "a plugin scheme is resolved to a URL by the model controller first"
                        .into(),
                });
            }
            let (fetched, origin) = match &spec.source {
                ModelSource::File(p) => {
                    let this = self.clone();
                    let (k, p, r) = (key.clone(), p.clone(), rep.clone());
                    let max = opts.max_bytes;
                    tokio::task::spawn_blocking(move || this.import_blocking(&k, &p, max, &r))
                        .await
                        .map_err(join_error)??
                }
                src => {
                    let url = self.resolve_url(src).unwrap_or_default();
                    let bearer = match src {
                        ModelSource::Hf { .. } => self.inner.config.hf_token.clone(),
                        _ => None,
                    };
                    (
                        self.download(&key, &url, bearer.as_deref(), &rep, opts)
                            .await?,
                        None,
                    )
                }
            };
            rep.finish();
            let this = self.clone();
            let expected = spec.sha256.clone();
            let blob = tokio::task::spawn_blocking(move || {
                this.commit_blocking(&key, fetched, expected.as_ref(), origin)
            })
            .await
            .map_err(join_error)??;
            if let Some(cb) = &opts.progress {
                cb(Progress {
                    phase: Phase::Verified,
                    done_bytes: blob.size_bytes,
                    total_bytes: Some(blob.size_bytes),
                });
            }
            tracing::info!(digest = %blob.digest, size = blob.size_bytes, "model stored");
            Ok(blob)
        }
        .instrument(span)
        .await
    }

    /// Re-hashes the blob `digest`. A blob whose bytes changed is moved to quarantine (so it is
    /// never served again) and reported as `BlobCorrupt` (reason `DigestMismatch`); the next
    /// `ensure` fetches the bytes again.
    pub async fn verify(&self, digest: &Sha256) -> Result<Blob, ModelError> {
        let this = self.clone();
        let d = digest.clone();
        tokio::task::spawn_blocking(move || this.verify_blocking(&d))
            .await
            .map_err(join_error)?
    }

    /// [`ModelStore::verify`] for callers on a blocking thread.
    pub fn verify_blocking(&self, digest: &Sha256) -> Result<Blob, ModelError> {
        let _g = self.inner.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let path = self.blob_path(digest);
        if !path.exists() {
            return Err(ModelError::BlobMissing(digest.clone()));
        }
        let (actual, size) = hash_file(&path, |_| {})?;
        if &actual == digest {
            self.record_verified(digest, &path)?;
            return Ok(Blob {
                digest: actual,
                size_bytes: size,
                path,
            });
        }
        let quarantined = blobs::quarantine(
            &path,
            &self.inner.quarantine,
            &QuarantineNote {
                source: blob_name(digest),
                expected: Some(digest.to_string()),
                actual: actual.to_string(),
                reason: "the blob changed on disk".into(),
                time: now(),
            },
        )?;
        tracing::error!(digest = %digest, actual = %actual, quarantined = %quarantined.display(),
            "model blob changed on disk; quarantined");
        Err(ModelError::BlobCorrupt {
            digest: digest.clone(),
            actual,
            quarantined,
        })
    }

    /// Removes every blob that none of `referenced` reaches: a source reaches its `sha256` when
    /// given, else the digest the index recorded for it. Also removes interrupted downloads of
    /// unreferenced URLs, stale temporary files and old quarantined bytes.
    pub async fn gc(
        &self,
        referenced: &[(ModelSource, Option<Sha256>)],
    ) -> Result<GcReport, ModelError> {
        let this = self.clone();
        let refs = referenced.to_vec();
        tokio::task::spawn_blocking(move || this.gc_blocking(&refs))
            .await
            .map_err(join_error)?
    }

    /// [`ModelStore::gc`] for callers on a blocking thread.
    pub fn gc_blocking(
        &self,
        referenced: &[(ModelSource, Option<Sha256>)],
    ) -> Result<GcReport, ModelError> {
        let _w = self
            .inner
            .gc_lock
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let cfg = &self.inner.config;
        let idx = self.inner.index.load();
        let mut reachable = HashSet::new();
        let mut ref_keys = HashSet::new();
        let mut ref_urls = HashSet::new();
        for (src, sha) in referenced {
            let key = src.to_string();
            match sha {
                Some(s) => {
                    reachable.insert(s.clone());
                }
                None => {
                    if let Some(e) = idx.sources.get(&key) {
                        reachable.insert(e.digest.clone());
                    }
                }
            }
            if let Some(u) = self.resolve_url(src) {
                ref_urls.insert(u);
            }
            ref_keys.insert(key);
        }
        let now_t = SystemTime::now();
        let age = |m: &fs::Metadata, use_ctime: bool| -> Duration {
            let secs = if use_ctime { m.ctime() } else { m.mtime() };
            let t = UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
            now_t.duration_since(t).unwrap_or_default()
        };

        let mut report = GcReport::default();
        let dir = &self.inner.blobs;
        let mut names: Vec<String> = fs::read_dir(dir)
            .map_err(ModelError::io("list", dir))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in &names {
            let path = dir.join(name);
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if let Some(d) = parse_blob_name(name) {
                if reachable.contains(&d) || age(&meta, true) < cfg.gc_grace {
                    report.kept.push(d);
                } else {
                    fs::remove_file(&path).map_err(ModelError::io("remove", &path))?;
                    tracing::info!(digest = %d, size = meta.len(), "model blob collected");
                    report.freed_bytes += meta.len();
                    report.removed.push((d, meta.len()));
                }
            } else if let Some(rest) = name.strip_prefix(PARTIAL_PREFIX) {
                if rest.ends_with(".json") {
                    // Removed with its partial file; an orphan goes too.
                    let partial = dir.join(name.trim_end_matches(".json"));
                    if !partial.exists() {
                        let _ = fs::remove_file(&path);
                    }
                    continue;
                }
                let sidecar = dir.join(format!("{name}.json"));
                let url = fetch::read_meta(&sidecar).map(|m| m.url);
                if url.as_ref().is_some_and(|u| ref_urls.contains(u)) {
                    continue;
                }
                // Someone is writing it right now: leave it.
                let Ok(f) = fs::File::open(&path) else {
                    continue;
                };
                if Flock::lock(f, FlockArg::LockExclusiveNonblock).is_err() {
                    continue;
                }
                fs::remove_file(&path).map_err(ModelError::io("remove", &path))?;
                let _ = fs::remove_file(&sidecar);
                report.removed_partials += 1;
                report.freed_bytes += meta.len();
            } else if name.starts_with(TMP_PREFIX) && age(&meta, false) > cfg.temp_max_age {
                fs::remove_file(&path).map_err(ModelError::io("remove", &path))?;
                report.removed_temporaries += 1;
                report.freed_bytes += meta.len();
            }
        }
        fsync_dir(dir)?;

        let removed: HashSet<&Sha256> = report.removed.iter().map(|(d, _)| d).collect();
        if !removed.is_empty() || idx.sources.keys().any(|k| !ref_keys.contains(k)) {
            self.inner.index.update(|f| {
                f.blobs
                    .retain(|d, _| Sha256::new(d).is_ok_and(|d| !removed.contains(&d)));
                f.sources
                    .retain(|k, e| ref_keys.contains(k) || !removed.contains(&e.digest));
            })?;
        }

        // Quarantined bytes: the old ones go, then the oldest while over the size cap.
        let q = &self.inner.quarantine;
        let mut kept: Vec<(SystemTime, PathBuf, u64)> = Vec::new();
        if let Ok(entries) = fs::read_dir(q) {
            for e in entries.flatten() {
                let Ok(meta) = e.metadata() else { continue };
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(bytes) = name.strip_suffix(".json") {
                    // A note whose bytes are gone.
                    if !q.join(bytes).exists() {
                        let _ = fs::remove_file(e.path());
                    }
                    continue;
                }
                if age(&meta, false) > cfg.quarantine_retention {
                    remove_quarantined(&e.path());
                    report.removed_quarantined += 1;
                } else {
                    let t = meta.modified().unwrap_or(UNIX_EPOCH);
                    kept.push((t, e.path(), meta.len()));
                }
            }
        }
        kept.sort();
        let mut total: u64 = kept.iter().map(|k| k.2).sum();
        for (_, path, len) in kept {
            if total <= cfg.quarantine_max_bytes {
                break;
            }
            remove_quarantined(&path);
            report.removed_quarantined += 1;
            report.freed_bytes += len;
            total -= len;
        }
        Ok(report)
    }

    // ---- the blocking halves ----

    /// The blob for `src`, if the store already has it (re-hashed when it changed since last time).
    fn cached_blocking(
        &self,
        src: &ModelSource,
        expected: Option<&Sha256>,
        rep: &Reporter,
    ) -> Result<Option<Blob>, ModelError> {
        let key = src.to_string();
        let idx = self.inner.index.load();
        let entry = idx.sources.get(&key);
        // A local file that changed since it was imported is a new revision: import it again
        // (also when spec.sha256 names a blob we have: the new bytes must be checked against it).
        if self.source_changed(src) {
            tracing::info!(source = %key, "the model file changed since it was imported; importing it again");
            // A hardlinked blob changed with it: this re-hashes it (its stamp moved) and
            // quarantines it. A copied blob is untouched and returns at once.
            if let Some(e) = entry {
                self.trusted_blob(&e.digest, idx.blobs.get(e.digest.as_str()), rep)?;
            }
            return Ok(None);
        }
        let candidate = match (expected, entry) {
            (Some(d), _) => d.clone(),
            (None, Some(e)) => e.digest.clone(),
            (None, None) => return Ok(None),
        };
        let Some(blob) = self.trusted_blob(&candidate, idx.blobs.get(candidate.as_str()), rep)?
        else {
            return Ok(None);
        };
        if entry.is_none_or(|e| e.digest != candidate) {
            // A local file found by its digest: remember its stamp now, so a later change of it
            // is seen.
            let origin = match src {
                ModelSource::File(p) => fs::metadata(p).ok().map(|m| FileStamp::of(&m)),
                _ => None,
            };
            self.inner.index.update(|f| {
                f.sources.insert(
                    key,
                    SourceEntry {
                        digest: candidate.clone(),
                        size_bytes: blob.size_bytes,
                        origin,
                        recorded_at: now(),
                    },
                );
            })?;
        }
        Ok(Some(blob))
    }

    /// The blob `d` if it is present and its bytes still hash to `d`.
    fn trusted_blob(
        &self,
        d: &Sha256,
        record: Option<&BlobRecord>,
        rep: &Reporter,
    ) -> Result<Option<Blob>, ModelError> {
        let _g = self.inner.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let path = self.blob_path(d);
        let Ok(meta) = fs::metadata(&path) else {
            return Ok(None);
        };
        let blob = Blob {
            digest: d.clone(),
            size_bytes: meta.len(),
            path: path.clone(),
        };
        if record.is_some_and(|r| r.stamp == FileStamp::of(&meta)) {
            return Ok(Some(blob));
        }
        rep.start(Phase::Verifying, Some(meta.len()));
        let (actual, _) = hash_file(&path, |n| rep.set(n))?;
        if &actual == d {
            self.record_verified(d, &path)?;
            return Ok(Some(blob));
        }
        let q = blobs::quarantine(
            &path,
            &self.inner.quarantine,
            &QuarantineNote {
                source: blob_name(d),
                expected: Some(d.to_string()),
                actual: actual.to_string(),
                reason: "the blob changed on disk".into(),
                time: now(),
            },
        )?;
        tracing::warn!(digest = %d, actual = %actual, quarantined = %q.display(),
            "model blob changed on disk; quarantined, fetching it again");
        Ok(None)
    }

    fn record_verified(&self, d: &Sha256, path: &Path) -> Result<(), ModelError> {
        let meta = fs::metadata(path).map_err(ModelError::io("stat", path))?;
        self.inner.index.update(|f| {
            f.blobs.insert(
                d.to_string(),
                BlobRecord {
                    stamp: FileStamp::of(&meta),
                    verified_at: now(),
                },
            );
        })
    }

    /// Brings a local file into a temporary name of the blob directory.
    fn import_blocking(
        &self,
        key: &str,
        path: &Path,
        max_bytes: Option<u64>,
        rep: &Reporter,
    ) -> Result<(Fetched, Option<FileStamp>), ModelError> {
        let unavailable = |message: String| ModelError::SourceUnavailable {
            model_source: key.to_string(),
            message,
        };
        // Resolve symlinks: a hardlink to a symlink would store the link, not the bytes.
        let real = fs::canonicalize(path)
            .map_err(|e| unavailable(format!("cannot read {}: {e}", path.display())))?;
        let meta = fs::metadata(&real)
            .map_err(|e| unavailable(format!("cannot read {}: {e}", real.display())))?;
        if !meta.is_file() {
            return Err(unavailable(format!(
                "{} is not a regular file",
                real.display()
            )));
        }
        if let Some(limit) = max_bytes
            && meta.len() > limit
        {
            return Err(ModelError::TooLarge {
                model_source: key.to_string(),
                limit,
                seen: meta.len(),
            });
        }
        let origin = FileStamp::of(&meta);
        let tmp = self
            .inner
            .blobs
            .join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
        let fetched = |digest, size, hardlinked| Fetched {
            path: tmp.clone(),
            digest,
            size,
            hardlinked,
            _lock: None,
            sidecar: None,
        };
        if self.inner.config.import_mode == ImportMode::HardlinkOrCopy {
            match fs::hard_link(&real, &tmp) {
                Ok(()) => {
                    rep.start(Phase::Verifying, Some(meta.len()));
                    return match hash_file(&tmp, |n| rep.set(n)) {
                        Ok((d, n)) => Ok((fetched(d, n, true), Some(origin))),
                        Err(e) => {
                            let _ = fs::remove_file(&tmp);
                            Err(e)
                        }
                    };
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot hardlink the model file; copying it");
                }
            }
        }
        check_disk(
            &self.inner.blobs,
            meta.len(),
            self.inner.config.disk_reserve_bytes,
        )?;
        rep.start(Phase::Downloading, Some(meta.len()));
        match copy_hashing(&real, &tmp, |n| rep.set(n)) {
            Ok((d, n)) => Ok((fetched(d, n, false), Some(origin))),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                if e.is_no_space() {
                    return Err(ModelError::InsufficientDisk {
                        path: self.inner.blobs.clone(),
                        needed: meta.len(),
                        available: blobs::free_bytes(&self.inner.blobs).unwrap_or(0),
                    });
                }
                Err(e)
            }
        }
    }

    /// Puts fetched bytes under their final name, or into quarantine when they do not match.
    fn commit_blocking(
        &self,
        key: &str,
        fetched: Fetched,
        expected: Option<&Sha256>,
        origin: Option<FileStamp>,
    ) -> Result<Blob, ModelError> {
        let dir = &self.inner.blobs;
        if let Some(exp) = expected
            && exp != &fetched.digest
        {
            let quarantined = blobs::quarantine(
                &fetched.path,
                &self.inner.quarantine,
                &QuarantineNote {
                    source: key.to_string(),
                    expected: Some(exp.to_string()),
                    actual: fetched.digest.to_string(),
                    reason: "the bytes do not match spec.sha256".into(),
                    time: now(),
                },
            )?;
            if let Some(s) = &fetched.sidecar {
                let _ = fs::remove_file(s);
            }
            tracing::error!(expected = %exp, actual = %fetched.digest, quarantined = %quarantined.display(),
                "model bytes do not match spec.sha256; quarantined");
            return Err(ModelError::DigestMismatch {
                model_source: key.to_string(),
                expected: exp.clone(),
                actual: fetched.digest.clone(),
                quarantined,
            });
        }
        if !fetched.hardlinked {
            make_read_only(&fetched.path)?;
        }
        let path = self.blob_path(&fetched.digest);
        {
            let _g = self.inner.gc_lock.read().unwrap_or_else(|p| p.into_inner());
            fs::rename(&fetched.path, &path).map_err(ModelError::io("rename into place", &path))?;
            // rename() of two links to one inode does nothing: drop the temporary name ourselves.
            if fetched.path.exists() {
                let _ = fs::remove_file(&fetched.path);
            }
            fsync_dir(dir)?;
            if let Some(s) = &fetched.sidecar {
                let _ = fs::remove_file(s);
            }
            let meta = fs::metadata(&path).map_err(ModelError::io("stat", &path))?;
            self.inner.index.update(|f| {
                f.sources.insert(
                    key.to_string(),
                    SourceEntry {
                        digest: fetched.digest.clone(),
                        size_bytes: fetched.size,
                        origin,
                        recorded_at: now(),
                    },
                );
                f.blobs.insert(
                    fetched.digest.to_string(),
                    BlobRecord {
                        stamp: FileStamp::of(&meta),
                        verified_at: now(),
                    },
                );
            })?;
        }
        Ok(Blob {
            digest: fetched.digest,
            size_bytes: fetched.size,
            path,
        })
    }
}

/// Removes quarantined bytes and their note.
fn remove_quarantined(path: &Path) {
    let _ = fs::remove_file(path);
    let mut note = path.to_path_buf().into_os_string();
    note.push(".json");
    let _ = fs::remove_file(note);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_environment() {
        let env = |k: &str| match k {
            "HF_ENDPOINT" => Some("http://127.0.0.1:9/".to_string()),
            "HF_TOKEN" => Some("t".to_string()),
            "HF_HUB_OFFLINE" => Some("1".to_string()),
            _ => None,
        };
        let c = StoreConfig::from_lookup(env);
        assert_eq!(c.hf_endpoint, "http://127.0.0.1:9");
        assert_eq!(c.hf_token.as_deref(), Some("t"));
        assert!(c.offline);
        let c = StoreConfig::from_lookup(|k| (k == "LAS_OFFLINE").then(|| "0".to_string()));
        assert!(!c.offline);
        assert_eq!(c.hf_endpoint, "https://huggingface.co");
    }

    #[test]
    fn hf_urls() {
        let dir = tempfile::tempdir().unwrap();
        let s = ModelStore::open_with(&LasHome::at(dir.path()), StoreConfig::default()).unwrap();
        let src = ModelSource::parse("hf://o/r/sub/f.gguf@refs/pr/1").unwrap();
        assert_eq!(
            s.resolve_url(&src).unwrap(),
            "https://huggingface.co/o/r/resolve/refs%2Fpr%2F1/sub/f.gguf"
        );
        let floating = ModelSource::parse("hf://o/r/f.gguf").unwrap();
        assert_eq!(
            s.resolve_url(&floating).unwrap(),
            "https://huggingface.co/o/r/resolve/main/f.gguf"
        );
    }
}
