//! Policies over the hardware profile: which tier applies, and what it admits.
//!
//! # Facts
//! A predicate's `fact` is a dotted path into the profile's serialized JSON (`lasctl hardware -o json`
//! shows every field). Segments walk objects by key; on a list, a number selects an element and the
//! words below compute over it:
//!
//! | fact | meaning |
//! |---|---|
//! | `gpus.count` | number of GPUs (any list supports `.count`) |
//! | `gpus.0.memoryTotalBytes` | a field of the first GPU |
//! | `gpus.sum.memoryTotalBytes` | the sum of a numeric field over the list (also `max`, `min`) |
//! | `gpus.any.vendor` | the list of that field's values (use with `contains`) |
//! | `memory.totalBytes`, `memory.usableBytes`, `memory.availableBytes` | RAM, bytes |
//! | `cpu.physicalCores`, `cpu.logicalCores`, `cpu.usableCores`, `cpu.features`, `cpu.arch` | CPU |
//! | `os.name`, `os.kernel`, `source.type` | OS, and where the profile came from |
//!
//! Operators: `==`, `!=`, `<`, `<=`, `>`, `>=` (numbers numerically, strings lexically), `in` (the
//! fact is one of a list), `contains` (a list fact has the value, or a string fact has the substring).
//! A fact that does not exist makes its comparison false, and the reason says so.
//!
//! # Guarantees
//! - [`select_tier`] is a pure function of the policies and the profile: policies by priority
//!   (highest first), then name; tiers in their order; the first whose `when` holds applies, and
//!   [`TierChoice::reason`] says which comparison made it hold and why earlier tiers did not.
//! - [`Admission`] decides with arithmetic only (no IO); every refusal carries a sentence that names
//!   the object, the figure needed, the figure available, and the tier.
//!
//! # Caveats
//! - Memory figures come from a [`MemoryEstimator`]; the shipped [`FileSizeEstimator`] uses the file
//!   size as the weight size and the GGUF shape (when the Model's status has it) for the KV cache.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::hardware::HardwareProfile;
use crate::api::model::GgufInfo;
use crate::api::module::RuntimeKind;
use crate::api::policy::{Capabilities, CompareOp, PolicySpec, Predicate};
pub use crate::artifacts::catalog::GpuNeed;

/// The policy set shipped with the binary, used when the store holds no Policy.
pub const DEFAULT_POLICY_YAML: &str = include_str!("../../policies/default.yaml");

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("no tier applies to this hardware: {0}; add a tier without `when` as a catch-all")]
    NoTier(String),
    #[error("the built-in policy set is invalid: {0}")]
    BuiltIn(String),
}

/// A Policy with its name, as the selector sees it.
#[derive(Debug, Clone)]
pub struct NamedPolicy {
    pub name: String,
    pub spec: PolicySpec,
}

pub use crate::api::meta::BUILT_IN_ANNOTATION;

/// The shipped policies as the objects `policies/default.yaml` defines (labels included).
pub fn default_policy_objects() -> Result<Vec<crate::api::Desired>, PolicyError> {
    let files = [crate::api::decode::InputFile {
        name: "policies/default.yaml".into(),
        bytes: DEFAULT_POLICY_YAML.as_bytes().to_vec(),
    }];
    crate::api::decode::decode_files(&files).map_err(|e| PolicyError::BuiltIn(e.to_string()))
}

/// The shipped policies as objects annotated built-in, while they are the ones in effect: when
/// `stored_policies` (the stored Policies) holds none that is not being deleted. Not stored: no
/// uid, generation or resourceVersion. Shown by `lasctl get policies` and the API alike.
pub fn built_in_policy_objects(
    stored_policies: &[crate::control::store::StoredObject],
) -> Result<Vec<crate::control::store::StoredObject>, PolicyError> {
    if stored_policies
        .iter()
        .any(|o| o.kind == crate::api::Kind::Policy && o.deleted_at.is_none())
    {
        return Ok(Vec::new());
    }
    Ok(default_policy_objects()?
        .into_iter()
        .map(|d| {
            let mut annotations = d.annotations.clone();
            annotations.insert(BUILT_IN_ANNOTATION.into(), "true".into());
            crate::control::store::StoredObject {
                kind: crate::api::Kind::Policy,
                name: d.name.clone(),
                uid: String::new(),
                generation: 0,
                resource_version: 0,
                created_at: String::new(),
                deleted_at: None,
                finalizers: Vec::new(),
                labels: d.labels.clone(),
                annotations,
                spec: d.spec.to_json(),
                status: Value::Object(Default::default()),
            }
        })
        .collect())
}

/// Whether `o` is one of [`built_in_policy_objects`].
pub fn is_built_in(o: &crate::control::store::StoredObject) -> bool {
    o.uid.is_empty() && o.annotations.get(BUILT_IN_ANNOTATION).map(String::as_str) == Some("true")
}

/// An object as `-o json|yaml` and the API show it; a built-in policy without the system fields
/// it does not have (so it can be saved, edited and applied as a Policy of one's own).
pub fn object_json(o: &crate::control::store::StoredObject) -> Value {
    let mut v = o.to_json();
    if is_built_in(o)
        && let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut)
    {
        for k in ["uid", "generation", "resourceVersion", "creationTimestamp"] {
            m.remove(k);
        }
    }
    v
}

/// The shipped policies (`policies/default.yaml`, compiled in).
pub fn default_policies() -> Result<Vec<NamedPolicy>, PolicyError> {
    let decoded = default_policy_objects()?;
    Ok(decoded
        .into_iter()
        .filter_map(|d| match d.spec {
            crate::api::Spec::Policy(spec) => Some(NamedPolicy {
                name: d.name.to_string(),
                spec,
            }),
            _ => None,
        })
        .collect())
}

/// The tier that applies, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TierChoice {
    pub policy: String,
    pub tier: String,
    pub reason: String,
    pub capabilities: Capabilities,
}

/// Picks the tier for a profile. See the module documentation for the order.
pub fn select_tier(
    policies: &[NamedPolicy],
    profile: &HardwareProfile,
) -> Result<TierChoice, PolicyError> {
    let facts = profile.to_json();
    let mut ordered: Vec<&NamedPolicy> = policies.iter().collect();
    ordered.sort_by(|a, b| {
        b.spec
            .priority
            .cmp(&a.spec.priority)
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut skipped = Vec::new();
    for p in ordered {
        for t in &p.spec.tiers {
            let (holds, why) = match &t.when {
                None => (true, "it has no condition".to_string()),
                Some(w) => evaluate(w, &facts),
            };
            if holds {
                let mut reason = format!("policy {} tier {}: {why}", p.name, t.name);
                if !skipped.is_empty() {
                    reason += &format!("; not chosen earlier: {}", skipped.join("; "));
                }
                return Ok(TierChoice {
                    policy: p.name.clone(),
                    tier: t.name.clone(),
                    reason,
                    capabilities: t.capabilities.clone(),
                });
            }
            skipped.push(format!("{}/{} ({why})", p.name, t.name));
        }
    }
    Err(PolicyError::NoTier(if skipped.is_empty() {
        "there are no policies".into()
    } else {
        skipped.join("; ")
    }))
}

/// Looks a dotted fact up in the profile's JSON (see the module documentation).
pub fn fact(root: &Value, path: &str) -> Option<Value> {
    let segs: Vec<&str> = path.split('.').collect();
    lookup(root, &segs)
}

fn lookup(v: &Value, segs: &[&str]) -> Option<Value> {
    let Some((first, rest)) = segs.split_first() else {
        return Some(v.clone());
    };
    match v {
        Value::Object(m) => lookup(m.get(*first)?, rest),
        Value::Array(a) => match *first {
            "count" if rest.is_empty() => Some(Value::from(a.len() as u64)),
            "sum" | "max" | "min" => {
                let nums: Vec<f64> = a
                    .iter()
                    .filter_map(|e| lookup(e, rest).and_then(|x| x.as_f64()))
                    .collect();
                let r = match *first {
                    "sum" => nums.iter().sum(),
                    "max" => nums.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                    _ => nums.iter().cloned().fold(f64::INFINITY, f64::min),
                };
                if nums.is_empty() && *first != "sum" {
                    return None;
                }
                Some(number(r))
            }
            "any" => Some(Value::Array(
                a.iter().filter_map(|e| lookup(e, rest)).collect(),
            )),
            n => lookup(a.get(n.parse::<usize>().ok()?)?, rest),
        },
        _ => None,
    }
}

fn number(f: f64) -> Value {
    if f.fract() == 0.0 && f >= 0.0 && f < u64::MAX as f64 {
        Value::from(f as u64)
    } else {
        Value::from(f)
    }
}

fn op_str(op: CompareOp) -> &'static str {
    match op {
        CompareOp::Eq => "==",
        CompareOp::Ne => "!=",
        CompareOp::Lt => "<",
        CompareOp::Le => "<=",
        CompareOp::Gt => ">",
        CompareOp::Ge => ">=",
        CompareOp::In => "in",
        CompareOp::Contains => "contains",
    }
}

/// Evaluates a predicate; returns whether it holds and a sentence saying why.
pub fn evaluate(p: &Predicate, facts: &Value) -> (bool, String) {
    if let Some(all) = &p.all {
        for q in all {
            let (h, why) = evaluate(q, facts);
            if !h {
                return (false, why);
            }
        }
        let whys: Vec<String> = all.iter().map(|q| evaluate(q, facts).1).collect();
        return (true, whys.join(" and "));
    }
    if let Some(any) = &p.any {
        let mut whys = Vec::new();
        for q in any {
            let (h, why) = evaluate(q, facts);
            if h {
                return (true, why);
            }
            whys.push(why);
        }
        return (false, whys.join(" and "));
    }
    if let Some(not) = &p.not {
        let (h, why) = evaluate(not, facts);
        return (!h, format!("not ({why})"));
    }
    let (Some(name), Some(op), Some(want)) = (&p.fact, p.op, &p.value) else {
        return (false, "an incomplete comparison never holds".into());
    };
    let Some(got) = fact(facts, name) else {
        return (false, format!("{name} is not in the profile"));
    };
    let holds = compare(&got, op, want);
    // Facts in bytes read in human units (`memory.usableBytes >= 16.0 GiB`).
    let bytes = name.ends_with("Bytes");
    let shown = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Number(n) if bytes && n.as_u64().is_some() => {
            human_bytes(n.as_u64().expect("checked"))
        }
        other => other.to_string(),
    };
    (
        holds,
        format!(
            "{name} {} {} {} ({name} is {})",
            op_str(op),
            shown(want),
            if holds { "holds" } else { "does not hold" },
            shown(&got)
        ),
    )
}

fn compare(got: &Value, op: CompareOp, want: &Value) -> bool {
    use std::cmp::Ordering;
    let ord = || -> Option<Ordering> {
        match (got, want) {
            (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
            (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            _ => None,
        }
    };
    match op {
        CompareOp::Eq => ord() == Some(Ordering::Equal) || got == want,
        CompareOp::Ne => !(ord() == Some(Ordering::Equal) || got == want),
        CompareOp::Lt => ord() == Some(Ordering::Less),
        CompareOp::Le => matches!(ord(), Some(Ordering::Less | Ordering::Equal)),
        CompareOp::Gt => ord() == Some(Ordering::Greater),
        CompareOp::Ge => matches!(ord(), Some(Ordering::Greater | Ordering::Equal)),
        CompareOp::In => want
            .as_array()
            .is_some_and(|l| l.iter().any(|w| compare(got, CompareOp::Eq, w))),
        CompareOp::Contains => match got {
            Value::Array(l) => l.iter().any(|g| compare(g, CompareOp::Eq, want)),
            Value::String(s) => want.as_str().is_some_and(|w| s.contains(w)),
            _ => false,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Admission

/// What admission knows about a Model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelFacts {
    pub name: String,
    /// Bytes of the weights file; `None` until known (e.g. an http source not yet downloaded).
    pub size_bytes: Option<u64>,
    /// `spec.sha256` is set.
    pub pinned_digest: bool,
    pub gguf: Option<GgufInfo>,
    /// The weights file, when it is on this machine (the stored blob or a local source).
    pub path: Option<std::path::PathBuf>,
}

/// A model's memory needs at one context size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub weights_bytes: u64,
    pub kv_cache_bytes: u64,
    /// Compute buffers and runtime overhead, kept on the device that runs the model.
    pub overhead_bytes: u64,
    pub layers: u32,
    /// True when the layer count was not known and [`ASSUMED_LAYERS`] was used.
    pub layers_assumed: bool,
}

/// Layers assumed when a Model's GGUF shape is not known yet.
pub const ASSUMED_LAYERS: u32 = 32;

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes
    }
    /// Weights and KV cache of one layer.
    pub fn per_layer(&self) -> u64 {
        (self.weights_bytes + self.kv_cache_bytes).div_ceil(self.layers.max(1) as u64)
    }
}

/// The seam for the model memory estimate (the GGUF-based estimator plugs in here).
pub trait MemoryEstimator {
    /// Estimates the memory of `model` served with a context of `context_size` tokens.
    /// `None` when the size is not known yet.
    fn estimate(&self, model: &ModelFacts, context_size: u32) -> Option<MemoryEstimate>;
}

/// Weights = the file size; KV cache = 2 (K and V) × layers × context × the KV width × 2 bytes
/// (f16) when the GGUF shape is known, else 128 KiB per token of context (a GQA 7B-class model);
/// overhead = 256 MiB of compute buffers.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileSizeEstimator;

/// KV cache per token of context when the model's shape is unknown.
pub const FALLBACK_KV_BYTES_PER_TOKEN: u64 = 128 << 10;
/// Compute buffers and runtime overhead per loaded model.
pub const OVERHEAD_BYTES: u64 = 256 << 20;

impl MemoryEstimator for FileSizeEstimator {
    fn estimate(&self, model: &ModelFacts, context_size: u32) -> Option<MemoryEstimate> {
        let weights = model.size_bytes?;
        let g = model.gguf.clone().unwrap_or_default();
        let (layers, assumed) = match g.layers {
            Some(l) if l > 0 => (l as u32, false),
            _ => (ASSUMED_LAYERS, true),
        };
        let ctx = context_size as u64;
        let kv = match (g.embedding_length, g.head_count, g.head_count_kv) {
            (Some(e), Some(h), kvh) if h > 0 && !assumed => {
                let kv_width = e * kvh.unwrap_or(h) / h;
                2 * layers as u64 * ctx * kv_width * 2
            }
            _ => ctx * FALLBACK_KV_BYTES_PER_TOKEN,
        };
        Some(MemoryEstimate {
            weights_bytes: weights,
            kv_cache_bytes: kv,
            overhead_bytes: OVERHEAD_BYTES,
            layers,
            layers_assumed: assumed,
        })
    }
}

/// The GGUF-based estimate (`artifacts::estimate`, llama.cpp's allocation rules) for models whose
/// file is readable here; [`FileSizeEstimator`] for the others (not downloaded yet, not GGUF).
///
/// # Caveats
/// Reads the GGUF header (bounded by the reader's limits) on every call; the planner calls it
/// once per served model.
#[derive(Debug, Clone, Copy, Default)]
pub struct GgufEstimator;

impl MemoryEstimator for GgufEstimator {
    fn estimate(&self, model: &ModelFacts, context_size: u32) -> Option<MemoryEstimate> {
        use crate::artifacts::estimate as est;
        let header = model
            .path
            .as_deref()
            .and_then(|p| crate::artifacts::gguf::read_header(p).ok());
        let Some(facts) = header.and_then(|h| est::ModelFacts::from_header(&h).ok()) else {
            return FileSizeEstimator.estimate(model, context_size);
        };
        // Everything offloaded: the split between devices is decided by admission per layer.
        let mut p = est::Placement::cpu(context_size.max(1));
        p.has_gpu = true;
        p.n_gpu_layers = u32::try_from(facts.n_layer + 1).unwrap_or(u32::MAX);
        let e = est::estimate(&facts, &p);
        let layers = u32::try_from(facts.n_layer.max(1)).unwrap_or(u32::MAX);
        Some(MemoryEstimate {
            weights_bytes: e.weights_ram.saturating_add(e.weights_vram),
            kv_cache_bytes: e.kv_ram.saturating_add(e.kv_vram),
            overhead_bytes: e
                .compute_ram
                .saturating_add(e.compute_vram)
                .saturating_add(e.output_ram),
            layers,
            layers_assumed: false,
        })
    }
}

/// A model served by a workload, with how it is served.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedModel {
    pub facts: ModelFacts,
    /// Tokens of context.
    pub context_size: u32,
    /// Layers asked on the GPU: -1 all that fit, 0 none, n at most n.
    pub gpu_layers: i32,
}

/// What admission knows about a Module: how it runs and what it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// `module/NAME`, for messages.
    pub object: String,
    pub runtime: RuntimeKind,
    /// `llama` for the built-in engine.
    pub engine: Option<String>,
    /// RAM besides any model (the module's own footprint).
    pub memory_bytes: u64,
    pub gpu: GpuNeed,
    pub model: Option<ServedModel>,
    /// Brings its own command or image (`native:`/`container:`), not a catalog module or engine.
    pub custom: bool,
}

/// Where an admitted workload runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    pub ram_bytes: u64,
    /// VRAM per GPU index.
    pub vram_bytes: BTreeMap<u32, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_layers: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_layers: Option<u32>,
    pub summary: String,
}

/// The outcome of admission for one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "verdict")]
pub enum Verdict {
    Admitted {
        object: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        placement: Option<Placement>,
    },
    Refused {
        object: String,
        reason: String,
    },
}

impl Verdict {
    pub fn is_admitted(&self) -> bool {
        matches!(self, Verdict::Admitted { .. })
    }
    pub fn object(&self) -> &str {
        match self {
            Verdict::Admitted { object, .. } | Verdict::Refused { object, .. } => object,
        }
    }
}

/// Memory of one device as admission accounts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceLedger {
    /// `ram` or `gpu0`, `gpu1`, ...
    pub device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub capacity_bytes: u64,
    /// Kept free by the tier's headroom percentage.
    pub headroom_bytes: u64,
    /// In use before the change (capacity − free at probe time).
    pub baseline_bytes: u64,
    /// Added by admitted workloads of this change.
    pub planned_bytes: u64,
    /// Freed by workloads this change stops.
    pub released_bytes: u64,
}

impl DeviceLedger {
    fn new(device: String, name: Option<String>, capacity: u64, free: u64, pct: u8) -> Self {
        DeviceLedger {
            device,
            name,
            capacity_bytes: capacity,
            headroom_bytes: capacity * pct.min(100) as u64 / 100,
            baseline_bytes: capacity.saturating_sub(free),
            planned_bytes: 0,
            released_bytes: 0,
        }
    }
    /// Bytes still usable after headroom and everything planned so far.
    pub fn free_after_headroom(&self) -> u64 {
        (self.capacity_bytes + self.released_bytes)
            .saturating_sub(self.headroom_bytes + self.baseline_bytes + self.planned_bytes)
    }
    /// In use after the change.
    pub fn projected_bytes(&self) -> u64 {
        (self.baseline_bytes + self.planned_bytes).saturating_sub(self.released_bytes)
    }
}

/// Admission against one tier and one profile, accumulating what it admits.
///
/// # Guarantees
/// - Objects are decided in the order they are given; each admitted workload reduces what the
///   next one can have, so the same order gives the same verdicts.
/// - A refusal commits nothing.
pub struct Admission<'a> {
    tier: &'a TierChoice,
    estimator: &'a dyn MemoryEstimator,
    ram: DeviceLedger,
    gpus: Vec<(u32, DeviceLedger)>,
    running_models: u32,
}

/// Bytes in human units, as every message and table shows them: `512 B`, `104.0 MiB`,
/// `5.8 GiB` (binary units, one decimal).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl<'a> Admission<'a> {
    /// `running_models`: models served by workloads that keep running through this change.
    pub fn new(
        profile: &HardwareProfile,
        tier: &'a TierChoice,
        estimator: &'a dyn MemoryEstimator,
        running_models: u32,
    ) -> Self {
        let caps = &tier.capabilities;
        let ram = DeviceLedger::new(
            "ram".into(),
            None,
            profile.memory.usable_bytes,
            profile.memory.available_bytes,
            caps.ram_headroom_percent.unwrap_or(0),
        );
        let gpus = profile
            .gpus
            .iter()
            .map(|g| {
                (
                    g.index,
                    DeviceLedger::new(
                        format!("gpu{}", g.index),
                        Some(g.name.clone()),
                        g.memory_total_bytes,
                        g.memory_free_bytes,
                        caps.vram_headroom_percent.unwrap_or(0),
                    ),
                )
            })
            .collect();
        Admission {
            tier,
            estimator,
            ram,
            gpus,
            running_models,
        }
    }

    /// The devices, RAM first, then GPUs by index.
    pub fn ledgers(&self) -> Vec<DeviceLedger> {
        std::iter::once(self.ram.clone())
            .chain(self.gpus.iter().map(|(_, l)| l.clone()))
            .collect()
    }

    /// Records memory a stopping workload gives back.
    pub fn release(&mut self, placement: &Placement) {
        self.ram.released_bytes += placement.ram_bytes;
        for (i, b) in &placement.vram_bytes {
            if let Some((_, l)) = self.gpus.iter_mut().find(|(g, _)| g == i) {
                l.released_bytes += b;
            }
        }
    }

    /// Records a model-serving workload that stops.
    pub fn release_running_model(&mut self) {
        self.running_models = self.running_models.saturating_sub(1);
    }

    fn tier_name(&self) -> &str {
        &self.tier.tier
    }

    /// Checks a Model (the weights as a resource): size limit and digest.
    pub fn admit_model(&self, m: &ModelFacts) -> Verdict {
        let object = format!("model/{}", m.name);
        let caps = &self.tier.capabilities;
        if caps.require_digest == Some(true) && !m.pinned_digest {
            return Verdict::Refused {
                object,
                reason: format!(
                    "model {} has no spec.sha256; tier {} requires a pinned digest",
                    m.name,
                    self.tier_name()
                ),
            };
        }
        if let (Some(max), Some(size)) = (caps.max_model_bytes, m.size_bytes)
            && size > max
        {
            return Verdict::Refused {
                object,
                reason: format!(
                    "model {} is {}; tier {} allows models up to {}",
                    m.name,
                    human_bytes(size),
                    self.tier_name(),
                    human_bytes(max)
                ),
            };
        }
        Verdict::Admitted {
            object,
            placement: None,
        }
    }

    /// Checks a workload and, when admitted, commits its memory.
    pub fn admit(&mut self, w: &Workload) -> Verdict {
        match self.decide(w) {
            Ok(p) => {
                self.ram.planned_bytes += p.ram_bytes;
                for (i, b) in &p.vram_bytes {
                    if let Some((_, l)) = self.gpus.iter_mut().find(|(g, _)| g == i) {
                        l.planned_bytes += b;
                    }
                }
                if w.model.is_some() {
                    self.running_models += 1;
                }
                Verdict::Admitted {
                    object: w.object.clone(),
                    placement: Some(p),
                }
            }
            Err(reason) => Verdict::Refused {
                object: w.object.clone(),
                reason,
            },
        }
    }

    fn decide(&self, w: &Workload) -> Result<Placement, String> {
        let caps = &self.tier.capabilities;
        let tier = self.tier_name();
        if w.custom && caps.allow_custom_workloads == Some(false) {
            return Err(format!(
                "{} runs a command or image of its own (spec.native or spec.container); tier {tier} \
                 allows only catalog modules (from:) and the built-in engine",
                w.object
            ));
        }
        if let Some(allowed) = &caps.allowed_runtimes
            && !allowed.contains(&w.runtime)
        {
            return Err(format!(
                "{} runs as a {} workload; tier {tier} allows only {}",
                w.object,
                runtime_str(w.runtime),
                allowed
                    .iter()
                    .map(|r| runtime_str(*r))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let (Some(e), Some(allowed)) = (&w.engine, &caps.allowed_engines)
            && !allowed.contains(e)
        {
            return Err(format!(
                "{} uses engine {e}; tier {tier} allows engines [{}]",
                w.object,
                allowed.join(", ")
            ));
        }
        if w.gpu == GpuNeed::Required && self.gpus.is_empty() {
            return Err(format!(
                "{} requires a GPU; this machine has none (tier {tier})",
                w.object
            ));
        }
        let Some(served) = &w.model else {
            return self.place_ram_only(w, 0, None);
        };
        if let Some(max) = caps.max_running_models
            && self.running_models >= max
        {
            return Err(format!(
                "{} would be model number {} to run; tier {tier} allows at most {max} running models",
                w.object,
                self.running_models + 1
            ));
        }
        let m = &served.facts;
        if caps.require_digest == Some(true) && !m.pinned_digest {
            return Err(format!(
                "{} serves model {}, which has no spec.sha256; tier {tier} requires a pinned digest",
                w.object, m.name
            ));
        }
        let Some(est) = self.estimator.estimate(m, served.context_size) else {
            // Unknown size (not downloaded yet): admit the module's own footprint; the daemon
            // admits again once the Model reports its size.
            return self.place_ram_only(
                w,
                0,
                Some(format!("model {} size unknown until downloaded", m.name)),
            );
        };
        let layers_note = if est.layers_assumed {
            format!(" (layer count unknown: {ASSUMED_LAYERS} assumed)")
        } else {
            String::new()
        };
        let ctx = served.context_size;
        let cpu_only = |why: &str| -> Result<Placement, String> {
            let need = est.total() + w.memory_bytes;
            let free = self.ram.free_after_headroom();
            if need > free {
                return Err(format!(
                    "model {} needs {} of RAM at contextSize {ctx}{why}; {} of RAM free after headroom (tier {tier})",
                    m.name,
                    human_bytes(need),
                    human_bytes(free)
                ));
            }
            Ok(Placement {
                ram_bytes: need,
                vram_bytes: BTreeMap::new(),
                gpu_layers: Some(0),
                total_layers: Some(est.layers),
                summary: format!(
                    "model {} on the CPU: {} of RAM at contextSize {ctx}{layers_note}",
                    m.name,
                    human_bytes(need)
                ),
            })
        };
        if self.gpus.is_empty() {
            return cpu_only("");
        }
        if served.gpu_layers == 0 {
            return cpu_only(" (gpuLayers: 0)");
        }
        let need = est.total();
        // Best single GPU: the most free memory, lowest index on ties.
        let (best_idx, best_free) = self
            .gpus
            .iter()
            .map(|(i, l)| (*i, l.free_after_headroom()))
            .fold(None::<(u32, u64)>, |acc, (i, f)| match acc {
                Some((_, af)) if af >= f => acc,
                _ => Some((i, f)),
            })
            .expect("gpus is not empty");
        let wanted_layers = if served.gpu_layers < 0 {
            est.layers
        } else {
            (served.gpu_layers as u32).min(est.layers)
        };
        if wanted_layers == est.layers && need <= best_free {
            if w.memory_bytes > self.ram.free_after_headroom() {
                return Err(format!(
                    "{} needs {} of RAM; {} free after headroom (tier {tier})",
                    w.object,
                    human_bytes(w.memory_bytes),
                    human_bytes(self.ram.free_after_headroom())
                ));
            }
            return Ok(Placement {
                ram_bytes: w.memory_bytes,
                vram_bytes: BTreeMap::from([(best_idx, need)]),
                gpu_layers: Some(est.layers),
                total_layers: Some(est.layers),
                summary: format!(
                    "model {} fully on GPU {best_idx}: {} of VRAM at contextSize {ctx}{layers_note}",
                    m.name,
                    human_bytes(need)
                ),
            });
        }
        // Split across GPUs, layers in proportion to free memory.
        let total_free: u64 = self.gpus.iter().map(|(_, l)| l.free_after_headroom()).sum();
        if wanted_layers == est.layers && self.gpus.len() > 1 && need <= total_free {
            let per_layer = est.per_layer();
            let mut vram = BTreeMap::new();
            let mut left = est.layers;
            let mut first = true;
            let mut parts = Vec::new();
            for (i, l) in &self.gpus {
                if left == 0 {
                    break;
                }
                let room = l.free_after_headroom().saturating_sub(if first {
                    est.overhead_bytes
                } else {
                    0
                });
                let n = ((room / per_layer.max(1)) as u32).min(left);
                if n == 0 {
                    continue;
                }
                let bytes = n as u64 * per_layer + if first { est.overhead_bytes } else { 0 };
                first = false;
                left -= n;
                vram.insert(*i, bytes);
                parts.push(format!("{n} on GPU {i}"));
            }
            if left == 0 {
                return Ok(Placement {
                    ram_bytes: w.memory_bytes,
                    vram_bytes: vram,
                    gpu_layers: Some(est.layers),
                    total_layers: Some(est.layers),
                    summary: format!(
                        "model {} split across GPUs at contextSize {ctx}: {} of {} layers{layers_note}",
                        m.name,
                        parts.join(", "),
                        est.layers
                    ),
                });
            }
        }
        let shortfall = format!(
            "model {} needs {} of VRAM at contextSize {ctx}; GPU {best_idx} has {} free after headroom",
            m.name,
            human_bytes(need),
            human_bytes(best_free)
        );
        if caps.allow_cpu_fallback != Some(true) && wanted_layers == est.layers {
            return Err(format!(
                "{shortfall}; tier {tier} does not allow CPU fallback"
            ));
        }
        // Partial offload: as many layers as fit (at most those asked), the rest in RAM.
        let per_layer = est.per_layer();
        let fit = (best_free.saturating_sub(est.overhead_bytes) / per_layer.max(1)) as u32;
        let on_gpu = fit.min(wanted_layers);
        let on_cpu = est.layers - on_gpu;
        let vram = if on_gpu > 0 {
            on_gpu as u64 * per_layer + est.overhead_bytes
        } else {
            0
        };
        let ram_need = on_cpu as u64 * per_layer
            + w.memory_bytes
            + if on_gpu == 0 { est.overhead_bytes } else { 0 };
        let ram_free = self.ram.free_after_headroom();
        let head = if wanted_layers < est.layers && on_gpu == wanted_layers {
            format!(
                "model {} asks for {wanted_layers} of {} layers on the GPU",
                m.name, est.layers
            )
        } else {
            format!("{shortfall}; tier {tier} allows CPU fallback")
        };
        if ram_need > ram_free {
            return Err(format!(
                "{head}: placing {on_gpu} of {} layers on GPU {best_idx} leaves {} for RAM, which has {} free after headroom{layers_note}",
                est.layers,
                human_bytes(ram_need),
                human_bytes(ram_free)
            ));
        }
        Ok(Placement {
            ram_bytes: ram_need,
            vram_bytes: if vram > 0 {
                BTreeMap::from([(best_idx, vram)])
            } else {
                BTreeMap::new()
            },
            gpu_layers: Some(on_gpu),
            total_layers: Some(est.layers),
            summary: format!(
                "{head}: placing {on_gpu} of {} layers on GPU{}{layers_note}",
                est.layers,
                if on_gpu > 0 {
                    format!(" {best_idx}")
                } else {
                    String::new()
                }
            ),
        })
    }

    fn place_ram_only(
        &self,
        w: &Workload,
        extra: u64,
        note: Option<String>,
    ) -> Result<Placement, String> {
        let need = w.memory_bytes + extra;
        let free = self.ram.free_after_headroom();
        if need > free {
            return Err(format!(
                "{} needs {} of RAM; {} free after headroom (tier {})",
                w.object,
                human_bytes(need),
                human_bytes(free),
                self.tier_name()
            ));
        }
        Ok(Placement {
            ram_bytes: need,
            vram_bytes: BTreeMap::new(),
            gpu_layers: None,
            total_layers: None,
            summary: match note {
                Some(n) => format!("{} of RAM; {n}", human_bytes(need)),
                None => format!("{} of RAM", human_bytes(need)),
            },
        })
    }
}

fn runtime_str(r: RuntimeKind) -> &'static str {
    match r {
        RuntimeKind::Container => "container",
        RuntimeKind::Native => "native",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cmp(f: &str, op: CompareOp, v: Value) -> Predicate {
        Predicate {
            fact: Some(f.into()),
            op: Some(op),
            value: Some(v),
            ..Default::default()
        }
    }

    #[test]
    fn facts_walk_lists() {
        let v = json!({"gpus": [{"memoryTotalBytes": 10, "vendor": "nvidia"}, {"memoryTotalBytes": 30, "vendor": "amd"}], "cpu": {"features": ["avx2"]}});
        assert_eq!(fact(&v, "gpus.count"), Some(json!(2)));
        assert_eq!(fact(&v, "gpus.1.memoryTotalBytes"), Some(json!(30)));
        assert_eq!(fact(&v, "gpus.sum.memoryTotalBytes"), Some(json!(40)));
        assert_eq!(fact(&v, "gpus.max.memoryTotalBytes"), Some(json!(30)));
        assert_eq!(fact(&v, "gpus.any.vendor"), Some(json!(["nvidia", "amd"])));
        assert_eq!(fact(&v, "gpus.7.name"), None);
        assert_eq!(fact(&json!({"gpus": []}), "gpus.max.x"), None);
        let (h, why) = evaluate(&cmp("gpus.count", CompareOp::Ge, json!(2)), &v);
        assert!(h, "{why}");
        assert_eq!(why, "gpus.count >= 2 holds (gpus.count is 2)");
        let (h, _) = evaluate(&cmp("cpu.features", CompareOp::Contains, json!("avx2")), &v);
        assert!(h);
        let (h, why) = evaluate(&cmp("cpu.nope", CompareOp::Eq, json!(1)), &v);
        assert!(!h);
        assert_eq!(why, "cpu.nope is not in the profile");
        let not = Predicate {
            not: Some(Box::new(cmp("gpus.count", CompareOp::Eq, json!(0)))),
            ..Default::default()
        };
        assert!(evaluate(&not, &v).0);
        let any = Predicate {
            any: Some(vec![
                cmp("gpus.count", CompareOp::In, json!([5, 6])),
                cmp("gpus.0.vendor", CompareOp::Eq, json!("nvidia")),
            ]),
            ..Default::default()
        };
        assert!(evaluate(&any, &v).0);
    }

    fn profile(gpus: &[(u64, u64)], ram_total: u64, ram_avail: u64) -> HardwareProfile {
        let text = format!(
            "apiVersion: localaistack.io/v1alpha1\nkind: HardwareProfile\nsource: {{type: live}}\ncpu: {{model: x, arch: x86_64, physicalCores: 4, logicalCores: 8, usableCores: 8}}\nmemory: {{totalBytes: {ram_total}, availableBytes: {ram_avail}, usableBytes: {ram_total}}}\nos: {{name: l, kernel: k}}\ngpus: [{}]\n",
            gpus.iter()
                .enumerate()
                .map(|(i, (t, f))| format!("{{index: {i}, vendor: nvidia, name: g{i}, memoryTotalBytes: {t}, memoryFreeBytes: {f}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        HardwareProfile::from_yaml(std::path::Path::new("p.yaml"), &text).unwrap()
    }

    fn tier(caps: Capabilities) -> TierChoice {
        TierChoice {
            policy: "p".into(),
            tier: "t".into(),
            reason: String::new(),
            capabilities: caps,
        }
    }

    fn served(name: &str, size: u64, digest: bool) -> Workload {
        Workload {
            object: format!("module/{name}"),
            runtime: RuntimeKind::Native,
            engine: Some("llama".into()),
            memory_bytes: 0,
            gpu: GpuNeed::Optional,
            model: Some(ServedModel {
                facts: ModelFacts {
                    name: name.into(),
                    size_bytes: Some(size),
                    pinned_digest: digest,
                    gguf: None,
                    path: None,
                },
                context_size: 4096,
                gpu_layers: -1,
            }),
            custom: false,
        }
    }

    const G: u64 = 1 << 30;

    #[test]
    fn admission_checks_runtimes_engines_counts_and_digests() {
        let p = profile(&[], 64 * G, 60 * G);
        let t = tier(Capabilities {
            allowed_runtimes: Some(vec![RuntimeKind::Native]),
            allowed_engines: Some(vec!["llama".into()]),
            max_running_models: Some(1),
            require_digest: Some(true),
            ..Default::default()
        });
        let mut a = Admission::new(&p, &t, &FileSizeEstimator, 0);
        let mut c = served("c", G, true);
        c.runtime = RuntimeKind::Container;
        assert_eq!(
            a.admit(&c),
            Verdict::Refused {
                object: "module/c".into(),
                reason: "module/c runs as a container workload; tier t allows only native".into()
            }
        );
        let mut own = served("own", G, true);
        own.custom = true;
        let locked = tier(Capabilities {
            allow_custom_workloads: Some(false),
            ..Default::default()
        });
        let v = Admission::new(&p, &locked, &FileSizeEstimator, 0).admit(&own);
        assert!(
            matches!(&v, Verdict::Refused { reason, .. } if reason.contains("allows only catalog modules")),
            "{v:?}"
        );
        let mut e = served("e", G, true);
        e.engine = Some("vllm".into());
        assert!(
            matches!(a.admit(&e), Verdict::Refused { reason, .. } if reason == "module/e uses engine vllm; tier t allows engines [llama]")
        );
        assert!(
            matches!(a.admit(&served("u", G, false)), Verdict::Refused { reason, .. } if reason == "module/u serves model u, which has no spec.sha256; tier t requires a pinned digest")
        );
        assert!(a.admit(&served("ok", G, true)).is_admitted());
        assert!(
            matches!(a.admit(&served("two", G, true)), Verdict::Refused { reason, .. } if reason == "module/two would be model number 2 to run; tier t allows at most 1 running models")
        );
        assert!(matches!(
            a.admit_model(&ModelFacts {
                name: "m".into(),
                size_bytes: Some(G),
                pinned_digest: false,
                gguf: None,
                path: None
            }),
            Verdict::Refused { .. }
        ));
    }

    #[test]
    fn admitted_workloads_use_up_vram_and_headroom_is_kept() {
        let p = profile(&[(24 * G, 24 * G)], 64 * G, 64 * G);
        let t = tier(Capabilities {
            vram_headroom_percent: Some(50),
            allow_cpu_fallback: Some(false),
            ..Default::default()
        });
        let mut a = Admission::new(&p, &t, &FileSizeEstimator, 0);
        // 12 GiB free after headroom; each model needs 5 GiB + 0.5 GiB KV + 0.25 GiB.
        assert!(a.admit(&served("a", 5 * G, false)).is_admitted());
        assert!(a.admit(&served("b", 5 * G, false)).is_admitted());
        let v = a.admit(&served("c", 5 * G, false));
        assert_eq!(
            v,
            Verdict::Refused {
                object: "module/c".into(),
                reason: "model c needs 5.8 GiB of VRAM at contextSize 4096; GPU 0 has 512.0 MiB free after headroom; tier t does not allow CPU fallback".into()
            }
        );
        let l = &a.ledgers()[1];
        assert_eq!(
            l.planned_bytes,
            2 * (5 * G + 512 * (1 << 20) + 256 * (1 << 20))
        );
        assert_eq!(l.headroom_bytes, 12 * G);
    }

    #[test]
    fn built_in_policies_decode() {
        let p = default_policies().unwrap();
        assert!(!p.is_empty());
        let names: Vec<&str> = p[0].spec.tiers.iter().map(|t| t.name.as_str()).collect();
        for t in ["multi-gpu", "single-gpu", "cpu-only"] {
            assert!(names.contains(&t), "{names:?}");
        }
    }
}
