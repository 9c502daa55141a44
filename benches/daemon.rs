//! Daemon figures (prints numbers; not a test). Targets on the 2-core reference machine: file save →
//! first reconcile action p50 < 100 ms; idle CPU with 100 converged objects < 1% of a core.
//! Also: the daemon's memory, converging 50 native Modules, a killed workload reaching status
//! (runtime events), and replacing a serving engine side by side (failed requests meanwhile).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn start(home: &Path, dir: &Path, port: u16) -> Daemon {
    let c = Command::new(env!("CARGO_BIN_EXE_lasctl"))
        .env("LAS_HOME", home)
        .env("LAS_LOG", "warn")
        .args([
            "daemon",
            "--stop-workloads-on-exit",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--watch",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start daemon");
    Daemon(c)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn db(home: &Path) -> rusqlite::Connection {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(c) = rusqlite::Connection::open_with_flags(
            home.join("state.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        ) {
            c.busy_timeout(Duration::from_secs(5)).unwrap();
            if c.query_row("SELECT count(*) FROM objects", [], |r| r.get::<_, i64>(0))
                .is_ok()
            {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "no state.db");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ready_count(c: &rusqlite::Connection, kind: &str) -> i64 {
    c.query_row(
        "SELECT count(*) FROM objects o WHERE kind = ?1 AND EXISTS (SELECT 1 FROM json_each(json_extract(o.status, '$.conditions')) c
           WHERE json_extract(c.value, '$.type') = 'Ready' AND json_extract(c.value, '$.status') = 'True')",
        [kind],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

/// Polls `sql` (a boolean about the object named `?1`) every millisecond until it holds; the time
/// since `t`.
fn wait_for(c: &rusqlite::Connection, sql: &str, name: &str, t: Instant) -> Duration {
    loop {
        if c.query_row(sql, [name], |r| r.get::<_, bool>(0))
            .unwrap_or(false)
        {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{name}: never {sql}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn model(name: &str, src: &Path) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata: {{name: {name}}}\nspec: {{source: {}}}\n",
        src.display()
    )
}

fn main() {
    let work = tempfile::tempdir().unwrap();
    let gguf = work.path().join("tiny.gguf");
    let st = Command::new(env!("CARGO_BIN_EXE_lasctl"))
        .args(["model", "generate-test"])
        .arg(&gguf)
        .status()
        .unwrap();
    assert!(st.success());

    // 1. File save → first reconcile action (the Model controller's first status write).
    let home = tempfile::tempdir().unwrap();
    let dir = work.path().join("latency");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("m0.yaml"), model("m0", &gguf)).unwrap();
    let d = start(home.path(), &dir, free_port());
    let c = db(home.path());
    while ready_count(&c, "Model") < 1 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut lat = Vec::new();
    for i in 1..=20 {
        let name = format!("m{i}");
        let t = Instant::now();
        std::fs::write(dir.join(format!("{name}.yaml")), model(&name, &gguf)).unwrap();
        lat.push(wait_for(
            &c,
            "SELECT status != '{}' FROM objects WHERE kind='Model' AND name=?1",
            &name,
            t,
        ));
        std::thread::sleep(Duration::from_millis(300));
    }
    lat.sort();
    println!(
        "daemon: file save -> first reconcile action   p50 {:>6.1} ms  p90 {:>6.1} ms  (target p50 < 100 ms)",
        lat[lat.len() / 2].as_secs_f64() * 1e3,
        lat[lat.len() * 9 / 10].as_secs_f64() * 1e3
    );
    drop(d);

    // 2. Idle CPU and memory with 100 converged objects.
    let home = tempfile::tempdir().unwrap();
    let dir = work.path().join("idle");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..100 {
        std::fs::write(
            dir.join(format!("m{i}.yaml")),
            model(&format!("m{i}"), &gguf),
        )
        .unwrap();
    }
    let d = start(home.path(), &dir, free_port());
    let c = db(home.path());
    let t = Instant::now();
    while ready_count(&c, "Model") < 100 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "100 models not converged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    let pid = d.0.id();
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    std::thread::sleep(Duration::from_secs(20));
    let ticks = cpu_ticks(pid) - c0;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "daemon: idle with 100 converged objects       CPU {:>5.2}% of a core over {secs:.0} s ({ticks} ticks; target < 1%), RSS {} MiB",
        ticks as f64 / 100.0 / secs * 100.0,
        rss_kib(pid) / 1024
    );
    drop(d);

    // 3. Converging 50 native Modules from a cold start.
    let home = tempfile::tempdir().unwrap();
    let dir = work.path().join("fifty");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..50 {
        std::fs::write(
            dir.join(format!("n{i}.yaml")),
            format!(
                "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {{name: n{i}}}\nspec:\n  native: {{command: [/bin/sleep, '36{i:02}']}}\n"
            ),
        )
        .unwrap();
    }
    let t = Instant::now();
    let d = start(home.path(), &dir, free_port());
    let c = db(home.path());
    while ready_count(&c, "Module") < 50 {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "50 modules not converged"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "daemon: converge 50 native Modules (cold start) {:>6.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    // 4. A workload killed behind the daemon's back → its status says so (runtime event →
    //    reconcile → status write; no resync or recheck involved).
    let mut lat = Vec::new();
    for i in 0..10 {
        let name = format!("n{i}");
        let pid: i64 = c
            .query_row(
                "SELECT json_extract(status, '$.pid') FROM objects WHERE kind='Module' AND name=?1",
                [&name],
                |r| r.get(0),
            )
            .unwrap();
        let t = Instant::now();
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        lat.push(wait_for(
            &c,
            "SELECT EXISTS (SELECT 1 FROM objects o, json_each(json_extract(o.status, '$.conditions')) c
               WHERE o.kind='Module' AND o.name=?1 AND json_extract(c.value, '$.type') = 'Ready'
               AND json_extract(c.value, '$.status') = 'False')",
            &name,
            t,
        ));
    }
    lat.sort();
    println!(
        "daemon: workload kill -9 -> status Ready=False  p50 {:>6.1} ms  p90 {:>6.1} ms",
        lat[lat.len() / 2].as_secs_f64() * 1e3,
        lat[lat.len() * 9 / 10].as_secs_f64() * 1e3
    );
    drop(d);

    // 5. Replacing a serving engine (port 0: side by side): spec change → routes switched, and
    //    how many of the requests sent meanwhile through /v1 failed.
    let home = tempfile::tempdir().unwrap();
    let dir = work.path().join("engine");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.yaml"), model("tiny", &gguf)).unwrap();
    let engine = |parallel: u32| {
        format!(
            "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {{name: chat}}\nspec:\n  model: tiny\n  engine: {{type: llama, contextSize: 256, parallel: {parallel}}}\n"
        )
    };
    std::fs::write(dir.join("chat.yaml"), engine(1)).unwrap();
    let port = free_port();
    let d = start(home.path(), &dir, port);
    let c = db(home.path());
    while ready_count(&c, "Module") < 1 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let out = Command::new("curl")
                    .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "30"])
                    .args(["-H", "Content-Type: application/json", "-d"])
                    .arg(r#"{"model":"tiny","messages":[{"role":"user","content":"Hi"}],"max_tokens":4}"#)
                    .arg(format!("http://127.0.0.1:{port}/v1/chat/completions"))
                    .output()
                    .unwrap();
                if out.stdout == b"200" {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    std::fs::write(dir.join("chat.yaml"), engine(2)).unwrap();
    let switch = wait_for(
        &c,
        "SELECT json_extract(status, '$.slot') = 1 FROM objects WHERE kind='Module' AND name=?1",
        "chat",
        t,
    );
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = asker.join().unwrap();
    println!(
        "daemon: engine replaced side by side            switch {:>6.0} ms after the save; requests meanwhile: {ok} ok, {failed} failed",
        switch.as_secs_f64() * 1e3
    );
    drop(d);
}
