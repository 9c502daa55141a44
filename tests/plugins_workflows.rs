//! Commands and workflows end to end (issue 14): the real `lasctl`, the real daemon, the example
//! plugins of `plugins/` in the WASM sandbox, the tiny model behind the real `/v1`.

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest;
use support::FreshEnv;
use support::daemon::{Daemon, wait_ready, wait_until};

fn sha256_file(p: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn plugin_doc(name: &str, manifest: &Path) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Plugin\nmetadata: {{name: {name}}}\nspec:\n  source: {}\n  sha256: {}\n",
        manifest.display(),
        sha256_file(manifest)
    )
}

fn activation_doc(name: &str, plugin: &str, contributions: &str, extra: &str) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: PluginActivation\nmetadata: {{name: {name}}}\nspec:\n  pluginRef: {plugin}\n  contributions: {contributions}\n{extra}"
    )
}

/// A manifest beside a copy of the example module, with `contributes` and extra spec lines.
fn write_manifest(dir: &Path, name: &str, contributes: &str, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let wasm = dir.join("workflow_demo.wasm");
    std::fs::copy(repo("plugins/workflow_demo.wasm"), &wasm).unwrap();
    let manifest = dir.join("plugin.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: plugins.localaistack.io/v1alpha1
kind: PluginManifest
metadata: {{name: {name}}}
spec:
  version: 1.0.0
  hostApi: \"^1\"
  runtime:
    type: wasm
    artifacts:
    - {{name: module, path: workflow_demo.wasm, sha256: {}}}
  contributes:
{contributes}{extra}",
            sha256_file(&wasm)
        ),
    )
    .unwrap();
    manifest
}

fn token(env: &FreshEnv) -> String {
    std::fs::read_to_string(env.home_path().join("run/token"))
        .unwrap()
        .trim()
        .to_string()
}

/// An HTTP request to the daemon over TCP with curl; `token` adds the bearer token.
fn api(
    env: &FreshEnv,
    d: &Daemon,
    method: &str,
    path: &str,
    body: Option<&str>,
    with_token: bool,
) -> (u16, Value) {
    let mut c = std::process::Command::new("curl");
    c.args([
        "-s",
        "-m",
        "120",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
    ])
    .arg(d.url(path));
    if with_token {
        c.args(["-H", &format!("Authorization: Bearer {}", token(env))]);
    }
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

fn events_of(env: &FreshEnv, object: &str) -> String {
    env.run(&["events", object]).ok().stdout
}

const DEMO_COMMAND: &str = "    commands:
    - {id: about, entry: args, argsSchema: {type: array, items: {type: string}}}
";

#[test]
fn bad_workflows_are_refused_at_apply_with_file_line_and_field() {
    let env = FreshEnv::new();
    let cases = [
        (
            "cycle",
            "    workflows:
    - id: loop
      output: a
      nodes:
      - {id: a, type: http, with: {url: \"http://127.0.0.1:1/\"}, inputs: {body: b.body}}
      - {id: b, type: http, with: {url: \"http://127.0.0.1:1/\"}, inputs: {body: a.body}}
",
            "spec.contributes.workflows[0].nodes[0].inputs",
            "cycle: a → b → a",
        ),
        (
            "dangling",
            "    workflows:
    - id: dangling
      output: a
      nodes:
      - {id: a, type: http, with: {url: \"http://127.0.0.1:1/\"}, inputs: {body: nowhere.text}}
",
            "spec.contributes.workflows[0].nodes[0].inputs.body",
            "refers to no node",
        ),
        (
            "unknown-type",
            "    workflows:
    - id: unknown
      output: a
      nodes:
      - {id: a, type: teleport}
",
            "spec.contributes.workflows[0].nodes[0].type",
            "unknown node type \"teleport\"",
        ),
        (
            "bad-output",
            "    workflows:
    - id: nooutput
      output: z
      nodes:
      - {id: a, type: command, with: {command: about}}
",
            "spec.contributes.workflows[0].output",
            "not a node",
        ),
    ];
    for (name, contributes, field, message) in cases {
        let manifest = write_manifest(
            &env.work.path().join(name),
            "demo",
            &format!("{DEMO_COMMAND}{contributes}"),
            "",
        );
        let dir = env.work.path().join(format!("s-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("plugin.yaml"), plugin_doc("demo", &manifest)).unwrap();
        std::fs::write(
            dir.join("act.yaml"),
            activation_doc("demo-act", "demo", "[about]", ""),
        )
        .unwrap();
        let r = env.run(&["apply", "-f", dir.to_str().unwrap()]).fails();
        let file_line = format!("{}:", manifest.display());
        assert!(
            r.stderr.contains(&file_line) && r.stderr.contains(field) && r.stderr.contains(message),
            "{name}: expected {file_line}LINE:COL {field}: …{message}…, got\n{}",
            r.stderr
        );
        // Bad input changes nothing.
        assert!(
            env.run(&["get", "plugins", "-o", "name"])
                .ok()
                .stdout
                .is_empty(),
            "{name}"
        );
    }
    // Workflow names are unique across activations: a second activation enabling the same
    // workflow (here of another Plugin with the same manifest) is refused at apply.
    let demo = repo("plugins/workflow-demo.plugin.yaml");
    env.write("dup/a.yaml", &plugin_doc("demo-a", &demo));
    env.write("dup/b.yaml", &plugin_doc("demo-b", &demo));
    env.write(
        "dup/acts.yaml",
        &[
            activation_doc("act-a", "demo-a", "[guarded-answer]", ""),
            activation_doc("act-b", "demo-b", "[about, guarded-answer]", ""),
        ]
        .join("---\n"),
    );
    let r = env
        .run(&["apply", "-f", env.work.path().join("dup").to_str().unwrap()])
        .fails();
    assert!(
        r.stderr.contains("acts.yaml")
            && r.stderr.contains("spec.contributions[1]")
            && r.stderr.contains(
                "the workflow guarded-answer is already enabled by plugin activation act-a"
            ),
        "{}",
        r.stderr
    );
    // A network grant the manifest does not request.
    let manifest = write_manifest(
        &env.work.path().join("net"),
        "demo",
        DEMO_COMMAND,
        "  networkRequests: [\"127.0.0.1:9\"]\n",
    );
    env.write("net-s/plugin.yaml", &plugin_doc("demo", &manifest));
    env.write(
        "net-s/act.yaml",
        &activation_doc(
            "demo-act",
            "demo",
            "[about]",
            "  networkGrants: [\"example.com\"]\n",
        ),
    );
    let r = env
        .run(&[
            "apply",
            "-f",
            env.work.path().join("net-s").to_str().unwrap(),
        ])
        .fails();
    assert!(
        r.stderr.contains("act.yaml")
            && r.stderr.contains("spec.networkGrants[0]")
            && r.stderr.contains("does not request"),
        "{}",
        r.stderr
    );
}

#[test]
fn commands_run_through_the_cli_and_http_and_each_run_is_an_event() {
    let env = FreshEnv::new();
    let demo = repo("plugins/workflow-demo.plugin.yaml");
    env.write("s/demo.yaml", &plugin_doc("demo", &demo));
    env.write("s/idle.yaml", &plugin_doc("idle", &demo));
    env.write(
        "s/act.yaml",
        &activation_doc("demo-act", "demo", "[about]", ""),
    );
    // A command whose activation gives it too little fuel to finish: it fails.
    env.write("s/starved.yaml", &plugin_doc("starved", &demo));
    env.write(
        "s/starved-act.yaml",
        &activation_doc("starved-act", "starved", "[about]", "  limits: {fuel: 1}\n"),
    );
    let dir = env.work.path().join("s");
    env.run(&["apply", "-f", dir.to_str().unwrap()]).ok();
    let d = Daemon::start(&env, &[], &[]);
    wait_ready(
        &env,
        &d,
        "pluginactivation",
        "demo-act",
        Duration::from_secs(60),
    );
    wait_ready(&env, &d, "plugin", "idle", Duration::from_secs(60));

    // The CLI prints output.text; -o json the whole answer, with the arguments it got.
    let r = env
        .run(&["plugin", "run", "demo", "about", "x", "--y"])
        .ok();
    assert_eq!(r.stdout.trim(), "workflow-demo 1.0.0", "{}", r.stderr);
    let r = env
        .run(&["plugin", "run", "demo", "about", "-o", "json", "a", "b"])
        .ok();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["activation"], "demo-act", "{v}");
    assert_eq!(v["output"]["received"]["args"], json!(["a", "b"]), "{v}");

    // HTTP: the token is required over TCP; with it the command runs.
    let path = "/api/v1/plugins/demo/commands/about";
    let (code, _) = api(&env, &d, "POST", path, Some(r#"{"args":["h"]}"#), false);
    assert_eq!(code, 401);
    let (code, v) = api(&env, &d, "POST", path, Some(r#"{"args":["h"]}"#), true);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["output"]["text"], "workflow-demo 1.0.0", "{v}");
    assert_eq!(v["output"]["received"]["args"], json!(["h"]), "{v}");
    let (code, v) = api(&env, &d, "GET", "/api/v1/plugins/demo/commands", None, true);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["commands"][0]["id"], "about", "{v}");
    assert_eq!(v["commands"][0]["activation"], "demo-act", "{v}");

    // Errors as Status bodies: unknown plugin or command 404, not enabled 409, bad body 400.
    for (p, body, want) in [
        ("/api/v1/plugins/nope/commands/about", "{}", 404),
        ("/api/v1/plugins/demo/commands/nope", "{}", 404),
        ("/api/v1/plugins/idle/commands/about", "{}", 409),
        (path, r#"{"args": 1}"#, 400),
        (path, r#"{"args": [1]}"#, 400),
        (path, r#"{"argz": []}"#, 400),
        (path, "not json", 400),
    ] {
        let (code, v) = api(&env, &d, "POST", p, Some(body), true);
        assert_eq!(code, want, "{p} {body}: {v}");
        assert_eq!(v["kind"], "Status", "{v}");
    }
    // describe shows the manifest's commands, custom nodes and workflows; the inventory the
    // workflow seam and the active command.
    let r = env.run(&["plugin", "describe", "demo"]).ok();
    assert!(
        r.stdout.contains("Commands:")
            && r.stdout.contains("Custom nodes:")
            && r.stdout.contains(
                "guarded-answer: check:hook → answer:generate → polish:hook → about:command → shape:wrap"
            ),
        "{}",
        r.stdout
    );
    let inv: Value =
        serde_json::from_str(&env.run(&["plugin", "inventory", "-o", "json"]).ok().stdout).unwrap();
    let seam = |name: &str| {
        inv["seams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["seam"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        seam("workflow")["accepts"],
        json!(["workflows", "customNodes"])
    );
    let pm = seam("pluginManager");
    assert!(
        pm["active"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["point"] == "commands" && a["activation"] == "demo-act" && a["calls"] == 3),
        "{pm}"
    );
    wait_ready(
        &env,
        &d,
        "pluginactivation",
        "starved-act",
        Duration::from_secs(60),
    );
    let (code, v) = api(
        &env,
        &d,
        "POST",
        "/api/v1/plugins/starved/commands/about",
        Some("{}"),
        true,
    );
    assert_eq!(code, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("command about failed"),
        "{v}"
    );
    let ev = events_of(&env, "pluginactivation/starved-act");
    assert!(ev.contains("CommandFailed"), "{ev}");
    let r = env.run(&["plugin", "run", "idle", "about"]).fails();
    assert!(r.stderr.contains("not enabled"), "{}", r.stderr);

    // Each run is an event on the activation (a run its schema refused never started).
    let ev = events_of(&env, "pluginactivation/demo-act");
    assert!(
        ev.contains("CommandRun") && ev.contains("command about of plugin demo ran"),
        "{ev}"
    );
}

/// The example workflow: a guard on the input, a generation through `/v1`, a post-processor on
/// the answer, the plugin's command and its custom node; and a guard denial failing the run.
#[test]
fn the_example_workflow_chains_a_guard_a_generation_and_a_post_processor() {
    let env = FreshEnv::new();
    let gguf = env.work.path().join("tiny.gguf");
    env.run(&[
        "model",
        "generate-test",
        gguf.to_str().unwrap(),
        "--preset",
        "tiny",
    ])
    .ok();
    env.write(
        "ai/model.yaml",
        &support::model_doc("tiny", gguf.to_str().unwrap()),
    );
    env.write(
        "ai/chat.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {name: chat}\nspec:\n  model: tiny\n  engine: {type: llama, contextSize: 256}\n",
    );
    for (name, file) in [
        ("prompt-guard", "plugins/prompt-guard.plugin.yaml"),
        ("response-suffix", "plugins/response-suffix.plugin.yaml"),
        ("demo", "plugins/workflow-demo.plugin.yaml"),
    ] {
        env.write(&format!("ai/{name}.yaml"), &plugin_doc(name, &repo(file)));
    }
    // The hooks are scoped to a module that does not exist, so only the workflow calls them.
    env.write(
        "ai/acts.yaml",
        &[
            activation_doc(
                "guard",
                "prompt-guard",
                "[guard]",
                "  scope: {modules: [elsewhere]}\n  config: {patterns: [forbidden]}\n",
            ),
            activation_doc(
                "suffix",
                "response-suffix",
                "[suffix]",
                "  scope: {modules: [elsewhere]}\n  config: {suffix: \" [checked]\"}\n",
            ),
            activation_doc("demo-act", "demo", "[about, guarded-answer]", ""),
        ]
        .join("---\n"),
    );
    let dir = env.work.path().join("ai");
    env.run(&["apply", "-f", dir.to_str().unwrap()]).ok();
    let d = Daemon::start(&env, &[], &[]);
    for a in ["guard", "suffix", "demo-act"] {
        wait_ready(&env, &d, "pluginactivation", a, Duration::from_secs(60));
    }
    wait_ready(&env, &d, "module", "chat", Duration::from_secs(180));

    let r = env.run(&["workflow", "list"]).ok();
    assert!(
        r.stdout.contains("guarded-answer")
            && r.stdout
                .contains("check:hook → answer:generate → polish:hook"),
        "{}",
        r.stdout
    );
    let input = env.write(
        "in.json",
        r#"{"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}"#,
    );
    let r = env
        .run(&[
            "workflow",
            "run",
            "guarded-answer",
            "--input",
            input.to_str().unwrap(),
            "-o",
            "json",
        ])
        .ok();
    let run: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(run["state"], "Succeeded", "{run}\n{}", d.log());
    let nodes = run["nodes"].as_array().unwrap();
    let ids: Vec<&str> = nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["check", "answer", "polish", "about", "shape"]);
    for n in nodes {
        assert_eq!(n["state"], "Succeeded", "{n}");
        assert!(
            n["durationMs"].is_u64() && n["startedAt"].is_string(),
            "{n}"
        );
        assert!(!n["output"].is_null(), "{n}");
    }
    let text = run["output"]["wrapped"]["text"].as_str().unwrap();
    assert!(text.ends_with(" [checked]"), "{run}");
    // The generation went through /v1: its answer is the engine's, before the suffix.
    let generated = nodes[1]["output"]["text"].as_str().unwrap();
    assert_eq!(format!("{generated} [checked]"), text);
    assert_eq!(run["output"]["wrapped"]["by"], "workflow-demo 1.0.0");
    assert_eq!(run["output"]["wrapped"]["label"], "answer");
    // The record is durable: `workflow get` reads the same from the store.
    let id = run["id"].as_str().unwrap();
    let got: Value =
        serde_json::from_str(&env.run(&["workflow", "get", id, "-o", "json"]).ok().stdout).unwrap();
    assert_eq!(got, run);

    // A denial by the guard fails the run with its reason; nothing after it runs.
    let bad = env.write(
        "bad.json",
        r#"{"model": "tiny", "messages": [{"role": "user", "content": "say FORBIDDEN"}]}"#,
    );
    let r = env
        .run(&[
            "workflow",
            "run",
            "guarded-answer",
            "--input",
            bad.to_str().unwrap(),
        ])
        .fails();
    assert!(
        r.stderr.contains("denied by plugin activation guard") && r.stderr.contains("forbidden"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(
        r.stdout.contains("check") && r.stdout.contains("Failed"),
        "{}",
        r.stdout
    );
    let runs: Value = serde_json::from_str(
        &env.run(&["workflow", "runs", "guarded-answer", "-o", "json"])
            .ok()
            .stdout,
    )
    .unwrap();
    let failed = &runs["items"][0];
    assert_eq!(failed["state"], "Failed", "{runs}");
    assert_eq!(failed["nodes"][0]["state"], "Failed", "{failed}");
    assert_eq!(failed["nodes"][1]["state"], "Pending", "{failed}");
    assert_eq!(runs["items"][1]["id"], id, "{runs}");
    let ev = events_of(&env, "pluginactivation/demo-act");
    assert!(
        ev.contains("WorkflowSucceeded") && ev.contains("WorkflowFailed"),
        "{ev}"
    );
}

/// A local HTTP server: `/ok` answers `{"pong":true}` at once, `/slow` after a minute.
fn test_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                if head.starts_with("GET /slow") {
                    std::thread::sleep(Duration::from_secs(60));
                }
                let body = r#"{"pong":true}"#;
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

#[test]
fn http_nodes_reach_only_granted_hosts_and_a_run_cut_by_a_daemon_kill_is_failed_after_restart() {
    let env = FreshEnv::new();
    let port = test_server();
    let manifest = write_manifest(
        &env.work.path().join("net"),
        "fetcher",
        "    workflows:
    - id: fetch
      output: get
      nodes:
      - {id: get, type: http, with: {method: GET}, inputs: {url: $input.url}}
",
        &format!("  networkRequests: [\"127.0.0.1:{port}\"]\n"),
    );
    env.write("s/plugin.yaml", &plugin_doc("fetcher", &manifest));
    env.write(
        "s/act.yaml",
        &activation_doc(
            "fetcher-act",
            "fetcher",
            "[fetch]",
            &format!("  networkGrants: [\"127.0.0.1:{port}\"]\n"),
        ),
    );
    env.run(&["apply", "-f", env.work.path().join("s").to_str().unwrap()])
        .ok();
    let mut d = Daemon::start(&env, &[], &[]);
    wait_ready(
        &env,
        &d,
        "pluginactivation",
        "fetcher-act",
        Duration::from_secs(60),
    );

    let run = |url: &str| {
        api(
            &env,
            &d,
            "POST",
            "/api/v1/workflows/fetch/runs",
            Some(&json!({"input": {"url": url}}).to_string()),
            true,
        )
    };
    let (code, ok) = run(&format!("http://127.0.0.1:{port}/ok"));
    assert_eq!(code, 200, "{ok}");
    assert_eq!(ok["state"], "Succeeded", "{ok}");
    assert_eq!(ok["output"], json!({"status": 200, "body": {"pong": true}}));
    // The same server by another name, and another port: not granted.
    for url in [
        format!("http://localhost:{port}/ok"),
        format!("http://127.0.0.1:{}/ok", port.wrapping_add(1)),
    ] {
        let (code, refused) = run(&url);
        assert_eq!(code, 200, "{refused}");
        assert_eq!(refused["state"], "Failed", "{refused}");
        assert!(
            refused["error"]
                .as_str()
                .unwrap()
                .contains("is not granted to plugin activation fetcher-act"),
            "{refused}"
        );
    }
    let (code, _) = api(
        &env,
        &d,
        "POST",
        "/api/v1/workflows/nope/runs",
        Some("{}"),
        true,
    );
    assert_eq!(code, 404);
    let (code, _) = api(
        &env,
        &d,
        "POST",
        "/api/v1/workflows/fetch/runs",
        Some("[]"),
        true,
    );
    assert_eq!(code, 400);
    let (code, _) = api(
        &env,
        &d,
        "POST",
        "/api/v1/workflows/fetch/runs",
        Some("{}"),
        false,
    );
    assert_eq!(code, 401);

    // A slow run, started without waiting, cut by kill -9 of the daemon.
    let (code, pending) = api(
        &env,
        &d,
        "POST",
        "/api/v1/workflows/fetch/runs?wait=false",
        Some(&json!({"input": {"url": format!("http://127.0.0.1:{port}/slow")}}).to_string()),
        true,
    );
    assert_eq!(code, 202, "{pending}");
    let id = pending["id"].as_str().unwrap().to_string();
    wait_until("the slow node to run", Duration::from_secs(30), || {
        let (_, r) = api(
            &env,
            &d,
            "GET",
            &format!("/api/v1/workflow-runs/{id}"),
            None,
            true,
        );
        r["state"] == "Running" && r["nodes"][0]["state"] == "Running"
    });
    d.kill9();
    drop(d);
    let d = Daemon::start(&env, &[], &[]);
    let (code, r) = api(
        &env,
        &d,
        "GET",
        &format!("/api/v1/workflow-runs/{id}"),
        None,
        true,
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["state"], "Failed", "{r}");
    assert_eq!(r["error"], "interrupted: the daemon restarted", "{r}");
    assert_eq!(r["nodes"][0]["state"], "Failed", "{r}");
    assert!(r["finishedAt"].is_string(), "{r}");
    // `lasctl workflow runs` lists every run after the restart, newest first.
    let out = env.run(&["workflow", "runs"]).ok().stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        lines[1].starts_with(&id) && lines[1].contains("Failed"),
        "{out}"
    );
    assert!(lines[4].contains("Succeeded"), "{out}");
    let ev = events_of(&env, "pluginactivation/fetcher-act");
    assert!(ev.contains("interrupted: the daemon restarted"), "{ev}");
}
