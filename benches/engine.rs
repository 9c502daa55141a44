//! `cargo bench --bench engine`: decode speed of `lasctl engine llama` through HTTP against a
//! plain llama-cpp-2 decode loop on the same model, context and threads (target: at least 97%),
//! and the time from starting the engine to `/health` 200.
//!
//! The model is the generated `bench` preset (tens of millions of parameters), so decoding is not
//! all overhead. The engine and the plain loop never run at the same time: they would share the
//! cores.

#[path = "../tests/support_engine.rs"]
mod support_engine;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use serde_json::{Value, json};
use support_engine::{Engine, generate_model, rt};

const CTX: u32 = 512;
const PROMPT: &str = "The history of the llama begins";
const MAX_TOKENS: u32 = 64;
const RUNS: usize = 3;

fn main() {
    let threads = localaistack::runtime::engine::default_threads();
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let model = generate_model(dir.path(), "bench");
    let size = std::fs::metadata(&model).map(|m| m.len()).unwrap_or(0);
    println!(
        "engine bench: model {} ({:.1} MB, generated in {:.2?}), context {CTX}, threads {threads}",
        model.display(),
        size as f64 / 1e6,
        t.elapsed()
    );
    let threads_arg = threads.to_string();
    let ctx_arg = CTX.to_string();
    let args = [
        "--threads",
        &threads_arg,
        "--ctx",
        &ctx_arg,
        "--parallel",
        "1",
    ];

    // 1. Model load to /health 200, from process start.
    let mut loads = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let engine = Engine::start(&model, &args);
        let listening = started.elapsed();
        rt().block_on(async {
            let c = reqwest::Client::new();
            loop {
                if let Ok(r) = c.get(engine.url("/health")).send().await
                    && r.status().as_u16() == 200
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        loads.push((listening, started.elapsed()));
        drop(engine);
    }
    loads.sort_by_key(|l| l.1);
    let (listen, health) = loads[loads.len() / 2];
    println!(
        "engine bench: start to listening {:.1} ms, start to /health 200 {:.1} ms (median of {})",
        listen.as_secs_f64() * 1e3,
        health.as_secs_f64() * 1e3,
        loads.len()
    );

    // 2. Engine through HTTP and the plain loop, alternating run by run so that a busy machine
    // slows both alike; they never decode at the same time (the idle engine's threads sleep).
    let engine = Engine::start_ready(&model, &args);
    let backend = LlamaBackend::init().expect("backend");
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default().with_logs_enabled(false));
    let m = LlamaModel::load_from_file(&backend, &model, &LlamaModelParams::default())
        .expect("load model");
    let runtime = rt();
    let c = reqwest::Client::new();
    let body = json!({"prompt": PROMPT, "temperature": 0, "max_tokens": MAX_TOKENS});
    let mut http = Vec::new();
    let mut plain = Vec::new();
    let (mut http_tokens, mut plain_tokens) = (0, 0);
    // Run 0 warms both up and is not counted.
    for run in 0..=RUNS {
        let (n, secs) = runtime.block_on(async {
            let t = Instant::now();
            let v: Value = c
                .post(engine.url("/v1/completions"))
                .json(&body)
                .send()
                .await
                .expect("request")
                .json()
                .await
                .expect("json");
            let n = v["usage"]["completion_tokens"].as_u64().expect("usage") as u32;
            (n, t.elapsed().as_secs_f64())
        });
        http_tokens = n;
        let (pn, psecs) = plain_run(&backend, &m, threads);
        plain_tokens = pn;
        if run > 0 {
            http.push(n as f64 / secs);
            plain.push(pn as f64 / psecs);
        }
    }
    // Where the engine's time went: llama.cpp decode calls against the whole request.
    let metrics = runtime.block_on(async {
        c.get(engine.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    });
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    println!(
        "engine bench: inside the engine (all {} requests): {:.1} s in llama.cpp decode of {:.1} s in requests, {} tokens",
        RUNS + 1,
        metric("las_engine_decode_seconds_total"),
        metric("las_engine_request_duration_seconds_sum"),
        metric("las_engine_completion_tokens_total"),
    );
    drop(engine);
    drop(m);
    drop(backend);

    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let http_med = median(&mut http);
    let plain_med = median(&mut plain);
    println!(
        "engine bench: plain llama-cpp-2 loop {plain_med:.1} tokens/s ({plain_tokens} tokens), engine via HTTP {http_med:.1} tokens/s ({http_tokens} tokens), median of {RUNS}"
    );
    println!(
        "engine bench: engine/plain = {:.1}% (target >= 97%)",
        100.0 * http_med / plain_med
    );
    if plain_tokens != http_tokens {
        println!(
            "engine bench: note: token counts differ ({plain_tokens} vs {http_tokens}); rates are still per token"
        );
    }
}

/// One greedy completion with a plain llama-cpp-2 loop: same model, context, threads, prompt and
/// sampler as the engine. Returns (tokens, seconds), prompt evaluation included as in the engine.
fn plain_run(backend: &LlamaBackend, m: &LlamaModel, threads: u32) -> (u32, f64) {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(CTX))
        .with_n_batch(CTX)
        .with_n_ubatch(CTX.min(512))
        .with_n_seq_max(1)
        .with_n_threads(threads as i32)
        .with_n_threads_batch(threads as i32);
    let mut ctx = m.new_context(backend, params).expect("context");
    let vocab = m.vocab();
    let t = Instant::now();
    let prompt = vocab.tokenize(PROMPT.as_bytes(), true, true);
    let mut batch = LlamaBatch::new(CTX as usize, 1);
    let last = prompt.len() - 1;
    for (i, tok) in prompt.iter().enumerate() {
        batch.add(*tok, i as i32, &[0], i == last).expect("batch");
    }
    ctx.decode(&mut batch).expect("decode prompt");
    let mut sampler = LlamaSampler::chain_simple([LlamaSampler::greedy()]);
    let mut pos = prompt.len() as i32;
    let mut n = 0u32;
    let mut piece = Vec::new();
    while n < MAX_TOKENS {
        let tok = sampler.sample(&ctx, batch.n_tokens() - 1);
        if vocab.is_eog(tok) {
            break;
        }
        n += 1;
        piece.clear();
        vocab.token_to_piece_into(tok, &mut piece, false, None);
        if n == MAX_TOKENS {
            break;
        }
        batch.clear();
        batch.add(tok, pos, &[0], true).expect("batch");
        pos += 1;
        ctx.decode(&mut batch).expect("decode");
    }
    (n, t.elapsed().as_secs_f64())
}
