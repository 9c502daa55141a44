//! Native programs of catalog modules: fetched and verified like model weights (through the model
//! store's content-addressed blobs: `file://` or `https://`, sha256 checked while streaming), then
//! installed as an executable at `$LAS_HOME/bin/<sha256>/<file>`.
//!
//! # Guarantees
//! - What is installed has the manifest's sha256; an installation is complete or absent (written
//!   to a temporary name, made executable, then renamed).
//! - An installed program is used as it is: no network, no re-hash on every start.
//!
//! # Caveats
//! - Single files only: an archive (`.tar.gz`, `.tgz`, `.zip`) is refused with a clear error.
//! - Installed programs are never collected; the blob they came from is, like any blob no Model
//!   refers to.

use std::path::PathBuf;

use crate::api::model::{ModelFormat, ModelSource, ModelSpec, Sha256};
use crate::artifacts::models::{EnsureOptions, ModelError, ModelStore};
use crate::home::LasHome;

/// Errors of installing a native program.
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error("{url}: {reason}")]
    Unsupported { url: String, reason: String },
    #[error(transparent)]
    Fetch(#[from] ModelError),
    #[error("installing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The installed native programs of this `LAS_HOME`.
#[derive(Clone)]
pub struct BinaryStore {
    models: ModelStore,
    root: PathBuf,
}

impl BinaryStore {
    pub fn new(home: &LasHome, models: ModelStore) -> Self {
        Self {
            models,
            root: home.bin(),
        }
    }

    /// The directory that holds the program of `url` (named after the URL's last segment),
    /// installed and executable; fetches and verifies it first when it is not installed yet.
    pub async fn ensure(&self, url: &str, sha256: &Sha256) -> Result<PathBuf, BinaryError> {
        let unsupported = |reason: &str| BinaryError::Unsupported {
            url: url.into(),
            reason: reason.into(),
        };
        let file = url
            .rsplit('/')
            .next()
            .filter(|f| !f.is_empty() && *f != "." && *f != "..")
            .ok_or_else(|| unsupported("the URL names no file"))?;
        if [".tar.gz", ".tgz", ".tar", ".zip"]
            .iter()
            .any(|ext| file.ends_with(ext))
        {
            return Err(unsupported(
                "archives are not installed; the manifest must point at the program itself",
            ));
        }
        let dir = self.root.join(sha256.as_str());
        let target = dir.join(file);
        if target.is_file() {
            return Ok(dir);
        }
        let source = ModelSource::parse(url).map_err(|e| unsupported(&e))?;
        let spec = ModelSpec {
            source,
            sha256: Some(sha256.clone()),
            format: ModelFormat::default(),
        };
        let blob = self.models.ensure(&spec, &EnsureOptions::default()).await?;
        install_file(&self.root, &blob.path, sha256, file)?;
        Ok(dir)
    }
}

/// Installs a verified blob (sha256 `sha256`, checked when the model store wrote it) as the
/// executable `<bin>/<sha256>/<file>`; does nothing when it is installed already. Returns the
/// program's path. Exec plugins use it with the blob of their `executable` artifact.
pub fn install_blob(
    home: &LasHome,
    blob: &std::path::Path,
    sha256: &Sha256,
    file: &str,
) -> Result<PathBuf, BinaryError> {
    let root = home.bin();
    install_file(&root, blob, sha256, file)?;
    Ok(root.join(sha256.as_str()).join(file))
}

fn install_file(
    root: &std::path::Path,
    blob: &std::path::Path,
    sha256: &Sha256,
    file: &str,
) -> Result<(), BinaryError> {
    let dir = root.join(sha256.as_str());
    let target = dir.join(file);
    if target.is_file() {
        return Ok(());
    }
    let io = |path: &PathBuf| {
        let path = path.clone();
        move |source| BinaryError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let tmp = dir.join(format!(".{file}.partial"));
    std::fs::copy(blob, &tmp).map_err(io(&tmp))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o555)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &target).map_err(io(&target))?;
    tracing::info!(program = %target.display(), "installed a native program");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[tokio::test]
    async fn installs_a_verified_executable_once_and_refuses_archives_and_wrong_digests() {
        let dir = tempfile::tempdir().unwrap();
        let home = LasHome::at(dir.path().join("home"));
        home.ensure().unwrap();
        let src = dir.path().join("hello.sh");
        std::fs::write(&src, "#!/bin/sh\necho hello\n").unwrap();
        let digest = Sha256::new(&hex::encode(sha2::Sha256::digest(
            std::fs::read(&src).unwrap(),
        )))
        .unwrap();
        let store = BinaryStore::new(&home, ModelStore::open(&home).unwrap());
        let url = format!("file://{}", src.display());
        let d = store.ensure(&url, &digest).await.unwrap();
        let out = std::process::Command::new(d.join("hello.sh"))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"hello\n");
        // Installed: the source may go away.
        std::fs::remove_file(&src).unwrap();
        assert_eq!(store.ensure(&url, &digest).await.unwrap(), d);

        // Bytes that do not match the manifest's digest are refused and nothing is installed.
        let other = dir.path().join("other");
        std::fs::write(&other, "x").unwrap();
        let zeros = Sha256::new(&"0".repeat(64)).unwrap();
        let e = store
            .ensure(&format!("file://{}", other.display()), &zeros)
            .await
            .unwrap_err();
        assert!(!home.bin().join(zeros.as_str()).exists());
        assert!(
            e.to_string().contains("sha256") || e.to_string().contains("digest"),
            "{e}"
        );
        let e = store
            .ensure("https://example.invalid/tool.tar.gz", &digest)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("archives"), "{e}");
    }
}
