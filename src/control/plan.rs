//! The plan: what an apply would cause, as data — ordered actions with their dependencies, the
//! resolved module versions, projected memory per device, and every refusal with its reason.
//!
//! # Guarantees
//! - Deterministic: the same desired objects, state, profile, tier, catalog and lock give the same
//!   [`Plan`] and the same bytes from [`Plan::to_json`] and [`Plan::to_text`] (sorted maps, objects
//!   visited in sorted order, no timestamps).
//! - Nothing here acts: applying a plan is the daemon's job.
//! - A refused object gets no actions, and neither does anything that depends on it (its refusal
//!   says which dependency was refused).
//!
//! # Caveats
//! - Memory "before" is what the profile reports in use (capacity − free); workloads that keep
//!   running are inside that figure. Memory of workloads this change stops is not subtracted
//!   (their placement is not recorded yet), so the projection errs on the full side.
//! - Model sizes come from the Model's status (`sizeBytes`) when the stored spec matches, else
//!   from the file for local sources; an http/hf model not yet downloaded has no size and is
//!   admitted on its module's own footprint (the daemon admits again when the size is known).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::hardware::HardwareProfile;
use super::policy::{
    Admission, DeviceLedger, GpuNeed, MemoryEstimator, ModelFacts, ServedModel, TierChoice,
    Verdict, Workload, human_bytes,
};
use super::resolver::{LockFile, Request, Resolution, ResolveError, resolve};
use super::store::StoredObject;
use crate::api::model::{ModelSource, ModelStatus};
use crate::api::module::{GpuRequest, RuntimeKind};
use crate::api::{Desired, Kind, ModelSpec, ModuleSpec, Spec};
use crate::artifacts::catalog::{Catalog, ManifestVersion};

/// What the plan is computed from.
pub struct PlanInput<'a> {
    /// The objects of the apply (validated).
    pub desired: &'a [Desired],
    /// The objects in the store now.
    pub state: &'a [StoredObject],
    pub profile: &'a HardwareProfile,
    pub tier: &'a TierChoice,
    pub catalog: &'a Catalog,
    pub lock: Option<&'a LockFile>,
    /// Re-resolve, ignoring the lock.
    pub update: bool,
    pub estimator: &'a dyn MemoryEstimator,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ActionKind {
    DownloadModel,
    PullImage,
    CreateContainer,
    StartProcess,
    Stop,
    Remove,
}

impl ActionKind {
    fn words(self) -> &'static str {
        match self {
            ActionKind::DownloadModel => "download model",
            ActionKind::PullImage => "pull image",
            ActionKind::CreateContainer => "create container",
            ActionKind::StartProcess => "start process",
            ActionKind::Stop => "stop",
            ActionKind::Remove => "remove",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    /// 1-based position; `dependsOn` refers to these.
    pub id: u32,
    pub action: ActionKind,
    /// `model/NAME` or `module/NAME`.
    pub object: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    pub object: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedModule {
    /// The catalog module.
    pub module: String,
    pub version: String,
    pub artifact: String,
    /// The Module objects that run it (`module/NAME`); an implied dependency has its own.
    pub instances: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TierSummary {
    pub policy: String,
    pub tier: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceProjection {
    pub device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub capacity_bytes: u64,
    pub headroom_bytes: u64,
    pub before_bytes: u64,
    pub planned_bytes: u64,
    pub after_bytes: u64,
    /// Left for more after headroom.
    pub free_after_headroom_bytes: u64,
}

/// The plan. See the module documentation for its guarantees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Where the profile came from (`live` or the file).
    pub profile_source: String,
    pub tier: TierSummary,
    pub actions: Vec<Action>,
    /// Placement of each admitted workload, by object.
    pub placements: BTreeMap<String, String>,
    pub resolved: Vec<ResolvedModule>,
    pub devices: Vec<DeviceProjection>,
    pub refusals: Vec<Refusal>,
}

impl Plan {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plans serialize") + "\n"
    }

    /// The human form printed by `lasctl plan`.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        s += &format!(
            "Tier: {} (policy {}; profile: {})\n  {}\n",
            self.tier.tier, self.tier.policy, self.profile_source, self.tier.reason
        );
        s += "\nActions:\n";
        if self.actions.is_empty() {
            s += "  (none)\n";
        }
        let w = self
            .actions
            .iter()
            .map(|a| a.object.len())
            .max()
            .unwrap_or(0);
        for a in &self.actions {
            let after = if a.depends_on.is_empty() {
                String::new()
            } else {
                format!(
                    " (after {})",
                    a.depends_on
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            s += &format!(
                "  {:>2}. {:<16} {:<w$}  {}{after}\n",
                a.id,
                a.action.words(),
                a.object,
                a.detail
            );
        }
        if !self.placements.is_empty() {
            s += "\nPlacement:\n";
            for (o, p) in &self.placements {
                s += &format!("  {o}: {p}\n");
            }
        }
        if !self.resolved.is_empty() {
            s += "\nResolved modules:\n";
            for r in &self.resolved {
                s += &format!(
                    "  {} {} ({}) for {}\n",
                    r.module,
                    r.version,
                    r.artifact,
                    r.instances.join(", ")
                );
            }
        }
        s += "\nMemory after the change:\n";
        let rows: Vec<[String; 7]> = self
            .devices
            .iter()
            .map(|d| {
                [
                    match &d.name {
                        Some(n) => format!("{} ({n})", d.device),
                        None => d.device.clone(),
                    },
                    human_bytes(d.capacity_bytes),
                    human_bytes(d.headroom_bytes),
                    human_bytes(d.before_bytes),
                    human_bytes(d.planned_bytes),
                    human_bytes(d.after_bytes),
                    human_bytes(d.free_after_headroom_bytes),
                ]
            })
            .collect();
        let head = [
            "DEVICE", "CAPACITY", "HEADROOM", "BEFORE", "PLANNED", "AFTER", "FREE",
        ];
        let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.len());
            }
        }
        let line = |cells: Vec<&str>| {
            let mut l = String::from("  ");
            for (i, c) in cells.iter().enumerate() {
                l += &format!("{c:<width$}   ", width = widths[i]);
            }
            l.trim_end().to_string() + "\n"
        };
        s += &line(head.to_vec());
        for r in &rows {
            s += &line(r.iter().map(String::as_str).collect());
        }
        s += "\nRefusals:\n";
        if self.refusals.is_empty() {
            s += "  (none)\n";
        }
        for r in &self.refusals {
            s += &format!("  {}: {}\n", r.object, r.reason);
        }
        s
    }
}

/// What a plan produced besides itself: the resolution, for the lock file.
pub struct Planned {
    pub plan: Plan,
    /// `Ok` when every `from` module resolved (then the lock may be written).
    pub resolution: Result<Resolution, ResolveError>,
}

/// The facts admission needs about a Model: size from the store (when its spec is unchanged) or
/// from the local file; the GGUF shape from the store; the path for the GGUF estimate.
pub fn model_facts(name: &str, spec: &ModelSpec, stored: Option<&StoredObject>) -> ModelFacts {
    let status: Option<ModelStatus> = stored
        .filter(|o| o.spec == serde_json::to_value(spec).unwrap_or_default())
        .and_then(|o| serde_json::from_value(o.status.clone()).ok());
    let size = status
        .as_ref()
        .and_then(|s| s.size_bytes)
        .or(match &spec.source {
            ModelSource::File(p) => std::fs::metadata(p).ok().map(|m| m.len()),
            _ => None,
        });
    // The stored blob when the store has one, else the local source file.
    let path = status
        .as_ref()
        .and_then(|s| s.path.clone())
        .map(std::path::PathBuf::from)
        .or(match &spec.source {
            ModelSource::File(p) => Some(p.clone()),
            _ => None,
        });
    ModelFacts {
        name: name.to_string(),
        size_bytes: size,
        pinned_digest: spec.sha256.is_some(),
        gguf: status.and_then(|s| s.gguf),
        path,
    }
}

fn obj(kind: Kind, name: &str) -> String {
    format!("{}/{name}", kind.as_str().to_lowercase())
}

/// An instance of a module to run: a desired Module, or a dependency the resolver implied.
struct Instance {
    name: String,
    spec: ModuleSpec,
    /// The manifest version for `from` modules.
    manifest: Option<ManifestVersion>,
    implied_by: Option<String>,
}

/// The resolver's requests of the `from` Modules of `desired`, sorted by name.
pub fn requests(desired: &[Desired]) -> Vec<Request> {
    let mut out: Vec<Request> = desired
        .iter()
        .filter_map(|d| {
            let Spec::Module(m) = &d.spec else {
                return None;
            };
            Some(Request {
                object: d.name.to_string(),
                from: m.from.as_ref()?.to_string(),
                version: m
                    .version
                    .as_ref()
                    .map(|v| v.0.clone())
                    .unwrap_or(semver::VersionReq::STAR),
            })
        })
        .collect();
    out.sort_by(|a, b| a.object.cmp(&b.object));
    out
}

/// Whether `text` names `module/NAME` (not a longer name that starts with it).
fn names_module(text: &str, name: &str) -> bool {
    let needle = format!("module/{name}");
    text.match_indices(&needle).any(|(i, _)| {
        text[i + needle.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'))
    })
}

/// After the whole set failed with `whole`: the Modules to refuse, each with its own reason, and
/// the resolution of the others. A Module is refused when the error names it (its chain), or
/// when it does not resolve on its own; what remains is resolved again without them. When
/// nothing can be singled out, every `from` Module is refused with `whole`.
fn resolve_apart(
    requests: &[Request],
    input: &PlanInput<'_>,
    whole: &ResolveError,
) -> (Option<Resolution>, BTreeMap<String, String>) {
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut rest: Vec<Request> = requests.to_vec();
    let mut err = whole.clone();
    // Each round removes at least one request, so this ends.
    loop {
        let msg = err.to_string();
        let mut named: Vec<String> = rest
            .iter()
            .filter(|r| names_module(&msg, &r.object))
            .map(|r| r.object.clone())
            .collect();
        if named.is_empty() {
            for r in &rest {
                if let Err(e) = resolve(
                    std::slice::from_ref(r),
                    input.catalog,
                    input.lock,
                    input.update,
                ) {
                    failed.insert(r.object.clone(), e.to_string());
                }
            }
            named = rest
                .iter()
                .filter(|r| failed.contains_key(&r.object))
                .map(|r| r.object.clone())
                .collect();
            if named.is_empty() {
                for r in &rest {
                    failed.insert(r.object.clone(), msg.clone());
                }
                return (None, failed);
            }
        } else {
            for n in &named {
                failed.insert(n.clone(), msg.clone());
            }
        }
        rest.retain(|r| !named.contains(&r.object));
        match resolve(&rest, input.catalog, input.lock, input.update) {
            Ok(r) => return (Some(r), failed),
            Err(e) => err = e,
        }
    }
}

/// Computes the plan. See the module documentation.
pub fn plan(input: &PlanInput<'_>) -> Planned {
    let mut refusals: BTreeMap<String, String> = BTreeMap::new();
    let stored: BTreeMap<(Kind, String), &StoredObject> = input
        .state
        .iter()
        .map(|o| ((o.kind, o.name.to_string()), o))
        .collect();

    // Desired objects by kind, sorted by name.
    let mut models: BTreeMap<String, &ModelSpec> = BTreeMap::new();
    let mut modules: BTreeMap<String, &ModuleSpec> = BTreeMap::new();
    for d in input.desired {
        match &d.spec {
            Spec::Model(m) => {
                models.insert(d.name.to_string(), m);
            }
            Spec::Module(m) => {
                modules.insert(d.name.to_string(), m);
            }
            Spec::Policy(_) => {}
        }
    }
    // A dependsOn cycle (among the stored and desired Modules together) can never start.
    let desired_refs: Vec<&Desired> = input.desired.iter().collect();
    let cycles = crate::control::cycles::cycles(&crate::control::cycles::graph(
        input.state,
        &desired_refs,
        &[],
    ));
    for n in modules.keys() {
        if let Some(c) = crate::control::cycles::cycle_of(&cycles, n) {
            refusals.insert(obj(Kind::Module, n), crate::control::cycles::reason(c));
        }
    }
    // Models the modules may use: desired ones, else stored ones.
    let mut all_models: BTreeMap<String, ModelFacts> = BTreeMap::new();
    for o in input
        .state
        .iter()
        .filter(|o| o.kind == Kind::Model && o.deleted_at.is_none())
    {
        if let Ok(spec) = serde_json::from_value::<ModelSpec>(o.spec.clone()) {
            all_models.insert(
                o.name.to_string(),
                model_facts(o.name.as_str(), &spec, Some(o)),
            );
        }
    }
    for (n, m) in &models {
        all_models.insert(
            n.clone(),
            model_facts(n, m, stored.get(&(Kind::Model, n.clone())).copied()),
        );
    }

    // Resolution of `from` modules.
    let requests = requests(input.desired);
    let resolution = resolve(&requests, input.catalog, input.lock, input.update);
    // When the whole set does not resolve, each Module that fails gets its own reason and the
    // rest are planned without them.
    let (usable, failed) = match &resolution {
        Ok(r) => (Some(r.clone()), BTreeMap::new()),
        Err(e) => resolve_apart(&requests, input, e),
    };
    for (n, reason) in &failed {
        refusals.insert(obj(Kind::Module, n), format!("resolution failed: {reason}"));
    }
    let mut instances: BTreeMap<String, Instance> = BTreeMap::new();
    let mut resolved = Vec::new();
    match &usable {
        Some(r) => {
            for (n, m) in &modules {
                if failed.contains_key(n) {
                    continue;
                }
                let manifest = m.from.as_ref().and_then(|f| {
                    let p = &r.modules[f.as_str()];
                    input
                        .catalog
                        .get(f.as_str())
                        .and_then(|c| c.version(&semver::Version::parse(&p.version).ok()?))
                        .cloned()
                });
                instances.insert(
                    n.clone(),
                    Instance {
                        name: n.clone(),
                        spec: (*m).clone(),
                        manifest,
                        implied_by: None,
                    },
                );
            }
            // Dependencies no desired Module provides run as implied instances named after the
            // catalog module.
            for p in r.modules.values() {
                let provided = modules
                    .values()
                    .any(|m| m.from.as_ref().is_some_and(|f| f.as_str() == p.name));
                if provided {
                    continue;
                }
                let manifest = input
                    .catalog
                    .get(&p.name)
                    .and_then(|c| c.version(&semver::Version::parse(&p.version).ok()?))
                    .cloned();
                let by = p.chain.first().cloned().unwrap_or_default();
                if instances.contains_key(&p.name) {
                    refusals.insert(
                        obj(Kind::Module, &p.name),
                        format!(
                            "{by} needs {} {} as a dependency, but a Module named {} already exists and runs something else: add a Module with from: {}",
                            p.name, p.version, p.name, p.name
                        ),
                    );
                    continue;
                }
                let Ok(from) = crate::api::ObjectName::new(&p.name) else {
                    continue;
                };
                instances.insert(
                    p.name.clone(),
                    Instance {
                        name: p.name.clone(),
                        spec: ModuleSpec {
                            from: Some(from),
                            ..Default::default()
                        },
                        manifest,
                        implied_by: Some(by),
                    },
                );
            }
            for p in r.modules.values() {
                let mut inst: Vec<String> = instances
                    .values()
                    .filter(|i| i.spec.from.as_ref().is_some_and(|f| f.as_str() == p.name))
                    .map(|i| obj(Kind::Module, &i.name))
                    .collect();
                inst.sort();
                resolved.push(ResolvedModule {
                    module: p.name.clone(),
                    version: p.version.clone(),
                    artifact: p.artifact.clone(),
                    instances: inst,
                });
            }
        }
        None => {
            for (n, m) in &modules {
                if m.from.is_some() {
                    refusals
                        .entry(obj(Kind::Module, n))
                        .or_insert_with(|| "resolution failed".into());
                } else {
                    instances.insert(
                        n.clone(),
                        Instance {
                            name: n.clone(),
                            spec: (*m).clone(),
                            manifest: None,
                            implied_by: None,
                        },
                    );
                }
            }
        }
    }

    // Admission: models, then modules in dependency order.
    let running_models = input
        .state
        .iter()
        .filter(|o| {
            o.kind == Kind::Module
                && o.deleted_at.is_none()
                && !modules.contains_key(o.name.as_str())
                && o.spec.get("model").is_some()
                && (o.status.get("pid").is_some() || o.status.get("containerId").is_some())
        })
        .count() as u32;
    let mut adm = Admission::new(input.profile, input.tier, input.estimator, running_models);
    for (n, m) in &models {
        let facts = &all_models[n];
        if let Verdict::Refused { object, reason } = adm.admit_model(facts) {
            refusals.insert(object, reason);
        }
        let _ = m;
    }
    let order = instance_order(&instances, resolution.as_ref().ok());
    let mut placements = BTreeMap::new();
    for name in &order {
        let inst = &instances[name];
        let object = obj(Kind::Module, name);
        if refusals.contains_key(&object) {
            continue;
        }
        if let Some(r) = refused_dependency(inst, &instances, &refusals, &all_models) {
            refusals.insert(object, r);
            continue;
        }
        if let Some(r) = check_requirements(inst, input.profile) {
            refusals.insert(object, r);
            continue;
        }
        let w = workload(inst, &all_models);
        match adm.admit(&w) {
            Verdict::Admitted { placement, .. } => {
                if let Some(p) = placement {
                    placements.insert(object, p.summary);
                }
            }
            Verdict::Refused { object, reason } => {
                refusals.insert(object, reason);
            }
        }
    }

    // Actions.
    let mut actions: Vec<Action> = Vec::new();
    fn push(
        actions: &mut Vec<Action>,
        action: ActionKind,
        object: String,
        detail: String,
        mut deps: Vec<u32>,
    ) -> u32 {
        let id = actions.len() as u32 + 1;
        deps.sort();
        deps.dedup();
        actions.push(Action {
            id,
            action,
            object,
            detail,
            depends_on: deps,
        });
        id
    }
    // Removals first: objects being deleted, and modules whose spec changed (restarted).
    let mut deleting: Vec<&StoredObject> = input
        .state
        .iter()
        .filter(|o| o.deleted_at.is_some())
        .collect();
    deleting.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    for o in deleting {
        let object = obj(o.kind, o.name.as_str());
        if o.kind == Kind::Module {
            let s = push(
                &mut actions,
                ActionKind::Stop,
                object.clone(),
                "deleted".into(),
                vec![],
            );
            push(
                &mut actions,
                ActionKind::Remove,
                object,
                "deleted".into(),
                vec![s],
            );
        } else if o.kind == Kind::Model {
            push(
                &mut actions,
                ActionKind::Remove,
                object,
                "deleted: the blob is kept while another Model uses it".into(),
                vec![],
            );
        }
    }
    let mut model_action: BTreeMap<String, u32> = BTreeMap::new();
    for (n, m) in &models {
        let object = obj(Kind::Model, n);
        if refusals.contains_key(&object) {
            continue;
        }
        let current = stored.get(&(Kind::Model, n.clone())).is_some_and(|o| {
            o.spec == serde_json::to_value(m).unwrap_or_default()
                && o.status.get("digest").is_some()
        });
        if current {
            continue;
        }
        let size = all_models[n]
            .size_bytes
            .map(|b| format!(" ({})", human_bytes(b)))
            .unwrap_or_default();
        let id = push(
            &mut actions,
            ActionKind::DownloadModel,
            object,
            format!("{}{size}", m.source),
            vec![],
        );
        model_action.insert(n.clone(), id);
    }
    let mut start_action: BTreeMap<String, u32> = BTreeMap::new();
    for name in &order {
        let inst = &instances[name];
        let object = obj(Kind::Module, name);
        if refusals.contains_key(&object) {
            continue;
        }
        let stored_mod = stored.get(&(Kind::Module, name.clone()));
        let unchanged = inst.implied_by.is_none()
            && stored_mod.is_some_and(|o| {
                o.deleted_at.is_none()
                    && o.spec == serde_json::to_value(&inst.spec).unwrap_or_default()
                    && (o.status.get("pid").is_some() || o.status.get("containerId").is_some())
            });
        if unchanged || inst.spec.suspend {
            continue;
        }
        let mut deps: Vec<u32> = Vec::new();
        if let Some(o) = stored_mod
            && o.deleted_at.is_none()
            && (o.status.get("pid").is_some() || o.status.get("containerId").is_some())
        {
            deps.push(push(
                &mut actions,
                ActionKind::Stop,
                object.clone(),
                "spec changed: replaced".into(),
                vec![],
            ));
        }
        if let Some(m) = &inst.spec.model
            && let Some(id) = model_action.get(m.as_str())
        {
            deps.push(*id);
        }
        for d in module_deps(inst, &instances) {
            if let Some(id) = start_action.get(&d) {
                deps.push(*id);
            }
        }
        let via = inst
            .implied_by
            .as_ref()
            .map(|b| format!(" (dependency of {b})"))
            .unwrap_or_default();
        let (runtime, image) = runtime_of(inst);
        let id = match (runtime, image) {
            (RuntimeKind::Container, Some(image)) => {
                let pull = push(
                    &mut actions,
                    ActionKind::PullImage,
                    object.clone(),
                    image.clone(),
                    vec![],
                );
                deps.push(pull);
                push(
                    &mut actions,
                    ActionKind::CreateContainer,
                    object,
                    format!("{image}{via}"),
                    deps,
                )
            }
            _ => push(
                &mut actions,
                ActionKind::StartProcess,
                object,
                format!("{}{via}", process_detail(inst)),
                deps,
            ),
        };
        start_action.insert(name.clone(), id);
    }

    let devices = adm.ledgers().into_iter().map(project).collect();
    Planned {
        plan: Plan {
            profile_source: match &input.profile.source.path {
                Some(p) => format!("file {p}"),
                None => "live".into(),
            },
            tier: TierSummary {
                policy: input.tier.policy.clone(),
                tier: input.tier.tier.clone(),
                reason: input.tier.reason.clone(),
            },
            actions,
            placements,
            resolved,
            devices,
            refusals: refusals
                .into_iter()
                .map(|(object, reason)| Refusal { object, reason })
                .collect(),
        },
        resolution,
    }
}

fn project(l: DeviceLedger) -> DeviceProjection {
    DeviceProjection {
        free_after_headroom_bytes: l.free_after_headroom(),
        after_bytes: l.projected_bytes(),
        device: l.device,
        name: l.name,
        capacity_bytes: l.capacity_bytes,
        headroom_bytes: l.headroom_bytes,
        before_bytes: l.baseline_bytes,
        planned_bytes: l.planned_bytes,
    }
}

/// Names of the instances an instance waits for: `dependsOn` Modules and resolver dependencies.
fn module_deps(inst: &Instance, all: &BTreeMap<String, Instance>) -> Vec<String> {
    let mut out: BTreeSet<String> = inst
        .spec
        .depends_on
        .iter()
        .filter(|r| r.kind == Kind::Module)
        .map(|r| r.name.to_string())
        .collect();
    if let Some(m) = &inst.manifest {
        for d in &m.dependencies {
            // The instance that runs the dependency: one with from == d, lowest name.
            if let Some(i) = all
                .values()
                .find(|i| i.spec.from.as_ref().is_some_and(|f| f == &d.name))
            {
                out.insert(i.name.clone());
            }
        }
    }
    out.into_iter()
        .filter(|n| all.contains_key(n) && n != &inst.name)
        .collect()
}

/// Instances in dependency order (dependencies first, ties by name). Instances on a `dependsOn`
/// cycle keep name order after the rest (the resolver reports catalog cycles; `dependsOn` cycles
/// between desired Modules are the daemon's to report).
fn instance_order(all: &BTreeMap<String, Instance>, _r: Option<&Resolution>) -> Vec<String> {
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    loop {
        let ready: Vec<String> = all
            .keys()
            .filter(|n| !done.contains(*n))
            .filter(|n| module_deps(&all[*n], all).iter().all(|d| done.contains(d)))
            .cloned()
            .collect();
        let Some(first) = ready.into_iter().next() else {
            break;
        };
        done.insert(first.clone());
        out.push(first);
    }
    for n in all.keys() {
        if !done.contains(n) {
            out.push(n.clone());
        }
    }
    out
}

fn refused_dependency(
    inst: &Instance,
    all: &BTreeMap<String, Instance>,
    refusals: &BTreeMap<String, String>,
    models: &BTreeMap<String, ModelFacts>,
) -> Option<String> {
    if let Some(m) = &inst.spec.model {
        let o = obj(Kind::Model, m.as_str());
        if refusals.contains_key(&o) {
            return Some(format!("it serves {o}, which is refused"));
        }
        if !models.contains_key(m.as_str()) {
            return Some(format!(
                "it serves {o}, which is neither in this apply nor in the store"
            ));
        }
    }
    for d in module_deps(inst, all) {
        let o = obj(Kind::Module, &d);
        if refusals.contains_key(&o) {
            return Some(format!("it depends on {o}, which is refused"));
        }
    }
    None
}

/// Hardware requirements of a catalog module that admission does not cover: architecture, CPU
/// features, GPU compute capability.
fn check_requirements(inst: &Instance, profile: &HardwareProfile) -> Option<String> {
    let m = inst.manifest.as_ref()?;
    let from = inst
        .spec
        .from
        .as_ref()
        .map(|f| f.to_string())
        .unwrap_or_default();
    let req = &m.requirements;
    if !req.arch.is_empty() && !req.arch.contains(&profile.cpu.arch) {
        return Some(format!(
            "{from} {} runs on {}; this machine is {}",
            m.version,
            req.arch.join(", "),
            profile.cpu.arch
        ));
    }
    for f in &req.cpu_features {
        if !profile.cpu.features.contains(f) {
            return Some(format!(
                "{from} {} needs the CPU feature {f}; this CPU ({}) has [{}]",
                m.version,
                profile.cpu.model,
                profile.cpu.features.join(", ")
            ));
        }
    }
    if let Some(min) = &req.min_compute_capability
        && !profile.gpus.is_empty()
    {
        let parse = |s: &str| -> Option<(u32, u32)> {
            let (a, b) = s.split_once('.')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        let want = parse(min)?;
        let best = profile
            .gpus
            .iter()
            .filter_map(|g| Some((parse(g.compute_capability.as_deref()?)?, g)))
            .max_by_key(|(cc, _)| *cc);
        match best {
            Some((cc, _)) if cc >= want => {}
            Some((_, g)) => {
                return Some(format!(
                    "{from} {} needs a GPU with compute capability {min} or higher; the best here is GPU {} ({}) with {}",
                    m.version,
                    g.index,
                    g.name,
                    g.compute_capability.clone().unwrap_or_default()
                ));
            }
            None => {
                return Some(format!(
                    "{from} {} needs a GPU with compute capability {min}; no GPU here reports one",
                    m.version
                ));
            }
        }
    }
    None
}

fn runtime_of(inst: &Instance) -> (RuntimeKind, Option<String>) {
    if let Some(c) = &inst.spec.container {
        return (RuntimeKind::Container, Some(c.image.clone()));
    }
    if let Some(m) = &inst.manifest
        && let Some(c) = &m.container
    {
        return (RuntimeKind::Container, Some(c.image.clone()));
    }
    (RuntimeKind::Native, None)
}

fn process_detail(inst: &Instance) -> String {
    if let Some(n) = &inst.spec.native {
        return n.command.join(" ");
    }
    if inst.spec.engine.is_some() {
        return "lasctl engine llama".into();
    }
    if let Some(m) = &inst.manifest {
        if m.engine.is_some() {
            return "lasctl engine llama".into();
        }
        if let Some(n) = &m.native {
            return format!("{} ({})", n.command.join(" "), m.artifact());
        }
    }
    String::new()
}

/// How admission sees an instance.
fn workload(inst: &Instance, models: &BTreeMap<String, ModelFacts>) -> Workload {
    let (runtime, _) = runtime_of(inst);
    let s = &inst.spec;
    let mut engine = None;
    let mut memory = 0;
    let mut gpu = GpuNeed::None;
    let mut context = 4096u32;
    let mut gpu_layers = 0i32;
    if let Some(c) = &s.container
        && let Some(r) = &c.resources
    {
        memory = r.memory_bytes.unwrap_or(0);
        if let Some(g) = &r.gpus {
            gpu = match g {
                GpuRequest::Count(0) => GpuNeed::None,
                _ => GpuNeed::Required,
            };
            if gpu == GpuNeed::Required {
                gpu_layers = -1;
            }
        }
    }
    if let Some(e) = &s.engine {
        engine = Some("llama".to_string());
        gpu = GpuNeed::Optional;
        gpu_layers = e.gpu_layers;
        if e.context_size > 0 {
            context = e.context_size;
        }
    }
    if let Some(m) = &inst.manifest {
        memory = memory.max(m.requirements.memory_bytes);
        gpu = m.requirements.gpu;
        if m.engine.is_some() {
            engine = Some("llama".to_string());
        }
        if let Some(h) = &m.model
            && let Some(c) = h.context_size
        {
            context = c;
        }
        gpu_layers = if gpu == GpuNeed::None { 0 } else { -1 };
    }
    let model = s.model.as_ref().and_then(|n| {
        let facts = models.get(n.as_str())?.clone();
        if s.engine.as_ref().is_some_and(|e| e.context_size == 0)
            && let Some(ctx) = facts.gguf.as_ref().and_then(|g| g.context_length)
        {
            context = (ctx as u32).min(4096);
        }
        Some(ServedModel {
            facts,
            context_size: context,
            gpu_layers,
        })
    });
    Workload {
        object: obj(Kind::Module, &inst.name),
        runtime,
        engine,
        memory_bytes: memory,
        gpu,
        model,
        custom: s.native.is_some() || s.container.is_some(),
    }
}
