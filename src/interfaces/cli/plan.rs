//! `lasctl plan -f PATH… [-o table|json|yaml] [--update]`: the ordered actions an apply would
//! cause, projected memory per device, and every refusal. Also printed by `apply --dry-run`.
//!
//! A plan is a preview: it writes nothing anywhere — no `las.lock`, no event, no hardware
//! record, no generation, not even a `state.db` in a home that has none. The lock is written by
//! `apply` and by `lasctl lock` (see `lockfile.rs`).
//!
//! Exit codes: 0 when nothing is refused, 1 when anything is (the same rule as `apply --dry-run`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use super::output::{OutputFormat, only};
use super::verbs::{load, preview_store};
use super::{CliError, FileArgs};
use crate::api::{Desired, Spec};
use crate::artifacts::catalog::Catalog;
use crate::control::hardware::probe_from_env;
use crate::control::plan::{PlanInput, Planned, plan};
use crate::control::policy::{
    GgufEstimator, NamedPolicy, TierChoice, default_policies, select_tier,
};
use crate::control::resolver::{LockFile, lock_path_for};

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub files: FileArgs,
    /// table (default), json or yaml.
    #[arg(short = 'o', long = "output", value_parser = only(&["table", "json", "yaml"]))]
    pub output: Option<OutputFormat>,
    /// Re-resolve module versions as if there were no las.lock (a preview: `lasctl lock
    /// --update` writes the lock).
    #[arg(long)]
    pub update: bool,
}

/// Plans `objects` (already validated) read from `paths`, reading the store and the lock but
/// writing neither.
pub(crate) fn compute(
    paths: &[PathBuf],
    objects: &[Desired],
    update: bool,
) -> Result<(Planned, Option<PathBuf>, Option<LockFile>, TierChoice), CliError> {
    let store = preview_store()?;
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
    let (profile, tier, state) = match &store {
        Some(s) => {
            let profile = probe_from_env().probe()?;
            let tier = select_tier(&super::hardware::policies(s, &extra)?, &profile)?;
            (profile, tier, s.list(None, &Default::default())?)
        }
        None => {
            let profile = probe_from_env().probe()?;
            let policies = if extra.is_empty() {
                default_policies()?
            } else {
                extra.clone()
            };
            let tier = select_tier(&policies, &profile)?;
            (profile, tier, Vec::new())
        }
    };
    let loaded = Catalog::from_env()?;
    for e in &loaded.rejected {
        eprintln!("warning: manifest ignored: {e}");
    }
    let lock_path = lock_path_for(paths);
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
        estimator: &GgufEstimator,
    });
    Ok((planned, lock_path, lock, tier))
}

/// What the activations among `objects` would run unsandboxed (exec plugins), and whether
/// `tier` allows each executable: one line each. Only what can be known without fetching.
pub(crate) fn exec_notes(objects: &[Desired], tier: &TierChoice) -> Vec<String> {
    let Ok(home) = crate::home::LasHome::from_env() else {
        return Vec::new();
    };
    let store = preview_store().ok().flatten();
    let mut out = Vec::new();
    for d in objects {
        let Spec::PluginActivation(a) = &d.spec else {
            continue;
        };
        if a.contributions.is_empty() {
            continue;
        }
        let name = a.plugin_ref.as_str();
        let stored = store
            .as_ref()
            .and_then(|s| s.get(crate::api::Kind::Plugin, name).ok());
        let spec = objects
            .iter()
            .find_map(|o| match &o.spec {
                Spec::Plugin(p) if o.name.as_str() == name => Some(p.clone()),
                _ => None,
            })
            .or_else(|| match stored.as_ref().map(|o| o.typed_spec()) {
                Some(Ok(Spec::Plugin(p))) => Some(p),
                _ => None,
            });
        let Some(spec) = spec else { continue };
        let Ok(Some(m)) =
            crate::control::plugins::knowable_manifest(&home, name, &spec, stored.as_ref())
        else {
            continue;
        };
        let Some(exe) = m.spec.executable() else {
            continue;
        };
        let allowed = tier
            .capabilities
            .allowed_exec_plugins
            .as_ref()
            .is_some_and(|l| l.iter().any(|s| s == &exe.sha256));
        out.push(format!(
            "pluginactivation/{} runs exec plugin {name} unsandboxed (executable sha256:{}): {}",
            d.name,
            exe.sha256,
            if allowed {
                format!("allowed by tier {}", tier.tier)
            } else {
                format!(
                    "not in tier {}'s allowedExecPlugins, so it will not run (ExecNotAllowed)",
                    tier.tier
                )
            }
        ));
    }
    out
}

/// Says on stderr how many objects a preview refused; the exit code of `plan` and
/// `apply --dry-run`.
pub(crate) fn refusal_exit(refused: usize, see: &str) -> ExitCode {
    if refused == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: {refused} object(s) refused; see {see}");
        ExitCode::from(1)
    }
}

pub fn run(a: PlanArgs) -> Result<ExitCode, CliError> {
    let objects: Vec<Desired> = load(&a.files)?.into_iter().map(|(d, _)| d).collect();
    let (planned, _, _, tier) = compute(&a.files.paths, &objects, a.update)?;
    let p = planned.plan;
    let mut out = std::io::stdout().lock();
    match a.output {
        Some(OutputFormat::Json) => write!(out, "{}", p.to_json())?,
        Some(OutputFormat::Yaml) => write!(
            out,
            "{}",
            super::output::to_yaml(&serde_json::to_value(&p).expect("plans serialize"))
        )?,
        _ => {
            write!(out, "{}", p.to_text())?;
            let notes = exec_notes(&objects, &tier);
            if !notes.is_empty() {
                writeln!(out, "Exec plugins (not sandboxed):")?;
                for n in notes {
                    writeln!(out, "  {n}")?;
                }
            }
        }
    }
    Ok(refusal_exit(p.refusals.len(), "Refusals"))
}
