//! WASM sandbox figures (not a test: prints numbers). Targets on the 2-core reference machine:
//! one trivial `pre_request` call of the prompt guard (compiled once, a fresh instance per call)
//! p50 < 200 µs; a plugin that burns all its fuel is stopped well within its timeout.
//! Exec plugins: the round trip of a small request through the line protocol (a persistent
//! process) against a process per call (one-shot).

use std::time::{Duration, Instant};

use localaistack::sandbox::{Engine, Grants, Limits, WasmiEngine};
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let plugins = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
    let engine = WasmiEngine::new();

    let wasm = std::fs::read(plugins.join("prompt_guard.wasm")).unwrap();
    let t = Instant::now();
    let guard = engine.compile(&wasm, &Grants::none()).unwrap();
    println!(
        "plugins: compile prompt_guard.wasm ({} bytes): {:?}",
        wasm.len(),
        t.elapsed()
    );

    let input = json!({
        "request": {"model": "tiny", "max_tokens": 16, "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ]},
        "config": {"patterns": ["ignore previous instructions", "rm -rf"]},
    });
    let limits = Limits::default();
    for _ in 0..200 {
        guard.call("pre_request", &input, &limits).unwrap();
    }
    let n = 5_000;
    let mut times = Vec::with_capacity(n);
    let mut fuel = 0;
    for _ in 0..n {
        let t = Instant::now();
        let out = guard.call("pre_request", &input, &limits).unwrap();
        times.push(t.elapsed());
        fuel = out.fuel_used;
        assert_eq!(out.output["action"], "allow");
    }
    times.sort();
    println!(
        "plugins: pre_request (prompt guard, 2 messages, 2 patterns) x{n}: p50 {:?}, p99 {:?}, max {:?}, fuel {fuel}",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[n - 1],
    );

    // The same hook as the daemon's `/v1` path runs it: through the plugin host's guard chain
    // (context merged into the input, statistics, the verdict), on top of the proxy.
    let code = localaistack::control::plugins::ActiveCode {
        activation: "guard-chat".into(),
        plugin: "guard".into(),
        id: "guard".into(),
        point: localaistack::api::plugin::Point::InferenceHook,
        stage: Some(localaistack::api::plugin::HookStage::PreRequest),
        kinds: Vec::new(),
        scheme: None,
        entry: "pre_request".into(),
        module: Some(guard.clone()),
        profile: None,
        limits: limits.clone(),
        failure: localaistack::api::plugin::FailurePolicy::Fail,
        priority: 0,
        scope: Default::default(),
        config: input["config"].clone(),
        sink: None,
        panel: None,
        content: false,
        digest: String::new(),
        workflow: None,
        custom_nodes: Vec::new(),
        network: Vec::new(),
    };
    let home = tempfile::tempdir().unwrap();
    let host = localaistack::control::plugins::PluginHost::new(
        localaistack::home::LasHome::at(home.path()),
        std::sync::Arc::new(WasmiEngine::new()),
    );
    let request = input["request"].clone();
    let context = json!({"module": "chat", "model": "tiny", "path": "/v1/chat/completions"});
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let v = host.run_chain(
            &[&code],
            "request",
            request.clone(),
            &context,
            Duration::from_secs(2),
        );
        times.push(t.elapsed());
        assert!(matches!(
            v,
            localaistack::control::plugins::Verdict::Allow(_)
        ));
    }
    times.sort();
    println!(
        "plugins: /v1 preRequest hook overhead through the plugin host x{n}: p50 {:?}, p99 {:?} (target p50 < 200 µs)",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
    );

    // A plugin that never returns: stopped by its fuel (default limits), then by the timeout
    // when fuel is unlimited.
    let spin = wat::parse_file(plugins.join("testdata/infinite_loop.wat")).unwrap();
    let spin = engine.compile(&spin, &Grants::none()).unwrap();
    let t = Instant::now();
    let err = spin.call("spin", &json!({}), &limits).unwrap_err();
    println!(
        "plugins: infinite loop, fuel {} (default), timeout {:?}: stopped after {:?} ({})",
        limits.fuel,
        limits.timeout,
        t.elapsed(),
        err.reason()
    );
    for timeout_ms in [10, 100] {
        let l = Limits {
            fuel: u64::MAX,
            timeout: Duration::from_millis(timeout_ms),
            ..Limits::default()
        };
        let t = Instant::now();
        let err = spin.call("spin", &json!({}), &l).unwrap_err();
        println!(
            "plugins: infinite loop, unlimited fuel, timeout {timeout_ms} ms: stopped after {:?} ({})",
            t.elapsed(),
            err.reason()
        );
    }
    exec_round_trips();
    workflow_overhead(&engine, &plugins, &guard, &code);
}

/// A small request to an exec plugin written in plain `sh` (builtins only, so the figure is the
/// bridge's and the pipes', not a fork per call): persistent (`lines`) against one-shot.
fn exec_round_trips() {
    use localaistack::api::plugin::ExecProtocol;
    use localaistack::runtime::plugin_exec::{ExecBridge, ExecConfig, ExecPlugins, ExecSpec};
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let home = localaistack::home::LasHome::at(dir.path().join("home"));
    home.ensure().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    };
    let lines = write(
        "lines.sh",
        "#!/bin/sh\nread hello\nprintf '{\"protocol\":\"las-exec\",\"version\":1,\"name\":\"bench\",\"pluginVersion\":\"1.0.0\",\"capabilities\":[\"call\"]}\\n'\nwhile read -r line; do\n  rest=${line#*\\\"id\\\":}\n  printf '{\"id\":%s,\"output\":{\"action\":\"allow\"}}\\n' \"${rest%%,*}\"\ndone\n",
    );
    let once = write(
        "once.sh",
        "#!/bin/sh\nwhile read -r line; do :; done\nprintf '{\"action\":\"allow\"}'\n",
    );
    let bridge = ExecBridge::new(ExecConfig::for_home(&home));
    let spec = |program: std::path::PathBuf, protocol| ExecSpec {
        activation: format!("bench-{protocol:?}").to_lowercase(),
        program,
        sha256: String::new(),
        protocol,
        name: "bench".into(),
        version: "1.0.0".into(),
        text_io: false,
        memory_bytes: None,
        max_concurrent: 4,
    };
    let input = json!({"request": {"model": "tiny", "messages": [
        {"role": "user", "content": "What is the capital of France?"}]}, "config": null});
    let limits = Limits::default();
    for (label, s, n) in [
        (
            "persistent (lines)",
            spec(lines, ExecProtocol::Lines),
            2_000,
        ),
        ("one-shot", spec(once, ExecProtocol::OneShot), 300),
    ] {
        bridge.ensure(&s).unwrap();
        let m = bridge.module(&s);
        for _ in 0..20 {
            m.call("pre_request", &input, &limits).unwrap();
        }
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let out = m.call("pre_request", &input, &limits).unwrap();
            times.push(t.elapsed());
            assert_eq!(out.output["action"], "allow");
        }
        times.sort();
        println!(
            "plugins: exec round trip, {label}, small request x{n}: p50 {:?}, p99 {:?}",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
        );
    }
    bridge.stop_all();
}

/// Workflow overhead beyond the sum of its generations: a 3-node workflow (the prompt guard on
/// the input, one generation, the response suffix on the answer) against the same generation
/// called alone. The generation is a stub answering a fixed completion at once (the seam's test
/// side), so the difference is what the runner adds: wiring, two WASM hooks, and the durable
/// record written at every node transition (SQLite WAL in a temporary home).
fn workflow_overhead(
    engine: &WasmiEngine,
    plugins: &std::path::Path,
    guard: &std::sync::Arc<dyn localaistack::sandbox::Module>,
    guard_code: &localaistack::control::plugins::ActiveCode,
) {
    use localaistack::control::workflows::{Runner, WorkflowIo};
    use std::sync::Arc;
    struct Stub;
    impl WorkflowIo for Stub {
        fn generate(
            &self,
            _body: serde_json::Value,
        ) -> futures_util::future::BoxFuture<'_, Result<serde_json::Value, String>> {
            Box::pin(async {
                Ok(
                    json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}}]}),
                )
            })
        }
        fn http(
            &self,
            _m: &str,
            _u: &str,
            _b: Option<serde_json::Value>,
        ) -> futures_util::future::BoxFuture<'_, Result<(u16, serde_json::Value), String>> {
            Box::pin(async { Err("no network in the bench".to_string()) })
        }
    }
    let suffix_wasm = std::fs::read(plugins.join("response_suffix.wasm")).unwrap();
    let suffix = engine.compile(&suffix_wasm, &Grants::none()).unwrap();
    let mut suffix_code = guard_code.clone();
    suffix_code.activation = "suffix-chat".into();
    suffix_code.plugin = "suffix".into();
    suffix_code.id = "suffix".into();
    suffix_code.entry = "post_response".into();
    suffix_code.module = Some(suffix);
    suffix_code.config = json!({"suffix": " [checked]"});
    let mut guard_code = guard_code.clone();
    guard_code.module = Some(guard.clone());
    let w: localaistack::api::plugin::Workflow = serde_yaml::from_str(
        "id: answer\noutput: polish\nnodes:\n\
         - {id: check, type: hook, with: {activation: guard-chat, contribution: guard}, inputs: {request: $input}}\n\
         - {id: ask, type: generate, with: {model: tiny}, inputs: {messages: check.request.messages}}\n\
         - {id: polish, type: hook, with: {activation: suffix-chat, contribution: suffix}, inputs: {response: ask.response}}\n",
    )
    .unwrap();
    let mut wf_code = guard_code.clone();
    wf_code.activation = "flows".into();
    wf_code.id = "answer".into();
    wf_code.point = localaistack::api::plugin::Point::Workflow;
    wf_code.module = None;
    wf_code.workflow = Some(w);
    let active = Arc::new(vec![guard_code, suffix_code, wf_code]);
    let home = tempfile::tempdir().unwrap();
    let home = localaistack::home::LasHome::at(home.path());
    let runner = Runner::new(
        Arc::new(localaistack::control::plugins::PluginHost::new(
            home.clone(),
            Arc::new(WasmiEngine::new()),
        )),
        Arc::new(Stub),
        home.state_db(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let input = json!({"model": "tiny", "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let n = 300;
    let (mut alone, mut whole) = (Vec::with_capacity(n), Vec::with_capacity(n));
    rt.block_on(async {
        for i in 0..n + 20 {
            let t = Instant::now();
            Stub.generate(input.clone()).await.unwrap();
            let a = t.elapsed();
            let t = Instant::now();
            let (run, code) = runner.prepare(&active, "answer", input.clone()).unwrap();
            let done = runner.execute(run, code, active.clone()).await;
            let b = t.elapsed();
            assert_eq!(
                done.state,
                localaistack::control::workflows::RunState::Succeeded,
                "{done:?}"
            );
            if i >= 20 {
                alone.push(a);
                whole.push(b);
            }
        }
    });
    alone.sort();
    whole.sort();
    println!(
        "plugins: workflow overhead beyond its generation (guard → generate → suffix, durable record per node) x{n}: \
         p50 {:?}, p99 {:?} (the generation alone, a stub: p50 {:?})",
        percentile(&whole, 0.5).saturating_sub(percentile(&alone, 0.5)),
        percentile(&whole, 0.99).saturating_sub(percentile(&alone, 0.99)),
        percentile(&alone, 0.5),
    );
}
