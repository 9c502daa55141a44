//! `lasctl ps`: what runs now, like `docker ps` / `ollama ps`, from the daemon's `/api/v1/ps`.

use std::io::Write;

use serde_json::Value;

use super::CliError;
use super::daemon_record::{home_origin, serving};
use super::output::{OutputFormat, human_bytes, print_table, to_yaml};
use crate::home::LasHome;
use crate::interfaces::http::client::DaemonClient;

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// table, wide, json or yaml.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: OutputFormat,
}

/// Says there is no daemon for `home` in words a user can act on.
pub(crate) fn no_daemon(home: &LasHome, verb: &str) -> CliError {
    CliError::Usage(format!(
        "no daemon serves {} ({}), so {verb}: start one with `lasctl daemon --watch DIR` \
         (or `make run`), or point LAS_HOME at the home of a running daemon",
        home.root().display(),
        home_origin()
    ))
}

fn uptime(started: Option<&str>) -> String {
    let Some(t) = started.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()) else {
        return "-".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub fn run(a: PsArgs) -> Result<(), CliError> {
    if !matches!(
        a.output,
        OutputFormat::Table | OutputFormat::Wide | OutputFormat::Json | OutputFormat::Yaml
    ) {
        return Err(CliError::Usage(
            "ps prints -o table, wide, json or yaml".into(),
        ));
    }
    let home = LasHome::from_env()?;
    if std::env::var_os("LAS_LISTEN").is_none() && !serving(&home).is_running() {
        return Err(no_daemon(&home, "nothing runs from it"));
    }
    let client = DaemonClient::from_env(&home)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let body = rt.block_on(client.get_bytes("/api/v1/ps"))?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| CliError::Usage(format!("the daemon's /api/v1/ps is not JSON: {e}")))?;
    let mut out = std::io::stdout().lock();
    match a.output {
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&v).expect("json"))?,
        OutputFormat::Yaml => write!(out, "{}", to_yaml(&v))?,
        _ => {
            let items = v["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                eprintln!("Nothing runs.");
                return Ok(());
            }
            let wide = a.output == OutputFormat::Wide;
            let mut header = vec![
                "NAME",
                "RUNTIME",
                "PID/CONTAINER",
                "ENDPOINT",
                "UPTIME",
                "MEMORY",
                "VRAM",
                "REQUESTS",
            ];
            if wide {
                header.extend(["STATE", "RESTARTS"]);
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|w| {
                    let s = |k: &str| w[k].as_str().map(str::to_string);
                    let bytes = |k: &str| w[k].as_u64().map(human_bytes).unwrap_or("-".into());
                    let mut name = s("module").unwrap_or_default();
                    if w["slot"].as_u64().unwrap_or(0) != 0 {
                        name.push_str(&format!("@{}", w["slot"]));
                    }
                    let mut r = vec![
                        name,
                        s("runtime").unwrap_or("-".into()),
                        w["pid"]
                            .as_u64()
                            .map(|p| p.to_string())
                            .or_else(|| s("containerId").map(|c| c.chars().take(12).collect()))
                            .unwrap_or("-".into()),
                        s("endpoint").unwrap_or("-".into()),
                        uptime(w["startedAt"].as_str()),
                        bytes("memoryBytes"),
                        bytes("vramBytes"),
                        w["requests"].as_u64().unwrap_or(0).to_string(),
                    ];
                    if wide {
                        r.push(s("state").unwrap_or("-".into()));
                        r.push(w["restarts"].as_u64().unwrap_or(0).to_string());
                    }
                    r
                })
                .collect();
            print_table(&mut out, &header, &rows)?;
        }
    }
    Ok(())
}
