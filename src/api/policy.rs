//! The Policy kind: what this hardware may run, as tiers of declarative predicates.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::meta::Condition;
use super::module::RuntimeKind;

/// Desired state of a Policy: an ordered list of tiers. Across policies, higher `priority` is
/// evaluated first (ties by name); within a policy, tiers in order. The first tier whose `when`
/// holds applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    #[serde(default)]
    pub priority: i32,
    pub tiers: Vec<Tier>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tier {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// When this tier applies; omitted: always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Predicate>,
    #[serde(default)]
    pub capabilities: Capabilities,
}

/// A predicate over the hardware profile: exactly one of `all`, `any`, `not`, or a comparison
/// (`fact`, `op`, `value`). Facts are dotted paths into the profile, e.g. `gpus.count`,
/// `memory.totalBytes`, `cpu.physicalCores`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Predicate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<Vec<Predicate>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<Vec<Predicate>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<Predicate>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<CompareOp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}

impl Predicate {
    /// Checks the one-form rule recursively; returns the offending path suffix and a message.
    pub fn validate(&self, path: &str) -> Result<(), (String, String)> {
        let forms = self.all.is_some() as u8
            + self.any.is_some() as u8
            + self.not.is_some() as u8
            + self.fact.is_some() as u8;
        if forms != 1 {
            return Err((
                path.into(),
                "a predicate needs exactly one of all, any, not, or fact (with op and value)"
                    .into(),
            ));
        }
        if self.fact.is_some() != self.op.is_some() || self.fact.is_some() != self.value.is_some() {
            return Err((
                path.into(),
                "a comparison needs fact, op and value together".into(),
            ));
        }
        for (name, list) in [("all", &self.all), ("any", &self.any)] {
            for (i, p) in list.iter().flatten().enumerate() {
                p.validate(&format!("{path}.{name}[{i}]"))?;
            }
        }
        if let Some(p) = &self.not {
            p.validate(&format!("{path}.not"))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CompareOp {
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    /// The fact is one of the listed values.
    #[serde(rename = "in")]
    In,
    /// The fact (a list or string) contains the value.
    #[serde(rename = "contains")]
    Contains,
}

/// What a tier grants. Omitted fields do not restrict.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_runtimes: Option<Vec<RuntimeKind>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_engines: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running_models: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_headroom_percent: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_headroom_percent: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_cpu_fallback: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_digest: Option<bool>,
    /// Allow host ports on addresses other than 127.0.0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_non_loopback_ports: Option<bool>,
    /// Allow hf:// sources without a pinned revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_floating_revisions: Option<bool>,
    /// Allow Modules that bring their own command or image (`native:`, `container:`). `false`
    /// allows only catalog modules (`from:`) and the built-in engine, and the HTTP API may then
    /// neither write such Modules nor change Policies (only `lasctl apply` on this machine can).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_custom_workloads: Option<bool>,
    /// Honour a Plugin manifest's `bootstrap`: the contributions its author proposes run without a
    /// PluginActivation, with no grants and default limits (default: false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_plugin_auto_activation: Option<bool>,
    /// The sha256 digests of the executables `exec` plugins may run (they are not sandboxed).
    /// Absent or empty: none may (default deny).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_exec_plugins: Option<Vec<super::model::Sha256>>,
}

/// Observed state of a Policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
