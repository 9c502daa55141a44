//! Faults of the runtime and the model store, through the real daemon: log floods, escaping
//! children, replaced model files, huge or cancelled downloads, a full disk, a Docker engine that
//! comes and goes.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::FreshEnv;
use support::daemon::{Daemon, get_json, wait_ready, wait_until};

fn module_doc(name: &str, argv: &[&str]) -> String {
    let argv: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata:\n  name: {name}\nspec:\n  native:\n    command: [{}]\n  restartPolicy: Never\n",
        argv.join(", ")
    )
}

fn dir_bytes(dir: &Path, prefix: &str) -> (u64, Vec<String>) {
    let mut total = 0;
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            total += e.metadata().map(|m| m.len()).unwrap_or(0);
            names.push(name);
        }
    }
    (total, names)
}

/// Defect 13: `yes` wrote 5.5 GB in 12 s past the 10 MiB cap, copy-based rotation blocked the
/// supervisor and the exit was reported 17 s late; the logs stayed after the Module was deleted.
#[test]
fn native_log_cap_holds_under_a_flood_regression() {
    const CAP: u64 = 10 * 1024 * 1024;
    const BUF: u64 = 64 * 1024;
    let env = FreshEnv::new();
    let d = Daemon::start(&env, &[], &[]);
    let logs = env.home_path().join("logs");
    let f = env.write(
        "flood.yaml",
        &module_doc("flood", &["/bin/sh", "-c", "timeout 4 yes; exit 7"]),
    );
    let t0 = Instant::now();
    env.run(&["apply", "-f", f.to_str().unwrap()]).ok();
    let mut max_seen = 0;
    let mut exited_at = None;
    while t0.elapsed() < Duration::from_secs(60) {
        let (bytes, _) = dir_bytes(&logs, "module-flood");
        max_seen = max_seen.max(bytes);
        if let Some(o) = get_json(&env, "module", "flood")
            && o["status"]["lastExitCode"] == 7
        {
            exited_at = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let exited_at = exited_at.unwrap_or_else(|| {
        panic!(
            "the exit of the flooding process was never reported\n{}",
            d.log()
        )
    });
    let (bytes, names) = dir_bytes(&logs, "module-flood");
    max_seen = max_seen.max(bytes);
    eprintln!(
        "flood: exit reported {:.1}s after apply (the process ran 4 s); log bytes at most {max_seen} ({names:?})",
        exited_at.as_secs_f64()
    );
    assert!(
        max_seen <= CAP + BUF,
        "log files of the module hold {max_seen} bytes, over the {CAP}-byte cap: {names:?}"
    );
    assert!(
        max_seen > CAP / 4,
        "`yes` for 4 s must have filled the log close to its cap (saw {max_seen} bytes)"
    );
    assert!(
        exited_at < Duration::from_secs(4 + 10),
        "the exit was reported {exited_at:?} after apply; the process ran 4 s"
    );
    // The output is readable through the API while within the cap.
    let tail = env.run(&["logs", "module/flood", "--tail", "2"]).ok();
    assert!(tail.stdout.contains('y'), "{}", tail.stdout);

    env.run(&["delete", "module", "flood"]).ok();
    wait_until(
        "the module's logs are removed",
        Duration::from_secs(30),
        || dir_bytes(&logs, "module-flood").1.is_empty(),
    );
    assert!(get_json(&env, "module", "flood").is_none());
}

/// Pids whose command line is exactly `argv`.
fn processes_with_cmdline(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want)
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .rsplit(')')
                    .next()
                    .unwrap_or_default()
                    .trim_start()
                    .starts_with('Z')
        })
        .collect()
}

/// Kills what a failed run of the escape test leaves.
struct KillMarked(Vec<String>);

impl Drop for KillMarked {
    fn drop(&mut self) {
        let argv: Vec<&str> = self.0.iter().map(String::as_str).collect();
        for pid in processes_with_cmdline(&argv) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Defect 14: a child that starts its own session and clears its environment survived the
/// deletion of its Module (no cgroup was used without limits).
#[test]
fn setsid_child_dies_with_its_module_regression() {
    let env = FreshEnv::new();
    let d = Daemon::start(&env, &[], &[]);
    // A marker only this test's processes carry (env -i clears every environment marker).
    let secs = format!(
        "1000.{}{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() % 1000
    );
    let marker = vec!["sleep".to_string(), secs.clone()];
    let _cleanup = KillMarked(marker.clone());
    let script = format!("setsid env -i sleep {secs} & exec sleep {secs}");
    let f = env.write(
        "escape.yaml",
        &module_doc("escape", &["/bin/sh", "-c", &script]),
    );
    env.run(&["apply", "-f", f.to_str().unwrap()]).ok();
    wait_ready(&env, &d, "module", "escape", Duration::from_secs(60));
    let argv = ["sleep", secs.as_str()];
    wait_until("both sleeps run", Duration::from_secs(20), || {
        processes_with_cmdline(&argv).len() == 2
    });
    // The cgroup that makes this work is reported; where none can be made the test fails here
    // with the reason rather than on the survivor below.
    assert!(
        !d.log().contains("no cgroup for native workloads"),
        "cgroup v2 is not writable here, so a setsid child cannot be tracked:\n{}",
        d.log()
    );

    env.run(&["delete", "module", "escape"]).ok();
    let t0 = Instant::now();
    while !processes_with_cmdline(&argv).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "after deleting the Module these of its processes remain: {:?}\n{}",
            processes_with_cmdline(&argv),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_until("the module is gone", Duration::from_secs(30), || {
        get_json(&env, "module", "escape").is_none()
    });
}

fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

fn generate_model(env: &FreshEnv, name: &str, seed: u32) -> std::path::PathBuf {
    let gguf = env.work.path().join(name);
    env.run(&[
        "model",
        "generate-test",
        gguf.to_str().unwrap(),
        "--preset",
        "tiny",
        "--seed",
        &seed.to_string(),
    ])
    .ok();
    gguf
}

fn wait_digest(env: &FreshEnv, d: &Daemon, name: &str, digest: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = get_json(env, "model", name).unwrap();
        if o["status"]["digest"] == digest && support::daemon::is_ready(&o) {
            return o;
        }
        assert!(
            Instant::now() < deadline,
            "model/{name} never reported digest {digest}; last status {}\nevents:\n{}\n{}",
            o["status"],
            env.run(&["events"]).stdout,
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Defect 6: `cp new.gguf <source>` rewrote the hardlinked blob an engine served while the Model
/// stayed Ready with the old digest; a source replaced by rename was never noticed.
#[test]
fn replaced_model_file_is_a_new_revision_and_never_changes_the_blob_regression() {
    let env = FreshEnv::new();
    let source = generate_model(&env, "m.gguf", 1);
    let b = generate_model(&env, "b.gguf", 2);
    let c = generate_model(&env, "c.gguf", 3);
    let (da, db, dc) = (sha256_file(&source), sha256_file(&b), sha256_file(&c));
    assert!(da != db && db != dc);
    let f = env.write("m.yaml", &support::model_doc("m", source.to_str().unwrap()));
    let d = Daemon::start(&env, &[], &[]);
    env.run(&["apply", "-f", f.to_str().unwrap()]).ok();
    let first = wait_digest(&env, &d, "m", &da);
    let blob_a = std::path::PathBuf::from(first["status"]["path"].as_str().unwrap());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&blob_a).unwrap().permissions().mode() & 0o777,
        0o444
    );

    // cp over the source: the same inode rewritten in place.
    let st = std::process::Command::new("cp")
        .arg(&b)
        .arg(&source)
        .status()
        .unwrap();
    assert!(st.success());
    let t0 = Instant::now();
    let second = wait_digest(&env, &d, "m", &db);
    eprintln!(
        "cp over the source: new digest reported after {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(sha256_file(&blob_a), da, "the stored blob never changes");
    assert_ne!(second["status"]["path"], first["status"]["path"]);

    // A rename over the source (how curl -o and most tools write).
    std::fs::rename(&c, &source).unwrap();
    let t0 = Instant::now();
    wait_digest(&env, &d, "m", &dc);
    eprintln!(
        "rename over the source: new digest reported after {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(sha256_file(&blob_a), da);
    let events = env.run(&["events", "model/m"]).ok().stdout;
    assert!(events.contains("SourceChanged"), "{events}");
}

// ---------------------------------------------------------------- a Docker engine that comes and goes

/// A `dockerd` of the test's own (never the system engine): its own data and exec roots, pid file,
/// unix socket and config file, no bridge, no iptables. Stopped (and its files removed) on drop.
struct ExtraDockerd {
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl ExtraDockerd {
    /// A new engine directory; `None` (after a loud skip) when there is no dockerd and
    /// LAS_REQUIRE_DOCKER is not 1.
    fn prepare() -> Option<ExtraDockerd> {
        let found = std::process::Command::new("dockerd")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert_ne!(
                std::env::var("LAS_REQUIRE_DOCKER").as_deref(),
                Ok("1"),
                "LAS_REQUIRE_DOCKER=1 but there is no dockerd to start a test engine with"
            );
            eprintln!(
                "SKIPPED (loudly): no dockerd binary; set LAS_REQUIRE_DOCKER=1 to fail instead"
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("lasd-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        Some(ExtraDockerd { dir, child: None })
    }

    fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("d.sock").display())
    }

    fn docker(&self) -> std::process::Command {
        let mut c = std::process::Command::new("docker");
        c.env("DOCKER_HOST", self.host());
        c
    }

    fn answers(&self) -> bool {
        self.docker()
            .arg("info")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn start(&mut self) {
        assert!(self.child.is_none());
        let p = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p.join("dockerd.log"))
            .unwrap();
        // In a network namespace of its own: a dockerd started with `--bridge none` deletes any
        // `docker0` it can see, which would be the system engine's.
        let child = std::process::Command::new("unshare")
            .args(["--net", "--", "dockerd"])
            .arg("--config-file")
            .arg(p.join("config.json"))
            .arg("--data-root")
            .arg(p.join("data"))
            .arg("--exec-root")
            .arg(p.join("exec"))
            .arg("--pidfile")
            .arg(p.join("d.pid"))
            .arg("-H")
            .arg(self.host())
            .args([
                "--bridge",
                "none",
                "--iptables=false",
                "--storage-driver",
                "vfs",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.child = Some(child);
        let t0 = Instant::now();
        while !self.answers() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the test's dockerd did not answer within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, and wait for it to exit (SIGKILL after 60 s).
    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t0 = Instant::now();
        while c.try_wait().ok().flatten().is_none() {
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = c.kill();
                let _ = c.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Imports a busybox rootfs as `image` into this engine.
    fn load_busybox(&self, image: &str) {
        let root = self.dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("install busybox-static (make deps)");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C {} -cf - . | docker import - {image}",
                root.display()
            ))
            .env("DOCKER_HOST", self.host())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for ExtraDockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Its containers go with it (stopped, and their files removed with the directory).
            let _ = self
                .docker()
                .args(["rm", "-f", "-v"])
                .args(
                    String::from_utf8_lossy(
                        &self
                            .docker()
                            .args(["ps", "-aq"])
                            .output()
                            .map(|o| o.stdout)
                            .unwrap_or_default(),
                    )
                    .split_whitespace(),
                )
                .output();
        }
        self.stop();
    }
}

fn container_doc(name: &str, image: &str) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata:\n  name: {name}\nspec:\n  container:\n    image: {image}\n    command: [/bin/busybox, sleep, '100000']\n"
    )
}

fn ready_reason(env: &FreshEnv, name: &str) -> Option<String> {
    let o = get_json(env, "module", name)?;
    o["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["reason"].as_str().map(String::from))
}

/// Defect 11: a Docker engine that started after the daemon was never used (container Modules
/// stayed DockerUnavailable until a restart); and the fault "the engine goes away and comes back".
#[test]
fn docker_engine_starting_late_and_restarting_is_survived_regression() {
    let Some(mut engine) = ExtraDockerd::prepare() else {
        return;
    };
    const IMAGE: &str = "localaistack-fault/busybox:1";
    let env = FreshEnv::new();
    let host = engine.host();
    // The daemon starts before its engine exists.
    let d = Daemon::start_with(&env, &[], &[], &[("DOCKER_HOST", Path::new(&host))]);
    let a = env.write("a.yaml", &container_doc("late", IMAGE));
    env.run(&["apply", "-f", a.to_str().unwrap()]).ok();
    wait_until(
        "module/late waits for the engine",
        Duration::from_secs(60),
        || ready_reason(&env, "late").as_deref() == Some("DockerUnavailable"),
    );

    engine.start();
    engine.load_busybox(IMAGE);
    let t0 = Instant::now();
    let late = wait_ready(&env, &d, "module", "late", Duration::from_secs(90));
    eprintln!(
        "engine started late: module Ready {:.1}s after it answered",
        t0.elapsed().as_secs_f64()
    );
    let id = late["status"]["containerId"].as_str().unwrap().to_string();

    // The engine goes away mid-converge of a second module ...
    let b = env.write("b.yaml", &container_doc("mid", IMAGE));
    env.run(&["apply", "-f", b.to_str().unwrap()]).ok();
    engine.stop();
    wait_until(
        "module/mid reports the engine unavailable",
        Duration::from_secs(60),
        || {
            ready_reason(&env, "mid").as_deref() == Some("DockerUnavailable")
                || ready_reason(&env, "late").as_deref() == Some("DockerUnavailable")
        },
    );
    assert!(
        d.guard.0.as_ref().is_some(),
        "the daemon keeps running while the engine is away"
    );
    let health = reqwest_like_get(&d.url("/healthz"));
    assert!(
        health.is_some(),
        "the daemon answers while the engine is away\n{}",
        d.log()
    );

    // ... and comes back: the first container is adopted, the second converges.
    engine.start();
    let t0 = Instant::now();
    let late = wait_ready(&env, &d, "module", "late", Duration::from_secs(90));
    wait_ready(&env, &d, "module", "mid", Duration::from_secs(90));
    eprintln!(
        "engine restarted: both modules Ready {:.1}s after it answered",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        late["status"]["containerId"].as_str(),
        Some(id.as_str()),
        "the container that survived the engine's restart is adopted, not replaced"
    );
    let listed = engine.docker().args(["ps", "-q"]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout)
            .split_whitespace()
            .count(),
        2,
        "exactly one container per module"
    );
    env.run(&["delete", "module", "late", "mid"]).ok();
    wait_until(
        "the containers are removed",
        Duration::from_secs(60),
        || {
            engine
                .docker()
                .args(["ps", "-aq"])
                .output()
                .is_ok_and(|o| o.stdout.trim_ascii().is_empty())
        },
    );
}

/// A plain HTTP GET with std (the body, or None when nothing answers).
fn reqwest_like_get(url: &str) -> Option<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (addr, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}")))?;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.").then_some(out)
}

// ---------------------------------------------------------------- downloads

/// What the test HTTP server sends: an endless, slowly streamed body, or fixed bytes. Neither
/// has a Content-Length (the body ends when the connection closes), so no size or free-disk check
/// can happen before the bytes arrive.
#[derive(Clone)]
enum Body {
    Endless { chunk: usize, every: Duration },
    Bytes(Arc<Vec<u8>>),
}

/// A local HTTP/1.1 server that counts requests and bytes sent, and sees the client leave.
struct SlowServer {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    client_left: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

impl SlowServer {
    fn start(body: Body) -> SlowServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let s = SlowServer {
            addr: listener.local_addr().unwrap(),
            requests: Arc::default(),
            sent: Arc::default(),
            client_left: Arc::default(),
            stop: Arc::default(),
        };
        let (requests, sent, left, stop) = (
            s.requests.clone(),
            s.sent.clone(),
            s.client_left.clone(),
            s.stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                requests.fetch_add(1, Ordering::SeqCst);
                let (body, sent, left, stop) =
                    (body.clone(), sent.clone(), left.clone(), stop.clone());
                std::thread::spawn(move || {
                    use std::io::{BufRead, Write};
                    conn.set_nonblocking(false).unwrap();
                    let mut r = std::io::BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                        line.clear();
                    }
                    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n";
                    if conn.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    match body {
                        Body::Bytes(b) => {
                            if conn.write_all(&b).is_ok() {
                                sent.fetch_add(b.len() as u64, Ordering::SeqCst);
                            }
                        }
                        Body::Endless { chunk, every } => {
                            let buf = vec![0u8; chunk];
                            while !stop.load(Ordering::SeqCst) {
                                if conn.write_all(&buf).is_err() {
                                    left.store(true, Ordering::SeqCst);
                                    return;
                                }
                                sent.fetch_add(chunk as u64, Ordering::SeqCst);
                                std::thread::sleep(every);
                            }
                        }
                    }
                });
            }
        });
        s
    }

    fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }
}

impl Drop for SlowServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Partial or temporary files of the model store.
fn partials(home: &Path) -> Vec<String> {
    std::fs::read_dir(home.join("models/blobs"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".partial-") || n.starts_with(".tmp-"))
        .collect()
}

fn condition(env: &FreshEnv, kind: &str, name: &str, ty: &str) -> Option<(String, String, String)> {
    let o = get_json(env, kind, name)?;
    let c = o["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)?
        .clone();
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
        c["message"].as_str().unwrap_or_default().to_string(),
    ))
}

const SMALL_TIER: &str = "apiVersion: localaistack.io/v1alpha1
kind: Policy
metadata:
  name: small-models
spec:
  priority: 100
  tiers:
  - name: small
    capabilities:
      maxModelBytes: 4194304
      allowedRuntimes: [container, native]
      allowedEngines: [llama]
";

/// Defect 12: the tier's maxModelBytes was not enforced while downloading.
#[test]
fn download_past_max_model_bytes_is_stopped_regression() {
    let env = FreshEnv::new();
    let server = SlowServer::start(Body::Endless {
        chunk: 256 * 1024,
        every: Duration::from_millis(20),
    });
    let d = Daemon::start(&env, &[], &[]);
    let p = env.write("policy.yaml", SMALL_TIER);
    env.run(&["apply", "-f", p.to_str().unwrap()]).ok();
    let m = env.write(
        "m.yaml",
        &support::model_doc("huge", &server.url("huge.gguf")),
    );
    env.run(&["apply", "-f", m.to_str().unwrap()]).ok();
    wait_until(
        "model/huge stalls as too large",
        Duration::from_secs(60),
        || condition(&env, "model", "huge", "Stalled").is_some_and(|c| c.0 == "True"),
    );
    let (_, reason, message) = condition(&env, "model", "huge", "Stalled").unwrap();
    assert_eq!(reason, "TooLarge", "{message}\n{}", d.log());
    assert!(
        message.contains("4194304") && message.contains("tier small"),
        "{message}"
    );
    wait_until(
        "the server sees the client leave",
        Duration::from_secs(30),
        || server.client_left.load(Ordering::SeqCst),
    );
    let sent = server.sent.load(Ordering::SeqCst);
    assert!(sent < 64 << 20, "the download ran on: {sent} bytes sent");
    assert!(
        partials(env.home_path()).is_empty(),
        "{:?} after {} requests\n{}",
        partials(env.home_path()),
        server.requests.load(Ordering::SeqCst),
        d.log()
    );
    // Stalled: not fetched again without a change, and quiet (no status write).
    let requests = server.requests.load(Ordering::SeqCst);
    let version = |env: &FreshEnv| {
        get_json(env, "model", "huge").unwrap()["metadata"]["resourceVersion"].clone()
    };
    let before = version(&env);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(server.requests.load(Ordering::SeqCst), requests);
    assert_eq!(version(&env), before, "a stalled Model writes nothing");
    assert!(partials(env.home_path()).is_empty());
}

/// Defect 12: deleting a Model did not cancel its download (it kept growing past 1 GB, with
/// Warning events for a deleted object).
#[test]
fn deleting_a_model_cancels_its_download_regression() {
    let env = FreshEnv::new();
    let server = SlowServer::start(Body::Endless {
        chunk: 64 * 1024,
        every: Duration::from_millis(20),
    });
    let d = Daemon::start(&env, &[], &[]);
    let m = env.write(
        "m.yaml",
        &support::model_doc("slow", &server.url("slow.gguf")),
    );
    env.run(&["apply", "-f", m.to_str().unwrap()]).ok();
    wait_until("the download is under way", Duration::from_secs(60), || {
        server.sent.load(Ordering::SeqCst) > 1 << 20
    });
    let t0 = Instant::now();
    env.run(&["delete", "model", "slow"]).ok();
    wait_until("the download is cancelled", Duration::from_secs(30), || {
        server.client_left.load(Ordering::SeqCst)
    });
    eprintln!(
        "download cancelled {:.1}s after the delete",
        t0.elapsed().as_secs_f64()
    );
    wait_until("no partial file is left", Duration::from_secs(30), || {
        partials(env.home_path()).is_empty()
    });
    let sent = server.sent.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(3));
    assert!(server.sent.load(Ordering::SeqCst) <= sent + (1 << 20));
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        1,
        "not fetched again"
    );
    let events = env.run(&["events", "model/slow"]).ok().stdout;
    assert!(!events.contains("Warning"), "{events}\n{}", d.log());
}

/// A tmpfs mounted for the test; unmounted on drop, pass or fail.
struct TmpfsMount(std::path::PathBuf);

impl TmpfsMount {
    /// Mounts; `None` after a loud skip when mounting is impossible and neither
    /// LAS_REQUIRE_ROOT=1 nor LAS_REQUIRE_DOCKER=1 is set (then it fails instead).
    fn mount(at: &Path, size_bytes: u64) -> Option<TmpfsMount> {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_bytes},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(TmpfsMount(at.to_path_buf())),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                let required = ["LAS_REQUIRE_ROOT", "LAS_REQUIRE_DOCKER"]
                    .iter()
                    .any(|v| std::env::var(v).as_deref() == Ok("1"));
                assert!(
                    !required,
                    "cannot mount a tmpfs for the disk-full test (run as root): {why}"
                );
                eprintln!(
                    "SKIPPED (loudly): cannot mount a tmpfs ({why}); set LAS_REQUIRE_ROOT=1 to fail instead"
                );
                None
            }
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The fault "disk full during a download": a small tmpfs as LAS_HOME/models, filled up.
#[test]
fn disk_full_during_a_download_is_insufficient_disk_and_recovers() {
    let env = FreshEnv::new();
    let gguf = generate_model(&env, "m.gguf", 7);
    let bytes = std::fs::read(&gguf).unwrap();
    let size = bytes.len() as u64;
    let fs_size = (size * 2 / (1 << 20) + 2).max(8) << 20;
    let models = env.home_path().join("models");
    let Some(_mount) = TmpfsMount::mount(&models, fs_size) else {
        return;
    };
    // Leave less room than the model needs.
    let filler = models.join("filler");
    let room = size / 2;
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![1u8; 1 << 16];
    use std::io::Write;
    while f.write_all(&chunk).is_ok() {}
    drop(f);
    let full = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(full.saturating_sub(room))
        .unwrap();

    let server = SlowServer::start(Body::Bytes(Arc::new(bytes)));
    let d = Daemon::start_with(
        &env,
        &[],
        &[],
        &[("LAS_DISK_RESERVE_BYTES", Path::new("0"))],
    );
    let m = env.write("m.yaml", &support::model_doc("m", &server.url("m.gguf")));
    env.run(&["apply", "-f", m.to_str().unwrap()]).ok();
    wait_until(
        "model/m reports InsufficientDisk",
        Duration::from_secs(60),
        || condition(&env, "model", "m", "Ready").is_some_and(|c| c.1 == "InsufficientDisk"),
    );
    // Each attempt removes what it wrote; the next one (retried with backoff) starts afresh, so
    // between attempts nothing is left.
    wait_until(
        "no partial file is left between attempts",
        Duration::from_secs(30),
        || partials(env.home_path()).is_empty(),
    );
    assert!(d.guard.0.is_some());

    std::fs::remove_file(&filler).unwrap();
    let o = wait_ready(&env, &d, "model", "m", Duration::from_secs(90));
    assert_eq!(o["status"]["sizeBytes"], size);
    assert!(partials(env.home_path()).is_empty());
}
