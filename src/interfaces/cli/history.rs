//! `lasctl history [KIND NAME]` and `lasctl rollback [GENERATION] [--dry-run]`.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::Value;

use super::apply::print_outcome;
use super::diff::{unified, user_view};
use super::output::{OutputFormat, print_table, to_yaml};
use super::verbs::{lower, open_store};
use super::{CliError, objref};
use crate::api::Kind;
use crate::control::history::{ObjectRevision, object_history};
use crate::control::store::Store;

pub fn run(object: &[String], output: OutputFormat) -> Result<(), CliError> {
    match objref::optional(object)? {
        Some((kind, name)) => one_object(kind, &name, output),
        None => history(output),
    }
}

fn history(output: OutputFormat) -> Result<(), CliError> {
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

/// `history KIND NAME`: the generations that created, changed or deleted one object.
fn one_object(kind: Kind, name: &str, output: OutputFormat) -> Result<(), CliError> {
    let store = open_store()?;
    let h = object_history(&store, kind, name)?;
    let id = format!("{}/{name}", lower(kind));
    if h.is_empty() {
        return Err(CliError::Failed(format!(
            "no kept generation records {id} (see `lasctl history` for the generations kept)"
        )));
    }
    let mut out = std::io::stdout().lock();
    match output {
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&h).expect("json"))?,
        OutputFormat::Yaml => write!(out, "{}", to_yaml(&serde_json::to_value(&h).expect("json")))?,
        _ => {
            let rows: Vec<Vec<String>> = h
                .iter()
                .map(|r| {
                    vec![
                        r.generation.to_string(),
                        r.time.clone(),
                        r.revision.as_str().to_string(),
                        changes_cell(r),
                        r.source.clone(),
                    ]
                })
                .collect();
            print_table(
                &mut out,
                &["GENERATION", "TIME", "ACTION", "CHANGES", "SOURCE"],
                &rows,
            )?;
        }
    }
    Ok(())
}

/// `spec.source: "/a" -> "/b"; metadata.labels: + {"team":"x"}` (values cut at 40 characters).
fn changes_cell(r: &ObjectRevision) -> String {
    if r.changes.is_empty() {
        return "-".into();
    }
    let v = |v: &Value| {
        let s = v.to_string();
        if s.chars().count() > 40 {
            format!("{}…", s.chars().take(39).collect::<String>())
        } else {
            s
        }
    };
    r.changes
        .iter()
        .map(|c| match (&c.old, &c.new) {
            (Some(a), Some(b)) => format!("{}: {} -> {}", c.path, v(a), v(b)),
            (None, Some(b)) => format!("{}: + {}", c.path, v(b)),
            (Some(a), None) => format!("{}: - {}", c.path, v(a)),
            (None, None) => c.path.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn rollback(
    generation: Option<u64>,
    suspend_source: bool,
    dry_run: bool,
) -> Result<(), CliError> {
    use crate::control::sources::{RollbackError, rollback_guarded};
    if dry_run {
        return preview(generation, suspend_source);
    }
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

/// `rollback [GENERATION] --dry-run`: the unified diff from the desired state now to that
/// generation's, as `diff` prints it, and the verdict the rollback would get. Records nothing.
fn preview(generation: Option<u64>, suspend_source: bool) -> Result<(), CliError> {
    let store = open_store()?;
    let target = store.rollback_target(generation)?;
    let text = rollback_diff(&store, target)?;
    let mut out = std::io::stdout().lock();
    write!(out, "{text}")?;
    out.flush()?;
    drop(out);
    // The same guard as the rollback itself.
    let owned = crate::control::sources::rollback_owners(&store, target)?;
    let owned: BTreeMap<String, Vec<String>> = owned
        .into_iter()
        .filter(|(src, _)| !crate::control::sources::is_suspended(&store, src))
        .collect();
    if !owned.is_empty() && !suspend_source {
        return Err(CliError::Usage(format!(
            "{} (dry run: nothing was recorded)",
            crate::control::sources::RollbackError::OwnedByWatchedSource { target, owned }
        )));
    }
    for src in owned.keys() {
        eprintln!("the rollback would suspend source {src} (until `lasctl resume source {src}`)");
    }
    if text.is_empty() {
        eprintln!(
            "desired state already equals generation {target}: a rollback would record nothing"
        );
    } else {
        eprintln!(
            "dry run: the diff above is what a rollback to generation {target} applies; nothing was recorded"
        );
    }
    Ok(())
}

/// The unified diff from the stored desired state to generation `target`'s, object by object
/// (sorted by kind and name).
fn rollback_diff(store: &Store, target: u64) -> Result<String, CliError> {
    let mut old: BTreeMap<(Kind, String), String> = BTreeMap::new();
    for o in store.list(None, &Default::default())? {
        if o.deleted_at.is_none() {
            old.insert(
                (o.kind, o.name.to_string()),
                user_view(o.name.as_str(), &o.labels, &o.annotations, &o.spec),
            );
        }
    }
    let mut new: BTreeMap<(Kind, String), String> = BTreeMap::new();
    for o in store.generation_state(target)? {
        new.insert(
            (o.kind, o.name.clone()),
            user_view(&o.name, &o.labels, &o.annotations, &o.spec),
        );
    }
    let mut keys: Vec<&(Kind, String)> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut text = String::new();
    for key in keys {
        let (a, b) = (
            old.get(key).map_or("", String::as_str),
            new.get(key).map_or("", String::as_str),
        );
        if a != b {
            let id = format!("{}/{}", key.0, key.1);
            text.push_str(&unified(
                a,
                b,
                &format!("live/{id}"),
                &format!("generation-{target}/{id}"),
            ));
        }
    }
    Ok(text)
}
