//! `lasctl apply -f PATH [--dry-run] [--prune]`: record desired state from files.

use std::io::Write;

use std::process::ExitCode;

use super::lockfile::{LockWrite, paths_shown, write_lock};
use super::output::{OutputFormat, to_yaml};
use super::plan::refusal_exit;
use super::verbs::{load_noting, lower, open_store, preview_store};
use super::{ApplyArgs, CliError};
use crate::control::apply::{ApplyOptions, apply_loaded, check_prune_scope, preview_into_empty};
use crate::control::store::Outcome;

pub(crate) fn print_outcome(
    o: &Outcome,
    dry_run: bool,
    output: Option<OutputFormat>,
) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match output {
        Some(OutputFormat::Json) => {
            writeln!(out, "{}", serde_json::to_string_pretty(o).expect("json"))?
        }
        Some(OutputFormat::Yaml) => {
            write!(out, "{}", to_yaml(&serde_json::to_value(o).expect("json")))?
        }
        Some(OutputFormat::Name) => {
            for c in &o.changes {
                writeln!(out, "{}/{}", lower(c.kind), c.name)?;
            }
        }
        _ => {
            let suffix = if dry_run { " (dry run)" } else { "" };
            for c in &o.changes {
                writeln!(
                    out,
                    "{}/{} {}{suffix}",
                    lower(c.kind),
                    c.name,
                    c.action.as_str()
                )?;
            }
            if let Some(g) = o.generation {
                writeln!(out, "generation {g} recorded")?;
            }
        }
    }
    Ok(())
}

/// Exit codes: 0 recorded (or, with --dry-run, nothing refused); 1 invalid input, conflict,
/// no objects, or (with --dry-run) anything the plan refuses — the same rule as `plan`.
pub fn run(a: ApplyArgs) -> Result<ExitCode, CliError> {
    let opts = ApplyOptions {
        recursive: a.files.recursive,
        prune: a.prune,
        allow_empty: a.allow_empty,
        dry_run: a.dry_run,
        stdin_scope: a.prune_scope.clone(),
    };
    let paths = &a.files.paths;
    check_prune_scope(paths, &opts)?;
    let loaded = load_noting(&a.files)?;
    // kubectl: "no objects passed to apply". Pruning a PATH to nothing is the one empty apply
    // that means something: the store refuses it unless --allow-empty, naming what it would delete.
    let no_objects = || {
        CliError::Usage(format!(
            "no objects passed to apply: {} holds no LocalAIStack objects",
            paths_shown(paths)
        ))
    };
    let empty = loaded.objects.is_empty();
    if empty && !a.prune {
        return Err(no_objects());
    }
    let objects = loaded.desired();
    let outcome = if a.dry_run {
        match preview_store()? {
            Some(mut store) => apply_loaded(&mut store, paths, loaded.objects, &opts)?,
            None => preview_into_empty(paths, loaded.objects, &opts)?,
        }
    } else {
        let mut store = open_store()?;
        apply_loaded(&mut store, paths, loaded.objects, &opts)?
    };
    if empty && outcome.changes.is_empty() && !a.allow_empty {
        return Err(no_objects());
    }
    print_outcome(&outcome, a.dry_run, a.output)?;
    if !a.dry_run
        && let Some(w) = super::daemon_record::no_daemon_warning(
            &crate::home::LasHome::from_env()?,
            "recorded in",
        )
    {
        eprintln!("{w}");
    }
    if a.dry_run {
        let (planned, _, _, _) = super::plan::compute(paths, &objects, false)?;
        if a.output.is_none() {
            print!("\nPlan:\n{}", planned.plan.to_text());
        }
        return Ok(refusal_exit(
            planned.plan.refusals.len(),
            "the plan's Refusals",
        ));
    }
    match write_lock(paths, &objects, false)? {
        LockWrite::Wrote(p) => eprintln!("wrote {}", p.display()),
        LockWrite::Unresolved(p, e) => eprintln!(
            "warning: {} not written: resolution failed: {e} (the daemon will stall the Modules that do not resolve)",
            p.display()
        ),
        LockWrite::NotNeeded | LockWrite::Unchanged(_) => {}
    }
    Ok(ExitCode::SUCCESS)
}
