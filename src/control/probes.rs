//! Hardware probes (seam `hardware`): plugins that add facts to the hardware profile.
//!
//! A probe is a contribution `hardwareProbes: [{id, entry}]`. A WASM probe has no IO: the host
//! hands it what it may classify — the PCI devices ([`PciSource`]: `/sys/bus/pci/devices/*/
//! {vendor,device,class}`), the CPU, the OS, the GPUs and memory the profile already has — and
//! takes back a JSON object of facts, which land in the profile under
//! `plugins.<plugin>.<probe>.<fact>`, where policies read them in `when` like any other fact.
//!
//! # Guarantees
//! - A failing probe (an error, a trap, a limit, a breaker, output that is not a map of scalars and
//!   lists of scalars within the bounds below) is a note in the profile naming the activation, the
//!   plugin and the error; the profile is still there and the other probes still count.
//! - Results are cached per activation, manifest digest, probe and input hash: a probe runs again
//!   only when its plugin, its activation's config or what it is shown changes. The input leaves
//!   out what fluctuates (free memory and disk), so a stable machine hits the cache.
//!
//! # Caveats
//! - Probes run where a profile is taken: `lasctl hardware` (and `plan`, `status`, `apply`'s
//!   admission, which share it), the daemon's start, and the daemon's admission of each Module
//!   (so an activation change counts at the next admission without a restart).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::plugin::Point;
use crate::control::hardware::HardwareProfile;
use crate::control::plugins::{ActiveCode, PluginHost};

/// The environment variable naming a directory laid out like `/sys/bus/pci/devices` (one
/// directory per device with `vendor`, `device` and `class` files), read instead of the real one.
pub const PCI_ENV: &str = "LAS_PCI_DEVICES";
/// The most facts one probe may add.
pub const MAX_FACTS: usize = 64;
/// The most bytes of a probe's JSON output.
pub const MAX_OUTPUT_BYTES: usize = 16 * 1024;
/// The most items of a list fact, and characters of a string fact.
pub const MAX_LIST: usize = 64;
pub const MAX_STRING: usize = 256;

/// One PCI function as sysfs shows it (ids as hex strings, e.g. `0x10de`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PciDevice {
    /// The bus address, e.g. `0000:01:00.0`.
    pub slot: String,
    pub vendor: String,
    pub device: String,
    /// e.g. `0x030200` (3D controller).
    pub class: String,
}

/// Where the PCI facts come from: the real `/sys` ([`SysPci`]) or a list ([`StaticPci`], tests).
pub trait PciSource {
    /// The devices, sorted by slot; none when the bus cannot be read.
    fn devices(&self) -> Vec<PciDevice>;
}

/// The PCI devices of a sysfs tree (`/sys/bus/pci/devices` by default).
#[derive(Debug, Clone)]
pub struct SysPci {
    pub root: PathBuf,
}

impl SysPci {
    /// `/sys/bus/pci/devices`, or the directory `LAS_PCI_DEVICES` names.
    pub fn from_env() -> SysPci {
        SysPci {
            root: std::env::var_os(PCI_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/sys/bus/pci/devices")),
        }
    }
}

fn read_id(dir: &Path, file: &str) -> Option<String> {
    let s = std::fs::read_to_string(dir.join(file)).ok()?;
    let s = s.trim().to_ascii_lowercase();
    (s.starts_with("0x") && s.len() <= 10 && s[2..].bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(s)
}

impl PciSource for SysPci {
    fn devices(&self) -> Vec<PciDevice> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out: Vec<PciDevice> = entries
            .flatten()
            .filter_map(|e| {
                let dir = e.path();
                Some(PciDevice {
                    slot: e.file_name().to_string_lossy().into_owned(),
                    vendor: read_id(&dir, "vendor")?,
                    device: read_id(&dir, "device")?,
                    class: read_id(&dir, "class")?,
                })
            })
            .collect();
        out.sort();
        out
    }
}

/// A fixed list of devices, for tests of the logic above the source.
#[derive(Debug, Clone, Default)]
pub struct StaticPci(pub Vec<PciDevice>);

impl PciSource for StaticPci {
    fn devices(&self) -> Vec<PciDevice> {
        self.0.clone()
    }
}

/// Probe results by key (activation, digest, probe, input hash): facts or the error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeCache(pub BTreeMap<String, Result<BTreeMap<String, Value>, String>>);

/// What a probe is shown: stable facts only (no free memory or disk), so results cache well.
pub fn probe_input(profile: &HardwareProfile, pci: &[PciDevice]) -> Value {
    json!({
        // Also `id`, `vendor:device` as lspci writes it (`10de:2684`): keys are sorted, so
        // vendor and device are not next to each other.
        "pci": pci.iter().map(|d| json!({"slot": d.slot, "vendor": d.vendor, "device": d.device,
            "class": d.class, "id": format!("{}:{}", hex_id(&d.vendor), hex_id(&d.device))}))
            .collect::<Vec<_>>(),
        "cpu": {"arch": profile.cpu.arch, "model": profile.cpu.model,
                "features": profile.cpu.features, "logicalCores": profile.cpu.logical_cores},
        "os": profile.os,
        "memory": {"totalBytes": profile.memory.total_bytes},
        "gpus": profile.gpus.iter().map(|g| json!({"index": g.index, "vendor": g.vendor,
            "name": g.name, "memoryTotalBytes": g.memory_total_bytes,
            "pciBusId": g.pci_bus_id})).collect::<Vec<_>>(),
    })
}

fn hex_id(s: &str) -> &str {
    s.strip_prefix("0x").unwrap_or(s)
}

/// Checks a probe's answer: a map of at most [`MAX_FACTS`] facts named in lowerCamelCase (or
/// snake_case), each a scalar or a list of at most [`MAX_LIST`] scalars; strings bounded.
pub fn check_facts(out: &Value) -> Result<BTreeMap<String, Value>, String> {
    let text = out.to_string();
    if text.len() > MAX_OUTPUT_BYTES {
        return Err(format!(
            "answered {} bytes, expected at most {MAX_OUTPUT_BYTES}",
            text.len()
        ));
    }
    let Some(map) = out.as_object() else {
        return Err(format!(
            "answered {}, expected an object of facts",
            short(&text)
        ));
    };
    if map.len() > MAX_FACTS {
        return Err(format!(
            "answered {} facts, expected at most {MAX_FACTS}",
            map.len()
        ));
    }
    let scalar = |v: &Value| match v {
        Value::Bool(_) | Value::Number(_) => true,
        Value::String(s) => s.chars().count() <= MAX_STRING,
        _ => false,
    };
    let mut facts = BTreeMap::new();
    for (k, v) in map {
        let name_ok = k.len() <= 63
            && k.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err(format!(
                "fact {k:?}: expected a name of letters, digits and '_' starting with a lower-case letter"
            ));
        }
        let ok = match v {
            Value::Array(items) => items.len() <= MAX_LIST && items.iter().all(scalar),
            v => scalar(v),
        };
        if !ok {
            return Err(format!(
                "fact {k}: expected a boolean, number, string (at most {MAX_STRING} characters) or a list of at most {MAX_LIST} of them, found {}",
                short(&v.to_string())
            ));
        }
        facts.insert(k.clone(), v.clone());
    }
    Ok(facts)
}

fn short(s: &str) -> String {
    if s.len() <= 120 {
        s.to_string()
    } else {
        format!("{}…", &s[..s.floor_char_boundary(120)])
    }
}

/// Runs the active probes among `active` on `profile` (facts under `plugins.<plugin>.<probe>`,
/// failures as notes), reusing `cache`. Returns whether any probe ran (the cache changed).
pub fn run_probes(
    host: &PluginHost,
    active: &[ActiveCode],
    profile: &mut HardwareProfile,
    pci: &dyn PciSource,
    cache: &mut ProbeCache,
) -> bool {
    let probes: Vec<&ActiveCode> = active
        .iter()
        .filter(|c| c.point == Point::HardwareProbe)
        .collect();
    if probes.is_empty() {
        return false;
    }
    let input = probe_input(profile, &pci.devices());
    let mut ran = false;
    let mut seen = Vec::new();
    // Deterministic: by activation, then probe.
    let mut probes = probes;
    probes.sort_by(|a, b| (&a.activation, &a.id).cmp(&(&b.activation, &b.id)));
    for c in probes {
        let mut full = input.clone();
        full["config"] = c.config.clone();
        let key = format!(
            "{}/{}/{}/{}",
            c.activation,
            c.digest,
            c.id,
            crate::control::plugins::sha256_hex(full.to_string().as_bytes())
        );
        seen.push(key.clone());
        let result = match cache.0.get(&key) {
            Some(r) => r.clone(),
            None => {
                ran = true;
                let mut limited = c.clone();
                limited.limits.max_output_bytes =
                    limited.limits.max_output_bytes.min(MAX_OUTPUT_BYTES);
                let r = host.call(&limited, &full).and_then(|out| check_facts(&out));
                cache.0.insert(key, r.clone());
                r
            }
        };
        match result {
            Ok(facts) => {
                profile
                    .plugins
                    .entry(c.plugin.clone())
                    .or_default()
                    .insert(c.id.clone(), facts);
            }
            Err(e) => profile.notes.push(format!(
                "hardware probe {} of plugin {} (activation {}) failed: {e}",
                c.id, c.plugin, c.activation
            )),
        }
    }
    // Forget results of probes no longer active or of inputs no longer seen.
    let before = cache.0.len();
    cache.0.retain(|k, _| seen.contains(k));
    ran || cache.0.len() != before
}

/// The store record holding the CLI's probe cache (the daemon keeps its own in memory).
pub const CACHE_RECORD: &str = "hardware/probe-cache";

/// Adds the facts of the active probes of `store`'s activations to `profile` (a CLI verb: the
/// real sandbox, the PCI devices of [`SysPci::from_env`]); the cache lives in the record
/// [`CACHE_RECORD`], written only when `write` (previews write nothing).
pub fn augment_from_store(
    store: &mut crate::control::store::Store,
    profile: &mut HardwareProfile,
    write: bool,
) {
    let objects = match crate::control::plugins::plugin_objects(store) {
        Ok(o) => o,
        Err(e) => {
            profile.notes.push(format!(
                "hardware probes not run: cannot read the plugin activations: {e}"
            ));
            return;
        }
    };
    if !objects
        .iter()
        .any(|o| o.kind == crate::api::Kind::PluginActivation || o.kind == crate::api::Kind::Plugin)
    {
        return;
    }
    let host = PluginHost::for_cli(store);
    let active = host.build(&objects);
    let mut cache: ProbeCache = store
        .get_record(CACHE_RECORD)
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let changed = run_probes(&host, &active, profile, &SysPci::from_env(), &mut cache);
    if write
        && changed
        && let Err(e) = store.put_record(
            CACHE_RECORD,
            &serde_json::to_value(&cache).unwrap_or(Value::Null),
        )
    {
        tracing::warn!(error = %e, "cannot record the hardware probe cache");
    }
}

/// The daemon's probes: the base profile taken at start, the facts of whatever probes are active
/// in the objects it is shown, results cached in memory.
pub struct ProbeRunner {
    pub host: std::sync::Arc<PluginHost>,
    pub pci: Box<dyn PciSource + Send + Sync>,
    pub cache: std::sync::Mutex<ProbeCache>,
}

impl ProbeRunner {
    pub fn new(host: std::sync::Arc<PluginHost>) -> ProbeRunner {
        ProbeRunner {
            host,
            pci: Box::new(SysPci::from_env()),
            cache: Default::default(),
        }
    }

    /// `base` with the facts of the probes active among `objects` (all stored objects will do).
    pub fn profile(
        &self,
        base: &HardwareProfile,
        objects: &[crate::control::store::StoredObject],
    ) -> HardwareProfile {
        let mut p = base.clone();
        let plugin_objects: Vec<_> = objects
            .iter()
            .filter(|o| {
                o.kind == crate::api::Kind::Plugin || o.kind == crate::api::Kind::PluginActivation
            })
            .cloned()
            .collect();
        if plugin_objects.is_empty() {
            return p;
        }
        let active = self.host.build(&plugin_objects);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        run_probes(&self.host, &active, &mut p, &*self.pci, &mut cache);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_a_bounded_map_of_scalars_and_lists() {
        let ok = check_facts(&json!({"accelerators": 1, "names": ["npu0"], "fast": true})).unwrap();
        assert_eq!(ok["accelerators"], 1);
        for bad in [
            json!([1]),
            json!({"Upper": 1}),
            json!({"nested": {"a": 1}}),
            json!({"list": [[1]]}),
            json!({"s": "x".repeat(MAX_STRING + 1)}),
            json!({"l": vec![1; MAX_LIST + 1]}),
        ] {
            assert!(check_facts(&bad).is_err(), "{bad}");
        }
        let many: serde_json::Map<String, Value> = (0..=MAX_FACTS)
            .map(|i| (format!("f{i}"), json!(i)))
            .collect();
        assert!(check_facts(&Value::Object(many)).is_err());
    }

    /// The committed example probe, on a fake PCI bus through the test seam.
    #[test]
    fn the_example_probe_counts_the_made_up_accelerator() {
        use crate::sandbox::{Engine, Grants, Limits, WasmiEngine};
        let wasm = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/npu_probe.wasm"),
        )
        .unwrap();
        let module = WasmiEngine::new().compile(&wasm, &Grants::none()).unwrap();
        let dev = |slot: &str, vendor: &str, device: &str| PciDevice {
            slot: slot.into(),
            vendor: vendor.into(),
            device: device.into(),
            class: "0x120000".into(),
        };
        let profile = HardwareProfile::from_yaml(
            Path::new("p.yaml"),
            "apiVersion: localaistack.io/v1alpha1\nkind: HardwareProfile\nsource: {type: live}\ncpu: {model: x, arch: x86_64, physicalCores: 4, logicalCores: 8, usableCores: 8}\nmemory: {totalBytes: 1, availableBytes: 1, usableBytes: 1}\nos: {name: l, kernel: k}\n",
        )
        .unwrap();
        for (devices, want) in [
            (vec![], 0),
            (vec![dev("0000:00:02.0", "0x8086", "0x1234")], 0),
            (
                vec![
                    dev("0000:03:00.0", "0x1ab2", "0x0001"),
                    dev("0000:04:00.0", "0x1ab2", "0x0001"),
                    dev("0000:05:00.0", "0x1ab2", "0x0002"),
                ],
                2,
            ),
        ] {
            let input = probe_input(&profile, &StaticPci(devices).devices());
            let out = module.call("probe", &input, &Limits::default()).unwrap();
            let facts = check_facts(&out.output).unwrap();
            assert_eq!(facts["accelerators"], want, "{input}");
            assert_eq!(facts["model"], "Acme NPU 1");
        }
    }

    #[test]
    fn sys_pci_reads_a_sysfs_tree_and_skips_broken_entries() {
        let dir = tempfile::tempdir().unwrap();
        let dev = |slot: &str, files: &[(&str, &str)]| {
            let d = dir.path().join(slot);
            std::fs::create_dir_all(&d).unwrap();
            for (f, v) in files {
                std::fs::write(d.join(f), format!("{v}\n")).unwrap();
            }
        };
        dev(
            "0000:02:00.0",
            &[
                ("vendor", "0x1AB2"),
                ("device", "0x0001"),
                ("class", "0x120000"),
            ],
        );
        dev(
            "0000:01:00.0",
            &[("vendor", "0x8086"), ("device", "0x1234")],
        );
        dev(
            "0000:00:00.0",
            &[("vendor", "junk"), ("device", "0x1"), ("class", "0x0")],
        );
        let found = SysPci {
            root: dir.path().to_path_buf(),
        }
        .devices();
        assert_eq!(
            found,
            vec![PciDevice {
                slot: "0000:02:00.0".into(),
                vendor: "0x1ab2".into(),
                device: "0x0001".into(),
                class: "0x120000".into(),
            }]
        );
        assert!(
            SysPci {
                root: dir.path().join("missing")
            }
            .devices()
            .is_empty()
        );
        assert_eq!(StaticPci(found.clone()).devices(), found);
    }
}
