//! The state directory (`$LAS_HOME`) and the places inside it.

use std::path::{Path, PathBuf};

/// `$LAS_HOME`, default `$XDG_DATA_HOME/localaistack`, else `~/.local/share/localaistack`.
#[derive(Debug, Clone)]
pub struct LasHome {
    root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("cannot find a state directory: set LAS_HOME (neither XDG_DATA_HOME nor HOME is set)")]
    NoHome,
    #[error("cannot create state directory {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl LasHome {
    pub fn from_env() -> Result<Self, HomeError> {
        let root = if let Some(h) = std::env::var_os("LAS_HOME").filter(|v| !v.is_empty()) {
            PathBuf::from(h)
        } else if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            PathBuf::from(x).join("localaistack")
        } else if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            PathBuf::from(h).join(".local/share/localaistack")
        } else {
            return Err(HomeError::NoHome);
        };
        Ok(Self { root })
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Creates the directory tree (mode 0700 for the root).
    pub fn ensure(&self) -> Result<(), HomeError> {
        use std::os::unix::fs::DirBuilderExt;
        for dir in [self.root.clone(), self.models(), self.logs(), self.run()] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| HomeError::Create { path: dir, source })?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn state_db(&self) -> PathBuf {
        self.root.join("state.db")
    }
    pub fn models(&self) -> PathBuf {
        self.root.join("models")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    /// Installed native programs of catalog modules, `bin/<sha256>/<file>`.
    pub fn bin(&self) -> PathBuf {
        self.root.join("bin")
    }
}
