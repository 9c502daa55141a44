//! Issue 12, the verbs kubectl and Ollama users reach for first, through the real binary: one
//! obvious home (`run/daemon.json`, the no-daemon warning), `status`, `ps`, `run`, `catalog`,
//! dynamic completion and man pages.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::daemon::{Daemon, sweep, wait_ready, wait_until};
use support::{ChildGuard, FreshEnv, Run, lasctl_bin, model_doc};

fn native_module(name: &str) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata:\n  name: {name}\nspec:\n  native:\n    command: [/bin/sleep, '3600']\n"
    )
}

fn record(env: &FreshEnv) -> Option<Value> {
    let text = std::fs::read_to_string(env.home_path().join("run/daemon.json")).ok()?;
    Some(serde_json::from_str(&text).expect("daemon.json is JSON"))
}

fn status_json(env: &FreshEnv) -> (i32, Value) {
    let r = env.run(&["status", "-o", "json"]);
    let v = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("status -o json: {e}\n{}\n{}", r.stdout, r.stderr));
    (r.code, v)
}

#[test]
fn apply_into_a_home_no_daemon_serves_warns_and_names_the_home() {
    let env = FreshEnv::new();
    let f = env.write("m.yaml", &model_doc("tiny", "/srv/tiny.gguf"));
    let r = env.run(&["apply", "-f", f.to_str().unwrap()]).ok();
    assert!(r.stdout.contains("generation 1 recorded"), "{}", r.stdout);
    let home = env.home_path().display().to_string();
    assert!(
        r.stderr.contains("no daemon serves it") && r.stderr.contains(&home),
        "the apply must say that nothing will act on it, and where it recorded: {}",
        r.stderr
    );
    assert!(r.stderr.contains("LAS_HOME"), "{}", r.stderr);

    // With a daemon on that home, the same kind of write is quiet.
    let _d = Daemon::start(&env, &[], &[]);
    wait_until("the daemon's record", Duration::from_secs(30), || {
        record(&env).is_some()
    });
    let f = env.write("m.yaml", &model_doc("tiny", "/srv/other.gguf"));
    let r = env.run(&["apply", "-f", f.to_str().unwrap()]).ok();
    assert!(r.stdout.contains("generation 2 recorded"), "{}", r.stdout);
    assert!(!r.stderr.contains("no daemon"), "{}", r.stderr);
}

#[test]
fn empty_get_in_a_home_no_daemon_serves_says_which_home_it_read() {
    let env = FreshEnv::new();
    let r = env.run(&["get", "all"]).ok();
    assert!(r.stderr.contains("No resources found"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&env.home_path().display().to_string())
            && r.stderr.contains("no daemon serves it"),
        "{}",
        r.stderr
    );
}

#[test]
fn daemon_records_where_it_is_and_removes_the_record_when_it_exits() {
    let env = FreshEnv::new();
    let mut d = Daemon::start(&env, &[], &[]);
    wait_until("the daemon's record", Duration::from_secs(30), || {
        record(&env).is_some()
    });
    let rec = record(&env).unwrap();
    assert_eq!(rec["pid"].as_u64(), Some(d.guard.id() as u64), "{rec}");
    assert_eq!(rec["listen"].as_str(), Some(d.listen.as_str()), "{rec}");
    assert_eq!(rec["version"], env!("CARGO_PKG_VERSION"), "{rec}");
    assert!(
        chrono::DateTime::parse_from_rfc3339(rec["started"].as_str().unwrap()).is_ok(),
        "{rec}"
    );

    let (code, s) = status_json(&env);
    assert_eq!(s["daemon"]["running"], true, "{s}");
    assert_eq!(
        s["daemon"]["pid"].as_u64(),
        Some(d.guard.id() as u64),
        "{s}"
    );
    assert_eq!(s["home"], env.home_path().display().to_string(), "{s}");
    assert_eq!(s["homeFrom"], "LAS_HOME", "{s}");
    assert_eq!(code, 0, "a served, empty home needs no attention: {s}");

    assert_eq!(d.sigterm_and_wait(Duration::from_secs(30)), 0);
    assert!(
        record(&env).is_none(),
        "a clean exit removes run/daemon.json"
    );
    let (code, s) = status_json(&env);
    assert_eq!(code, 1, "{s}");
    assert_eq!(s["daemon"]["running"], false, "{s}");
}

#[test]
fn record_left_by_a_killed_daemon_is_reported_stale_not_running() {
    let env = FreshEnv::new();
    let mut d = Daemon::start(&env, &[], &[]);
    wait_until("the daemon's record", Duration::from_secs(30), || {
        record(&env).is_some()
    });
    d.kill9();
    assert!(record(&env).is_some(), "SIGKILL leaves the record behind");
    let r = env.run(&["status"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("not running"), "{}", r.stdout);
    assert!(r.stdout.contains("stale"), "{}", r.stdout);
    let f = env.write("m.yaml", &model_doc("tiny", "/srv/tiny.gguf"));
    let r = env.run(&["apply", "-f", f.to_str().unwrap()]).ok();
    assert!(r.stderr.contains("no daemon serves it"), "{}", r.stderr);
}

#[test]
fn apply_into_another_home_names_the_default_home_a_daemon_serves() {
    let env = FreshEnv::new();
    let data = tempfile::tempdir().unwrap();
    let default_home = data.path().join("localaistack");
    // A daemon on the default home ($XDG_DATA_HOME/localaistack; no LAS_HOME).
    let mut c = env.cmd();
    c.env_remove("LAS_HOME")
        .env("XDG_DATA_HOME", data.path())
        .args(["daemon", "--listen"])
        .arg(format!("127.0.0.1:{}", support::daemon::free_port()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _guard = ChildGuard::spawn(c);
    struct Sweep(std::path::PathBuf);
    impl Drop for Sweep {
        fn drop(&mut self) {
            sweep(&self.0);
        }
    }
    let _sweep = Sweep(default_home.clone());
    wait_until(
        "the default home's daemon record",
        Duration::from_secs(60),
        || default_home.join("run/daemon.json").exists(),
    );

    let f = env.write("m.yaml", &model_doc("tiny", "/srv/tiny.gguf"));
    let out: Run = env
        .cmd()
        .env("XDG_DATA_HOME", data.path())
        .args(["apply", "-f", f.to_str().unwrap()])
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("no daemon serves it")
            && out.stderr.contains(&default_home.display().to_string())
            && out.stderr.contains("unset LAS_HOME"),
        "the warning must point at the home a daemon serves: {}",
        out.stderr
    );

    // Without LAS_HOME the CLI reads the default home, which the daemon serves: no warning.
    let out: Run = env
        .cmd()
        .env_remove("LAS_HOME")
        .env("XDG_DATA_HOME", data.path())
        .args(["apply", "-f", f.to_str().unwrap()])
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("no daemon"), "{}", out.stderr);
    let s: Run = env
        .cmd()
        .env_remove("LAS_HOME")
        .env("XDG_DATA_HOME", data.path())
        .args(["status"])
        .output()
        .unwrap()
        .into();
    assert!(
        s.stdout.contains(&default_home.display().to_string())
            && s.stdout.contains("default: $XDG_DATA_HOME/localaistack"),
        "{}",
        s.stdout
    );
}

#[test]
fn status_without_a_daemon_names_the_home_tier_and_disk_and_exits_1() {
    let env = FreshEnv::new();
    let r = env.run(&["status"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    for want in [
        "Home:",
        "Daemon:",
        "Docker:",
        "GPU:",
        "Disk:",
        "Tier:",
        "Attention:",
    ] {
        assert!(r.stdout.contains(want), "{want} missing:\n{}", r.stdout);
    }
    assert!(
        r.stdout.contains("no daemon serves this home"),
        "{}",
        r.stdout
    );
    assert!(
        !env.home_path().join("state.db").exists(),
        "status records nothing"
    );
    // `doctor` is the same verb.
    let d = env.run(&["doctor", "-o", "json"]);
    assert_eq!(d.code, 1);
    let v: Value = serde_json::from_str(&d.stdout).unwrap();
    assert!(v["tier"].as_str().is_some(), "{v}");
    assert!(v["diskFreeBytes"].as_u64().is_some_and(|b| b > 0), "{v}");
}

#[test]
fn status_lists_a_stalled_module_and_exits_1() {
    let env = FreshEnv::new();
    env.write(
        "stack/bad.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata:\n  name: nowhere\nspec:\n  from: no-such-module\n",
    );
    let dir = env.work.path().join("stack");
    let _d = Daemon::start(&env, &[&dir], &[]);
    let mut last = Value::Null;
    wait_until(
        "status to list the Stalled module",
        Duration::from_secs(60),
        || {
            let (code, s) = status_json(&env);
            last = s.clone();
            code == 1
                && s["attention"].as_array().is_some_and(|a| {
                    a.iter().any(|m| {
                        m.as_str()
                            .is_some_and(|m| m.starts_with("module/nowhere: Stalled"))
                    })
                })
        },
    );
    assert_eq!(last["daemon"]["running"], true, "{last}");
}

#[test]
fn ps_without_a_daemon_says_so_and_exits_1() {
    let env = FreshEnv::new();
    let r = env.run(&["ps"]).fails();
    assert!(
        r.stderr.contains("no daemon serves") && r.stderr.contains("lasctl daemon"),
        "{}",
        r.stderr
    );
}

#[test]
fn ps_shows_what_runs_with_pid_memory_and_uptime() {
    let env = FreshEnv::new();
    env.write("stack/sleeper.yaml", &native_module("sleeper"));
    let dir = env.work.path().join("stack");
    let d = Daemon::start(&env, &[&dir], &[]);
    let o = wait_ready(&env, &d, "module", "sleeper", Duration::from_secs(60));
    let pid = o["status"]["pid"].as_u64().unwrap();

    let r = env.run(&["ps", "-o", "json"]).ok();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    let w = &items[0];
    assert_eq!(w["module"], "sleeper", "{w}");
    assert_eq!(w["runtime"], "native", "{w}");
    assert_eq!(w["pid"].as_u64(), Some(pid), "{w}");
    assert!(w["memoryBytes"].as_u64().is_some_and(|m| m > 0), "{w}");
    assert!(w["startedAt"].as_str().is_some(), "{w}");
    assert_eq!(w["requests"], 0, "{w}");

    let r = env.run(&["ps"]).ok();
    let header = r.stdout.lines().next().unwrap();
    for col in [
        "NAME",
        "RUNTIME",
        "PID/CONTAINER",
        "ENDPOINT",
        "UPTIME",
        "MEMORY",
        "VRAM",
        "REQUESTS",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let row = r.stdout.lines().nth(1).unwrap();
    assert!(
        row.starts_with("sleeper") && row.contains(&pid.to_string()),
        "{row}"
    );

    // The route is an /api route: over TCP it needs the token.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&d.listen).unwrap();
    write!(
        s,
        "GET /api/v1/ps HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
}

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

#[test]
fn run_chats_with_a_served_model_keeps_the_conversation_and_ps_counts_requests() {
    let env = FreshEnv::new();
    let gguf = generate_tiny_model(&env);
    env.write("ai/model.yaml", &model_doc("tiny", gguf.to_str().unwrap()));
    env.write(
        "ai/chat.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {name: chat}\nspec:\n  model: tiny\n  engine: {type: llama, contextSize: 256, parallel: 1, threads: 1}\n",
    );
    let dir = env.work.path().join("ai");
    let d = Daemon::start(&env, &[&dir], &[]);
    wait_ready(&env, &d, "module", "chat", Duration::from_secs(180));
    // The route table follows Readiness within a moment.
    wait_until("tiny in /v1/models", Duration::from_secs(10), || {
        env.run(&["run", "tiny", "hi", "--max-tokens", "1"]).code == 0
    });

    // A prompt as arguments: one streamed answer, then exit.
    let r = env
        .run(&[
            "run",
            "tiny",
            "Hello",
            "there",
            "--max-tokens",
            "4",
            "--verbose",
        ])
        .ok();
    assert!(
        !r.stdout.trim().is_empty() || r.stderr.contains("completion tokens: "),
        "{r:?}"
    );
    assert!(r.stderr.contains("completion tokens: "), "{}", r.stderr);
    // By module name, the prompt on stdin.
    let r = env
        .run_stdin(&["run", "chat", "--max-tokens", "4"], Some(b"Hello"))
        .ok();
    assert!(r.stdout.ends_with('\n'), "{r:?}");

    // In a terminal: a conversation; each turn carries the ones before it.
    let cmd = format!(
        "{} run tiny --max-tokens 3 --temperature 0 --verbose",
        lasctl_bin().display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("LAS_HOME", env.home_path())
        .env_remove("LAS_LISTEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            ch.stdin
                .take()
                .unwrap()
                .write_all(b"first question\nsecond question\n/bye\n")?;
            ch.wait_with_output()
        })
        .expect("script(1) from util-linux runs the chat in a terminal");
    let text = String::from_utf8_lossy(&out.stdout);
    let prompts: Vec<u64> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("prompt tokens: "))
        .filter_map(|l| l.split(',').next()?.trim().parse().ok())
        .collect();
    assert_eq!(prompts.len(), 2, "two answers expected:\n{text}");
    assert!(
        prompts[1] > prompts[0] + 3,
        "the second turn must carry the first question and answer: {prompts:?}\n{text}"
    );

    let r = env.run(&["ps", "-o", "json"]).ok();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let chat = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["module"] == "chat")
        .unwrap_or_else(|| panic!("chat runs: {v}"));
    assert!(
        chat["requests"].as_u64().is_some_and(|n| n >= 5),
        "every /v1 request routed to chat is counted: {chat}"
    );
    assert!(
        chat["memoryBytes"].as_u64().is_some_and(|m| m > 0),
        "{chat}"
    );
}

#[test]
fn run_of_a_model_no_module_serves_says_how_to_serve_it() {
    let env = FreshEnv::new();
    let _d = Daemon::start(&env, &[], &[]);
    let r = env.run(&["run", "llama3", "hi"]).fails();
    assert!(
        r.stderr.contains("no Module serves the model \"llama3\"")
            && r.stderr.contains("model: llama3")
            && r.stderr.contains("engine: {type: llama}")
            && r.stderr.contains("starts nothing"),
        "{}",
        r.stderr
    );
    // Without a daemon it says that first.
    drop(_d);
    let r = env.run(&["run", "llama3", "hi"]).fails();
    assert!(r.stderr.contains("no daemon serves"), "{}", r.stderr);
}

#[test]
fn catalog_lists_every_manifest_and_shows_what_one_needs() {
    let env = FreshEnv::new();
    let r = env.run(&["catalog", "list"]).ok();
    let header = r.stdout.lines().next().unwrap();
    for col in [
        "NAME", "LATEST", "VERSIONS", "RUNTIME", "GPU", "MEMORY", "PORTS",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let manifests: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests"))
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_suffix(".yaml").map(String::from)
            })
            .collect();
    assert!(!manifests.is_empty());
    for m in &manifests {
        assert!(
            r.stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(m)),
            "{m} missing:\n{}",
            r.stdout
        );
    }
    let r = env.run(&["catalog", "show", "qdrant"]).ok();
    for want in [
        "6333/http",
        "memory 512.0MiB",
        "container",
        "sha256:",
        "from: qdrant",
    ] {
        assert!(r.stdout.contains(want), "{want}:\n{}", r.stdout);
    }
    let v: Value = serde_json::from_str(
        &env.run(&["catalog", "show", "qdrant", "-o", "json"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(v["kind"], "ModuleManifest");
    let r = env.run(&["catalog", "show", "nosuch"]).fails();
    assert!(r.stderr.contains("qdrant"), "{}", r.stderr);
}

fn complete(env: &FreshEnv, words: &[&str]) -> Vec<String> {
    let out: Run = env
        .cmd()
        .env("COMPLETE", "bash")
        .env("_CLAP_COMPLETE_INDEX", (words.len() - 1).to_string())
        .env("_CLAP_IFS", "\n")
        .arg("--")
        .args(words)
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout.lines().map(String::from).collect()
}

#[test]
fn completion_completes_kinds_and_the_names_in_the_store() {
    let env = FreshEnv::new();
    let f = env.write(
        "s.yaml",
        &format!(
            "{}---\n{}",
            model_doc("tiny", "/srv/tiny.gguf"),
            native_module("chat")
        ),
    );
    env.run(&["apply", "-f", f.to_str().unwrap()]).ok();

    assert!(complete(&env, &["lasctl", "sta"]).contains(&"status".to_string()));
    let kinds = complete(&env, &["lasctl", "get", "mo"]);
    assert!(
        kinds.contains(&"model".into()) && kinds.contains(&"module".into()),
        "{kinds:?}"
    );
    let names = complete(&env, &["lasctl", "get", "model", ""]);
    assert!(
        names.contains(&"tiny".into()) && !names.contains(&"chat".into()),
        "{names:?}"
    );
    assert_eq!(
        complete(&env, &["lasctl", "describe", "module", "c"]),
        vec!["chat"]
    );
    assert_eq!(
        complete(&env, &["lasctl", "logs", "module/"]),
        vec!["module/chat"]
    );
    let models = complete(&env, &["lasctl", "run", ""]);
    assert!(
        models.contains(&"tiny".into()) && models.contains(&"chat".into()),
        "{models:?}"
    );

    // The registration script calls this binary back; --static keeps the old script.
    let r = env.run(&["completion", "bash"]).ok();
    assert!(
        r.stdout.contains("COMPLETE=\"bash\"") || r.stdout.contains("COMPLETE="),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&lasctl_bin().display().to_string()),
        "{}",
        r.stdout
    );
    let r = env.run(&["completion", "bash", "--static"]).ok();
    assert!(r.stdout.contains("_lasctl"), "{}", r.stdout);
}

#[test]
fn man_pages_are_generated_for_lasctl_and_every_verb() {
    let env = FreshEnv::new();
    let dir = env.work.path().join("man1");
    env.run(&["man-pages", dir.to_str().unwrap()]).ok();
    for page in [
        "lasctl.1",
        "lasctl-apply.1",
        "lasctl-status.1",
        "lasctl-ps.1",
        "lasctl-run.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
}
