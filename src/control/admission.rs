//! Admission for the daemon: the control layer's policy verdict on one Module, computed over the
//! whole desired state the same way `lasctl plan` computes it.

use std::sync::Arc;

use crate::api::{Desired, Origin, Spec};
use crate::artifacts::catalog::Catalog;

use super::controllers::module::Admission;
use super::hardware::HardwareProfile;
use super::plan::{PlanInput, plan};
use super::policy::{FileSizeEstimator, NamedPolicy, default_policies, select_tier};
use super::store::StoredObject;

/// Admits Modules with the active tier of the policies in the store (the shipped defaults when
/// there are none) against one hardware profile.
///
/// # Guarantees
/// - The verdict for a Module is the one `lasctl plan` gives for the same state and profile:
///   objects are admitted in the plan's deterministic order, so verdicts do not flap.
pub struct PolicyAdmission {
    pub profile: HardwareProfile,
    pub catalog: Catalog,
    /// Plugin hardware probes, whose facts are added to `profile` for the state at hand.
    pub probes: Option<super::probes::ProbeRunner>,
}

impl PolicyAdmission {
    /// The profile with the facts of the probes active in `all`.
    fn profile_for(&self, all: &[StoredObject]) -> std::borrow::Cow<'_, HardwareProfile> {
        match &self.probes {
            Some(p) => std::borrow::Cow::Owned(p.profile(&self.profile, all)),
            None => std::borrow::Cow::Borrowed(&self.profile),
        }
    }
}

fn desired_of(o: &StoredObject) -> Option<Desired> {
    Some(Desired {
        name: o.name.clone(),
        labels: o.labels.clone(),
        annotations: o.annotations.clone(),
        spec: o.typed_spec().ok()?,
        origin: Origin {
            file: "<store>".into(),
            line: 0,
        },
        resource_version: None,
    })
}

/// The policies in the store (the shipped defaults when there are none).
fn live_policies(live: &[&StoredObject]) -> Result<Vec<NamedPolicy>, String> {
    let policies: Vec<NamedPolicy> = live
        .iter()
        .filter_map(|o| match o.typed_spec() {
            Ok(Spec::Policy(spec)) => Some(NamedPolicy {
                name: o.name.to_string(),
                spec,
            }),
            _ => None,
        })
        .collect();
    if policies.is_empty() {
        return default_policies().map_err(|e| e.to_string());
    }
    Ok(policies)
}

impl Admission for PolicyAdmission {
    fn plugin_auto_activation(&self, all: &[StoredObject]) -> Option<String> {
        let live: Vec<&StoredObject> = all.iter().filter(|o| o.deleted_at.is_none()).collect();
        let tier = select_tier(&live_policies(&live).ok()?, &self.profile_for(all)).ok()?;
        (tier.capabilities.allow_plugin_auto_activation == Some(true)).then_some(tier.tier)
    }

    fn exec_plugin_allowed(&self, all: &[StoredObject], sha256: &str) -> Result<String, String> {
        let live: Vec<&StoredObject> = all.iter().filter(|o| o.deleted_at.is_none()).collect();
        let tier = select_tier(&live_policies(&live)?, &self.profile).map_err(|e| e.to_string())?;
        match &tier.capabilities.allowed_exec_plugins {
            Some(list) if list.iter().any(|s| s.as_str() == sha256) => Ok(tier.tier),
            _ => Err(format!(
                "executable sha256:{sha256} is not in the tier's allowedExecPlugins (tier {}): exec plugins are not sandboxed, so each executable is allowed by digest",
                tier.tier
            )),
        }
    }

    fn max_model_bytes(&self, all: &[StoredObject]) -> Option<(u64, String)> {
        let live: Vec<&StoredObject> = all.iter().filter(|o| o.deleted_at.is_none()).collect();
        let tier = select_tier(&live_policies(&live).ok()?, &self.profile_for(all)).ok()?;
        Some((tier.capabilities.max_model_bytes?, tier.tier))
    }

    fn admit(&self, module: &StoredObject, all: &[StoredObject]) -> Result<(), String> {
        let live: Vec<&StoredObject> = all.iter().filter(|o| o.deleted_at.is_none()).collect();
        let policies = live_policies(&live)?;
        let profile = self.profile_for(all);
        let tier = select_tier(&policies, &profile).map_err(|e| e.to_string())?;
        // Resolution is global in a plan: one unresolvable `from:` module would refuse every other.
        // So the other `from:` modules stay out of this module's plan (their own admission covers
        // them); everything else is in it.
        let is_from =
            |o: &StoredObject| matches!(o.typed_spec(), Ok(Spec::Module(m)) if m.from.is_some());
        let desired: Vec<Desired> = live
            .iter()
            .filter(|o| o.name == module.name && o.kind == module.kind || !is_from(o))
            .filter_map(|o| desired_of(o))
            .collect();
        let planned = plan(&PlanInput {
            desired: &desired,
            state: all,
            profile: &profile,
            tier: &tier,
            catalog: &self.catalog,
            lock: None,
            update: false,
            estimator: &FileSizeEstimator,
        });
        let me = format!("module/{}", module.name);
        let model = match module.typed_spec() {
            Ok(Spec::Module(m)) => m.model.map(|n| format!("model/{n}")),
            _ => None,
        };
        match planned
            .plan
            .refusals
            .iter()
            .find(|r| r.object == me || Some(&r.object) == model.as_ref())
        {
            Some(r) => Err(format!("tier {}: {}", tier.tier, r.reason)),
            None => Ok(()),
        }
    }
}

/// The daemon's admission: the live (or `LAS_HARDWARE_PROFILE`) profile, with the facts of the
/// active plugin hardware probes of `plugins` when given, and the catalog.
pub fn for_daemon(
    plugins: Option<Arc<super::plugins::PluginHost>>,
) -> Result<Arc<dyn Admission>, String> {
    let profile = super::hardware::probe_from_env()
        .probe()
        .map_err(|e| e.to_string())?;
    let loaded = Catalog::from_env().map_err(|e| e.to_string())?;
    for e in &loaded.rejected {
        tracing::warn!(error = %e, "manifest ignored");
    }
    Ok(Arc::new(PolicyAdmission {
        profile,
        catalog: loaded.catalog,
        probes: plugins.map(super::probes::ProbeRunner::new),
    }))
}
