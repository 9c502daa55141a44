//! `lasctl describe KIND NAME`: spec, status, conditions and recent events of one object.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::Value;

use super::CliError;
use super::objref;
use super::output::{age, print_table, to_yaml};
use super::verbs::open_store;

pub fn run(object: &[String]) -> Result<(), CliError> {
    let (kind, name) = objref::one(object)?;
    let store = open_store()?;
    let o = store.get(kind, &name)?;
    let mut out = std::io::stdout().lock();
    let kv = |k: &str, v: &dyn std::fmt::Display| format!("{:<18}{v}\n", format!("{k}:"));
    let map = |m: &BTreeMap<String, String>| {
        if m.is_empty() {
            "<none>".to_string()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    let mut s = String::new();
    s += &kv("Name", &o.name);
    s += &kv("Kind", &o.kind);
    s += &kv("Labels", &map(&o.labels));
    s += &kv("Annotations", &map(&o.annotations));
    s += &kv("UID", &o.uid);
    s += &kv("Generation", &o.generation);
    s += &kv("ResourceVersion", &o.resource_version);
    s += &kv(
        "Created",
        &format!("{} ({} ago)", o.created_at, age(&o.created_at)),
    );
    if let Some(d) = &o.deleted_at {
        s += &kv("Deleting since", d);
        s += &kv("Finalizers", &o.finalizers.join(", "));
    }
    s += "Spec:\n";
    for l in to_yaml(&o.spec).lines() {
        s += &format!("  {l}\n");
    }
    let mut status = o.status.clone();
    let conditions = status.as_object_mut().and_then(|m| m.remove("conditions"));
    if status.as_object().is_some_and(|m| !m.is_empty()) {
        s += "Status:\n";
        for l in to_yaml(&status).lines() {
            s += &format!("  {l}\n");
        }
    }
    write!(out, "{s}")?;
    writeln!(out, "Conditions:")?;
    let conds: Vec<Vec<String>> = conditions
        .and_then(|c| c.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let f = |k: &str| {
                c.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            vec![
                format!("  {}", f("type")),
                f("status"),
                f("reason"),
                age(&f("lastTransitionTime")),
                f("message"),
            ]
        })
        .collect();
    if conds.is_empty() {
        writeln!(out, "  <none>")?;
    } else {
        print_table(
            &mut out,
            &["  TYPE", "STATUS", "REASON", "AGE", "MESSAGE"],
            &conds,
        )?;
    }
    writeln!(out, "Events:")?;
    let events = store.events(Some((o.kind.as_str(), o.name.as_str())), 0, 20)?;
    if events.is_empty() {
        writeln!(out, "  <none>")?;
    } else {
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                vec![
                    format!("  {:?}", e.type_),
                    e.reason.clone(),
                    super::events::seen(e),
                    e.message.clone(),
                ]
            })
            .collect();
        print_table(&mut out, &["  TYPE", "REASON", "AGE", "MESSAGE"], &rows)?;
    }
    Ok(())
}
