//! The real daemon end to end: a real SQLite file, real native processes, the real Docker engine and
//! the real llama.cpp engine. Every test sweeps what it started (see support/daemon.rs).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::FreshEnv;
use support::daemon::{Daemon, free_port, get_json, is_ready, wait_ready, wait_until};
use support::docker::{E2E_IMAGE, e2e_image as docker_image};

fn httpd_module(name: &str, port: u16, depends_on: &[&str]) -> String {
    let deps = if depends_on.is_empty() {
        String::new()
    } else {
        format!(
            "  dependsOn:\n{}",
            depends_on
                .iter()
                .map(|d| format!("  - {{kind: Module, name: {d}}}\n"))
                .collect::<String>()
        )
    };
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata:\n  name: {name}\nspec:\n  native:\n    command: [/bin/busybox, httpd, -f, -p, '127.0.0.1:{port}', -h, /etc]\n  health: {{http: {{path: /hostname, port: {port}}}}}\n{deps}"
    )
}

fn pid_of(o: &Value) -> u32 {
    o["status"]["pid"]
        .as_u64()
        .expect("a native module reports its pid") as u32
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
}

fn event_reasons(env: &FreshEnv, obj: &str) -> Vec<String> {
    env.run(&["events", obj])
        .stdout
        .lines()
        .skip(1)
        // LAST SEEN may be "5s (x2 over 3s)": the reason follows the TYPE column.
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "Normal" || *w == "Warning")?;
            words.next().map(String::from)
        })
        .collect()
}

#[test]
fn native_stack_converges_orders_heals_replaces_prunes_and_survives_a_typo() {
    let env = FreshEnv::new();
    let dir = env.work.path().join("stack");
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    env.write("stack/db.yaml", &httpd_module("db", p1, &[]));
    env.write("stack/api.yaml", &httpd_module("api", p2, &["db"]));
    // No resync in the test's lifetime: what is healed below is healed on the runtime's events.
    let d = Daemon::start(&env, &[&dir], &["--resync-seconds", "3600"]);

    // dependsOn: api starts only after db is Ready.
    let api = wait_ready(&env, &d, "module", "api", Duration::from_secs(60));
    let db = wait_ready(&env, &d, "module", "db", Duration::from_secs(10));
    let all = env.run(&["events", "--limit", "200"]).stdout;
    let line_of = |reason: &str, obj: &str| {
        all.lines()
            .position(|l| l.contains(reason) && l.contains(obj))
            .unwrap_or_else(|| panic!("no {reason} event of {obj} in\n{all}"))
    };
    assert!(
        line_of("Ready", "module/db") < line_of("Started", "module/api"),
        "db must be Ready before api starts:\n{all}"
    );
    assert_eq!(api["status"]["endpoint"], format!("http://127.0.0.1:{p2}"));
    let body = std::process::Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{p1}/")])
        .status();
    assert!(body.is_ok());

    // Drift: the process is killed behind the daemon's back; it is healed and reported. The
    // status follows within seconds: the supervisor's exit event triggers the reconcile (without
    // it, nothing would look before the 60 s recheck).
    let old = pid_of(&db);
    std::process::Command::new("kill")
        .args(["-KILL", &old.to_string()])
        .status()
        .unwrap();
    wait_until("db's restart in status", Duration::from_secs(25), || {
        get_json(&env, "module", "db").is_some_and(|o| is_ready(&o) && pid_of(&o) != old)
    });
    let db = get_json(&env, "module", "db").unwrap();
    assert!(db["status"]["restarts"].as_u64().unwrap() >= 1, "{db}");
    assert!(event_reasons(&env, "module/db").contains(&"Restarted".to_string()));

    // Spec change to another port: the new process starts next to the old one, which serves
    // until the new one is Ready; then the old one goes.
    let old_api = pid_of(&api);
    env.write("stack/api.yaml", &httpd_module("api", p3, &["db"]));
    wait_until("api to be replaced", Duration::from_secs(40), || {
        get_json(&env, "module", "api")
            .is_some_and(|o| o["metadata"]["generation"] == 2 && is_ready(&o))
    });
    let api = get_json(&env, "module", "api").unwrap();
    assert_eq!(api["status"]["endpoint"], format!("http://127.0.0.1:{p3}"));
    assert_eq!(api["status"]["slot"], 1, "{api}");
    wait_until("the old api process to go", Duration::from_secs(20), || {
        !alive(old_api)
    });
    // The event follows the old workload's removal.
    wait_until("the Replaced event", Duration::from_secs(10), || {
        event_reasons(&env, "module/api").contains(&"Replaced".to_string())
    });
    let reasons = event_reasons(&env, "module/api");
    let at = |r: &str| reasons.iter().position(|x| x == r);
    assert!(
        at("Replacing").is_some() && at("Replacing") < at("Replaced"),
        "{reasons:?}"
    );
    assert!(
        env.run(&["events", "module/api"])
            .stdout
            .contains("next to the old one"),
        "surge replacement"
    );
    // The module's logs are those of the workload that serves now.
    env.run(&["logs", "module/api"]).ok();

    // A change that keeps the port cannot run side by side: stop-then-start, said in the event.
    let old_api = pid_of(&api);
    env.write(
        "stack/api.yaml",
        &httpd_module("api", p3, &["db"]).replace("  health:", "    env: {V: '2'}\n  health:"),
    );
    wait_until(
        "api to be replaced in place",
        Duration::from_secs(40),
        || {
            get_json(&env, "module", "api")
                .is_some_and(|o| o["metadata"]["generation"] == 3 && is_ready(&o))
        },
    );
    assert!(
        !alive(old_api),
        "stop-then-start: the old process went first"
    );
    assert!(
        env.run(&["events", "module/api"])
            .stdout
            .contains("stop-then-start")
    );
    let api = get_json(&env, "module", "api").unwrap();

    // A typo never tears the stack down: a Warning, the source's error, everything keeps running.
    env.write("stack/typo.yaml", "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {name: x}\nspec: {nativ: {}}\n");
    wait_until("the typo to be reported", Duration::from_secs(20), || {
        env.run(&["events"]).stdout.contains("InvalidSource")
    });
    let sources = env.run(&["get", "sources", "-o", "json"]).ok();
    assert!(sources.stdout.contains("typo.yaml"), "{}", sources.stdout);
    assert!(is_ready(&get_json(&env, "module", "api").unwrap()));
    assert!(alive(pid_of(&get_json(&env, "module", "db").unwrap())));
    std::fs::remove_file(dir.join("typo.yaml")).unwrap();

    // Delete: the file goes, the prune removes the module, its process is gone, nothing is left.
    let api_pid = pid_of(&api);
    std::fs::remove_file(dir.join("api.yaml")).unwrap();
    wait_until("api to be gone", Duration::from_secs(30), || {
        get_json(&env, "module", "api").is_none()
    });
    assert!(!alive(api_pid));

    // Deleting a module and what depends on it tears down in reverse order: api, then db.
    env.write("stack/api.yaml", &httpd_module("api", free_port(), &["db"]));
    wait_ready(&env, &d, "module", "api", Duration::from_secs(60));
    env.write(
        "stack/keep.yaml",
        &support::model_doc("keep", "/nonexistent.gguf"),
    );
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_file(dir.join("api.yaml")).unwrap();
    std::fs::remove_file(dir.join("db.yaml")).unwrap();
    wait_until("db and api to be gone", Duration::from_secs(60), || {
        get_json(&env, "module", "db").is_none() && get_json(&env, "module", "api").is_none()
    });
    let all = env.run(&["events", "--limit", "500"]).stdout;
    let removed = |obj: &str| {
        all.lines()
            .collect::<Vec<_>>()
            .iter()
            .rposition(|l| l.contains("Removed") && l.contains(obj))
            .unwrap_or_else(|| panic!("no Removed event of {obj} in\n{all}"))
    };
    assert!(
        removed("module/api") < removed("module/db"),
        "api must go before db:\n{all}"
    );
    drop(d);
}

#[test]
fn sigterm_leaves_workloads_running_and_a_restart_adopts_them() {
    let env = FreshEnv::new();
    let dir = env.work.path().join("s");
    env.write("s/web.yaml", &httpd_module("keep", free_port(), &[]));
    let mut d = Daemon::start(&env, &[&dir], &[]);
    let o = wait_ready(&env, &d, "module", "keep", Duration::from_secs(60));
    let pid = pid_of(&o);
    assert_eq!(d.sigterm_and_wait(Duration::from_secs(30)), 0);
    assert!(alive(pid), "SIGTERM leaves workloads running");
    let d2 = Daemon::start(&env, &[&dir], &[]);
    std::thread::sleep(Duration::from_secs(3));
    let o = wait_ready(&env, &d2, "module", "keep", Duration::from_secs(30));
    assert_eq!(
        pid_of(&o),
        pid,
        "the restarted daemon adopts the running process"
    );
    assert_eq!(
        support::daemon::workload_pids_except(env.home_path(), Some(d2.guard.id())),
        vec![pid]
    );
}

#[test]
fn a_non_loopback_bind_creates_the_token_and_requires_it() {
    let env = FreshEnv::new();
    let port = free_port();
    let mut c = env.cmd();
    c.args(["daemon", "--listen", &format!("0.0.0.0:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _daemon = support::ChildGuard::spawn(c);
    let url = format!("http://127.0.0.1:{port}/api/v1/modules");
    wait_until("the daemon to listen", Duration::from_secs(60), || {
        curl_json(&format!("http://127.0.0.1:{port}/healthz"), None).0 == 200
    });
    let token = std::fs::read_to_string(env.home_path().join("run/token")).unwrap();
    assert!(token.trim().len() >= 64);
    assert_eq!(curl_json(&url, None).0, 401);
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {}", token.trim()))
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
}

#[test]
fn kill_9_at_random_moments_never_duplicates_or_orphans() {
    let env = FreshEnv::new();
    let dir = env.work.path().join("ten");
    for i in 0..10 {
        env.write(
            &format!("ten/m{i}.yaml"),
            &httpd_module(&format!("m{i}"), free_port(), &[]),
        );
    }
    // Deterministic "random" moments (an LCG): the same schedule on every run.
    let mut x: u64 = 0x5eed;
    let mut kill_at_random_moments = |rounds: usize| {
        for _ in 0..rounds {
            let mut d = Daemon::start(&env, &[&dir], &[]);
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let ms = 100 + (x >> 33) % 1500;
            std::thread::sleep(Duration::from_millis(ms));
            d.kill9();
        }
    };
    kill_at_random_moments(8);
    let converge = || {
        let d = Daemon::start(&env, &[&dir], &[]);
        for i in 0..10 {
            wait_ready(
                &env,
                &d,
                "module",
                &format!("m{i}"),
                Duration::from_secs(90),
            );
        }
        d
    };
    let d = converge();
    drop(d);
    // Then every module moves to another port (replaced side by side, in the other slot) while
    // the daemon is killed again at random moments: still one process per module in the end.
    for i in 0..10 {
        env.write(
            &format!("ten/m{i}.yaml"),
            &httpd_module(&format!("m{i}"), free_port(), &[]),
        );
    }
    kill_at_random_moments(6);
    let d = converge();
    for i in 0..10 {
        wait_until("the replacement to finish", Duration::from_secs(60), || {
            get_json(&env, "module", &format!("m{i}"))
                .is_some_and(|o| o["metadata"]["generation"] == 2 && is_ready(&o))
        });
    }
    // Exactly one process per module, each the one the status names; nothing else of this home
    // runs (the old slot's process goes after a short drain).
    let daemon_pid = d.guard.id();
    wait_until("old slots to be drained", Duration::from_secs(30), || {
        support::daemon::workload_pids_except(env.home_path(), Some(daemon_pid)).len() == 10
    });
    let pids = support::daemon::workload_pids_except(env.home_path(), Some(daemon_pid));
    let mut owners = Vec::new();
    for i in 0..10 {
        let pid = pid_of(&get_json(&env, "module", &format!("m{i}")).unwrap());
        assert!(pids.contains(&pid), "m{i}'s pid {pid} is not running");
        owners.push(pid);
    }
    let others: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| !owners.contains(p))
        .collect();
    assert!(
        others.is_empty(),
        "orphaned or duplicated processes: {others:?}"
    );
    let conn = rusqlite::Connection::open(env.home_path().join("state.db")).unwrap();
    let ic: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ic, "ok");
}

fn curl_json(url: &str, body: Option<&str>) -> (u16, Value) {
    let mut c = std::process::Command::new("curl");
    c.args(["-s", "-m", "60", "-o", "-", "-w", "\n%{http_code}", url]);
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "-d", b]);
    }
    let out = String::from_utf8(c.output().unwrap().stdout).unwrap();
    let (body, code) = out.rsplit_once('\n').unwrap();
    (
        code.parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::String(body.into())),
    )
}

/// Generates the tiny test model in the scratch directory with the real `lasctl`.
fn generate_tiny_model(env: &FreshEnv) -> std::path::PathBuf {
    let gguf = env.work.path().join("tiny.gguf");
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

fn engine_module(parallel: u32) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {{name: chat}}\nspec:\n  model: tiny\n  engine: {{type: llama, contextSize: 256, parallel: {parallel}}}\n"
    )
}

#[test]
fn engine_module_serves_the_model_through_the_openai_endpoint_and_is_replaced_and_removed() {
    let env = FreshEnv::new();
    let gguf = generate_tiny_model(&env);
    env.write(
        "ai/model.yaml",
        &support::model_doc("tiny", gguf.to_str().unwrap()),
    );
    env.write("ai/chat.yaml", &engine_module(1));
    let dir = env.work.path().join("ai");
    let d = Daemon::start(&env, &[&dir], &[]);
    let model = wait_ready(&env, &d, "model", "tiny", Duration::from_secs(60));
    assert_eq!(model["status"]["gguf"]["architecture"], "llama", "{model}");
    assert!(model["status"]["digest"].as_str().unwrap().len() == 64);
    let chat = wait_ready(&env, &d, "module", "chat", Duration::from_secs(120));
    let first_pid = pid_of(&chat);

    let (code, models) = curl_json(&d.url("/v1/models"), None);
    assert_eq!(code, 200, "{models}");
    assert!(models.to_string().contains("\"tiny\""), "{models}");
    // Every listed id works with the real engine, the module's name included (issue 12, defect 2).
    for m in models["data"].as_array().unwrap() {
        let req = format!(
            r#"{{"model":"{}","messages":[{{"role":"user","content":"Hi"}}],"max_tokens":2}}"#,
            m["id"].as_str().unwrap()
        );
        let (code, out) = curl_json(&d.url("/v1/chat/completions"), Some(&req));
        assert_eq!(code, 200, "listed id {}: {out}", m["id"]);
    }
    let req = r#"{"model":"tiny","messages":[{"role":"user","content":"Hello"}],"max_tokens":8,"temperature":0}"#;
    let (code, a) = curl_json(&d.url("/v1/chat/completions"), Some(req));
    assert_eq!(code, 200, "{a}\n{}", d.log());
    assert_eq!(a["object"], "chat.completion");
    assert!(
        a["usage"]["completion_tokens"].as_u64().unwrap() >= 1,
        "{a}"
    );
    let (_, b) = curl_json(&d.url("/v1/chat/completions"), Some(req));
    assert_eq!(
        a["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"],
        "greedy output repeats"
    );
    let (code, e) = curl_json(
        &d.url("/v1/chat/completions"),
        Some(&req.replace("\"tiny\"", "\"nope\"")),
    );
    assert_eq!(code, 404, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("tiny"),
        "the error lists served models: {e}"
    );

    // A spec change replaces the engine without downtime: on a chosen port (0) the new engine
    // starts next to the old one, routes switch once it is Ready, then the old one goes. Clients
    // asking all the while are always answered.
    let first_endpoint = chat["status"]["endpoint"].clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asker = {
        let (stop, url) = (stop.clone(), d.url("/v1/chat/completions"));
        std::thread::spawn(move || {
            let mut codes = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (code, body) = curl_json(&url, Some(req));
                codes.push((code, body["choices"][0]["message"]["content"].clone()));
            }
            codes
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    env.write("ai/chat.yaml", &engine_module(2));
    wait_until("chat to be replaced", Duration::from_secs(120), || {
        get_json(&env, "module", "chat")
            .is_some_and(|o| o["metadata"]["generation"] == 2 && is_ready(&o))
    });
    wait_until("the old engine to go", Duration::from_secs(30), || {
        !alive(first_pid)
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let answers = asker.join().unwrap();
    assert!(answers.len() >= 3, "{answers:?}");
    for (code, content) in &answers {
        assert_eq!(
            *code, 200,
            "a request failed during the replacement: {answers:?}"
        );
        assert_eq!(
            *content, a["choices"][0]["message"]["content"],
            "{answers:?}"
        );
    }
    let chat = get_json(&env, "module", "chat").unwrap();
    assert_ne!(chat["status"]["endpoint"], first_endpoint, "{chat}");
    assert_eq!(chat["status"]["slot"], 1, "{chat}");
    wait_until("the Replaced event", Duration::from_secs(10), || {
        event_reasons(&env, "module/chat").contains(&"Replaced".to_string())
    });
    let (code, _) = curl_json(&d.url("/v1/chat/completions"), Some(req));
    assert_eq!(code, 200);

    // Removing the file prunes the module: its process goes, nothing of it is left.
    let pid = pid_of(&get_json(&env, "module", "chat").unwrap());
    std::fs::remove_file(dir.join("chat.yaml")).unwrap();
    wait_until("chat to be gone", Duration::from_secs(60), || {
        get_json(&env, "module", "chat").is_none()
    });
    assert!(!alive(pid));
    assert!(support::daemon::workload_pids_except(env.home_path(), Some(d.guard.id())).is_empty());
}

#[test]
fn container_module_converges_heals_drift_and_is_removed() {
    if !docker_image() {
        return;
    }
    let env = FreshEnv::new();
    let port = free_port();
    env.write(
        "c/web.yaml",
        &format!(
            "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {{name: e2eweb}}\nspec:\n  container:\n    image: {E2E_IMAGE}\n    command: [/bin/busybox, httpd, -f, -p, '8080', -h, /www]\n    ports: [{{containerPort: 8080, hostPort: {port}}}]\n  health: {{http: {{path: /, port: 8080}}}}\n"
        ),
    );
    let dir = env.work.path().join("c");
    // No resync in the test's lifetime: the drift below is seen through the engine's events.
    let d = Daemon::start(&env, &[&dir], &["--resync-seconds", "3600"]);
    let o = wait_ready(&env, &d, "module", "e2eweb", Duration::from_secs(90));
    assert_eq!(o["status"]["runtime"], "container");
    let id = o["status"]["containerId"].as_str().unwrap().to_string();
    let body = std::process::Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&body.stdout), "container-ok\n");

    // Drift: the container is removed behind the daemon's back; it is recreated and reported.
    let rm = std::process::Command::new("docker")
        .args(["rm", "-f", &id])
        .output()
        .unwrap();
    assert!(rm.status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(25);
    while !get_json(&env, "module", "e2eweb")
        .is_some_and(|o| is_ready(&o) && o["status"]["containerId"] != id.as_str())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the container was not recreated within 25 s; status {}\nevents:\n{}\ndaemon log:\n{}",
            get_json(&env, "module", "e2eweb").unwrap_or_default()["status"],
            env.run(&["events"]).stdout,
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        env.run(&["events", "module/e2eweb"])
            .stdout
            .contains("DriftDetected")
    );

    // Delete: the finalizer holds the object until the container is gone.
    let id = get_json(&env, "module", "e2eweb").unwrap()["status"]["containerId"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_file(dir.join("web.yaml")).unwrap();
    env.write("c/other.yaml", &support::model_doc("keep", "/x.gguf"));
    wait_until("e2eweb to be gone", Duration::from_secs(60), || {
        get_json(&env, "module", "e2eweb").is_none()
    });
    let inspect = std::process::Command::new("docker")
        .args(["inspect", &id])
        .output()
        .unwrap();
    assert!(!inspect.status.success(), "the container must be removed");
}

#[test]
fn a_from_module_is_resolved_from_the_catalog_and_served() {
    let env = FreshEnv::new();
    let gguf = generate_tiny_model(&env);
    env.write(
        "cat/model.yaml",
        &support::model_doc("tiny", gguf.to_str().unwrap()),
    );
    env.write(
        "cat/chat.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {name: fromcat}\nspec:\n  from: llama-engine\n  version: \"^0.1\"\n  model: tiny\n",
    );
    env.write(
        "cat/bad.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {name: nosuch}\nspec:\n  from: not-in-catalog\n",
    );
    let dir = env.work.path().join("cat");
    let d = Daemon::start(&env, &[&dir], &[]);
    let m = wait_ready(&env, &d, "module", "fromcat", Duration::from_secs(120));
    assert_eq!(m["status"]["resolved"]["module"], "llama-engine", "{m}");
    assert_eq!(m["status"]["resolved"]["version"], "0.1.0", "{m}");
    let req = r#"{"model":"tiny","messages":[{"role":"user","content":"Hi"}],"max_tokens":4,"temperature":0}"#;
    let (code, a) = curl_json(&d.url("/v1/chat/completions"), Some(req));
    assert_eq!(code, 200, "{a}");
    // A module the catalog does not have is Stalled with the reason; nothing of it runs.
    wait_until("nosuch to be stalled", Duration::from_secs(30), || {
        get_json(&env, "module", "nosuch").is_some_and(|o| {
            o["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    c["type"] == "Stalled"
                        && c["status"] == "True"
                        && c["message"]
                            .as_str()
                            .unwrap_or_default()
                            .contains("not in the catalog")
                })
            })
        })
    });
}

#[test]
fn a_from_module_with_a_native_program_is_installed_verified_and_run() {
    use sha2::Digest;
    let env = FreshEnv::new();
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static (make deps)");
    let sha = hex::encode(sha2::Sha256::digest(&busybox));
    let port = free_port();
    let manifest = |name: &str, sha: &str| {
        format!(
            "apiVersion: localaistack.io/v1alpha1\nkind: ModuleManifest\nmetadata: {{name: {name}}}\nspec:\n  description: A tool.\n  versions:\n  - version: 1.0.0\n    native:\n      url: file:///bin/busybox\n      sha256: {sha}\n      command: [busybox, httpd, -f, -p, '127.0.0.1:{port}', -h, /etc]\n    interfaces: [{{name: http, port: {port}, protocol: http}}]\n    health: {{http: {{path: /hostname, port: {port}}}}}\n"
        )
    };
    env.write("catalog/tool.yaml", &manifest("tool", &sha));
    env.write("catalog/bad.yaml", &manifest("badtool", &"0".repeat(64)));
    env.write(
        "s/tool.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {name: tool}\nspec: {from: tool, version: '^1'}\n",
    );
    env.write(
        "s/bad.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {name: bad}\nspec: {from: badtool}\n",
    );
    let catalog = env.work.path().join("catalog");
    let dir = env.work.path().join("s");
    let d = Daemon::start_with(&env, &[&dir], &[], &[("LAS_CATALOG", &catalog)]);
    let m = wait_ready(&env, &d, "module", "tool", Duration::from_secs(60));
    assert_eq!(m["status"]["resolved"]["module"], "tool", "{m}");
    assert_eq!(m["status"]["runtime"], "native", "{m}");
    // The program runs from its verified, installed copy in $LAS_HOME/bin/<sha256>/.
    let exe = std::fs::read_link(format!("/proc/{}/exe", pid_of(&m))).unwrap();
    assert_eq!(exe, env.home_path().join("bin").join(&sha).join("busybox"));
    let body = std::process::Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/hostname")])
        .output()
        .unwrap();
    assert!(body.status.success());
    // A program whose bytes do not match the manifest's sha256 never runs: Stalled, with why.
    wait_until("bad to be stalled", Duration::from_secs(30), || {
        get_json(&env, "module", "bad").is_some_and(|o| {
            o["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    c["type"] == "Stalled"
                        && c["status"] == "True"
                        && c["reason"] == "ProgramUnavailable"
                })
            })
        })
    });
    assert!(!env.home_path().join("bin").join("0".repeat(64)).exists());
}

fn docker(args: &[&str]) -> std::process::Output {
    std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_container_from_module_is_pulled_by_digest_and_served() {
    if !docker_image() {
        return;
    }
    // A digest-pinned image needs a registry: push the test image to one on 127.0.0.1, then drop
    // the local reference so that the daemon has to pull it by digest.
    let registry = support::registry::Registry::start();
    let repo = format!("{}/e2e/web", registry.host());
    let tagged = format!("{repo}:1");
    assert!(docker(&["tag", E2E_IMAGE, &tagged]).status.success());
    let push = docker(&["push", &tagged]);
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    let digests = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &tagged,
    ]);
    let digests: Vec<String> = serde_json::from_slice(&digests.stdout).unwrap();
    let pinned = digests
        .into_iter()
        .find(|d| d.starts_with(&format!("{repo}@sha256:")))
        .expect("the push gave the image a repository digest");
    assert!(docker(&["rmi", &tagged]).status.success());
    assert!(!docker(&["image", "inspect", &pinned]).status.success());

    let env = FreshEnv::new();
    let port = free_port();
    env.write(
        "catalog/web.yaml",
        &format!(
            "apiVersion: localaistack.io/v1alpha1\nkind: ModuleManifest\nmetadata: {{name: web}}\nspec:\n  description: A web server.\n  versions:\n  - version: 2.1.0\n    container:\n      image: {pinned}\n      command: [/bin/busybox, httpd, -f, -p, '{port}', -h, /www]\n    interfaces: [{{name: http, port: {port}, protocol: http}}]\n    health: {{http: {{path: /, port: {port}}}}}\n"
        ),
    );
    env.write(
        "s/web.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {name: fromweb}\nspec: {from: web, version: '^2'}\n",
    );
    let catalog = env.work.path().join("catalog");
    let dir = env.work.path().join("s");
    let d = Daemon::start_with(&env, &[&dir], &[], &[("LAS_CATALOG", &catalog)]);
    let m = wait_ready(&env, &d, "module", "fromweb", Duration::from_secs(90));
    assert_eq!(m["status"]["resolved"]["version"], "2.1.0", "{m}");
    assert_eq!(m["status"]["runtime"], "container", "{m}");
    let id = m["status"]["containerId"].as_str().unwrap().to_string();
    let image = docker(&["inspect", "--format", "{{.Config.Image}}", &id]);
    assert_eq!(String::from_utf8_lossy(&image.stdout).trim(), pinned);
    let body = std::process::Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&body.stdout), "container-ok\n");

    // Removed from the directory: the container goes with it.
    std::fs::remove_file(dir.join("web.yaml")).unwrap();
    env.write("s/keep.yaml", &support::model_doc("keep", "/x.gguf"));
    wait_until("fromweb to be gone", Duration::from_secs(60), || {
        get_json(&env, "module", "fromweb").is_none()
    });
    assert!(!docker(&["inspect", &id]).status.success());
    drop(d);
    let _ = docker(&["rmi", &pinned]);
}
