//! Health probes (HTTP, TCP, exec) and a monitor task that keeps readiness and liveness apart.
//!
//! Readiness: the workload may take traffic — true only after a probe passed, false again on the
//! first failure. Liveness: the workload should be restarted — only after `failure_threshold`
//! consecutive failures of a workload that was ready at least once (a slow start is not a death).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;

use super::{Probe, ProbeAction};

/// The verdict of the probes so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthReport {
    /// Probes run since the monitor started.
    pub probes: u64,
    /// The last probe passed.
    pub ready: bool,
    /// A probe passed at least once.
    pub ever_ready: bool,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

impl HealthReport {
    /// `None` before the first probe.
    pub fn healthy(&self) -> Option<bool> {
        (self.probes > 0).then_some(self.ready)
    }
}

/// A probe that returns `Ok` when healthy and the reason otherwise.
pub type ProbeFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Runs one host-side probe: HTTP/TCP against `host`, exec on this machine.
pub async fn probe_once(
    action: &ProbeAction,
    host: IpAddr,
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, probe_inner(action, host)).await {
        Ok(r) => r,
        Err(_) => Err(format!("probe timed out after {}s", timeout.as_secs_f64())),
    }
}

async fn probe_inner(action: &ProbeAction, host: IpAddr) -> Result<(), String> {
    match action {
        ProbeAction::Tcp { port } => TcpStream::connect(SocketAddr::new(host, *port))
            .await
            .map(|_| ())
            .map_err(|e| format!("tcp {host}:{port}: {e}")),
        ProbeAction::Http { port, path } => http_get(host, *port, path).await,
        ProbeAction::Exec { argv } => {
            let Some((prog, args)) = argv.split_first() else {
                return Err("exec probe has no program".into());
            };
            let status = tokio::process::Command::new(prog)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| format!("exec {prog}: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("exec {prog}: {status}"))
            }
        }
    }
}

/// A minimal HTTP/1.0 GET: 2xx and 3xx pass. Hand-rolled so that 50 idle workloads cost no
/// client pools; probes need nothing more.
async fn http_get(host: IpAddr, port: u16, path: &str) -> Result<(), String> {
    let addr = SocketAddr::new(host, port);
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("http {addr}{path}: {e}"))?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: lasctl-probe\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("http {addr}{path}: {e}"))?;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("http {addr}{path}: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or_default();
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("http {addr}{path}: not an HTTP response: {line:?}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("http {addr}{path}: status {code}"))
    }
}

/// A task probing one workload every `period`.
///
/// # Guarantees
/// - `on_dead` is called (once per streak) when a workload that was ready fails
///   `failure_threshold` probes in a row; the caller restarts it.
/// - The task ends when the monitor is dropped.
pub struct HealthMonitor {
    rx: watch::Receiver<HealthReport>,
    task: tokio::task::JoinHandle<()>,
}

impl HealthMonitor {
    pub fn spawn(
        probe: &Probe,
        run: ProbeFn,
        on_dead: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> Self {
        let (tx, rx) = watch::channel(HealthReport::default());
        let period = probe.period;
        let timeout = probe.timeout;
        let threshold = probe.failure_threshold;
        let span = tracing::debug_span!("health", action = ?probe.action);
        let task = tokio::spawn(
            async move {
                let mut report = HealthReport::default();
                let mut fired = false;
                // The first probe runs at once: start-to-ready latency should not pay a period.
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let r = match tokio::time::timeout(timeout, run()).await {
                        Ok(r) => r,
                        Err(_) => Err(format!("probe timed out after {}s", timeout.as_secs_f64())),
                    };
                    report.probes += 1;
                    match r {
                        Ok(()) => {
                            report.ready = true;
                            report.ever_ready = true;
                            report.consecutive_failures = 0;
                            report.last_error = None;
                            fired = false;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "probe failed");
                            report.ready = false;
                            report.consecutive_failures += 1;
                            report.last_error = Some(e);
                            if report.ever_ready
                                && !fired
                                && report.consecutive_failures >= threshold
                                && let Some(f) = &on_dead
                            {
                                fired = true;
                                f();
                            }
                        }
                    }
                    if tx.send(report.clone()).is_err() {
                        break;
                    }
                    // Until the first success probe faster, so Ready is seen soon after start.
                    if !report.ever_ready {
                        let fast = period.min(Duration::from_millis(25));
                        tokio::time::sleep(fast).await;
                        tick.reset_immediately();
                    }
                }
            }
            .instrument(span),
        );
        Self { rx, task }
    }

    pub fn report(&self) -> HealthReport {
        self.rx.borrow().clone()
    }

    /// A receiver of the reports (it ends when the monitor is dropped).
    pub fn subscribe(&self) -> watch::Receiver<HealthReport> {
        self.rx.clone()
    }

    /// Waits for the next report.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn http_and_tcp_probes_against_a_real_listener() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 512];
                let n = s.read(&mut b).await.unwrap();
                let req = String::from_utf8_lossy(&b[..n]).to_string();
                let resp = if req.starts_with("GET /ok ") {
                    "HTTP/1.0 200 OK\r\n\r\nok"
                } else {
                    "HTTP/1.0 503 Service Unavailable\r\n\r\n"
                };
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let t = Duration::from_secs(2);
        probe_once(&ProbeAction::Tcp { port }, LO, t).await.unwrap();
        probe_once(
            &ProbeAction::Http {
                port,
                path: "/ok".into(),
            },
            LO,
            t,
        )
        .await
        .unwrap();
        let e = probe_once(
            &ProbeAction::Http {
                port,
                path: "/no".into(),
            },
            LO,
            t,
        )
        .await
        .unwrap_err();
        assert!(e.contains("status 503"), "{e}");
    }

    #[tokio::test]
    async fn closed_port_and_failing_exec_fail() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let t = Duration::from_secs(2);
        assert!(probe_once(&ProbeAction::Tcp { port }, LO, t).await.is_err());
        probe_once(
            &ProbeAction::Exec {
                argv: vec!["true".into()],
            },
            LO,
            t,
        )
        .await
        .unwrap();
        assert!(
            probe_once(
                &ProbeAction::Exec {
                    argv: vec!["false".into()]
                },
                LO,
                t
            )
            .await
            .is_err()
        );
    }

    #[tokio::test]
    async fn liveness_fires_only_after_ready_and_threshold() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let calls = Arc::new(AtomicU32::new(0));
        let fired = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        // Passes on probe 2 only: never ready before, then fails forever.
        let run: ProbeFn = Arc::new(move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if n == 1 {
                    Ok(())
                } else {
                    Err(format!("fail {n}"))
                }
            })
        });
        let f = fired.clone();
        let probe = Probe {
            action: ProbeAction::Tcp { port: 1 },
            period: Duration::from_millis(20),
            timeout: Duration::from_millis(200),
            failure_threshold: 3,
        };
        let mut m = HealthMonitor::spawn(
            &probe,
            run,
            Some(Arc::new(move || {
                f.fetch_add(1, Ordering::SeqCst);
            })),
        );
        while m.changed().await {
            if m.report().consecutive_failures >= 5 && m.report().ever_ready {
                break;
            }
        }
        assert_eq!(fired.load(Ordering::SeqCst), 1);
        assert!(!m.report().ready);
    }
}
