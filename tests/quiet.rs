//! Proven quiet: a converged or stalled stack does nothing. For each terminal state, through the
//! real daemon, what happens in the 10 s after the state is reached is counted: reconciles
//! (`las_reconciles_total`), status writes (the object's resourceVersion), events (the sum of the
//! event log's counts) and runtime operations (downloads, quarantined files, processes). The
//! daemons run with `--resync-seconds 5`: a Ready object may be looked at by each resync, a Stalled
//! one not at all; nothing stable writes its status. Also the regression tests of issue 11's
//! defect 1 (a Stalled Model fetched again and again, a retryable error not backing off).

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use localaistack::api::Kind;
use localaistack::control::store::Store;
use support::FreshEnv;
use support::daemon::{Daemon, free_port, get_json, wait_until};
use support::docker::{E2E_IMAGE, e2e_image as docker_image};

const WINDOW: Duration = Duration::from_secs(10);
const RESYNC: &str = "5";

fn start(env: &FreshEnv) -> Daemon {
    Daemon::start(env, &[], &["--resync-seconds", RESYNC])
}

fn http_get(listen: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Writes `yaml` through the management API (no CLI checks on the way), as the owner.
fn http_apply(env: &FreshEnv, listen: &str, yaml: &str) {
    let token = std::fs::read_to_string(env.home_path().join("run/token")).unwrap();
    let mut s = std::net::TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /api/v1/apply HTTP/1.1\r\nHost: {listen}\r\nAuthorization: Bearer {}\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{yaml}",
        token.trim(),
        yaml.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.1 201"),
        "{out}"
    );
}

/// The sum of `las_reconciles_total` over kinds and results.
fn reconciles(d: &Daemon) -> u64 {
    http_get(&d.listen, "/metrics")
        .lines()
        .filter(|l| l.starts_with("las_reconciles_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// What one object looks like to the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Obj {
    resource_version: u64,
    events: u64,
}

fn obj(env: &FreshEnv, kind: Kind, name: &str) -> Obj {
    let s = Store::open(&env.home_path().join("state.db")).unwrap();
    let o = s.get(kind, name).unwrap();
    let events = s
        .events(Some((kind.as_str(), name)), 0, 100_000)
        .unwrap()
        .iter()
        .map(|e| e.count)
        .sum();
    Obj {
        resource_version: o.resource_version,
        events,
    }
}

fn condition(env: &FreshEnv, kind: &str, name: &str, type_: &str) -> Option<(String, String)> {
    let o = get_json(env, kind, name)?;
    if o["status"]["observedGeneration"] != o["metadata"]["generation"] {
        return None;
    }
    o["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

fn wait_condition(env: &FreshEnv, d: &Daemon, kind: &str, name: &str, type_: &str, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if let Some((s, r)) = condition(env, kind, name, type_)
            && s == "True"
            && (want.is_empty() || want.contains(&r.as_str()))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{kind}/{name}: {type_} not True with {want:?} within 90 s: {:?}\ndaemon log:\n{}",
        get_json(env, kind, name).map(|o| o["status"].clone()),
        d.log()
    );
}

fn quarantined(env: &FreshEnv) -> usize {
    std::fs::read_dir(env.home_path().join("models/quarantine"))
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

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

fn native_yaml(name: &str, command: &str, extra: &str) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata:\n  name: {name}\nspec:\n  native:\n    command: {command}\n{extra}"
    )
}

/// Counts over [`WINDOW`] for the daemon and the given objects.
struct Window {
    reconciles: u64,
    objects: Vec<(Kind, String, Obj, Obj)>,
}

fn measure(env: &FreshEnv, d: &Daemon, objects: &[(Kind, &str)]) -> Window {
    let r0 = reconciles(d);
    let before: Vec<Obj> = objects.iter().map(|(k, n)| obj(env, *k, n)).collect();
    std::thread::sleep(WINDOW);
    let r1 = reconciles(d);
    Window {
        reconciles: r1 - r0,
        objects: objects
            .iter()
            .zip(before)
            .map(|((k, n), b)| (*k, n.to_string(), b, obj(env, *k, n)))
            .collect(),
    }
}

impl Window {
    /// No status write, no event, at most `max_reconciles` reconciles.
    #[track_caller]
    fn assert_quiet(&self, case: &str, max_reconciles: u64) {
        assert!(
            self.reconciles <= max_reconciles,
            "{case}: {} reconciles in {WINDOW:?}, at most {max_reconciles} allowed",
            self.reconciles
        );
        for (k, n, b, a) in &self.objects {
            assert_eq!(
                b.resource_version, a.resource_version,
                "{case}: {k}/{n} had its status written in a stable state"
            );
            assert_eq!(b.events, a.events, "{case}: {k}/{n} recorded events");
        }
        eprintln!(
            "{case}: {} reconciles, 0 writes, 0 events in {WINDOW:?}",
            self.reconciles
        );
    }
}

/// One resync per object every 5 s: at most 3 looks per object in a 10 s window.
fn resync_allowance(objects: u64) -> u64 {
    objects * 3
}

fn case_ready() {
    let env = FreshEnv::new();
    let d = start(&env);
    let gguf = generate_tiny_model(&env, "tiny.gguf");
    let port = free_port();
    env.write(
        "s/model.yaml",
        &model_yaml("tiny", gguf.to_str().unwrap(), None),
    );
    env.write(
        "s/web.yaml",
        &native_yaml(
            "web",
            &format!("[/bin/busybox, httpd, -f, -p, '127.0.0.1:{port}', -h, /etc]"),
            &format!("  health: {{http: {{path: /hostname, port: {port}}}}}\n"),
        ),
    );
    let dir = env.work.path().join("s");
    env.run(&["apply", "-f", dir.to_str().unwrap()]).ok();
    support::daemon::wait_ready(&env, &d, "model", "tiny", Duration::from_secs(90));
    let web = support::daemon::wait_ready(&env, &d, "module", "web", Duration::from_secs(90));
    // Settled: the first probe results are in.
    std::thread::sleep(Duration::from_secs(2));
    let w = measure(&env, &d, &[(Kind::Model, "tiny"), (Kind::Module, "web")]);
    w.assert_quiet("Ready", resync_allowance(2));
    let after = get_json(&env, "module", "web").unwrap();
    assert_eq!(
        after["status"]["pid"], web["status"]["pid"],
        "Ready: restarted"
    );
    assert_eq!(quarantined(&env), 0);
}

fn case_digest_mismatch() {
    let env = FreshEnv::new();
    let d = start(&env);
    let gguf = generate_tiny_model(&env, "tiny.gguf");
    env.write(
        "m.yaml",
        &model_yaml(
            "wrong",
            &format!("file://{}", gguf.display()),
            Some(&"0".repeat(64)),
        ),
    );
    env.run(&[
        "apply",
        "-f",
        env.work.path().join("m.yaml").to_str().unwrap(),
    ])
    .ok();
    wait_condition(&env, &d, "model", "wrong", "Stalled", &["DigestMismatch"]);
    let w = measure(&env, &d, &[(Kind::Model, "wrong")]);
    w.assert_quiet("Stalled (DigestMismatch)", 0);
    assert_eq!(quarantined(&env), 1, "one quarantine entry per digest");
}

fn case_dependency_cycle() {
    let env = FreshEnv::new();
    let d = start(&env);
    let cmd = "[/bin/sleep, '3600']";
    let yaml = format!(
        "{}---\n{}",
        native_yaml("ping", cmd, "  dependsOn: [{kind: Module, name: pong}]\n"),
        native_yaml("pong", cmd, "  dependsOn: [{kind: Module, name: ping}]\n")
    );
    // Through the HTTP API: the CLI refuses a cycle, the daemon is the second line of defence.
    http_apply(&env, &d.listen, &yaml);
    wait_condition(&env, &d, "module", "ping", "Stalled", &["DependencyCycle"]);
    wait_condition(&env, &d, "module", "pong", "Stalled", &["DependencyCycle"]);
    let o = get_json(&env, "module", "ping").unwrap();
    let msg = o["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Stalled")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("ping → pong → ping"), "{msg}");
    std::thread::sleep(Duration::from_secs(1));
    let w = measure(&env, &d, &[(Kind::Module, "ping"), (Kind::Module, "pong")]);
    w.assert_quiet("Stalled (DependencyCycle)", 0);
    assert!(support::daemon::workload_pids_except(env.home_path(), Some(d.guard.id())).is_empty());
}

fn case_admission_refused() {
    let env = FreshEnv::new();
    let d = start(&env);
    env.write(
        "p.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: Policy\nmetadata: {name: containers-only}\nspec:\n  priority: 100\n  tiers:\n  - name: containers-only\n    when: {fact: memory.usableBytes, op: \">=\", value: 0}\n    capabilities:\n      allowedRuntimes: [container]\n",
    );
    env.write(
        "m.yaml",
        &native_yaml("refused", "[/bin/sleep, '3600']", ""),
    );
    env.run(&[
        "apply",
        "-f",
        env.work.path().join("p.yaml").to_str().unwrap(),
        "-f",
        env.work.path().join("m.yaml").to_str().unwrap(),
    ])
    .ok();
    wait_condition(
        &env,
        &d,
        "module",
        "refused",
        "Stalled",
        &["AdmissionRefused"],
    );
    let w = measure(&env, &d, &[(Kind::Module, "refused")]);
    w.assert_quiet("Stalled (AdmissionRefused)", 0);
    assert!(support::daemon::workload_pids_except(env.home_path(), Some(d.guard.id())).is_empty());
}

fn case_unresolvable_from() {
    let env = FreshEnv::new();
    let d = start(&env);
    env.write(
        "m.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {name: nowhere}\nspec:\n  from: no-such-module\n",
    );
    env.run(&[
        "apply",
        "-f",
        env.work.path().join("m.yaml").to_str().unwrap(),
    ])
    .ok();
    wait_condition(
        &env,
        &d,
        "module",
        "nowhere",
        "Stalled",
        &["UnresolvableModule", "AdmissionRefused"],
    );
    let w = measure(&env, &d, &[(Kind::Module, "nowhere")]);
    w.assert_quiet("Stalled (unresolvable from:)", 0);
}

fn case_crash_loop() {
    let env = FreshEnv::new();
    let d = start(&env);
    env.write(
        "m.yaml",
        &native_yaml(
            "crashy",
            "[/bin/sh, -c, 'exit 3']",
            "  restartPolicy: Always\n",
        ),
    );
    env.run(&[
        "apply",
        "-f",
        env.work.path().join("m.yaml").to_str().unwrap(),
    ])
    .ok();
    wait_condition(&env, &d, "module", "crashy", "Degraded", &["CrashLoop"]);
    let restarts = |env: &FreshEnv| {
        get_json(env, "module", "crashy").unwrap()["status"]["restarts"]
            .as_u64()
            .unwrap_or(0)
    };
    let r0 = restarts(&env);
    let s = Store::open(&env.home_path().join("state.db")).unwrap();
    let rows0 = s
        .events(Some(("Module", "crashy")), 0, 100_000)
        .unwrap()
        .len();
    let w = measure(&env, &d, &[(Kind::Module, "crashy")]);
    let r1 = restarts(&env);
    let rows1 = s
        .events(Some(("Module", "crashy")), 0, 100_000)
        .unwrap()
        .len();
    let (_, _, b, a) = &w.objects[0];
    let restarted = r1 - r0;
    // The supervisor's backoff doubles from 1 s: at most a handful of restarts in 10 s.
    assert!(
        restarted <= 5,
        "CrashLoop: {restarted} restarts in {WINDOW:?}"
    );
    // A look per restart (the runtime announces it) and per resync; two status writes and two
    // events per restart at most, and the events are one aggregated row each.
    let writes = a.resource_version - b.resource_version;
    assert!(
        w.reconciles <= 2 * restarted + resync_allowance(1),
        "CrashLoop: {} reconciles for {restarted} restarts",
        w.reconciles
    );
    assert!(
        writes <= 2 * restarted + 1,
        "CrashLoop: {writes} status writes for {restarted} restarts"
    );
    // (A restart and the crash-loop state it enters or leaves: at most two per restart.)
    assert!(
        a.events - b.events <= 2 * restarted + 1,
        "CrashLoop: {} events for {restarted} restarts",
        a.events - b.events
    );
    // At most the series of a first restart appear (Restarted, Started); repeats add no row.
    assert!(
        rows1 <= rows0 + 2,
        "CrashLoop: repeated events were not aggregated: {:#?}",
        s.events(Some(("Module", "crashy")), 0, 100_000).unwrap()
    );
    eprintln!(
        "CrashLoop: {restarted} restarts, {} reconciles, {writes} status writes, {} events in {WINDOW:?}",
        w.reconciles,
        a.events - b.events
    );
}

/// Runs every case in its own thread (each with its own daemon) and reports every failure.
fn run_cases(cases: Vec<(&'static str, fn())>) {
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(name, f)| (name, std::thread::spawn(f)))
        .collect();
    let mut failed = Vec::new();
    for (name, h) in handles {
        if h.join().is_err() {
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "failed: {failed:?} (see the panics above)"
    );
}

#[test]
fn a_converged_or_stalled_stack_does_nothing() {
    run_cases(vec![
        ("Ready", case_ready as fn()),
        ("Stalled DigestMismatch", case_digest_mismatch),
        ("Stalled DependencyCycle", case_dependency_cycle),
        ("Stalled AdmissionRefused", case_admission_refused),
        ("Stalled unresolvable from", case_unresolvable_from),
        ("CrashLoop", case_crash_loop),
        ("container start fails", case_container_start_fails),
    ]);
}

// ---- defect 1: a Stalled Model fetched again and again, a retryable error never backing off ----

/// A tiny HTTP server: `/ok.gguf` serves `body`, anything else answers 404. Records the time of
/// every request by path.
struct Server {
    addr: String,
    hits: Arc<Mutex<BTreeMap<String, Vec<Instant>>>>,
}

impl Server {
    fn start(body: Vec<u8>) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let hits: Arc<Mutex<BTreeMap<String, Vec<Instant>>>> = Arc::default();
        let (h, body) = (hits.clone(), Arc::new(body));
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { return };
                let (h, body) = (h.clone(), body.clone());
                std::thread::spawn(move || {
                    let mut r = BufReader::new(c.try_clone().unwrap());
                    let mut first = String::new();
                    if r.read_line(&mut first).is_err() {
                        return;
                    }
                    loop {
                        let mut l = String::new();
                        if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                            break;
                        }
                    }
                    let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
                    h.lock()
                        .unwrap()
                        .entry(path.clone())
                        .or_default()
                        .push(Instant::now());
                    if path == "/ok.gguf" {
                        let _ = write!(
                            c,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = c.write_all(&body);
                    } else {
                        let _ = c.write_all(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                    }
                });
            }
        });
        Server { addr, hits }
    }

    fn hits(&self, path: &str) -> Vec<Instant> {
        self.hits
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or_default()
    }
}

fn apply_text(env: &FreshEnv, rel: &str, text: &str) {
    let p = env.write(rel, text);
    env.run(&["apply", "-f", p.to_str().unwrap()]).ok();
}

/// Defect 1: with a wrong sha256, an http:// source was downloaded 47 times in 10 s.
fn case_http_mismatch_fetched_once() {
    let env = FreshEnv::new();
    let d = start(&env);
    let gguf = generate_tiny_model(&env, "tiny.gguf");
    let server = Server::start(std::fs::read(&gguf).unwrap());
    apply_text(
        &env,
        "m.yaml",
        &model_yaml(
            "remote",
            &format!("http://{}/ok.gguf", server.addr),
            Some(&"1".repeat(64)),
        ),
    );
    wait_condition(&env, &d, "model", "remote", "Stalled", &["DigestMismatch"]);
    let w = measure(&env, &d, &[(Kind::Model, "remote")]);
    w.assert_quiet("http DigestMismatch", 0);
    assert_eq!(server.hits("/ok.gguf").len(), 1, "downloaded once");
    assert_eq!(quarantined(&env), 1);
    // A restart (here kill -9) does not download it again either.
    let mut d = d;
    d.kill9();
    let d = start(&env);
    std::thread::sleep(Duration::from_secs(4));
    assert!(reconciles(&d) >= 1, "the new daemon looked at it");
    assert_eq!(
        server.hits("/ok.gguf").len(),
        1,
        "not downloaded after a restart"
    );
    let (s, r) = condition(&env, "model", "remote", "Stalled").unwrap();
    assert_eq!((s.as_str(), r.as_str()), ("True", "DigestMismatch"));
}

/// Defect 1: with a wrong sha256, a file:// source made 2,668 quarantine entries in 6 s. Stalled
/// until the file's stamp changes: replaced by the right bytes, it is retried and verified.
fn case_file_mismatch_until_the_file_changes() {
    let env = FreshEnv::new();
    let d = start(&env);
    let good = generate_tiny_model(&env, "good.gguf");
    let good_bytes = std::fs::read(&good).unwrap();
    let mut bad_bytes = good_bytes.clone();
    *bad_bytes.last_mut().unwrap() ^= 0xff;
    let src = env.work.path().join("weights.gguf");
    std::fs::write(&src, &bad_bytes).unwrap();
    apply_text(
        &env,
        "m.yaml",
        &model_yaml(
            "local",
            &format!("file://{}", src.display()),
            Some(&sha256_hex(&good_bytes)),
        ),
    );
    wait_condition(&env, &d, "model", "local", "Stalled", &["DigestMismatch"]);
    let w = measure(&env, &d, &[(Kind::Model, "local")]);
    w.assert_quiet("file DigestMismatch", 0);
    assert_eq!(quarantined(&env), 1);
    // The right bytes, by rename (a new file): the next resync sees the new stamp.
    let tmp = env.work.path().join("weights.tmp");
    std::fs::write(&tmp, &good_bytes).unwrap();
    std::fs::rename(&tmp, &src).unwrap();
    support::daemon::wait_ready(&env, &d, "model", "local", Duration::from_secs(60));
    assert_eq!(quarantined(&env), 1);
}

/// Defect 1: a 404 was requested 1,861 times in 3 s while status said "retrying with backoff".
fn case_404_backs_off() {
    let env = FreshEnv::new();
    let d = start(&env);
    let server = Server::start(Vec::new());
    apply_text(
        &env,
        "m.yaml",
        &model_yaml("gone", &format!("http://{}/gone.gguf", server.addr), None),
    );
    wait_until("the first request", Duration::from_secs(60), || {
        !server.hits("/gone.gguf").is_empty()
    });
    let t0 = server.hits("/gone.gguf")[0];
    std::thread::sleep(WINDOW.saturating_sub(t0.elapsed()));
    let hits: Vec<Instant> = server
        .hits("/gone.gguf")
        .into_iter()
        .filter(|t| *t <= t0 + WINDOW)
        .collect();
    let gaps: Vec<f64> = hits
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    eprintln!(
        "404: {} requests in {WINDOW:?}, gaps {gaps:.2?}",
        hits.len()
    );
    // 0.5 s doubling with ±20% jitter: retries after ~0.5, ~1, ~2, ~4 s.
    assert!(
        (3..=7).contains(&hits.len()),
        "{} requests in {WINDOW:?}: {gaps:?}\n{}",
        hits.len(),
        d.log()
    );
    for (i, min) in [0.4, 0.8, 1.6].into_iter().enumerate() {
        if let Some(g) = gaps.get(i) {
            assert!(
                *g >= min,
                "retry {} came after {g:.2} s (< {min} s): {gaps:?}",
                i + 1
            );
        }
    }
    assert!(gaps.len() >= 2, "{gaps:?}");
    let (s, r) = condition(&env, "model", "gone", "Reconciling").unwrap();
    assert_eq!((s.as_str(), r.as_str()), ("True", "SourceUnavailable"));
}

// ---- defect 3: a failing container start flooded events and re-created its container ----

/// The ids of the containers whose name contains `name`.
fn containers_named(name: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("name={name}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// Defect 3: a container Module that fails to start backs off (0.5 s doubling) and keeps its one
/// container; its Warnings are one aggregated row.
fn case_container_start_fails() {
    if !docker_image() {
        return;
    }
    let env = FreshEnv::new();
    let d = start(&env);
    let name = format!("nostart{}", free_port());
    apply_text(
        &env,
        "m.yaml",
        &format!(
            "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {{name: {name}}}\nspec:\n  container:\n    image: {E2E_IMAGE}\n    command: [/no/such/program]\n"
        ),
    );
    // Depending on the engine, the start itself fails (RuntimeError, our backoff) or the
    // process exits at once (CrashLoop, the engine's restart backoff).
    wait_until("a failing start", Duration::from_secs(90), || {
        condition(&env, "module", &name, "Reconciling")
            .is_some_and(|(s, r)| s == "True" && r == "RuntimeError")
            || condition(&env, "module", &name, "Degraded")
                .is_some_and(|(s, r)| s == "True" && r == "CrashLoop")
    });
    let restarts = |env: &FreshEnv| {
        get_json(env, "module", &name).unwrap()["status"]["restarts"]
            .as_u64()
            .unwrap_or(0)
    };
    let restarts0 = restarts(&env);
    let r0 = reconciles(&d);
    let b = obj(&env, Kind::Module, &name);
    let mut ids = std::collections::BTreeSet::new();
    let t0 = Instant::now();
    while t0.elapsed() < WINDOW {
        ids.extend(containers_named(&name));
        std::thread::sleep(Duration::from_millis(250));
    }
    let a = obj(&env, Kind::Module, &name);
    let n = reconciles(&d) - r0;
    let s = Store::open(&env.home_path().join("state.db")).unwrap();
    let rows = s.events(Some(("Module", &name)), 0, 1000).unwrap();
    eprintln!(
        "failing container start: {n} reconciles, {} events, {} containers in {WINDOW:?}",
        a.events - b.events,
        ids.len()
    );
    let restarted = restarts(&env) - restarts0;
    assert_eq!(
        ids.len(),
        1,
        "one container, started again, never re-created: {ids:?}"
    );
    // Our retries after ~0.5, 1, 2, 4 s: at most 5 in the window; or a look per restart of the
    // engine's (backed off) restarts, and per resync.
    assert!(
        n <= 5 + 2 * restarted,
        "{n} reconciles for {restarted} restarts in {WINDOW:?}: the backoff does not hold"
    );
    let mut per_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &rows {
        *per_reason.entry(e.reason.as_str()).or_default() += 1;
    }
    assert!(
        per_reason.values().all(|n| *n <= 2),
        "repeated events are aggregated: {rows:#?}"
    );
}

#[test]
fn stalled_model_is_not_refetched_regression() {
    run_cases(vec![
        (
            "http DigestMismatch",
            case_http_mismatch_fetched_once as fn(),
        ),
        (
            "file DigestMismatch",
            case_file_mismatch_until_the_file_changes,
        ),
        ("404 backoff", case_404_backs_off),
    ]);
}
