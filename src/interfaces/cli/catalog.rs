//! `lasctl catalog list|show NAME`: the module catalog (`manifests/`, or `LAS_CATALOG=DIR`) that
//! `Module.spec.from` names, with versions, runtimes and what each needs. Offline; no daemon.

use std::io::Write;

use serde_json::{Value, json};

use super::CliError;
use super::output::{OutputFormat, human_bytes, print_table, to_yaml};
use crate::artifacts::catalog::{Catalog, CatalogModule, GpuNeed, ManifestVersion};

#[derive(Debug, clap::Subcommand)]
pub enum CatalogCommand {
    /// Every module of the catalog: versions, runtime, GPU, memory, ports.
    List {
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// One module: every version with its artifact, needs, ports, dependencies and conflicts.
    Show {
        name: String,
        /// text (default), json or yaml (the manifest as the catalog holds it).
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<OutputFormat>,
    },
}

fn runtime(v: &ManifestVersion) -> &'static str {
    if v.container.is_some() {
        "container"
    } else if v.native.is_some() {
        "native"
    } else {
        "engine"
    }
}

fn gpu(v: &ManifestVersion) -> &'static str {
    match v.requirements.gpu {
        GpuNeed::None => "no",
        GpuNeed::Optional => "optional",
        GpuNeed::Required => "required",
    }
}

fn ports(v: &ManifestVersion) -> String {
    if v.interfaces.is_empty() {
        return "-".into();
    }
    v.interfaces
        .iter()
        .map(|i| {
            let proto = serde_json::to_value(i.protocol)
                .ok()
                .and_then(|p| p.as_str().map(String::from))
                .unwrap_or_default();
            if i.port == 0 {
                format!("{} (chosen)/{proto}", i.name)
            } else {
                format!("{}/{proto}", i.port)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn memory(v: &ManifestVersion) -> String {
    match v.requirements.memory_bytes {
        0 => "-".into(),
        b => human_bytes(b),
    }
}

/// Newest first.
fn versions(m: &CatalogModule) -> Vec<&ManifestVersion> {
    let mut v: Vec<&ManifestVersion> = m.spec.versions.iter().collect();
    v.sort_by(|a, b| b.version.0.cmp(&a.version.0));
    v
}

fn load() -> Result<Catalog, CliError> {
    let loaded = Catalog::from_env()?;
    for r in &loaded.rejected {
        eprintln!("warning: catalog file ignored: {r}");
    }
    Ok(loaded.catalog)
}

pub fn run(c: CatalogCommand) -> Result<(), CliError> {
    match c {
        CatalogCommand::List { output } => list(output),
        CatalogCommand::Show { name, output } => show(&name, output),
    }
}

fn list(output: OutputFormat) -> Result<(), CliError> {
    let catalog = load()?;
    let mut modules: Vec<&CatalogModule> = catalog.modules().collect();
    modules.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = std::io::stdout().lock();
    match output {
        OutputFormat::Json | OutputFormat::Yaml => {
            let items: Vec<Value> = modules.iter().map(|m| manifest_value(m)).collect();
            let v = json!({"kind": "ModuleManifestList", "items": items});
            if output == OutputFormat::Json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v).expect("json"))?;
            } else {
                write!(out, "{}", to_yaml(&v))?;
            }
        }
        OutputFormat::Name => {
            for m in modules {
                writeln!(out, "{}", m.name)?;
            }
        }
        OutputFormat::Table | OutputFormat::Wide => {
            let wide = output == OutputFormat::Wide;
            let mut header = vec![
                "NAME", "LATEST", "VERSIONS", "RUNTIME", "GPU", "MEMORY", "PORTS",
            ];
            if wide {
                header.push("DESCRIPTION");
            }
            let rows: Vec<Vec<String>> = modules
                .iter()
                .map(|m| {
                    let vs = versions(m);
                    // A manifest without versions is refused when the catalog is read.
                    let Some(latest) = vs.first().copied() else {
                        return vec![m.name.clone(), "-".into()];
                    };
                    let mut r = vec![
                        m.name.clone(),
                        latest.version.0.to_string(),
                        vs.len().to_string(),
                        runtime(latest).into(),
                        gpu(latest).into(),
                        memory(latest),
                        ports(latest),
                    ];
                    if wide {
                        r.push(m.spec.description.clone());
                    }
                    r
                })
                .collect();
            if rows.is_empty() {
                eprintln!("The catalog is empty.");
                return Ok(());
            }
            print_table(&mut out, &header, &rows)?;
        }
    }
    Ok(())
}

fn manifest_value(m: &CatalogModule) -> Value {
    json!({
        "apiVersion": crate::api::API_VERSION,
        "kind": "ModuleManifest",
        "metadata": {"name": m.name},
        "spec": m.spec,
    })
}

fn show(name: &str, output: Option<OutputFormat>) -> Result<(), CliError> {
    let catalog = load()?;
    let Some(m) = catalog.get(name) else {
        let mut names: Vec<&str> = catalog.modules().map(|m| m.name.as_str()).collect();
        names.sort();
        return Err(CliError::Usage(format!(
            "no module {name:?} in the catalog; it has: {}",
            names.join(", ")
        )));
    };
    let mut out = std::io::stdout().lock();
    match output {
        Some(OutputFormat::Json) => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&manifest_value(m)).expect("json")
        )?,
        Some(OutputFormat::Yaml) => write!(out, "{}", to_yaml(&manifest_value(m)))?,
        None | Some(OutputFormat::Table) | Some(OutputFormat::Wide) => write!(out, "{}", text(m))?,
        Some(OutputFormat::Name) => writeln!(out, "{}", m.name)?,
    }
    Ok(())
}

fn text(m: &CatalogModule) -> String {
    let mut s = format!(
        "Name:         {}\nDescription:  {}\n",
        m.name, m.spec.description
    );
    if let Some(h) = &m.spec.homepage {
        s += &format!("Homepage:     {h}\n");
    }
    if let Some(l) = &m.spec.license {
        s += &format!("License:      {l}\n");
    }
    s += &format!("Manifest:     {}\n", m.file);
    if let Some(latest) = versions(m).first() {
        s += &format!(
            "Use it:       spec: {{from: {}, version: \"^{}\"}}\n",
            m.name, latest.version.0
        );
    }
    s += "Versions:\n";
    for v in versions(m) {
        let r = &v.requirements;
        s += &format!("  {}  ({})\n", v.version.0, runtime(v));
        s += &format!("    artifact:      {}\n", v.artifact());
        s += &format!("    ports:         {}\n", ports(v));
        s += &format!(
            "    needs:         memory {}, disk {}, GPU {}{}{}{}\n",
            memory(v),
            match r.disk_bytes {
                0 => "-".into(),
                b => human_bytes(b),
            },
            gpu(v),
            r.min_compute_capability
                .as_ref()
                .map(|c| format!(" (compute capability >= {c})"))
                .unwrap_or_default(),
            if r.cpu_features.is_empty() {
                String::new()
            } else {
                format!(", CPU features {}", r.cpu_features.join(" "))
            },
            if r.arch.is_empty() {
                String::new()
            } else {
                format!(", arch {}", r.arch.join("|"))
            }
        );
        if let Some(h) = &v.health {
            s += &format!(
                "    health:        {}\n",
                serde_json::to_string(h).unwrap_or_default()
            );
        }
        if v.model.is_some() {
            s += "    serves:        a Model (spec.model)\n";
        }
        for d in &v.dependencies {
            s += &format!("    depends on:    {} {}\n", d.name, d.version.0);
        }
        for c in &v.conflicts {
            s += &format!(
                "    conflicts:     {} {}: {}\n",
                c.name, c.version.0, c.reason
            );
        }
    }
    s
}
