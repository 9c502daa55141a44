//! [`ReconnectingDocker`]: the container [`Runtime`] of a daemon that must not depend on the boot
//! order of the machine. The Docker engine may start after the daemon, stop, and come back; this
//! wrapper connects on first use (and then at most once a second while the engine is away),
//! turns a lost engine into [`RuntimeError::DockerUnavailable`] (a condition of the Modules, never
//! a crash), and says when the engine becomes available so that the daemon re-triggers the
//! container Modules.
//!
//! # Guarantees
//! - Every operation either reaches the engine or fails with `DockerUnavailable`; none blocks
//!   longer than the connect timeout on an absent engine.
//! - [`ReconnectingDocker::availability`] turns `true` on every transition from unavailable to
//!   available (first connection included), and `false` when an operation or a
//!   [`ReconnectingDocker::check`] finds the engine gone.
//!
//! # Caveats
//! - While the engine is away, `inspect` reports nothing, `list` an empty list, and `stop` /
//!   `remove` do nothing: what runs there cannot be reached (the daemon behaved so before, when it
//!   had no engine at all). A removal missed that way leaves a container that the next `ensure`
//!   of its owner adopts or replaces.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{OnceCell, watch};

use super::docker::{DockerConfig, DockerRuntime};
use super::{
    EventStream, LogOptions, LogStream, OwnerKey, Runtime, RuntimeError, WorkloadSpec,
    WorkloadStatus,
};
use crate::api::module::RuntimeKind;

/// How often an absent engine is tried again on use.
const RETRY_EVERY: Duration = Duration::from_secs(1);

pub struct ReconnectingDocker {
    cfg: DockerConfig,
    /// The runtime once the engine answered; bollard reconnects its socket per request, so it
    /// keeps working when the engine restarts.
    inner: Arc<OnceCell<Arc<DockerRuntime>>>,
    available: watch::Sender<bool>,
    /// The last failure and when: an absent engine is not asked again within [`RETRY_EVERY`].
    last_failure: Mutex<Option<(Instant, RuntimeError)>>,
    attempt: tokio::sync::Mutex<()>,
}

fn clone_err(e: &RuntimeError, host: &str) -> RuntimeError {
    match e {
        RuntimeError::DockerUnavailable { host, reason } => RuntimeError::DockerUnavailable {
            host: host.clone(),
            reason: reason.clone(),
        },
        other => RuntimeError::DockerUnavailable {
            host: host.to_string(),
            reason: other.to_string(),
        },
    }
}

impl ReconnectingDocker {
    /// A runtime that connects on first use. Call [`ReconnectingDocker::check`] to try at once.
    pub fn new(cfg: DockerConfig) -> Self {
        ReconnectingDocker {
            cfg,
            inner: Arc::new(OnceCell::new()),
            available: watch::channel(false).0,
            last_failure: Mutex::new(None),
            attempt: tokio::sync::Mutex::new(()),
        }
    }

    /// `true` while the engine answers; changes when that is found out.
    pub fn availability(&self) -> watch::Receiver<bool> {
        self.available.subscribe()
    }

    /// Why the engine is unavailable, if it is.
    pub fn last_error(&self) -> Option<String> {
        if *self.available.borrow() {
            return None;
        }
        let last = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        Some(match last.as_ref() {
            Some((_, e)) => e.to_string(),
            None => "not connected yet".into(),
        })
    }

    fn host(&self) -> String {
        std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
    }

    fn set_available(&self, up: bool) {
        self.available.send_if_modified(|v| {
            let changed = *v != up;
            *v = up;
            changed
        });
        if up {
            *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    fn fail(&self, e: RuntimeError) -> RuntimeError {
        let host = self.host();
        let out = clone_err(&e, &host);
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), e));
        if *self.available.borrow() {
            tracing::warn!(error = %out, "the Docker engine went away; container modules wait for it");
        }
        self.set_available(false);
        out
    }

    /// Connects (first time) or pings the engine, now, and updates the availability.
    pub async fn check(&self) -> Result<Arc<DockerRuntime>, RuntimeError> {
        let _one = self.attempt.lock().await;
        let rt = match self.inner.get() {
            Some(rt) => rt.clone(),
            None => match DockerRuntime::connect(self.cfg.clone()).await {
                Ok(rt) => {
                    let rt = Arc::new(rt);
                    let _ = self.inner.set(rt.clone());
                    rt
                }
                Err(e) => return Err(self.fail(e)),
            },
        };
        let ping = tokio::time::timeout(self.cfg.connect_timeout, rt.client().ping()).await;
        match ping {
            Ok(Ok(_)) => {
                if !*self.available.borrow() {
                    tracing::info!(host = %rt.host(), "the Docker engine is available");
                }
                self.set_available(true);
                Ok(rt)
            }
            Ok(Err(e)) => Err(self.fail(RuntimeError::DockerUnavailable {
                host: rt.host().to_string(),
                reason: e.to_string(),
            })),
            Err(_) => Err(self.fail(RuntimeError::DockerUnavailable {
                host: rt.host().to_string(),
                reason: "no answer in time".into(),
            })),
        }
    }

    /// The runtime when the engine is (believed) available; else a new attempt, at most once a
    /// second.
    async fn get(&self) -> Result<Arc<DockerRuntime>, RuntimeError> {
        if *self.available.borrow()
            && let Some(rt) = self.inner.get()
        {
            return Ok(rt.clone());
        }
        {
            let last = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, e)) = last.as_ref()
                && at.elapsed() < RETRY_EVERY
            {
                return Err(clone_err(e, &self.host()));
            }
        }
        self.check().await
    }

    /// Runs `op`; a failure that comes from a lost engine (it no longer answers a ping) becomes
    /// `DockerUnavailable`.
    async fn run<T, F>(&self, op: impl FnOnce(Arc<DockerRuntime>) -> F) -> Result<T, RuntimeError>
    where
        F: std::future::Future<Output = Result<T, RuntimeError>>,
    {
        let rt = self.get().await?;
        match op(rt.clone()).await {
            Err(e @ RuntimeError::Docker { .. }) => {
                let ping = tokio::time::timeout(self.cfg.connect_timeout, rt.client().ping()).await;
                if matches!(ping, Ok(Ok(_))) {
                    Err(e)
                } else {
                    Err(self.fail(e))
                }
            }
            Err(e @ RuntimeError::DockerUnavailable { .. }) => Err(self.fail(e)),
            other => other,
        }
    }
}

/// Without an engine there is nothing to inspect, stop or remove: `fallback` stands for that.
fn absent_engine_is<T>(r: Result<T, RuntimeError>, fallback: T) -> Result<T, RuntimeError> {
    match r {
        Err(RuntimeError::DockerUnavailable { .. }) => Ok(fallback),
        other => other,
    }
}

impl Runtime for ReconnectingDocker {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Container
    }

    fn ensure<'a>(
        &'a self,
        spec: &'a WorkloadSpec,
    ) -> BoxFuture<'a, Result<WorkloadStatus, RuntimeError>> {
        self.run(move |rt: Arc<DockerRuntime>| async move { rt.ensure(spec).await })
            .boxed()
    }

    fn inspect<'a>(
        &'a self,
        owner: &'a OwnerKey,
    ) -> BoxFuture<'a, Result<Option<WorkloadStatus>, RuntimeError>> {
        async move {
            absent_engine_is(
                self.run(move |rt: Arc<DockerRuntime>| async move { rt.inspect(owner).await })
                    .await,
                None,
            )
        }
        .boxed()
    }

    fn stop<'a>(
        &'a self,
        owner: &'a OwnerKey,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        async move {
            absent_engine_is(
                self.run(move |rt: Arc<DockerRuntime>| async move { rt.stop(owner, grace).await })
                    .await,
                (),
            )
        }
        .boxed()
    }

    fn remove<'a>(
        &'a self,
        owner: &'a OwnerKey,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        async move {
            absent_engine_is(
                self.run(
                    move |rt: Arc<DockerRuntime>| async move { rt.remove(owner, grace).await },
                )
                .await,
                (),
            )
        }
        .boxed()
    }

    fn logs<'a>(
        &'a self,
        owner: &'a OwnerKey,
        opts: LogOptions,
    ) -> BoxFuture<'a, Result<LogStream, RuntimeError>> {
        self.run(move |rt: Arc<DockerRuntime>| async move { rt.logs(owner, opts).await })
            .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<WorkloadStatus>, RuntimeError>> {
        async move {
            match self
                .run(move |rt: Arc<DockerRuntime>| async move { rt.list().await })
                .await
            {
                Err(RuntimeError::DockerUnavailable { .. }) => Ok(Vec::new()),
                other => other,
            }
        }
        .boxed()
    }

    /// The engine's events once it is connected (the inner runtime reconnects its event stream
    /// by itself after that).
    fn events(&self) -> EventStream {
        let mut up = self.availability();
        let cell = self.inner.clone();
        futures_util::stream::once(async move {
            loop {
                if *up.borrow_and_update()
                    && let Some(rt) = cell.get()
                {
                    return rt.events();
                }
                if up.changed().await.is_err() {
                    return futures_util::stream::empty().boxed();
                }
            }
        })
        .flatten()
        .boxed()
    }

    /// Nothing while the engine is away.
    fn usage<'a>(&'a self, status: &'a WorkloadStatus) -> BoxFuture<'a, super::usage::Usage> {
        async move {
            match self.inner.get() {
                Some(rt) => rt.usage(status).await,
                None => Default::default(),
            }
        }
        .boxed()
    }
}
