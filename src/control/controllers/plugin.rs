//! The Plugin and PluginActivation controllers.
//!
//! A Plugin is Ready once its manifest (pinned by `spec.sha256`) and every artifact the manifest
//! pins are verified blobs in the model store, the manifest decodes strictly, its `hostApi`
//! matches this host, and (for `wasm`) its module compiles against what the manifest requests and
//! exports every entry a contribution names. A digest mismatch stalls it; nothing of it runs.
//!
//! A PluginActivation is Ready once its Plugin is, its contributions exist, and its grants are
//! within the manifest's requests; the grants are bound to that manifest digest
//! (`status.boundDigest`). When the Plugin's digest changes and the new manifest requests a
//! capability the old one did not and the activation does not grant, the activation reports
//! `Granted=False (NewCapabilitiesRequested)` and keeps serving the bound digest until the user
//! grants it (or the Plugin goes back).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::json;

use super::queue::Key;
use super::status::{cond, event, write_status};
use super::{Action, ReconcileError, Reconciler, SharedStore};
use crate::api::model::{ModelFormat, ModelSpec};
use crate::api::plugin::{ArtifactStatus, PluginRuntimeType};
use crate::api::{ConditionStatus, Kind, Spec};
use crate::artifacts::models::{EnsureOptions, ModelError, ModelStore};
use crate::control::plugins::{Manifest, parse_manifest, read_manifest_blob};
use crate::control::store::{EventType, StoredObject};
use crate::home::LasHome;
use crate::runtime::plugin_exec::{ExecPlugins, ExecState};
use crate::sandbox::{Engine, Grants};

pub struct PluginReconciler {
    pub store: SharedStore,
    pub models: ModelStore,
    pub engine: Arc<dyn Engine>,
    /// Whether the active tier honours manifests' `bootstrap` (none: never).
    pub admission: Option<Arc<dyn super::module::Admission>>,
}

fn fetch_error(what: &str, e: ModelError) -> ReconcileError {
    match e {
        ModelError::DigestMismatch { .. } => {
            ReconcileError::stalled("DigestMismatch", format!("{what}: {e}"))
        }
        e => ReconcileError::retry(e.reason(), format!("{what}: {e}")),
    }
}

impl PluginReconciler {
    async fn converge(&self, obj: StoredObject) -> Result<Action, ReconcileError> {
        let Spec::Plugin(spec) = obj.typed_spec()? else {
            return Ok(Action::AwaitChange);
        };
        let opts = EnsureOptions::default();
        let manifest_spec = ModelSpec {
            source: spec.source.clone(),
            sha256: Some(spec.sha256.clone()),
            format: ModelFormat::default(),
        };
        let blob = self
            .models
            .ensure(&manifest_spec, &opts)
            .await
            .map_err(|e| fetch_error("manifest", e))?;
        let bytes = std::fs::read(&blob.path)
            .map_err(|e| ReconcileError::retry("SourceUnavailable", e.to_string()))?;
        let manifest = parse_manifest(&spec.source.to_string(), &bytes, blob.digest.clone())
            .map_err(|e| ReconcileError::stalled("ManifestInvalid", e.to_string()))?;
        manifest
            .spec
            .compatible()
            .map_err(|m| ReconcileError::stalled("Incompatible", m))?;
        let mut artifacts = Vec::new();
        for a in &manifest.spec.runtime.artifacts {
            let s = ModelSpec {
                source: spec.source.sibling(&a.path),
                sha256: Some(a.sha256.clone()),
                format: ModelFormat::default(),
            };
            let b = self
                .models
                .ensure(&s, &opts)
                .await
                .map_err(|e| fetch_error(&format!("artifact {}", a.name), e))?;
            artifacts.push(ArtifactStatus {
                name: a.name.clone(),
                digest: b.digest.to_string(),
                path: b.path.display().to_string(),
                size_bytes: b.size_bytes,
            });
        }
        if manifest.spec.runtime.type_ == PluginRuntimeType::Wasm {
            check_module(&*self.engine, &manifest, &artifacts)?;
        }
        // The author's proposed defaults run only where the active tier allows it; the decision
        // is recorded here, and the host reads it.
        let proposed = manifest
            .spec
            .bootstrap
            .as_ref()
            .map(|b| b.activate.clone())
            .unwrap_or_default();
        let bootstrap = match (&self.admission, proposed.is_empty()) {
            (Some(a), false) => {
                let all = self
                    .store
                    .with(|s| s.list(None, &Default::default()))
                    .await?;
                a.plugin_auto_activation(&all)
                    .map(|tier| json!({"tier": tier, "active": proposed}))
            }
            _ => None,
        };
        let fields = json!({
            "digest": blob.digest.as_str(),
            "manifest": manifest.spec.summary(manifest.name.as_str()),
            "artifacts": artifacts,
            "bootstrap": bootstrap,
        });
        let was_ready = super::status::is_ready(&obj);
        let msg = format!(
            "manifest {} {} verified (sha256 {}), {} artifact(s)",
            manifest.name,
            manifest.spec.version,
            blob.digest,
            artifacts.len()
        );
        let mut conditions = vec![
            cond("Verified", ConditionStatus::True, "Verified", msg.clone()),
            cond("ManifestValid", ConditionStatus::True, "Valid", ""),
            cond("Compatible", ConditionStatus::True, "Compatible", ""),
            cond("Ready", ConditionStatus::True, "Verified", msg.clone()),
            cond("Stalled", ConditionStatus::False, "Verified", ""),
        ];
        if manifest.spec.runtime.type_ == PluginRuntimeType::Exec {
            // Said on the Plugin too: its code is a native process, not sandboxed WASM.
            conditions.push(cond(
                "Unsandboxed",
                ConditionStatus::True,
                "ExecPlugin",
                format!(
                    "an exec plugin{}: it runs as a native process, only where an activation names its contributions and the tier's allowedExecPlugins lists its executable",
                    if manifest.spec.is_legacy_text() {
                        " (imported from a legacy text_plugin contract)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let o = obj.clone();
        self.store
            .with(move |s| {
                let ok = write_status(s, &o, &fields, conditions)?;
                if ok && !was_ready {
                    event(s, &o, EventType::Normal, "Verified", &msg);
                }
                Ok::<_, crate::control::store::StoreError>(())
            })
            .await?;
        Ok(Action::AwaitChange)
    }
}

/// A wasm plugin's module must compile against what its manifest requests and export every entry
/// a contribution names.
fn check_module(
    engine: &dyn Engine,
    manifest: &Manifest,
    artifacts: &[ArtifactStatus],
) -> Result<(), ReconcileError> {
    let module = artifacts
        .iter()
        .find(|a| a.name == "module")
        .ok_or_else(|| ReconcileError::stalled("ManifestInvalid", "no artifact named module"))?;
    let wasm = std::fs::read(&module.path)
        .map_err(|e| ReconcileError::retry("SourceUnavailable", e.to_string()))?;
    let requested: Grants = manifest.spec.requests.iter().copied().collect();
    let compiled = engine.compile(&wasm, &requested).map_err(|e| {
        ReconcileError::stalled(
            "InvalidModule",
            format!(
                "{} (the manifest requests: {})",
                e,
                requested_list(manifest)
            ),
        )
    })?;
    let exports = compiled.exports();
    for c in manifest.spec.contributions() {
        if let Some(entry) = c.entry
            && !exports.iter().any(|e| e == entry)
        {
            return Err(ReconcileError::stalled(
                "InvalidModule",
                format!(
                    "contribution {} names entry {entry:?}, which the module does not export (it exports: {})",
                    c.id,
                    exports.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn requested_list(m: &Manifest) -> String {
    crate::api::plugin::list(&m.spec.requests)
}

impl Reconciler for PluginReconciler {
    fn kind(&self) -> Kind {
        Kind::Plugin
    }

    /// A Policy change may allow or forbid manifests' `bootstrap`: Plugins proposing one look again.
    fn dependents(&self, changed: &Key, all: &[StoredObject]) -> Vec<Key> {
        if changed.0 != Kind::Policy {
            return Vec::new();
        }
        all.iter()
            .filter(|o| {
                o.kind == Kind::Plugin
                    && o.status["manifest"]["bootstrap"]
                        .as_array()
                        .is_some_and(|b| !b.is_empty())
            })
            .map(|o| (o.kind, o.name.to_string()))
            .collect()
    }

    fn reconcile(
        &self,
        _key: Key,
        obj: Option<StoredObject>,
    ) -> BoxFuture<'_, Result<Action, ReconcileError>> {
        Box::pin(async move {
            match obj {
                // Blobs are collected by reachability (model GC keeps what plugins reach).
                None => Ok(Action::AwaitChange),
                Some(o) if o.deleted_at.is_some() => Ok(Action::AwaitChange),
                Some(o) => self.converge(o).await,
            }
        })
    }
}

pub struct PluginActivationReconciler {
    pub store: SharedStore,
    pub home: LasHome,
    pub engine: Arc<dyn Engine>,
    /// Where the calls are counted (the daemon's host); its statistics are copied into status.
    pub host: Option<Arc<crate::control::plugins::PluginHost>>,
    /// Where exec plugins run (the runtime's supervisor); none: they wait (`ExecUnavailable`).
    pub exec: Option<Arc<dyn ExecPlugins>>,
    /// Whose tier allows exec plugins by digest (none: nothing is allowed).
    pub admission: Option<Arc<dyn super::module::Admission>>,
}

/// What the exec runtime reported, for the activation's status.
struct ExecOutcome {
    fields: serde_json::Value,
    conditions: Vec<crate::api::Condition>,
    events: Vec<(EventType, &'static str, String)>,
}

/// How often an active activation's statistics are copied into its status.
pub const STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);

impl PluginActivationReconciler {
    async fn converge(&self, obj: StoredObject) -> Result<Action, ReconcileError> {
        let Spec::PluginActivation(spec) = obj.typed_spec()? else {
            return Ok(Action::AwaitChange);
        };
        let plugin_name = spec.plugin_ref.to_string();
        let plugin = {
            let n = plugin_name.clone();
            self.store.with(move |s| s.get(Kind::Plugin, &n).ok()).await
        };
        let plugin_digest = plugin
            .as_ref()
            .filter(|p| super::status::is_ready(p) && p.deleted_at.is_none())
            .and_then(|p| p.status.get("digest").and_then(|d| d.as_str()))
            .map(String::from);
        let bound = obj
            .status
            .get("boundDigest")
            .and_then(|d| d.as_str())
            .map(String::from);
        let Some(digest) = plugin_digest else {
            return Err(ReconcileError::retry(
                "PluginNotReady",
                format!("plugin {plugin_name} is not Ready"),
            ));
        };
        let label = format!("plugin {plugin_name}");
        let manifest = read_manifest_blob(&self.home, &digest, &label).ok_or_else(|| {
            ReconcileError::retry("PluginNotReady", format!("{label}: manifest not readable"))
        })?;
        // An upgrade that asks for more than the activation grants waits for the user; the
        // digest the grants were bound to keeps serving meanwhile.
        let old = bound
            .as_deref()
            .filter(|b| *b != digest)
            .and_then(|b| read_manifest_blob(&self.home, b, &label));
        if let Some(old) = &old {
            let new_caps: Vec<_> = manifest
                .spec
                .requests
                .iter()
                .filter(|c| !old.spec.requests.contains(c) && !spec.grants.contains(c))
                .copied()
                .collect();
            let new_hosts: Vec<&String> = manifest
                .spec
                .network_requests
                .iter()
                .filter(|h| {
                    !old.spec.network_requests.contains(h) && !spec.network_grants.contains(h)
                })
                .collect();
            if !new_caps.is_empty() || !new_hosts.is_empty() {
                let mut asked: Vec<String> = new_caps.iter().map(|c| c.to_string()).collect();
                asked.extend(new_hosts.iter().map(|h| format!("network host {h}")));
                let message = format!(
                    "plugin {plugin_name} {} requests {} beyond what this activation grants; {} keeps serving until the grants include it",
                    manifest.spec.version,
                    asked.join(", "),
                    old.spec.version
                );
                let o = obj.clone();
                self.store
                    .with(move |s| {
                        let ok = write_status(
                            s,
                            &o,
                            &json!({}),
                            vec![cond(
                                "Granted",
                                ConditionStatus::False,
                                "NewCapabilitiesRequested",
                                message.clone(),
                            )],
                        )?;
                        if ok {
                            event(
                                s,
                                &o,
                                EventType::Warning,
                                "NewCapabilitiesRequested",
                                &message,
                            );
                        }
                        Ok::<_, crate::control::store::StoreError>(())
                    })
                    .await?;
                return Ok(Action::AwaitChange);
            }
        }
        spec.check_against(&manifest.spec).map_err(|(path, m)| {
            ReconcileError::stalled("InvalidActivation", format!("{path}: {m}"))
        })?;
        let effective: Vec<_> = spec
            .grants
            .iter()
            .filter(|g| manifest.spec.requests.contains(g))
            .copied()
            .collect();
        let ungranted: Vec<_> = manifest
            .spec
            .requests
            .iter()
            .filter(|r| !spec.grants.contains(r))
            .copied()
            .collect();
        // Code that imports a host function the activation does not grant never runs. Checked
        // once per binding: the periodic statistics copy of an active activation skips it.
        let checked = super::status::is_ready(&obj)
            && bound.as_deref() == Some(digest.as_str())
            && obj.observed_generation() == Some(obj.generation);
        if manifest.spec.runtime.type_ == PluginRuntimeType::Wasm
            && !spec.contributions.is_empty()
            && !checked
        {
            let wasm = module_bytes(&self.home, &manifest)
                .map_err(|m| ReconcileError::retry("PluginNotReady", m))?;
            let grants: Grants = effective.iter().copied().collect();
            self.engine
                .compile(&wasm, &grants)
                .map_err(|e| ReconcileError::stalled(e.reason(), e.to_string()))?;
        }
        let exec = if manifest.spec.runtime.type_ == PluginRuntimeType::Exec {
            self.converge_exec(&obj, &spec, &manifest).await?
        } else {
            None
        };
        let enabled = if spec.contributions.is_empty() {
            "no contribution enabled".to_string()
        } else {
            format!("enabled: {}", spec.contributions.join(", "))
        };
        let msg = format!(
            "{plugin_name} {} (sha256 {}), {enabled}; granted: {}",
            manifest.spec.version,
            &digest[..12],
            crate::api::plugin::list(&effective)
        );
        let stats = self
            .host
            .as_ref()
            .and_then(|h| h.stats().get(obj.name.as_str()).cloned())
            .unwrap_or_default();
        let open = stats.breaker == "open";
        let network: Vec<&String> = spec
            .network_grants
            .iter()
            .filter(|h| manifest.spec.network_requests.contains(h))
            .collect();
        let fields = json!({
            "boundDigest": digest,
            "effectiveGrants": effective,
            "effectiveNetworkGrants": network,
            "ungrantedRequests": ungranted,
            "stats": {"calls": stats.calls, "failures": stats.failures, "fuelP50": stats.fuel_p50,
                      "fuelP95": stats.fuel_p95, "breaker": if open { "open" } else { "closed" },
                      "delivered": stats.delivered, "dropped": stats.dropped},
            "exec": exec.as_ref().map(|e| e.fields.clone()),
        });
        let restarting = exec
            .as_ref()
            .and_then(|e| e.conditions.iter().find(|c| c.type_ == "Degraded"))
            .cloned();
        let degraded = if let (Some(d), false) = (restarting, open) {
            d
        } else if open {
            cond(
                "Degraded",
                ConditionStatus::True,
                "BreakerOpen",
                format!(
                    "{} failures in a row; calls are skipped for a while (last error: {})",
                    stats.consecutive_failures,
                    stats.last_error.clone().unwrap_or_default()
                ),
            )
        } else {
            cond("Degraded", ConditionStatus::False, "Healthy", "")
        };
        let was_ready = super::status::is_ready(&obj);
        let rebound = bound.is_some_and(|b| b != digest);
        let o = obj.clone();
        let (extra, exec_events) = match exec {
            Some(e) => (
                e.conditions
                    .into_iter()
                    .filter(|c| c.type_ != "Degraded")
                    .collect::<Vec<_>>(),
                e.events,
            ),
            None => (Vec::new(), Vec::new()),
        };
        self.store
            .with(move |s| {
                let mut conditions = vec![
                    cond("Granted", ConditionStatus::True, "Granted", ""),
                    cond("Ready", ConditionStatus::True, "Active", msg.clone()),
                    cond("Stalled", ConditionStatus::False, "Active", ""),
                    degraded,
                ];
                conditions.extend(extra);
                let ok = write_status(s, &o, &fields, conditions)?;
                for (t, reason, message) in &exec_events {
                    event(s, &o, *t, reason, message);
                }
                if ok && (!was_ready || rebound) {
                    event(s, &o, EventType::Normal, "Activated", &msg);
                }
                Ok::<_, crate::control::store::StoreError>(())
            })
            .await?;
        Ok(Action::Requeue(STATS_INTERVAL))
    }
}

impl PluginActivationReconciler {
    /// An exec plugin runs only when this activation names contributions (never implicitly)
    /// and the active tier allows its executable's sha256; then the runtime keeps its process
    /// running (handshake checked). Otherwise its process is stopped.
    async fn converge_exec(
        &self,
        obj: &StoredObject,
        spec: &crate::api::plugin::PluginActivationSpec,
        manifest: &Manifest,
    ) -> Result<Option<ExecOutcome>, ReconcileError> {
        let name = obj.name.to_string();
        let Some(exec) = self.exec.clone() else {
            return Err(ReconcileError::retry(
                "ExecUnavailable",
                "exec plugins run only in the daemon",
            ));
        };
        if spec.contributions.is_empty() {
            stop_exec(&exec, &name).await;
            return Ok(None);
        }
        let sha = manifest
            .spec
            .executable()
            .map(|a| a.sha256.to_string())
            .ok_or_else(|| {
                ReconcileError::stalled("ManifestInvalid", "no artifact named executable")
            })?;
        let all = self
            .store
            .with(|s| s.list(None, &Default::default()))
            .await?;
        let verdict = match &self.admission {
            Some(a) => a.exec_plugin_allowed(&all, &sha),
            None => Err(format!(
                "executable sha256:{sha} is not in the tier's allowedExecPlugins (no policy is consulted)"
            )),
        };
        let tier = match verdict {
            Ok(t) => t,
            Err(reason) => {
                stop_exec(&exec, &name).await;
                return Err(ReconcileError::stalled("ExecNotAllowed", reason));
            }
        };
        let es = crate::control::plugins::exec_spec(&self.home, &name, spec, manifest)
            .map_err(|m| ReconcileError::retry("ExecUnavailable", m))?;
        let protocol = es.protocol;
        let st = {
            let exec = exec.clone();
            tokio::task::spawn_blocking(move || exec.ensure(&es))
                .await
                .map_err(|e| ReconcileError::retry("ExecUnavailable", e.to_string()))?
        }
        .map_err(|e| {
            if e.is_permanent() {
                ReconcileError::stalled(e.reason(), e.to_string())
            } else {
                ReconcileError::retry(e.reason(), e.to_string())
            }
        })?;
        let mut events = Vec::new();
        if !st.replaced.is_empty() {
            events.push((
                EventType::Warning,
                "ReplacedLeftover",
                format!(
                    "killed exec plugin process {} left by a previous daemon (its pipes cannot be re-attached) and started a new one{}",
                    st.replaced
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    st.pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
                ),
            ));
        }
        let before = obj.status["exec"]["restarts"].as_u64().unwrap_or(0);
        if u64::from(st.restarts) > before {
            events.push((
                EventType::Warning,
                "PluginRestarted",
                format!(
                    "the exec plugin process was restarted ({} restart(s)); last exit: {}",
                    st.restarts,
                    st.last_exit.clone().unwrap_or_default()
                ),
            ));
        }
        let mut conditions = vec![cond(
            "Unsandboxed",
            ConditionStatus::True,
            "ExecPlugin",
            format!(
                "runs as a native process outside the WASM sandbox ({}, executable sha256:{}, allowed by tier {tier}); limits: {}",
                match protocol {
                    crate::api::plugin::ExecProtocol::Lines => "persistent, line protocol",
                    crate::api::plugin::ExecProtocol::OneShot => "a process per call",
                },
                &sha[..12],
                st.limits_applied
            ),
        )];
        if st.state == ExecState::Restarting {
            conditions.push(cond(
                "Degraded",
                ConditionStatus::True,
                "ProcessRestarting",
                format!(
                    "{}; stderr: {}",
                    st.last_exit.clone().unwrap_or_default(),
                    st.stderr_tail.join(" | ")
                ),
            ));
        }
        let fields = json!({
            "state": st.state,
            "pid": st.pid,
            "restarts": st.restarts,
            "lastExit": st.last_exit,
            "stderrTail": st.stderr_tail,
            "limitsApplied": st.limits_applied,
            "logPath": st.log_path,
            "executable": sha,
            "tier": tier,
        });
        Ok(Some(ExecOutcome {
            fields,
            conditions,
            events,
        }))
    }
}

async fn stop_exec(exec: &Arc<dyn ExecPlugins>, name: &str) {
    let (exec, name) = (exec.clone(), name.to_string());
    let _ = tokio::task::spawn_blocking(move || exec.stop(&name)).await;
}

/// The bytes of a wasm plugin's `module` artifact, from its verified blob.
pub fn module_bytes(home: &LasHome, manifest: &Manifest) -> Result<Vec<u8>, String> {
    let a = manifest
        .spec
        .runtime
        .artifacts
        .iter()
        .find(|a| a.name == "module")
        .ok_or("no artifact named module")?;
    let bytes = std::fs::read(crate::artifacts::models::blob_path_in(
        home,
        a.sha256.as_str(),
    ))
    .map_err(|e| format!("artifact module ({}) is not in the store: {e}", a.sha256))?;
    if crate::control::plugins::sha256_hex(&bytes) != a.sha256.as_str() {
        return Err(format!("artifact module does not have sha256 {}", a.sha256));
    }
    Ok(bytes)
}

impl Reconciler for PluginActivationReconciler {
    fn kind(&self) -> Kind {
        Kind::PluginActivation
    }

    fn reconcile(
        &self,
        key: Key,
        obj: Option<StoredObject>,
    ) -> BoxFuture<'_, Result<Action, ReconcileError>> {
        Box::pin(async move {
            match obj {
                // Deactivated: its exec plugin's process (if any) ends.
                None => {
                    if let Some(exec) = &self.exec {
                        stop_exec(exec, &key.1).await;
                    }
                    Ok(Action::AwaitChange)
                }
                Some(o) if o.deleted_at.is_some() => {
                    if let Some(exec) = &self.exec {
                        stop_exec(exec, o.name.as_str()).await;
                    }
                    Ok(Action::AwaitChange)
                }
                Some(o) => self.converge(o).await,
            }
        })
    }

    /// Activations of a Plugin run again when it changes (verified, upgraded, deleted); those of
    /// exec plugins also when a Policy changes (the tier's `allowedExecPlugins`).
    fn dependents(&self, changed: &Key, all: &[StoredObject]) -> Vec<Key> {
        if changed.0 == Kind::Policy {
            let exec_plugins: Vec<&str> = all
                .iter()
                .filter(|o| o.kind == Kind::Plugin && o.status["manifest"]["runtime"] == "exec")
                .map(|o| o.name.as_str())
                .collect();
            return all
                .iter()
                .filter(|o| {
                    o.kind == Kind::PluginActivation
                        && o.spec["pluginRef"]
                            .as_str()
                            .is_some_and(|p| exec_plugins.contains(&p))
                })
                .map(|o| (o.kind, o.name.to_string()))
                .collect();
        }
        if changed.0 != Kind::Plugin {
            return Vec::new();
        }
        all.iter()
            .filter(|o| {
                o.kind == Kind::PluginActivation
                    && o.spec.get("pluginRef").and_then(|p| p.as_str()) == Some(changed.1.as_str())
            })
            .map(|o| (o.kind, o.name.to_string()))
            .collect()
    }

    fn unstalled_by(&self, changed: &Key, all: &[StoredObject]) -> Vec<Key> {
        self.dependents(changed, all)
    }
}
