//! Exec plugins end to end (issue 14): executables written by the test, verified and supervised
//! by the real daemon, their hooks on the real `/v1` path in front of the real llama.cpp engine;
//! a legacy text-plugin contract imported and served; the allowlist's default deny; executables
//! that misbehave; deactivation, and a daemon killed with -9 whose leftover is replaced.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sha2::Digest;
use support::FreshEnv;
use support::daemon::{Daemon, get_json, wait_ready, wait_until};

fn sha256_file(p: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

fn write_exe(path: &Path, text: &str) -> String {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    sha256_file(path)
}

fn curl(url: &str, body: &str) -> (u16, Value) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "60", "-o", "-", "-w", "\n%{http_code}", url])
        .args(["-H", "Content-Type: application/json", "-d", body])
        .output()
        .unwrap();
    let out = String::from_utf8(out.stdout).unwrap();
    let (body, code) = out.rsplit_once('\n').unwrap();
    (
        code.parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::String(body.into())),
    )
}

fn get(url: &str) -> u16 {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-m",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

fn chat(content: &str) -> String {
    format!(
        r#"{{"model":"tiny","messages":[{{"role":"user","content":"{content}"}}],"max_tokens":4,"temperature":0}}"#
    )
}

fn condition(o: &Value, type_: &str) -> (String, String, String) {
    o["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .unwrap_or_default()
}

/// A Policy whose one tier admits the tiny model and allows the executables `shas`.
fn policy(shas: &[&str]) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1
kind: Policy
metadata: {{name: exec}}
spec:
  tiers:
  - name: exec-ok
    capabilities:
      allowedRuntimes: [container, native]
      allowedEngines: [llama]
      maxRunningModels: 4
      allowCpuFallback: true
      allowedExecPlugins: [{}]
",
        shas.join(", ")
    )
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

/// The pids of live processes marked as activation `name`'s exec plugin in this home.
fn exec_pids(home: &Path, activation: &str) -> Vec<u32> {
    let owner = format!("LAS_WORKLOAD_OWNER=PluginActivation/{activation}");
    let stack = format!("LAS_WORKLOAD_STACK={}", home.join("logs").display());
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z');
        if !zombie && vars.contains(&owner.as_bytes()) && vars.contains(&stack.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

fn pgid(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// A line-protocol plugin as a shell script: the handshake (protocol `version`, `name`), then
/// `on_call` for each request line (with `$id` set).
fn lines_script(version: &str, name: &str, on_call: &str, after: &str) -> String {
    format!(
        r#"#!/bin/sh
read hello
printf '{{"protocol":"las-exec","version":{version},"name":"{name}","pluginVersion":"1.0.0","capabilities":["call"]}}\n'
while read -r line; do
  rest=${{line#*\"id\":}}
  id=${{rest%%,*}}
  {on_call}
done
{after}
"#
    )
}

const ALLOW: &str = r#"printf '{"id":%s,"output":{"action":"allow"}}\n' "$id""#;

/// Writes `dir/<name>` (the script) and `dir/plugin.yaml` (a lines-protocol exec manifest with
/// one pre-request hook `hook`); returns (manifest, executable sha256).
fn exec_plugin(dir: &Path, name: &str, script: &str) -> (PathBuf, String) {
    let sha = write_exe(&dir.join(name), script);
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
    type: exec
    protocol: lines
    artifacts: [{{name: executable, path: {name}, sha256: {sha}}}]
  contributes:
    inferenceHooks: [{{id: hook, stage: preRequest, entry: pre_request}}]
"
        ),
    )
    .unwrap();
    (manifest, sha)
}

fn tiny_stack(env: &FreshEnv) -> PathBuf {
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
    env.work.path().join("ai")
}

/// A Loci-style `upper.plugin.json` beside its executable: imported, denied until the tier
/// allows its digest (nothing spawned), then served as pre/post hooks on `/v1`.
#[test]
fn legacy_text_plugin_is_denied_by_default_then_transforms_v1_requests() {
    let env = FreshEnv::new();
    let dir = tiny_stack(&env);
    let seen = env.work.path().join("seen.txt");
    let exe = env.work.path().join("legacy/upper");
    let sha = write_exe(
        &exe,
        &format!(
            "#!/bin/sh\nt=$(cat)\nprintf '%s %s\\n' \"$1\" \"$t\" >> {seen}\nif [ \"$1\" = post_generate ]; then printf '%s [legacy]' \"$t\"; else printf '%s' \"$t\" | tr a-z A-Z; fi\n",
            seen = seen.display()
        ),
    );
    let contract = env.write(
        "legacy/upper.plugin.json",
        &format!(
            r#"{{"name": "upper", "version": "1.0.0", "kind": "text_plugin", "abi_version": 1,
 "capabilities": ["pre_generate", "post_generate"], "sha256": "{sha}"}}"#
        ),
    );
    // `plugin import` prints the manifest it maps to.
    let yaml = env
        .run(&["plugin", "import", contract.to_str().unwrap()])
        .ok()
        .stdout;
    assert!(
        yaml.contains("type: exec")
            && yaml.contains("legacyKind: text_plugin")
            && yaml.contains("sourceFormat: legacy")
            && yaml.contains(&sha),
        "{yaml}"
    );
    // A capability the bridge cannot serve is refused by name.
    let bad = env.write(
        "bad/upper.plugin.json",
        r#"{"name": "upper", "version": "1.0.0", "kind": "text_plugin", "abi_version": 1, "capabilities": ["transform_logits"]}"#,
    );
    std::fs::copy(&exe, env.work.path().join("bad/upper")).unwrap();
    let r = env
        .run(&["plugin", "import", bad.to_str().unwrap()])
        .fails();
    assert!(
        r.stderr.contains("capabilities[0]")
            && r.stderr.contains("not supported: transform_logits"),
        "{}",
        r.stderr
    );

    env.write("ai/upper.yaml", &plugin_doc("upper", &contract));
    env.write(
        "ai/upper-act.yaml",
        &activation_doc("upper-chat", "upper", "[pre-generate, post-generate]", ""),
    );
    // The plan says what would run unsandboxed, and that the tier does not allow it.
    let plan = env.run(&["plan", "-f", dir.to_str().unwrap()]).ok().stdout;
    assert!(
        plan.contains("pluginactivation/upper-chat runs exec plugin upper unsandboxed")
            && plan.contains("it will not run (ExecNotAllowed)"),
        "{plan}"
    );
    let d = Daemon::start(&env, &[&dir], &[]);
    let p = wait_ready(&env, &d, "plugin", "upper", Duration::from_secs(60));
    assert_eq!(condition(&p, "Unsandboxed").0, "True", "{p}");
    wait_ready(&env, &d, "module", "chat", Duration::from_secs(120));
    // Default deny: no allowlist → not Ready, with the digest named; nothing spawned.
    wait_until("ExecNotAllowed", Duration::from_secs(30), || {
        get_json(&env, "pluginactivation", "upper-chat")
            .is_some_and(|o| condition(&o, "Ready").1 == "ExecNotAllowed")
    });
    let a = get_json(&env, "pluginactivation", "upper-chat").unwrap();
    let (_, _, msg) = condition(&a, "Ready");
    assert!(
        msg.contains(&format!(
            "executable sha256:{sha} is not in the tier's allowedExecPlugins"
        )),
        "{a}"
    );
    let url = d.url("/v1/chat/completions");
    let (code, ok) = curl(&url, &chat("hello there"));
    assert_eq!(code, 200, "{ok}");
    assert!(
        !ok["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .ends_with("[legacy]"),
        "{ok}"
    );
    assert!(!seen.exists(), "the denied plugin ran");
    assert!(exec_pids(env.home_path(), "upper-chat").is_empty());

    // The tier allows its digest: Ready, unsandboxed, and both hooks run.
    env.write("ai/policy.yaml", &policy(&[&sha]));
    let a = wait_ready(
        &env,
        &d,
        "pluginactivation",
        "upper-chat",
        Duration::from_secs(30),
    );
    let (s, reason, msg) = condition(&a, "Unsandboxed");
    assert_eq!((s.as_str(), reason.as_str()), ("True", "ExecPlugin"), "{a}");
    assert!(msg.contains("exec-ok"), "{msg}");
    let (code, ok) = curl(&url, &chat("hello there"));
    assert_eq!(code, 200, "{ok}\n{}", d.log());
    let content = ok["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.ends_with(" [legacy]"), "{ok}");
    let seen_text = std::fs::read_to_string(&seen).unwrap();
    assert!(
        seen_text.contains("pre_generate hello there") && seen_text.contains("post_generate "),
        "{seen_text}"
    );
    let table = env.run(&["plugin", "list"]).ok().stdout;
    assert!(table.contains("exec (unsandboxed)"), "{table}");
    let inv: Value =
        serde_json::from_str(&env.run(&["plugin", "inventory", "-o", "json"]).ok().stdout).unwrap();
    let hooks: Vec<&Value> = inv["seams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["seam"] == "inference")
        .unwrap()["active"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["activation"] == "upper-chat")
        .collect();
    assert_eq!(hooks.len(), 2, "{inv}");
    // Statistics are per activation: the request's pre and post calls.
    assert!(
        hooks
            .iter()
            .all(|c| c["unsandboxed"] == true && c["calls"] == 2),
        "{inv}"
    );
    assert!(
        inv["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "upper" && p["unsandboxed"] == true),
        "{inv}"
    );
    // One-shot: nothing stays running between calls.
    assert!(exec_pids(env.home_path(), "upper-chat").is_empty());
    assert_eq!(get(&d.url("/healthz")), 200);
}

/// Each misbehaviour is a clear condition or error; the daemon keeps serving; nothing is left.
#[test]
fn misbehaving_exec_plugins_fail_clearly_and_leave_nothing_running() {
    let env = FreshEnv::new();
    let dir = tiny_stack(&env);
    let w = env.work.path();
    let cases: Vec<(&str, String)> = vec![
        ("silent", "#!/bin/sh\nexec sleep 600\n".to_string()),
        ("wrongver", lines_script("2", "wrongver", ALLOW, "")),
        ("wrongname", lines_script("1", "someone-else", ALLOW, "")),
        (
            "bigline",
            lines_script(
                "1",
                "bigline",
                "head -c 2097152 /dev/zero | tr '\\0' a; echo",
                "",
            ),
        ),
        (
            "slow",
            lines_script("1", "slow", &format!("sleep 5; {ALLOW}"), ""),
        ),
        ("quitter", lines_script("1", "quitter", "exit 3", "")),
        (
            "flood",
            lines_script("1", "flood", "yes '{\"noise\":1}'", ""),
        ),
    ];
    let mut shas = Vec::new();
    for (name, script) in &cases {
        let (manifest, sha) = exec_plugin(&w.join(name), name, script);
        env.write(&format!("ai/{name}.yaml"), &plugin_doc(name, &manifest));
        shas.push(sha);
    }
    env.write(
        "ai/policy.yaml",
        &policy(&shas.iter().map(String::as_str).collect::<Vec<_>>()),
    );
    let d = Daemon::start(&env, &[&dir], &[]);
    wait_ready(&env, &d, "module", "chat", Duration::from_secs(120));
    let url = d.url("/v1/chat/completions");
    let act = |name: &str| {
        env.write(
            &format!("ai/{name}-act.yaml"),
            &activation_doc(name, name, "[hook]", "  limits: {timeoutMs: 500}\n"),
        )
    };
    let daemon_fine = || {
        assert_eq!(get(&d.url("/healthz")), 200, "{}", d.log());
        let r = env.run(&["get", "plugins", "-o", "name"]).ok();
        assert!(r.stdout.contains("plugin/flood"), "{}", r.stdout);
    };
    let deactivate = |name: &str| {
        std::fs::remove_file(w.join(format!("ai/{name}-act.yaml"))).unwrap();
        wait_until(
            &format!("{name}'s process to be gone"),
            Duration::from_secs(30),
            || {
                get_json(&env, "pluginactivation", name).is_none()
                    && exec_pids(env.home_path(), name).is_empty()
            },
        );
    };

    // Handshake failures: conditions that name what is wrong.
    for (name, reason, text) in [
        (
            "silent",
            "NoHandshake",
            "did not answer the handshake within",
        ),
        (
            "wrongver",
            "ProtocolVersionMismatch",
            "speaks line protocol version 2",
        ),
        (
            "wrongname",
            "PluginMismatch",
            "says it is someone-else 1.0.0",
        ),
    ] {
        act(name);
        wait_until(
            &format!("{name}: {reason}"),
            Duration::from_secs(30),
            || {
                get_json(&env, "pluginactivation", name)
                    .is_some_and(|o| condition(&o, "Ready").1 == reason)
            },
        );
        let o = get_json(&env, "pluginactivation", name).unwrap();
        assert!(condition(&o, "Ready").2.contains(text), "{o}");
        daemon_fine();
        deactivate(name);
    }

    // Call failures: the guard fails closed with the reason; the process is replaced.
    for (name, text) in [
        ("bigline", "line over 1048576 bytes"),
        ("slow", "did not finish within 500ms"),
        ("quitter", "exited"),
        ("flood", "protocol violation"),
    ] {
        act(name);
        let a = wait_ready(&env, &d, "pluginactivation", name, Duration::from_secs(30));
        let first = a["status"]["exec"]["pid"].as_u64().unwrap() as u32;
        let (code, e) = curl(&url, &chat("hello"));
        assert_eq!(code, 403, "{name}: {e}");
        let msg = e["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(name) && msg.contains(text), "{name}: {e}");
        daemon_fine();
        // The failed process is gone (group and all); the supervisor starts another.
        wait_until(
            &format!("{name}'s first process to end"),
            Duration::from_secs(10),
            || !exec_pids(env.home_path(), name).contains(&first),
        );
        deactivate(name);
    }
    assert_eq!(get(&d.url("/healthz")), 200);
}

/// Deactivation kills the process; a daemon killed with -9 leaves its plugin behind, and the
/// next daemon kills that leftover and starts one process (its pipes cannot be re-attached).
#[test]
fn a_killed_daemon_s_exec_plugin_is_replaced_not_duplicated_and_deactivation_ends_it() {
    let env = FreshEnv::new();
    let w = env.work.path();
    // After its stdin closes (the daemon died) it keeps running, like a careless plugin would.
    let (manifest, sha) = exec_plugin(
        &w.join("stay"),
        "stay",
        &lines_script("1", "stay", ALLOW, "exec sleep 600"),
    );
    let dir = w.join("s");
    env.write("s/plugin.yaml", &plugin_doc("stay", &manifest));
    env.write("s/policy.yaml", &policy(&[&sha]));
    env.write("s/act.yaml", &activation_doc("stay", "stay", "[hook]", ""));
    let mut d = Daemon::start(&env, &[&dir], &[]);
    let a = wait_ready(
        &env,
        &d,
        "pluginactivation",
        "stay",
        Duration::from_secs(60),
    );
    let first = a["status"]["exec"]["pid"].as_u64().unwrap() as u32;
    assert_eq!(exec_pids(env.home_path(), "stay"), vec![first]);

    d.kill9();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        exec_pids(env.home_path(), "stay").contains(&first),
        "the leftover should outlive the killed daemon for this test to mean anything"
    );
    let d = Daemon::start(&env, &[&dir], &[]);
    wait_until(
        "the leftover to be replaced",
        Duration::from_secs(60),
        || {
            get_json(&env, "pluginactivation", "stay").is_some_and(|o| {
                o["status"]["exec"]["pid"]
                    .as_u64()
                    .is_some_and(|p| p as u32 != first)
            })
        },
    );
    let events = env.run(&["events", "pluginactivation/stay"]).ok().stdout;
    assert!(
        events.contains("ReplacedLeftover") && events.contains(&first.to_string()),
        "{events}"
    );
    let second = get_json(&env, "pluginactivation", "stay").unwrap()["status"]["exec"]["pid"]
        .as_u64()
        .unwrap() as u32;
    // Exactly one process group: the new one.
    wait_until(
        "only the new process to remain",
        Duration::from_secs(10),
        || {
            let pids = exec_pids(env.home_path(), "stay");
            !pids.is_empty() && pids.iter().all(|p| pgid(*p) == Some(second as i64))
        },
    );

    // Deactivation: the process group ends.
    std::fs::remove_file(dir.join("act.yaml")).unwrap();
    wait_until("the process to end", Duration::from_secs(30), || {
        exec_pids(env.home_path(), "stay").is_empty()
    });
    assert_eq!(get(&d.url("/healthz")), 200);
}

#[test]
fn example_legacy_plugin_is_pinned_and_imports() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let contract = repo.join("plugins/upper.plugin.json");
    let text = std::fs::read_to_string(&contract).unwrap();
    let sha = sha256_file(&repo.join("plugins/upper"));
    assert!(
        text.contains(&sha),
        "plugins/upper.plugin.json does not pin plugins/upper: update its sha256 to {sha}"
    );
    let env = FreshEnv::new();
    let yaml = env
        .run(&["plugin", "import", contract.to_str().unwrap()])
        .ok()
        .stdout;
    assert!(
        yaml.contains("name: upper")
            && yaml.contains("protocol: oneShot")
            && yaml.contains("stage: preRequest")
            && yaml.contains("legacyAbiVersion: 1"),
        "{yaml}"
    );
    let out = std::process::Command::new(repo.join("plugins/upper"))
        .arg("pre_generate")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"hello")?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.stdout, b"HELLO");
}
