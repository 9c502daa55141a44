//! `lasctl workflow list|run|runs|get` and `lasctl plugin run PLUGIN COMMAND [ARGS...]`: thin
//! clients of the daemon's workflow and command routes (`interfaces/http/workflows.rs`).

use std::io::Write;

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::CliError;
use super::output::{OutputFormat, print_table, to_yaml};
use crate::home::LasHome;
use crate::interfaces::http::client::{ClientError, DaemonClient};

#[derive(Debug, clap::Subcommand)]
pub enum WorkflowCommand {
    /// The workflows of Ready activations, with their nodes in run order.
    List {
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Run a workflow and print its outcome (exit 1 when the run fails).
    Run {
        name: String,
        /// A JSON file with the workflow's input (an object), or - for stdin; default {}.
        #[arg(long)]
        input: Option<std::path::PathBuf>,
        /// Print the run id and return at once; `lasctl workflow get RUN` shows its progress.
        #[arg(long)]
        no_wait: bool,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Recorded runs, newest first (of one workflow, or all).
    Runs {
        name: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// One run: its state, and each node's state, timing, output and error.
    Get {
        run: String,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: OutputFormat,
    },
}

/// One request to the daemon; the JSON answer of a 2xx, else an error with its message.
fn call(method: Method, path: &str, body: Option<Value>) -> Result<(StatusCode, Value), CliError> {
    let home = LasHome::from_env()?;
    let client = DaemonClient::from_env(&home)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let bytes = body
            .map(|b| Bytes::from(serde_json::to_vec(&b).expect("json")))
            .unwrap_or_default();
        let (status, mut s) = client
            .send(method, path, &[("content-type", "application/json")], bytes)
            .await?;
        let mut buf = Vec::new();
        while let Some(chunk) = s.next().await {
            buf.extend_from_slice(&chunk?);
        }
        let v: Value = serde_json::from_slice(&buf)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&buf).into_owned()));
        if !status.is_success() {
            let message = v["message"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| v.to_string());
            return Err(CliError::Client(ClientError::Status { status, message }));
        }
        Ok((status, v))
    })
}

fn print_value(out: &mut impl Write, v: &Value, format: OutputFormat) -> Result<bool, CliError> {
    match format {
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(v).expect("json"))?,
        OutputFormat::Yaml => write!(out, "{}", to_yaml(v))?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// `output.text` as text when it is a string, else the JSON.
fn text_or_json(v: &Value) -> String {
    match v.get("text") {
        Some(Value::String(s)) => s.clone(),
        _ => serde_json::to_string_pretty(v).expect("json"),
    }
}

/// `lasctl plugin run PLUGIN COMMAND [ARGS...]`.
pub fn run_command(
    plugin: &str,
    command: &str,
    args: &[String],
    output: OutputFormat,
) -> Result<(), CliError> {
    let (_, v) = call(
        Method::POST,
        &format!("/api/v1/plugins/{plugin}/commands/{command}"),
        Some(json!({ "args": args })),
    )?;
    let mut out = std::io::stdout().lock();
    if !print_value(&mut out, &v, output)? {
        writeln!(out, "{}", text_or_json(&v["output"]))?;
    }
    Ok(())
}

pub fn run(c: WorkflowCommand) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match c {
        WorkflowCommand::List { output } => {
            let (_, v) = call(Method::GET, "/api/v1/workflows", None)?;
            if print_value(&mut out, &v, output)? {
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|w| {
                    vec![
                        w["name"].as_str().unwrap_or_default().to_string(),
                        w["plugin"].as_str().unwrap_or_default().to_string(),
                        w["activation"].as_str().unwrap_or_default().to_string(),
                        w["nodes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|n| {
                                format!(
                                    "{}:{}",
                                    n["id"].as_str().unwrap_or(""),
                                    n["type"].as_str().unwrap_or("")
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(" → "),
                        w["description"].as_str().unwrap_or("-").to_string(),
                    ]
                })
                .collect();
            if rows.is_empty() {
                eprintln!("No active workflows.");
                return Ok(());
            }
            print_table(
                &mut out,
                &["NAME", "PLUGIN", "ACTIVATION", "NODES", "DESCRIPTION"],
                &rows,
            )?;
        }
        WorkflowCommand::Run {
            name,
            input,
            no_wait,
            output,
        } => {
            let input: Value = match input {
                None => json!({}),
                Some(p) => {
                    let text = if p.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin())?
                    } else {
                        std::fs::read_to_string(&p).map_err(|e| {
                            CliError::Usage(format!("cannot read {}: {e}", p.display()))
                        })?
                    };
                    serde_json::from_str(&text).map_err(|e| {
                        CliError::Usage(format!("--input {}: not JSON: {e}", p.display()))
                    })?
                }
            };
            if !input.is_object() {
                return Err(CliError::Usage(
                    "--input: the workflow input must be a JSON object".into(),
                ));
            }
            let path = format!(
                "/api/v1/workflows/{name}/runs{}",
                if no_wait { "?wait=false" } else { "" }
            );
            let (_, v) = call(Method::POST, &path, Some(json!({ "input": input })))?;
            if !print_value(&mut out, &v, output)? {
                if no_wait {
                    writeln!(out, "{}", v["id"].as_str().unwrap_or_default())?;
                    return Ok(());
                }
                describe_run(&mut out, &v)?;
            }
            if v["state"] == "Failed" {
                return Err(CliError::Failed(format!(
                    "workflow {name} run {} failed: {}",
                    v["id"].as_str().unwrap_or_default(),
                    v["error"].as_str().unwrap_or_default()
                )));
            }
        }
        WorkflowCommand::Runs {
            name,
            limit,
            output,
        } => {
            let path = match &name {
                Some(n) => format!("/api/v1/workflows/{n}/runs?limit={limit}"),
                None => format!("/api/v1/workflow-runs?limit={limit}"),
            };
            let (_, v) = call(Method::GET, &path, None)?;
            if print_value(&mut out, &v, output)? {
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    vec![
                        r["id"].as_str().unwrap_or_default().to_string(),
                        r["workflow"].as_str().unwrap_or_default().to_string(),
                        r["state"].as_str().unwrap_or_default().to_string(),
                        r["createdAt"].as_str().unwrap_or_default().to_string(),
                        r["durationMs"]
                            .as_u64()
                            .map(|d| format!("{d}ms"))
                            .unwrap_or("-".into()),
                        r["error"].as_str().unwrap_or("-").to_string(),
                    ]
                })
                .collect();
            if rows.is_empty() {
                eprintln!("No workflow runs.");
                return Ok(());
            }
            print_table(
                &mut out,
                &["RUN", "WORKFLOW", "STATE", "CREATED", "DURATION", "ERROR"],
                &rows,
            )?;
        }
        WorkflowCommand::Get { run, output } => {
            let (_, v) = call(Method::GET, &format!("/api/v1/workflow-runs/{run}"), None)?;
            if !print_value(&mut out, &v, output)? {
                describe_run(&mut out, &v)?;
            }
        }
    }
    Ok(())
}

fn describe_run(out: &mut impl Write, v: &Value) -> Result<(), CliError> {
    writeln!(
        out,
        "run {} of workflow {} ({}): {}{}",
        v["id"].as_str().unwrap_or_default(),
        v["workflow"].as_str().unwrap_or_default(),
        v["activation"].as_str().unwrap_or_default(),
        v["state"].as_str().unwrap_or_default(),
        v["durationMs"]
            .as_u64()
            .map(|d| format!(" in {d} ms"))
            .unwrap_or_default()
    )?;
    let rows: Vec<Vec<String>> = v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            vec![
                format!("  {}", n["id"].as_str().unwrap_or_default()),
                n["type"].as_str().unwrap_or_default().to_string(),
                n["state"].as_str().unwrap_or_default().to_string(),
                n["durationMs"]
                    .as_u64()
                    .map(|d| format!("{d}ms"))
                    .unwrap_or("-".into()),
                n["error"].as_str().unwrap_or("-").to_string(),
            ]
        })
        .collect();
    print_table(
        out,
        &["  NODE", "TYPE", "STATE", "DURATION", "ERROR"],
        &rows,
    )?;
    if let Some(e) = v["error"].as_str() {
        writeln!(out, "error: {e}")?;
    }
    if let Some(o) = v.get("output").filter(|o| !o.is_null()) {
        writeln!(out, "output:\n{}", text_or_json(o))?;
    }
    Ok(())
}
