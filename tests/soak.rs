//! kill -9 soak (issue 11): the daemon is killed at pseudo-random moments while it converges a
//! mixed stack — three native Modules, a container Module, an engine Module serving a Model
//! downloaded over HTTP from a local server, and a Model whose digest is wrong. After every kill
//! nothing is duplicated, no blob is corrupt, the quarantine does not grow and the database is
//! intact; at the end the stack converges with exactly one workload per Module and nothing else.
//!
//! `make test` runs 5 kills; `make soak` runs 100 (`LAS_SOAK_KILLS`). The counts are printed.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;
use support::daemon::{Daemon, free_port, get_json, home_processes, wait_ready, wait_until};
use support::docker::{E2E_IMAGE, e2e_image};
use support::{ChildGuard, FreshEnv};

const NATIVE: [&str; 3] = ["n0", "n1", "n2"];
const ALL_MODULES: [&str; 5] = ["n0", "n1", "n2", "web", "chat"];

fn env_of(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|kv| String::from_utf8_lossy(kv).into_owned())
        .collect()
}

/// Workload processes of `home` by owning Module (the side-by-side slot folded in), and the
/// processes that belong to no Module (besides the daemon and the log writers).
fn processes_by_module(home: &Path, daemon: Option<u32>) -> (BTreeMap<String, u32>, Vec<u32>) {
    let all = home_processes(home);
    let pids: Vec<u32> = all.iter().map(|(p, _)| *p).collect();
    let mut by = BTreeMap::new();
    let mut orphans = Vec::new();
    for (pid, ppid) in &all {
        // Children of a workload (a server's forks) belong to it.
        if Some(*pid) == daemon || pids.contains(ppid) && Some(*ppid) != daemon {
            continue;
        }
        let env = env_of(*pid);
        let owner = env
            .iter()
            .find_map(|kv| kv.strip_prefix("LAS_WORKLOAD_OWNER=Module/"));
        match owner {
            Some(o) => {
                *by.entry(o.split('@').next().unwrap().to_string())
                    .or_insert(0) += 1
            }
            None => {
                let cmd =
                    std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if !cmd.contains("log-writer") && !cmd.split('\0').any(|a| a == "daemon") {
                    orphans.push(*pid);
                }
            }
        }
    }
    (by, orphans)
}

fn containers(home: &Path) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=localaistack.io/stack={}", home.display()),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Complete blobs must hash to their names; returns (blobs, partial files).
fn check_blobs(home: &Path) -> (usize, usize) {
    let dir = home.join("models/blobs");
    let (mut blobs, mut partial) = (0, 0);
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(hex) = name.strip_prefix("sha256-") {
            let bytes = std::fs::read(e.path()).unwrap();
            assert_eq!(
                hex::encode(sha2::Sha256::digest(&bytes)),
                hex,
                "blob {name} does not hold its digest"
            );
            blobs += 1;
        } else if !name.ends_with(".json") && !name.ends_with(".lock") {
            partial += 1;
        }
    }
    (blobs, partial)
}

fn quarantined(home: &Path) -> usize {
    std::fs::read_dir(home.join("models/quarantine"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".json"))
        .count()
}

fn integrity(home: &Path) -> String {
    let conn = rusqlite::Connection::open(home.join("state.db")).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

fn stalled_reason(o: &serde_json::Value) -> Option<String> {
    o["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Stalled" && c["status"] == "True")
        .and_then(|c| c["reason"].as_str().map(String::from))
}

#[test]
fn kill_9_soak_over_a_mixed_stack() {
    let kills: usize = std::env::var("LAS_SOAK_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    if !e2e_image() {
        return;
    }
    let env = FreshEnv::new();
    let home = env.home_path().to_path_buf();

    // The HTTP source: the tiny model and 64 MiB of other bytes (a wrong digest for them).
    let www = env.work.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    env.run(&[
        "model",
        "generate-test",
        www.join("tiny.gguf").to_str().unwrap(),
    ])
    .ok();
    let big: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(www.join("big.bin"), &big).unwrap();
    let http_port = free_port();
    let mut server = Command::new("python3");
    server
        .args([
            "-m",
            "http.server",
            &http_port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(&www)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = ChildGuard::spawn(server);
    wait_until("the HTTP source", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", http_port)).is_ok()
    });

    let dir = env.work.path().join("stack");
    for name in NATIVE {
        let port = free_port();
        env.write(
            &format!("stack/{name}.yaml"),
            &format!(
                "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {{name: {name}}}\nspec:\n  native:\n    command: [/bin/busybox, httpd, -f, -p, '127.0.0.1:{port}', -h, /etc]\n  health: {{http: {{path: /hostname, port: {port}}}}}\n"
            ),
        );
    }
    let web_port = free_port();
    env.write(
        "stack/web.yaml",
        &format!(
            "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {{name: web}}\nspec:\n  container:\n    image: {E2E_IMAGE}\n    command: [/bin/busybox, httpd, -f, -p, '8080', -h, /www]\n    ports: [{{containerPort: 8080, hostPort: {web_port}}}]\n  health: {{http: {{path: /, port: 8080}}}}\n"
        ),
    );
    env.write(
        "stack/models.yaml",
        &format!(
            "apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata: {{name: tiny}}\nspec:\n  source: http://127.0.0.1:{http_port}/tiny.gguf\n---\n\
             apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata: {{name: bad}}\nspec:\n  source: http://127.0.0.1:{http_port}/big.bin\n  sha256: {}\n",
            "0".repeat(64)
        ),
    );
    env.write(
        "stack/chat.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {name: chat}\nspec:\n  model: tiny\n  engine: {type: llama, contextSize: 256}\n",
    );

    let started = Instant::now();
    let mut x: u64 = 0x50a4;
    let (mut max_per_module, mut max_containers, mut max_quarantine) = (0u32, 0usize, 0usize);
    for round in 0..kills {
        let mut d = Daemon::start(&env, &[&dir], &[]);
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(100 + (x >> 33) % 2500));
        d.kill9();
        // The daemon is gone; what it left must be consistent.
        let (by, _) = processes_by_module(&home, None);
        let most = by.values().copied().max().unwrap_or(0);
        assert!(most <= 1, "round {round}: a Module runs twice: {by:?}");
        let c = containers(&home).len();
        assert!(c <= 1, "round {round}: {c} containers for one Module");
        let q = quarantined(&home);
        assert!(q <= 1, "round {round}: quarantine grew to {q} entries");
        check_blobs(&home);
        assert_eq!(integrity(&home), "ok", "round {round}");
        max_per_module = max_per_module.max(most);
        max_containers = max_containers.max(c);
        max_quarantine = max_quarantine.max(q);
        // Keep the Daemon's sweep from running: workloads must survive the kill.
        std::mem::forget(d);
    }

    // A last start converges everything; the wrong digest stalls and stays stalled.
    let d = Daemon::start(&env, &[&dir], &[]);
    for m in ALL_MODULES {
        wait_ready(&env, &d, "module", m, Duration::from_secs(180));
    }
    wait_ready(&env, &d, "model", "tiny", Duration::from_secs(30));
    wait_until(
        "the wrong digest to stall",
        Duration::from_secs(120),
        || {
            get_json(&env, "model", "bad")
                .and_then(|o| stalled_reason(&o))
                .is_some_and(|r| r == "DigestMismatch")
        },
    );
    let daemon_pid = d.guard.id();
    wait_until("one workload per Module", Duration::from_secs(30), || {
        let (by, orphans) = processes_by_module(&home, Some(daemon_pid));
        orphans.is_empty()
            && ["n0", "n1", "n2", "chat"]
                .iter()
                .all(|m| by.get(*m) == Some(&1))
    });
    let (by, orphans) = processes_by_module(&home, Some(daemon_pid));
    let duplicates: u32 = by.values().map(|n| n.saturating_sub(1)).sum();
    assert_eq!(containers(&home).len(), 1);
    let (blobs, partial) = check_blobs(&home);
    assert_eq!(partial, 0, "partial files left after converging");
    assert_eq!(blobs, 1, "one blob: the tiny model");
    let q = quarantined(&home);
    assert!(q <= 1, "quarantine: {q}");
    assert_eq!(integrity(&home), "ok");
    println!(
        "soak: kills={kills} converges=1 duplicates={duplicates} orphans={} containers=1 \
         max_per_module_after_kill={max_per_module} max_containers_after_kill={max_containers} \
         quarantine={q} (max {max_quarantine}) blobs={blobs} partial=0 integrity=ok in {:.0} s",
        orphans.len(),
        started.elapsed().as_secs_f64()
    );
}
