//! The Plugin and PluginActivation kinds, and the plugin manifest (`plugin.yaml`) a Plugin pins.
//!
//! A `Plugin` pins bytes like a Model: `spec.source` + `spec.sha256` of its manifest; the manifest
//! pins every artifact by sha256. A `PluginActivation` is the user's approval: which contributions
//! run, with which grants (a subset of what the manifest requests), under which limits and scope.
//! Grants are bound to the manifest digest they were checked against.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::meta::{Condition, Kind, ObjectName};
use super::model::{ModelSource, Sha256};

/// The apiVersion of plugin manifests (`plugin.yaml`), versioned apart from the objects.
pub const MANIFEST_API_VERSION: &str = "plugins.localaistack.io/v1alpha1";
/// The kind of a plugin manifest document.
pub const MANIFEST_KIND: &str = "PluginManifest";
/// The version of the plugin API this host implements; a manifest's `hostApi` must match it.
pub const HOST_PLUGIN_API: &str = "1.0.0";

/// Desired state of a Plugin: where its manifest comes from and the sha256 that manifest must have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginSpec {
    /// The manifest (`plugin.yaml`): an absolute path, file://, http(s):// or hf://. Artifacts are
    /// found beside it (relative paths in the manifest).
    pub source: ModelSource,
    /// sha256 of the manifest's bytes. Required: no unverified byte runs.
    pub sha256: Sha256,
}

/// What the controller observed of a Plugin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<u64>,
    /// sha256 of the verified manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<ManifestSummary>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A verified artifact of a Plugin, in the content-addressed store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactStatus {
    pub name: String,
    pub digest: String,
    pub path: String,
    pub size_bytes: u64,
}

/// What a verified manifest says, as the Plugin's status reports it (and activations read it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManifestSummary {
    pub name: String,
    pub version: String,
    pub host_api: String,
    pub runtime: PluginRuntimeType,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_tracks: Vec<Track>,
    /// `seam/kind/id` of every contribution, e.g. `inference/inferenceHooks/guard`.
    pub contributions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<Capability>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bootstrap: Vec<String>,
    /// The panels it declares for the web console.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ui_panels: Vec<UiPanel>,
}

// ---------------------------------------------------------------------------------------------
// The manifest.

/// The body of a plugin manifest (`plugin.yaml`):
/// `apiVersion: plugins.localaistack.io/v1alpha1`, `kind: PluginManifest`, `metadata.name`, and this
/// as `spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ManifestSpec {
    /// The plugin's own version (semver).
    pub version: String,
    /// The plugin API versions it works with, as a semver requirement (e.g. `^1`).
    pub host_api: String,
    #[serde(default)]
    pub target_tracks: Vec<Track>,
    pub runtime: PluginRuntime,
    #[serde(default)]
    pub contributes: Contributions,
    /// Capabilities the plugin asks for; an activation grants a subset.
    #[serde(default)]
    pub requests: Vec<Capability>,
    /// Limits the author expects its contributions to need (activations may set their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Contributions the author proposes to activate by default; honoured only where the active
    /// Policy tier allows auto-activation (never for `exec` plugins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<Bootstrap>,
    /// Where the manifest came from when it was imported from another format (a legacy
    /// `<stem>.plugin.json|toml` text-plugin contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatibility: Option<Compatibility>,
    /// Network hosts (`host` or `host:port`) the plugin's workflow `http` nodes ask to call; an
    /// activation grants a subset in `networkGrants` (none by default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_requests: Vec<String>,
}

/// How an imported plugin maps onto this host (Loci's `compatibility` block).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Compatibility {
    pub source_format: SourceFormat,
    /// `text_plugin`: the executable transforms text (pre_generate / post_generate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_kind: Option<LegacyKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_abi_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub legacy_capabilities: Vec<String>,
    /// How the plugin runs here: `exec` (a supervised process behind the line protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_bridge: Option<PluginRuntimeType>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SourceFormat {
    Native,
    Legacy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LegacyKind {
    #[serde(rename = "text_plugin")]
    TextPlugin,
}

impl ManifestSpec {
    /// Whether this is an imported legacy text plugin (its calls go through the text adapter).
    pub fn is_legacy_text(&self) -> bool {
        self.compatibility
            .as_ref()
            .is_some_and(|c| c.legacy_kind == Some(LegacyKind::TextPlugin))
    }

    /// The `executable` artifact of an `exec` plugin.
    pub fn executable(&self) -> Option<&Artifact> {
        (self.runtime.type_ == PluginRuntimeType::Exec)
            .then(|| {
                self.runtime
                    .artifacts
                    .iter()
                    .find(|a| a.name == "executable")
            })
            .flatten()
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum Track {
    #[serde(rename = "ai_infra")]
    AiInfra,
    #[serde(rename = "ai_agent")]
    AiAgent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginRuntime {
    #[serde(rename = "type")]
    pub type_: PluginRuntimeType,
    /// Files the plugin ships, each pinned by sha256 (a `wasm` runtime needs one named `module`,
    /// an `exec` runtime one named `executable`).
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
    /// For `exec`: how the host talks to the process (default `lines`; see
    /// docs/plugin-protocol.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ExecProtocol>,
}

/// How the host talks to an `exec` plugin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ExecProtocol {
    /// One long-lived process per activation: a handshake, then one JSON object per line.
    #[default]
    Lines,
    /// A process per call, as a Unix filter: input on stdin, output on stdout, exit 0 = ok.
    OneShot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PluginRuntimeType {
    /// A WebAssembly module run in the sandbox (no WASI; only granted host functions).
    Wasm,
    /// Data only (sampling profiles); nothing runs.
    Declarative,
    /// A native executable, supervised by the runtime and called over the line protocol
    /// (docs/plugin-protocol.md). Not sandboxed: it runs only where the active Policy tier
    /// allows its sha256 (`allowedExecPlugins`) and an activation names its contributions.
    Exec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Artifact {
    pub name: String,
    /// Relative to the manifest (a file beside it, or a URL under the same base).
    pub path: String,
    pub sha256: Sha256,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Bootstrap {
    /// Contribution ids.
    #[serde(default)]
    pub activate: Vec<String>,
}

/// What a plugin contributes, by contribution point. Ids are unique within a manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Contributions {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inference_hooks: Vec<InferenceHook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sampling_profiles: Vec<SamplingProfile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_sources: Vec<ModelSourceContribution>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_verifiers: Vec<CodeContribution>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admission_checks: Vec<AdmissionCheck>,
    /// Receivers of the daemon's events (seam `eventBus`), each through a bounded queue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_sinks: Vec<EventSink>,
    /// Facts added to the hardware profile (seam `hardware`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hardware_probes: Vec<HardwareProbeContribution>,
    /// HTML panels for the web console (seam `uiHost`), each one of `runtime.artifacts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ui_panels: Vec<UiPanel>,
    /// `lasctl plugin run PLUGIN COMMAND` and `POST /api/v1/plugins/{name}/commands/{id}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<Command>,
    /// Graphs of typed nodes run by `lasctl workflow run` (the `ai_agent` track).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workflows: Vec<Workflow>,
    /// Node types this plugin's workflows may use (`type: <id>`), each an exported function.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_nodes: Vec<CustomNode>,
}

/// A command: one exported function run on demand with arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Command {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub entry: String,
    /// The subset of JSON Schema of `configSchema`, applied to the argument list (an array of
    /// strings from the command line, any JSON array over HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_schema: Option<serde_json::Value>,
}

/// A node type a plugin contributes to its own workflows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CustomNode {
    pub id: String,
    pub entry: String,
    /// Checked against the `with` of every node of this type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_schema: Option<serde_json::Value>,
}

/// A workflow: typed nodes whose inputs are wired by name to the workflow's input or to other
/// nodes' outputs. The graph must be acyclic; nodes run one at a time in topological order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workflow {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub nodes: Vec<WorkflowNode>,
    /// The node whose output is the run's output.
    pub output: String,
}

/// One node: `type` is `generate`, `hook`, `command`, `http` or a `customNodes` id of the same
/// plugin; `with` is its fixed parameters; `inputs` maps a parameter name to
/// `$input[.path]` or `<nodeId>[.path]` (a dotted path into that JSON; array indexes are numbers).
/// An input wins over a `with` entry of the same name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkflowNode {
    pub id: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub with: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
}

/// The built-in node types.
pub const BUILTIN_NODE_TYPES: [&str; 4] = ["generate", "hook", "command", "http"];

impl WorkflowNode {
    /// The nodes this one reads from (`$input` excluded), in `inputs` order.
    pub fn depends_on(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .inputs
            .values()
            .map(|r| r.split('.').next().unwrap_or_default())
            .filter(|n| *n != "$input")
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// A hook on the daemon's `/v1` path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InferenceHook {
    pub id: String,
    pub stage: HookStage,
    /// The exported function of the `module` artifact.
    pub entry: String,
    /// JSON Schema (a small subset: type, properties, required, items, enum) of the activation's
    /// `config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_schema: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum HookStage {
    /// Before the request is routed: allow, rewrite it, or deny it.
    PreRequest,
    /// After a non-streamed response: allow or rewrite it. Streamed responses pass untouched.
    PostResponse,
}

/// Data merged into `/v1` requests of the scoped models; no code runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SamplingProfile {
    pub id: String,
    /// Token id → bias, as OpenAI's `logit_bias`; a request's own entries win.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub logit_bias: BTreeMap<String, f64>,
    /// Stop sequences added to the request's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// A GBNF grammar, used when the request has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grammar: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
}

/// A URI scheme (e.g. `modelscope`) a plugin resolves to `(url, sha256)`; the host fetches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModelSourceContribution {
    pub id: String,
    pub scheme: String,
    pub entry: String,
}

/// A contribution that is one exported function (e.g. a model verifier).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CodeContribution {
    pub id: String,
    pub entry: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_schema: Option<serde_json::Value>,
}

/// A check of desired state at apply time (CLI and HTTP alike).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdmissionCheck {
    pub id: String,
    pub entry: String,
    /// The kinds it sees; empty: every kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<Kind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_schema: Option<serde_json::Value>,
}

/// A receiver of recorded events. Empty filters match every event; the filters of one sink are
/// and-ed, the values of one filter or-ed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventSink {
    pub id: String,
    pub entry: String,
    /// Kinds of the involved object (e.g. `Module`, `Hardware`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// Event reasons (e.g. `Ready`, `Stalled`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<SinkEventType>,
    /// How many events may wait for this sink before the oldest is dropped (default 256, at most
    /// 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_schema: Option<serde_json::Value>,
}

/// An event's type, as sinks filter on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SinkEventType {
    Normal,
    Warning,
}

impl SinkEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkEventType::Normal => "Normal",
            SinkEventType::Warning => "Warning",
        }
    }
}

impl EventSink {
    pub const DEFAULT_QUEUE: u32 = 256;
    pub const MAX_QUEUE: u32 = 10_000;
}

/// A probe that adds facts to the hardware profile under `plugins.<plugin>.<probe>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HardwareProbeContribution {
    pub id: String,
    pub entry: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_schema: Option<serde_json::Value>,
}

/// An HTML panel the web console serves from a verified artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UiPanel {
    pub id: String,
    pub title: String,
    /// The name of one of `runtime.artifacts` (an HTML file).
    pub artifact: String,
    /// Always `uiHost` (the only seam that shows panels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seam: Option<Seam>,
}

/// The design's seams. Only some accept contributions; the others are inventoried with why not.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Seam {
    Inference,
    Model,
    Hardware,
    Workflow,
    EventBus,
    PluginManager,
    UiHost,
}

impl Seam {
    pub const ALL: [Seam; 7] = [
        Seam::Inference,
        Seam::Model,
        Seam::Hardware,
        Seam::Workflow,
        Seam::EventBus,
        Seam::PluginManager,
        Seam::UiHost,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Seam::Inference => "inference",
            Seam::Model => "model",
            Seam::Hardware => "hardware",
            Seam::Workflow => "workflow",
            Seam::EventBus => "eventBus",
            Seam::PluginManager => "pluginManager",
            Seam::UiHost => "uiHost",
        }
    }
}

/// One contribution of a manifest, whatever its point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Point {
    InferenceHook,
    SamplingProfile,
    ModelSource,
    ModelVerifier,
    AdmissionCheck,
    EventSink,
    HardwareProbe,
    UiPanel,
    Command,
    Workflow,
    CustomNode,
}

impl Point {
    pub fn as_str(self) -> &'static str {
        match self {
            Point::InferenceHook => "inferenceHooks",
            Point::SamplingProfile => "samplingProfiles",
            Point::ModelSource => "modelSources",
            Point::ModelVerifier => "modelVerifiers",
            Point::AdmissionCheck => "admissionChecks",
            Point::EventSink => "eventSinks",
            Point::HardwareProbe => "hardwareProbes",
            Point::UiPanel => "uiPanels",
            Point::Command => "commands",
            Point::Workflow => "workflows",
            Point::CustomNode => "customNodes",
        }
    }
    pub fn seam(self) -> Seam {
        match self {
            Point::InferenceHook | Point::SamplingProfile => Seam::Inference,
            Point::ModelSource | Point::ModelVerifier => Seam::Model,
            Point::AdmissionCheck | Point::Command => Seam::PluginManager,
            Point::Workflow | Point::CustomNode => Seam::Workflow,
            Point::EventSink => Seam::EventBus,
            Point::HardwareProbe => Seam::Hardware,
            Point::UiPanel => Seam::UiHost,
        }
    }
    /// What a failure risks decides the default: guards (pre-request hooks), verifiers, model
    /// sources and admission checks fail closed. Post-response hooks fail open (the host sets
    /// that by stage); data (sampling profiles, panels) cannot fail; event sinks and hardware
    /// probes fail open (a failing sink never blocks anything, a failing probe is a note).
    pub fn default_failure_policy(self) -> FailurePolicy {
        match self {
            Point::SamplingProfile | Point::EventSink | Point::HardwareProbe | Point::UiPanel => {
                FailurePolicy::Ignore
            }
            _ => FailurePolicy::Fail,
        }
    }
}

/// A contribution as the host sees it: its point, id, and entry (none for data).
#[derive(Debug, Clone, PartialEq)]
pub struct ContributionRef<'a> {
    pub point: Point,
    pub id: &'a str,
    pub entry: Option<&'a str>,
    pub config_schema: Option<&'a serde_json::Value>,
}

impl ManifestSpec {
    /// Every contribution, in manifest order within each point.
    pub fn contributions(&self) -> Vec<ContributionRef<'_>> {
        let c = &self.contributes;
        let mut out = Vec::new();
        for h in &c.inference_hooks {
            out.push(ContributionRef {
                point: Point::InferenceHook,
                id: &h.id,
                entry: Some(&h.entry),
                config_schema: h.config_schema.as_ref(),
            });
        }
        for p in &c.sampling_profiles {
            out.push(ContributionRef {
                point: Point::SamplingProfile,
                id: &p.id,
                entry: None,
                config_schema: None,
            });
        }
        for s in &c.model_sources {
            out.push(ContributionRef {
                point: Point::ModelSource,
                id: &s.id,
                entry: Some(&s.entry),
                config_schema: None,
            });
        }
        for v in &c.model_verifiers {
            out.push(ContributionRef {
                point: Point::ModelVerifier,
                id: &v.id,
                entry: Some(&v.entry),
                config_schema: v.config_schema.as_ref(),
            });
        }
        for a in &c.admission_checks {
            out.push(ContributionRef {
                point: Point::AdmissionCheck,
                id: &a.id,
                entry: Some(&a.entry),
                config_schema: a.config_schema.as_ref(),
            });
        }
        for e in &c.event_sinks {
            out.push(ContributionRef {
                point: Point::EventSink,
                id: &e.id,
                entry: Some(&e.entry),
                config_schema: e.config_schema.as_ref(),
            });
        }
        for h in &c.hardware_probes {
            out.push(ContributionRef {
                point: Point::HardwareProbe,
                id: &h.id,
                entry: Some(&h.entry),
                config_schema: h.config_schema.as_ref(),
            });
        }
        for p in &c.ui_panels {
            out.push(ContributionRef {
                point: Point::UiPanel,
                id: &p.id,
                entry: None,
                config_schema: None,
            });
        }
        for x in &c.commands {
            out.push(ContributionRef {
                point: Point::Command,
                id: &x.id,
                entry: Some(&x.entry),
                config_schema: None,
            });
        }
        for w in &c.workflows {
            out.push(ContributionRef {
                point: Point::Workflow,
                id: &w.id,
                entry: None,
                config_schema: None,
            });
        }
        for n in &c.custom_nodes {
            out.push(ContributionRef {
                point: Point::CustomNode,
                id: &n.id,
                entry: Some(&n.entry),
                config_schema: None,
            });
        }
        out
    }

    pub fn contribution(&self, id: &str) -> Option<ContributionRef<'_>> {
        self.contributions().into_iter().find(|c| c.id == id)
    }

    /// What serde cannot check: versions, unique ids, artifacts the runtime needs, bootstrap ids.
    /// Returns a field path under `spec` and a message.
    pub fn validate(&self) -> Result<(), (String, String)> {
        semver::Version::parse(&self.version).map_err(|e| {
            (
                "spec.version".into(),
                format!("{:?} is not a semver version: {e}", self.version),
            )
        })?;
        semver::VersionReq::parse(&self.host_api).map_err(|e| {
            (
                "spec.hostApi".into(),
                format!("{:?} is not a semver requirement: {e}", self.host_api),
            )
        })?;
        let mut names = BTreeSet::new();
        for (i, a) in self.runtime.artifacts.iter().enumerate() {
            if !names.insert(a.name.as_str()) {
                return Err((
                    format!("spec.runtime.artifacts[{i}].name"),
                    format!("artifact {:?} appears twice", a.name),
                ));
            }
            if a.path.starts_with('/') || a.path.split('/').any(|p| p == ".." || p.is_empty()) {
                return Err((
                    format!("spec.runtime.artifacts[{i}].path"),
                    format!(
                        "{:?}: expected a relative path below the manifest's directory",
                        a.path
                    ),
                ));
            }
        }
        let mut ids = BTreeSet::new();
        let contributions = self.contributions();
        for c in &contributions {
            let valid = !c.id.is_empty()
                && c.id.len() <= 63
                && c.id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid {
                return Err((
                    format!("spec.contributes.{}", c.point.as_str()),
                    format!("id {:?}: expected lower-case letters, digits and '-'", c.id),
                ));
            }
            if !ids.insert(c.id) {
                return Err((
                    format!("spec.contributes.{}", c.point.as_str()),
                    format!("contribution id {:?} appears twice", c.id),
                ));
            }
        }
        match self.runtime.type_ {
            PluginRuntimeType::Wasm => {
                if !names.contains("module") {
                    return Err((
                        "spec.runtime.artifacts".into(),
                        "a wasm plugin needs an artifact named \"module\" (its .wasm file)".into(),
                    ));
                }
            }
            PluginRuntimeType::Exec => {
                if !names.contains("executable") {
                    return Err((
                        "spec.runtime.artifacts".into(),
                        "an exec plugin needs an artifact named \"executable\" (the program)"
                            .into(),
                    ));
                }
            }
            PluginRuntimeType::Declarative => {
                if let Some(c) = contributions.iter().find(|c| c.entry.is_some()) {
                    return Err((
                        format!("spec.contributes.{}", c.point.as_str()),
                        format!(
                            "{:?} runs code, which a declarative plugin cannot: use runtime.type wasm",
                            c.id
                        ),
                    ));
                }
            }
        }
        if self.runtime.protocol.is_some() && self.runtime.type_ != PluginRuntimeType::Exec {
            return Err((
                "spec.runtime.protocol".into(),
                "only an exec plugin has a protocol".into(),
            ));
        }
        if self.runtime.type_ == PluginRuntimeType::Exec
            && self
                .bootstrap
                .as_ref()
                .is_some_and(|b| !b.activate.is_empty())
        {
            return Err((
                "spec.bootstrap.activate".into(),
                "an exec plugin is never activated implicitly: name its contributions in a PluginActivation".into(),
            ));
        }
        for (i, s) in self.contributes.model_sources.iter().enumerate() {
            let ok = !s.scheme.is_empty()
                && s.scheme
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            let builtin = ["file", "http", "https", "hf"].contains(&s.scheme.as_str());
            if !ok || builtin {
                return Err((
                    format!("spec.contributes.modelSources[{i}].scheme"),
                    format!(
                        "{:?}: expected a new scheme name (lower case, not file, http, https or hf)",
                        s.scheme
                    ),
                ));
            }
        }
        self.validate_sinks_probes_panels(&names)?;
        for (i, h) in self.network_requests.iter().enumerate() {
            if !valid_host(h) {
                return Err((
                    format!("spec.networkRequests[{i}]"),
                    format!("{h:?}: expected a host name or IP address, optionally with :port"),
                ));
            }
        }
        for (i, n) in self.contributes.custom_nodes.iter().enumerate() {
            if BUILTIN_NODE_TYPES.contains(&n.id.as_str()) {
                return Err((
                    format!("spec.contributes.customNodes[{i}].id"),
                    format!("{:?} is a built-in node type: choose another id", n.id),
                ));
            }
        }
        for (i, w) in self.contributes.workflows.iter().enumerate() {
            self.validate_workflow(w, &format!("spec.contributes.workflows[{i}]"))?;
        }
        if let Some(b) = &self.bootstrap {
            for (i, id) in b.activate.iter().enumerate() {
                if !ids.contains(id.as_str()) {
                    return Err((
                        format!("spec.bootstrap.activate[{i}]"),
                        format!("no contribution has id {id:?}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Event sinks' filters and queue sizes, and panels that name a shipped artifact.
    fn validate_sinks_probes_panels(
        &self,
        artifacts: &BTreeSet<&str>,
    ) -> Result<(), (String, String)> {
        for (i, s) in self.contributes.event_sinks.iter().enumerate() {
            let at = |f: &str| format!("spec.contributes.eventSinks[{i}].{f}");
            for (j, k) in s.kinds.iter().enumerate() {
                if !is_upper_camel(k, 63) {
                    return Err((
                        format!("{}[{j}]", at("kinds")),
                        format!("{k:?}: expected a kind in UpperCamelCase (e.g. Module)"),
                    ));
                }
            }
            for (j, r) in s.reasons.iter().enumerate() {
                if !is_upper_camel(r, MAX_REASON_LEN) {
                    return Err((
                        format!("{}[{j}]", at("reasons")),
                        format!(
                            "{r:?}: expected a reason in UpperCamelCase of at most {MAX_REASON_LEN} characters"
                        ),
                    ));
                }
            }
            if let Some(q) = s.queue_size
                && !(1..=EventSink::MAX_QUEUE).contains(&q)
            {
                return Err((
                    at("queueSize"),
                    format!("{q}: expected 1 to {}", EventSink::MAX_QUEUE),
                ));
            }
        }
        for (i, p) in self.contributes.ui_panels.iter().enumerate() {
            let at = |f: &str| format!("spec.contributes.uiPanels[{i}].{f}");
            if p.title.trim().is_empty() || p.title.chars().count() > 80 {
                return Err((at("title"), "expected 1 to 80 characters".into()));
            }
            if !artifacts.contains(p.artifact.as_str()) {
                return Err((
                    at("artifact"),
                    format!(
                        "{:?} is not one of runtime.artifacts (it has: {})",
                        p.artifact,
                        if artifacts.is_empty() {
                            "none".to_string()
                        } else {
                            artifacts.iter().copied().collect::<Vec<_>>().join(", ")
                        }
                    ),
                ));
            }
            let a = self
                .runtime
                .artifacts
                .iter()
                .find(|a| a.name == p.artifact)
                .expect("checked above");
            if !(a.path.ends_with(".html") || a.path.ends_with(".htm")) {
                return Err((
                    at("artifact"),
                    format!("{:?} ({}): a panel is an .html file", p.artifact, a.path),
                ));
            }
            if let Some(seam) = p.seam
                && seam != Seam::UiHost
            {
                return Err((
                    at("seam"),
                    format!("{}: panels belong to the uiHost seam", seam.as_str()),
                ));
            }
        }
        Ok(())
    }

    /// A workflow's nodes: ids unique, types known (built in or a custom node of this manifest),
    /// the parameters each built-in type needs, every wiring reference resolvable, the output a
    /// node. Cycles are found by the caller (`control::workflows::check_graphs`, the resolver's
    /// Tarjan), which `api` may not call.
    fn validate_workflow(&self, w: &Workflow, at: &str) -> Result<(), (String, String)> {
        let mut ids = BTreeSet::new();
        if w.nodes.is_empty() {
            return Err((
                format!("{at}.nodes"),
                "a workflow needs at least one node".into(),
            ));
        }
        for (j, n) in w.nodes.iter().enumerate() {
            let valid = !n.id.is_empty()
                && n.id.len() <= 63
                && !n.id.starts_with('$')
                && n.id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err((
                    format!("{at}.nodes[{j}].id"),
                    format!("{:?}: expected letters, digits, '-' and '_'", n.id),
                ));
            }
            if !ids.insert(n.id.as_str()) {
                return Err((
                    format!("{at}.nodes[{j}].id"),
                    format!("node id {:?} appears twice", n.id),
                ));
            }
        }
        for (j, n) in w.nodes.iter().enumerate() {
            let here = format!("{at}.nodes[{j}]");
            let custom = self
                .contributes
                .custom_nodes
                .iter()
                .any(|c| c.id == n.type_);
            if !BUILTIN_NODE_TYPES.contains(&n.type_.as_str()) && !custom {
                let mut known: Vec<String> =
                    BUILTIN_NODE_TYPES.iter().map(|s| s.to_string()).collect();
                known.extend(self.contributes.custom_nodes.iter().map(|c| c.id.clone()));
                return Err((
                    format!("{here}.type"),
                    format!(
                        "unknown node type {:?}: expected one of {} (custom nodes of this plugin included)",
                        n.type_,
                        known.join(", ")
                    ),
                ));
            }
            for (name, r) in &n.inputs {
                let (node, _) = r.split_once('.').unwrap_or((r.as_str(), ""));
                if r.ends_with('.') || r.contains("..") {
                    return Err((
                        format!("{here}.inputs.{name}"),
                        format!("{r:?}: expected $input[.path] or <nodeId>[.path]"),
                    ));
                }
                if node == n.id {
                    return Err((
                        format!("{here}.inputs.{name}"),
                        format!("{r:?}: a node cannot read its own output"),
                    ));
                }
                if node != "$input" && !ids.contains(node) {
                    return Err((
                        format!("{here}.inputs.{name}"),
                        format!(
                            "{r:?} refers to no node: expected $input[.path] or one of {}",
                            ids.iter().copied().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
            let has = |k: &str| n.with.contains_key(k) || n.inputs.contains_key(k);
            let string_with = |k: &str| -> Result<(), (String, String)> {
                match n.with.get(k) {
                    Some(v) if v.is_string() => Ok(()),
                    None if n.inputs.contains_key(k) => Ok(()),
                    _ => Err((
                        format!("{here}.with.{k}"),
                        format!("a {} node needs {k} (a string)", n.type_),
                    )),
                }
            };
            match n.type_.as_str() {
                "generate" => {
                    string_with("model")?;
                    if !has("prompt") && !has("messages") {
                        return Err((
                            format!("{here}.with"),
                            "a generate node needs prompt or messages (in with or inputs)".into(),
                        ));
                    }
                }
                "hook" => {
                    if !has("plugin") {
                        string_with("activation")?;
                    }
                    string_with("contribution")?;
                }
                "command" => string_with("command")?,
                "http" => {
                    string_with("url")?;
                    match n.with.get("method").and_then(|m| m.as_str()) {
                        None | Some("GET") | Some("POST") => {}
                        Some(m) => {
                            return Err((
                                format!("{here}.with.method"),
                                format!("{m:?}: expected GET or POST"),
                            ));
                        }
                    }
                }
                _ => {
                    if let Some(schema) = self
                        .contributes
                        .custom_nodes
                        .iter()
                        .find(|c| c.id == n.type_)
                        .and_then(|c| c.config_schema.as_ref())
                    {
                        check_config(
                            &serde_json::Value::Object(n.with.clone()),
                            schema,
                            &format!("{here}.with"),
                        )?;
                    }
                }
            }
        }
        if !ids.contains(w.output.as_str()) {
            return Err((
                format!("{at}.output"),
                format!("{:?} is not a node of this workflow", w.output),
            ));
        }
        Ok(())
    }

    /// Whether this host's plugin API satisfies the manifest's `hostApi`.
    pub fn compatible(&self) -> Result<(), String> {
        let req = semver::VersionReq::parse(&self.host_api).map_err(|e| e.to_string())?;
        let host = semver::Version::parse(HOST_PLUGIN_API).expect("host api version");
        if req.matches(&host) {
            Ok(())
        } else {
            Err(format!(
                "the plugin needs plugin API {}, this host implements {HOST_PLUGIN_API}",
                self.host_api
            ))
        }
    }

    pub fn summary(&self, name: &str) -> ManifestSummary {
        ManifestSummary {
            name: name.to_string(),
            version: self.version.clone(),
            host_api: self.host_api.clone(),
            runtime: self.runtime.type_,
            target_tracks: self.target_tracks.clone(),
            contributions: self
                .contributions()
                .iter()
                .map(|c| format!("{}/{}/{}", c.point.seam().as_str(), c.point.as_str(), c.id))
                .collect(),
            requests: self.requests.clone(),
            bootstrap: self
                .bootstrap
                .as_ref()
                .map(|b| b.activate.clone())
                .unwrap_or_default(),
            ui_panels: self.contributes.ui_panels.clone(),
        }
    }
}

/// The longest event reason accepted (Kubernetes' `reason` is short, UpperCamelCase).
pub const MAX_REASON_LEN: usize = 128;

/// `UpperCamelCase`: an ASCII capital, then letters and digits, at most `max` characters.
pub fn is_upper_camel(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_uppercase()
        && b.iter().all(|c| c.is_ascii_alphanumeric())
}

// ---------------------------------------------------------------------------------------------
// Activations.

/// What a plugin may be granted: the sandbox's host function sets.
pub use crate::sandbox::Capability;

/// Desired state of a PluginActivation: the user's approval of some contributions of a Plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginActivationSpec {
    /// The Plugin (by name).
    pub plugin_ref: ObjectName,
    /// Contribution ids to enable; none by default.
    #[serde(default)]
    pub contributions: Vec<String>,
    /// Capabilities granted: a subset of the manifest's `requests`.
    #[serde(default)]
    pub grants: Vec<Capability>,
    #[serde(default)]
    pub limits: Limits,
    /// `Fail` (deny / refuse when the plugin fails) or `Ignore` (carry on without it). Default per
    /// contribution point: guards, verifiers and admission checks fail closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<FailurePolicy>,
    /// Higher runs first within a contribution point (ties by name).
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub scope: Scope,
    /// Configuration handed to every call, checked against the contribution's `configSchema`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// Network hosts granted to the plugin's workflow `http` nodes: a subset of the manifest's
    /// `networkRequests`. None by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_grants: Vec<String>,
}

/// `host` or `host:port`: a DNS name or an IP address (IPv6 in brackets with a port).
pub fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((a, p)) if !a.contains(':') || a.starts_with('[') => (a, Some(p)),
        _ => (h, None),
    };
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return false;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    !host.is_empty()
        && host.len() <= 253
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
}

/// Whether `grant` (`host` or `host:port`) allows a request to `host` on `port`.
pub fn host_granted(grant: &str, host: &str, port: u16) -> bool {
    let norm = |s: &str| {
        s.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase()
    };
    match grant.rsplit_once(':') {
        Some((g, p)) if !g.contains(':') || g.starts_with('[') => {
            norm(g) == norm(host) && p.parse::<u16>().ok() == Some(port)
        }
        _ => norm(grant) == norm(host),
    }
}

/// Per-call limits of a sandboxed contribution (unset: the host's defaults).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Fuel per call (about one unit per WebAssembly instruction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

impl Limits {
    pub const MAX_MEMORY_BYTES: u64 = 1 << 30;
    pub const MAX_TIMEOUT_MS: u64 = 60_000;

    pub fn validate(&self, path: &str) -> Result<(), (String, String)> {
        if let Some(m) = self.memory_bytes
            && !(65536..=Self::MAX_MEMORY_BYTES).contains(&m)
        {
            return Err((
                format!("{path}.memoryBytes"),
                format!("{m}: expected 65536 (one page) to 1 GiB"),
            ));
        }
        if self.fuel == Some(0) {
            return Err((format!("{path}.fuel"), "expected more than 0".into()));
        }
        if let Some(t) = self.timeout_ms
            && !(1..=Self::MAX_TIMEOUT_MS).contains(&t)
        {
            return Err((
                format!("{path}.timeoutMs"),
                format!("{t}: expected 1 to 60000"),
            ));
        }
        if self.max_concurrent == Some(0) {
            return Err((
                format!("{path}.maxConcurrent"),
                "expected at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FailurePolicy {
    Fail,
    Ignore,
}

/// Where an activation applies. Empty lists match everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Scope {
    /// Modules by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<ObjectName>,
    #[serde(default)]
    pub models: ModelScope,
}

/// Models by name, or by what their GGUF header says.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModelScope {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<ObjectName>,
    /// e.g. `llama`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// e.g. `Q4_K_M`, `F16`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quantizations: Vec<String>,
}

impl Scope {
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
            && self.models.names.is_empty()
            && self.models.architectures.is_empty()
            && self.models.quantizations.is_empty()
    }

    /// Whether a request served by `module` from `model` (with its GGUF architecture and
    /// quantization, when known) is in scope.
    pub fn matches(
        &self,
        module: Option<&str>,
        model: Option<&str>,
        architecture: Option<&str>,
        quantization: Option<&str>,
    ) -> bool {
        let m = &self.models;
        let any = |list: &[String], v: Option<&str>| {
            list.is_empty() || v.is_some_and(|v| list.iter().any(|x| x.eq_ignore_ascii_case(v)))
        };
        let names = |list: &[ObjectName], v: Option<&str>| {
            list.is_empty() || v.is_some_and(|v| list.iter().any(|x| x.as_str() == v))
        };
        names(&self.modules, module)
            && names(&m.names, model)
            && any(&m.architectures, architecture)
            && any(&m.quantizations, quantization)
    }
}

impl PluginActivationSpec {
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.limits.validate("spec.limits")?;
        let mut seen = BTreeSet::new();
        for (i, c) in self.contributions.iter().enumerate() {
            if !seen.insert(c) {
                return Err((
                    format!("spec.contributions[{i}]"),
                    format!("{c:?} appears twice"),
                ));
            }
        }
        let mut g = BTreeSet::new();
        for (i, c) in self.grants.iter().enumerate() {
            if !g.insert(c) {
                return Err((format!("spec.grants[{i}]"), format!("{c} appears twice")));
            }
        }
        for (i, h) in self.network_grants.iter().enumerate() {
            if !valid_host(h) {
                return Err((
                    format!("spec.networkGrants[{i}]"),
                    format!("{h:?}: expected a host name or IP address, optionally with :port"),
                ));
            }
        }
        Ok(())
    }

    /// Checks the activation against a verified manifest: contributions that exist, grants the
    /// manifest requests, config the contribution's schema accepts. Field paths under `spec`.
    pub fn check_against(&self, manifest: &ManifestSpec) -> Result<(), (String, String)> {
        for (i, id) in self.contributions.iter().enumerate() {
            if manifest.contribution(id).is_none() {
                let known: Vec<String> = manifest
                    .contributions()
                    .iter()
                    .map(|c| c.id.to_string())
                    .collect();
                return Err((
                    format!("spec.contributions[{i}]"),
                    format!(
                        "plugin {} has no contribution {id:?} (it has: {})",
                        self.plugin_ref,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }
        for (i, g) in self.grants.iter().enumerate() {
            if !manifest.requests.contains(g) {
                return Err((
                    format!("spec.grants[{i}]"),
                    format!(
                        "grants {g}, which plugin {} does not request (it requests: {}): a grant must be one of the manifest's requests",
                        self.plugin_ref,
                        list(&manifest.requests)
                    ),
                ));
            }
        }
        for (i, h) in self.network_grants.iter().enumerate() {
            if !manifest.network_requests.contains(h) {
                return Err((
                    format!("spec.networkGrants[{i}]"),
                    format!(
                        "grants network host {h}, which plugin {} does not request (it requests: {}): a grant must be one of the manifest's networkRequests",
                        self.plugin_ref,
                        if manifest.network_requests.is_empty() {
                            "none".to_string()
                        } else {
                            manifest.network_requests.join(", ")
                        }
                    ),
                ));
            }
        }
        if let Some(config) = &self.config {
            for id in &self.contributions {
                if let Some(schema) = manifest.contribution(id).and_then(|c| c.config_schema) {
                    check_config(config, schema, "spec.config")?;
                }
            }
        }
        Ok(())
    }
}

pub fn list(caps: &[Capability]) -> String {
    if caps.is_empty() {
        "nothing".into()
    } else {
        caps.iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Checks `value` against the subset of JSON Schema plugin authors use for configuration: `type`,
/// `properties`, `required`, `additionalProperties: false`, `items`, `enum`, `minimum`, `maximum`.
/// Other keywords are ignored (documented in docs/plugins.md).
pub fn check_config(
    value: &serde_json::Value,
    schema: &serde_json::Value,
    path: &str,
) -> Result<(), (String, String)> {
    use serde_json::Value;
    let fail = |m: String| Err((path.to_string(), m));
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "null" => value.is_null(),
            _ => true,
        };
        if !ok {
            return fail(format!("expected {t}, found {}", json_type(value)));
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        return fail(format!(
            "{value} is not one of {}",
            serde_json::to_string(options).unwrap_or_default()
        ));
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            return fail(format!("{n} is below the minimum {min}"));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            return fail(format!("{n} is above the maximum {max}"));
        }
    }
    if let Some(obj) = value.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        if let Some(req) = schema.get("required").and_then(Value::as_array) {
            for r in req.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    return fail(format!("missing field {r:?}"));
                }
            }
        }
        for (k, v) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check_config(v, s, &format!("{path}.{k}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err((
                        format!("{path}.{k}"),
                        format!(
                            "unknown field, expected one of {}",
                            props
                                .map(|p| p.keys().cloned().collect::<Vec<_>>().join(", "))
                                .unwrap_or_default()
                        ),
                    ));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            check_config(v, items, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

fn json_type(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// What the controller observed of an activation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginActivationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<u64>,
    /// The manifest digest the grants were checked against; what serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub effective_grants: Vec<Capability>,
    /// What the manifest requests and this activation does not grant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ungranted_requests: Vec<Capability>,
    /// Network hosts granted and requested by the bound manifest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub effective_network_grants: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_subset_of_json_schema() {
        let schema = json!({"type": "object", "additionalProperties": false, "required": ["patterns"],
            "properties": {"patterns": {"type": "array", "items": {"type": "string"}}}});
        assert!(check_config(&json!({"patterns": ["a"]}), &schema, "spec.config").is_ok());
        assert_eq!(
            check_config(&json!({"patterns": [1]}), &schema, "spec.config")
                .unwrap_err()
                .0,
            "spec.config.patterns[0]"
        );
        assert!(
            check_config(&json!({}), &schema, "spec.config")
                .unwrap_err()
                .1
                .contains("missing field")
        );
        assert_eq!(
            check_config(&json!({"patterns": [], "x": 1}), &schema, "spec.config")
                .unwrap_err()
                .0,
            "spec.config.x"
        );
    }

    fn manifest(yaml: &str) -> ManifestSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    const BASE: &str = "version: 1.0.0\nhostApi: \"^1\"\nruntime:\n  type: declarative\n  artifacts:\n  - {name: panel, path: panel.html, sha256: 0000000000000000000000000000000000000000000000000000000000000000}\n  - {name: data, path: data.json, sha256: 0000000000000000000000000000000000000000000000000000000000000000}\n";

    #[test]
    fn sinks_probes_and_panels_are_validated_with_their_field_paths() {
        // A declarative plugin may ship a panel (no code runs).
        let ok = manifest(&format!(
            "{BASE}contributes:\n  uiPanels: [{{id: p, title: Status, artifact: panel}}]\n"
        ));
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(
            ok.summary("x").contributions,
            vec!["uiHost/uiPanels/p".to_string()]
        );
        let cases = [
            (
                "  uiPanels: [{id: p, title: S, artifact: missing}]",
                "spec.contributes.uiPanels[0].artifact",
            ),
            (
                "  uiPanels: [{id: p, title: S, artifact: data}]",
                "spec.contributes.uiPanels[0].artifact",
            ),
            (
                "  uiPanels: [{id: p, title: S, artifact: panel, seam: hardware}]",
                "spec.contributes.uiPanels[0].seam",
            ),
            (
                "  uiPanels: [{id: p, title: '', artifact: panel}]",
                "spec.contributes.uiPanels[0].title",
            ),
            // Sinks and probes run code: not in a declarative plugin.
            (
                "  eventSinks: [{id: s, entry: on_event}]",
                "spec.contributes.eventSinks",
            ),
            (
                "  hardwareProbes: [{id: h, entry: probe}]",
                "spec.contributes.hardwareProbes",
            ),
        ];
        for (c, path) in cases {
            let m = manifest(&format!("{BASE}contributes:\n{c}\n"));
            assert_eq!(m.validate().unwrap_err().0, path, "{c}");
        }
        let wasm = BASE
            .replace("declarative", "wasm")
            .replace("name: data", "name: module");
        for (c, path) in [
            (
                "  eventSinks: [{id: s, entry: e, reasons: [not-camel]}]",
                "spec.contributes.eventSinks[0].reasons[0]",
            ),
            (
                "  eventSinks: [{id: s, entry: e, kinds: [module]}]",
                "spec.contributes.eventSinks[0].kinds[0]",
            ),
            (
                "  eventSinks: [{id: s, entry: e, queueSize: 0}]",
                "spec.contributes.eventSinks[0].queueSize",
            ),
        ] {
            let m = manifest(&format!("{wasm}contributes:\n{c}\n"));
            assert_eq!(m.validate().unwrap_err().0, path, "{c}");
        }
        let m = manifest(&format!(
            "{wasm}contributes:\n  eventSinks: [{{id: s, entry: e, types: [Warning], reasons: [Stalled], queueSize: 8}}]\n  hardwareProbes: [{{id: h, entry: probe}}]\n"
        ));
        assert_eq!(m.validate(), Ok(()));
        assert_eq!(
            m.contributions()
                .iter()
                .map(|c| (c.point.seam(), c.point.default_failure_policy()))
                .collect::<Vec<_>>(),
            vec![
                (Seam::EventBus, FailurePolicy::Ignore),
                (Seam::Hardware, FailurePolicy::Ignore)
            ]
        );
    }

    #[test]
    fn scope_empty_matches_all_and_lists_narrow() {
        let all = Scope::default();
        assert!(all.matches(Some("chat"), Some("tiny"), None, None));
        let s = Scope {
            models: ModelScope {
                architectures: vec!["llama".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(s.matches(None, Some("tiny"), Some("LLAMA"), None));
        assert!(!s.matches(None, Some("tiny"), Some("qwen2"), None));
        assert!(!s.matches(None, Some("tiny"), None, None));
    }
}
