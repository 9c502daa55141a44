//! The Module kind: software that runs (a container, a native process or the built-in engine).

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::meta::{Condition, ObjectName, ObjectRef};

/// Desired state of a Module. Exactly one of `from`, `container`, `native` and `engine` is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModuleSpec {
    /// A module of the catalog in `manifests/`; the resolver picks and locks the exact version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ObjectName>,
    /// A semver requirement for `from`, e.g. `^0.6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<VersionReq>,
    /// Run a container through Docker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSpec>,
    /// Run a native process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<NativeSpec>,
    /// Run the built-in llama.cpp engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineSpec>,
    /// The Model this module serves; the module waits until it is Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ObjectName>,
    /// Objects that must be Ready before this module starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<ObjectRef>,
    /// How readiness is probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// When true, keep whatever runs as it is and reconcile nothing.
    #[serde(default)]
    pub suspend: bool,
}

/// What runs a module.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Container,
    Native,
}

impl ModuleSpec {
    /// The names of the workload fields that are set, in contract order.
    pub fn workload_fields(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.from.is_some() {
            v.push("from");
        }
        if self.container.is_some() {
            v.push("container");
        }
        if self.native.is_some() {
            v.push("native");
        }
        if self.engine.is_some() {
            v.push("engine");
        }
        v
    }

    /// Checks what serde cannot: the one-of rule and field combinations.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let set = self.workload_fields();
        if set.len() != 1 {
            let found = if set.is_empty() {
                "none".to_string()
            } else {
                set.join(" and ")
            };
            return Err((
                "spec".into(),
                format!(
                    "a Module needs exactly one of from, container, native, engine; found {found}"
                ),
            ));
        }
        if self.version.is_some() && self.from.is_none() {
            return Err((
                "spec.version".into(),
                "version is only meaningful with from".into(),
            ));
        }
        if let Some(n) = &self.native
            && n.command.is_empty()
        {
            return Err((
                "spec.native.command".into(),
                "command must name the program to run (an argv array, at least one element)".into(),
            ));
        }
        if let Some(c) = &self.container {
            if c.image.trim().is_empty() {
                return Err((
                    "spec.container.image".into(),
                    "image must not be empty".into(),
                ));
            }
            check_env(&c.env, "spec.container.env")?;
            for (i, v) in c.volumes.iter().enumerate() {
                for (field, p) in [
                    ("hostPath", &v.host_path),
                    ("containerPath", &v.container_path),
                ] {
                    if !p.is_absolute() {
                        return Err((
                            format!("spec.container.volumes[{i}].{field}"),
                            format!(
                                "{} is a relative path: expected an absolute path (relative to what would depend on where the daemon runs)",
                                p.display()
                            ),
                        ));
                    }
                }
            }
            if let Some(cpus) = c.resources.as_ref().and_then(|r| r.cpus)
                && !(cpus.is_finite() && cpus > 0.0)
            {
                return Err((
                    "spec.container.resources.cpus".into(),
                    format!(
                        "{cpus} is not a CPU limit: expected a positive number of cores, e.g. 2 or 0.5"
                    ),
                ));
            }
        }
        if let Some(n) = &self.native {
            check_env(&n.env, "spec.native.env")?;
            if let Some(w) = &n.working_dir
                && !w.is_absolute()
            {
                return Err((
                    "spec.native.workingDir".into(),
                    format!(
                        "{} is a relative path: expected an absolute path",
                        w.display()
                    ),
                ));
            }
        }
        if self.engine.is_some() && self.model.is_none() {
            return Err((
                "spec.model".into(),
                "an engine module needs the Model it serves: set spec.model".into(),
            ));
        }
        if let Some(h) = &self.health {
            h.validate()?;
        }
        Ok(())
    }
}

/// Environment variable names as Kubernetes accepts them (letters, digits, '_', '-' and '.', not
/// starting with a digit); values without NUL bytes, which no process environment can hold.
fn check_env(env: &BTreeMap<String, String>, path: &str) -> Result<(), (String, String)> {
    for (k, v) in env {
        let ok = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            && !k.as_bytes()[0].is_ascii_digit();
        if !ok {
            return Err((
                format!("{path}.{k}"),
                format!(
                    "{k:?} is not an environment variable name: expected letters, digits, '_', '-' and '.', not starting with a digit"
                ),
            ));
        }
        if v.contains('\0') {
            return Err((
                format!("{path}.{k}"),
                "the value contains a NUL byte, which no environment can hold".into(),
            ));
        }
    }
    Ok(())
}

/// A semver requirement such as `^0.6` or `>=1.2, <2`.
#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[schemars(with = "String", description = "a semver requirement, e.g. ^0.6")]
pub struct VersionReq(pub semver::VersionReq);

impl Serialize for VersionReq {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for VersionReq {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        semver::VersionReq::parse(&s).map(VersionReq).map_err(|e| {
            serde::de::Error::custom(format!("{s:?} is not a semver requirement: {e}"))
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerSpec {
    /// Image reference, e.g. `busybox:1.36` or `repo@sha256:...`.
    pub image: String,
    /// Replaces the image's entrypoint (argv).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Replaces the image's cmd (argv).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortMapping {
    /// Port inside the container.
    pub container_port: u16,
    /// Port on the host; bound on 127.0.0.1 unless a policy allows more. Omitted: same as containerPort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeMount {
    pub host_path: PathBuf,
    pub container_path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    /// CPU limit in cores (fractions allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// GPUs: `all`, a count, or a list of device ids/UUIDs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<GpuRequest>,
}

/// `all`, a count, or a list of device ids.
#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[schemars(
    with = "serde_json::Value",
    description = "\"all\", a count, or a list of device ids"
)]
pub enum GpuRequest {
    All,
    Count(u32),
    Devices(Vec<String>),
}

impl Serialize for GpuRequest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GpuRequest::All => s.serialize_str("all"),
            GpuRequest::Count(n) => s.serialize_u32(*n),
            GpuRequest::Devices(d) => d.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for GpuRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = GpuRequest;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"all\", a count of GPUs, or a list of device ids")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<GpuRequest, E> {
                if v == "all" {
                    Ok(GpuRequest::All)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<GpuRequest, E> {
                u32::try_from(v)
                    .map(GpuRequest::Count)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<GpuRequest, E> {
                u32::try_from(v)
                    .map(GpuRequest::Count)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<GpuRequest, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = a.next_element::<String>()? {
                    v.push(s);
                }
                Ok(GpuRequest::Devices(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NativeSpec {
    /// argv of the program: never a shell string.
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EngineType {
    #[default]
    Llama,
}

/// The built-in llama.cpp engine. `0` means "choose for me" where noted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EngineSpec {
    #[serde(rename = "type")]
    pub type_: EngineType,
    /// Context window in tokens; 0: the model's own (capped at 4096).
    #[serde(default)]
    pub context_size: u32,
    /// Layers offloaded to the GPU; -1: all that fit.
    #[serde(default = "minus_one")]
    pub gpu_layers: i32,
    /// Decode threads; 0: the physical cores this process may use.
    #[serde(default)]
    pub threads: u32,
    /// Parallel request slots.
    #[serde(default = "one")]
    pub parallel: u32,
    /// TCP port on 127.0.0.1; 0: pick a free one.
    #[serde(default)]
    pub port: u16,
}

fn minus_one() -> i32 {
    -1
}
fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// Exactly one of `http`, `tcp` and `exec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    /// argv run inside the container (or on the host for native modules); exit 0 is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// Seconds between probes (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<u32>,
    /// Seconds before one probe counts as failed (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    /// Consecutive failures before a live workload is restarted (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
}

impl HealthSpec {
    fn validate(&self) -> Result<(), (String, String)> {
        let n = self.http.is_some() as u8 + self.tcp.is_some() as u8 + self.exec.is_some() as u8;
        if n != 1 {
            return Err((
                "spec.health".into(),
                "health needs exactly one of http, tcp, exec".into(),
            ));
        }
        if let Some(e) = &self.exec
            && e.is_empty()
        {
            return Err((
                "spec.health.exec".into(),
                "exec needs at least the program".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpProbe {
    pub path: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpProbe {
    pub port: u16,
}

/// The exact module and version the resolver picked for `from`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedModule {
    pub module: String,
    pub version: String,
}

/// Observed state of a Module, written only by controllers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<ResolvedModule>,
}
