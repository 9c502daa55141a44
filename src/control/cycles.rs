//! `dependsOn` cycles among Modules: a cycle can never start (each member waits for the next), so
//! `plan`, `apply` (also `--dry-run`, also a watched directory) refuse it, and the daemon stalls
//! the members of one written another way (the HTTP API) with reason `DependencyCycle`.
//!
//! The graph is the stored Modules (not being deleted) with the applied ones put over them, so a
//! cycle that closes across two applies is found too. The search is the resolver's (Tarjan).

use std::collections::BTreeMap;

use crate::api::decode::{InputError, InputErrors};
use crate::api::{Desired, Kind, Spec};
use crate::control::resolver::find_cycles;
use crate::control::store::StoredObject;

/// Module name → the Modules it depends on.
pub type Graph = BTreeMap<String, Vec<String>>;

/// The `dependsOn` graph of the stored Modules (those being deleted left out), with `desired`
/// put over it and the `removed` Modules taken out.
pub fn graph(stored: &[StoredObject], desired: &[&Desired], removed: &[String]) -> Graph {
    let mut g = Graph::new();
    for o in stored {
        if o.kind != Kind::Module || o.deleted_at.is_some() {
            continue;
        }
        if let Ok(Spec::Module(m)) = o.typed_spec() {
            g.insert(o.name.to_string(), module_deps(&m));
        }
    }
    for d in desired {
        if let Spec::Module(m) = &d.spec {
            g.insert(d.name.to_string(), module_deps(m));
        }
    }
    for r in removed {
        g.remove(r);
    }
    g
}

fn module_deps(m: &crate::api::ModuleSpec) -> Vec<String> {
    m.depends_on
        .iter()
        .filter(|r| r.kind == Kind::Module)
        .map(|r| r.name.to_string())
        .collect()
}

/// Every cycle, each as `[a, b, a]`, sorted.
pub fn cycles(g: &Graph) -> Vec<Vec<String>> {
    let borrowed: BTreeMap<&str, Vec<&str>> = g
        .iter()
        .map(|(k, v)| (k.as_str(), v.iter().map(String::as_str).collect()))
        .collect();
    find_cycles(&borrowed)
}

/// The cycle `name` is on, if any.
pub fn cycle_of<'a>(cycles: &'a [Vec<String>], name: &str) -> Option<&'a Vec<String>> {
    cycles.iter().find(|c| c.iter().any(|n| n == name))
}

/// `ping → pong → ping`
pub fn describe(cycle: &[String]) -> String {
    cycle.join(" → ")
}

/// The sentence a member of `cycle` is refused or stalled with.
pub fn reason(cycle: &[String]) -> String {
    let members = &cycle[..cycle.len().saturating_sub(1)];
    format!(
        "dependsOn cycle {} (members: {}): none of them could ever start; remove one of these dependsOn",
        describe(cycle),
        members.join(", ")
    )
}

/// One input error per applied Module on a cycle (at its document, field `spec.dependsOn`);
/// empty when there is none.
pub fn check(stored: &[StoredObject], desired: &[&Desired], removed: &[String]) -> InputErrors {
    let found = cycles(&graph(stored, desired, removed));
    let mut errors = Vec::new();
    for d in desired {
        if d.kind() != Kind::Module {
            continue;
        }
        if let Some(c) = cycle_of(&found, d.name.as_str()) {
            let (line, column) =
                field_position(&d.origin.file, d.origin.line).unwrap_or((d.origin.line, 1));
            errors.push(InputError {
                file: d.origin.file.clone(),
                line,
                column,
                path: "spec.dependsOn".into(),
                message: format!("Module {}: {}", d.name, reason(c)),
            });
        }
    }
    InputErrors(errors)
}

/// Where `dependsOn:` is written in the document of `file` that contains line `from` (1-based):
/// the documents were read moments ago, so this reads the file again rather than carrying
/// positions for one field through decoding. `None` when it cannot be found (stdin, a flow map).
fn field_position(file: &str, from: usize) -> Option<(usize, usize)> {
    let text = std::fs::read_to_string(file).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    // The document's first line: just after the `---` above `from`.
    let start = lines[..from.min(lines.len())]
        .iter()
        .rposition(|l| l.starts_with("---"))
        .map_or(0, |i| i + 1);
    for (i, l) in lines.iter().enumerate().skip(start) {
        if i > start && l.starts_with("---") {
            break;
        }
        let t = l.trim_start();
        if t.starts_with("dependsOn:") {
            return Some((i + 1, l.len() - t.len() + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(edges: &[(&str, &[&str])]) -> Graph {
        edges
            .iter()
            .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn finds_every_member_of_every_cycle() {
        let c = cycles(&g(&[
            ("ping", &["pong"]),
            ("pong", &["ping"]),
            ("a", &["b"]),
            ("b", &["c"]),
            ("c", &["a"]),
            ("free", &["ping"]),
            ("self", &["self"]),
        ]));
        assert_eq!(
            c,
            vec![
                vec!["a", "b", "c", "a"],
                vec!["ping", "pong", "ping"],
                vec!["self", "self"]
            ]
        );
        assert!(cycle_of(&c, "free").is_none());
        assert_eq!(
            reason(&c[1]),
            "dependsOn cycle ping → pong → ping (members: ping, pong): none of them could ever start; remove one of these dependsOn"
        );
    }

    #[test]
    fn removed_modules_break_cycles() {
        let mut graph = g(&[("ping", &["pong"]), ("pong", &["ping"])]);
        graph.remove("pong");
        assert!(cycles(&graph).is_empty());
    }
}
