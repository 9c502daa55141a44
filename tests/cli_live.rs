//! Issue 12, live views, through the real binary: download progress (defect 6), `get -w`,
//! `rollout status`, the history of one object and the rollback preview, and the daemon's logs
//! (defect 7).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use localaistack::api::Kind;
use localaistack::control::store::Store;
use serde_json::Value;
use support::daemon::{Daemon, free_port, get_json, sweep, wait_until};
use support::{ChildGuard, FreshEnv, lasctl_bin};

fn generate_tiny_model(env: &FreshEnv, name: &str) -> PathBuf {
    let gguf = env.work.path().join(name);
    env.run(&[
        "model",
        "generate-test",
        gguf.to_str().unwrap(),
        "--preset",
        "tiny",
    ])
    .ok();
    gguf
}

fn model_yaml(name: &str, source: &str, sha: Option<&str>) -> String {
    let sha = sha.map(|s| format!("  sha256: {s}\n")).unwrap_or_default();
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata:\n  name: {name}\nspec:\n  source: {source}\n{sha}"
    )
}

fn native_yaml(name: &str, args: &str, extra: &str) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata:\n  name: {name}\nspec:\n  native:\n    command: [\"/bin/sleep\", \"{args}\"]\n{extra}"
    )
}

fn apply(env: &FreshEnv, rel: &str, text: &str) {
    let p = env.write(rel, text);
    env.run(&["apply", "-f", p.to_str().unwrap()]).ok();
}

/// An HTTP server that sends `body` slowly: `chunk` bytes every `every`.
struct SlowServer {
    addr: String,
    requests: Arc<Mutex<usize>>,
}

impl SlowServer {
    fn start(body: Vec<u8>, chunk: usize, every: Duration) -> SlowServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let requests: Arc<Mutex<usize>> = Arc::default();
        let (r, body) = (requests.clone(), Arc::new(body));
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { return };
                let (r, body) = (r.clone(), body.clone());
                std::thread::spawn(move || {
                    let mut rd = BufReader::new(c.try_clone().unwrap());
                    loop {
                        let mut l = String::new();
                        if rd.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                            break;
                        }
                    }
                    *r.lock().unwrap() += 1;
                    let _ = write!(
                        c,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    for part in body.chunks(chunk) {
                        if c.write_all(part).is_err() {
                            return;
                        }
                        std::thread::sleep(every);
                    }
                });
            }
        });
        SlowServer { addr, requests }
    }
}

/// The sum of `las_reconciles_total` of one kind.
fn reconciles(d: &Daemon, kind: &str) -> u64 {
    let out = std::process::Command::new("curl")
        .args(["-sf", &d.url("/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("las_reconciles_total{{kind=\"{kind}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Defect 6: a 104 MiB download showed nothing for 13 s. Now status carries bytes done/total
/// and rate, written about once a second (never waking the Model, nor the Module waiting for
/// it), `get` shows a percentage, and `wait` prints progress lines when not on a terminal.
#[test]
fn a_download_reports_progress_about_once_a_second_without_waking_anything() {
    let env = FreshEnv::new();
    let d = Daemon::start(&env, &[], &["--resync-seconds", "30"]);
    // A real GGUF followed by zeros (readers ignore bytes after the tensors): 12 MiB at ~2 MiB/s.
    let mut body = std::fs::read(generate_tiny_model(&env, "tiny.gguf")).unwrap();
    body.resize(12 << 20, 0);
    let total = body.len() as u64;
    let server = SlowServer::start(body, 256 << 10, Duration::from_millis(125));
    let started = Instant::now();
    apply(
        &env,
        "m.yaml",
        &model_yaml("big", &format!("http://{}/big.gguf", server.addr), None),
    );
    apply(
        &env,
        "web.yaml",
        &native_yaml("web", "600", "  model: big\n"),
    );
    // `wait` follows it from the start (stderr is a pipe here: plain lines).
    let mut wait = env.cmd();
    wait.args(["wait", "model/big", "--timeout", "120s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut wait = ChildGuard::spawn(wait);
    // `get -w` prints a row per progress report.
    let mut watch = env.cmd();
    watch
        .args(["get", "model", "big", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut watch = ChildGuard::spawn(watch);
    let watched = Lines::follow(watch.0.as_mut().unwrap().stdout.take().unwrap());
    // `rollout status` on a terminal (a pseudo-terminal from util-linux's `script`): a bar.
    let mut tty = std::process::Command::new("script");
    tty.args(["-qec"])
        .arg(format!(
            "{} rollout status model/big --timeout 120s",
            lasctl_bin().display()
        ))
        .arg("/dev/null")
        .env("LAS_HOME", env.home_path())
        .env("TERM", "xterm")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut tty = ChildGuard::spawn(tty);

    let db = env.home_path().join("state.db");
    let mut writes = 0u64;
    let mut last_rv = 0;
    let mut samples: Vec<Value> = Vec::new();
    let mut reasons = Vec::new();
    let mut get_during = None;
    let mut model_reconciles_during = None;
    let mut module_reconciles = (None, None);
    loop {
        let o = Store::open(&db).unwrap().get(Kind::Model, "big").unwrap();
        if o.resource_version != last_rv {
            last_rv = o.resource_version;
            writes += 1;
            if let Some(p) = o.status.get("progress") {
                samples.push(p.clone());
                if let Some((_, r, _)) = o.condition("Ready") {
                    reasons.push(r);
                }
                let done = p["bytesDone"].as_u64().unwrap();
                if done > total / 5 && get_during.is_none() {
                    get_during = Some(env.run(&["get", "models"]).ok().stdout);
                    model_reconciles_during = Some(reconciles(&d, "Model"));
                    module_reconciles.0 = Some(reconciles(&d, "Module"));
                }
                if done > total * 4 / 5 && module_reconciles.1.is_none() {
                    module_reconciles.1 = Some(reconciles(&d, "Module"));
                }
            }
        }
        if o.condition("Ready")
            .is_some_and(|(s, _, _)| s.as_str() == "True")
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "not Ready in 90 s: {}\n{}",
            o.status,
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed().as_secs_f64();
    eprintln!(
        "download of {total} bytes took {took:.1}s; {writes} status writes; samples {samples:?}"
    );
    // Progress was visible, moved forward, and was written at a bounded rate.
    assert!(samples.len() >= 3, "too few progress reports: {samples:?}");
    assert!(
        samples.iter().all(|p| p["bytesTotal"] == total),
        "{samples:?}"
    );
    let done: Vec<u64> = samples
        .iter()
        .map(|p| p["bytesDone"].as_u64().unwrap())
        .collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
    assert!(
        samples
            .iter()
            .any(|p| p["bytesPerSecond"].as_u64().unwrap() > 0),
        "{samples:?}"
    );
    assert!(reasons.iter().all(|r| r == "Downloading"), "{reasons:?}");
    // At most one write per second of download, plus the writes around it (start, verified).
    assert!(
        (writes as f64) <= took + 4.0,
        "{writes} status writes in {took:.1}s"
    );
    // The progress writes woke neither the Model (one long reconcile) nor the Module waiting
    // for it (one reconcile per progress write before this fix's scheduler change).
    assert_eq!(model_reconciles_during, Some(0), "{}", d.log());
    let (before, after) = (module_reconciles.0.unwrap(), module_reconciles.1.unwrap());
    assert_eq!(
        after - before,
        0,
        "the waiting Module was reconciled during the download (20% to 80%)"
    );
    // Done: the progress is gone, the size is there, one event said the download started.
    let o = get_json(&env, "model", "big").unwrap();
    assert!(o["status"].get("progress").is_none(), "{}", o["status"]);
    assert_eq!(o["status"]["sizeBytes"], total);
    let events = Store::open(&db)
        .unwrap()
        .events(Some(("Model", "big")), 0, 100)
        .unwrap();
    let downloading: Vec<_> = events
        .iter()
        .filter(|e| e.reason == "Downloading")
        .collect();
    assert_eq!(downloading.len(), 1, "{events:?}");
    assert_eq!(downloading[0].count, 1);
    assert!(downloading[0].message.contains("12.0 MiB"), "{events:?}");
    assert_eq!(*server.requests.lock().unwrap(), 1);
    // `get` showed a percentage while it ran.
    let get = get_during.unwrap();
    assert!(get.contains("% of 12.0MiB"), "{get}");
    // `wait` printed plain progress lines (no bar: not a terminal), then met the condition.
    let w = wait.wait_output(Duration::from_secs(60));
    assert_eq!(w.code, 0, "{w:?}");
    assert!(w.stdout.contains("model/big condition met"), "{w:?}");
    let lines: Vec<&str> = w
        .stderr
        .lines()
        .filter(|l| l.starts_with("model/big: Downloading"))
        .collect();
    assert!(lines.len() >= 2, "{}", w.stderr);
    assert!(lines.iter().any(|l| l.contains('%')), "{}", w.stderr);
    assert!(
        !w.stderr.contains('\u{1b}'),
        "no terminal control codes: {}",
        w.stderr
    );
    let rows = watched.wait_for("the Ready row", |l| {
        l.iter()
            .any(|r| r.contains("True") && r.contains("12.0MiB"))
    });
    drop(watch);
    let progress_rows = rows.iter().filter(|r| r.contains("% of 12.0MiB")).count();
    assert!(progress_rows >= 3, "{rows:#?}");
    let t = tty.wait_output(Duration::from_secs(60));
    assert_eq!(t.code, 0, "{t:?}");
    assert!(
        t.stdout.contains("downloading model/big [") && t.stdout.contains("MiB/12.00 MiB"),
        "no progress bar on a terminal: {t:?}"
    );
    assert!(
        t.stdout
            .contains("model/big successfully rolled out (generation 1)"),
        "{t:?}"
    );
}

/// Lines a child writes to stdout, collected by a thread.
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn follow(out: impl Read + Send + 'static) -> Lines {
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                l.lock().unwrap().push(line);
            }
        });
        Lines(lines)
    }

    fn wait_for(&self, what: &str, f: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.0.lock().unwrap().clone();
            if f(&now) {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} in:\n{}",
                now.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `get KIND -w` works without a daemon: the table, then one row per change (a deleted object
/// once more, as Deleted), and nothing for writes to other kinds.
#[test]
fn get_watch_prints_a_row_per_change_without_a_daemon() {
    let env = FreshEnv::new();
    apply(&env, "a.yaml", &model_yaml("a", "/srv/a.gguf", None));
    let mut c = env.cmd();
    c.args(["get", "models", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::spawn(c);
    let out = Lines::follow(child.0.as_mut().unwrap().stdout.take().unwrap());
    out.wait_for("table", |l| l.len() >= 2);
    // A new object, a change of another, a write of another kind, a deletion.
    apply(&env, "b.yaml", &model_yaml("b", "/srv/b.gguf", None));
    out.wait_for("row of b", |l| l.iter().any(|x| x.starts_with("b ")));
    apply(
        &env,
        "a.yaml",
        &model_yaml("a", "/srv/a.gguf", None).replace("name: a", "name: a\n  labels: {t: x}"),
    );
    apply(&env, "web.yaml", &native_yaml("web", "600", ""));
    env.run(&["delete", "model", "b"]).ok();
    let lines = out.wait_for("deleted row of b", |l| {
        l.iter()
            .any(|x| x.starts_with("b ") && x.contains("Deleted"))
    });
    std::thread::sleep(Duration::from_millis(1500));
    let lines_after = out.0.lock().unwrap().clone();
    drop(child);
    assert_eq!(lines.len(), lines_after.len(), "{lines_after:?}");
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("READY"),
        "{lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("NAME")).count(),
        1,
        "one header: {lines:?}"
    );
    let names: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "a", "b"], "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("web")), "{lines:?}");
    // The rows line up with the header.
    let col = lines[0].find("READY").unwrap();
    assert!(
        lines[1..]
            .iter()
            .all(|l| l[col..].starts_with(['-', 'T', 'F', 'D'])),
        "{lines:?}"
    );
}

/// `rollout status` follows a Module to Ready at its new generation (KIND NAME and KIND/NAME),
/// prints the steps, and exits 1 with the reason when the object stalls or the time runs out.
#[test]
fn rollout_status_follows_a_module_and_fails_on_stall_or_timeout() {
    let env = FreshEnv::new();
    let d = Daemon::start(&env, &[], &[]);
    apply(&env, "web.yaml", &native_yaml("web", "600", ""));
    let r = env.run(&["rollout", "status", "module/web", "--timeout", "60s"]);
    assert_eq!(r.code, 0, "{r:?}\n{}", d.log());
    assert_eq!(
        r.stdout.trim(),
        "module/web successfully rolled out (generation 1)"
    );
    // A new generation: the steps are printed, and it ends at generation 2.
    apply(&env, "web.yaml", &native_yaml("web", "601", ""));
    let r = env.run(&["rollout", "status", "mod", "web", "--timeout", "60s"]);
    assert_eq!(r.code, 0, "{r:?}\n{}", d.log());
    assert_eq!(
        r.stdout.trim(),
        "module/web successfully rolled out (generation 2)"
    );
    // The steps of this rollout (the events since the apply), each state once.
    assert!(r.stderr.contains("module/web: Replacing: "), "{r:?}");
    assert!(r.stderr.contains("module/web: Started: "), "{r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert!(
        lines.windows(2).all(|w| w[0] != w[1]),
        "a line repeated: {r:?}"
    );
    assert!(!r.stderr.contains("generation 1 not yet observed"), "{r:?}");
    // Waiting for a Model that never comes: a timeout with the reason.
    apply(
        &env,
        "w.yaml",
        &native_yaml("waits", "600", "  model: nope\n"),
    );
    let r = env.run(&["rollout", "status", "module/waits", "--timeout", "2s"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("timed out after 2s") && r.stderr.contains("WaitingForModel"),
        "{r:?}"
    );
    // A Model whose bytes do not match its digest stalls: exit 1 with the reason.
    let gguf = generate_tiny_model(&env, "t.gguf");
    apply(
        &env,
        "bad.yaml",
        &model_yaml("bad", gguf.to_str().unwrap(), Some(&"1".repeat(64))),
    );
    let r = env.run(&["rollout", "status", "model/bad", "--timeout", "60s"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("stalled") && r.stderr.contains("DigestMismatch"),
        "{r:?}"
    );
    // Unknown objects and kinds are refused at once.
    let r = env.run(&["rollout", "status", "module/none"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("module/none does not exist"), "{r:?}");
}

fn history_rows(env: &FreshEnv) -> usize {
    let r = env.run(&["history", "-o", "json"]).ok();
    serde_json::from_str::<Vec<Value>>(&r.stdout).unwrap().len()
}

/// `history KIND NAME` lists the generations that changed one object with what changed;
/// `rollback --dry-run` prints the diff a rollback would apply and records nothing.
#[test]
fn history_of_one_object_and_a_rollback_preview_that_records_nothing() {
    let env = FreshEnv::new();
    apply(&env, "m.yaml", &model_yaml("tiny", "/srv/a.gguf", None));
    apply(&env, "o.yaml", &model_yaml("other", "/srv/o.gguf", None));
    apply(
        &env,
        "m.yaml",
        &model_yaml("tiny", "/srv/b.gguf", None)
            .replace("name: tiny", "name: tiny\n  labels: {team: x}"),
    );
    env.run(&["delete", "model", "tiny"]).ok();
    let r = env.run(&["history", "model", "tiny"]).ok();
    let rows: Vec<Vec<&str>> = r
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let summary: Vec<(&str, &str)> = rows.iter().map(|r| (r[0], r[2])).collect();
    assert_eq!(
        summary,
        [("1", "created"), ("3", "changed"), ("4", "deleted")],
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("spec.source: \"file:///srv/a.gguf\" -> \"file:///srv/b.gguf\""),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("metadata.labels: + {\"team\":\"x\"}"),
        "{}",
        r.stdout
    );
    // Same in both forms; JSON for scripts.
    let j = env.run(&["history", "model/tiny", "-o", "json"]).ok();
    let j: Vec<Value> = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(j[1]["revision"], "Changed");
    assert_eq!(j[1]["changes"][1]["path"], "spec.source");
    assert_eq!(j[1]["changes"][1]["new"], "file:///srv/b.gguf");

    // The preview of a rollback to the previous generation (3): tiny comes back, labelled.
    let before = (
        history_rows(&env),
        env.run(&["get", "models", "-o", "json"]).ok().stdout,
    );
    let r = env.run(&["rollback", "--dry-run"]).ok();
    assert!(r.stdout.contains("+++ generation-3/Model/tiny"), "{r:?}");
    assert!(r.stdout.contains("+    team: x"), "{r:?}");
    assert!(r.stdout.contains("+  source: file:///srv/b.gguf"), "{r:?}");
    let r1 = env.run(&["rollback", "1", "--dry-run"]).ok();
    assert!(
        r1.stdout.contains("-  source: file:///srv/o.gguf"),
        "{r1:?}"
    );
    assert!(
        r1.stdout.contains("+  source: file:///srv/a.gguf"),
        "{r1:?}"
    );
    assert!(r1.stderr.contains("nothing was recorded"), "{r1:?}");
    let after = (
        history_rows(&env),
        env.run(&["get", "models", "-o", "json"]).ok().stdout,
    );
    assert_eq!(before, after, "a preview changed the store");
    // What the preview showed is what the rollback does.
    env.run(&["rollback", "1"]).ok();
    let o = get_json(&env, "model", "tiny").unwrap();
    assert_eq!(o["spec"]["source"], "file:///srv/a.gguf");
    assert!(get_json(&env, "model", "other").is_none());
}

/// Starts a daemon with the environment a user has (no LAS_LOG), stderr into a file.
fn user_daemon(env: &FreshEnv, log: &Path) -> (ChildGuard, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut c = env.cmd();
    c.env_remove("LAS_LOG")
        .env_remove("NO_COLOR")
        .args(["daemon", "--listen", &listen, "--resync-seconds", "30"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    let child = ChildGuard::spawn(c);
    wait_until("the daemon to listen", Duration::from_secs(60), || {
        std::net::TcpStream::connect(&listen).is_ok()
    });
    (child, listen)
}

/// Defect 7: colour codes in log files; a foreground daemon silent while things work and
/// flooding on errors; Ctrl-C leaving workloads running without saying so.
#[test]
fn daemon_logs_one_plain_line_per_state_change_and_says_what_keeps_running() {
    let env = FreshEnv::new();
    let log = env.work.path().join("daemon.log");
    let (mut child, _listen) = user_daemon(&env, &log);
    let gguf = generate_tiny_model(&env, "t.gguf");
    apply(
        &env,
        "m.yaml",
        &model_yaml("tiny", gguf.to_str().unwrap(), None),
    );
    apply(
        &env,
        "web.yaml",
        &native_yaml("web", "600", "  model: tiny\n"),
    );
    // A native workload that logs through tracing, like the engine: its output is copied into
    // logs/ by `lasctl log-writer`.
    let tracer = format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata:\n  name: tracer\nspec:\n  native:\n    command: [{:?}, \"wait\", \"model/none\", \"--timeout\", \"600s\"]\n    env: {{LAS_LOG: trace, LAS_HOME: {:?}}}\n",
        lasctl_bin().display().to_string(),
        env.home_path().display().to_string()
    );
    apply(&env, "tracer.yaml", &tracer);
    // A source that fails on every retry (connection refused).
    let dead = format!("http://127.0.0.1:{}/gone.gguf", free_port());
    apply(&env, "gone.yaml", &model_yaml("gone", &dead, None));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !get_json(&env, "module", "web").is_some_and(|o| support::daemon::is_ready(&o)) {
        assert!(
            Instant::now() < deadline,
            "web not Ready:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Several retries of the failing Model (backoff 0.5, 1, 2, 4 s).
    std::thread::sleep(Duration::from_secs(8));
    // The workload's log file has its trace lines, without colour codes.
    let logs: Vec<PathBuf> = std::fs::read_dir(env.home_path().join("logs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("tracer"))
        .collect();
    let workload_log = logs
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect::<String>();
    assert!(workload_log.contains("TRACE"), "{logs:?}: {workload_log}");
    assert!(
        !workload_log.contains('\u{1b}'),
        "colour codes in a workload's log file: {workload_log:?}"
    );
    let pid = child.id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let r = child.wait_output(Duration::from_secs(60));
    let text = std::fs::read_to_string(&log).unwrap();
    let still = support::daemon::workload_pids(env.home_path()).len();
    sweep(env.home_path());
    assert!(
        still >= 2,
        "the workloads keep running after Ctrl-C: {still} processes"
    );
    assert_eq!(r.code, 0, "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file:\n{text:?}"
    );
    let lines: Vec<&str> = text.lines().collect();
    let about = |obj: &str, reason: &str| {
        lines
            .iter()
            .filter(|l| l.contains(&format!("{obj} {reason}:")))
            .count()
    };
    assert_eq!(about("model/tiny", "Verified"), 1, "{text}");
    assert_eq!(about("module/web", "Started"), 1, "{text}");
    assert_eq!(about("module/web", "Ready"), 1, "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" INFO ") && l.contains("model/tiny Verified")),
        "{text}"
    );
    // The failing Model: its warning once, not once per retry.
    let gone: Vec<&&str> = lines.iter().filter(|l| l.contains("gone")).collect();
    assert!(
        !gone.is_empty() && gone.len() <= 2,
        "the failing Model logged {} lines:\n{text}",
        gone.len()
    );
    // Ctrl-C says what keeps running, and how to stop it.
    assert!(
        text.contains("2 workloads keep running: module/") && text.contains("module/web (pid"),
        "{text}"
    );
    assert!(text.contains("--stop-workloads-on-exit"), "{text}");
    assert!(text.contains("lasctl delete module tracer web"), "{text}");
}

/// Colour stays off in files even when a user asks for every line (LAS_LOG=debug).
#[test]
fn no_colour_codes_in_a_redirected_log_at_any_level() {
    let env = FreshEnv::new();
    let log = env.work.path().join("debug.log");
    let mut c = env.cmd();
    c.env("LAS_LOG", "debug")
        .args(["daemon", "--listen", &format!("127.0.0.1:{}", free_port())])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = ChildGuard::spawn(c);
    wait_until("debug lines", Duration::from_secs(60), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("DEBUG"))
    });
    let pid = child.id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait_output(Duration::from_secs(60));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\u{1b}'), "{text:?}");
}
