//! The client verbs against a real API server: `lasctl wait`, `logs`, `events -w`, `get sources`,
//! each run as the real binary in a temp LAS_HOME, talking to the server over its unix socket.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use localaistack::api::Kind;
use localaistack::control::store::{EventType, Store};
use localaistack::home::LasHome;
use localaistack::interfaces::http::{ApiContext, Metrics, Server, StaticDaemonInfo, socket_path};
use serde_json::json;
use support::{FreshEnv, Run};
use tokio::sync::{oneshot, watch};

const MODULE: &str = "apiVersion: localaistack.io/v1alpha1
kind: Module
metadata:
  name: chat
spec:
  native:
    command: [/bin/true]
";

/// A child killed with its process group on drop. (Not `support::ChildGuard`: its `kill -KILL -PID`
/// is read by procps 4.0.2's kill as signal numbers and can signal every process; see the report.)
struct Kid(Option<std::process::Child>);

impl Kid {
    fn spawn(mut c: std::process::Command) -> Kid {
        use std::os::unix::process::CommandExt;
        c.process_group(0);
        Kid(Some(c.spawn().expect("spawn lasctl")))
    }

    fn wait_output(mut self, timeout: Duration) -> Run {
        let mut child = self.0.take().unwrap();
        let deadline = Instant::now() + timeout;
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let read = |r: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut s = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut s);
                }
                String::from_utf8_lossy(&s).into_owned()
            })
        };
        let out_t = read(out.map(|o| Box::new(o) as Box<dyn std::io::Read + Send>));
        let err_t = read(err.map(|o| Box::new(o) as Box<dyn std::io::Read + Send>));
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return Run {
                    code: st.code().unwrap_or(-1),
                    stdout: out_t.join().unwrap(),
                    stderr: err_t.join().unwrap(),
                };
            }
            if Instant::now() > deadline {
                self.0 = Some(child);
                drop(self);
                panic!("lasctl did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = c.wait();
        }
    }
}

struct Daemon {
    changes: watch::Sender<u64>,
    info: Arc<StaticDaemonInfo>,
    _stop: oneshot::Sender<()>,
}

async fn start(home: &LasHome) -> Daemon {
    let (changes, rx) = watch::channel(0u64);
    let info = Arc::new(StaticDaemonInfo::this_build());
    let ctx = ApiContext::new(home.clone(), Arc::new(Metrics::new()), rx, info.clone());
    let server = Server::bind(ctx, "127.0.0.1:0".parse().unwrap(), socket_path(home))
        .await
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Daemon {
        changes,
        info,
        _stop: stop,
    }
}

fn run_sync(env: &FreshEnv, args: &[&str]) -> Run {
    let mut c = env.cmd();
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    Kid::spawn(c).wait_output(Duration::from_secs(60))
}

async fn run(env: &FreshEnv, args: &[&str]) -> Run {
    let mut c = env.cmd();
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = Kid::spawn(c);
    tokio::task::spawn_blocking(move || child.wait_output(Duration::from_secs(60)))
        .await
        .unwrap()
}

fn setup() -> (FreshEnv, LasHome, Store) {
    let env = FreshEnv::new();
    let home = LasHome::at(env.home_path());
    home.ensure().unwrap();
    let p = env.write("chat.yaml", MODULE);
    run_sync(&env, &["apply", "-f", p.to_str().unwrap()]).ok();
    let store = Store::open(&home.state_db()).unwrap();
    (env, home, store)
}

fn ready(store: &mut Store, generation_lag: u64) {
    let o = store.get(Kind::Module, "chat").unwrap();
    store
        .update_status(
            Kind::Module,
            "chat",
            None,
            &json!({
                "observedGeneration": o.generation - generation_lag,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Healthy",
                    "message": "ok", "lastTransitionTime": "2026-11-22T10:00:00Z"}],
            }),
        )
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_when_ready_at_generation_and_times_out_otherwise() {
    let (env, home, mut store) = setup();
    let d = start(&home).await;

    // Not Ready: exit 1 after the timeout, saying what it waited for and where things stand.
    let r = run(
        &env,
        &[
            "wait",
            "module/chat",
            "--for=condition=Ready",
            "--timeout=1s",
        ],
    )
    .await;
    let r = r.fails();
    assert!(r.stderr.contains("timed out after 1s"), "{}", r.stderr);
    assert!(r.stderr.contains("Module/chat"), "{}", r.stderr);

    // Ready, but for an older generation: still not met.
    let p = env.write("chat.yaml", &MODULE.replace("/bin/true", "/bin/false"));
    run_sync(&env, &["apply", "-f", p.to_str().unwrap()]).ok();
    ready(&mut store, 1);
    let r = run(&env, &["wait", "module/chat", "--timeout=1s"])
        .await
        .fails();
    assert!(
        r.stderr.contains("observedGeneration 1 of generation 2"),
        "{}",
        r.stderr
    );

    // Becomes Ready at its generation while `wait` runs: it returns promptly.
    let started = Instant::now();
    let waiter = tokio::spawn({
        let mut c = env.cmd();
        c.args([
            "wait",
            "module/chat",
            "--for=condition=Ready",
            "--timeout=30s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let child = Kid::spawn(c);
        async move {
            tokio::task::spawn_blocking(move || child.wait_output(Duration::from_secs(60)))
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    ready(&mut store, 0);
    store
        .record_event("Module", "chat", EventType::Normal, "Ready", "healthy")
        .unwrap();
    d.changes.send_modify(|v| *v += 1);
    let r = waiter.await.unwrap().ok();
    assert!(
        r.stdout.contains("module/chat condition met"),
        "{}",
        r.stdout
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    // Bad arguments are usage errors.
    let r = run(&env, &["wait", "module/chat", "--for=delete"])
        .await
        .fails();
    assert!(r.stderr.contains("--for"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_events_follow_from_the_daemon() {
    let (env, home, mut store) = setup();

    // Without a daemon, logs say so.
    let r = run(&env, &["logs", "module/chat"]).await.fails();
    assert!(
        r.stderr.contains("is `lasctl daemon` running?"),
        "{}",
        r.stderr
    );

    let d = start(&home).await;
    d.info.push_log("chat", b"one\ntwo\nthree\n");
    let r = run(&env, &["logs", "module/chat", "--tail", "2"])
        .await
        .ok();
    assert_eq!(r.stdout, "two\nthree\n");
    let r = run(&env, &["logs", "module/nope"]).await.fails();
    assert!(r.stderr.contains("Module/nope not found"), "{}", r.stderr);

    // logs -f: new output appears as it is produced.
    let mut c = env.cmd();
    c.args(["logs", "module/chat", "-f", "--tail", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut follower = Kid::spawn(c);
    let out = follower.0.as_mut().unwrap().stdout.take().unwrap();
    let info = d.info.clone();
    let line = tokio::task::spawn_blocking(move || {
        let mut r = BufReader::new(out);
        // Push until the follower (which may still be connecting) prints it.
        let mut l = String::new();
        std::thread::spawn(move || {
            for _ in 0..50 {
                info.push_log("chat", b"four\n");
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        r.read_line(&mut l).unwrap();
        l
    });
    let l = tokio::time::timeout(Duration::from_secs(15), line)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(l, "four\n");
    drop(follower);

    // events -w: the backlog, then each new event as the daemon records it.
    let mut c = env.cmd();
    c.args(["events", "module/chat", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut watcher = Kid::spawn(c);
    let out = watcher.0.as_mut().unwrap().stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            if tx.send(l.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let header = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(header.starts_with("LAST SEEN"), "{header}");
    let backlog = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(backlog.contains("module/chat"), "{backlog}");
    store
        .record_event(
            "Module",
            "chat",
            EventType::Warning,
            "BackOff",
            "restarting",
        )
        .unwrap();
    d.changes.send_modify(|v| *v += 1);
    let fresh = loop {
        let l = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("the new event within 15 s")
            .unwrap();
        if l.contains("BackOff") {
            break l;
        }
    };
    assert!(
        fresh.contains("Warning") && fresh.contains("restarting"),
        "{fresh}"
    );
}

#[test]
fn get_sources_lists_watched_directories() {
    let (env, _home, mut store) = setup();
    let r = run_sync(&env, &["get", "sources"]).ok();
    assert!(r.stderr.contains("No sources"), "{}", r.stderr);
    store
        .put_record(
            "source//srv/stack",
            &json!({"path": "/srv/stack", "lastApplied": "2026-11-22T10:00:00Z", "generation": 3, "error": null}),
        )
        .unwrap();
    store
        .put_record(
            "source//srv/broken",
            &json!({"path": "/srv/broken", "lastApplied": null, "generation": null,
                "error": "a.yaml:3:1: spec.bogus: unknown field"}),
        )
        .unwrap();
    let r = run_sync(&env, &["get", "sources"]).ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].starts_with("PATH"), "{}", r.stdout);
    let broken = lines.iter().find(|l| l.contains("/srv/broken")).unwrap();
    assert!(
        broken.contains("False") && broken.contains("never") && broken.contains("spec.bogus"),
        "{broken}"
    );
    let ok = lines.iter().find(|l| l.contains("/srv/stack")).unwrap();
    assert!(ok.contains("True") && ok.contains(" 3 "), "{ok}");
    let r = run_sync(&env, &["get", "sources", "-o", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    run_sync(&env, &["get", "sources", "/nope"]).fails();
}
