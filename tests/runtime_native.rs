//! The native runtime against real processes, a real SQLite state database and real signals.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

use futures_util::StreamExt;
use localaistack::api::module::RestartPolicy;
use localaistack::api::{Kind, ObjectName};
use localaistack::control::store::Store;
use localaistack::home::LasHome;
use localaistack::runtime::native::{
    NativeConfig, NativeRecord, NativeRuntime, NativeStore, SqliteNativeStore, proc_stat,
    same_process_alive,
};
use localaistack::runtime::{
    LogOptions, Owner, OwnerKey, Probe, ProbeAction, Runtime, RuntimeError, WorkloadSpec,
    WorkloadState, WorkloadStatus,
};

/// A temporary `$LAS_HOME` with a migrated state database; kills every recorded process group
/// when dropped, so a failing test leaves nothing running.
struct Env {
    _dir: tempfile::TempDir,
    home: LasHome,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let home = LasHome::at(dir.path());
        home.ensure().unwrap();
        drop(Store::open(&home.state_db()).unwrap());
        Self { _dir: dir, home }
    }

    fn store(&self) -> Arc<SqliteNativeStore> {
        Arc::new(SqliteNativeStore::open(&self.home.state_db()).unwrap())
    }

    fn fast_cfg(&self) -> NativeConfig {
        NativeConfig {
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            adopted_poll: Duration::from_millis(100),
            ..NativeConfig::for_home(&self.home)
        }
    }

    fn runtime(&self) -> NativeRuntime {
        NativeRuntime::new(self.fast_cfg(), self.store())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Ok(s) = SqliteNativeStore::open(&self.home.state_db())
            && let Ok(all) = s.all()
        {
            for r in all {
                if same_process_alive(r.pid, r.start_time) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(r.pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

fn owner(name: &str) -> Owner {
    let unique = format!("{name}-{}", std::process::id());
    Owner::new(Kind::Module, ObjectName::new(&unique).unwrap(), "uid-test")
}

fn sh(owner: Owner, script: &str) -> WorkloadSpec {
    WorkloadSpec::native(owner, vec!["/bin/sh".into(), "-c".into(), script.into()])
}

async fn wait_for(
    rt: &NativeRuntime,
    key: &OwnerKey,
    what: &str,
    timeout: Duration,
    f: impl Fn(&WorkloadStatus) -> bool,
) -> WorkloadStatus {
    let t0 = Instant::now();
    loop {
        let s = rt.inspect(key).await.unwrap();
        if let Some(s) = &s
            && f(s)
        {
            return s.clone();
        }
        assert!(
            t0.elapsed() < timeout,
            "timed out waiting for {what}; last status {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn read_logs(rt: &NativeRuntime, key: &OwnerKey, tail: Option<usize>) -> String {
    let mut s = rt
        .logs(
            key,
            LogOptions {
                tail,
                follow: false,
            },
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(b) = s.next().await {
        out.extend_from_slice(&b.unwrap());
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn exiting_process_is_restarted_with_growing_delays_and_crash_loop_is_visible() {
    let env = Env::new();
    let rt = env.runtime();
    let spec = sh(owner("crasher"), "echo started; exit 3");
    let key = spec.owner.key();
    let first = rt.ensure(&spec).await.unwrap();
    assert!(first.pid.is_some());

    // Record the moment each restart is seen.
    let mut seen = vec![(0u32, Instant::now())];
    let mut saw_crash_loop = false;
    let t0 = Instant::now();
    while seen.len() < 5 {
        let s = rt.inspect(&key).await.unwrap().unwrap();
        if s.state == WorkloadState::CrashLoop {
            saw_crash_loop = true;
            assert_eq!(s.last_exit_code, Some(3));
            assert!(
                s.message.as_deref().unwrap_or("").contains("restarting in"),
                "{s:?}"
            );
        }
        if s.restarts > seen.last().unwrap().0 {
            seen.push((s.restarts, Instant::now()));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "too few restarts: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(saw_crash_loop);
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].1 - w[0].1).collect();
    // 200 ms doubling (+ up to 25% jitter): each delay is longer than the one before.
    for w in gaps.windows(2).skip(1) {
        assert!(w[1] > w[0], "delays do not grow: {gaps:?}");
    }
    assert!(gaps[1] >= Duration::from_millis(380), "{gaps:?}");
    let logs = read_logs(&rt, &key, None).await;
    assert!(logs.matches("started").count() >= 4, "{logs}");
    let tail = read_logs(&rt, &key, Some(1)).await;
    assert_eq!(tail, "started\n");
    rt.remove(&key, Duration::from_secs(1)).await.unwrap();
    assert!(rt.inspect(&key).await.unwrap().is_none());
}

#[tokio::test]
async fn supervisors_announce_exits_restarts_and_readiness_as_events() {
    let env = Env::new();
    let rt = env.runtime();
    let mut events = rt.events();
    let port = free_port();
    let mut spec = WorkloadSpec::native(
        owner("announced"),
        vec![
            busybox().display().to_string(),
            "httpd".into(),
            "-f".into(),
            "-p".into(),
            format!("127.0.0.1:{port}"),
        ],
    );
    spec.probe = Some(Probe {
        action: ProbeAction::Tcp { port },
        period: Duration::from_millis(100),
        timeout: Duration::from_secs(1),
        failure_threshold: 3,
    });
    let key = spec.owner.key();
    let first = rt.ensure(&spec).await.unwrap();
    let wait = Duration::from_secs(20);
    let ready = |s| s == WorkloadState::Ready;
    support::next_event(&mut events, &key, wait, ready).await;

    // Killed behind the runtime's back: the exit, then the restarted process's readiness.
    let pid = first.pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let exit =
        support::next_event(&mut events, &key, wait, |s| s == WorkloadState::CrashLoop).await;
    assert_eq!(exit.runtime, localaistack::api::module::RuntimeKind::Native);
    support::next_event(&mut events, &key, wait, ready).await;
    let now = rt.inspect(&key).await.unwrap().unwrap();
    assert_ne!(now.pid, Some(pid));
    assert_eq!(now.restarts, 1);

    // Stopped on request: announced too.
    rt.stop(&key, Duration::from_secs(1)).await.unwrap();
    support::next_event(&mut events, &key, wait, |s| s == WorkloadState::Stopped).await;
    rt.remove(&key, Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn restart_policy_never_and_on_failure_leave_a_clean_exit_alone() {
    let env = Env::new();
    let rt = env.runtime();
    for policy in [RestartPolicy::Never, RestartPolicy::OnFailure] {
        let mut spec = sh(owner(&format!("once-{policy:?}").to_lowercase()), "exit 0");
        spec.restart = policy;
        let key = spec.owner.key();
        rt.ensure(&spec).await.unwrap();
        let s = wait_for(&rt, &key, "exit", Duration::from_secs(10), |s| {
            s.state == WorkloadState::Exited
        })
        .await;
        assert_eq!(s.last_exit_code, Some(0));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let s = rt.inspect(&key).await.unwrap().unwrap();
        assert_eq!((s.state, s.restarts), (WorkloadState::Exited, 0));
        // A reconcile calling ensure again must not turn the policy into Always.
        let again = rt.ensure(&spec).await.unwrap();
        assert_eq!((again.state, again.pid), (WorkloadState::Exited, s.pid));
        rt.remove(&key, Duration::from_secs(1)).await.unwrap();
    }
}

#[tokio::test]
async fn process_ignoring_sigterm_is_killed_after_the_grace_period() {
    let env = Env::new();
    let rt = env.runtime();
    let spec = sh(
        owner("stubborn"),
        "trap '' TERM; echo trapped; while true; do sleep 0.1; done",
    );
    let key = spec.owner.key();
    let st = rt.ensure(&spec).await.unwrap();
    let pid = st.pid.unwrap();
    let t0 = Instant::now();
    while !read_logs(&rt, &key, None).await.contains("trapped") {
        assert!(t0.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = proc_stat(pid).unwrap().0;

    let t0 = Instant::now();
    rt.stop(&key, Duration::from_millis(1500)).await.unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "killed before the grace period: {took:?}"
    );
    assert!(
        !same_process_alive(pid, start),
        "process {pid} survived stop"
    );
    let s = rt.inspect(&key).await.unwrap().unwrap();
    assert_eq!(s.state, WorkloadState::Stopped);
    assert_eq!(s.last_exit_code, Some(128 + 9), "{s:?}");
    // The record is gone: nothing to re-adopt.
    assert!(env.store().load(&key).unwrap().is_none());
}

#[test]
fn record_left_by_a_killed_program_is_readopted_then_stale_records_are_cleaned() {
    let env = Env::new();
    let spec = sh(owner("survivor"), "echo up; exec sleep 300");
    let key = spec.owner.key();

    // Program 1 starts the process and dies without any cleanup (its tasks simply vanish).
    let rt1 = tokio::runtime::Runtime::new().unwrap();
    let pid = rt1.block_on(async {
        let rt = env.runtime();
        let st = rt.ensure(&spec).await.unwrap();
        std::mem::forget(rt);
        st.pid.unwrap()
    });
    rt1.shutdown_background();
    let start = proc_stat(pid).unwrap().0;
    assert!(same_process_alive(pid, start));

    let rt2 = tokio::runtime::Runtime::new().unwrap();
    rt2.block_on(async {
        // Program 2 sees the recorded, unsupervised process and adopts it on ensure.
        let rt = NativeRuntime::open(&env.home).unwrap();
        let seen = rt.inspect(&key).await.unwrap().unwrap();
        assert_eq!((seen.state, seen.pid), (WorkloadState::Running, Some(pid)));
        let adopted = rt.ensure(&spec).await.unwrap();
        assert_eq!(adopted.pid, Some(pid), "a second process was started");
        let listed = rt.list().await.unwrap();
        assert_eq!(listed.iter().filter(|s| s.owner == key).count(), 1);

        // The adopted process exits behind our back: the supervisor notices and restarts it.
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let s = wait_for(&rt, &key, "a restart", Duration::from_secs(10), |s| {
            s.pid.is_some_and(|p| p != pid) && s.state.is_running()
        })
        .await;
        assert_eq!(s.restarts, 1);
        rt.remove(&key, Duration::from_secs(1)).await.unwrap();

        // A stale record whose pid now names another process (ours, with another start time):
        // it must be cleaned up, never signalled.
        let me = std::process::id();
        let my_start = proc_stat(me).unwrap().0;
        let store = env.store();
        store
            .save(&NativeRecord {
                owner: key.clone(),
                pid: me,
                start_time: my_start + 1,
                spec_hash: spec.spec_hash(),
                spec: spec.clone(),
                log_path: PathBuf::from("/nonexistent"),
                limits_applied: "none".into(),
                restarts: 7,
                cgroup: None,
            })
            .unwrap();
        let rt = NativeRuntime::open(&env.home).unwrap();
        let gone = rt.inspect(&key).await.unwrap().unwrap();
        assert_eq!(gone.state, WorkloadState::Missing);
        let fresh = rt.ensure(&spec).await.unwrap();
        assert_ne!(fresh.pid, Some(me));
        let rec = store.load(&key).unwrap().unwrap();
        assert_eq!(Some(rec.pid), fresh.pid);
        rt.remove(&key, Duration::from_secs(1)).await.unwrap();
        assert!(store.load(&key).unwrap().is_none());
    });
}

#[tokio::test]
async fn missing_executable_is_a_clear_error_and_records_nothing() {
    let env = Env::new();
    let rt = env.runtime();
    let spec = WorkloadSpec::native(owner("ghost"), vec!["/nonexistent/bin/ghost".into()]);
    let e = rt.ensure(&spec).await.unwrap_err();
    assert!(matches!(e, RuntimeError::ProgramNotFound { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent/bin/ghost") && msg.contains("no such file"),
        "{msg}"
    );

    let spec = WorkloadSpec::native(owner("ghost2"), vec!["no-such-program-las".into()]);
    let msg = rt.ensure(&spec).await.unwrap_err().to_string();
    assert!(msg.contains("not found in PATH"), "{msg}");
    assert!(env.store().all().unwrap().is_empty());
    assert!(rt.list().await.unwrap().is_empty());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn busybox() -> &'static Path {
    Path::new("/bin/busybox")
}

#[tokio::test]
async fn http_server_becomes_ready_only_after_its_probe_passes() {
    let env = Env::new();
    let rt = env.runtime();
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "native-ok").unwrap();
    let port = free_port();
    // Listens only after a second: Running first, Ready after the probe passes.
    let script = format!(
        "sleep 1; exec {} httpd -f -v -p 127.0.0.1:{port} -h {}",
        busybox().display(),
        www.path().display()
    );
    let mut spec = sh(owner("web"), &script);
    spec.probe = Some(Probe {
        action: ProbeAction::Http {
            port,
            path: "/index.html".into(),
        },
        period: Duration::from_millis(200),
        timeout: Duration::from_secs(1),
        failure_threshold: 3,
    });
    spec.ports = vec![localaistack::runtime::Port {
        container_port: port,
        host_port: port,
        protocol: localaistack::api::module::Protocol::Tcp,
    }];
    let key = spec.owner.key();
    let st = rt.ensure(&spec).await.unwrap();
    assert!(!st.state.is_ready());
    let s = wait_for(&rt, &key, "not-yet-healthy", Duration::from_secs(5), |s| {
        s.healthy == Some(false)
    })
    .await;
    assert_eq!(s.state, WorkloadState::Running);
    let s = wait_for(&rt, &key, "Ready", Duration::from_secs(15), |s| {
        s.state == WorkloadState::Ready
    })
    .await;
    assert_eq!(s.healthy, Some(true));
    assert_eq!(s.endpoint, Some(format!("http://127.0.0.1:{port}")));
    assert!(s.limits_applied.is_some());
    rt.remove(&key, Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn memory_limit_is_applied_and_reported() {
    let env = Env::new();
    let rt = env.runtime();
    let mut spec = sh(owner("limited"), "ulimit -v; exit 0");
    spec.restart = RestartPolicy::Never;
    spec.limits.memory_bytes = Some(512 * 1024 * 1024);
    let key = spec.owner.key();
    let st = rt.ensure(&spec).await.unwrap();
    let applied = st.limits_applied.clone().unwrap();
    wait_for(&rt, &key, "exit", Duration::from_secs(10), |s| {
        s.state == WorkloadState::Exited
    })
    .await;
    let out = read_logs(&rt, &key, None).await;
    if applied.starts_with("rlimit") {
        assert!(applied.contains("as=536870912"), "{applied}");
        // `ulimit -v` prints KiB.
        assert_eq!(out.trim(), "524288", "{applied}");
    } else {
        assert!(applied.starts_with("cgroup-v2"), "{applied}");
    }
    rt.remove(&key, Duration::from_secs(1)).await.unwrap();
}
