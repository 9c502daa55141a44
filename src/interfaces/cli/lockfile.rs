//! `las.lock`, the exact versions and artifacts of the resolved `from:` Modules, beside the
//! applied PATH (see `control::resolver::lock_path_for`). Written by `lasctl apply` after it
//! records, and by `lasctl lock -f PATH [--update]`; never by a preview (`plan`,
//! `apply --dry-run`, `diff`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::verbs::load;
use super::{CliError, FileArgs};
use crate::api::Desired;
use crate::artifacts::catalog::Catalog;
use crate::control::plan::requests;
use crate::control::resolver::{LockFile, ResolveError, lock_path_for, resolve};

#[derive(Debug, clap::Args)]
pub struct LockArgs {
    #[command(flatten)]
    pub files: FileArgs,
    /// Re-resolve every module, ignoring the versions las.lock pins.
    #[arg(long)]
    pub update: bool,
}

/// What writing the lock of an apply came to.
#[derive(Debug)]
pub(crate) enum LockWrite {
    /// No `from:` Module, or stdin (a lock has no place there).
    NotNeeded,
    Unchanged(PathBuf),
    Wrote(PathBuf),
    /// The Modules do not resolve; nothing was written.
    Unresolved(PathBuf, ResolveError),
}

/// Resolves the `from:` Modules of `objects` (read from `paths`) and writes `las.lock` when it
/// is missing or differs.
pub(crate) fn write_lock(
    paths: &[PathBuf],
    objects: &[Desired],
    update: bool,
) -> Result<LockWrite, CliError> {
    let reqs = requests(objects);
    let Some(path) = lock_path_for(paths).filter(|_| !reqs.is_empty()) else {
        return Ok(LockWrite::NotNeeded);
    };
    let loaded = Catalog::from_env()?;
    for e in &loaded.rejected {
        eprintln!("warning: manifest ignored: {e}");
    }
    let old = LockFile::read(&path)?;
    match resolve(&reqs, &loaded.catalog, old.as_ref(), update) {
        Err(e) => Ok(LockWrite::Unresolved(path, e)),
        Ok(r) => {
            let new = LockFile::from_resolution(&r);
            if old.as_ref() == Some(&new) {
                Ok(LockWrite::Unchanged(path))
            } else {
                new.write(&path)?;
                Ok(LockWrite::Wrote(path))
            }
        }
    }
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

pub fn run(a: LockArgs) -> Result<ExitCode, CliError> {
    if a.files.paths.iter().any(|p| p.as_os_str() == "-") {
        return Err(CliError::Usage(
            "lock needs a file or directory: las.lock is written beside it (stdin has no place for one)"
                .into(),
        ));
    }
    let objects: Vec<Desired> = load(&a.files)?.into_iter().map(|(d, _)| d).collect();
    match write_lock(&a.files.paths, &objects, a.update)? {
        LockWrite::NotNeeded => {
            println!(
                "no Module with from: in {}; nothing to lock",
                paths_shown(&a.files.paths)
            );
            Ok(ExitCode::SUCCESS)
        }
        LockWrite::Unchanged(p) => {
            println!("{} is up to date", shown(&p));
            Ok(ExitCode::SUCCESS)
        }
        LockWrite::Wrote(p) => {
            println!("wrote {}", shown(&p));
            Ok(ExitCode::SUCCESS)
        }
        LockWrite::Unresolved(p, e) => {
            eprintln!("error: {} not written: resolution failed: {e}", shown(&p));
            Ok(ExitCode::from(1))
        }
    }
}

pub(crate) fn paths_shown(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
