//! The vocabulary of LocalAIStack: kinds, their specs and statuses, and the strict decoder of desired
//! state. Every layer uses these types; this module performs no IO besides reading the files it is given.

pub mod decode;
pub mod event;
pub mod meta;
pub mod model;
pub mod module;
pub mod plugin;
pub mod policy;
pub mod schema;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use meta::{
    API_VERSION, Condition, ConditionStatus, InputMeta, Kind, ObjectMeta, ObjectName, ObjectRef,
    ResourceVersion,
};
pub use model::{ModelSpec, ModelStatus};
pub use module::{ModuleSpec, ModuleStatus};
pub use plugin::{PluginActivationSpec, PluginActivationStatus, PluginSpec, PluginStatus};
pub use policy::{PolicySpec, PolicyStatus};

/// A typed spec of one of the known kinds.
// Specs are few and short-lived; boxing the Module variant would only add noise at every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    Model(ModelSpec),
    Module(ModuleSpec),
    Policy(PolicySpec),
    Plugin(PluginSpec),
    PluginActivation(PluginActivationSpec),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Model(_) => Kind::Model,
            Spec::Module(_) => Kind::Module,
            Spec::Policy(_) => Kind::Policy,
            Spec::Plugin(_) => Kind::Plugin,
            Spec::PluginActivation(_) => Kind::PluginActivation,
        }
    }

    /// The normalized JSON form stored and compared (defaults filled in).
    pub fn to_json(&self) -> serde_json::Value {
        let r = match self {
            Spec::Model(s) => serde_json::to_value(s),
            Spec::Module(s) => serde_json::to_value(s),
            Spec::Policy(s) => serde_json::to_value(s),
            Spec::Plugin(s) => serde_json::to_value(s),
            Spec::PluginActivation(s) => serde_json::to_value(s),
        };
        r.expect("specs always serialize")
    }

    pub fn from_json(kind: Kind, v: serde_json::Value) -> Result<Spec, serde_json::Error> {
        Ok(match kind {
            Kind::Model => Spec::Model(serde_json::from_value(v)?),
            Kind::Module => Spec::Module(serde_json::from_value(v)?),
            Kind::Policy => Spec::Policy(serde_json::from_value(v)?),
            Kind::Plugin => Spec::Plugin(serde_json::from_value(v)?),
            Kind::PluginActivation => Spec::PluginActivation(serde_json::from_value(v)?),
        })
    }
}

/// Where a document came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub file: String,
    pub line: usize,
}

/// One validated object of desired state: what a user wrote, normalized.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub name: ObjectName,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub spec: Spec,
    pub origin: Origin,
    /// `metadata.resourceVersion` as the input carried it (a `get -o yaml` round trip): the write
    /// is made only if the stored object still has it.
    pub resource_version: Option<u64>,
}

impl Desired {
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }
}

/// The full shape of an object as the system reports it; used for the schemas in `crds/`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resource<S, St> {
    /// Always `localaistack.io/v1alpha1`.
    pub api_version: String,
    pub kind: Kind,
    pub metadata: ObjectMeta,
    pub spec: S,
    /// Written only by controllers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<St>,
}

pub type Model = Resource<ModelSpec, ModelStatus>;
pub type Module = Resource<ModuleSpec, ModuleStatus>;
pub type Policy = Resource<PolicySpec, PolicyStatus>;
pub type Plugin = Resource<PluginSpec, PluginStatus>;
pub type PluginActivation = Resource<PluginActivationSpec, PluginActivationStatus>;
