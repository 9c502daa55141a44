//! `lasctl plan -f PATH… [-o json] [--update]`: the ordered actions an apply would cause,
//! projected memory per device, and every refusal. Also printed by `apply --dry-run`.
//!
//! Writes `las.lock` (see `control::resolver::lock_path_for`) when every module resolves and the
//! lock is missing, stale or `--update` was given; `apply --dry-run` never writes it.

use std::io::Write;
use std::process::ExitCode;

use super::output::OutputFormat;
use super::verbs::{load, open_store};
use super::{CliError, FileArgs};
use crate::api::{Desired, Spec};
use crate::artifacts::catalog::Catalog;
use crate::control::plan::{Plan, PlanInput, plan};
use crate::control::policy::{FileSizeEstimator, NamedPolicy};
use crate::control::resolver::{LockFile, lock_path_for};

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub files: FileArgs,
    /// table (default) or json.
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<OutputFormat>,
    /// Re-resolve module versions, ignoring las.lock, and rewrite it.
    #[arg(long)]
    pub update: bool,
}

/// Computes the plan of `objects` (already validated) from `files`.
pub(crate) fn compute(
    files: &FileArgs,
    objects: &[Desired],
    update: bool,
    write_lock: bool,
) -> Result<Plan, CliError> {
    let mut store = open_store()?;
    let extra: Vec<NamedPolicy> = objects
        .iter()
        .filter_map(|d| match &d.spec {
            Spec::Policy(p) => Some(NamedPolicy {
                name: d.name.to_string(),
                spec: p.clone(),
            }),
            _ => None,
        })
        .collect();
    let (profile, tier) = super::hardware::profile_and_tier(&mut store, &extra)?;
    let loaded = Catalog::from_env()?;
    for e in &loaded.rejected {
        eprintln!("warning: manifest ignored: {e}");
    }
    let state = store.list(None, &Default::default())?;
    let lock_path = lock_path_for(&files.paths);
    let lock = match &lock_path {
        Some(p) => LockFile::read(p)?,
        None => None,
    };
    let planned = plan(&PlanInput {
        desired: objects,
        state: &state,
        profile: &profile,
        tier: &tier,
        catalog: &loaded.catalog,
        lock: lock.as_ref(),
        update,
        estimator: &FileSizeEstimator,
    });
    if write_lock
        && let (Some(path), Ok(r)) = (&lock_path, &planned.resolution)
        && !r.modules.is_empty()
    {
        let new = LockFile::from_resolution(r);
        if lock.as_ref() != Some(&new) {
            new.write(path)?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(planned.plan)
}

pub fn run(a: PlanArgs) -> Result<ExitCode, CliError> {
    let objects: Vec<Desired> = load(&a.files)?.into_iter().map(|(d, _)| d).collect();
    let p = compute(&a.files, &objects, a.update, true)?;
    let mut out = std::io::stdout().lock();
    match a.output {
        Some(OutputFormat::Json) => write!(out, "{}", p.to_json())?,
        Some(OutputFormat::Yaml) => write!(
            out,
            "{}",
            super::output::to_yaml(&serde_json::to_value(&p).expect("plans serialize"))
        )?,
        _ => write!(out, "{}", p.to_text())?,
    }
    if p.refusals.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: {} object(s) refused; see Refusals",
            p.refusals.len()
        );
        Ok(ExitCode::from(1))
    }
}
