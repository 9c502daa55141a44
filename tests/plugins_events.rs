//! Event sinks, published events, hardware probes and UI panels (issue 14) end to end: the real
//! `lasctl` and the real daemon, the example plugins of `plugins/` and hostile ones built here.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::Digest;
use support::FreshEnv;
use support::daemon::{Daemon, get_json, wait_ready, wait_until};

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

fn activation_doc(name: &str, plugin: &str, contributions: &str, grants: &str) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: PluginActivation\nmetadata: {{name: {name}}}\nspec:\n  pluginRef: {plugin}\n  contributions: {contributions}\n  grants: {grants}\n"
    )
}

/// A wasm plugin built here from `wat`, with a manifest whose `contributes` is `contributes`.
fn write_plugin(dir: &Path, name: &str, wat: &str, contributes: &str, requests: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let wasm = dir.join(format!("{name}.wasm"));
    std::fs::write(&wasm, wat::parse_str(wat).unwrap()).unwrap();
    let manifest = dir.join(format!("{name}.plugin.yaml"));
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: plugins.localaistack.io/v1alpha1\nkind: PluginManifest\nmetadata: {{name: {name}}}\nspec:\n  version: 1.0.0\n  hostApi: \"^1\"\n  runtime:\n    type: wasm\n    artifacts:\n    - {{name: module, path: {name}.wasm, sha256: {}}}\n  contributes:\n{contributes}\n  requests: {requests}\n",
            sha256_file(&wasm)
        ),
    )
    .unwrap();
    manifest
}

/// The guest ABI's boilerplate around one entry `name` whose body is `body` (locals $ptr, $len).
fn module_with(name: &str, body: &str) -> String {
    format!(
        r#"(module
  (memory (export "memory") 1)
  (data (i32.const 0) "{{\"ok\":true}}")
  (data (i32.const 32) "{{\"nested\":{{\"a\":1}}}}")
  (func (export "las_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "{name}") (param $ptr i32) (param $len i32) (result i64)
    {body}))"#
    )
}

/// `POST path` with a JSON body over TCP; the token and an Origin when given. Status and body.
fn post(
    d: &Daemon,
    path: &str,
    body: &str,
    token: Option<&str>,
    origin: Option<&str>,
) -> (u16, Value) {
    let mut c = std::process::Command::new("curl");
    c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"])
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(o) = origin {
        c.args(["-H", &format!("Origin: {o}")]);
    }
    let out = c.arg(d.url(path)).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn token(env: &FreshEnv) -> String {
    std::fs::read_to_string(env.home_path().join("run/token"))
        .unwrap()
        .trim()
        .to_string()
}

fn publish(env: &FreshEnv, d: &Daemon, reason: &str, message: &str) -> Value {
    let (code, e) = post(
        d,
        "/api/v1/events",
        &json!({"type": "Normal", "reason": reason, "message": message}).to_string(),
        Some(&token(env)),
        None,
    );
    assert_eq!(code, 201, "{e}");
    e
}

fn inventory(env: &FreshEnv, d: &Daemon) -> Value {
    let out = std::process::Command::new("curl")
        .args(["-s", "-H", &format!("Authorization: Bearer {}", token(env))])
        .arg(d.url("/api/v1/plugins/inventory"))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The live statistics of `activation` in the inventory's seam `seam`.
fn live(env: &FreshEnv, d: &Daemon, seam: &str, activation: &str) -> Value {
    inventory(env, d)["seams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["seam"] == seam)
        .and_then(|s| {
            s["active"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["activation"] == activation)
                .cloned()
        })
        .unwrap_or(Value::Null)
}

/// The lines the sink of `activation` logged (one per event it was handed) that mention `what`.
fn sink_lines(d: &Daemon, activation: &str, what: &str) -> Vec<String> {
    d.log()
        .lines()
        .filter(|l| {
            l.contains("\"event\":")
                && l.contains(&format!("activation={activation}"))
                && l.contains(what)
        })
        .map(String::from)
        .collect()
}

/// Distinct messages that the event log does not fold into one series (no digits, no hex).
fn word(i: usize) -> String {
    i.to_string()
        .bytes()
        .map(|b| (b'g' + (b - b'0')) as char)
        .collect()
}

#[test]
fn an_event_sink_sees_metadata_until_content_is_granted_and_published_events_are_checked() {
    let env = FreshEnv::new();
    let manifest = repo("plugins/event-log.plugin.yaml");
    env.write("p/plugin.yaml", &plugin_doc("events", &manifest));
    env.write(
        "p/act.yaml",
        &activation_doc("sink-a", "events", "[log, recent]", "[log]"),
    );
    let d = Daemon::start(&env, &[], &[]);
    env.run(&["apply", "-f", env.work.path().join("p").to_str().unwrap()])
        .ok();
    wait_ready(
        &env,
        &d,
        "pluginactivation",
        "sink-a",
        Duration::from_secs(60),
    );

    // Metadata only: type, reason, involved object, time, count — not the message.
    let e = publish(&env, &d, "SinkCheck", "first secret words");
    assert_eq!(e["source"], "published", "{e}");
    assert_eq!(e["kind"], "Host", "{e}");
    wait_until("the sink logs the event", Duration::from_secs(20), || {
        !sink_lines(&d, "sink-a", "\"reason\":\"SinkCheck\"").is_empty()
    });
    let lines = sink_lines(&d, "sink-a", "\"reason\":\"SinkCheck\"");
    assert!(
        lines.iter().all(|l| !l.contains("first secret words")
            && l.contains(r#""involvedObject":{"kind":"Host","name":"local"}"#)
            && l.contains(r#""count":1"#)
            && l.contains(r#""source":"published""#)),
        "{lines:#?}"
    );

    // `content` granted: the message too.
    env.write(
        "p/act.yaml",
        &activation_doc("sink-a", "events", "[log, recent]", "[log, content]"),
    );
    env.run(&["apply", "-f", env.work.path().join("p").to_str().unwrap()])
        .ok();
    wait_until("content is granted", Duration::from_secs(30), || {
        get_json(&env, "pluginactivation", "sink-a").is_some_and(|o| {
            o["status"]["effectiveGrants"]
                .as_array()
                .is_some_and(|g| g.contains(&json!("content")))
                && o["status"]["observedGeneration"] == o["metadata"]["generation"]
        })
    });
    publish(&env, &d, "SinkCheckTwo", "second visible words");
    wait_until("the sink logs the message", Duration::from_secs(20), || {
        !sink_lines(&d, "sink-a", "second visible words").is_empty()
    });

    // `lasctl events publish` does the same through the daemon's socket; bad input is refused
    // before it is sent.
    let r = env
        .run(&[
            "events",
            "publish",
            "DiskSlow",
            "fsync took long",
            "--type",
            "Warning",
            "--object",
            "Module/chat",
        ])
        .ok();
    assert!(r.stdout.starts_with("event "), "{}", r.stdout);
    let r = env.run(&["events", "publish", "not camel", "x"]).fails();
    assert!(r.stderr.contains("reason"), "{}", r.stderr);

    // Published events are in `lasctl events`, marked.
    let listed = env.run(&["events"]).ok().stdout;
    assert!(
        listed.contains("SinkCheckTwo") && listed.contains("[published] second visible words"),
        "{listed}"
    );
    assert!(
        listed.lines().any(|l| l.contains("Warning")
            && l.contains("module/chat")
            && l.contains("[published] fsync took long")),
        "{listed}"
    );

    // Bad input: 422 naming the fields, nothing recorded.
    let (code, body) = post(
        &d,
        "/api/v1/events",
        r#"{"type": "Info", "reason": "not camel", "message": "m", "involvedObject": {"kind": "Module", "name": "Bad_Name"}}"#,
        Some(&token(&env)),
        None,
    );
    assert_eq!(code, 422, "{body}");
    let fields: Vec<&str> = body["details"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["type", "reason", "involvedObject.name"], "{body}");
    // Without a token over TCP: 401; a foreign Origin: 403.
    let good = r#"{"type": "Warning", "reason": "Refused", "message": "never recorded"}"#;
    assert_eq!(post(&d, "/api/v1/events", good, None, None).0, 401);
    assert_eq!(
        post(
            &d,
            "/api/v1/events",
            good,
            Some(&token(&env)),
            Some("https://evil.example")
        )
        .0,
        403
    );
    let listed = env.run(&["events"]).ok().stdout;
    assert!(
        !listed.contains("never recorded") && !listed.contains("not camel"),
        "{listed}"
    );

    // The UI panel: inventoried with the digest of its verified artifact, under uiHost.
    let inv = inventory(&env, &d);
    let plugin = inv["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "events")
        .unwrap()
        .clone();
    let panel = &plugin["uiPanels"][0];
    assert_eq!(panel["id"], "recent", "{plugin}");
    assert_eq!(panel["seam"], "uiHost");
    assert_eq!(
        panel["digest"],
        sha256_file(&repo("plugins/event_log_panel.html")),
        "{plugin}"
    );
    let sink = live(&env, &d, "eventBus", "sink-a");
    assert!(sink["delivered"].as_u64().unwrap() >= 2, "{sink}");
    assert_eq!(sink["dropped"], 0, "{sink}");
}

#[test]
fn a_slow_sink_drops_its_oldest_events_and_counts_them_while_others_get_every_one() {
    let env = FreshEnv::new();
    // About 200 million instructions per event (a few hundred ms), a queue of 2, only the burst's events.
    let slow = write_plugin(
        &env.work.path().join("slow"),
        "slow-sink",
        &module_with(
            "on_event",
            "(local $i i32)
    (loop $spin
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $spin (i32.lt_u (local.get $i) (i32.const 50000000))))
    (i64.const 11)",
        ),
        "    eventSinks:\n    - {id: slow, entry: on_event, reasons: [Burst], queueSize: 2}",
        "[]",
    );
    env.write("p/slow.yaml", &plugin_doc("slow", &slow));
    env.write(
        "p/slow-act.yaml",
        &(activation_doc("slow", "slow", "[slow]", "[]")
            + "  limits: {fuel: 1000000000, timeoutMs: 20000}\n"),
    );
    env.write(
        "p/log.yaml",
        &plugin_doc("events", &repo("plugins/event-log.plugin.yaml")),
    );
    env.write(
        "p/log-act.yaml",
        &activation_doc("all", "events", "[log]", "[log]"),
    );
    let d = Daemon::start(&env, &[], &[]);
    env.run(&["apply", "-f", env.work.path().join("p").to_str().unwrap()])
        .ok();
    wait_ready(
        &env,
        &d,
        "pluginactivation",
        "slow",
        Duration::from_secs(60),
    );
    wait_ready(&env, &d, "pluginactivation", "all", Duration::from_secs(60));
    let before = live(&env, &d, "eventBus", "all")["delivered"]
        .as_u64()
        .unwrap_or(0);

    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let t = Instant::now();
        publish(&env, &d, "Burst", &format!("burst {}", word(i)));
        slowest = slowest.max(t.elapsed());
    }
    // Publishing never waits for a sink.
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");

    // Every burst event is either delivered or dropped (the oldest first), and some were dropped.
    wait_until("the slow sink settles", Duration::from_secs(60), || {
        let s = live(&env, &d, "eventBus", "slow");
        s["delivered"].as_u64().unwrap_or(0) + s["dropped"].as_u64().unwrap_or(0) == 30
    });
    let s = live(&env, &d, "eventBus", "slow");
    assert!(s["dropped"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["failures"], 0, "{s}");
    // The other sink got all 30.
    wait_until(
        "the other sink gets every event",
        Duration::from_secs(30),
        || {
            live(&env, &d, "eventBus", "all")["delivered"]
                .as_u64()
                .unwrap_or(0)
                >= before + 30
        },
    );
    assert_eq!(live(&env, &d, "eventBus", "all")["dropped"], 0);
    assert!(
        sink_lines(&d, "all", "\"reason\":\"Burst\"").len() >= 30,
        "the other sink logged every burst event"
    );

    // The drops reach the activation's status (copied every 15 s).
    wait_until("drops in status", Duration::from_secs(40), || {
        get_json(&env, "pluginactivation", "slow").is_some_and(|o| {
            o["status"]["stats"]["dropped"].as_u64().unwrap_or(0) >= 1
                && o["status"]["stats"]["delivered"].as_u64().unwrap_or(0)
                    + o["status"]["stats"]["dropped"].as_u64().unwrap_or(0)
                    == 30
        })
    });
    // The daemon is unaffected.
    let health = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(d.url("/healthz"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "200");
}

#[test]
fn a_failing_sink_opens_its_breaker_once_and_its_failures_do_not_loop() {
    let env = FreshEnv::new();
    let bad = write_plugin(
        &env.work.path().join("bad"),
        "trap-sink",
        &module_with("on_event", "(unreachable)"),
        "    eventSinks:\n    - {id: trap, entry: on_event, reasons: [Poke]}",
        "[]",
    );
    env.write("p/bad.yaml", &plugin_doc("bad", &bad));
    env.write("p/act.yaml", &activation_doc("bad", "bad", "[trap]", "[]"));
    let d = Daemon::start(&env, &[], &[]);
    env.run(&["apply", "-f", env.work.path().join("p").to_str().unwrap()])
        .ok();
    wait_ready(&env, &d, "pluginactivation", "bad", Duration::from_secs(60));
    for i in 0..8 {
        publish(&env, &d, "Poke", &format!("poke {}", word(i)));
    }
    wait_until("the breaker opens", Duration::from_secs(30), || {
        live(&env, &d, "eventBus", "bad")["breaker"] == "open"
    });
    // Settled: nothing more happens by itself — no calls, no events.
    std::thread::sleep(Duration::from_secs(2));
    let calls = live(&env, &d, "eventBus", "bad")["calls"].clone();
    let events = env.run(&["events"]).ok().stdout;
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(live(&env, &d, "eventBus", "bad")["calls"], calls);
    let later = env.run(&["events"]).ok().stdout;
    assert_eq!(
        events.lines().count(),
        later.lines().count(),
        "events kept coming:\n{later}"
    );
    let failing: Vec<&str> = later
        .lines()
        .filter(|l| l.contains("SinkFailing"))
        .collect();
    assert_eq!(failing.len(), 1, "{later}");
    assert!(
        !failing[0].contains("(x") && failing[0].contains("[eventBus]"),
        "{later}"
    );
    assert_eq!(
        calls,
        json!(5),
        "five failures open the breaker; later events are skipped"
    );
    let s = live(&env, &d, "eventBus", "bad");
    assert_eq!(s["dropped"], 3, "{s}");
    // The daemon still records and serves.
    publish(&env, &d, "StillHere", "after the breaker");
}

#[test]
fn a_probe_adds_facts_a_policy_selects_a_tier_by_and_a_failing_probe_is_a_note() {
    let env = FreshEnv::new();
    // A fake PCI bus: the made-up accelerator and an ordinary device.
    let pci = env.work.path().join("pci");
    for (slot, vendor, device, class) in [
        ("0000:03:00.0", "0x1ab2", "0x0001", "0x120000"),
        ("0000:00:02.0", "0x8086", "0x1234", "0x030000"),
    ] {
        let d = pci.join(slot);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
        std::fs::write(d.join("device"), format!("{device}\n")).unwrap();
        std::fs::write(d.join("class"), format!("{class}\n")).unwrap();
    }
    let plain = env.work.path().join("pci-plain");
    std::fs::create_dir_all(plain.join("0000:00:02.0")).unwrap();
    for (f, v) in [
        ("vendor", "0x8086"),
        ("device", "0x1234"),
        ("class", "0x030000"),
    ] {
        std::fs::write(plain.join("0000:00:02.0").join(f), v).unwrap();
    }
    let broken = write_plugin(
        &env.work.path().join("broken"),
        "broken-probes",
        &module_with("trap", "(unreachable)").replace(
            "(func (export \"trap\")",
            "(func (export \"nested\") (param i32 i32) (result i64) (i64.or (i64.shl (i64.const 32) (i64.const 32)) (i64.const 18)))\n  (func (export \"trap\")",
        ),
        "    hardwareProbes:\n    - {id: crash, entry: trap}\n    - {id: nested, entry: nested}",
        "[]",
    );
    env.write(
        "p/npu.yaml",
        &plugin_doc("npu", &repo("plugins/npu-probe.plugin.yaml")),
    );
    env.write(
        "p/npu-act.yaml",
        &activation_doc("npu", "npu", "[npu]", "[]"),
    );
    env.write("p/broken.yaml", &plugin_doc("broken", &broken));
    env.write(
        "p/broken-act.yaml",
        &activation_doc("broken", "broken", "[crash, nested]", "[]"),
    );
    env.write(
        "p/policy.yaml",
        "apiVersion: localaistack.io/v1alpha1
kind: Policy
metadata: {name: accel}
spec:
  priority: 10
  tiers:
  - name: npu
    when: {fact: plugins.npu.npu.accelerators, op: \">=\", value: 1}
    capabilities: {allowedRuntimes: [native], maxRunningModels: 1}
  - name: plain
    capabilities: {allowedRuntimes: [native], maxRunningModels: 1}
",
    );
    let d = Daemon::start(&env, &[], &[]);
    env.run(&["apply", "-f", env.work.path().join("p").to_str().unwrap()])
        .ok();
    wait_ready(&env, &d, "pluginactivation", "npu", Duration::from_secs(60));
    wait_ready(
        &env,
        &d,
        "pluginactivation",
        "broken",
        Duration::from_secs(60),
    );

    let hardware = |dir: &Path| {
        let mut c = env.cmd();
        c.args(["hardware", "-o", "yaml"])
            .env("LAS_PCI_DEVICES", dir);
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_yaml::from_slice(&out.stdout).unwrap();
        v
    };
    let p = hardware(&pci);
    assert_eq!(p["plugins"]["npu"]["npu"]["accelerators"], 1, "{p}");
    assert_eq!(p["plugins"]["npu"]["npu"]["model"], "Acme NPU 1", "{p}");
    assert_eq!(p["tier"]["name"], "npu", "{p}");
    // Each failing probe is a note naming it; the profile is there all the same.
    let notes: Vec<&str> = p["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("hardware probe crash of plugin broken") && n.contains("trap")),
        "{notes:#?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("hardware probe nested of plugin broken")
                && n.contains("fact nested")),
        "{notes:#?}"
    );
    assert!(p["plugins"].get("broken").is_none(), "{p}");
    assert!(p["cpu"]["logicalCores"].as_u64().unwrap() >= 1);

    // `lasctl status` chooses the same tier.
    let mut c = env.cmd();
    c.arg("status").env("LAS_PCI_DEVICES", &pci);
    let status = String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned();
    assert!(status.contains("accel/npu"), "{status}");

    // Without the device: no accelerator, the next tier.
    let p = hardware(&plain);
    assert_eq!(p["plugins"]["npu"]["npu"]["accelerators"], 0, "{p}");
    assert_eq!(p["tier"]["name"], "plain", "{p}");
}

#[test]
fn a_panel_whose_bytes_changed_is_refused() {
    let env = FreshEnv::new();
    let dir = env.work.path().join("copy");
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "event-log.plugin.yaml",
        "event_log.wasm",
        "event_log_panel.html",
    ] {
        std::fs::copy(repo(&format!("plugins/{f}")), dir.join(f)).unwrap();
    }
    std::fs::write(
        dir.join("event_log_panel.html"),
        "<!doctype html><script>steal()</script>",
    )
    .unwrap();
    let manifest = dir.join("event-log.plugin.yaml");
    env.write("p/plugin.yaml", &plugin_doc("events", &manifest));
    let d = Daemon::start(&env, &[], &[]);
    env.run(&["apply", "-f", env.work.path().join("p").to_str().unwrap()])
        .ok();
    wait_until("the plugin stalls", Duration::from_secs(60), || {
        get_json(&env, "plugin", "events").is_some_and(|o| {
            o["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["reason"] == "DigestMismatch"))
        })
    });
    let o = get_json(&env, "plugin", "events").unwrap();
    assert!(
        o["status"]["conditions"].to_string().contains("panel"),
        "{o}"
    );
    let inv = inventory(&env, &d);
    assert!(
        inv["plugins"][0]["uiPanels"]
            .as_array()
            .is_none_or(|p| p.is_empty()),
        "{inv}"
    );
}
