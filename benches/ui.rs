//! The web console's figures: time to first render of the overview with 1,000 objects, bytes per
//! page, and the delay from a store change to the updated fragment (target p50 < 250 ms).
//!
//! The server is the daemon's router on TCP with the daemon's store watcher (inotify on
//! `state.db`) bumping the change counter, as `lasctl daemon` wires it. The "browser" is a client
//! that does what the console's script does: it holds `/ui/stream` open and, on each `changed`
//! message, fetches the page's `?fragment=live`; the delay is from the apply's answer to the
//! fragment (with the new object) received.
//!
//! `cargo bench --bench ui` (LAS_BENCH_N sets the number of store changes, default 40).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use localaistack::control::store::{ApplyItem, ApplyRequest, Store};
use localaistack::home::LasHome;
use localaistack::interfaces::http::{ApiContext, Metrics, Server, StaticDaemonInfo};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn model(name: &str) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata:\n  name: {name}\nspec:\n  source: /srv/{name}.gguf\n---\n"
    )
}

fn main() {
    let n: usize = std::env::var("LAS_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = LasHome::at(dir.path());
        home.ensure().expect("home");
        {
            let mut store = Store::open(&home.state_db()).expect("store");
            let text: String = (0..1000).map(|i| model(&format!("m{i:04}"))).collect();
            let files = [localaistack::api::decode::InputFile {
                name: "bench.yaml".into(),
                bytes: text.into_bytes(),
            }];
            let desired = localaistack::api::decode::decode_files(&files).expect("decode");
            store
                .apply(&ApplyRequest {
                    items: desired
                        .into_iter()
                        .map(|d| ApplyItem {
                            desired: d,
                            source: "bench".into(),
                            expected_resource_version: None,
                        })
                        .collect(),
                    description: "bench".into(),
                    ..Default::default()
                })
                .expect("apply");
        }
        let (tx, rx) = tokio::sync::watch::channel(1u64);
        let _watcher = localaistack::control::sources::watch_store(home.root(), move || {
            tx.send_modify(|v| *v += 1);
        })
        .expect("store watcher");
        let ctx = ApiContext::new(
            home.clone(),
            Arc::new(Metrics::new()),
            rx,
            Arc::new(StaticDaemonInfo::this_build()),
        );
        let server = Server::bind(
            ctx,
            "127.0.0.1:0".parse().expect("addr"),
            home.run().join("lasd.sock"),
        )
        .await
        .expect("server");
        let addr = server.local_addr().expect("addr");
        tokio::spawn(server.run(std::future::pending()));
        let client = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .build()
            .expect("client");
        let base = format!("http://{addr}");

        // Time to first render: the first overview request of a fresh server, then the steady state.
        let t = Instant::now();
        let first = client.get(format!("{base}/ui/")).send().await.expect("overview");
        assert!(first.status().is_success(), "{}", first.status());
        let first_bytes = first.bytes().await.expect("body").len();
        let first_render = t.elapsed();
        let mut again = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            let r = client.get(format!("{base}/ui/")).send().await.expect("overview");
            r.bytes().await.expect("body");
            again.push(t.elapsed());
        }
        again.sort();
        println!("web console, 1,000 objects in the store");
        println!(
            "overview: first render {:.1} ms ({first_bytes} bytes); p50 of 10 more {:.1} ms",
            first_render.as_secs_f64() * 1e3,
            pct(&again, 0.5).as_secs_f64() * 1e3
        );

        println!("{:<40} {:>10} {:>10}", "page", "bytes", "ms");
        for page in [
            "/ui/",
            "/ui/resources",
            "/ui/resources?fragment=live",
            "/ui/resources/models/m0001",
            "/ui/events",
            "/ui/history",
            "/ui/plan",
            "/ui/hardware",
            "/ui/plugins",
            "/ui/playground",
            "/ui/assets/console.css",
            "/ui/assets/console.js",
        ] {
            let t = Instant::now();
            let r = client.get(format!("{base}{page}")).send().await.expect("page");
            assert!(r.status().is_success(), "{page}: {}", r.status());
            let b = r.bytes().await.expect("body").len();
            println!("{page:<40} {b:>10} {:>10.1}", t.elapsed().as_secs_f64() * 1e3);
        }

        // Store change → updated fragment, as the console's script does it.
        let mut stream = client
            .get(format!("{base}/ui/stream"))
            .send()
            .await
            .expect("stream")
            .bytes_stream();
        // The first message says where the counter is.
        stream.next().await;
        let mut delays = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("live{i:03}");
            let r = client
                .post(format!("{base}/api/v1/apply"))
                .header("content-type", "application/yaml")
                .body(model(&name))
                .send()
                .await
                .expect("apply");
            assert!(r.status().is_success(), "{}", r.status());
            let t = Instant::now();
            let deadline = t + Duration::from_secs(10);
            loop {
                let chunk = tokio::time::timeout_at(deadline.into(), stream.next())
                    .await
                    .expect("a changed message within 10 s")
                    .expect("stream open")
                    .expect("chunk");
                if !String::from_utf8_lossy(&chunk).contains("event: changed") {
                    continue;
                }
                let frag = client
                    .get(format!("{base}/ui/resources?q={name}&fragment=live"))
                    .send()
                    .await
                    .expect("fragment")
                    .text()
                    .await
                    .expect("text");
                if frag.contains(&format!("models/{name}")) {
                    break;
                }
            }
            delays.push(t.elapsed());
        }
        delays.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "store change -> fragment updated ({n} applies): p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms (target p50 < 250 ms: {})",
            ms(pct(&delays, 0.5)),
            ms(pct(&delays, 0.9)),
            ms(pct(&delays, 1.0)),
            if ms(pct(&delays, 0.5)) < 250.0 { "met" } else { "MISSED" }
        );
    });
}
