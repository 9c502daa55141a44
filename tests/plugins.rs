//! Plugins end to end (issue 13): `Plugin` and `PluginActivation` applied with the real `lasctl`,
//! verified and activated by the real daemon, their WASM hooks on the real `/v1` path in front of
//! the real llama.cpp engine.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sha2::Digest;
use support::FreshEnv;
use support::daemon::{Daemon, get_json, wait_ready, wait_until};

fn sha256_file(p: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Copies the example plugin's wasm into `dir` and writes a manifest for it with `requests`;
/// returns the manifest's path.
fn write_guard(dir: &Path, version: &str, requests: &str, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let wasm = dir.join("prompt_guard.wasm");
    std::fs::copy(repo("plugins/prompt_guard.wasm"), &wasm).unwrap();
    let manifest = dir.join("plugin.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: plugins.localaistack.io/v1alpha1
kind: PluginManifest
metadata: {{name: prompt-guard}}
spec:
  version: {version}
  hostApi: \"^1\"
  runtime:
    type: wasm
    artifacts:
    - {{name: module, path: prompt_guard.wasm, sha256: {}}}
  contributes:
    inferenceHooks:
    - id: guard
      stage: preRequest
      entry: pre_request
      configSchema: {{type: object, additionalProperties: false, properties: {{patterns: {{type: array, items: {{type: string}}}}}}}}
  requests: {requests}
{extra}",
            sha256_file(&wasm)
        ),
    )
    .unwrap();
    manifest
}

fn plugin_doc(name: &str, manifest: &Path, sha: &str) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Plugin\nmetadata: {{name: {name}}}\nspec:\n  source: {}\n  sha256: {sha}\n",
        manifest.display()
    )
}

fn activation_doc(plugin: &str, grants: &str, patterns: &str) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1
kind: PluginActivation
metadata: {{name: {plugin}-chat}}
spec:
  pluginRef: {plugin}
  contributions: [guard]
  grants: {grants}
  config: {{patterns: {patterns}}}
"
    )
}

#[test]
fn activation_granting_more_than_the_manifest_requests_is_refused_at_apply() {
    let env = FreshEnv::new();
    let manifest = write_guard(&env.work.path().join("guard"), "1.0.0", "[log]", "");
    let sha = sha256_file(&manifest);
    env.write("s/plugin.yaml", &plugin_doc("guard", &manifest, &sha));
    env.write(
        "s/activation.yaml",
        &activation_doc("guard", "[log, clock]", "[x]"),
    );
    let dir = env.work.path().join("s");
    let r = env.run(&["apply", "-f", dir.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains("activation.yaml") && r.stderr.contains("spec.grants[1]"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("does not request"), "{}", r.stderr);
    // Bad input changes nothing.
    assert!(
        env.run(&["get", "plugins", "-o", "name"])
            .ok()
            .stdout
            .is_empty()
    );

    // A contribution the manifest does not have, and config its schema refuses.
    env.write(
        "s/activation.yaml",
        &activation_doc("guard", "[log]", "[x]").replace("[guard]", "[nope]"),
    );
    let r = env.run(&["apply", "-f", dir.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains("spec.contributions[0]") && r.stderr.contains("guard"),
        "{}",
        r.stderr
    );
    env.write("s/activation.yaml", &activation_doc("guard", "[log]", "x"));
    let r = env.run(&["apply", "-f", dir.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains("spec.config.patterns") && r.stderr.contains("expected array"),
        "{}",
        r.stderr
    );

    env.write(
        "s/activation.yaml",
        &activation_doc("guard", "[log]", "[x]"),
    );
    env.run(&["apply", "-f", dir.to_str().unwrap()]).ok();
    assert_eq!(
        env.run(&["get", "pa", "-o", "name"]).ok().stdout.trim(),
        "pluginactivation/guard-chat"
    );
    // The applied directory's las.lock records the Plugin's digests.
    let lock = std::fs::read_to_string(dir.join("las.lock")).unwrap();
    let wasm = env.work.path().join("guard/prompt_guard.wasm");
    assert!(
        lock.contains("plugins:") && lock.contains(&sha) && lock.contains(&sha256_file(&wasm)),
        "{lock}"
    );
}

#[test]
fn a_manifest_with_an_unknown_field_names_file_line_and_field() {
    let env = FreshEnv::new();
    let manifest = write_guard(
        &env.work.path().join("g"),
        "1.0.0",
        "[]",
        "  colour: blue\n",
    );
    let sha = sha256_file(&manifest);
    env.write("s/plugin.yaml", &plugin_doc("guard", &manifest, &sha));
    env.write("s/activation.yaml", &activation_doc("guard", "[]", "[x]"));
    let r = env
        .run(&["apply", "-f", env.work.path().join("s").to_str().unwrap()])
        .fails();
    let line = format!("{}:18:3", manifest.display());
    assert!(r.stderr.contains(&line), "{}", r.stderr);
    assert!(r.stderr.contains("unknown field `colour`"), "{}", r.stderr);
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

fn inventory(env: &FreshEnv, d: &Daemon) -> Value {
    let token = std::fs::read_to_string(env.home_path().join("run/token")).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-s", &d.url("/api/v1/plugins/inventory")])
        .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn chat(content: &str) -> String {
    format!(
        r#"{{"model":"tiny","messages":[{{"role":"user","content":"{content}"}}],"max_tokens":4,"temperature":0}}"#
    )
}

fn condition(o: &Value, type_: &str) -> (String, String) {
    o["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .unwrap_or_default()
}

/// The guard on `/v1`, a post-processor, a digest mismatch, and an upgrade that asks for more.
#[test]
fn prompt_guard_and_response_suffix_run_on_the_v1_path_and_upgrades_wait_for_grants() {
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
    let v1 = write_guard(&env.work.path().join("g1"), "1.0.0", "[]", "");
    env.write(
        "ai/model.yaml",
        &support::model_doc("tiny", gguf.to_str().unwrap()),
    );
    env.write(
        "ai/chat.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {name: chat}\nspec:\n  model: tiny\n  engine: {type: llama, contextSize: 256}\n",
    );
    env.write(
        "ai/guard.yaml",
        &plugin_doc("guard", &v1, &sha256_file(&v1)),
    );
    env.write(
        "ai/guard-act.yaml",
        &activation_doc("guard", "[]", "[forbidden]"),
    );
    let suffix = repo("plugins/response-suffix.plugin.yaml");
    env.write(
        "ai/suffix.yaml",
        &plugin_doc("suffix", &suffix, &sha256_file(&suffix)),
    );
    env.write(
        "ai/suffix-act.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: PluginActivation\nmetadata: {name: suffix-chat}\nspec:\n  pluginRef: suffix\n  contributions: [suffix]\n  scope: {modules: [chat]}\n  config: {suffix: \" [checked]\"}\n",
    );
    // Wrong bytes: the Plugin stalls and nothing of it runs.
    env.write("ai/bad.yaml", &plugin_doc("bad", &v1, &"0".repeat(64)));
    let dir = env.work.path().join("ai");
    let d = Daemon::start(&env, &[&dir], &[]);
    let plugin = wait_ready(&env, &d, "plugin", "guard", Duration::from_secs(60));
    assert_eq!(plugin["status"]["manifest"]["version"], "1.0.0", "{plugin}");
    wait_ready(
        &env,
        &d,
        "pluginactivation",
        "guard-chat",
        Duration::from_secs(30),
    );
    wait_ready(
        &env,
        &d,
        "pluginactivation",
        "suffix-chat",
        Duration::from_secs(30),
    );
    wait_ready(&env, &d, "module", "chat", Duration::from_secs(120));
    wait_until("the bad plugin to stall", Duration::from_secs(30), || {
        get_json(&env, "plugin", "bad")
            .is_some_and(|o| condition(&o, "Stalled") == ("True".into(), "DigestMismatch".into()))
    });

    let url = d.url("/v1/chat/completions");
    let (code, e) = curl(&url, &chat("say something FORBIDDEN now"));
    assert_eq!(code, 403, "{e}\n{}", inventory(&env, &d));
    assert_eq!(e["error"]["code"], "plugin_denied", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("guard-chat"),
        "{e}"
    );
    let (code, ok) = curl(&url, &chat("hello"));
    assert_eq!(code, 200, "{ok}\n{}", d.log());
    let content = ok["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.ends_with(" [checked]"), "{ok}");
    // The inventory shows both hooks on the inference seam, with their calls.
    let inv = inventory(&env, &d);
    let inference = inv["seams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["seam"] == "inference")
        .unwrap();
    let calls = |a: &str| {
        inference["active"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["activation"] == a)
            .unwrap()["calls"]
            .as_u64()
            .unwrap()
    };
    assert_eq!((calls("guard-chat"), calls("suffix-chat")), (2, 1), "{inv}");
    let hw = inv["seams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["seam"] == "hardware")
        .unwrap();
    assert_eq!(hw["pluggable"], true, "{inv}");
    assert_eq!(
        hw["accepts"],
        serde_json::json!(["hardwareProbes"]),
        "{inv}"
    );

    // The CLI: list, grants, inventory (from the daemon, with calls), and a dry run.
    let list = env.run(&["plugin", "list"]).ok().stdout;
    assert!(
        list.contains("guard") && list.contains("guard-chat"),
        "{list}"
    );
    let grants = env.run(&["plugin", "grants", "guard"]).ok().stdout;
    assert!(
        grants.contains("guard-chat") && grants.contains("current"),
        "{grants}"
    );
    let table = env.run(&["plugin", "inventory"]).ok().stdout;
    assert!(
        table.contains("guard-chat/guard") && table.contains("2/0"),
        "{table}"
    );
    let input = env.write(
        "input.json",
        r#"{"request": {"model": "tiny", "messages": [{"role": "user", "content": "a secret plan"}]}}"#,
    );
    let r = env
        .run(&[
            "plugin",
            "test",
            "guard",
            "guard",
            "--input",
            input.to_str().unwrap(),
            "--config",
            r#"{"patterns": ["SECRET"]}"#,
        ])
        .ok();
    let t: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(t["output"]["action"], "deny", "{t}");
    assert!(t["fuelUsed"].as_u64().unwrap() > 0, "{t}");
    let r = env
        .run(&[
            "plugin",
            "test",
            "guard",
            "guard",
            "--input",
            input.to_str().unwrap(),
            "--config",
            r#"{"patterns": 1}"#,
        ])
        .fails();
    assert!(r.stderr.contains("config.patterns"), "{}", r.stderr);

    // An upgrade that requests `log`, which the activation does not grant: the old digest
    // keeps serving until the grant is given.
    let v2 = write_guard(&env.work.path().join("g2"), "2.0.0", "[log]", "");
    env.write(
        "ai/guard.yaml",
        &plugin_doc("guard", &v2, &sha256_file(&v2)),
    );
    wait_until(
        "the activation to wait for approval",
        Duration::from_secs(30),
        || {
            get_json(&env, "pluginactivation", "guard-chat").is_some_and(|o| {
                condition(&o, "Granted") == ("False".into(), "NewCapabilitiesRequested".into())
            })
        },
    );
    let a = get_json(&env, "pluginactivation", "guard-chat").unwrap();
    assert_eq!(a["status"]["boundDigest"], sha256_file(&v1), "{a}");
    let (code, _) = curl(&url, &chat("forbidden"));
    assert_eq!(code, 403, "the old digest still guards");

    env.write(
        "ai/guard-act.yaml",
        &activation_doc("guard", "[log]", "[forbidden]"),
    );
    wait_until("the upgrade to be bound", Duration::from_secs(30), || {
        get_json(&env, "pluginactivation", "guard-chat").is_some_and(|o| {
            o["status"]["boundDigest"] == sha256_file(&v2) && condition(&o, "Granted").0 == "True"
        })
    });
    let (code, _) = curl(&url, &chat("forbidden"));
    assert_eq!(code, 403, "the new digest guards");
    let (code, _) = curl(&url, &chat("fine"));
    assert_eq!(code, 200);

    // A declarative sampling profile (no code): a logit bias the real engine honours. Token 93
    // is the byte token of "Z" in the test model's vocabulary.
    let profile = env.work.path().join("z/plugin.yaml");
    std::fs::create_dir_all(profile.parent().unwrap()).unwrap();
    std::fs::write(
        &profile,
        "apiVersion: plugins.localaistack.io/v1alpha1
kind: PluginManifest
metadata: {name: zed}
spec:
  version: 0.1.0
  hostApi: \"^1\"
  runtime: {type: declarative}
  contributes:
    samplingProfiles:
    - {id: zed, logitBias: {\"93\": 100}, stop: [\"never-seen\"]}
",
    )
    .unwrap();
    env.write(
        "ai/zed.yaml",
        &plugin_doc("zed", &profile, &sha256_file(&profile)),
    );
    env.write(
        "ai/zed-act.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: PluginActivation\nmetadata: {name: zed}\nspec:\n  pluginRef: zed\n  contributions: [zed]\n  scope: {models: {architectures: [llama]}}\n",
    );
    wait_ready(&env, &d, "pluginactivation", "zed", Duration::from_secs(30));
    let (code, z) = curl(&url, &chat("fine"));
    assert_eq!(code, 200, "{z}");
    let content = z["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.starts_with("ZZZZ"), "{z}");

    // An admission check (a change freeze on Modules): at apply, through the CLI, bad input
    // changes nothing; other kinds and unchanged Modules pass.
    let freeze = repo("plugins/change-freeze.plugin.yaml");
    env.write(
        "freeze/plugin.yaml",
        &plugin_doc("freeze", &freeze, &sha256_file(&freeze)),
    );
    env.write(
        "freeze/act.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: PluginActivation\nmetadata: {name: freeze}\nspec:\n  pluginRef: freeze\n  contributions: [freeze]\n",
    );
    let fdir = env.work.path().join("freeze");
    env.run(&["apply", "-f", fdir.to_str().unwrap()]).ok();
    wait_ready(
        &env,
        &d,
        "pluginactivation",
        "freeze",
        Duration::from_secs(30),
    );
    let m = env.write(
        "new/web.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {name: web}\nspec:\n  native: {command: [/bin/sleep, '600']}\n",
    );
    let r = env.run(&["apply", "-f", m.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains("web.yaml")
            && r.stderr.contains("spec")
            && r.stderr.contains("change freeze"),
        "{}",
        r.stderr
    );
    assert!(get_json(&env, "module", "web").is_none());
    let chat = env.work.path().join("ai/chat.yaml");
    env.run(&["apply", "-f", chat.to_str().unwrap()]).ok();
}

#[test]
fn example_plugin_manifests_pin_the_committed_wasm() {
    let guard = std::fs::read_to_string(repo("examples/plugins/guard.yaml")).unwrap();
    assert!(
        guard.contains(&sha256_file(&repo("plugins/prompt-guard.plugin.yaml"))),
        "examples/plugins/guard.yaml does not pin plugins/prompt-guard.plugin.yaml: update its sha256"
    );
    for (manifest, wasm) in [
        (
            "plugins/prompt-guard.plugin.yaml",
            "plugins/prompt_guard.wasm",
        ),
        (
            "plugins/response-suffix.plugin.yaml",
            "plugins/response_suffix.wasm",
        ),
        (
            "plugins/change-freeze.plugin.yaml",
            "plugins/change_freeze.wasm",
        ),
        ("plugins/event-log.plugin.yaml", "plugins/event_log.wasm"),
        (
            "plugins/event-log.plugin.yaml",
            "plugins/event_log_panel.html",
        ),
        ("plugins/npu-probe.plugin.yaml", "plugins/npu_probe.wasm"),
        (
            "plugins/workflow-demo.plugin.yaml",
            "plugins/workflow_demo.wasm",
        ),
    ] {
        let text = std::fs::read_to_string(repo(manifest)).unwrap();
        assert!(
            text.contains(&sha256_file(&repo(wasm))),
            "{manifest} does not pin the sha256 of {wasm}: update it"
        );
    }
}

/// A model verifier (here one that refuses every model) keeps a Model from Ready with the reason;
/// deleting its activation lets the Model through.
#[test]
fn a_model_verifier_refuses_a_model_until_its_activation_goes() {
    let env = FreshEnv::new();
    let dir = env.work.path().join("v");
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = dir.join("change_freeze.wasm");
    std::fs::copy(repo("plugins/change_freeze.wasm"), &wasm).unwrap();
    let manifest = dir.join("plugin.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: plugins.localaistack.io/v1alpha1
kind: PluginManifest
metadata: {{name: no-models}}
spec:
  version: 1.0.0
  hostApi: \"^1\"
  runtime:
    type: wasm
    artifacts: [{{name: module, path: change_freeze.wasm, sha256: {}}}]
  contributes:
    modelVerifiers: [{{id: refuse, entry: admit}}]
",
            sha256_file(&wasm)
        ),
    )
    .unwrap();
    let gguf = env.work.path().join("tiny.gguf");
    env.run(&[
        "model",
        "generate-test",
        gguf.to_str().unwrap(),
        "--preset",
        "tiny",
    ])
    .ok();
    let plugins = env.write(
        "p/plugin.yaml",
        &(plugin_doc("verifier", &manifest, &sha256_file(&manifest))
            + "---\napiVersion: localaistack.io/v1alpha1\nkind: PluginActivation\nmetadata: {name: verifier}\nspec:\n  pluginRef: verifier\n  contributions: [refuse]\n  scope: {models: {architectures: [llama]}}\n"),
    );
    let d = Daemon::start(&env, &[], &[]);
    env.run(&["apply", "-f", plugins.to_str().unwrap()]).ok();
    wait_ready(
        &env,
        &d,
        "pluginactivation",
        "verifier",
        Duration::from_secs(30),
    );
    let model = env.write(
        "m/model.yaml",
        &support::model_doc("tiny", gguf.to_str().unwrap()),
    );
    env.run(&["apply", "-f", model.to_str().unwrap()]).ok();
    wait_until(
        "the verifier to refuse the model",
        Duration::from_secs(30),
        || {
            get_json(&env, "model", "tiny").is_some_and(|o| {
                condition(&o, "Stalled") == ("True".into(), "VerifierDenied".into())
            })
        },
    );
    env.run(&["delete", "pa/verifier"]).ok();
    wait_ready(&env, &d, "model", "tiny", Duration::from_secs(30));
}

/// Hostile hooks on `/v1`: an infinite loop ends on its timeout and, failing closed, denies the
/// request; under `failurePolicy: Ignore` the request goes through; the breaker opens after
/// repeated failures; a module importing an ungranted host function never activates; the daemon
/// keeps serving throughout.
#[test]
fn misbehaving_hooks_fail_per_their_policy_and_the_daemon_keeps_serving() {
    let env = FreshEnv::new();
    let write_plugin = |name: &str, wat: &str, entry: &str, requests: &str| {
        let dir = env.work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let wasm = dir.join("m.wasm");
        std::fs::write(&wasm, wat::parse_file(repo(wat)).unwrap()).unwrap();
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
    artifacts: [{{name: module, path: m.wasm, sha256: {}}}]
  contributes:
    inferenceHooks: [{{id: hook, stage: preRequest, entry: {entry}}}]
  requests: {requests}
",
                sha256_file(&wasm)
            ),
        )
        .unwrap();
        plugin_doc(name, &manifest, &sha256_file(&manifest))
    };
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
    env.write(
        "ai/loop.yaml",
        &write_plugin(
            "spinner",
            "plugins/testdata/infinite_loop.wat",
            "spin",
            "[]",
        ),
    );
    env.write(
        "ai/loop-act.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: PluginActivation\nmetadata: {name: spinner}\nspec:\n  pluginRef: spinner\n  contributions: [hook]\n  limits: {timeoutMs: 50, fuel: 1000000000}\n",
    );
    env.write(
        "ai/clock.yaml",
        &write_plugin(
            "clocky",
            "plugins/testdata/ungranted_clock.wat",
            "now",
            "[clock]",
        ),
    );
    env.write(
        "ai/clock-act.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: PluginActivation\nmetadata: {name: clocky}\nspec:\n  pluginRef: clocky\n  contributions: [hook]\n",
    );
    let dir = env.work.path().join("ai");
    let d = Daemon::start(&env, &[&dir], &[]);
    wait_ready(&env, &d, "module", "chat", Duration::from_secs(120));
    wait_ready(
        &env,
        &d,
        "pluginactivation",
        "spinner",
        Duration::from_secs(30),
    );
    // Granted nothing, the clock-importing module is refused, naming the capability.
    wait_until(
        "the ungranted import to stall its activation",
        Duration::from_secs(30),
        || {
            get_json(&env, "pluginactivation", "clocky").is_some_and(|o| {
                let (s, r) = condition(&o, "Stalled");
                s == "True" && r == "UngrantedImport" && o.to_string().contains("clock")
            })
        },
    );

    let url = d.url("/v1/chat/completions");
    for _ in 0..5 {
        let (code, e) = curl(&url, &chat("hello"));
        assert_eq!(code, 403, "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains("spinner"),
            "{e}"
        );
    }
    // Five failures in a row: the breaker is open, and the inventory says so.
    let inv = inventory(&env, &d);
    assert!(inv.to_string().contains("\"breaker\":\"open\""), "{inv}");
    // ... and the activation's status, at its next statistics copy.
    wait_until(
        "the activation to be Degraded",
        Duration::from_secs(40),
        || {
            get_json(&env, "pluginactivation", "spinner").is_some_and(|o| {
                condition(&o, "Degraded") == ("True".into(), "BreakerOpen".into())
                    && o["status"]["stats"]["failures"].as_u64() >= Some(5)
            })
        },
    );
    env.write(
        "ai/loop-act.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: PluginActivation\nmetadata: {name: spinner}\nspec:\n  pluginRef: spinner\n  contributions: [hook]\n  failurePolicy: Ignore\n  limits: {timeoutMs: 50}\n",
    );
    wait_until("Ignore to take effect", Duration::from_secs(30), || {
        curl(&url, &chat("hello")).0 == 200
    });
    let health = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &d.url("/healthz"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "200");
}

/// A model source for a custom scheme (`lab://`): the plugin resolves the URI to a URL and a
/// sha256, the host downloads and verifies from a local HTTP server, and the resolution is pinned
/// in status, so the Model stays Ready after the plugin is gone and the daemon restarts.
#[test]
fn a_model_source_plugin_resolves_a_custom_scheme_and_the_resolution_is_pinned() {
    let env = FreshEnv::new();
    let served = env.work.path().join("srv");
    std::fs::create_dir_all(&served).unwrap();
    let gguf = served.join("tiny.gguf");
    env.run(&[
        "model",
        "generate-test",
        gguf.to_str().unwrap(),
        "--preset",
        "tiny",
    ])
    .ok();
    let port = support::daemon::free_port();
    let mut http = std::process::Command::new("python3");
    http.args([
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ])
    .arg("--directory")
    .arg(&served)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let _server = support::ChildGuard::spawn(http);
    // The resolver answers with a fixed (url, sha256): a plugin built for this test's server.
    let answer = format!(
        r#"{{"url":"http://127.0.0.1:{port}/tiny.gguf","sha256":"{}"}}"#,
        sha256_file(&gguf)
    );
    let wat = format!(
        r#"(module
  (memory (export "memory") 1)
  (data (i32.const 0) "{}")
  (global $heap (mut i32) (i32.const 4096))
  (func (export "las_alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $len)))
    (drop (memory.grow (i32.add (i32.shr_u (local.get $len) (i32.const 16)) (i32.const 1))))
    (local.get $p))
  (func (export "resolve") (param i32 i32) (result i64) (i64.const {})))"#,
        answer.replace('"', "\\\""),
        answer.len()
    );
    let pdir = env.work.path().join("lab");
    std::fs::create_dir_all(&pdir).unwrap();
    let wasm = pdir.join("lab.wasm");
    std::fs::write(&wasm, wat::parse_str(&wat).unwrap()).unwrap();
    let manifest = pdir.join("plugin.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: plugins.localaistack.io/v1alpha1
kind: PluginManifest
metadata: {{name: lab}}
spec:
  version: 1.0.0
  hostApi: \"^1\"
  runtime:
    type: wasm
    artifacts: [{{name: module, path: lab.wasm, sha256: {}}}]
  contributes:
    modelSources: [{{id: lab, scheme: lab, entry: resolve}}]
",
            sha256_file(&wasm)
        ),
    )
    .unwrap();
    let plugin = env.write(
        "p/plugin.yaml",
        &(plugin_doc("lab", &manifest, &sha256_file(&manifest))
            + "---\napiVersion: localaistack.io/v1alpha1\nkind: PluginActivation\nmetadata: {name: lab}\nspec:\n  pluginRef: lab\n  contributions: [lab]\n"),
    );
    let model = env.write(
        "m/model.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata: {name: tiny}\nspec:\n  source: lab://models/tiny\n",
    );
    let mut d = Daemon::start(&env, &[], &[]);
    env.run(&["apply", "-f", plugin.to_str().unwrap()]).ok();
    wait_ready(&env, &d, "pluginactivation", "lab", Duration::from_secs(30));
    env.run(&["apply", "-f", model.to_str().unwrap()]).ok();
    let m = wait_ready(&env, &d, "model", "tiny", Duration::from_secs(60));
    assert_eq!(m["status"]["digest"], sha256_file(&gguf), "{m}");
    assert_eq!(
        m["status"]["resolvedSource"]["uri"], "lab://models/tiny",
        "{m}"
    );
    assert_eq!(m["status"]["resolvedSource"]["activation"], "lab", "{m}");

    // Neither the plugin nor the network is needed any more.
    env.run(&["delete", "pa/lab", "plugin/lab"]).ok();
    drop(_server);
    d.kill9();
    let d = Daemon::start(&env, &[], &[]);
    wait_until(
        "the daemon to look at the model again",
        Duration::from_secs(10),
        || get_json(&env, "pluginactivation", "lab").is_none(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let m = wait_ready(&env, &d, "model", "tiny", Duration::from_secs(30));
    assert_eq!(m["status"]["digest"], sha256_file(&gguf), "{m}");
    let events = env.run(&["events", "model/tiny"]).ok().stdout;
    assert!(
        !events.contains("NoModelSource") && !events.contains("SourceUnavailable"),
        "{events}"
    );
}

/// One URI scheme, one resolver: a second activation claiming `lab://` is refused at apply with
/// the field path, in the same apply and against a stored one.
#[test]
fn a_scheme_claimed_twice_is_refused_at_apply() {
    let env = FreshEnv::new();
    let dir = env.work.path().join("src");
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = dir.join("m.wasm");
    std::fs::copy(repo("plugins/prompt_guard.wasm"), &wasm).unwrap();
    let manifest = dir.join("plugin.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: plugins.localaistack.io/v1alpha1
kind: PluginManifest
metadata: {{name: lab}}
spec:
  version: 1.0.0
  hostApi: \"^1\"
  runtime:
    type: wasm
    artifacts: [{{name: module, path: m.wasm, sha256: {}}}]
  contributes:
    modelSources: [{{id: lab, scheme: lab, entry: pre_request}}]
",
            sha256_file(&wasm)
        ),
    )
    .unwrap();
    let act = |name: &str| {
        format!(
            "apiVersion: localaistack.io/v1alpha1\nkind: PluginActivation\nmetadata: {{name: {name}}}\nspec:\n  pluginRef: lab\n  contributions: [lab]\n"
        )
    };
    env.write(
        "a/plugin.yaml",
        &plugin_doc("lab", &manifest, &sha256_file(&manifest)),
    );
    env.write("a/one.yaml", &act("one"));
    env.write("a/two.yaml", &act("two"));
    let a = env.work.path().join("a");
    let r = env.run(&["apply", "-f", a.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains("two.yaml")
            && r.stderr.contains("spec.contributions[0]")
            && r.stderr.contains("lab://"),
        "{}",
        r.stderr
    );
    std::fs::remove_file(a.join("two.yaml")).unwrap();
    env.run(&["apply", "-f", a.to_str().unwrap()]).ok();
    let two = env.write("b/two.yaml", &act("two"));
    let r = env.run(&["apply", "-f", two.to_str().unwrap()]).fails();
    assert!(
        r.stderr
            .contains("already resolved by plugin activation one"),
        "{}",
        r.stderr
    );
    // Re-applying the claimant itself is fine.
    env.run(&["apply", "-f", a.join("one.yaml").to_str().unwrap()])
        .ok();
}

/// Plugins are desired state like the rest: an activation's change rolls back with its
/// generation, and `apply --prune` removes what the directory lost.
#[test]
fn plugins_roll_back_and_prune_with_everything_else() {
    let env = FreshEnv::new();
    let manifest = write_guard(&env.work.path().join("guard"), "1.0.0", "[]", "");
    let sha = sha256_file(&manifest);
    env.write("s/plugin.yaml", &plugin_doc("guard", &manifest, &sha));
    env.write("s/activation.yaml", &activation_doc("guard", "[]", "[one]"));
    let dir = env.work.path().join("s");
    let d = dir.to_str().unwrap();
    env.run(&["apply", "--prune", "-f", d]).ok();
    env.write("s/activation.yaml", &activation_doc("guard", "[]", "[two]"));
    env.run(&["apply", "--prune", "-f", d]).ok();
    let config = |env: &FreshEnv| {
        let a: Value = serde_json::from_str(
            &env.run(&["get", "pa", "guard-chat", "-o", "json"])
                .ok()
                .stdout,
        )
        .unwrap();
        a["spec"]["config"]["patterns"][0]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(config(&env), "two");
    env.run(&["rollback"]).ok();
    assert_eq!(config(&env), "one");
    std::fs::remove_file(dir.join("activation.yaml")).unwrap();
    env.run(&["apply", "--prune", "-f", d]).ok();
    assert!(env.run(&["get", "pa", "-o", "name"]).ok().stdout.is_empty());
    assert_eq!(
        env.run(&["get", "plugins", "-o", "name"])
            .ok()
            .stdout
            .trim(),
        "plugin/guard"
    );
}

/// A manifest's `bootstrap` (contributions its author proposes by default) runs without an
/// activation only where the active Policy tier allows auto-activation.
#[test]
fn bootstrap_contributions_run_only_where_the_tier_allows_auto_activation() {
    let env = FreshEnv::new();
    let dir = env.work.path().join("freeze");
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = dir.join("change_freeze.wasm");
    std::fs::copy(repo("plugins/change_freeze.wasm"), &wasm).unwrap();
    let text = std::fs::read_to_string(repo("plugins/change-freeze.plugin.yaml")).unwrap()
        + "  bootstrap: {activate: [freeze]}\n";
    let manifest = dir.join("plugin.yaml");
    std::fs::write(&manifest, text).unwrap();
    let plugin = env.write(
        "p/plugin.yaml",
        &plugin_doc("freeze", &manifest, &sha256_file(&manifest)),
    );
    let module = |name: &str| {
        env.write(
            &format!("m/{name}.yaml"),
            &format!("apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {{name: {name}}}\nspec:\n  suspend: true\n  native: {{command: [/bin/sleep, '600']}}\n"),
        )
    };
    let d = Daemon::start(&env, &[], &[]);
    env.run(&["apply", "-f", plugin.to_str().unwrap()]).ok();
    let p = wait_ready(&env, &d, "plugin", "freeze", Duration::from_secs(30));
    assert_eq!(p["status"]["manifest"]["bootstrap"][0], "freeze", "{p}");
    assert!(
        p["status"]["bootstrap"].is_null(),
        "the default tier does not auto-activate: {p}"
    );
    env.run(&["apply", "-f", module("one").to_str().unwrap()])
        .ok();

    let policy = env.write(
        "pol.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: Policy\nmetadata: {name: lab}\nspec:\n  tiers:\n  - name: lab\n    capabilities: {allowPluginAutoActivation: true}\n",
    );
    env.run(&["apply", "-f", policy.to_str().unwrap()]).ok();
    wait_until(
        "the tier to allow the bootstrap",
        Duration::from_secs(30),
        || {
            get_json(&env, "plugin", "freeze")
                .is_some_and(|p| p["status"]["bootstrap"]["active"][0] == "freeze")
        },
    );
    let r = env
        .run(&["apply", "-f", module("two").to_str().unwrap()])
        .fails();
    assert!(
        r.stderr.contains("freeze/bootstrap") && r.stderr.contains("change freeze"),
        "{}",
        r.stderr
    );
    assert!(get_json(&env, "module", "two").is_none());
}
