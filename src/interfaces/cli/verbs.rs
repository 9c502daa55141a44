//! One function per verb.

use std::collections::BTreeMap;
use std::io::Write;

use std::process::ExitCode;

use clap::CommandFactory;
use serde_json::{Value, json};

use super::output::{OutputFormat, age, human_bytes, list_value, print_table, to_yaml};
use super::{ApplyArgs, CliError, Command, DeleteArgs, FileArgs, GetArgs, parse_selector};
use crate::api::schema::explain;
use crate::api::{API_VERSION, Desired, Kind};
use crate::control::apply::{ApplyOptions, apply_paths};
use crate::control::store::{Outcome, Store, StoredObject};
use crate::home::LasHome;

pub fn dispatch(cmd: Command) -> Result<ExitCode, CliError> {
    let ok = Ok(ExitCode::SUCCESS);
    match cmd {
        Command::Apply(a) => apply(a).and(ok),
        Command::Get(g) if super::sources::is_sources(&g.kind) => super::sources::run(g).and(ok),
        Command::Get(g) => get(g).and(ok),
        Command::Describe { kind, name } => describe(&kind, &name).and(ok),
        Command::Diff(f) => diff(f),
        Command::Delete(d) => delete(d).and(ok),
        Command::Explain { path, recursive } => {
            print!("{}", explain(&path, recursive)?);
            ok
        }
        Command::History { output } => history(output).and(ok),
        Command::Rollback {
            generation,
            suspend_source,
        } => rollback(generation, suspend_source).and(ok),
        Command::Resume(r) => super::resume::run(r).and(ok),
        Command::Plan(p) => super::plan::run(p),
        Command::Hardware(h) => super::hardware::run(h).and(ok),
        Command::Engine(e) => super::engine::run(e),
        Command::LogWriter { max_bytes, path } => {
            crate::runtime::logwriter::run(&path, max_bytes, std::io::stdin().lock())?;
            ok
        }
        Command::Model(m) => super::model::run(m).and(ok),
        Command::Events {
            object,
            limit,
            watch: true,
        } => super::events::watch(object.as_deref(), limit).and(ok),
        Command::Events { object, limit, .. } => events(object.as_deref(), limit).and(ok),
        Command::Wait(a) => super::wait::run(a).and(ok),
        Command::Daemon(a) => super::daemon::run(a).and(ok),
        Command::Logs(a) => super::logs::run(a).and(ok),
        Command::Ui => super::ui::run().and(ok),
        Command::Version => {
            println!(
                "lasctl {} (apiVersion {API_VERSION}, built-in engine: {})",
                env!("CARGO_PKG_VERSION"),
                if cfg!(feature = "llama") {
                    "llama"
                } else {
                    "none"
                }
            );
            ok
        }
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut super::Cli::command(),
                "lasctl",
                &mut std::io::stdout(),
            );
            ok
        }
    }
}

pub(crate) fn open_store() -> Result<Store, CliError> {
    let home = LasHome::from_env()?;
    home.ensure()?;
    super::lock::check_same_db(&home)?;
    Ok(Store::open(&home.state_db())?)
}

pub(crate) fn load(files: &FileArgs) -> Result<Vec<(Desired, String)>, CliError> {
    Ok(crate::control::apply::load(&files.paths, files.recursive)?)
}

fn lower(k: Kind) -> String {
    k.as_str().to_lowercase()
}

fn print_outcome(o: &Outcome, dry_run: bool, output: Option<OutputFormat>) -> Result<(), CliError> {
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

fn apply(a: ApplyArgs) -> Result<(), CliError> {
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
    if a.dry_run && a.output.is_none() {
        let objects: Vec<Desired> = load(&a.files)?.into_iter().map(|(d, _)| d).collect();
        let p = super::plan::compute(&a.files, &objects, false, false)?;
        print!("\nPlan:\n{}", p.to_text());
    }
    Ok(())
}

fn parse_kind(s: &str) -> Result<Kind, CliError> {
    Kind::parse_loose(s).ok_or_else(|| {
        CliError::Usage(format!(
            "unknown kind {s:?}: known kinds are {} (singular, plural or lower case), or all",
            Kind::known_list()
        ))
    })
}

fn ready(o: &StoredObject) -> (String, String) {
    match o.condition("Ready") {
        Some((s, reason, _)) => (s.as_str().to_string(), reason),
        None if o.deleted_at.is_some() => ("False".into(), "Deleting".into()),
        None => ("-".into(), String::new()),
    }
}

fn row(o: &StoredObject, wide: bool, prefix_kind: bool) -> Vec<String> {
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
            r.push(
                o.status
                    .get("sizeBytes")
                    .and_then(Value::as_u64)
                    .map(human_bytes)
                    .unwrap_or_else(|| "-".into()),
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
            r.push(age(&o.created_at));
            if wide {
                r.push(o.spec["priority"].to_string());
            }
        }
    }
    r
}

fn header(kind: Kind, wide: bool) -> Vec<&'static str> {
    let mut h = match kind {
        Kind::Model => vec!["NAME", "READY", "SIZE", "AGE"],
        Kind::Module => vec!["NAME", "READY", "RUNTIME", "ENDPOINT", "RESTARTS", "AGE"],
        Kind::Policy => vec!["NAME", "READY", "TIERS", "AGE"],
    };
    if wide {
        h.extend(match kind {
            Kind::Model => vec!["REASON", "SOURCE", "DIGEST"],
            Kind::Module => vec!["REASON", "GENERATION", "OBSERVED"],
            Kind::Policy => vec!["PRIORITY"],
        });
    }
    h
}

fn get(g: GetArgs) -> Result<(), CliError> {
    let all = g.kind.eq_ignore_ascii_case("all");
    let kind = if all {
        None
    } else {
        Some(parse_kind(&g.kind)?)
    };
    if all && g.name.is_some() {
        return Err(CliError::Usage("get all takes no NAME".into()));
    }
    let store = open_store()?;
    let selector = parse_selector(g.selector.as_deref())?;
    let objects = match (kind, &g.name) {
        (Some(k), Some(n)) => vec![store.get(k, n)?],
        _ => store.list(kind, &selector)?,
    };
    let mut out = std::io::stdout().lock();
    match g.output {
        OutputFormat::Json | OutputFormat::Yaml => {
            let v = if g.name.is_some() {
                objects[0].to_json()
            } else {
                list_value(objects.iter().map(StoredObject::to_json).collect())
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

fn describe(kind: &str, name: &str) -> Result<(), CliError> {
    let kind = parse_kind(kind)?;
    let store = open_store()?;
    let o = store.get(kind, name)?;
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

/// The part of an object a user writes, for diffs.
fn user_view(
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

fn diff(f: FileArgs) -> Result<ExitCode, CliError> {
    let objects = load(&f)?;
    let store = open_store()?;
    let mut out = std::io::stdout().lock();
    let mut changed = false;
    for (d, _) in &objects {
        let new = user_view(
            d.name.as_str(),
            &d.labels,
            &d.annotations,
            &d.spec.to_json(),
        );
        let old = match store.get(d.kind(), d.name.as_str()) {
            Ok(o) => user_view(o.name.as_str(), &o.labels, &o.annotations, &o.spec),
            Err(crate::control::store::StoreError::NotFound { .. }) => String::new(),
            Err(e) => return Err(e.into()),
        };
        if old != new {
            changed = true;
            let id = format!("{}/{}", d.kind(), d.name);
            let text = similar::TextDiff::from_lines(&old, &new)
                .unified_diff()
                .context_radius(3)
                .header(&format!("live/{id}"), &format!("desired/{id}"))
                .to_string();
            write!(out, "{text}")?;
        }
    }
    Ok(if changed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn delete(d: DeleteArgs) -> Result<(), CliError> {
    let refs: Vec<(Kind, String)> = if !d.paths.is_empty() {
        if !d.args.is_empty() {
            return Err(CliError::Usage(
                "give either -f PATH or KIND NAME..., not both".into(),
            ));
        }
        load(&FileArgs {
            paths: d.paths.clone(),
            recursive: d.recursive,
        })?
        .into_iter()
        .map(|(o, _)| (o.kind(), o.name.to_string()))
        .collect()
    } else {
        let (kind, names) = d
            .args
            .split_first()
            .ok_or_else(|| CliError::Usage("delete needs -f PATH or KIND NAME...".into()))?;
        let (kind, names): (Kind, Vec<String>) = match kind.split_once('/') {
            Some((k, n)) => (
                parse_kind(k)?,
                std::iter::once(n.to_string())
                    .chain(names.iter().cloned())
                    .collect(),
            ),
            None => (parse_kind(kind)?, names.to_vec()),
        };
        if names.is_empty() {
            return Err(CliError::Usage(
                "delete KIND needs at least one NAME".into(),
            ));
        }
        names.into_iter().map(|n| (kind, n)).collect()
    };
    let description = format!(
        "delete {}",
        refs.iter()
            .map(|(k, n)| format!("{}/{n}", lower(*k)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut store = open_store()?;
    let outcome = store.delete(&refs, &description)?;
    print_outcome(&outcome, false, None)
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

fn rollback(generation: Option<u64>, suspend_source: bool) -> Result<(), CliError> {
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

fn events(object: Option<&str>, limit: usize) -> Result<(), CliError> {
    let store = open_store()?;
    let obj = match object {
        Some(s) => {
            let (k, n) = s
                .split_once('/')
                .ok_or_else(|| CliError::Usage(format!("{s:?} is not of the form KIND/NAME")))?;
            Some((parse_kind(k)?, n.to_string()))
        }
        None => None,
    };
    let ev = store.events(
        obj.as_ref().map(|(k, n)| (k.as_str(), n.as_str())),
        0,
        limit,
    )?;
    let rows: Vec<Vec<String>> = ev
        .iter()
        .map(|e| {
            vec![
                super::events::seen(e),
                format!("{:?}", e.type_),
                e.reason.clone(),
                format!("{}/{}", e.kind.to_lowercase(), e.name),
                e.message.clone(),
            ]
        })
        .collect();
    print_table(
        &mut std::io::stdout().lock(),
        &["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        &rows,
    )?;
    Ok(())
}
