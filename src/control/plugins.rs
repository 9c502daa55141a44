//! Plugins as the control layer sees them: manifests read back from verified blobs, activations
//! checked against them at apply time, and the set of active contributions the seams call.
//!
//! # Guarantees
//! - A manifest is only ever read from a blob whose sha256 is the Plugin's `spec.sha256` (or, for
//!   an activation still bound to an older digest, that digest): no unverified byte is parsed
//!   as a manifest or run as code.
//! - An activation is checked against the manifest at apply time when the manifest can be known
//!   then (a local file with the pinned digest, or the stored Plugin's verified manifest); it is
//!   always checked again by its controller.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::api::decode::{InputError, InputErrors, InputFile, decode_kind_of};
use crate::api::model::{ModelSource, Sha256};
use crate::api::plugin::{MANIFEST_API_VERSION, MANIFEST_KIND, ManifestSpec};
use crate::api::{Desired, Kind, ObjectName, PluginSpec, Spec};
use crate::control::store::{Store, StoreError, StoredObject};
use crate::home::LasHome;

/// A verified, parsed manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub name: ObjectName,
    pub spec: ManifestSpec,
    pub digest: Sha256,
}

/// What the plugin host reads from the store: every Plugin and PluginActivation.
pub fn plugin_objects(store: &Store) -> Result<Vec<StoredObject>, StoreError> {
    let mut v = store.list(Some(Kind::Plugin), &BTreeMap::new())?;
    v.extend(store.list(Some(Kind::PluginActivation), &BTreeMap::new())?);
    Ok(v)
}

/// Parses manifest bytes; errors name `file`, line, column and field.
/// A legacy text-plugin contract (`<stem>.plugin.json|toml`, recognised by its content) is
/// imported into the manifest it maps to (`control::legacy_plugins`).
pub fn parse_manifest(file: &str, bytes: &[u8], digest: Sha256) -> Result<Manifest, InputErrors> {
    if crate::control::legacy_plugins::sniff(bytes).is_some() {
        let c = crate::control::legacy_plugins::parse_contract(file, bytes)?;
        let (name, spec) = crate::control::legacy_plugins::to_manifest(file, &c)?;
        return Ok(Manifest { name, spec, digest });
    }
    let f = InputFile {
        name: file.to_string(),
        bytes: bytes.to_vec(),
    };
    let mut docs = decode_kind_of(
        &f,
        MANIFEST_API_VERSION,
        MANIFEST_KIND,
        |m: &ManifestSpec| {
            m.validate()?;
            crate::control::workflows::check_graphs(m)
        },
    )?;
    if docs.len() != 1 {
        return Err(InputErrors(vec![InputError {
            file: file.to_string(),
            line: 1,
            column: 1,
            path: String::new(),
            message: format!(
                "expected exactly one {MANIFEST_KIND} document, found {}",
                docs.len()
            ),
        }]));
    }
    let (name, spec, _) = docs.remove(0);
    Ok(Manifest { name, spec, digest })
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Where the blob with `digest` lives in the model store.
pub fn blob_path(home: &LasHome, digest: &str) -> PathBuf {
    crate::artifacts::models::blob_path_in(home, digest)
}

/// Reads the manifest in the blob `digest` (already verified by the store when it was written).
pub fn read_manifest_blob(home: &LasHome, digest: &str, label: &str) -> Option<Manifest> {
    let d = Sha256::new(digest).ok()?;
    let bytes = std::fs::read(blob_path(home, digest)).ok()?;
    // The store's blobs are read-only and verified when written; check again, it is small.
    if sha256_hex(&bytes) != d.as_str() {
        return None;
    }
    parse_manifest(label, &bytes, d).ok()
}

/// The manifest a Plugin pins, as far as it can be known without fetching: a local source file
/// with the pinned digest, or the verified manifest of the stored Plugin. `None`: not knowable
/// now (a remote source not fetched yet, a file that differs) — the controller decides later.
pub fn knowable_manifest(
    home: &LasHome,
    name: &str,
    spec: &PluginSpec,
    stored: Option<&StoredObject>,
) -> Result<Option<Manifest>, InputErrors> {
    if let Some(o) = stored
        && o.status.get("digest").and_then(|d| d.as_str()) == Some(spec.sha256.as_str())
        && let Some(m) = read_manifest_blob(home, spec.sha256.as_str(), name)
    {
        return Ok(Some(m));
    }
    local_manifest(spec)
}

/// The manifest of a Plugin whose source is a local file with the pinned digest.
pub fn local_manifest(spec: &PluginSpec) -> Result<Option<Manifest>, InputErrors> {
    if let ModelSource::File(p) = &spec.source
        && let Ok(bytes) = read_small(p)
        && sha256_hex(&bytes) == spec.sha256.as_str()
    {
        return parse_manifest(&p.display().to_string(), &bytes, spec.sha256.clone()).map(Some);
    }
    Ok(None)
}

/// What `las.lock` records of the Plugins among `objects`.
pub fn lock_entries(objects: &[Desired]) -> Vec<crate::control::resolver::PluginLock> {
    objects
        .iter()
        .filter_map(|d| match &d.spec {
            Spec::Plugin(p) => Some(crate::control::resolver::PluginLock {
                name: d.name.to_string(),
                source: p.source.to_string(),
                sha256: p.sha256.to_string(),
                artifacts: local_manifest(p)
                    .ok()
                    .flatten()
                    .map(|m| {
                        m.spec
                            .runtime
                            .artifacts
                            .iter()
                            .map(|a| (a.name.clone(), a.sha256.to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            _ => None,
        })
        .collect()
}

fn read_small(p: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(p)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut buf = Vec::new();
    f.take(crate::api::decode::MAX_DOC_BYTES as u64 + 1)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// Checks every PluginActivation of an apply against the manifest of its Plugin (from the same
/// apply or the store): contributions that exist, grants within the manifest's requests, config
/// that the contribution's schema accepts. Errors point at the activation's document.
pub fn check_activations(
    home: &LasHome,
    store: &Store,
    objects: &[Desired],
) -> Result<(), InputErrors> {
    let applied: BTreeMap<&str, &PluginSpec> = objects
        .iter()
        .filter_map(|d| match &d.spec {
            Spec::Plugin(p) => Some((d.name.as_str(), p)),
            _ => None,
        })
        .collect();
    let mut errors = Vec::new();
    errors.extend(scheme_conflicts(home, store, objects, &applied));
    for d in objects {
        let Spec::PluginActivation(a) = &d.spec else {
            continue;
        };
        let plugin = a.plugin_ref.as_str();
        let stored = match store.get(Kind::Plugin, plugin) {
            Ok(o) => Some(o),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => {
                errors.push(at(d, "spec.pluginRef", e.to_string()));
                continue;
            }
        };
        let spec = match (applied.get(plugin), &stored) {
            (Some(s), _) => (*s).clone(),
            (None, Some(o)) => match o.typed_spec() {
                Ok(Spec::Plugin(s)) => s,
                _ => continue,
            },
            // A Plugin applied later: its activation waits (PluginNotReady) and is checked then.
            (None, None) => continue,
        };
        match knowable_manifest(home, plugin, &spec, stored.as_ref()) {
            Ok(Some(m)) => {
                if let Err((path, message)) = a.check_against(&m.spec) {
                    errors.push(at(d, &path, message));
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(at(
                d,
                "spec.pluginRef",
                format!("the manifest of plugin {plugin} is invalid: {e}"),
            )),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(InputErrors(errors))
    }
}

/// A URI scheme and a workflow name are each claimed by one activation only: two activations
/// enabling `modelSources` for the same scheme, or workflows with the same id (stored, or in this
/// apply), are refused at the applied one's contribution.
fn scheme_conflicts(
    home: &LasHome,
    store: &Store,
    objects: &[Desired],
    applied: &BTreeMap<&str, &PluginSpec>,
) -> Vec<InputError> {
    // (contribution index, claim key): `scheme/<s>` or `workflow/<id>`.
    let claims_of = |plugin: &str, contributions: &[String]| -> Vec<(usize, String)> {
        let stored = store.get(Kind::Plugin, plugin).ok();
        let spec = match (applied.get(plugin), &stored) {
            (Some(s), _) => (*s).clone(),
            (None, Some(o)) => match o.typed_spec() {
                Ok(Spec::Plugin(s)) => s,
                _ => return Vec::new(),
            },
            (None, None) => return Vec::new(),
        };
        let Ok(Some(m)) = knowable_manifest(home, plugin, &spec, stored.as_ref()) else {
            return Vec::new();
        };
        contributions
            .iter()
            .enumerate()
            .filter_map(|(i, id)| {
                let c = &m.spec.contributes;
                c.model_sources
                    .iter()
                    .find(|s| &s.id == id)
                    .map(|s| (i, format!("scheme/{}", s.scheme)))
                    .or_else(|| {
                        c.workflows
                            .iter()
                            .find(|w| &w.id == id)
                            .map(|w| (i, format!("workflow/{}", w.id)))
                    })
            })
            .collect()
    };
    let applied_names: Vec<&str> = objects
        .iter()
        .filter(|d| d.kind() == Kind::PluginActivation)
        .map(|d| d.name.as_str())
        .collect();
    // claim → the activation holding it (stored ones not re-applied first).
    let mut claims: BTreeMap<String, String> = BTreeMap::new();
    for o in store
        .list(Some(Kind::PluginActivation), &BTreeMap::new())
        .unwrap_or_default()
    {
        if applied_names.contains(&o.name.as_str()) || o.deleted_at.is_some() {
            continue;
        }
        if let Ok(Spec::PluginActivation(a)) = o.typed_spec() {
            for (_, key) in claims_of(a.plugin_ref.as_str(), &a.contributions) {
                claims.entry(key).or_insert_with(|| o.name.to_string());
            }
        }
    }
    let mut errors = Vec::new();
    for d in objects {
        let Spec::PluginActivation(a) = &d.spec else {
            continue;
        };
        for (i, key) in claims_of(a.plugin_ref.as_str(), &a.contributions) {
            match claims.get(&key) {
                Some(other) if other != d.name.as_str() => {
                    let message = match key.split_once('/') {
                        Some(("scheme", scheme)) => format!(
                            "the scheme {scheme}:// is already resolved by plugin activation {other}: one activation per scheme"
                        ),
                        _ => format!(
                            "the workflow {} is already enabled by plugin activation {other}: workflow names are unique across activations",
                            key.trim_start_matches("workflow/")
                        ),
                    };
                    errors.push(at(d, &format!("spec.contributions[{i}]"), message))
                }
                _ => {
                    claims.insert(key, d.name.to_string());
                }
            }
        }
    }
    errors
}

fn at(d: &Desired, path: &str, message: String) -> InputError {
    InputError {
        file: d.origin.file.clone(),
        line: d.origin.line,
        column: 1,
        path: path.to_string(),
        message,
    }
}

// ---------------------------------------------------------------------------------------------
// The active contributions, as the seams call them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::api::plugin::{
    FailurePolicy, HookStage, PluginActivationSpec, Point, Scope, check_config,
};
use crate::runtime::plugin_exec::{ExecPlugins, ExecSpec};
use crate::sandbox::{Engine, Grants, Limits, Module, SandboxError};

/// One enabled code contribution of a Ready activation.
#[derive(Clone)]
pub struct ActiveCode {
    pub activation: String,
    pub plugin: String,
    pub id: String,
    pub point: Point,
    /// For inference hooks.
    pub stage: Option<HookStage>,
    /// For admission checks: the kinds it sees (empty: all).
    pub kinds: Vec<Kind>,
    /// For model sources: the URI scheme it resolves.
    pub scheme: Option<String>,
    pub entry: String,
    /// The compiled module; `None` for data contributions (sampling profiles).
    pub module: Option<Arc<dyn Module>>,
    /// For sampling profiles.
    pub profile: Option<crate::api::plugin::SamplingProfile>,
    pub limits: Limits,
    pub failure: FailurePolicy,
    pub priority: i32,
    pub scope: Scope,
    pub config: Value,
    /// For event sinks: the filters and queue size.
    pub sink: Option<crate::api::plugin::EventSink>,
    /// For UI panels.
    pub panel: Option<crate::api::plugin::UiPanel>,
    /// Whether the activation grants `content` (an event sink then sees messages).
    pub content: bool,
    /// The manifest digest the activation is bound to (hardware probes cache by it).
    pub digest: String,
    /// For workflows: the graph.
    pub workflow: Option<crate::api::plugin::Workflow>,
    /// For workflows: the plugin's custom node types (id, entry), run with this activation's
    /// module, limits and config.
    pub custom_nodes: Vec<(String, String)>,
    /// Network hosts the activation grants (and the bound manifest requests), for `http` nodes.
    pub network: Vec<String>,
}

/// Calls, failures and fuel of one activation, and its breaker.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub calls: u64,
    pub failures: u64,
    pub consecutive_failures: u32,
    #[serde(skip)]
    fuel: Vec<u64>,
    pub fuel_p50: u64,
    pub fuel_p95: u64,
    /// `closed` (calls run), `open` (skipped after repeated failures, per the failure policy).
    pub breaker: &'static str,
    #[serde(skip)]
    open_until: Option<Instant>,
    pub last_error: Option<String>,
    /// Event sinks: events handed to the plugin and answered.
    pub delivered: u64,
    /// Event sinks: events dropped from a full queue (the oldest first).
    pub dropped: u64,
}

/// After this many failures in a row an activation's breaker opens for [`BREAKER_OPEN`].
pub const BREAKER_THRESHOLD: u32 = 5;
pub const BREAKER_OPEN: Duration = Duration::from_secs(30);
const FUEL_SAMPLES: usize = 256;

impl Stats {
    fn record(&mut self, r: &Result<crate::sandbox::CallOutcome, SandboxError>) {
        self.calls += 1;
        match r {
            Ok(o) => {
                self.consecutive_failures = 0;
                if self.fuel.len() == FUEL_SAMPLES {
                    self.fuel.remove(0);
                }
                self.fuel.push(o.fuel_used);
                let mut f = self.fuel.clone();
                f.sort_unstable();
                self.fuel_p50 = f[f.len() / 2];
                self.fuel_p95 = f[(f.len() * 95 / 100).min(f.len() - 1)];
                if self.open_until.is_some_and(|t| Instant::now() >= t) {
                    self.open_until = None;
                }
            }
            Err(e) => {
                self.failures += 1;
                self.consecutive_failures += 1;
                self.last_error = Some(e.to_string());
                if self.consecutive_failures >= BREAKER_THRESHOLD {
                    self.open_until = Some(Instant::now() + BREAKER_OPEN);
                }
            }
        }
        self.breaker = if self.is_open() { "open" } else { "closed" };
    }
    fn is_open(&self) -> bool {
        self.open_until.is_some_and(|t| Instant::now() < t)
    }
}

/// The outcome of a guard chain (pre-request hooks, admission checks).
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Go on, with the (possibly rewritten) value.
    Allow(Value),
    /// Refused by `activation`'s contribution `id`.
    Deny {
        activation: String,
        id: String,
        reason: String,
        /// A field path, for admission checks.
        field: Option<String>,
    },
}

/// A compiled module is reused for the same bytes (sha256) and grants.
type CompiledKey = (String, Vec<crate::sandbox::Capability>);

/// The plugin host: compiled modules by digest and grants, the active contributions built from the
/// store (rebuilt when the store's change counter moves), and per-activation statistics.
pub struct PluginHost {
    home: LasHome,
    engine: Arc<dyn Engine>,
    compiled: Mutex<HashMap<CompiledKey, Arc<dyn Module>>>,
    active: Mutex<Option<(u64, Arc<Vec<ActiveCode>>)>>,
    stats: Mutex<HashMap<String, Stats>>,
    /// Where `exec` plugins run (the runtime's); none: their contributions are not served.
    exec: Option<Arc<dyn ExecPlugins>>,
}

impl PluginHost {
    pub fn new(home: LasHome, engine: Arc<dyn Engine>) -> Self {
        PluginHost {
            home,
            engine,
            compiled: Mutex::default(),
            active: Mutex::default(),
            stats: Mutex::default(),
            exec: None,
        }
    }

    /// Serves `exec` plugins through `exec` (the daemon's supervised bridge, or the CLI's
    /// one-shot runner).
    pub fn with_exec(mut self, exec: Arc<dyn ExecPlugins>) -> Self {
        self.exec = Some(exec);
        self
    }

    /// A host for one CLI command: the home the store is in, the real sandbox.
    pub fn for_cli(store: &Store) -> PluginHost {
        let home = store
            .path()
            .parent()
            .map(LasHome::at)
            .unwrap_or_else(|| LasHome::at("."));
        let exec = Arc::new(crate::runtime::plugin_exec::OneShotExec::new(&home));
        PluginHost::new(home, Arc::new(crate::sandbox::WasmiEngine::new())).with_exec(exec)
    }

    pub fn stats(&self) -> HashMap<String, Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts events an activation's sinks took (`delivered`) or lost from a full queue
    /// (`dropped`).
    pub fn count_sink(&self, activation: &str, delivered: u64, dropped: u64) {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let s = stats.entry(activation.to_string()).or_default();
        s.delivered += delivered;
        s.dropped += dropped;
    }

    /// Whether an activation's breaker is open now.
    pub fn breaker_open(&self, activation: &str) -> bool {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(activation)
            .is_some_and(Stats::is_open)
    }

    /// The home whose blobs this host reads.
    pub fn home(&self) -> &LasHome {
        &self.home
    }

    /// The active code contributions at change counter `version`, if they were built for it.
    pub fn cached(&self, version: u64) -> Option<Arc<Vec<ActiveCode>>> {
        match &*self.active.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((v, a)) if *v == version => Some(a.clone()),
            _ => None,
        }
    }

    /// The active code contributions for the store state `objects` at change counter `version`
    /// (cached per version).
    pub fn active(&self, version: u64, objects: &[StoredObject]) -> Arc<Vec<ActiveCode>> {
        if let Some((v, a)) = &*self.active.lock().unwrap_or_else(|p| p.into_inner())
            && *v == version
        {
            return a.clone();
        }
        let a = Arc::new(self.build(objects));
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = Some((version, a.clone()));
        a
    }

    /// The active code contributions of `objects`, uncached (compiled modules are reused).
    pub fn build(&self, objects: &[StoredObject]) -> Vec<ActiveCode> {
        let mut out = Vec::new();
        // A Ready Plugin's `bootstrap` contributions, where its status says the tier allows them:
        // an implied activation `<plugin>/bootstrap` with no grants and default limits.
        for p in objects
            .iter()
            .filter(|o| o.kind == Kind::Plugin && o.deleted_at.is_none())
        {
            let ready = p
                .condition("Ready")
                .is_some_and(|(s, _, _)| s == crate::api::ConditionStatus::True);
            let (Some(active), Some(digest)) = (
                p.status["bootstrap"]["active"].as_array(),
                p.status["digest"].as_str(),
            ) else {
                continue;
            };
            let Some(m) = read_manifest_blob(&self.home, digest, p.name.as_str()).filter(|_| ready)
            else {
                continue;
            };
            let Ok(plugin_ref) = p.name.as_str().parse() else {
                continue;
            };
            let spec = PluginActivationSpec {
                plugin_ref,
                contributions: active
                    .iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect(),
                grants: Vec::new(),
                limits: Default::default(),
                failure_policy: None,
                priority: 0,
                scope: Scope::default(),
                config: None,
                network_grants: Vec::new(),
            };
            let module = match m.spec.runtime.type_ {
                crate::api::plugin::PluginRuntimeType::Declarative => None,
                crate::api::plugin::PluginRuntimeType::Wasm => match self.compile(&m, &[]) {
                    Some(c) => Some(c),
                    None => continue,
                },
                // Never implicitly: an exec plugin runs only where an activation names it.
                crate::api::plugin::PluginRuntimeType::Exec => continue,
            };
            out.extend(codes(
                &format!("{}/bootstrap", p.name),
                &spec,
                &m,
                module,
                Vec::new(),
            ));
        }
        for o in objects
            .iter()
            .filter(|o| o.kind == Kind::PluginActivation && o.deleted_at.is_none())
        {
            if !o
                .condition("Ready")
                .is_some_and(|(s, _, _)| s == crate::api::ConditionStatus::True)
                && o.condition("Granted")
                    .is_none_or(|(_, r, _)| r != "NewCapabilitiesRequested")
            {
                continue;
            }
            let (Ok(Spec::PluginActivation(spec)), Some(digest)) = (
                o.typed_spec(),
                o.status.get("boundDigest").and_then(|d| d.as_str()),
            ) else {
                continue;
            };
            let Some(m) = read_manifest_blob(&self.home, digest, spec.plugin_ref.as_str()) else {
                continue;
            };
            let effective: Vec<_> = o
                .status
                .get("effectiveGrants")
                .and_then(|g| serde_json::from_value(g.clone()).ok())
                .unwrap_or_default();
            let module = match m.spec.runtime.type_ {
                crate::api::plugin::PluginRuntimeType::Declarative => None,
                crate::api::plugin::PluginRuntimeType::Wasm => match self.compile(&m, &effective) {
                    Some(c) => Some(c),
                    None => continue,
                },
                // Ready means the tier allows its digest and (lines) its process shook hands.
                crate::api::plugin::PluginRuntimeType::Exec => {
                    let Some(exec) = &self.exec else { continue };
                    match exec_spec(&self.home, o.name.as_str(), &spec, &m) {
                        Ok(es) => Some(exec_module(exec.module(&es), &m)),
                        Err(e) => {
                            tracing::warn!(activation = %o.name, error = %e, "exec plugin not served");
                            continue;
                        }
                    }
                }
            };
            let content = effective.contains(&crate::sandbox::Capability::Content);
            let network: Vec<String> = o
                .status
                .get("effectiveNetworkGrants")
                .and_then(|g| serde_json::from_value(g.clone()).ok())
                .unwrap_or_default();
            out.extend(
                codes(o.name.as_str(), &spec, &m, module, network)
                    .into_iter()
                    .map(|c| ActiveCode { content, ..c }),
            );
        }
        out.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.activation.cmp(&b.activation))
        });
        out
    }

    fn compile(
        &self,
        m: &Manifest,
        grants: &[crate::sandbox::Capability],
    ) -> Option<Arc<dyn Module>> {
        let a = m
            .spec
            .runtime
            .artifacts
            .iter()
            .find(|a| a.name == "module")?;
        let key = (a.sha256.to_string(), grants.to_vec());
        if let Some(c) = self
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Some(c.clone());
        }
        let wasm = crate::control::controllers::plugin::module_bytes(&self.home, m).ok()?;
        let g: Grants = grants.iter().copied().collect();
        let c = self.engine.compile(&wasm, &g).ok()?;
        self.compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, c.clone());
        Some(c)
    }

    /// Runs one contribution, recording its statistics. An open breaker skips the call (an error).
    pub fn call(&self, c: &ActiveCode, input: &Value) -> Result<Value, String> {
        if self
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&c.activation)
            .is_some_and(Stats::is_open)
        {
            return Err(format!(
                "{}: breaker open after {BREAKER_THRESHOLD} failures in a row",
                c.activation
            ));
        }
        let Some(module) = &c.module else {
            return Err(format!("{}: {} runs no code", c.activation, c.id));
        };
        let r = module.call(&c.entry, input, &c.limits);
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.entry(c.activation.clone()).or_default().record(&r);
        drop(stats);
        match r {
            Ok(o) => {
                for l in o.logs {
                    tracing::info!(activation = %c.activation, plugin = %c.plugin, "{l}");
                }
                Ok(o.output)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Runs a guard chain in priority order: each contribution sees the value the previous one
    /// let through. `{"action":"allow"}` passes it on, `{"action":"rewrite", key: v}` replaces
    /// it, `{"action":"deny","reason":..}` ends the chain. A failure (error, bad answer, open
    /// breaker, exhausted `budget`) denies under `Fail` and is skipped under `Ignore`.
    pub fn run_chain(
        &self,
        chain: &[&ActiveCode],
        key: &str,
        mut value: Value,
        context: &Value,
        budget: Duration,
    ) -> Verdict {
        let started = Instant::now();
        for c in chain {
            let outcome = if started.elapsed() >= budget {
                Err(format!(
                    "the request's plugin budget of {} ms was spent before {} ran",
                    budget.as_millis(),
                    c.id
                ))
            } else {
                let mut input = json!({ key: value, "config": c.config });
                if let (Some(i), Some(ctx)) = (input.as_object_mut(), context.as_object()) {
                    for (k, v) in ctx {
                        i.insert(k.clone(), v.clone());
                    }
                }
                self.call(c, &input)
            };
            let failed = |reason: String| Verdict::Deny {
                activation: c.activation.clone(),
                id: c.id.clone(),
                reason,
                field: None,
            };
            match outcome {
                Ok(out) => match out.get("action").and_then(Value::as_str) {
                    Some("allow") => {}
                    Some("rewrite") if out.get(key).is_some() => value = out[key].clone(),
                    Some("deny") => {
                        return Verdict::Deny {
                            activation: c.activation.clone(),
                            id: c.id.clone(),
                            reason: out
                                .get("reason")
                                .and_then(Value::as_str)
                                .unwrap_or("denied")
                                .to_string(),
                            field: out.get("field").and_then(Value::as_str).map(String::from),
                        };
                    }
                    _ if c.failure == FailurePolicy::Ignore => {}
                    _ => {
                        return failed(format!(
                            "plugin answered {}, expected an action of allow, rewrite or deny",
                            truncate(&out.to_string())
                        ));
                    }
                },
                Err(e) if c.failure == FailurePolicy::Ignore => {
                    tracing::warn!(activation = %c.activation, error = %e, "plugin failed; ignored by its failure policy");
                }
                Err(e) => return failed(format!("plugin failed ({e}); failurePolicy Fail")),
            }
        }
        Verdict::Allow(value)
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 200 {
        s.to_string()
    } else {
        format!("{}…", &s[..s.floor_char_boundary(200)])
    }
}

/// The code contributions `spec` enables of manifest `m`, ready to call.
fn codes(
    activation: &str,
    spec: &PluginActivationSpec,
    m: &Manifest,
    module: Option<Arc<dyn Module>>,
    network: Vec<String>,
) -> Vec<ActiveCode> {
    let mut limits = Limits::default();
    let l = m.spec.limits.clone().unwrap_or_default();
    let l = crate::api::plugin::Limits {
        memory_bytes: spec.limits.memory_bytes.or(l.memory_bytes),
        fuel: spec.limits.fuel.or(l.fuel),
        timeout_ms: spec.limits.timeout_ms.or(l.timeout_ms),
        max_concurrent: spec.limits.max_concurrent.or(l.max_concurrent),
    };
    if let Some(b) = l.memory_bytes {
        limits.memory_bytes = b as usize;
    }
    if let Some(f) = l.fuel {
        limits.fuel = f;
    }
    if let Some(t) = l.timeout_ms {
        limits.timeout = Duration::from_millis(t);
    }
    let c = &m.spec.contributes;
    let mut out = Vec::new();
    for id in &spec.contributions {
        let base = |point: Point, entry: &str| ActiveCode {
            activation: activation.to_string(),
            plugin: spec.plugin_ref.to_string(),
            id: id.clone(),
            point,
            stage: None,
            kinds: Vec::new(),
            scheme: None,
            entry: entry.to_string(),
            module: module.clone(),
            profile: None,
            limits: limits.clone(),
            failure: spec
                .failure_policy
                .unwrap_or(point.default_failure_policy()),
            priority: spec.priority,
            scope: spec.scope.clone(),
            config: spec.config.clone().unwrap_or(Value::Null),
            sink: None,
            panel: None,
            content: false,
            digest: m.digest.to_string(),
            workflow: None,
            custom_nodes: Vec::new(),
            network: network.clone(),
        };
        if let Some(h) = c.inference_hooks.iter().find(|h| &h.id == id) {
            let mut a = base(Point::InferenceHook, &h.entry);
            a.stage = Some(h.stage);
            if h.stage == HookStage::PostResponse && spec.failure_policy.is_none() {
                // Post-processing fails open: the response is still the engine's answer.
                a.failure = FailurePolicy::Ignore;
            }
            out.push(a);
        } else if let Some(x) = c.admission_checks.iter().find(|x| &x.id == id) {
            let mut a = base(Point::AdmissionCheck, &x.entry);
            a.kinds = x.kinds.clone();
            out.push(a);
        } else if let Some(v) = c.model_verifiers.iter().find(|v| &v.id == id) {
            out.push(base(Point::ModelVerifier, &v.entry));
        } else if let Some(s) = c.model_sources.iter().find(|s| &s.id == id) {
            let mut a = base(Point::ModelSource, &s.entry);
            a.scheme = Some(s.scheme.clone());
            out.push(a);
        } else if let Some(p) = c.sampling_profiles.iter().find(|p| &p.id == id) {
            let mut a = base(Point::SamplingProfile, "");
            a.profile = Some(p.clone());
            out.push(a);
        } else if let Some(s) = c.event_sinks.iter().find(|s| &s.id == id) {
            let mut a = base(Point::EventSink, &s.entry);
            a.sink = Some(s.clone());
            out.push(a);
        } else if let Some(p) = c.hardware_probes.iter().find(|p| &p.id == id) {
            out.push(base(Point::HardwareProbe, &p.entry));
        } else if let Some(p) = c.ui_panels.iter().find(|p| &p.id == id) {
            let mut a = base(Point::UiPanel, "");
            a.panel = Some(p.clone());
            out.push(a);
        } else if let Some(x) = c.commands.iter().find(|x| &x.id == id) {
            out.push(base(Point::Command, &x.entry));
        } else if let Some(n) = c.custom_nodes.iter().find(|n| &n.id == id) {
            out.push(base(Point::CustomNode, &n.entry));
        } else if let Some(w) = c.workflows.iter().find(|w| &w.id == id) {
            let mut a = base(Point::Workflow, "");
            a.workflow = Some(w.clone());
            a.custom_nodes = c
                .custom_nodes
                .iter()
                .map(|n| (n.id.clone(), n.entry.clone()))
                .collect();
            out.push(a);
        }
    }
    out
}

/// What the runtime needs to run activation `activation`'s exec plugin: the executable
/// (installed from its verified blob under `$LAS_HOME/bin/<sha256>/` when it is not yet), the
/// protocol, the name and version the handshake must give, and the limits.
pub fn exec_spec(
    home: &LasHome,
    activation: &str,
    spec: &PluginActivationSpec,
    m: &Manifest,
) -> Result<ExecSpec, String> {
    let a = m
        .spec
        .executable()
        .ok_or("the manifest has no artifact named executable")?;
    let blob = blob_path(home, a.sha256.as_str());
    let file = a.path.rsplit('/').next().unwrap_or("executable");
    let program = crate::artifacts::binaries::install_blob(home, &blob, &a.sha256, file)
        .map_err(|e| format!("executable {} ({}): {e}", a.path, a.sha256))?;
    let l = m.spec.limits.clone().unwrap_or_default();
    let protocol = m.spec.runtime.protocol.unwrap_or_default();
    Ok(ExecSpec {
        activation: activation.to_string(),
        program,
        sha256: a.sha256.to_string(),
        protocol,
        name: m.name.to_string(),
        version: m.spec.version.clone(),
        text_io: m.spec.is_legacy_text() && protocol == crate::api::plugin::ExecProtocol::OneShot,
        memory_bytes: spec.limits.memory_bytes.or(l.memory_bytes),
        max_concurrent: spec
            .limits
            .max_concurrent
            .or(l.max_concurrent)
            .unwrap_or(crate::runtime::plugin_exec::DEFAULT_MAX_CONCURRENT),
    })
}

/// A legacy text plugin's handle speaks text: the adapter maps hook input and output onto it.
fn exec_module(module: Arc<dyn Module>, m: &Manifest) -> Arc<dyn Module> {
    if m.spec.is_legacy_text() {
        Arc::new(crate::control::legacy_plugins::LegacyText { inner: module })
    } else {
        module
    }
}

/// The plugin side of admitting an apply (CLI, HTTP and watched directories alike):
/// activations checked against their manifests, then every active admission check on every
/// object it sees. A denial is an input error at the object's document, with the field the
/// check names (default `spec`); bad input changes nothing.
pub fn admit(store: &Store, host: &PluginHost, objects: &[&Desired]) -> Result<(), InputErrors> {
    let owned: Vec<Desired> = objects.iter().map(|d| (*d).clone()).collect();
    check_activations(&host.home, store, &owned)?;
    let stored = plugin_objects(store).map_err(|e| store_error(objects, e))?;
    if stored.is_empty() {
        return Ok(());
    }
    let active = host.build(&stored);
    let checks: Vec<&ActiveCode> = active
        .iter()
        .filter(|c| c.point == Point::AdmissionCheck)
        .collect();
    if checks.is_empty() {
        return Ok(());
    }
    let mut errors = Vec::new();
    for d in objects {
        // Only what the apply creates or changes is checked: an unchanged object re-applied (a
        // watched directory's next read) was admitted when it was written.
        let unchanged = store.get(d.kind(), d.name.as_str()).is_ok_and(|o| {
            o.deleted_at.is_none()
                && o.spec == d.spec.to_json()
                && o.labels == d.labels
                && o.annotations == d.annotations
        });
        if unchanged {
            continue;
        }
        let chain: Vec<&ActiveCode> = checks
            .iter()
            .copied()
            .filter(|c| c.kinds.is_empty() || c.kinds.contains(&d.kind()))
            .collect();
        if chain.is_empty() {
            continue;
        }
        let object = json!({
            "apiVersion": crate::api::API_VERSION,
            "kind": d.kind().as_str(),
            "metadata": {"name": d.name.as_str(), "labels": d.labels, "annotations": d.annotations},
            "spec": d.spec.to_json(),
        });
        if let Verdict::Deny {
            activation,
            id,
            reason,
            field,
        } = host.run_chain(&chain, "object", object, &json!({}), Duration::from_secs(5))
        {
            errors.push(at(
                d,
                field.as_deref().unwrap_or("spec"),
                format!("denied by plugin activation {activation} ({id}): {reason}"),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(InputErrors(errors))
    }
}

fn store_error(objects: &[&Desired], e: StoreError) -> InputErrors {
    InputErrors(vec![InputError {
        file: objects
            .first()
            .map(|d| d.origin.file.clone())
            .unwrap_or_default(),
        line: 1,
        column: 1,
        path: String::new(),
        message: format!("cannot read the plugin activations: {e}"),
    }])
}

// ---------------------------------------------------------------------------------------------
// Inventory and dry runs.

/// What each seam accepts, or why it is not pluggable.
pub fn seam_doc(seam: crate::api::plugin::Seam) -> (&'static [&'static str], &'static str) {
    use crate::api::plugin::Seam::*;
    match seam {
        Inference => (
            &["inferenceHooks", "samplingProfiles"],
            "hooks before and after a /v1 request (streamed responses pass untouched); sampling data merged into requests",
        ),
        Model => (
            &["modelSources", "modelVerifiers"],
            "URI schemes resolved to a pinned (url, sha256) the host fetches; verdicts on verified blobs",
        ),
        Hardware => (
            &["hardwareProbes"],
            "probes add facts to the hardware profile under plugins.<plugin>.<probe> (policies use them in when); a failing probe is a note",
        ),
        Workflow => (
            &["workflows", "customNodes"],
            "graphs of generate, hook, command, http and custom nodes, run by lasctl workflow run; each run recorded in the store",
        ),
        EventBus => (
            &["eventSinks"],
            "every recorded event through a bounded queue per activation (oldest dropped, counted); metadata only unless content is granted; sinks fail open",
        ),
        PluginManager => (
            &["admissionChecks", "commands"],
            "admission checks at apply; commands run by lasctl plugin run; the plugin manager itself, the store and the runtime are the trust root and are not pluggable",
        ),
        UiHost => (
            &["uiPanels"],
            "HTML panels, verified by sha256 like every artifact; the web console serves them",
        ),
    }
}

/// The inventory: every seam with what it accepts and its active contributions (with their
/// statistics), every Plugin with its contributions, and conflicting exclusive claims.
pub fn inventory(
    objects: &[StoredObject],
    active: &[ActiveCode],
    stats: &HashMap<String, Stats>,
) -> Value {
    let seams: Vec<Value> = crate::api::plugin::Seam::ALL
        .iter()
        .map(|s| {
            let (accepts, note) = seam_doc(*s);
            let act: Vec<Value> = active
                .iter()
                .filter(|c| c.point.seam() == *s)
                .map(|c| {
                    let st = stats.get(&c.activation).cloned().unwrap_or_default();
                    let unsandboxed = objects.iter().any(|o| {
                        o.kind == Kind::Plugin
                            && o.name.as_str() == c.plugin
                            && o.status["manifest"]["runtime"] == "exec"
                    });
                    json!({
                        "unsandboxed": unsandboxed,
                        "activation": c.activation,
                        "plugin": c.plugin,
                        "contribution": c.id,
                        "point": c.point.as_str(),
                        "stage": c.stage,
                        "priority": c.priority,
                        "failurePolicy": c.failure,
                        "calls": st.calls,
                        "failures": st.failures,
                        "fuelP50": st.fuel_p50,
                        "fuelP95": st.fuel_p95,
                        "breaker": if st.breaker.is_empty() { "closed" } else { st.breaker },
                        "lastError": st.last_error,
                        "delivered": (c.point == Point::EventSink).then_some(st.delivered),
                        "dropped": (c.point == Point::EventSink).then_some(st.dropped),
                        "content": (c.point == Point::EventSink).then_some(c.content),
                    })
                })
                .collect();
            json!({"seam": s.as_str(), "accepts": accepts, "pluggable": !accepts.is_empty(), "note": note, "active": act})
        })
        .collect();
    let plugins: Vec<Value> = objects
        .iter()
        .filter(|o| o.kind == Kind::Plugin)
        .map(|o| {
            json!({
                "name": o.name.as_str(),
                "ready": o.condition("Ready").map(|(s, r, _)| format!("{} ({r})", s.as_str())),
                "version": o.status["manifest"]["version"],
                "runtime": o.status["manifest"]["runtime"],
                "unsandboxed": o.status["manifest"]["runtime"] == "exec",
                "contributions": o.status["manifest"]["contributions"],
                "requests": o.status["manifest"]["requests"],
                "uiPanels": ui_panels(o),
            })
        })
        .collect();
    let activations: Vec<Value> = objects
        .iter()
        .filter(|o| o.kind == Kind::PluginActivation)
        .map(|o| {
            json!({
                "name": o.name.as_str(),
                "plugin": o.spec["pluginRef"],
                "contributions": o.spec["contributions"],
                "grantsRequested": o.spec["grants"],
                "effectiveGrants": o.status["effectiveGrants"],
                "ungrantedRequests": o.status["ungrantedRequests"],
                "boundDigest": o.status["boundDigest"],
                "exec": o.status["exec"],
                "unsandboxed": o.condition("Unsandboxed").is_some_and(|(s, _, _)| s == crate::api::ConditionStatus::True),
                "networkGrants": o.status["effectiveNetworkGrants"],
                "ready": o.condition("Ready").map(|(s, r, _)| format!("{} ({r})", s.as_str())),
                "granted": o.condition("Granted").map(|(s, r, _)| format!("{} ({r})", s.as_str())),
            })
        })
        .collect();
    json!({"seams": seams, "plugins": plugins, "activations": activations})
}

/// A Plugin's UI panels with the verified digest and blob of the artifact each one serves.
fn ui_panels(plugin: &StoredObject) -> Vec<Value> {
    let artifacts = plugin.status["artifacts"].as_array();
    plugin.status["manifest"]["uiPanels"]
        .as_array()
        .map(|panels| {
            panels
                .iter()
                .map(|p| {
                    let a = artifacts.and_then(|a| a.iter().find(|a| a["name"] == p["artifact"]));
                    json!({
                        "id": p["id"],
                        "title": p["title"],
                        "artifact": p["artifact"],
                        "digest": a.map(|a| a["digest"].clone()),
                        "path": a.map(|a| a["path"].clone()),
                        "seam": "uiHost",
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs one contribution of a Ready Plugin once on `input`, with `config`, granting what the
/// manifest requests: its output, fuel used and logs. Nothing is recorded.
pub fn test_contribution(
    home: &LasHome,
    plugin: &StoredObject,
    contribution: &str,
    input: Value,
    config: Value,
    engine: &dyn Engine,
) -> Result<Value, String> {
    let digest = plugin
        .status
        .get("digest")
        .and_then(Value::as_str)
        .filter(|_| {
            plugin
                .condition("Ready")
                .is_some_and(|(s, _, _)| s == crate::api::ConditionStatus::True)
        })
        .ok_or_else(|| format!("plugin {} is not Ready", plugin.name))?;
    let m = read_manifest_blob(home, digest, plugin.name.as_str())
        .ok_or_else(|| format!("plugin {}: manifest not readable", plugin.name))?;
    let c = m.spec.contribution(contribution).ok_or_else(|| {
        format!(
            "plugin {} has no contribution {contribution:?} (it has: {})",
            plugin.name,
            m.spec
                .contributions()
                .iter()
                .map(|c| c.id)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    if let Some(schema) = c.config_schema {
        check_config(&config, schema, "config").map_err(|(p, e)| format!("{p}: {e}"))?;
    }
    let Some(entry) = c.entry else {
        return Ok(
            json!({"output": null, "fuelUsed": 0, "note": "a data contribution: nothing runs"}),
        );
    };
    if m.spec.runtime.type_ == crate::api::plugin::PluginRuntimeType::Exec {
        return Err(format!(
            "plugin {} is an exec plugin: it runs only through a PluginActivation that names the contribution, where the Policy tier allows its executable (allowedExecPlugins); a dry run would run it unsandboxed without that approval",
            plugin.name
        ));
    }
    let wasm = crate::control::controllers::plugin::module_bytes(home, &m)?;
    let grants: Grants = m.spec.requests.iter().copied().collect();
    let module = engine.compile(&wasm, &grants).map_err(|e| e.to_string())?;
    let mut full = input;
    if let Some(o) = full.as_object_mut() {
        o.insert("config".into(), config);
    }
    let out = module
        .call(entry, &full, &Limits::default())
        .map_err(|e| e.to_string())?;
    Ok(json!({"output": out.output, "fuelUsed": out.fuel_used, "logs": out.logs}))
}

/// Merges a sampling profile into an OpenAI request body: the request's own settings win
/// (its `logit_bias` entries, `grammar`, `temperature`); stop sequences are added to its own.
/// Returns whether anything changed.
pub fn merge_profile(request: &mut Value, p: &crate::api::plugin::SamplingProfile) -> bool {
    let Some(r) = request.as_object_mut() else {
        return false;
    };
    let mut changed = false;
    if !p.logit_bias.is_empty() {
        let bias = r.entry("logit_bias").or_insert_with(|| json!({}));
        if let Some(b) = bias.as_object_mut() {
            for (k, v) in &p.logit_bias {
                if !b.contains_key(k) {
                    b.insert(k.clone(), json!(v));
                    changed = true;
                }
            }
        }
    }
    if !p.stop.is_empty() {
        let mut stops: Vec<Value> = match r.get("stop") {
            Some(Value::String(s)) => vec![json!(s)],
            Some(Value::Array(a)) => a.clone(),
            _ => Vec::new(),
        };
        for s in &p.stop {
            if !stops.contains(&json!(s)) {
                stops.push(json!(s));
                changed = true;
            }
        }
        r.insert("stop".into(), Value::Array(stops));
    }
    if let Some(g) = &p.grammar
        && !r.contains_key("grammar")
    {
        r.insert("grammar".into(), json!(g));
        changed = true;
    }
    if let Some(t) = p.temperature
        && !r.contains_key("temperature")
    {
        r.insert("temperature".into(), json!(t));
        changed = true;
    }
    changed
}
