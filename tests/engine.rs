//! `lasctl engine llama` as a real process serving a generated test model, over real HTTP.
//!
//! Every engine runs with `--threads 1`: tests run two at a time on a 2-core machine, and more
//! spinning ggml threads than cores would make decoding crawl.

mod support_engine;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support_engine::{Engine, generate_model, rt, sse_data};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

async fn post(url: &str, body: &Value) -> (u16, Value) {
    let r = client().post(url).json(body).send().await.expect("send");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, v)
}

async fn post_raw(url: &str, body: &str) -> (u16, Value) {
    let r = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).expect("JSON error body"),
    )
}

/// Posts a streaming request and returns the parsed `data:` payloads (the last one `[DONE]`).
async fn post_stream(url: &str, body: &Value) -> Vec<String> {
    let r = client().post(url).json(body).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
    sse_data(&r.text().await.expect("body"))
}

fn chat_body(max_tokens: u32) -> Value {
    json!({
        "model": "tiny",
        "messages": [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": "Say something about llamas."}],
        "temperature": 0,
        "max_tokens": max_tokens,
    })
}

fn tiny() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = generate_model(dir.path(), "tiny");
    (dir, model)
}

/// Checks OpenAI's error body shape and returns it.
#[track_caller]
fn assert_openai_error(status: u16, v: &Value, want_status: u16) -> &Value {
    assert_eq!(status, want_status, "body: {v}");
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    let obj = e.as_object().expect("error object");
    assert!(obj.contains_key("param") && obj.contains_key("code"), "{v}");
    e
}

#[test]
fn health_is_never_200_before_the_model_is_loaded() {
    let (_dir, model) = tiny();
    let mut engine = Engine::start(&model, &["--threads", "1", "--ctx", "256"]);
    rt().block_on(async {
        let c = client();
        let mut saw_503 = false;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = c.get(engine.url("/health")).send().await.expect("health");
            match r.status().as_u16() {
                503 => {
                    saw_503 = true;
                    let v: Value = r.json().await.expect("json");
                    assert_eq!(v["status"], "loading");
                }
                200 => {
                    // The engine prints `ready` before it answers 200, so the line is there.
                    engine.wait_line("ready", Duration::from_secs(5));
                    break;
                }
                s => panic!("unexpected /health status {s}"),
            }
            assert!(Instant::now() < deadline, "never became healthy");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        eprintln!("health: observed 503 while loading: {saw_503}");
        // Once loaded, it stays 200.
        for _ in 0..3 {
            let r = c.get(engine.url("/health")).send().await.expect("health");
            assert_eq!(r.status().as_u16(), 200);
        }
        // Requests sent while loading would have been refused with 503; now they are served.
        let (s, v) = post(&engine.url("/v1/chat/completions"), &chat_body(4)).await;
        assert_eq!(s, 200, "{v}");
    });
}

#[test]
fn greedy_output_is_repeatable_and_fixed_seed_too() {
    let (_dir, model) = tiny();
    let engine = Engine::start_ready(&model, &["--threads", "1", "--ctx", "256"]);
    rt().block_on(async {
        let url = engine.url("/v1/chat/completions");
        let (s1, a) = post(&url, &chat_body(24)).await;
        let (s2, b) = post(&url, &chat_body(24)).await;
        assert_eq!((s1, s2), (200, 200), "{a} {b}");
        assert_eq!(a["object"], "chat.completion");
        assert_eq!(a["model"], "tiny");
        let text = a["choices"][0]["message"]["content"]
            .as_str()
            .expect("content");
        assert_eq!(a["choices"][0]["message"]["role"], "assistant");
        assert_eq!(
            text,
            b["choices"][0]["message"]["content"].as_str().unwrap()
        );
        let usage = &a["usage"];
        let completion = usage["completion_tokens"].as_u64().unwrap();
        assert!((1..=24).contains(&completion), "{usage}");
        assert!(usage["prompt_tokens"].as_u64().unwrap() > 5, "{usage}");
        assert_eq!(
            usage["total_tokens"].as_u64().unwrap(),
            usage["prompt_tokens"].as_u64().unwrap() + completion
        );
        let finish = a["choices"][0]["finish_reason"].as_str().unwrap();
        assert!(finish == "length" || finish == "stop");
        if finish == "length" {
            assert_eq!(completion, 24);
        }

        // Sampling at temperature 0.9 with a fixed seed repeats too.
        let seeded = json!({"prompt": "Once upon a time", "temperature": 0.9, "top_p": 0.95,
                            "top_k": 40, "min_p": 0.01, "seed": 1234, "max_tokens": 24,
                            "repeat_penalty": 1.1});
        let curl = engine.url("/v1/completions");
        let (_, x) = post(&curl, &seeded).await;
        let (_, y) = post(&curl, &seeded).await;
        assert_eq!(x["object"], "text_completion");
        assert_eq!(x["choices"][0]["text"], y["choices"][0]["text"], "{x} {y}");
    });
}

#[test]
fn streaming_equals_non_streaming() {
    let (_dir, model) = tiny();
    let engine = Engine::start_ready(&model, &["--threads", "1", "--ctx", "256"]);
    rt().block_on(async {
        // Chat.
        let url = engine.url("/v1/chat/completions");
        let (_, whole) = post(&url, &chat_body(32)).await;
        let mut body = chat_body(32);
        body["stream"] = json!(true);
        let events = post_stream(&url, &body).await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).expect("chunk JSON"))
            .collect();
        assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let ids: std::collections::HashSet<_> = chunks.iter().map(|c| c["id"].clone()).collect();
        assert_eq!(ids.len(), 1, "one id per stream");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, whole["choices"][0]["message"]["content"].as_str().unwrap());
        let last = chunks.last().unwrap();
        assert_eq!(
            last["choices"][0]["finish_reason"],
            whole["choices"][0]["finish_reason"]
        );
        assert_eq!(last["usage"], whole["usage"]);
        assert!(chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null()));

        // Completions.
        let curl = engine.url("/v1/completions");
        let req = json!({"model": "tiny", "prompt": "The quick brown fox", "temperature": 0, "max_tokens": 32});
        let (_, whole) = post(&curl, &req).await;
        let mut sreq = req.clone();
        sreq["stream"] = json!(true);
        let events = post_stream(&curl, &sreq).await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).expect("chunk JSON"))
            .collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["text"].as_str())
            .collect();
        assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
        assert_eq!(chunks.last().unwrap()["usage"], whole["usage"]);
    });
}

#[test]
fn two_parallel_requests_both_complete() {
    let (_dir, model) = tiny();
    let engine = Engine::start_ready(
        &model,
        &["--threads", "1", "--ctx", "256", "--parallel", "2"],
    );
    rt().block_on(async {
        let url = engine.url("/v1/chat/completions");
        let mut streamed = chat_body(48);
        streamed["stream"] = json!(true);
        let (alone_status, alone) = post(&url, &chat_body(48)).await;
        assert_eq!(alone_status, 200);
        let other = json!({"prompt": "A different prompt entirely", "temperature": 0.7,
                           "seed": 9, "max_tokens": 48});
        let (chat, completions) = (chat_body(48), engine.url("/v1/completions"));
        let (a, b, c) = tokio::join!(
            post(&url, &chat),
            post(&completions, &other),
            post_stream(&url, &streamed),
        );
        assert_eq!(a.0, 200, "{}", a.1);
        assert_eq!(b.0, 200, "{}", b.1);
        assert!(a.1["choices"][0]["finish_reason"].is_string());
        assert!(b.1["choices"][0]["finish_reason"].is_string());
        assert_eq!(c.last().map(String::as_str), Some("[DONE]"));
        assert!(alone["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
        assert!(a.1["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    });
}

/// (name, url, body, expected `param`, expected `code`)
type BadCase<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, Option<&'a str>);

#[test]
fn bad_requests_get_openai_error_bodies() {
    let (_dir, model) = tiny();
    let engine = Engine::start_ready(&model, &["--threads", "1", "--ctx", "128"]);
    let chat = engine.url("/v1/chat/completions");
    let comp = engine.url("/v1/completions");
    let long_prompt = format!(r#"{{"prompt":"{}"}}"#, "word ".repeat(400));
    rt().block_on(async {
        // (name, url, body, expected param, expected code)
        let cases: Vec<BadCase> = vec![
            ("malformed JSON", &chat, "{\"messages\": [", None, None),
            ("not an object", &chat, "[1,2,3]", None, None),
            ("empty body", &chat, "", None, None),
            (
                "unknown model",
                &chat,
                r#"{"model":"gpt-17","messages":[{"role":"user","content":"hi"}]}"#,
                Some("model"),
                Some("model_not_found"),
            ),
            (
                "max_tokens beyond the context",
                &chat,
                r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":100000}"#,
                Some("max_tokens"),
                Some("context_length_exceeded"),
            ),
            (
                "empty messages",
                &chat,
                r#"{"model":"tiny","messages":[]}"#,
                Some("messages"),
                None,
            ),
            (
                "max_tokens zero",
                &comp,
                r#"{"model":"tiny","prompt":"x","max_tokens":0}"#,
                Some("max_tokens"),
                None,
            ),
            (
                "temperature out of range",
                &comp,
                r#"{"prompt":"x","temperature":5}"#,
                Some("temperature"),
                None,
            ),
            (
                "prompt longer than the context",
                &comp,
                &long_prompt,
                Some("prompt"),
                Some("context_length_exceeded"),
            ),
            ("missing prompt", &comp, r#"{"model":"tiny"}"#, None, None),
        ];
        for (name, url, body, param, code) in cases {
            let (status, v) = post_raw(url, body).await;
            let e = assert_openai_error(status, &v, 400);
            assert_eq!(e["type"], "invalid_request_error", "{name}: {v}");
            assert_eq!(e["param"].as_str(), param, "{name}: {v}");
            if code.is_some() {
                assert_eq!(e["code"].as_str(), code, "{name}: {v}");
            }
        }
        // Nothing broke: a good request still works.
        let (s, v) = post(&chat, &chat_body(4)).await;
        assert_eq!(s, 200, "{v}");
        // Unknown paths answer OpenAI's body too.
        let r = client().get(engine.url("/v1/nothing")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404);
    });
}

#[test]
fn full_queue_answers_503_with_an_openai_error() {
    let (_dir, model) = tiny();
    let engine = Engine::start_ready(
        &model,
        &[
            "--threads",
            "1",
            "--ctx",
            "1024",
            "--parallel",
            "1",
            "--queue",
            "1",
        ],
    );
    rt().block_on(async {
        // Six requests at once for one slot and one queue place: some must be refused.
        let url = engine.url("/v1/completions");
        let body = json!({"prompt": "x", "temperature": 1.0, "seed": 3, "max_tokens": 600});
        let replies = futures_util::future::join_all((0..6).map(|_| post(&url, &body))).await;
        let refused: Vec<&(u16, Value)> = replies.iter().filter(|(s, _)| *s == 503).collect();
        assert!(!refused.is_empty(), "no request was refused: {replies:?}");
        for (s, v) in &replies {
            match s {
                200 => assert!(v["choices"][0]["finish_reason"].is_string(), "{v}"),
                503 => {
                    let e = assert_openai_error(*s, v, 503);
                    assert_eq!(e["code"], "overloaded");
                }
                _ => panic!("unexpected status {s}: {v}"),
            }
        }
        assert!(replies.iter().filter(|(s, _)| *s == 200).count() >= 1);
        // Refusals changed nothing: the engine serves the next request.
        let (s, v) = post(&url, &json!({"prompt": "y", "max_tokens": 2})).await;
        assert_eq!(s, 200, "{v}");
    });
}

#[test]
fn random_weights_with_arbitrary_bytes_never_break_the_engine() {
    let (_dir, model) = tiny();
    let engine = Engine::start_ready(&model, &["--threads", "1", "--ctx", "512"]);
    rt().block_on(async {
        for seed in 0..4 {
            let body = json!({"prompt": "\u{00e9}\u{20ac}", "temperature": 2.0, "seed": seed,
                              "max_tokens": 200, "stream": seed % 2 == 0});
            let r = client()
                .post(engine.url("/v1/completions"))
                .json(&body)
                .send()
                .await
                .expect("send");
            assert_eq!(r.status().as_u16(), 200);
            // Valid UTF-8 text (reqwest would replace invalid bytes; check the raw bytes).
            let bytes = r.bytes().await.expect("body");
            assert!(std::str::from_utf8(&bytes).is_ok());
        }
        let r = client().get(engine.url("/health")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
    });
}

#[test]
fn models_and_metrics_describe_the_engine() {
    let (_dir, model) = tiny();
    let engine = Engine::start_ready(&model, &["--threads", "1", "--ctx", "256"]);
    rt().block_on(async {
        let v: Value = client()
            .get(engine.url("/v1/models"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"][0]["id"], "tiny");
        assert_eq!(v["data"][0]["object"], "model");

        let (s, done) = post(&engine.url("/v1/chat/completions"), &chat_body(8)).await;
        assert_eq!(s, 200);
        let _ = post_raw(&engine.url("/v1/chat/completions"), "{").await;
        let text = client()
            .get(engine.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let value = |name: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        };
        assert_eq!(
            value("las_engine_requests_total{endpoint=\"chat_completions\",code=\"200\"}"),
            1.0
        );
        assert_eq!(
            value("las_engine_requests_total{endpoint=\"chat_completions\",code=\"400\"}"),
            1.0
        );
        assert_eq!(
            value("las_engine_completion_tokens_total"),
            done["usage"]["completion_tokens"].as_f64().unwrap()
        );
        assert_eq!(
            value("las_engine_prompt_tokens_total"),
            done["usage"]["prompt_tokens"].as_f64().unwrap()
        );
        assert_eq!(value("las_engine_request_duration_seconds_count"), 2.0);
        assert_eq!(value("las_engine_model_loaded"), 1.0);
    });
}

#[test]
fn broken_gguf_exits_nonzero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = generate_model(dir.path(), "tiny");
    let bytes = std::fs::read(&good).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"this is not a gguf file at all".repeat(100)),
        ("truncated", bytes[..bytes.len() / 3].to_vec()),
        ("empty", Vec::new()),
    ];
    for (name, content) in cases {
        let path = dir.path().join(format!("{name}.gguf"));
        std::fs::write(&path, content).unwrap();
        let out = std::process::Command::new(support_engine::lasctl())
            .args([
                "engine",
                "llama",
                "--threads",
                "1",
                "--port",
                "0",
                "--model",
            ])
            .arg(&path)
            .env("LAS_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: stderr {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{name}: one line expected, got:\n{stderr}");
        assert!(
            lines[0].starts_with("error: cannot load model"),
            "{name}: {stderr}"
        );
    }
    let missing = std::process::Command::new(support_engine::lasctl())
        .args(["engine", "llama", "--model", "/nonexistent/model.gguf"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot read model"), "{stderr}");
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let (_dir, model) = tiny();
    let mut engine = Engine::start_ready(&model, &["--threads", "1", "--ctx", "256"]);
    let url = engine.url("/v1/chat/completions");
    let mut body = chat_body(200);
    body["stream"] = json!(true);
    let events = rt().block_on(async {
        // The response has begun (headers received) when the signal arrives.
        let resp = client().post(&url).json(&body).send().await.expect("send");
        assert_eq!(resp.status().as_u16(), 200);
        engine.signal("TERM");
        sse_data(&resp.text().await.expect("in-flight stream completes"))
    });
    let (code, stderr) = engine.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "stderr:\n{stderr}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string(), "{last}");
}

/// `logit_bias` and GBNF `grammar` are honoured (sampling profiles of plugins rely on them); a
/// malformed value of either is a 400 naming the field.
#[test]
fn logit_bias_and_grammar_are_honoured() {
    let (_dir, model) = tiny();
    let engine = Engine::start_ready(&model, &["--threads", "1", "--ctx", "256"]);
    rt().block_on(async {
        let url = engine.url("/v1/completions");
        // Token 93 is the byte token of "Z" in the test model's vocabulary.
        let body = json!({"prompt": "Once", "temperature": 0, "max_tokens": 4,
                          "logit_bias": {"93": 100}});
        let (s, v) = post(&url, &body).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["choices"][0]["text"], "ZZZZ", "{v}");

        let body = json!({"prompt": "Once", "temperature": 0.8, "seed": 3, "max_tokens": 8,
                          "grammar": "root ::= (\"yes\" | \"no\") \".\""});
        let (s, v) = post(&url, &body).await;
        assert_eq!(s, 200, "{v}");
        let text = v["choices"][0]["text"].as_str().unwrap();
        assert!(text == "yes." || text == "no.", "{v}");

        for (field, bad) in [
            ("logit_bias", json!({"logit_bias": {"not-a-token": 1}})),
            ("logit_bias", json!({"logit_bias": {"5": 1000}})),
            ("grammar", json!({"grammar": "root ::= (("})),
        ] {
            let mut body = json!({"prompt": "Once", "max_tokens": 2});
            body.as_object_mut()
                .unwrap()
                .extend(bad.as_object().unwrap().clone());
            let (s, v) = post(&url, &body).await;
            let e = assert_openai_error(s, &v, 400);
            assert_eq!(e["param"], field, "{v}");
        }
    });
}
