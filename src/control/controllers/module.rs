//! The Module controller: gates a Module on what it needs, admits it, and has the runtime run it.
//!
//! Order of a reconcile, each step safe to repeat:
//! 1. deleted → the runtime removes the workload, then the finalizer goes (the object disappears);
//! 2. `suspend: true` → nothing;
//! 3. `model:` and `dependsOn` must be Ready at their current generation (else `Waiting...`);
//! 4. admission by the active policy tier (a refusal stalls the Module; nothing of it runs);
//! 5. durable intent: the finalizer (and for the engine, its port) is recorded before anything runs;
//! 6. `ensure` on the runtime (create, adopt), then status.
//!
//! A spec change replaces the workload. Where the new one can run next to the old one (no host
//! port in common, no GPU claimed), it starts in the other slot, the old one serving until the new
//! one is Ready; status then switches (`status.slot`, routes follow) and the old one is stopped.
//! The replacement is recorded in `status.rollout` before the new workload starts, so a crash at
//! any point resumes it. Otherwise it is stop-then-start, said in the `Replacing` event.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::from_catalog::{FromError, ServedBlob, concrete};
use super::queue::Key;
use super::status::{cond, event, is_ready, update_status, write_status};
use super::{Action, ReconcileError, Reconciler, SharedStore};
use crate::api::module::{EngineSpec, Protocol, ResolvedModule, RuntimeKind};
use crate::api::{ConditionStatus, Kind, ModuleSpec, ObjectName, Spec};
use crate::artifacts::binaries::{BinaryError, BinaryStore};
use crate::artifacts::catalog::Catalog;
use crate::artifacts::models::ModelError;
use crate::control::store::{EventType, StoreError, StoredObject};
use crate::runtime::{
    Owner, OwnerKey, Port, Probe, ProbeAction, Runtime, RuntimeError, WorkloadSpec, WorkloadState,
    WorkloadStatus,
};

/// The finalizer that keeps a Module until its workload is gone.
pub const RUNTIME_FINALIZER: &str = "localaistack.io/runtime";

/// Decides whether a Module may run on this machine (the control layer's policy).
pub trait Admission: Send + Sync {
    /// `Err(verdict)` refuses, with the precise reason.
    fn admit(&self, module: &StoredObject, all: &[StoredObject]) -> Result<(), String>;

    /// The most bytes a Model may have under the active tier (`maxModelBytes`), with the tier's
    /// name; enforced while the Model downloads.
    fn max_model_bytes(&self, all: &[StoredObject]) -> Option<(u64, String)> {
        let _ = all;
        None
    }

    /// The active tier's name when it allows plugins' `bootstrap` contributions to run without
    /// an activation (`allowPluginAutoActivation`).
    fn plugin_auto_activation(&self, all: &[StoredObject]) -> Option<String> {
        let _ = all;
        None
    }

    /// `Ok(tier)` when the active tier lists `sha256` in `allowedExecPlugins`; otherwise why
    /// not. Default: nothing is allowed (exec plugins are not sandboxed).
    fn exec_plugin_allowed(&self, all: &[StoredObject], sha256: &str) -> Result<String, String> {
        let _ = all;
        Err(format!(
            "executable sha256:{sha256} is not in the tier's allowedExecPlugins (no policy is consulted)"
        ))
    }
}

pub struct ModuleReconciler {
    pub store: SharedStore,
    pub native: Arc<dyn Runtime>,
    /// `None` when no Docker engine answers: container modules then wait with a clear reason.
    pub docker: Option<Arc<dyn Runtime>>,
    pub admission: Arc<dyn Admission>,
    /// The `lasctl` executable that runs `engine llama`.
    pub engine_exe: PathBuf,
    /// The module catalog, for `from:` modules.
    pub catalog: Arc<Catalog>,
    /// Where `from:` modules' native programs are installed.
    pub programs: BinaryStore,
    pub grace: Duration,
    /// Whether this machine has a GPU: an engine with GPU layers is then replaced stop-then-start.
    pub gpus_present: bool,
    /// (module, slot, spec hash) whose stale workloads `remove_stale` already removed.
    pub cleaned: Mutex<HashSet<(String, u8, String)>>,
}

impl ModuleReconciler {
    fn runtime_for(&self, kind: RuntimeKind) -> Result<&Arc<dyn Runtime>, ReconcileError> {
        match kind {
            RuntimeKind::Native => Ok(&self.native),
            RuntimeKind::Container => self.docker.as_ref().ok_or_else(|| {
                ReconcileError::retry(
                    "DockerUnavailable",
                    "no Docker engine answers; container modules wait for one",
                )
            }),
        }
    }

    /// Removes the Module's workloads in every slot and runtime.
    async fn remove_everywhere(&self, key: &Key) -> Result<(), ReconcileError> {
        for slot in SLOTS {
            let ok = OwnerKey::of(key.0, &key.1, slot);
            for rt in std::iter::once(&self.native).chain(self.docker.iter()) {
                rt.remove(&ok, self.grace).await.map_err(runtime_err)?;
            }
        }
        Ok(())
    }

    async fn converge(&self, obj: StoredObject) -> Result<Action, ReconcileError> {
        let Spec::Module(spec) = obj.typed_spec()? else {
            return Ok(Action::AwaitChange);
        };
        if spec.suspend {
            update_status(
                &self.store,
                &obj,
                json!({}),
                vec![cond(
                    "Reconciling",
                    ConditionStatus::False,
                    "Suspended",
                    "suspend: true; nothing is reconciled",
                )],
            )
            .await?;
            return Ok(Action::AwaitChange);
        }
        let all = self
            .store
            .with(|s| s.list(None, &Default::default()))
            .await?;
        // A dependsOn cycle never starts: said once, not waited on forever (objects written
        // through the HTTP API, or a cycle closed by concurrent applies, get here).
        let cycles = crate::control::cycles::cycles(&crate::control::cycles::graph(&all, &[], &[]));
        if let Some(c) = crate::control::cycles::cycle_of(&cycles, obj.name.as_str()) {
            return Err(ReconcileError::stalled(
                "DependencyCycle",
                crate::control::cycles::reason(c),
            ));
        }
        if let Some(waiting) = gate(&spec, &all) {
            let (reason, message) = waiting;
            update_status(
                &self.store,
                &obj,
                json!({}),
                vec![
                    cond("Ready", ConditionStatus::False, reason, message.clone()),
                    cond("Reconciling", ConditionStatus::True, reason, message),
                ],
            )
            .await?;
            return Ok(Action::AwaitChange);
        }
        if let Err(verdict) = self.admission.admit(&obj, &all) {
            return Err(ReconcileError::stalled("AdmissionRefused", verdict));
        }
        // Durable intent before any side effect.
        if !obj.finalizers.iter().any(|f| f == RUNTIME_FINALIZER) {
            let (k, n) = (obj.kind, obj.name.to_string());
            let mut f = obj.finalizers.clone();
            f.push(RUNTIME_FINALIZER.into());
            self.store
                .with(move |s| s.set_finalizers(k, &n, &f))
                .await?;
            return Ok(Action::Requeue(Duration::ZERO));
        }
        // `from:` modules: the catalog's manifest made concrete (a container, a native program or
        // the engine).
        let (spec, resolved) = if spec.from.is_some() {
            let blob = spec
                .model
                .as_ref()
                .and_then(|m| model_path(&all, m).map(|p| (m.to_string(), p)));
            let served = || blob.as_ref().map(|(n, p)| ServedBlob { name: n, path: p });
            let mut program: Option<PathBuf> = None;
            loop {
                match concrete(&spec, &self.catalog, served(), program.as_deref()) {
                    Ok((s, r)) => break (s, Some(r)),
                    // A native program: installed (fetched and verified) once, then run.
                    Err(FromError::NeedsProgram { url, sha256, .. }) if program.is_none() => {
                        program =
                            Some(self.programs.ensure(&url, &sha256).await.map_err(
                                |e| match &e {
                                    BinaryError::Fetch(ModelError::DigestMismatch { .. })
                                    | BinaryError::Unsupported { .. } => {
                                        ReconcileError::stalled("ProgramUnavailable", e.to_string())
                                    }
                                    _ => ReconcileError::retry("ProgramUnavailable", e.to_string()),
                                },
                            )?);
                    }
                    Err(e) => {
                        return Err(ReconcileError::stalled("UnresolvableModule", e.to_string()));
                    }
                }
            }
        } else {
            (spec, None)
        };
        // The slot that runs the Module and a replacement in progress, both recorded in status.
        let active = slot_of(&obj);
        let port = match &spec.engine {
            Some(e) if e.port == 0 => match recorded_port(&obj) {
                Some(p) => Some(p),
                None => {
                    // Record the chosen port first, so a restart after a crash yields the same
                    // spec (adoption, not replacement).
                    let p = free_port()
                        .map_err(|e| ReconcileError::retry("NoFreePort", e.to_string()))?;
                    update_status(
                        &self.store,
                        &obj,
                        json!({"endpoint": format!("http://127.0.0.1:{p}")}),
                        vec![],
                    )
                    .await?;
                    return Ok(Action::Requeue(Duration::ZERO));
                }
            },
            Some(e) => Some(e.port),
            None => None,
        };
        let workload = self.workload(&obj, &spec, &all, active, port)?;
        let kind = workload.kind();
        let rt = self.runtime_for(kind)?;
        // Drift: what ran before is gone or stopped behind our back.
        let before = rt
            .inspect(&workload.owner.key())
            .await
            .map_err(runtime_err)?;
        // A workload removed behind our back is drift even when a reconcile in between (woken by
        // its `kill` event) already recorded it unhealthy: the status still names the container or
        // process this generation started.
        let started_here = obj.observed_generation() == Some(obj.generation)
            && (obj.status["containerId"].is_string() || obj.status["pid"].is_u64());
        {
            let drift = match &before {
                None if is_ready(&obj) || started_here => Some("the workload is gone".to_string()),
                Some(st)
                    if is_ready(&obj)
                        && matches!(
                            st.state,
                            WorkloadState::Missing | WorkloadState::Stopped | WorkloadState::Exited
                        ) =>
                {
                    Some(format!("the workload is {}", st.state))
                }
                _ => None,
            };
            if let Some(d) = drift {
                let o = obj.clone();
                let msg = format!("{d}; healing it");
                self.store
                    .with(move |s| event(s, &o, EventType::Warning, "DriftDetected", &msg))
                    .await;
            }
        }
        if let Some(r) = rollout_of(&obj) {
            return self
                .roll(&obj, &spec, &all, r, port, before, resolved)
                .await;
        }
        let replacing = before
            .as_ref()
            .is_some_and(|b| b.spec_hash != workload.spec_hash());
        if replacing {
            // Zero downtime where both can run side by side: start the new one in the other slot.
            if before.as_ref().is_some_and(|b| b.state.is_running()) {
                let r = Rollout {
                    slot: 1 - active,
                    port: match &spec.engine {
                        Some(e) if e.port == 0 => Some(
                            free_port()
                                .map_err(|e| ReconcileError::retry("NoFreePort", e.to_string()))?,
                        ),
                        _ => port,
                    },
                };
                let next = self.workload(&obj, &spec, &all, r.slot, r.port)?;
                if side_by_side(self.gpus_present, &obj, &spec, &next) {
                    let o = obj.clone();
                    let fields = json!({
                        "rollout": r,
                        "observedGeneration": obj.observed_generation(),
                    });
                    self.store
                        .with(move |s| {
                            event(
                                s,
                                &o,
                                EventType::Normal,
                                "Replacing",
                                "the spec changed: starting the new workload next to the old one, \
                                 which serves until the new one is Ready",
                            );
                            write_status(
                                s,
                                &o,
                                &fields,
                                vec![cond(
                                    "Reconciling",
                                    ConditionStatus::True,
                                    "Replacing",
                                    "starting the new workload next to the old one",
                                )],
                            )
                        })
                        .await?;
                    return Ok(Action::Requeue(Duration::ZERO));
                }
            }
            let o = obj.clone();
            self.store
                .with(move |s| {
                    event(
                        s,
                        &o,
                        EventType::Normal,
                        "Replacing",
                        "the spec changed: stopping the old workload, then starting the new one \
                         (stop-then-start: they need the same ports or GPUs, or the old one is not running)",
                    )
                })
                .await;
        }
        self.remove_stale(&obj, &workload).await?;
        let st = rt.ensure(&workload).await.map_err(runtime_err)?;
        let (action, _) = self
            .report(&obj, &workload, st, before.as_ref(), resolved, replacing)
            .await?;
        Ok(action)
    }

    /// The workload of `slot`; `port` is the engine's (chosen by the caller when the spec says 0).
    fn workload(
        &self,
        obj: &StoredObject,
        spec: &ModuleSpec,
        all: &[StoredObject],
        slot: u8,
        port: Option<u16>,
    ) -> Result<WorkloadSpec, ReconcileError> {
        let owner = Owner::new(obj.kind, obj.name.clone(), obj.uid.clone()).in_slot(slot);
        let Some(engine) = &spec.engine else {
            return WorkloadSpec::from_module(owner, spec)
                .map_err(|e| ReconcileError::stalled("InvalidWorkload", e.to_string()));
        };
        let model = spec
            .model
            .as_ref()
            .expect("validated: engine modules name a model");
        let model_path = model_path(all, model).ok_or_else(|| {
            ReconcileError::retry(
                "WaitingForModel",
                format!("model {model} has no stored path yet"),
            )
        })?;
        Ok(engine_workload(
            owner,
            &self.engine_exe,
            (model.as_str(), &model_path),
            engine,
            port.unwrap_or(engine.port),
            spec,
        ))
    }

    /// One step of a zero-downtime replacement: the new workload (in `r.slot`) starts next to the
    /// old one; once it is Ready, status switches to it (routes follow) and the old one goes.
    #[allow(clippy::too_many_arguments)]
    async fn roll(
        &self,
        obj: &StoredObject,
        spec: &ModuleSpec,
        all: &[StoredObject],
        r: Rollout,
        port: Option<u16>,
        old: Option<WorkloadStatus>,
        resolved: Option<ResolvedModule>,
    ) -> Result<Action, ReconcileError> {
        let port = match &spec.engine {
            Some(e) if e.port == 0 => r.port.or(port),
            _ => port,
        };
        let next = self.workload(obj, spec, all, r.slot, port)?;
        if !side_by_side(self.gpus_present, obj, spec, &next) {
            // The spec changed again mid-way into something that cannot run side by side.
            self.remove_slot(obj, r.slot).await?;
            update_status(&self.store, obj, json!({"rollout": null}), vec![]).await?;
            return Ok(Action::Requeue(Duration::ZERO));
        }
        let rt = self.runtime_for(next.kind())?;
        let st = rt.ensure(&next).await.map_err(runtime_err)?;
        if st.state.is_ready() {
            // Switch first (durably: routes follow status), then stop the old one. A crash in
            // between leaves the old slot to `remove_stale`.
            let (action, switched) = self.report(obj, &next, st, None, resolved, true).await?;
            if !switched {
                // The object changed meanwhile: look again before stopping anything.
                return Ok(Action::Requeue(Duration::ZERO));
            }
            // Requests already routed to the old workload finish before it stops.
            tokio::time::sleep(DRAIN).await;
            self.remove_slot(obj, slot_of(obj)).await?;
            let o = obj.clone();
            self.store
                .with(move |s| {
                    event(
                        s,
                        &o,
                        EventType::Normal,
                        "Replaced",
                        "the new workload is Ready and serves; the old one is stopped",
                    )
                })
                .await;
            return Ok(action);
        }
        let serving = old.as_ref().is_some_and(|b| b.state.is_ready());
        let what = which(&st);
        let detail = st.message.clone().unwrap_or_default();
        let msg = format!(
            "the new workload ({what}) is {}{}{}",
            st.state,
            if detail.is_empty() { "" } else { ": " },
            detail
        );
        let failing = matches!(st.state, WorkloadState::CrashLoop | WorkloadState::Exited);
        let mut conds = vec![
            cond(
                "Reconciling",
                ConditionStatus::True,
                "Replacing",
                format!("{msg}; the old one serves until it is Ready"),
            ),
            if failing {
                cond(
                    "Degraded",
                    ConditionStatus::True,
                    "ReplacementFailing",
                    msg.clone(),
                )
            } else {
                cond("Degraded", ConditionStatus::False, "AsExpected", "")
            },
        ];
        if !serving {
            conds.push(cond(
                "Ready",
                ConditionStatus::False,
                "Replacing",
                format!("the old workload is not serving; {msg}"),
            ));
        }
        update_status(
            &self.store,
            obj,
            json!({"observedGeneration": obj.observed_generation(), "rollout": r}),
            conds,
        )
        .await?;
        Ok(Action::Requeue(Duration::from_millis(500)))
    }

    /// Removes what runs for this Module under any other (runtime, slot) than `keep`'s: left by a
    /// crash in the middle of a replacement, or by a change of runtime (stop-then-start). Runs
    /// once per spec hash and daemon life, so a converged Module costs no extra calls.
    async fn remove_stale(
        &self,
        obj: &StoredObject,
        keep: &WorkloadSpec,
    ) -> Result<(), ReconcileError> {
        let mark = (obj.name.to_string(), keep.owner.slot, keep.spec_hash());
        if self
            .cleaned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&mark)
        {
            return Ok(());
        }
        let keep_key = keep.owner.key();
        for rt in std::iter::once(&self.native).chain(self.docker.iter()) {
            for slot in SLOTS {
                let key = OwnerKey::of(obj.kind, obj.name.as_str(), slot);
                if rt.kind() == keep.kind() && key == keep_key {
                    continue;
                }
                if rt.inspect(&key).await.map_err(runtime_err)?.is_some() {
                    tracing::info!(owner = %key, "removing a stale workload of this module");
                    rt.remove(&key, self.grace).await.map_err(runtime_err)?;
                }
            }
        }
        self.cleaned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(mark);
        Ok(())
    }

    /// Removes the workload of one slot from every runtime.
    async fn remove_slot(&self, obj: &StoredObject, slot: u8) -> Result<(), ReconcileError> {
        let key = OwnerKey::of(obj.kind, obj.name.as_str(), slot);
        for rt in std::iter::once(&self.native).chain(self.docker.iter()) {
            rt.remove(&key, self.grace).await.map_err(runtime_err)?;
        }
        Ok(())
    }

    /// Writes what runs (`st`, the workload `w`) into status, with the events a user should see;
    /// the next action, and whether the status was written (false: the object changed meanwhile).
    async fn report(
        &self,
        obj: &StoredObject,
        w: &WorkloadSpec,
        st: WorkloadStatus,
        before: Option<&WorkloadStatus>,
        resolved: Option<ResolvedModule>,
        replacing: bool,
    ) -> Result<(Action, bool), ReconcileError> {
        let kind = w.kind();
        let started = before.is_none_or(|b| b.pid != st.pid || b.container_id != st.container_id);
        let seen_restarts = obj
            .status
            .get("restarts")
            .and_then(|r| r.as_u64())
            .unwrap_or(0);
        let restarted = u64::from(st.restarts) > seen_restarts && !replacing;
        let endpoint = st.endpoint.clone().or_else(|| w.endpoint());
        let ready = st.state.is_ready();
        let st_state = st.state;
        let host_ports: Vec<u16> = w.ports.iter().map(|p| p.host_port).collect();
        let fields = json!({
            "runtime": kind,
            "containerId": st.container_id,
            "pid": st.pid,
            "endpoint": endpoint,
            "hostPorts": host_ports,
            "restarts": st.restarts,
            "lastExitCode": st.last_exit_code,
            "resolved": resolved,
            "slot": w.owner.slot,
            "rollout": null,
            // What this workload serves (routes use it: during a replacement the spec may already
            // name another model than the one still serving).
            "model": obj.spec.get("model"),
        });
        let message = st.message.clone().unwrap_or_else(|| st.state.to_string());
        let conds = vec![
            if ready {
                cond(
                    "Ready",
                    ConditionStatus::True,
                    "Healthy",
                    "the workload runs and its probe passes",
                )
            } else {
                cond(
                    "Ready",
                    ConditionStatus::False,
                    &st.state.to_string(),
                    message.clone(),
                )
            },
            cond(
                "Reconciling",
                if ready {
                    ConditionStatus::False
                } else {
                    ConditionStatus::True
                },
                if ready {
                    "Converged"
                } else {
                    "WaitingForHealth"
                },
                "",
            ),
            cond("Stalled", ConditionStatus::False, "Progressing", ""),
            if st.state == WorkloadState::CrashLoop {
                cond("Degraded", ConditionStatus::True, "CrashLoop", message)
            } else {
                cond("Degraded", ConditionStatus::False, "AsExpected", "")
            },
        ];
        let o = obj.clone();
        let written = self
            .store
            .with(move |s| {
                if restarted {
                    let code = st
                        .last_exit_code
                        .map(|c| format!(" (exit code {c})"))
                        .unwrap_or_default();
                    let msg = format!(
                        "the workload exited{code} and was restarted (restart {})",
                        st.restarts
                    );
                    event(s, &o, EventType::Warning, "Restarted", &msg);
                }
                // A restart is one event (Restarted), not two.
                if started && !restarted {
                    let what = which(&st);
                    event(
                        s,
                        &o,
                        EventType::Normal,
                        "Started",
                        &format!("{kind:?} workload started ({what})").to_lowercase(),
                    );
                }
                if ready && !is_ready(&o) {
                    event(s, &o, EventType::Normal, "Ready", "the workload is ready");
                }
                write_status(s, &o, &fields, conds)
            })
            .await?;
        // Ready, or failing (CrashLoop, Exited: the runtime announces every restart and exit):
        // runtime events and the resync bring the next look; starting: poll for health.
        let settled = ready
            || matches!(
                st_state,
                WorkloadState::CrashLoop | WorkloadState::Exited | WorkloadState::Stopped
            );
        let action = if settled {
            Action::Requeue(READY_RECHECK)
        } else {
            Action::Requeue(Duration::from_millis(500))
        };
        Ok((action, written))
    }
}

/// How often a Ready Module is looked at without a trigger (runtime events and the scheduler's
/// resync cover changes; this is a backstop).
const READY_RECHECK: Duration = Duration::from_secs(60);

/// How long the old workload of a zero-downtime replacement keeps running after routes switched
/// to the new one (the API's route table follows the store within milliseconds; this is margin
/// for requests already on their way).
const DRAIN: Duration = Duration::from_secs(1);

/// The slots a Module's workload can run in (see [`Owner::slot`]).
const SLOTS: [u8; 2] = [0, 1];

/// A zero-downtime replacement in progress, recorded in `status.rollout` before the new workload
/// starts: its slot and, for engines on a chosen port, that port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Rollout {
    slot: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

fn rollout_of(obj: &StoredObject) -> Option<Rollout> {
    serde_json::from_value(obj.status.get("rollout")?.clone()).ok()
}

/// The slot whose workload serves this Module (`status.slot`, 0 when never recorded).
pub fn slot_of(obj: &StoredObject) -> u8 {
    obj.status
        .get("slot")
        .and_then(|s| s.as_u64())
        .map_or(0, |s| (s == 1) as u8)
}

/// The owner key of the workload that serves this Module now.
pub fn serving_key(obj: &StoredObject) -> OwnerKey {
    OwnerKey::of(obj.kind, obj.name.as_str(), slot_of(obj))
}

/// Whether `next` can run next to the workload that serves now: no host port in common, and no
/// GPU claimed (two copies of a model rarely fit in VRAM).
fn side_by_side(
    gpus_present: bool,
    obj: &StoredObject,
    spec: &ModuleSpec,
    next: &WorkloadSpec,
) -> bool {
    let gpu = next.limits.gpus.is_some()
        || (gpus_present && spec.engine.as_ref().is_some_and(|e| e.gpu_layers != 0));
    let old = serving_ports(obj);
    !gpu && next.ports.iter().all(|p| !old.contains(&p.host_port))
}

/// Host ports of the workload that serves now (`status.hostPorts`, else the endpoint's port).
fn serving_ports(obj: &StoredObject) -> Vec<u16> {
    match obj.status.get("hostPorts").and_then(|p| p.as_array()) {
        Some(ports) => ports
            .iter()
            .filter_map(|p| p.as_u64().and_then(|p| u16::try_from(p).ok()))
            .collect(),
        None => recorded_port(obj).into_iter().collect(),
    }
}

fn model_path(all: &[StoredObject], model: &ObjectName) -> Option<PathBuf> {
    all.iter()
        .find(|o| o.kind == Kind::Model && o.name == *model)
        .and_then(|o| {
            o.status
                .get("path")
                .and_then(|p| p.as_str())
                .map(PathBuf::from)
        })
}

/// `pid 123` or `container 0123456789ab`: which workload a message is about.
fn which(st: &WorkloadStatus) -> String {
    match (st.pid, &st.container_id) {
        (_, Some(c)) => format!("container {}", &c[..12.min(c.len())]),
        (Some(p), None) => format!("pid {p}"),
        (None, None) => String::new(),
    }
}

fn runtime_err(e: RuntimeError) -> ReconcileError {
    match e {
        RuntimeError::ImageUnavailable { .. } => {
            ReconcileError::retry("ImageUnavailable", e.to_string())
        }
        RuntimeError::ProgramNotFound { .. }
        | RuntimeError::InvalidSpec { .. }
        | RuntimeError::NameTaken { .. } => {
            ReconcileError::stalled("InvalidWorkload", e.to_string())
        }
        RuntimeError::PortConflict { .. } => ReconcileError::retry("PortConflict", e.to_string()),
        RuntimeError::DockerUnavailable { .. } => {
            ReconcileError::retry("DockerUnavailable", e.to_string())
        }
        _ => ReconcileError::retry("RuntimeError", e.to_string()),
    }
}

/// `None` when everything the module needs is Ready at its generation; else the reason and message.
fn gate(spec: &ModuleSpec, all: &[StoredObject]) -> Option<(&'static str, String)> {
    let find = |k: Kind, n: &ObjectName| all.iter().find(|o| o.kind == k && o.name == *n);
    if let Some(m) = &spec.model {
        match find(Kind::Model, m) {
            None => return Some(("WaitingForModel", format!("model {m} does not exist"))),
            Some(o) if !is_ready(o) => {
                return Some(("WaitingForModel", format!("model {m} is not Ready yet")));
            }
            _ => {}
        }
    }
    let waiting: Vec<String> = spec
        .depends_on
        .iter()
        .filter(|r| find(r.kind, &r.name).is_none_or(|o| !is_ready(o)))
        .map(|r| r.to_string())
        .collect();
    if !waiting.is_empty() {
        return Some((
            "WaitingForDependencies",
            format!("waiting for {} to be Ready", waiting.join(", ")),
        ));
    }
    None
}

fn recorded_port(obj: &StoredObject) -> Option<u16> {
    obj.status
        .get("endpoint")?
        .as_str()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The native workload of an `engine:` module: this executable's `engine llama`.
fn engine_workload(
    owner: Owner,
    exe: &std::path::Path,
    (model_name, model): (&str, &std::path::Path),
    e: &EngineSpec,
    port: u16,
    spec: &ModuleSpec,
) -> WorkloadSpec {
    let mut argv = vec![
        exe.display().to_string(),
        "engine".into(),
        "llama".into(),
        "--model".into(),
        model.display().to_string(),
        // Clients send the Model's name; the OpenAI endpoint routes by it.
        "--name".into(),
        model_name.to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--parallel".into(),
        e.parallel.max(1).to_string(),
        "--gpu-layers".into(),
        e.gpu_layers.to_string(),
    ];
    if e.context_size > 0 {
        argv.extend(["--ctx".into(), e.context_size.to_string()]);
    }
    if e.threads > 0 {
        argv.extend(["--threads".into(), e.threads.to_string()]);
    }
    let mut w = WorkloadSpec::native(owner, argv);
    w.restart = spec.restart_policy;
    w.ports = vec![Port {
        container_port: port,
        host_port: port,
        protocol: Protocol::Tcp,
    }];
    w.probe = Some(Probe {
        action: ProbeAction::Http {
            port,
            path: "/health".into(),
        },
        period: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
        failure_threshold: 3,
    });
    w
}

impl Reconciler for ModuleReconciler {
    fn kind(&self) -> Kind {
        Kind::Module
    }

    fn reconcile(
        &self,
        key: Key,
        obj: Option<StoredObject>,
    ) -> BoxFuture<'_, Result<Action, ReconcileError>> {
        Box::pin(async move {
            match obj {
                None => {
                    // Gone from the store: nothing of it may run.
                    self.remove_everywhere(&key).await?;
                    Ok(Action::AwaitChange)
                }
                Some(o) if o.deleted_at.is_some() => {
                    // Tear down in reverse order: dependents deleted with it go first.
                    let all = self
                        .store
                        .with(|s| s.list(Some(Kind::Module), &Default::default()))
                        .await?;
                    let waiting: Vec<String> = all
                        .iter()
                        .filter(|m| m.name != o.name && m.deleted_at.is_some())
                        .filter(|m| match m.typed_spec() {
                            Ok(Spec::Module(ms)) => ms
                                .depends_on
                                .iter()
                                .any(|r| r.kind == Kind::Module && r.name == o.name),
                            _ => false,
                        })
                        .map(|m| m.name.to_string())
                        .collect();
                    if !waiting.is_empty() {
                        return Err(ReconcileError::retry(
                            "WaitingForDependents",
                            format!(
                                "{} still depend on it; they are removed first",
                                waiting.join(", ")
                            ),
                        ));
                    }
                    self.remove_everywhere(&key).await?;
                    let (k, n) = (o.kind, o.name.to_string());
                    let rest: Vec<String> = o
                        .finalizers
                        .iter()
                        .filter(|f| *f != RUNTIME_FINALIZER)
                        .cloned()
                        .collect();
                    let oo = o.clone();
                    self.store
                        .with(move |s| {
                            event(
                                s,
                                &oo,
                                EventType::Normal,
                                "Removed",
                                "the workload is stopped and removed",
                            );
                            match s.set_finalizers(k, &n, &rest) {
                                Err(StoreError::NotFound { .. }) => Ok(()),
                                r => r,
                            }
                        })
                        .await?;
                    Ok(Action::AwaitChange)
                }
                Some(o) => self.converge(o).await,
            }
        })
    }

    fn dependents(&self, changed: &Key, all: &[StoredObject]) -> Vec<Key> {
        all.iter()
            .filter(|o| o.kind == Kind::Module)
            .filter(|o| {
                let Ok(Spec::Module(m)) = o.typed_spec() else {
                    return false;
                };
                (changed.0 == Kind::Model
                    && m.model.as_ref().is_some_and(|n| n.as_str() == changed.1))
                    || m.depends_on
                        .iter()
                        .any(|r| r.kind == changed.0 && r.name.as_str() == changed.1)
            })
            .map(|o| (o.kind, o.name.to_string()))
            .collect()
    }

    /// Modules stalled for a reason that lies in other objects: admission (policies, the other
    /// Modules and Models) and `dependsOn` cycles.
    fn unstalled_by(&self, changed: &Key, all: &[StoredObject]) -> Vec<Key> {
        if !matches!(changed.0, Kind::Module | Kind::Model | Kind::Policy) {
            return Vec::new();
        }
        all.iter()
            .filter(|o| o.kind == Kind::Module)
            .filter(|o| {
                o.condition("Stalled").is_some_and(|(s, reason, _)| {
                    s == ConditionStatus::True
                        && matches!(reason.as_str(), "AdmissionRefused" | "DependencyCycle")
                })
            })
            .map(|o| (o.kind, o.name.to_string()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::module::{GpuRequest, NativeSpec};

    fn module(status: serde_json::Value) -> StoredObject {
        StoredObject {
            kind: Kind::Module,
            name: ObjectName::new("web").unwrap(),
            uid: "u".into(),
            generation: 2,
            resource_version: 7,
            created_at: String::new(),
            deleted_at: None,
            finalizers: vec![],
            labels: Default::default(),
            annotations: Default::default(),
            spec: json!({}),
            status,
        }
    }

    fn native_on(port: Option<u16>) -> (ModuleSpec, WorkloadSpec) {
        let spec = ModuleSpec {
            native: Some(NativeSpec {
                command: vec!["/bin/true".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut w = WorkloadSpec::from_module(
            Owner::new(Kind::Module, ObjectName::new("web").unwrap(), "u").in_slot(1),
            &spec,
        )
        .unwrap();
        w.ports = port
            .map(|p| Port {
                container_port: p,
                host_port: p,
                protocol: Protocol::Tcp,
            })
            .into_iter()
            .collect();
        (spec, w)
    }

    #[test]
    fn side_by_side_only_without_shared_ports_or_gpus() {
        let serving = module(json!({"hostPorts": [8000], "slot": 0}));
        let (spec, other_port) = native_on(Some(8001));
        assert!(side_by_side(false, &serving, &spec, &other_port));
        let (spec, same_port) = native_on(Some(8000));
        assert!(!side_by_side(false, &serving, &spec, &same_port));
        let (spec, no_port) = native_on(None);
        assert!(side_by_side(true, &serving, &spec, &no_port));
        let mut gpu = no_port.clone();
        gpu.limits.gpus = Some(GpuRequest::All);
        assert!(!side_by_side(false, &serving, &spec, &gpu));
        // Without hostPorts (older status), the endpoint's port counts.
        let old = module(json!({"endpoint": "http://127.0.0.1:8000"}));
        assert!(!side_by_side(false, &old, &spec, &same_port));
        // An engine with GPU layers on a GPU machine is replaced stop-then-start.
        let engine = ModuleSpec {
            engine: Some(serde_json::from_value(json!({"type": "llama"})).unwrap()),
            ..Default::default()
        };
        assert!(side_by_side(false, &serving, &engine, &other_port));
        assert!(!side_by_side(true, &serving, &engine, &other_port));
    }

    #[test]
    fn slot_and_rollout_are_read_from_status() {
        assert_eq!(slot_of(&module(json!({}))), 0);
        assert_eq!(slot_of(&module(json!({"slot": 1}))), 1);
        assert_eq!(
            serving_key(&module(json!({"slot": 1}))).as_str(),
            "Module/web@1"
        );
        assert_eq!(rollout_of(&module(json!({}))), None);
        let r = Rollout {
            slot: 1,
            port: Some(4242),
        };
        let o = module(json!({ "rollout": r }));
        assert_eq!(rollout_of(&o), Some(r));
    }
}
