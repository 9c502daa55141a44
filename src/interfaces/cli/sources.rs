//! `lasctl get sources`: the watched directories and how their last apply went. The daemon keeps
//! one record per directory under the key `source/<path>`:
//! `{path, lastApplied, generation, objects, error}` (`control::sources::SourceStatus`), and
//! `suspended: {path, since, reason}` from the `suspended-source/<path>` record of a suspended one.

use std::io::Write;

use serde_json::Value;

use super::output::{OutputFormat, age, print_table, to_yaml};
use super::{CliError, GetArgs};

/// The record key prefix the daemon writes.
pub const PREFIX: &str = "source/";

/// True for `get source`, `get sources`, `get Source`.
pub fn is_sources(kind: &str) -> bool {
    matches!(kind.to_ascii_lowercase().as_str(), "source" | "sources")
}

pub fn run(g: GetArgs) -> Result<(), CliError> {
    if g.selector.is_some() {
        return Err(CliError::Usage(
            "get sources takes no label selector".into(),
        ));
    }
    let store = super::verbs::open_store()?;
    let mut records: Vec<Value> = store
        .records_with_prefix(PREFIX)?
        .into_iter()
        .map(|(k, mut v)| {
            if v.get("path").is_none()
                && let Some(m) = v.as_object_mut()
            {
                m.insert("path".into(), Value::String(k[PREFIX.len()..].to_string()));
            }
            v
        })
        .collect();
    // Suspensions (`rollback --suspend-source`) are their own records, written by the CLI.
    for (_, v) in store.records_with_prefix(crate::control::sources::SUSPENDED_PREFIX)? {
        let Some(path) = v.get("path").and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        let pos = records
            .iter()
            .position(|r| r.get("path").and_then(Value::as_str) == Some(path.as_str()));
        let r = match pos {
            Some(i) => &mut records[i],
            None => {
                records.push(serde_json::json!({"path": path}));
                records.last_mut().expect("pushed")
            }
        };
        if let Some(m) = r.as_object_mut() {
            m.insert("suspended".into(), v.clone());
        }
    }
    if let Some(name) = &g.name {
        records.retain(|r| r.get("path").and_then(Value::as_str) == Some(name.as_str()));
        if records.is_empty() {
            return Err(CliError::Usage(format!(
                "source {name} not found (see lasctl get sources)"
            )));
        }
    }
    let mut out = std::io::stdout().lock();
    let s = |r: &Value, k: &str| match r.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    };
    match g.output {
        OutputFormat::Json => {
            let v = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": records});
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            )?;
        }
        OutputFormat::Yaml => {
            let v = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": records});
            write!(out, "{}", to_yaml(&v))?;
        }
        OutputFormat::Name => {
            for r in &records {
                writeln!(out, "source/{}", s(r, "path"))?;
            }
        }
        OutputFormat::Table | OutputFormat::Wide => {
            if records.is_empty() {
                eprintln!("No sources: start `lasctl daemon --watch DIR` to watch a directory.");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = records
                .iter()
                .map(|r| {
                    let err = s(r, "error");
                    vec![
                        s(r, "path"),
                        if r.get("suspended").is_some() {
                            "Suspended".into()
                        } else {
                            "Watching".into()
                        },
                        if err.is_empty() {
                            "True".into()
                        } else {
                            "False".into()
                        },
                        s(r, "generation"),
                        s(r, "objects"),
                        {
                            let t = s(r, "lastApplied");
                            if t.is_empty() {
                                "never".into()
                            } else {
                                age(&t)
                            }
                        },
                        err,
                    ]
                })
                .collect();
            print_table(
                &mut out,
                &[
                    "PATH",
                    "STATE",
                    "OK",
                    "GENERATION",
                    "OBJECTS",
                    "LAST APPLIED",
                    "ERROR",
                ],
                &rows,
            )?;
        }
    }
    Ok(())
}
