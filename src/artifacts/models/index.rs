//! `models/index.json`: which digest each source gave last time, and when each blob was last hashed.
//!
//! It is a cache, never the truth about bytes: a lost or corrupt index costs a re-hash or a
//! re-download, never a wrong answer, because every hit is checked against the blob on disk.
//! Writes are atomic (temporary file, fsync, rename) and serialized by an advisory lock on
//! `models/.index.lock`, so two processes never lose each other's entries.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::blobs::{FileStamp, write_atomic};
use super::error::ModelError;
use crate::api::model::Sha256;

const VERSION: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexFile {
    #[serde(default)]
    pub version: u32,
    /// Keyed by the source as written (`ModelSource`'s display form).
    #[serde(default)]
    pub sources: BTreeMap<String, SourceEntry>,
    /// Keyed by hex digest.
    #[serde(default)]
    pub blobs: BTreeMap<String, BlobRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SourceEntry {
    pub digest: Sha256,
    pub size_bytes: u64,
    /// For local files: the source file as it was when imported; a change means re-import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<FileStamp>,
    pub recorded_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BlobRecord {
    /// The blob file as it was when its bytes last hashed to its name.
    pub stamp: FileStamp,
    pub verified_at: String,
}

pub(crate) struct Index {
    path: PathBuf,
    lock_path: PathBuf,
    in_process: Mutex<()>,
}

impl Index {
    pub fn new(models_dir: &std::path::Path) -> Self {
        Index {
            path: models_dir.join("index.json"),
            lock_path: models_dir.join(".index.lock"),
            in_process: Mutex::new(()),
        }
    }

    /// Reads the index (without locking: a reader sees the old or the new file, never a mix).
    pub fn load(&self) -> IndexFile {
        match fs::read(&self.path) {
            Ok(bytes) => match serde_json::from_slice::<IndexFile>(&bytes) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e,
                        "model index is unreadable; starting from an empty one (blobs are re-hashed on use)");
                    IndexFile::default()
                }
            },
            Err(_) => IndexFile::default(),
        }
    }

    /// Read-modify-write under both locks.
    pub fn update<T>(&self, f: impl FnOnce(&mut IndexFile) -> T) -> Result<T, ModelError> {
        let _g = self.in_process.lock().unwrap_or_else(|p| p.into_inner());
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(ModelError::io("open", &self.lock_path))?;
        let _flock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, e)| {
            ModelError::io("lock", &self.lock_path)(std::io::Error::from_raw_os_error(e as i32))
        })?;
        let mut file = self.load();
        file.version = VERSION;
        let out = f(&mut file);
        let json = serde_json::to_vec_pretty(&file).map_err(|e| {
            ModelError::io("serialize", &self.path)(std::io::Error::other(e.to_string()))
        })?;
        write_atomic(&self.path, &json)?;
        Ok(out)
    }
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
