//! C ABI call overhead against plain HTTP (issue 14): `las_get` of one object through
//! liblocalaistack, against the same `GET /api/v1/modules/chat` written by hand on a raw socket,
//! both from one C program (`ffi/examples/bench.c`), alternating, one connection per request, over
//! the unix socket of an in-process daemon API. The main crate's hyper `DaemonClient` (what `lasctl`
//! uses) is timed on the same GET for reference.
//!
//! `cargo bench --bench c_abi` (LAS_BENCH_N sets the requests per side, default 2000). Needs `cc`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use localaistack::control::store::{ApplyItem, ApplyRequest, Store};
use localaistack::home::LasHome;
use localaistack::interfaces::http::client::{DaemonClient, Endpoint};
use localaistack::interfaces::http::{ApiContext, Metrics, Server, StaticDaemonInfo};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the ffi package and returns the directory of liblocalaistack.so.
fn build_ffi() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(repo())
        .args([
            "build",
            "-p",
            "localaistack-ffi",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo build -p localaistack-ffi failed"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
        })
        .find(|f| f.file_name().is_some_and(|n| n == "liblocalaistack.so"))
        .and_then(|f| f.parent().map(Path::to_path_buf))
        .expect("cargo reported no liblocalaistack.so")
}

fn compile_bench(libdir: &Path, out: &Path) -> PathBuf {
    let exe = out.join("bench");
    let st = Command::new("cc")
        .args([
            "-std=c11",
            "-D_POSIX_C_SOURCE=200809L",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
        ])
        .arg("-I")
        .arg(repo().join("ffi/include"))
        .arg(repo().join("ffi/examples/bench.c"))
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(libdir)
        .arg(format!("-Wl,-rpath,{}", libdir.display()))
        .arg("-llocalaistack")
        .status()
        .expect("cc is needed (make deps)");
    assert!(st.success(), "cc failed");
    exe
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let n: usize = std::env::var("LAS_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let libdir = build_ffi();
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile_bench(&libdir, dir.path());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let home = LasHome::at(dir.path().join("home"));
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
    let socket = home.run().join("lasd.sock");
    rt.block_on(async {
        let (_tx, rx) = tokio::sync::watch::channel(1u64);
        let ctx = ApiContext::new(
            home.clone(),
            Arc::new(Metrics::new()),
            rx,
            Arc::new(StaticDaemonInfo::this_build()),
        );
        let server = Server::bind(ctx, "127.0.0.1:0".parse().expect("addr"), socket.clone())
            .await
            .expect("server");
        tokio::spawn(server.run(std::future::pending()));
    });

    // The C program: las_get against plain HTTP, alternating.
    let out = Command::new(&exe)
        .arg(&socket)
        .args(["modules", "chat", &n.to_string()])
        .output()
        .expect("run the C bench");
    assert!(
        out.status.success(),
        "the C bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut rows: Vec<(String, f64, f64)> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(|l| {
            let f: Vec<_> = l.split_whitespace().collect();
            (
                f[0].to_string(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();

    // The main crate's hyper client on the same GET, for reference.
    let client = DaemonClient {
        endpoint: Endpoint::Unix(socket.clone()),
        token: None,
    };
    let hyper_times = rt.block_on(async {
        let mut v = Vec::with_capacity(n);
        for i in 0..n + n / 10 + 10 {
            let t = Instant::now();
            let b = client.get_bytes("/api/v1/modules/chat").await.expect("get");
            assert!(!b.is_empty());
            if i >= n / 10 + 10 {
                v.push(t.elapsed());
            }
        }
        v.sort();
        v
    });
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    rows.push((
        "DaemonClient (hyper, Rust)".into(),
        us(pct(&hyper_times, 0.5)),
        us(pct(&hyper_times, 0.99)),
    ));

    println!(
        "C ABI call overhead: GET /api/v1/modules/chat over the unix socket, {n} sequential requests per side, a connection each"
    );
    println!("{:<28} {:>10} {:>10}", "", "p50 µs", "p99 µs");
    for (name, p50, p99) in &rows {
        let name = match name.as_str() {
            "plain" => "plain HTTP from C",
            "las_get" => "las_get (liblocalaistack)",
            other => other,
        };
        println!("{name:<28} {p50:>10.1} {p99:>10.1}");
    }
    let get = |k: &str| rows.iter().find(|r| r.0 == k).map(|r| (r.1, r.2));
    if let (Some(lib), Some(plain)) = (get("las_get"), get("plain")) {
        println!(
            "added by the C ABI: p50 {:+.1} µs, p99 {:+.1} µs",
            lib.0 - plain.0,
            lib.1 - plain.1
        );
    }
}
