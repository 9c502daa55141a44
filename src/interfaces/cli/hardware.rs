//! `lasctl hardware [-o json|yaml]`: the hardware profile and the tier it falls in.
//!
//! The profile is recorded in the store (`hardware/profile`, with its time); a change since the
//! last recorded profile of the same source (a GPU gone, memory added) is an event.

use std::io::Write;

use serde_json::json;

use super::CliError;
use super::output::{OutputFormat, human_bytes};
use super::verbs::open_store;
use crate::api::{Kind, Spec};
use crate::control::hardware::{HardwareProfile, probe_from_env};
use crate::control::policy::{NamedPolicy, TierChoice, default_policies, select_tier};
use crate::control::store::{EventType, Store};

/// The record key of the last profile.
pub const PROFILE_RECORD: &str = "hardware/profile";

#[derive(Debug, clap::Args)]
pub struct HardwareArgs {
    /// yaml prints exactly the format LAS_HARDWARE_PROFILE reads.
    #[arg(short = 'o', long = "output", value_parser = super::output::only(&["table", "json", "yaml"]))]
    pub output: Option<OutputFormat>,
}

/// The policies that apply: the stored ones (not being deleted) with `extra` replacing those of
/// the same name; the built-in set when there are none.
pub(crate) fn policies(store: &Store, extra: &[NamedPolicy]) -> Result<Vec<NamedPolicy>, CliError> {
    let mut out: Vec<NamedPolicy> = Vec::new();
    for o in store.list(Some(Kind::Policy), &Default::default())? {
        if o.deleted_at.is_some() || extra.iter().any(|e| e.name == o.name.as_str()) {
            continue;
        }
        if let Spec::Policy(spec) = o.typed_spec()? {
            out.push(NamedPolicy {
                name: o.name.to_string(),
                spec,
            });
        }
    }
    out.extend(extra.iter().cloned());
    if out.is_empty() {
        out = default_policies()?;
    }
    Ok(out)
}

/// Records the profile and an event per change since the last one of the same source.
pub(crate) fn record_profile(store: &mut Store, profile: &HardwareProfile) -> Result<(), CliError> {
    let previous = store.get_record(PROFILE_RECORD)?;
    let previous: Option<HardwareProfile> = previous
        .and_then(|v| v.get("profile").cloned())
        .and_then(|v| serde_json::from_value(v).ok());
    match previous {
        Some(old)
            if old.source.type_ == profile.source.type_
                && old.source.path == profile.source.path =>
        {
            for change in profile.changes_since(&old) {
                store.record_event(
                    "Hardware",
                    "local",
                    EventType::Warning,
                    "HardwareChanged",
                    &change,
                )?;
            }
        }
        Some(_) | None => {
            let from = match &profile.source.path {
                Some(p) => format!("profile file {p}"),
                None => "live detection".into(),
            };
            store.record_event(
                "Hardware",
                "local",
                EventType::Normal,
                "HardwareProfiled",
                &format!(
                    "profile from {from}: {} logical cores, {}, {} GPU(s)",
                    profile.cpu.logical_cores,
                    human_bytes(profile.memory.total_bytes),
                    profile.gpus.len()
                ),
            )?;
        }
    }
    store.put_record(
        PROFILE_RECORD,
        &json!({"time": chrono::Utc::now().to_rfc3339(), "profile": profile.to_json()}),
    )?;
    Ok(())
}

/// Probes (or reads `LAS_HARDWARE_PROFILE`), records when `record` (plan and dry runs record
/// nothing), and selects the tier.
pub(crate) fn profile_and_tier(
    store: &mut Store,
    extra: &[NamedPolicy],
    record: bool,
) -> Result<(HardwareProfile, TierChoice), CliError> {
    let mut profile = probe_from_env().probe()?;
    crate::control::probes::augment_from_store(store, &mut profile, record);
    if record {
        record_profile(store, &profile)?;
    }
    let tier = select_tier(&policies(store, extra)?, &profile)?;
    Ok((profile, tier))
}

pub fn run(a: HardwareArgs) -> Result<(), CliError> {
    let mut store = open_store()?;
    let (mut profile, tier) = profile_and_tier(&mut store, &[], true)?;
    profile.tier = Some(json!({"policy": tier.policy, "name": tier.tier, "reason": tier.reason}));
    let mut out = std::io::stdout().lock();
    match a.output {
        Some(OutputFormat::Yaml) => write!(out, "{}", profile.to_yaml())?,
        Some(OutputFormat::Json) => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&profile).expect("profiles serialize")
        )?,
        _ => write!(out, "{}", summary(&profile, &tier))?,
    }
    Ok(())
}

fn summary(p: &HardwareProfile, t: &TierChoice) -> String {
    let mut s = String::new();
    let src = match &p.source.path {
        Some(f) => format!("file {f}"),
        None => "live".into(),
    };
    s += &format!("Source:   {src}\n");
    s += &format!(
        "CPU:      {} ({}), {} physical / {} logical cores, {} usable{}; features: {}\n",
        p.cpu.model,
        p.cpu.arch,
        p.cpu.physical_cores,
        p.cpu.logical_cores,
        p.cpu.usable_cores,
        p.cpu
            .cgroup_quota_cores
            .map(|q| format!(" (cgroup quota {q})"))
            .unwrap_or_default(),
        if p.cpu.features.is_empty() {
            "-".into()
        } else {
            p.cpu.features.join(", ")
        }
    );
    s += &format!(
        "Memory:   {} total, {} available, {} usable{}\n",
        human_bytes(p.memory.total_bytes),
        human_bytes(p.memory.available_bytes),
        human_bytes(p.memory.usable_bytes),
        p.memory
            .cgroup_limit_bytes
            .map(|l| format!(" (cgroup limit {})", human_bytes(l)))
            .unwrap_or_default()
    );
    s += &format!(
        "OS:       {} {} (kernel {})\n",
        p.os.name, p.os.version, p.os.kernel
    );
    if p.gpus.is_empty() {
        s += "GPUs:     none\n";
    }
    for g in &p.gpus {
        s += &format!(
            "GPU {}:    {} {}, {} total, {} free{}\n",
            g.index,
            format!("{:?}", g.vendor).to_lowercase(),
            g.name,
            human_bytes(g.memory_total_bytes),
            human_bytes(g.memory_free_bytes),
            g.compute_capability
                .as_ref()
                .map(|c| format!(", compute {c}"))
                .unwrap_or_default()
        );
    }
    for d in &p.disks {
        s += &format!(
            "Disk:     {} {} free of {}{}\n",
            d.mount,
            human_bytes(d.free_bytes),
            human_bytes(d.total_bytes),
            match d.rotational {
                Some(true) => " (rotational)",
                Some(false) => " (solid state)",
                None => "",
            }
        );
    }
    for (plugin, probes) in &p.plugins {
        for (probe, facts) in probes {
            let facts: Vec<String> = facts.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s += &format!("Plugin:   {plugin}/{probe}: {}\n", facts.join(", "));
        }
    }
    for n in &p.notes {
        s += &format!("Note:     {n}\n");
    }
    s += &format!(
        "Tier:     {} (policy {})\n  {}\n",
        t.tier, t.policy, t.reason
    );
    s
}
