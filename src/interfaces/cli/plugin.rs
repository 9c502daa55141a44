//! `lasctl plugin list|describe|inventory|test|grants`: the plugins as desired state, their
//! contributions by seam, and a dry run of one contribution.

use std::io::Write;

use serde_json::Value;

use super::CliError;
use super::output::{OutputFormat, print_table, to_yaml};
use super::verbs::open_store;
use crate::api::Kind;
use crate::control::store::StoredObject;
use crate::home::LasHome;

#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Plugins with their version, contributions and activations.
    List,
    /// One Plugin: its manifest, artifacts, conditions and activations.
    Describe { name: String },
    /// Every seam: what it accepts (or why not), what is active, calls, failures, fuel, breakers.
    Inventory {
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Run one contribution of a Ready Plugin once on an input; records nothing.
    Test {
        name: String,
        contribution: String,
        /// A JSON file with the input (e.g. {"request": {...}}), or - for stdin.
        #[arg(long)]
        input: std::path::PathBuf,
        /// The activation config to pass, as JSON.
        #[arg(long, default_value = "null")]
        config: String,
    },
    /// What each activation of a Plugin grants, against what its manifest requests.
    Grants { name: String },
    /// Print the plugin manifest a legacy `<stem>.plugin.json|toml` text-plugin contract maps
    /// to (the executable beside it is hashed when the contract pins none). Reads only FILE.
    Import { file: std::path::PathBuf },
    /// Run a command of a Plugin through the daemon (the activation that enables it); prints
    /// the output's `text`, else its JSON. Recorded as an event on the activation.
    Run {
        plugin: String,
        command: String,
        /// Handed to the command as a JSON array of strings.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
        /// json or yaml: the whole answer (plugin, command, activation, output).
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: OutputFormat,
    },
}

pub fn run(c: PluginCommand) -> Result<(), CliError> {
    if let PluginCommand::Run {
        plugin,
        command,
        args,
        output,
    } = &c
    {
        return super::workflow::run_command(plugin, command, args, *output);
    }
    if let PluginCommand::Import { file } = &c {
        let yaml = crate::control::legacy_plugins::import(file)?;
        print!("{yaml}");
        return Ok(());
    }
    let store = open_store()?;
    let all = store.list(None, &Default::default())?;
    let activations = |plugin: &str| -> Vec<&StoredObject> {
        all.iter()
            .filter(|o| {
                o.kind == Kind::PluginActivation && o.spec["pluginRef"].as_str() == Some(plugin)
            })
            .collect()
    };
    let ready = |o: &StoredObject| {
        o.condition("Ready")
            .map(|(s, r, _)| format!("{} ({r})", s.as_str()))
            .unwrap_or("-".into())
    };
    let mut out = std::io::stdout().lock();
    match c {
        PluginCommand::List => {
            let rows: Vec<Vec<String>> = all
                .iter()
                .filter(|o| o.kind == Kind::Plugin)
                .map(|o| {
                    let m = &o.status["manifest"];
                    vec![
                        o.name.to_string(),
                        ready(o),
                        m["version"].as_str().unwrap_or("-").to_string(),
                        match m["runtime"].as_str() {
                            Some("exec") => "exec (unsandboxed)".to_string(),
                            Some(r) => r.to_string(),
                            None => "-".to_string(),
                        },
                        words(&m["contributions"]),
                        activations(o.name.as_str())
                            .iter()
                            .map(|a| a.name.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                    ]
                })
                .collect();
            if rows.is_empty() {
                eprintln!("No plugins found.");
                return Ok(());
            }
            print_table(
                &mut out,
                &[
                    "NAME",
                    "READY",
                    "VERSION",
                    "RUNTIME",
                    "CONTRIBUTIONS",
                    "ACTIVATIONS",
                ],
                &rows,
            )?;
        }
        PluginCommand::Describe { name } => {
            drop(out);
            super::describe::run(&["plugin".to_string(), name.clone()])?;
            let o = store.get(Kind::Plugin, &name)?;
            let mut out = std::io::stdout().lock();
            let panels = o.status["manifest"]["uiPanels"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !panels.is_empty() {
                writeln!(out, "UI panels (seam uiHost):")?;
                for p in panels {
                    let digest = o.status["artifacts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["name"] == p["artifact"])
                        .and_then(|a| a["digest"].as_str())
                        .unwrap_or("not verified");
                    writeln!(
                        out,
                        "  {}: {:?}, artifact {} (sha256 {digest})",
                        p["id"].as_str().unwrap_or_default(),
                        p["title"].as_str().unwrap_or_default(),
                        p["artifact"].as_str().unwrap_or_default()
                    )?;
                }
            }
            describe_flows(&mut out, &o)?;
            writeln!(out, "Activations:")?;
            grants_table(&mut out, &o, &activations(&name))?;
        }
        PluginCommand::Grants { name } => {
            let o = store.get(Kind::Plugin, &name)?;
            writeln!(
                out,
                "plugin {name} requests: {}",
                words(&o.status["manifest"]["requests"])
            )?;
            grants_table(&mut out, &o, &activations(&name))?;
        }
        PluginCommand::Inventory { output } => {
            let inv = inventory(&all)?;
            match output {
                OutputFormat::Json => {
                    writeln!(out, "{}", serde_json::to_string_pretty(&inv).expect("json"))?
                }
                OutputFormat::Yaml => write!(out, "{}", to_yaml(&inv))?,
                _ => {
                    let mut rows = Vec::new();
                    for s in inv["seams"].as_array().into_iter().flatten() {
                        let active = s["active"].as_array().cloned().unwrap_or_default();
                        let seam = s["seam"].as_str().unwrap_or_default().to_string();
                        if active.is_empty() {
                            rows.push(vec![
                                seam.clone(),
                                words(&s["accepts"]),
                                "-".into(),
                                "-".into(),
                                "-".into(),
                                s["note"].as_str().unwrap_or_default().to_string(),
                            ]);
                        }
                        for a in active {
                            rows.push(vec![
                                seam.clone(),
                                a["point"].as_str().unwrap_or_default().to_string(),
                                format!(
                                    "{}/{}",
                                    a["activation"].as_str().unwrap_or_default(),
                                    a["contribution"].as_str().unwrap_or_default()
                                ),
                                format!("{}/{}", a["calls"], a["failures"]),
                                a["breaker"].as_str().unwrap_or("closed").to_string(),
                                match (a["delivered"].as_u64(), a["dropped"].as_u64()) {
                                    (Some(d), Some(x)) => format!(
                                        "fuel p50 {} p95 {}; delivered {d}, dropped {x}",
                                        a["fuelP50"], a["fuelP95"]
                                    ),
                                    _ => format!("fuel p50 {} p95 {}", a["fuelP50"], a["fuelP95"]),
                                },
                            ]);
                        }
                    }
                    print_table(
                        &mut out,
                        &[
                            "SEAM",
                            "ACCEPTS",
                            "ACTIVE",
                            "CALLS/FAILURES",
                            "BREAKER",
                            "NOTE",
                        ],
                        &rows,
                    )?;
                }
            }
        }
        PluginCommand::Test {
            name,
            contribution,
            input,
            config,
        } => {
            let text = if input.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&input)
                    .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", input.display())))?
            };
            let parse = |what: &str, t: &str| {
                serde_json::from_str::<Value>(t)
                    .map_err(|e| CliError::Usage(format!("{what} is not JSON: {e}")))
            };
            let plugin = store.get(Kind::Plugin, &name)?;
            let home = LasHome::from_env()?;
            let r = crate::control::plugins::test_contribution(
                &home,
                &plugin,
                &contribution,
                parse("--input", &text)?,
                parse("--config", &config)?,
                &crate::sandbox::WasmiEngine::new(),
            )
            .map_err(CliError::Usage)?;
            writeln!(out, "{}", serde_json::to_string_pretty(&r).expect("json"))?;
        }
        PluginCommand::Import { .. } | PluginCommand::Run { .. } => unreachable!("handled above"),
    }
    Ok(())
}

/// Commands, custom nodes and workflows of a Ready Plugin's verified manifest.
fn describe_flows(out: &mut impl Write, plugin: &StoredObject) -> Result<(), CliError> {
    let Some(m) = plugin.status["digest"].as_str().and_then(|d| {
        crate::control::plugins::read_manifest_blob(
            &LasHome::from_env().ok()?,
            d,
            plugin.name.as_str(),
        )
    }) else {
        return Ok(());
    };
    let c = &m.spec.contributes;
    if !m.spec.network_requests.is_empty() {
        writeln!(
            out,
            "Network requests: {}",
            m.spec.network_requests.join(", ")
        )?;
    }
    if !c.commands.is_empty() {
        writeln!(out, "Commands:")?;
        for x in &c.commands {
            writeln!(
                out,
                "  {} ({}){}",
                x.id,
                x.entry,
                x.title
                    .as_ref()
                    .map(|t| format!(": {t}"))
                    .unwrap_or_default()
            )?;
        }
    }
    if !c.custom_nodes.is_empty() {
        writeln!(out, "Custom nodes:")?;
        for n in &c.custom_nodes {
            writeln!(out, "  {} ({})", n.id, n.entry)?;
        }
    }
    if !c.workflows.is_empty() {
        writeln!(out, "Workflows:")?;
        for w in &c.workflows {
            let nodes: Vec<String> = crate::control::workflows::order(w)
                .iter()
                .map(|n| format!("{}:{}", n.id, n.type_))
                .collect();
            writeln!(
                out,
                "  {}: {} (output {}){}",
                w.id,
                nodes.join(" → "),
                w.output,
                w.description
                    .as_ref()
                    .map(|d| format!(" — {d}"))
                    .unwrap_or_default()
            )?;
        }
    }
    Ok(())
}

fn grants_table(
    out: &mut impl Write,
    plugin: &StoredObject,
    acts: &[&StoredObject],
) -> Result<(), CliError> {
    if acts.is_empty() {
        writeln!(out, "  <none>")?;
        return Ok(());
    }
    let digest = plugin.status["digest"].as_str().unwrap_or_default();
    let rows: Vec<Vec<String>> = acts
        .iter()
        .map(|a| {
            let bound = a.status["boundDigest"].as_str().unwrap_or("-");
            vec![
                format!("  {}", a.name),
                words(&a.spec["contributions"]),
                words(&a.spec["grants"]),
                words(&a.status["effectiveGrants"]),
                words(&a.status["ungrantedRequests"]),
                if bound == digest {
                    "current".to_string()
                } else {
                    bound.chars().take(12).collect()
                },
                a.condition("Granted")
                    .map(|(s, r, _)| format!("{} ({r})", s.as_str()))
                    .unwrap_or("-".into()),
            ]
        })
        .collect();
    print_table(
        out,
        &[
            "  ACTIVATION",
            "CONTRIBUTIONS",
            "GRANTS",
            "EFFECTIVE",
            "UNGRANTED",
            "BOUND",
            "GRANTED",
        ],
        &rows,
    )?;
    Ok(())
}

fn words(v: &Value) -> String {
    v.as_array()
        .filter(|a| !a.is_empty())
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or("-".into())
}

/// From the daemon (with call statistics) when one serves this home; else from the store.
fn inventory(all: &[StoredObject]) -> Result<Value, CliError> {
    let home = LasHome::from_env()?;
    if let Ok(client) = crate::interfaces::http::client::DaemonClient::from_env(&home) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        if let Ok(b) = rt.block_on(client.get_bytes("/api/v1/plugins/inventory"))
            && let Ok(v) = serde_json::from_slice(&b)
        {
            return Ok(v);
        }
    }
    let host = crate::control::plugins::PluginHost::new(
        home,
        std::sync::Arc::new(crate::sandbox::WasmiEngine::new()),
    );
    let active = host.build(all);
    Ok(crate::control::plugins::inventory(
        all,
        &active,
        &host.stats(),
    ))
}
