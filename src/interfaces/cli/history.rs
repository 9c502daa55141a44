//! `lasctl history` and `lasctl rollback [GENERATION]`.

use std::io::Write;

use super::CliError;
use super::apply::print_outcome;
use super::output::{OutputFormat, print_table, to_yaml};
use super::verbs::open_store;

pub fn run(output: OutputFormat) -> Result<(), CliError> {
    let store = open_store()?;
    let h = store.history()?;
    let mut out = std::io::stdout().lock();
    match output {
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&h).expect("json"))?,
        OutputFormat::Yaml => write!(out, "{}", to_yaml(&serde_json::to_value(&h).expect("json")))?,
        _ => {
            let rows: Vec<Vec<String>> = h
                .iter()
                .map(|g| {
                    vec![
                        g.number.to_string(),
                        g.time.clone(),
                        g.added.to_string(),
                        g.changed.to_string(),
                        g.removed.to_string(),
                        g.source.clone(),
                    ]
                })
                .collect();
            print_table(
                &mut out,
                &[
                    "GENERATION",
                    "TIME",
                    "ADDED",
                    "CHANGED",
                    "REMOVED",
                    "SOURCE",
                ],
                &rows,
            )?;
        }
    }
    Ok(())
}

pub fn rollback(generation: Option<u64>, suspend_source: bool) -> Result<(), CliError> {
    use crate::control::sources::{RollbackError, rollback_guarded};
    let mut store = open_store()?;
    let (o, suspended) =
        rollback_guarded(&mut store, generation, suspend_source).map_err(|e| match e {
            RollbackError::Store(s) => CliError::Store(s),
            e => CliError::Usage(e.to_string()),
        })?;
    print_outcome(&o, false, None)?;
    if o.generation.is_none() {
        println!("desired state already equals that generation; nothing recorded");
    }
    for src in suspended {
        println!(
            "source {src} suspended: the daemon does not apply it until `lasctl resume source {src}`"
        );
    }
    Ok(())
}
