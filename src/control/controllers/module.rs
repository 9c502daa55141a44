//! The Module controller: gates a Module on what it needs, admits it, and has the runtime run it.
//!
//! Order of a reconcile, each step safe to repeat:
//! 1. deleted → the runtime removes the workload, then the finalizer goes (the object disappears);
//! 2. `suspend: true` → nothing;
//! 3. `model:` and `dependsOn` must be Ready at their current generation (else `Waiting...`);
//! 4. admission by the active policy tier (a refusal stalls the Module; nothing of it runs);
//! 5. durable intent: the finalizer (and for the engine, its port) is recorded before anything runs;
//! 6. `ensure` on the runtime (create, adopt, or replace on a spec change), then status.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::json;

use super::from_catalog::{ServedBlob, concrete};
use super::queue::Key;
use super::status::{cond, event, is_ready, update_status, write_status};
use super::{Action, ReconcileError, Reconciler, SharedStore};
use crate::api::module::{EngineSpec, Protocol, RuntimeKind};
use crate::api::{ConditionStatus, Kind, ModuleSpec, ObjectName, Spec};
use crate::artifacts::catalog::Catalog;
use crate::control::store::{EventType, StoreError, StoredObject};
use crate::runtime::{
    Owner, OwnerKey, Port, Probe, ProbeAction, Runtime, RuntimeError, WorkloadSpec, WorkloadState,
};

/// The finalizer that keeps a Module until its workload is gone.
pub const RUNTIME_FINALIZER: &str = "localaistack.io/runtime";

/// Decides whether a Module may run on this machine (the control layer's policy).
pub trait Admission: Send + Sync {
    /// `Err(verdict)` refuses, with the precise reason.
    fn admit(&self, module: &StoredObject, all: &[StoredObject]) -> Result<(), String>;
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
    pub grace: Duration,
}

fn owner_key(key: &Key) -> OwnerKey {
    OwnerKey(format!("{}/{}", key.0, key.1))
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

    async fn remove_everywhere(&self, key: &Key) -> Result<(), ReconcileError> {
        let ok = owner_key(key);
        self.native
            .remove(&ok, self.grace)
            .await
            .map_err(runtime_err)?;
        if let Some(d) = &self.docker {
            d.remove(&ok, self.grace).await.map_err(runtime_err)?;
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
        // `from:` modules: the catalog's manifest made concrete (a container or the engine).
        let (spec, resolved) = if spec.from.is_some() {
            let blob = spec.model.as_ref().and_then(|m| {
                all.iter()
                    .find(|o| o.kind == Kind::Model && o.name == *m)
                    .and_then(|o| {
                        o.status
                            .get("path")
                            .and_then(|p| p.as_str())
                            .map(PathBuf::from)
                    })
                    .map(|p| (m.to_string(), p))
            });
            let served = blob.as_ref().map(|(n, p)| ServedBlob { name: n, path: p });
            match concrete(&spec, &self.catalog, served) {
                Ok((s, r)) => (s, Some(r)),
                Err(e) => return Err(ReconcileError::stalled("UnresolvableModule", e.to_string())),
            }
        } else {
            (spec, None)
        };
        let owner = Owner::new(obj.kind, obj.name.clone(), obj.uid.clone());
        let workload = match (&spec.engine, &spec.container, &spec.native) {
            (Some(engine), _, _) => {
                let model = spec
                    .model
                    .as_ref()
                    .expect("validated: engine modules name a model");
                let model_path = all
                    .iter()
                    .find(|o| o.kind == Kind::Model && o.name == *model)
                    .and_then(|m| {
                        m.status
                            .get("path")
                            .and_then(|p| p.as_str())
                            .map(PathBuf::from)
                    })
                    .ok_or_else(|| {
                        ReconcileError::retry(
                            "WaitingForModel",
                            format!("model {model} has no stored path yet"),
                        )
                    })?;
                let port = match engine.port {
                    0 => match recorded_port(&obj) {
                        Some(p) => p,
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
                    p => p,
                };
                engine_workload(
                    owner,
                    &self.engine_exe,
                    (model.as_str(), &model_path),
                    engine,
                    port,
                    &spec,
                )
            }
            _ => WorkloadSpec::from_module(owner, &spec)
                .map_err(|e| ReconcileError::stalled("InvalidWorkload", e.to_string()))?,
        };
        let kind = workload.kind();
        let rt = self.runtime_for(kind)?;
        // Drift: what ran before is gone or stopped behind our back.
        let before = rt
            .inspect(&workload.owner.key())
            .await
            .map_err(runtime_err)?;
        let previously_ready = is_ready(&obj);
        if previously_ready {
            let drift = match &before {
                None => Some("the workload is gone".to_string()),
                Some(st)
                    if matches!(
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
        let replacing = before
            .as_ref()
            .is_some_and(|b| b.spec_hash != workload.spec_hash());
        if replacing {
            let o = obj.clone();
            self.store
                .with(move |s| {
                    event(s, &o, EventType::Normal, "Replacing", "the spec changed: stopping the old workload, then starting the new one (stop-then-start)")
                })
                .await;
        }
        let st = rt.ensure(&workload).await.map_err(runtime_err)?;
        let started = before
            .as_ref()
            .is_none_or(|b| b.pid != st.pid || b.container_id != st.container_id);
        let seen_restarts = obj
            .status
            .get("restarts")
            .and_then(|r| r.as_u64())
            .unwrap_or(0);
        let restarted = u64::from(st.restarts) > seen_restarts && !replacing;
        let endpoint = st.endpoint.clone().or_else(|| workload.endpoint());
        let ready = st.state.is_ready();
        let fields = json!({
            "runtime": kind,
            "containerId": st.container_id,
            "pid": st.pid,
            "endpoint": endpoint,
            "restarts": st.restarts,
            "lastExitCode": st.last_exit_code,
            "resolved": resolved,
        });
        let message = st.message.clone().unwrap_or_else(|| st.state.to_string());
        let mut conds = vec![
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
        ];
        conds.push(if st.state == WorkloadState::CrashLoop {
            cond(
                "Degraded",
                ConditionStatus::True,
                "CrashLoop",
                message.clone(),
            )
        } else {
            cond("Degraded", ConditionStatus::False, "AsExpected", "")
        });
        let o = obj.clone();
        self.store
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
                if started {
                    let what = st
                        .pid
                        .map(|p| format!("pid {p}"))
                        .or(st
                            .container_id
                            .clone()
                            .map(|c| format!("container {}", &c[..12.min(c.len())])))
                        .unwrap_or_default();
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
        Ok(if ready {
            Action::Requeue(Duration::from_secs(15))
        } else {
            Action::Requeue(Duration::from_millis(500))
        })
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
}
