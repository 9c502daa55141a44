//! Proxy overhead of `/v1/chat/completions` through the daemon's router, against the same upstream
//! called directly (target: p50 < 1 ms added). Sequential requests over kept-alive connections; the
//! upstream is a small axum app answering canned JSON, so the figures are the proxy's own cost.
//!
//! `cargo bench --bench http` (LAS_BENCH_N sets the number of requests per side, default 2000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use localaistack::api::Kind;
use localaistack::control::store::{ApplyItem, ApplyRequest, Store};
use localaistack::home::LasHome;
use localaistack::interfaces::http::{ApiContext, Metrics, Server, StaticDaemonInfo};
use serde_json::json;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn measure(client: &reqwest::Client, url: &str, n: usize) -> Vec<Duration> {
    let body =
        json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("request");
        assert!(r.status().is_success(), "{}", r.status());
        let b = r.bytes().await.expect("body");
        assert!(!b.is_empty());
        out.push(t.elapsed());
    }
    out.sort();
    out
}

/// The security checks every request passes (issue 10), timed alone: the Host allowlist, the
/// cross-site rules and a constant-time token comparison, on a `/v1` request and on a management
/// write with the bearer token (the most expensive path).
fn guard_cost(addr: std::net::SocketAddr) {
    use localaistack::interfaces::http::{Access, Peer, check};
    let access = Access::new(&[], true);
    let token = "f".repeat(64);
    let peer = Peer::Tcp("127.0.0.1:50000".parse().expect("addr"));
    let req = |method: &str, path: &str, auth: bool| {
        let mut b = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .header("content-type", "application/json");
        if auth {
            b = b.header("authorization", format!("Bearer {token}"));
        }
        b.body(axum::body::Body::empty()).expect("request")
    };
    let n = 200_000u32;
    for (what, r) in [
        (
            "POST /v1/chat/completions",
            req("POST", "/v1/chat/completions", false),
        ),
        (
            "POST /api/v1/apply + token",
            req("POST", "/api/v1/apply", true),
        ),
    ] {
        let t = Instant::now();
        for _ in 0..n {
            assert!(check(&access, Some(&token), peer, std::hint::black_box(&r)).is_ok());
        }
        println!(
            "guard checks, {what}: {:.0} ns per request ({n} runs)",
            t.elapsed().as_secs_f64() * 1e9 / f64::from(n)
        );
    }
}

fn main() {
    let n: usize = std::env::var("LAS_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        // The upstream: a canned chat completion.
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(|| async {
                axum::Json(json!({"object": "chat.completion", "choices": [{"message": {"role": "assistant", "content": "hello"}}]}))
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let up = l.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(l, app).await });

        // The daemon side: a real store with one Ready Module serving `tiny` at the upstream.
        let dir = tempfile::tempdir().expect("tempdir");
        let home = LasHome::at(dir.path());
        home.ensure().expect("home");
        {
            let mut store = Store::open(&home.state_db()).expect("store");
            let files = [localaistack::api::decode::InputFile {
                name: "bench.yaml".into(),
                bytes: b"apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata:\n  name: chat\nspec:\n  native:\n    command: [/bin/true]\n  model: tiny\n".to_vec(),
            }];
            let desired = localaistack::api::decode::decode_files(&files).expect("decode");
            store
                .apply(&ApplyRequest {
                    items: desired
                        .into_iter()
                        .map(|d| ApplyItem { desired: d, source: "bench".into(), expected_resource_version: None })
                        .collect(),
                    description: "bench".into(),
                    ..Default::default()
                })
                .expect("apply");
            let g = store.get(Kind::Module, "chat").expect("get").generation;
            store
                .update_status(Kind::Module, "chat", None, &json!({
                    "observedGeneration": g,
                    "endpoint": format!("http://{up}"),
                    "conditions": [{"type": "Ready", "status": "True", "reason": "Healthy", "message": "", "lastTransitionTime": "2026-11-22T10:00:00Z"}],
                }))
                .expect("status");
        }
        let (_tx, rx) = tokio::sync::watch::channel(1u64);
        let ctx = ApiContext::new(home.clone(), Arc::new(Metrics::new()), rx, Arc::new(StaticDaemonInfo::this_build()));
        let server = Server::bind(ctx, "127.0.0.1:0".parse().expect("addr"), home.run().join("lasd.sock"))
            .await
            .expect("server");
        let addr = server.local_addr().expect("addr");
        tokio::spawn(server.run(std::future::pending()));

        let client = reqwest::Client::builder().no_proxy().tcp_nodelay(true).build().expect("client");
        let direct_url = format!("http://{up}/v1/chat/completions");
        let proxy_url = format!("http://{addr}/v1/chat/completions");
        // Warm up connections and the route cache.
        measure(&client, &direct_url, 200).await;
        measure(&client, &proxy_url, 200).await;
        let direct = measure(&client, &direct_url, n).await;
        let proxied = measure(&client, &proxy_url, n).await;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!("http proxy overhead ({n} sequential chat completions each, keep-alive)");
        println!("{:<10} {:>10} {:>10} {:>10}", "", "p50 µs", "p90 µs", "p99 µs");
        for (name, v) in [("direct", &direct), ("via /v1", &proxied)] {
            println!("{:<10} {:>10.0} {:>10.0} {:>10.0}", name, us(pct(v, 0.5)), us(pct(v, 0.9)), us(pct(v, 0.99)));
        }
        let added = us(pct(&proxied, 0.5)) - us(pct(&direct, 0.5));
        println!(
            "added p50: {added:.0} µs (target < 1000 µs: {})",
            if added < 1000.0 { "met" } else { "MISSED" }
        );
        guard_cost(addr);
    });
}
