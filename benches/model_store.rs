//! Model store throughput: sha256 (in memory and through `verify` on a blob), import by copy and by
//! hardlink, and an HTTP download from a local server. Prints one line per figure.
//!
//! `cargo bench --bench model_store` (size: `LAS_BENCH_MB`, default 512). Target: sha256 of the
//! store ≥ 1 GB/s on a CPU with SHA extensions.

use std::time::{Duration, Instant};

use localaistack::api::model::{ModelFormat, ModelSource, ModelSpec};
use localaistack::artifacts::models::{EnsureOptions, ImportMode, ModelStore, StoreConfig};
use localaistack::home::LasHome;
use sha2::Digest;

fn data(len: usize) -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// CPU seconds used by this process so far (all threads; USER_HZ is 100 on Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the command name.
    (tick(11) + tick(12)) / 100.0
}

/// Runs `f` `runs` times; returns the best and median wall time, and the CPU seconds of the best.
fn best_of(runs: usize, mut f: impl FnMut()) -> (Duration, Duration, f64) {
    let mut t: Vec<(Duration, f64)> = (0..runs)
        .map(|_| {
            let (c, w) = (cpu_seconds(), Instant::now());
            f();
            (w.elapsed(), cpu_seconds() - c)
        })
        .collect();
    t.sort_by_key(|x| x.0);
    (t[0].0, t[t.len() / 2].0, t[0].1)
}

fn config(mode: ImportMode) -> StoreConfig {
    StoreConfig {
        import_mode: mode,
        progress_bar: false,
        gc_grace: Duration::ZERO,
        ..StoreConfig::default()
    }
}

fn spec(source: &str) -> ModelSpec {
    ModelSpec {
        source: ModelSource::parse(source).expect("valid source"),
        sha256: None,
        format: ModelFormat::Gguf,
    }
}

fn report(what: &str, bytes: usize, (best, median, cpu): (Duration, Duration, f64)) {
    println!(
        "model_store/{what:<26} {:>6.0} MiB  wall best {:>5.2} GB/s, median {:>5.2} GB/s   per CPU-second {:>5.2} GB/s",
        bytes as f64 / (1 << 20) as f64,
        gbps(bytes, best),
        gbps(bytes, median),
        bytes as f64 / cpu.max(0.01) / 1e9,
    );
}

fn main() {
    let mb: usize = std::env::var("LAS_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let len = mb << 20;
    let sha_ni = std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| c.contains(" sha_ni"))
        .unwrap_or(false);
    println!("model_store: {mb} MiB of data, cpu sha_ni: {sha_ni}");
    let bytes = data(len);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");

    report(
        "sha256 in memory",
        len,
        best_of(3, || {
            std::hint::black_box(sha2::Sha256::digest(&bytes));
        }),
    );

    let work = tempfile::tempdir().expect("temp dir");
    let file = work.path().join("bench.gguf");
    std::fs::write(&file, &bytes).expect("write the bench file");
    let src = file.to_str().expect("utf-8 path").to_string();

    // verify(): read + hash of a blob (warm page cache).
    let home = tempfile::tempdir().expect("temp dir");
    let store = ModelStore::open_with(&LasHome::at(home.path()), config(ImportMode::Copy))
        .expect("open store");
    let blob = rt
        .block_on(store.ensure(&spec(&src), &EnsureOptions::default()))
        .expect("import");
    report(
        "verify (sha256 of a blob)",
        len,
        best_of(3, || {
            rt.block_on(store.verify(&blob.digest)).expect("verify");
        }),
    );

    for (mode, name) in [
        (ImportMode::Copy, "import by copy"),
        (ImportMode::HardlinkOrCopy, "import by hardlink"),
    ] {
        let stores = fresh_stores(3, mode);
        let mut i = 0;
        report(
            name,
            len,
            best_of(3, || {
                rt.block_on(stores[i].1.ensure(&spec(&src), &EnsureOptions::default()))
                    .expect("import");
                i += 1;
            }),
        );
    }

    // HTTP download from a local server holding the bytes in memory.
    let body = bytes::Bytes::from(bytes);
    let url = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route(
            "/m.gguf",
            axum::routing::get(move || {
                let b = body.clone();
                async move { b }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/m.gguf")
    });
    let stores = fresh_stores(3, ImportMode::Copy);
    let mut i = 0;
    report(
        "download over local HTTP",
        len,
        best_of(3, || {
            rt.block_on(stores[i].1.ensure(&spec(&url), &EnsureOptions::default()))
                .expect("download");
            i += 1;
        }),
    );
}

/// Empty stores, made before the clock starts (and removed after it stops).
fn fresh_stores(n: usize, mode: ImportMode) -> Vec<(tempfile::TempDir, ModelStore)> {
    (0..n)
        .map(|_| {
            let home = tempfile::tempdir().expect("temp dir");
            let store =
                ModelStore::open_with(&LasHome::at(home.path()), config(mode)).expect("open");
            (home, store)
        })
        .collect()
}
