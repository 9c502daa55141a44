//! `lasctl status` (alias `doctor`): the first thing to run when something is off — which home
//! and why, whether a daemon serves it, Docker, GPUs, free disk, the tier and why, and everything
//! that needs attention (Stalled or not Ready objects, failing watched directories).
//!
//! Works without a daemon and without a state database; it records nothing.
//!
//! # Exit codes
//! - 0: a daemon serves the home and nothing needs attention.
//! - 1: something needs attention (listed under "Attention"): no daemon, a Stalled or not Ready
//!   object, a failing watched directory, or an unreachable Docker engine while a container
//!   Module is declared.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::CliError;
use super::daemon_record::{Serving, home_origin, serving};
use super::output::{OutputFormat, human_bytes};
use crate::api::{ConditionStatus, Kind};
use crate::control::hardware::{HardwareProfile, probe_from_env};
use crate::control::policy::select_tier;
use crate::control::store::Store;
use crate::home::LasHome;
use crate::interfaces::http::client::DaemonClient;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// text (default), json or yaml.
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<OutputFormat>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    home: String,
    home_from: String,
    daemon: DaemonState,
    docker: DockerState,
    gpus: Vec<String>,
    gpu_notes: Vec<String>,
    disk_free_bytes: Option<u64>,
    tier: Option<String>,
    tier_reason: Option<String>,
    attention: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct DaemonState {
    running: bool,
    pid: Option<u32>,
    version: Option<String>,
    listen: Option<String>,
    socket: Option<String>,
    uptime_seconds: Option<u64>,
    note: Option<String>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct DockerState {
    reachable: bool,
    version: Option<String>,
    error: Option<String>,
    /// Who answered: `daemon` (the daemon's view) or `direct` (asked from here).
    asked: String,
}

fn daemon_state(home: &LasHome) -> DaemonState {
    match serving(home) {
        Serving::Running(r) => DaemonState {
            running: true,
            pid: Some(r.pid),
            uptime_seconds: Some(r.uptime_seconds()),
            version: Some(r.version),
            listen: Some(r.listen),
            socket: Some(r.socket.display().to_string()),
            note: None,
        },
        Serving::Starting { pid } => DaemonState {
            running: true,
            pid: pid.and_then(|p| u32::try_from(p).ok()),
            note: Some("starting (it holds the lock and has not recorded where it listens yet)".into()),
            ..Default::default()
        },
        Serving::None { stale } => DaemonState {
            note: stale.map(|r| {
                format!(
                    "a daemon (pid {}) recorded itself at {} and is gone (killed?); its record is stale",
                    r.pid, r.started
                )
            }),
            ..Default::default()
        },
    }
}

fn docker_state(home: &LasHome, daemon_running: bool) -> DockerState {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return DockerState {
                error: Some(e.to_string()),
                asked: "direct".into(),
                ..Default::default()
            };
        }
    };
    if daemon_running
        && let Ok(client) = DaemonClient::from_env(home)
        && let Ok(body) = rt.block_on(client.get_bytes("/api/v1/backends"))
        && let Ok(v) = serde_json::from_slice::<Value>(&body)
    {
        return DockerState {
            reachable: v["docker"]["reachable"].as_bool().unwrap_or(false),
            version: v["docker"]["version"].as_str().map(String::from),
            error: v["docker"]["error"].as_str().map(String::from),
            asked: "daemon".into(),
        };
    }
    let cfg = crate::runtime::docker::DockerConfig {
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let probed = rt.block_on(async {
        let d = crate::runtime::docker::DockerRuntime::connect(cfg).await?;
        d.engine_version().await
    });
    match probed {
        Ok(v) => DockerState {
            reachable: true,
            version: Some(v),
            error: None,
            asked: "direct".into(),
        },
        Err(e) => DockerState {
            reachable: false,
            version: None,
            error: Some(e.to_string()),
            asked: "direct".into(),
        },
    }
}

fn disk_free(home: &LasHome) -> Option<u64> {
    // The home may not exist yet: measure the nearest directory that does.
    let mut dir = home.root().to_path_buf();
    while !dir.exists() {
        dir = dir.parent()?.to_path_buf();
    }
    let st = nix::sys::statvfs::statvfs(&dir).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Objects and sources that need attention, and whether a container Module is declared.
fn attention(store: &Store) -> Result<(Vec<String>, bool), CliError> {
    let mut out = Vec::new();
    let mut containers = false;
    for o in store.list(None, &Default::default())? {
        let id = format!("{}/{}", o.kind.as_str().to_lowercase(), o.name);
        if o.kind == Kind::Module
            && (o.spec.get("container").is_some()
                || o.status.get("runtime").and_then(Value::as_str) == Some("container"))
        {
            containers = true;
        }
        if o.kind == Kind::Policy {
            continue;
        }
        if o.deleted_at.is_some() {
            out.push(format!("{id}: being deleted"));
            continue;
        }
        if o.spec.get("suspend").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some((ConditionStatus::True, reason, message)) = o.condition("Stalled") {
            out.push(format!("{id}: Stalled ({reason}): {message}"));
            continue;
        }
        match o.condition("Ready") {
            Some((ConditionStatus::True, _, _)) => {}
            Some((_, reason, message)) => {
                out.push(format!("{id}: not Ready ({reason}): {message}"))
            }
            None => out.push(format!("{id}: not reconciled yet")),
        }
    }
    for (key, v) in store.records_with_prefix(super::sources::PREFIX)? {
        if let Some(e) = v
            .get("error")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
        {
            let path = v
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or(&key[super::sources::PREFIX.len()..])
                .to_string();
            out.push(format!("source {path}: {e}"));
        }
    }
    Ok((out, containers))
}

fn tier(store: Option<&Store>, profile: &HardwareProfile) -> Result<(String, String), CliError> {
    let policies = match store {
        Some(s) => super::hardware::policies(s, &[])?,
        None => crate::control::policy::default_policies()?,
    };
    let t = select_tier(&policies, profile)?;
    Ok((format!("{}/{}", t.policy, t.tier), t.reason))
}

pub fn run(a: StatusArgs) -> Result<ExitCode, CliError> {
    let home = LasHome::from_env()?;
    let mut r = Report {
        home: home.root().display().to_string(),
        home_from: home_origin().into(),
        daemon: daemon_state(&home),
        ..Default::default()
    };
    r.docker = docker_state(&home, r.daemon.running);
    if !r.daemon.running {
        r.attention.push(format!(
            "no daemon serves this home: start one with `lasctl daemon --watch DIR` (or `make run`){}",
            r.daemon
                .note
                .as_ref()
                .map(|n| format!("; {n}"))
                .unwrap_or_default()
        ));
    }
    // Reads only: a home without a database stays without one.
    let mut store = if home.state_db().exists() {
        Some(Store::open(&home.state_db())?)
    } else {
        None
    };
    let mut profile = probe_from_env().probe()?;
    // The tier as `lasctl hardware` chooses it: with the plugin probes' facts (cache not written).
    if let Some(s) = store.as_mut() {
        crate::control::probes::augment_from_store(s, &mut profile, false);
    }
    let store = store;
    for g in &profile.gpus {
        let vendor = format!("{:?}", g.vendor).to_lowercase();
        r.gpus.push(format!(
            "{vendor} #{}: {} ({} total, {} free)",
            g.index,
            g.name,
            human_bytes(g.memory_total_bytes),
            human_bytes(g.memory_free_bytes)
        ));
    }
    r.gpu_notes = profile.notes.clone();
    r.disk_free_bytes = disk_free(&home);
    match tier(store.as_ref(), &profile) {
        Ok((t, why)) => {
            r.tier = Some(t);
            r.tier_reason = Some(why);
        }
        Err(e) => r.attention.push(format!("no policy tier applies: {e}")),
    }
    if let Some(s) = &store {
        let (objects, containers) = attention(s)?;
        r.attention.extend(objects);
        if containers && !r.docker.reachable {
            r.attention.push(format!(
                "a container Module is declared but Docker is not reachable: {}",
                r.docker.error.as_deref().unwrap_or("no answer")
            ));
        }
    }
    let mut out = std::io::stdout().lock();
    match a.output {
        Some(OutputFormat::Json) => {
            writeln!(out, "{}", serde_json::to_string_pretty(&r).expect("json"))?
        }
        Some(OutputFormat::Yaml) => write!(
            out,
            "{}",
            super::output::to_yaml(&serde_json::to_value(&r).expect("json"))
        )?,
        None | Some(OutputFormat::Table) | Some(OutputFormat::Wide) => {
            write!(out, "{}", text(&r, store.is_some()))?
        }
        Some(OutputFormat::Name) => {
            return Err(CliError::Usage(
                "status prints text, -o json or -o yaml".into(),
            ));
        }
    }
    Ok(if r.attention.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn text(r: &Report, has_db: bool) -> String {
    let mut s = String::new();
    s += &format!("Home:       {} ({})\n", r.home, r.home_from);
    if !has_db {
        s += "            no state yet: nothing was ever applied here\n";
    }
    let d = &r.daemon;
    s += &match (d.running, d.pid) {
        (true, Some(pid)) if d.listen.is_some() => format!(
            "Daemon:     running, pid {pid}, version {}, API http://{} and {}, up {}\n",
            d.version.as_deref().unwrap_or("?"),
            d.listen.as_deref().unwrap_or("?"),
            d.socket.as_deref().unwrap_or("?"),
            uptime(d.uptime_seconds.unwrap_or(0))
        ),
        (true, pid) => format!(
            "Daemon:     {} (pid {})\n",
            d.note.as_deref().unwrap_or("running"),
            pid.map(|p| p.to_string()).unwrap_or("?".into())
        ),
        (false, _) => "Daemon:     not running for this home\n".to_string(),
    };
    s += &if r.docker.reachable {
        format!(
            "Docker:     reachable{}{}\n",
            r.docker
                .version
                .as_ref()
                .map(|v| format!(", version {v}"))
                .unwrap_or_default(),
            if r.docker.asked == "daemon" {
                " (as the daemon sees it)"
            } else {
                ""
            }
        )
    } else {
        format!(
            "Docker:     not reachable: {}\n",
            r.docker.error.as_deref().unwrap_or("no answer")
        )
    };
    if r.gpus.is_empty() {
        s += &format!(
            "GPU:        none seen{}\n",
            if r.gpu_notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.gpu_notes.join("; "))
            }
        );
    } else {
        for (i, g) in r.gpus.iter().enumerate() {
            s += &format!(
                "{}{g}\n",
                if i == 0 {
                    "GPU:        "
                } else {
                    "            "
                }
            );
        }
    }
    s += &format!(
        "Disk:       {} free under the home\n",
        r.disk_free_bytes
            .map(human_bytes)
            .unwrap_or("unknown".into())
    );
    s += &format!(
        "Tier:       {}{}\n",
        r.tier.as_deref().unwrap_or("none"),
        r.tier_reason
            .as_ref()
            .map(|w| format!(" — {w}"))
            .unwrap_or_default()
    );
    if r.attention.is_empty() {
        s += "Attention:  nothing; all is well\n";
    } else {
        s += "Attention:\n";
        for a in &r.attention {
            s += &format!("  - {a}\n");
        }
    }
    s
}

fn uptime(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
