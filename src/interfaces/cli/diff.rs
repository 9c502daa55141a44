//! `lasctl diff -f PATH`: a unified YAML diff of what an apply would change.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use serde_json::{Value, json};

use super::output::to_yaml;
use super::verbs::{load, preview_store};
use super::{CliError, FileArgs};

/// The part of an object a user writes, for diffs.
pub(super) fn user_view(
    name: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    spec: &Value,
) -> String {
    let mut meta = json!({"name": name});
    if !labels.is_empty() {
        meta["labels"] = json!(labels);
    }
    if !annotations.is_empty() {
        meta["annotations"] = json!(annotations);
    }
    to_yaml(&json!({"metadata": meta, "spec": spec}))
}

/// A unified diff of two YAML texts with 3 lines of context (empty when they are equal).
pub(super) fn unified(old: &str, new: &str, from: &str, to: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(from, to)
        .to_string()
}

pub fn run(f: FileArgs) -> Result<ExitCode, CliError> {
    let objects = load(&f)?;
    // A preview: a home without state is read as empty, and nothing is created.
    let store = preview_store()?;
    let mut out = std::io::stdout().lock();
    let mut changed = false;
    for (d, _) in &objects {
        let new = user_view(
            d.name.as_str(),
            &d.labels,
            &d.annotations,
            &d.spec.to_json(),
        );
        let stored = match &store {
            Some(s) => s.get(d.kind(), d.name.as_str()),
            None => Err(crate::control::store::StoreError::NotFound {
                kind: d.kind(),
                name: d.name.to_string(),
            }),
        };
        let old = match stored {
            Ok(o) => user_view(o.name.as_str(), &o.labels, &o.annotations, &o.spec),
            Err(crate::control::store::StoreError::NotFound { .. }) => String::new(),
            Err(e) => return Err(e.into()),
        };
        if old != new {
            changed = true;
            let id = format!("{}/{}", d.kind(), d.name);
            let text = unified(&old, &new, &format!("live/{id}"), &format!("desired/{id}"));
            write!(out, "{text}")?;
        }
    }
    Ok(if changed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
