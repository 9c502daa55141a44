//! `lasctl apply -f PATH [--dry-run] [--prune]`: record desired state from files.

use std::io::Write;

use super::output::{OutputFormat, to_yaml};
use super::verbs::{load, lower, open_store};
use super::{ApplyArgs, CliError};
use crate::api::Desired;
use crate::control::apply::{ApplyOptions, apply_paths};
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

pub fn run(a: ApplyArgs) -> Result<(), CliError> {
    let opts = ApplyOptions {
        recursive: a.files.recursive,
        prune: a.prune,
        allow_empty: a.allow_empty,
        dry_run: a.dry_run,
    };
    let mut store = open_store()?;
    let outcome = apply_paths(&mut store, &a.files.paths, &opts)?;
    drop(store);
    print_outcome(&outcome, a.dry_run, a.output)?;
    if !a.dry_run
        && let Some(w) = super::daemon_record::no_daemon_warning(
            &crate::home::LasHome::from_env()?,
            "recorded in",
        )
    {
        eprintln!("{w}");
    }
    if a.dry_run && a.output.is_none() {
        let objects: Vec<Desired> = load(&a.files)?.into_iter().map(|(d, _)| d).collect();
        let p = super::plan::compute(&a.files, &objects, false, false)?;
        print!("\nPlan:\n{}", p.to_text());
    }
    Ok(())
}
