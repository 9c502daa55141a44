//! Watched directories, rollback, the state database and daemon start, against the real daemon
//! (issue 11, defects 4, 5, 7, 8, 9, 10, 16, and concurrent writers). Each regression test is named
//! after the defect it pins; native Modules run `sleep`, so no network and no Docker are needed.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::FreshEnv;
use support::daemon::{Daemon, get_json, wait_ready, wait_until};

fn sleeper(name: &str, arg: &str) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata:\n  name: {name}\nspec:\n  native:\n    command: [/bin/sleep, '{arg}']\n"
    )
}

fn command_of(env: &FreshEnv, name: &str) -> Option<String> {
    get_json(env, "module", name).map(|o| o["spec"]["native"]["command"][1].to_string())
}

fn pid_of(o: &Value) -> u32 {
    o["status"]["pid"].as_u64().expect("a pid") as u32
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn generations(env: &FreshEnv) -> usize {
    let r = env.run(&["history", "-o", "json"]).ok();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    v.as_array().map_or(0, |a| a.len())
}

fn sources(env: &FreshEnv) -> Vec<Value> {
    let r = env.run(&["get", "sources", "-o", "json"]).ok();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

fn source<'a>(all: &'a [Value], dir: &Path) -> Option<&'a Value> {
    let key = std::fs::canonicalize(dir).unwrap().display().to_string();
    all.iter().find(|s| s["path"] == key.as_str())
}

fn mkdir(env: &FreshEnv, name: &str) -> std::path::PathBuf {
    let d = env.work.path().join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn healthz(d: &Daemon) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "10", "-o", "-", "-w", "\n%{http_code}"])
        .arg(d.url("/healthz"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.parse().unwrap_or(0), body.to_string())
}

// ---------------------------------------------------------------- defect 4

#[test]
fn rollback_is_not_silently_undone_by_a_watched_directory_regression() {
    let env = FreshEnv::new();
    let dir = mkdir(&env, "stack");
    std::fs::write(dir.join("a.yaml"), sleeper("app", "1001")).unwrap();
    let mut d = Daemon::start(&env, &[&dir], &[]);
    wait_ready(&env, &d, "module", "app", Duration::from_secs(60));
    std::fs::write(dir.join("a.yaml"), sleeper("app", "1002")).unwrap();
    wait_until(
        "generation 2 applied from the directory",
        Duration::from_secs(30),
        || command_of(&env, "app").as_deref() == Some("\"1002\""),
    );

    // Refused without the flag, saying how; nothing recorded.
    let before = generations(&env);
    let r = env.run(&["rollback"]).fails();
    assert!(
        r.stderr.contains("--suspend-source") && r.stderr.contains("revert the files"),
        "{}",
        r.stderr
    );
    assert_eq!(generations(&env), before);

    let r = env.run(&["rollback", "--suspend-source"]).ok();
    assert!(r.stdout.contains("suspended"), "{}", r.stdout);
    assert_eq!(command_of(&env, "app").as_deref(), Some("\"1001\""));
    let all = sources(&env);
    assert!(
        source(&all, &dir).is_some_and(|s| s["suspended"].is_object()),
        "{all:?}"
    );
    let table = env.run(&["get", "sources"]).ok();
    assert!(table.stdout.contains("Suspended"), "{}", table.stdout);
    let rolled_back = generations(&env);

    // The running daemon honours it: a file event changes nothing...
    std::fs::write(dir.join("a.yaml"), sleeper("app", "1002")).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(command_of(&env, "app").as_deref(), Some("\"1001\""));
    // ...nor does a restart (which applies every directory at start).
    d.kill9();
    let d = Daemon::start(&env, &[&dir], &[]);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        command_of(&env, "app").as_deref(),
        Some("\"1001\""),
        "{}",
        d.log()
    );
    assert_eq!(generations(&env), rolled_back, "{}", d.log());

    // Resuming re-applies the directory at once.
    env.run(&["resume", "source", dir.to_str().unwrap()]).ok();
    wait_until(
        "the resumed directory applied",
        Duration::from_secs(20),
        || command_of(&env, "app").as_deref() == Some("\"1002\""),
    );
    assert!(source(&sources(&env), &dir).is_some_and(|s| s["suspended"].is_null()));
    env.run(&["resume", "source", dir.to_str().unwrap()])
        .fails();
}

// ---------------------------------------------------------------- defect 5

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

#[test]
fn fifo_in_a_watched_directory_does_not_freeze_the_daemon_regression() {
    let env = FreshEnv::new();
    let dir = mkdir(&env, "stack");
    std::fs::write(dir.join("a.yaml"), sleeper("app", "1001")).unwrap();
    mkfifo(&dir.join("x.yaml"));

    // `apply -f DIR` refuses at once, naming the file.
    let t = Instant::now();
    let r = env.run(&["apply", "-f", dir.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains("x.yaml") && r.stderr.contains("not a regular file"),
        "{}",
        r.stderr
    );
    assert!(t.elapsed() < Duration::from_secs(10));

    let other = env.write("other.yaml", &sleeper("other", "1003"));
    let mut d = Daemon::start(&env, &[&dir], &[]);
    wait_until(
        "the FIFO reported on the source",
        Duration::from_secs(30),
        || {
            source(&sources(&env), &dir).is_some_and(|s| {
                s["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("x.yaml") && e.contains("FIFO"))
            })
        },
    );
    // The rest of the daemon works: an apply from elsewhere converges, /healthz answers.
    env.run(&["apply", "-f", other.to_str().unwrap()]).ok();
    wait_ready(&env, &d, "module", "other", Duration::from_secs(60));
    assert_eq!(healthz(&d).0, 200);
    // Removing the FIFO lets the directory apply.
    std::fs::remove_file(dir.join("x.yaml")).unwrap();
    wait_ready(&env, &d, "module", "app", Duration::from_secs(60));
    assert!(source(&sources(&env), &dir).is_some_and(|s| s["error"].is_null()));
    // And it still stops on SIGTERM.
    mkfifo(&dir.join("y.yaml"));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(d.sigterm_and_wait(Duration::from_secs(30)), 0);
}

// ---------------------------------------------------------------- defect 7

#[test]
fn non_atomic_write_does_not_prune_or_restart_regression() {
    let env = FreshEnv::new();
    let dir = mkdir(&env, "stack");
    let a = sleeper("sleeper", "1001");
    std::fs::write(dir.join("a.yaml"), &a).unwrap();
    std::fs::write(dir.join("b.yaml"), sleeper("other", "1002")).unwrap();
    let d = Daemon::start(&env, &[&dir], &[]);
    let pid = pid_of(&wait_ready(
        &env,
        &d,
        "module",
        "sleeper",
        Duration::from_secs(60),
    ));
    wait_ready(&env, &d, "module", "other", Duration::from_secs(60));
    let gens = generations(&env);

    // An editor's save: truncate, then the bytes 300 ms later.
    std::fs::write(dir.join("a.yaml"), "").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(dir.join("a.yaml"), &a).unwrap();
    // A checkout moving the object to another file: gone from one, then (later) in the other.
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(dir.join("a.yaml"), "").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    std::fs::write(
        dir.join("b.yaml"),
        format!("{}---\n{}", sleeper("other", "1002"), a),
    )
    .unwrap();
    // Longer than the prune settle time (3 s) and a few resyncs.
    std::thread::sleep(Duration::from_secs(6));

    let o = get_json(&env, "module", "sleeper").expect("sleeper still exists");
    assert!(o["metadata"]["deletionTimestamp"].is_null(), "{o}");
    assert_eq!(pid_of(&o), pid, "the workload was restarted:\n{}", d.log());
    assert!(alive(pid));
    assert_eq!(generations(&env), gens, "{}", env.run(&["history"]).stdout);
}

// ---------------------------------------------------------------- defect 8

#[test]
fn same_object_in_two_watched_directories_is_a_conflict_regression() {
    let env = FreshEnv::new();
    let (d1, d2) = (mkdir(&env, "one"), mkdir(&env, "two"));
    std::fs::write(d1.join("a.yaml"), sleeper("shared", "1001")).unwrap();
    std::fs::write(d2.join("a.yaml"), sleeper("shared", "1002")).unwrap();
    let d = Daemon::start(&env, &[&d1, &d2], &[]);
    wait_ready(&env, &d, "module", "shared", Duration::from_secs(60));
    wait_until("a conflict on one source", Duration::from_secs(20), || {
        let all = sources(&env);
        let errs: Vec<bool> = [&d1, &d2]
            .iter()
            .map(|p| source(&all, p).is_some_and(|s| s["error"].is_string()))
            .collect();
        errs.iter().filter(|e| **e).count() == 1
    });
    let all = sources(&env);
    let (winner, loser, value) = if source(&all, &d1).unwrap()["error"].is_null() {
        (&d1, &d2, "\"1001\"")
    } else {
        (&d2, &d1, "\"1002\"")
    };
    let err = source(&all, loser).unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    let wkey = std::fs::canonicalize(winner).unwrap().display().to_string();
    assert!(err.contains("conflict") && err.contains(&wkey), "{err}");

    // Over 10 s, with both directories written every second, nothing flips.
    let gens = generations(&env);
    for _ in 0..10 {
        std::fs::write(d1.join("a.yaml"), sleeper("shared", "1001")).unwrap();
        std::fs::write(d2.join("a.yaml"), sleeper("shared", "1002")).unwrap();
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(generations(&env), gens, "{}", env.run(&["history"]).stdout);
    assert_eq!(command_of(&env, "shared").as_deref(), Some(value));
}

// ---------------------------------------------------------------- defect 9

#[test]
fn recreated_watched_directory_is_watched_again_regression() {
    let env = FreshEnv::new();
    let dir = mkdir(&env, "stack");
    std::fs::write(dir.join("a.yaml"), sleeper("one", "1001")).unwrap();
    // No rescan within the test: only file watching can explain a pickup.
    let d = Daemon::start(&env, &[&dir], &["--source-rescan-seconds", "3600"]);
    wait_ready(&env, &d, "module", "one", Duration::from_secs(60));

    // rm -rf && git clone
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), sleeper("one", "1001")).unwrap();
    std::fs::write(dir.join("b.yaml"), sleeper("two", "1002")).unwrap();
    wait_ready(&env, &d, "module", "two", Duration::from_secs(20));
    // And the new directory's own files are watched.
    std::fs::write(dir.join("c.yaml"), sleeper("three", "1003")).unwrap();
    wait_ready(&env, &d, "module", "three", Duration::from_secs(20));
}

// ---------------------------------------------------------------- defect 10

#[test]
fn state_db_deleted_while_the_daemon_runs_is_detected_regression() {
    let env = FreshEnv::new();
    let m = env.write("m.yaml", &sleeper("app", "1001"));
    env.run(&["apply", "-f", m.to_str().unwrap()]).ok();
    let mut d = Daemon::start(&env, &[], &[]);
    wait_ready(&env, &d, "module", "app", Duration::from_secs(60));

    // Freeze the daemon so that it cannot notice yet, and delete its database.
    let pid = nix::unistd::Pid::from_raw(d.guard.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(env.home_path().join(f));
    }
    // The CLI refuses to write a second, new database beside the daemon's.
    let r = env.run(&["apply", "-f", m.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains("deleted") && r.stderr.contains("restart the daemon"),
        "{}",
        r.stderr
    );
    assert!(!env.home_path().join("state.db").exists());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();

    // The daemon notices, says why, and stops (a supervisor's restart opens the current file).
    let mut child = d.guard.0.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        assert!(Instant::now() < deadline, "daemon still runs:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(1), "{}", d.log());
    assert!(
        d.log().contains("was deleted while the daemon ran"),
        "{}",
        d.log()
    );
}

#[test]
fn corrupt_state_db_makes_healthz_fail_regression() {
    let env = FreshEnv::new();
    let d = Daemon::start(&env, &[], &[]);
    let (code, body) = healthz(&d);
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    for f in ["state.db", "state.db-wal"] {
        let p = env.home_path().join(f);
        if let Ok(len) = std::fs::metadata(&p).map(|m| m.len()) {
            std::fs::write(&p, vec![0x5au8; len as usize]).unwrap();
        }
    }
    let mut last = (0, String::new());
    wait_until("/healthz to answer 503", Duration::from_secs(30), || {
        last = healthz(&d);
        last.0 == 503
    });
    assert!(last.1.contains("state database"), "{last:?}");
}

// ---------------------------------------------------------------- defect 16

#[test]
fn restart_right_after_kill_9_waits_for_the_lock_regression() {
    let env = FreshEnv::new();
    let mut d = Daemon::start(&env, &[], &[]);
    let mut waited = 0;
    for round in 0..5 {
        // SIGKILL, not waited for: the next start races the old process's exit.
        let mut old = d.guard.0.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(old.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        let next = Daemon::start(&env, &[], &[]);
        assert!(
            !next.log().contains("another lasctl daemon"),
            "round {round}: {}",
            next.log()
        );
        waited += usize::from(next.log().contains("waiting up to"));
        let _ = old.wait();
        // Not dropped: a Daemon's drop sweeps every process of the home, the new daemon included.
        std::mem::forget(std::mem::replace(&mut d, next));
    }
    eprintln!("restart after kill -9: 5 of 5 started, {waited} waited for the lock");
    // A live daemon is told apart, after the bounded wait.
    let r = {
        let t = Instant::now();
        let r = env.run(&["daemon", "--listen", "127.0.0.1:0"]);
        assert!(t.elapsed() >= Duration::from_secs(9), "{r:?}");
        r
    };
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("waiting up to")
            && r.stderr.contains("another lasctl daemon runs")
            && r.stderr.contains("alive"),
        "{}",
        r.stderr
    );
    drop(d);
}

// ---------------------------------------------------------------- concurrent writers

fn writer_doc(value: &str, rv: Option<&str>) -> String {
    let rv = rv.map_or(String::new(), |r| format!("  resourceVersion: \"{r}\"\n"));
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata:\n  name: w\n{rv}spec:\n  suspend: true\n  native:\n    command: [/bin/sleep, '1000']\n    env: {{WRITER: {value}}}\n"
    )
}

/// One request with the home's bearer token (the daemon requires it on TCP).
fn curl(home: &std::path::Path, method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let token = std::fs::read_to_string(home.join("run/token")).unwrap();
    let mut c = std::process::Command::new("curl");
    c.arg("-H")
        .arg(format!("Authorization: Bearer {}", token.trim()));
    c.args([
        "-s",
        "-m",
        "60",
        "-X",
        method,
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/yaml", "--data-binary", b]);
    }
    let out = String::from_utf8_lossy(&c.arg(url).output().unwrap().stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.parse().unwrap_or(0), body.to_string())
}

#[test]
fn concurrent_writers_lose_no_update_and_losers_get_conflicts() {
    use localaistack::api::Kind;
    use localaistack::control::store::Store;
    let env = FreshEnv::new();
    let d = Daemon::start(&env, &[], &[]);
    let first = env.write("w.yaml", &writer_doc("init", None));
    env.run(&["apply", "-f", first.to_str().unwrap()]).ok();
    let db = env.home_path().join("state.db");
    let home = env.home_path().to_path_buf();
    let writer_of = |spec: &Value| {
        spec["native"]["env"]["WRITER"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let (mut conflicts, mut successes, mut put_won) = (0, 0, 0);
    let mut last_rv = 0u64;
    for round in 0..15 {
        let store = Store::open(&db).unwrap();
        // Let the controller's status write of the last round land first, so that the PUT races
        // the two applies only.
        let mut rv = store.get(Kind::Module, "w").unwrap().resource_version;
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = store.get(Kind::Module, "w").unwrap().resource_version;
            if now == rv {
                break;
            }
            rv = now;
        }
        let gen_before = store.history().unwrap().last().map_or(0, |g| g.number);
        drop(store);
        let a = env.write(
            &format!("a{round}.yaml"),
            &writer_doc(&format!("a{round}"), None),
        );
        let b = env.write(
            &format!("b{round}.yaml"),
            &writer_doc(&format!("b{round}"), None),
        );
        let spawn = |p: &Path| {
            let mut c = env.cmd();
            c.args(["apply", "-o", "json", "-f", p.to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            support::ChildGuard::spawn(c)
        };
        let put_body = writer_doc(&format!("c{round}"), Some(&rv.to_string()));
        let url = d.url("/api/v1/modules/w");
        // The PUT is the slower writer (curl, then a store opened per request): in even rounds it
        // starts first, so each writer wins some rounds.
        let put_first = round % 2 == 0;
        let mut put = None;
        if put_first {
            let (h, u, b) = (home.clone(), url.clone(), put_body.clone());
            put = Some(std::thread::spawn(move || curl(&h, "PUT", &u, Some(&b))));
        }
        let (mut ca, mut cb) = (spawn(&a), spawn(&b));
        let put = put.unwrap_or_else(|| {
            let h = home.clone();
            std::thread::spawn(move || curl(&h, "PUT", &url, Some(&put_body)))
        });
        let (ra, rb) = (
            ca.wait_output(Duration::from_secs(60)),
            cb.wait_output(Duration::from_secs(60)),
        );
        let (pc, pbody) = put.join().unwrap();

        let mut won: Vec<String> = Vec::new();
        for (r, v) in [(&ra, format!("a{round}")), (&rb, format!("b{round}"))] {
            match r.code {
                0 => won.push(v),
                1 => {
                    assert!(r.stderr.contains("conflict"), "round {round}: {r:?}");
                    conflicts += 1;
                }
                _ => panic!("round {round}: {r:?}"),
            }
        }
        match pc {
            200 | 201 => {
                won.push(format!("c{round}"));
                put_won += 1;
            }
            409 => {
                assert!(pbody.contains("Conflict"), "round {round}: {pbody}");
                conflicts += 1;
            }
            _ => panic!("round {round}: PUT answered {pc}: {pbody}"),
        }
        successes += won.len();

        // No lost update: every success recorded exactly one generation holding its value, and
        // the object now holds the value of the newest one.
        let store = Store::open(&db).unwrap();
        let new_gens: Vec<u64> = store
            .history()
            .unwrap()
            .iter()
            .map(|g| g.number)
            .filter(|n| *n > gen_before)
            .collect();
        let mut recorded: Vec<String> = new_gens
            .iter()
            .map(|n| {
                let st = store.generation_state(*n).unwrap();
                let w = st
                    .iter()
                    .find(|o| o.name == "w")
                    .expect("w in the snapshot");
                writer_of(&w.spec)
            })
            .collect();
        let newest = recorded.last().cloned();
        recorded.sort();
        won.sort();
        assert_eq!(recorded, won, "round {round}: generations {new_gens:?}");
        let now = store.get(Kind::Module, "w").unwrap();
        assert_eq!(Some(writer_of(&now.spec)), newest, "round {round}");
        assert!(now.resource_version > rv && now.resource_version > last_rv);
        last_rv = now.resource_version;
    }
    let store = Store::open(&db).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    // Generations are consistent with the snapshots: the newest is the desired state now.
    let newest = store.history().unwrap().last().unwrap().number;
    let snap = store.generation_state(newest).unwrap();
    let now = store.get(Kind::Module, "w").unwrap();
    assert_eq!(snap.iter().find(|o| o.name == "w").unwrap().spec, now.spec);
    eprintln!(
        "concurrent writers: 15 rounds, {successes} writes recorded ({put_won} by PUT), {conflicts} conflicts"
    );
}
