//! The blob directory: names, hashing, durable renames, quarantine and free-disk checks.
//!
//! Every final name (`blobs/sha256-<hex>`) is reached only by `rename` from a temporary name in the
//! same directory after the bytes were fsynced, so a crash leaves either no blob or a whole one.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256 as Hasher};

use super::error::ModelError;
use crate::api::model::Sha256;

/// Read and write in chunks this large: big enough that syscalls do not dominate hashing.
pub(crate) const CHUNK: usize = 1 << 20;

pub(crate) const BLOB_PREFIX: &str = "sha256-";
pub(crate) const TMP_PREFIX: &str = ".tmp-";
pub(crate) const PARTIAL_PREFIX: &str = ".partial-";

pub(crate) fn blob_name(d: &Sha256) -> String {
    format!("{BLOB_PREFIX}{d}")
}

/// The digest a final blob name stands for, if it is one.
pub(crate) fn parse_blob_name(name: &str) -> Option<Sha256> {
    Sha256::new(name.strip_prefix(BLOB_PREFIX)?).ok()
}

pub(crate) fn finish(h: Hasher) -> Sha256 {
    Sha256::new(&hex::encode(h.finalize())).expect("sha256 output is 64 lower-case hex characters")
}

/// What identifies a file's current contents cheaply: if none of these changed, we trust the last
/// hash. (`ctime` cannot be set from user space, so a rewrite that restores `mtime` is still seen.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl FileStamp {
    /// The same version of a file, as far as a source file goes: device, inode, size and mtime
    /// (not ctime, which a hardlink or a chmod also moves).
    pub fn same_version(&self, other: &FileStamp) -> bool {
        (self.dev, self.ino, self.size, self.mtime_ns)
            == (other.dev, other.ino, other.size, other.mtime_ns)
    }

    pub fn of(m: &fs::Metadata) -> Self {
        FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        }
    }
}

/// Hashes a whole file, calling `on_bytes` with the running count.
pub(crate) fn hash_file(
    path: &Path,
    mut on_bytes: impl FnMut(u64),
) -> Result<(Sha256, u64), ModelError> {
    let mut f = File::open(path).map_err(ModelError::io("open", path))?;
    let mut h = Hasher::new();
    let n = hash_reader(&mut f, &mut h, u64::MAX, path, &mut on_bytes)?;
    Ok((finish(h), n))
}

/// Feeds up to `limit` bytes of `r` into `h`; returns how many were read.
pub(crate) fn hash_reader(
    r: &mut impl Read,
    h: &mut Hasher,
    limit: u64,
    path: &Path,
    on_bytes: &mut impl FnMut(u64),
) -> Result<u64, ModelError> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    while total < limit {
        let want = (limit - total).min(CHUNK as u64) as usize;
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ModelError::io("read", path)(e)),
        };
        h.update(&buf[..n]);
        total += n as u64;
        on_bytes(total);
    }
    Ok(total)
}

/// Copies `src` into a new file `dst` (which must not exist) while hashing, then fsyncs it.
///
/// Reading and hashing run on this thread while a second thread writes, so the copy costs about
/// max(hash, write) rather than their sum.
pub(crate) fn copy_hashing(
    src: &Path,
    dst: &Path,
    mut on_bytes: impl FnMut(u64),
) -> Result<(Sha256, u64), ModelError> {
    let mut input = File::open(src).map_err(ModelError::io("open", src))?;
    let out = create_new(dst)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let dst_owned = dst.to_path_buf();
    let writer = std::thread::spawn(move || -> Result<(), ModelError> {
        let mut out = out;
        for buf in rx {
            out.write_all(&buf)
                .map_err(ModelError::io("write", &dst_owned))?;
            let _ = back_tx.send(buf);
        }
        out.sync_all().map_err(ModelError::io("fsync", &dst_owned))
    });
    let mut h = Hasher::new();
    let mut total = 0u64;
    let result = loop {
        let mut buf = back_rx
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        buf.resize(CHUNK, 0);
        let n = match input.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(ModelError::io("read", src)(e)),
        };
        buf.truncate(n);
        h.update(&buf);
        total += n as u64;
        on_bytes(total);
        if tx.send(buf).is_err() {
            // The writer stopped: its error is the one to report.
            break Ok(());
        }
    };
    drop(tx);
    let written = writer.join().unwrap_or_else(|_| {
        Err(ModelError::io("write", dst)(std::io::Error::other(
            "the writer thread panicked",
        )))
    });
    result?;
    written?;
    Ok((finish(h), total))
}

pub(crate) fn create_new(path: &Path) -> Result<File, ModelError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(ModelError::io("create", path))
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), ModelError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ModelError::io("fsync directory", dir))
}

/// Makes a blob read-only for everyone (the store never writes a blob in place).
pub(crate) fn make_read_only(path: &Path) -> Result<(), ModelError> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o444))
        .map_err(ModelError::io("chmod", path))
}

/// Writes `bytes` to `path` atomically: temporary file in the same directory, fsync, rename, fsync
/// of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
    let res = (|| {
        let mut f = create_new(&tmp)?;
        f.write_all(bytes).map_err(ModelError::io("write", &tmp))?;
        f.sync_all().map_err(ModelError::io("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(ModelError::io("rename into place", path))?;
        fsync_dir(dir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> Result<u64, ModelError> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| {
        ModelError::io("measure free space in", dir)(std::io::Error::from_raw_os_error(e as i32))
    })?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// Fails with `InsufficientDisk` unless `needed` bytes fit in `dir` while leaving `reserve` free.
pub(crate) fn check_disk(dir: &Path, needed: u64, reserve: u64) -> Result<(), ModelError> {
    let available = free_bytes(dir)?;
    if needed.saturating_add(reserve) > available {
        return Err(ModelError::InsufficientDisk {
            path: dir.to_path_buf(),
            needed: needed.saturating_add(reserve),
            available,
        });
    }
    Ok(())
}

/// Why bytes were quarantined; written next to them as `<name>.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QuarantineNote {
    pub source: String,
    pub expected: Option<String>,
    pub actual: String,
    pub reason: String,
    pub time: String,
}

/// Moves `path` into `quarantine_dir` (never served from there) and records why. Bytes already
/// quarantined (the same digest) are kept once: `path` is removed, the note rewritten, and the
/// existing entry returned, so a source fetched again and again cannot fill the disk.
pub(crate) fn quarantine(
    path: &Path,
    quarantine_dir: &Path,
    note: &QuarantineNote,
) -> Result<PathBuf, ModelError> {
    let suffix = format!("-{BLOB_PREFIX}{}", note.actual);
    let existing = fs::read_dir(quarantine_dir).ok().and_then(|entries| {
        entries.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(&suffix))
        })
    });
    if let Some(dst) = existing {
        fs::remove_file(path).map_err(ModelError::io("remove quarantined duplicate", path))?;
        let json = serde_json::to_vec_pretty(note).unwrap_or_default();
        let mut note_path = dst.clone().into_os_string();
        note_path.push(".json");
        write_atomic(Path::new(&note_path), &json)?;
        return Ok(dst);
    }
    let name = format!(
        "{}-{}{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8],
        suffix
    );
    let dst = quarantine_dir.join(&name);
    fs::rename(path, &dst).map_err(ModelError::io("move into quarantine", &dst))?;
    let json = serde_json::to_vec_pretty(note).unwrap_or_default();
    write_atomic(&quarantine_dir.join(format!("{name}.json")), &json)?;
    fsync_dir(quarantine_dir)?;
    if let Some(parent) = path.parent() {
        fsync_dir(parent)?;
    }
    Ok(dst)
}
