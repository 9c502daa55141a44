//! `lasctl get KIND [NAME]`, `get all`: objects as tables or documents.

use std::io::Write;

use super::objref;
use super::output::{OutputFormat, age, list_value, print_table, to_yaml};
use super::verbs::{lower, open_store};
use super::{CliError, GetArgs, parse_selector};
use crate::api::Kind;
use crate::control::policy::{built_in_policy_objects, is_built_in, object_json as shown};
use crate::control::store::StoredObject;

fn ready(o: &StoredObject) -> (String, String) {
    match o.condition("Ready") {
        Some((s, reason, _)) => (s.as_str().to_string(), reason),
        None if o.deleted_at.is_some() => ("False".into(), "Deleting".into()),
        None => ("-".into(), String::new()),
    }
}

pub(super) fn row(o: &StoredObject, wide: bool, prefix_kind: bool) -> Vec<String> {
    let name = if prefix_kind {
        format!("{}/{}", lower(o.kind), o.name)
    } else {
        o.name.to_string()
    };
    let (ready, reason) = ready(o);
    let s = |k: &str| {
        o.status
            .get(k)
            .map(|v| v.as_str().map(String::from).unwrap_or(v.to_string()))
    };
    let mut r = vec![name, ready];
    match o.kind {
        Kind::Model => {
            // While a fetch runs: how far it is (`11% of 104.0MiB`).
            r.push(super::progress::size_cell(o));
            r.push(age(&o.created_at));
            if wide {
                r.push(reason);
                r.push(o.spec["source"].as_str().unwrap_or_default().to_string());
                r.push(
                    s("digest")
                        .map(|d| d.chars().take(12).collect())
                        .unwrap_or("-".into()),
                );
            }
        }
        Kind::Module => {
            r.push(s("runtime").unwrap_or("-".into()));
            r.push(s("endpoint").unwrap_or("-".into()));
            r.push(s("restarts").unwrap_or("0".into()));
            r.push(age(&o.created_at));
            if wide {
                r.push(reason);
                r.push(o.generation.to_string());
                r.push(s("observedGeneration").unwrap_or("-".into()));
            }
        }
        Kind::Policy => {
            r.push(
                o.spec["tiers"]
                    .as_array()
                    .map(|t| t.len())
                    .unwrap_or(0)
                    .to_string(),
            );
            // The shipped defaults are not stored: no age, a marker instead.
            r.push(if is_built_in(o) {
                "built-in".into()
            } else {
                age(&o.created_at)
            });
            if wide {
                r.push(o.spec["priority"].to_string());
            }
        }
        Kind::Plugin => {
            let m = &o.status["manifest"];
            r.push(m["version"].as_str().unwrap_or("-").to_string());
            r.push(m["runtime"].as_str().unwrap_or("-").to_string());
            r.push(
                m["contributions"]
                    .as_array()
                    .map_or(0, |c| c.len())
                    .to_string(),
            );
            r.push(age(&o.created_at));
            if wide {
                r.push(reason);
                r.push(o.spec["source"].as_str().unwrap_or_default().to_string());
                r.push(
                    s("digest")
                        .map(|d| d.chars().take(12).collect())
                        .unwrap_or("-".into()),
                );
            }
        }
        Kind::PluginActivation => {
            let words = |v: &serde_json::Value| {
                v.as_array()
                    .filter(|a| !a.is_empty())
                    .map(|a| {
                        a.iter()
                            .filter_map(serde_json::Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or("-".into())
            };
            r.push(o.spec["pluginRef"].as_str().unwrap_or_default().to_string());
            r.push(words(&o.spec["contributions"]));
            r.push(words(&o.status["effectiveGrants"]));
            r.push(age(&o.created_at));
            if wide {
                r.push(reason);
                r.push(
                    s("boundDigest")
                        .map(|d| d.chars().take(12).collect())
                        .unwrap_or("-".into()),
                );
            }
        }
    }
    r
}

pub(super) fn header(kind: Kind, wide: bool) -> Vec<&'static str> {
    let mut h = match kind {
        Kind::Model => vec!["NAME", "READY", "SIZE", "AGE"],
        Kind::Module => vec!["NAME", "READY", "RUNTIME", "ENDPOINT", "RESTARTS", "AGE"],
        Kind::Policy => vec!["NAME", "READY", "TIERS", "AGE"],
        Kind::Plugin => vec![
            "NAME",
            "READY",
            "VERSION",
            "RUNTIME",
            "CONTRIBUTIONS",
            "AGE",
        ],
        Kind::PluginActivation => {
            vec!["NAME", "READY", "PLUGIN", "CONTRIBUTIONS", "GRANTS", "AGE"]
        }
    };
    if wide {
        h.extend(match kind {
            Kind::Model => vec!["REASON", "SOURCE", "DIGEST"],
            Kind::Module => vec!["REASON", "GENERATION", "OBSERVED"],
            Kind::Policy => vec!["PRIORITY"],
            Kind::Plugin => vec!["REASON", "SOURCE", "DIGEST"],
            Kind::PluginActivation => vec!["REASON", "BOUND"],
        });
    }
    h
}

/// The shipped policies, shown by `get policies` as objects marked built-in while they are the
/// ones in effect (no Policy is stored). `get all` lists what is stored.
pub(crate) fn built_in_policies(
    store: &crate::control::store::Store,
    kind: Option<Kind>,
) -> Result<Vec<StoredObject>, CliError> {
    if kind != Some(Kind::Policy) {
        return Ok(Vec::new());
    }
    let stored = store.list(Some(Kind::Policy), &Default::default())?;
    Ok(built_in_policy_objects(&stored)?)
}

pub fn run(mut g: GetArgs) -> Result<(), CliError> {
    let all = g.kind.eq_ignore_ascii_case("all");
    let kind = if all {
        None
    } else if g.kind.contains('/') {
        // get KIND/NAME, as kubectl takes it.
        if g.name.is_some() {
            return Err(CliError::Usage(format!(
                "{:?} already names an object; give KIND NAME or KIND/NAME",
                g.kind
            )));
        }
        let (k, n) = objref::one(std::slice::from_ref(&g.kind))?;
        g.name = Some(n);
        Some(k)
    } else {
        Some(objref::parse_kind(&g.kind)?)
    };
    if all && g.name.is_some() {
        return Err(CliError::Usage("get all takes no NAME".into()));
    }
    if g.name.is_some() && g.selector.is_some() {
        // kubectl: "name cannot be provided when a selector is specified".
        return Err(CliError::Usage(
            "a NAME and a selector (-l) cannot be given together: get KIND -l k=v lists what matches, get KIND NAME shows one object".into(),
        ));
    }
    let store = open_store()?;
    let selector = parse_selector(g.selector.as_deref())?;
    let builtins = built_in_policies(&store, kind)?;
    let objects = match (kind, &g.name) {
        (Some(k), Some(n)) => match store.get(k, n) {
            Err(crate::control::store::StoreError::NotFound { .. })
                if builtins.iter().any(|b| b.name.as_str() == n) =>
            {
                builtins
                    .into_iter()
                    .filter(|b| b.name.as_str() == n)
                    .collect()
            }
            r => vec![r?],
        },
        _ => {
            let mut v = store.list(kind, &selector)?;
            v.extend(builtins.into_iter().filter(|b| {
                selector
                    .iter()
                    .all(|(k, want)| b.labels.get(k) == Some(want))
            }));
            v
        }
    };
    if g.watch {
        let w = super::watch::Watched {
            kind,
            name: g.name,
            selector,
            output: g.output,
        };
        return super::watch::run(w, store, objects);
    }
    let mut out = std::io::stdout().lock();
    match g.output {
        OutputFormat::Json | OutputFormat::Yaml => {
            let v = if g.name.is_some() {
                shown(&objects[0])
            } else {
                list_value(objects.iter().map(shown).collect())
            };
            if g.output == OutputFormat::Json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v).expect("json"))?;
            } else {
                write!(out, "{}", to_yaml(&v))?;
            }
        }
        OutputFormat::Name => {
            for o in &objects {
                writeln!(out, "{}/{}", lower(o.kind), o.name)?;
            }
        }
        OutputFormat::Table | OutputFormat::Wide => {
            let wide = g.output == OutputFormat::Wide;
            if objects.is_empty() {
                eprintln!("No resources found.");
                if let Some(w) = super::daemon_record::no_daemon_warning(
                    &crate::home::LasHome::from_env()?,
                    "read",
                ) {
                    eprintln!("{w}");
                }
                return Ok(());
            }
            let mut first = true;
            for k in Kind::ALL {
                let rows: Vec<Vec<String>> = objects
                    .iter()
                    .filter(|o| o.kind == k)
                    .map(|o| row(o, wide, all))
                    .collect();
                if rows.is_empty() {
                    continue;
                }
                if !first {
                    writeln!(out)?;
                }
                first = false;
                print_table(&mut out, &header(k, wide), &rows)?;
            }
        }
    }
    Ok(())
}
