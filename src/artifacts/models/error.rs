//! Errors of the model store, each with the CamelCase reason a Model's `Ready` condition reports.

use std::path::PathBuf;

use crate::api::model::Sha256;

/// What the store is doing for a Model, as the reason of `Ready=False` while it works, or `Ready=True`
/// once done. Errors carry their own reason ([`ModelError::reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Bytes are being fetched (a download, or a copy from a path).
    Downloading,
    /// Bytes are being hashed (a resumed download's prefix, a blob re-checked).
    Verifying,
    /// The blob is in the store and its sha256 is known good.
    Verified,
}

impl Phase {
    pub fn reason(self) -> &'static str {
        match self {
            Phase::Downloading => "Downloading",
            Phase::Verifying => "Verifying",
            Phase::Verified => "Verified",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The source cannot be read now: missing file, refused or timed out connection, HTTP error,
    /// offline mode, or a download interrupted more often than the retries allow (the partial bytes
    /// are kept; the next `ensure` resumes).
    #[error("{model_source}: source unavailable: {message}")]
    SourceUnavailable {
        model_source: String,
        message: String,
    },
    #[error(
        "{model_source} names no revision: pin one (hf://owner/repo/path@<commit>) or allow floating revisions in a policy"
    )]
    UnpinnedRevision { model_source: String },
    #[error(
        "{model_source}: the bytes hash to sha256 {actual} but spec.sha256 is {expected}; they are quarantined at {} and will not be served (fix spec.sha256 or the source)",
        quarantined.display()
    )]
    DigestMismatch {
        model_source: String,
        expected: Sha256,
        actual: Sha256,
        quarantined: PathBuf,
    },
    #[error(
        "blob sha256-{digest} changed on disk (its bytes now hash to {actual}); it was moved to {} and will be fetched again",
        quarantined.display()
    )]
    BlobCorrupt {
        digest: Sha256,
        actual: Sha256,
        quarantined: PathBuf,
    },
    #[error("blob sha256-{0} is not in the model store")]
    BlobMissing(Sha256),
    #[error(
        "not enough free disk in {}: {needed} bytes needed, {available} available; free some space or point LAS_HOME elsewhere",
        path.display()
    )]
    InsufficientDisk {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("{model_source} is being fetched by another process; retry once it is done")]
    InProgress { model_source: String },
    /// The bytes passed the most a caller allows ([`super::EnsureOptions::max_bytes`]); the fetch
    /// was stopped and nothing of it is kept.
    #[error(
        "{model_source} is larger than {limit} bytes, the most allowed here ({seen} bytes seen); the download was stopped and nothing is kept"
    )]
    TooLarge {
        model_source: String,
        limit: u64,
        seen: u64,
    },
    /// The caller cancelled the fetch ([`super::EnsureOptions::cancel`]); nothing of it is kept.
    #[error("{model_source}: the download was cancelled")]
    Cancelled { model_source: String },
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the HTTP client: {0}")]
    Client(String),
}

impl ModelError {
    /// The CamelCase reason for a Model's `Ready=False` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            ModelError::SourceUnavailable { .. } => "SourceUnavailable",
            ModelError::UnpinnedRevision { .. } => "UnpinnedRevision",
            ModelError::DigestMismatch { .. } | ModelError::BlobCorrupt { .. } => "DigestMismatch",
            ModelError::BlobMissing(_) => "BlobMissing",
            ModelError::InsufficientDisk { .. } => "InsufficientDisk",
            ModelError::InProgress { .. } => Phase::Downloading.reason(),
            ModelError::TooLarge { .. } => "TooLarge",
            ModelError::Cancelled { .. } => "Cancelled",
            ModelError::Io { .. } | ModelError::Client(_) => "StorageError",
        }
    }

    /// An IO error that means the disk (or the quota) is full.
    pub(crate) fn is_no_space(&self) -> bool {
        matches!(self, ModelError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ModelError::Io { op, path, source }
    }
}
