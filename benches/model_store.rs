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

fn best_of(runs: usize, mut f: impl FnMut() -> Duration) -> (Duration, Duration) {
    let mut t: Vec<Duration> = (0..runs).map(|_| f()).collect();
    t.sort();
    (t[0], t[t.len() / 2])
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

fn report(what: &str, bytes: usize, (best, median): (Duration, Duration)) {
    println!(
        "model_store/{what:<28} {:>7.1} MiB  best {:>6.3} s = {:>5.2} GB/s   median {:>6.3} s = {:>5.2} GB/s",
        bytes as f64 / (1 << 20) as f64,
        best.as_secs_f64(),
        gbps(bytes, best),
        median.as_secs_f64(),
        gbps(bytes, median)
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
            let t = Instant::now();
            std::hint::black_box(sha2::Sha256::digest(&bytes));
            t.elapsed()
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
            let t = Instant::now();
            rt.block_on(store.verify(&blob.digest)).expect("verify");
            t.elapsed()
        }),
    );

    for (mode, name) in [
        (ImportMode::Copy, "import by copy"),
        (ImportMode::HardlinkOrCopy, "import by hardlink"),
    ] {
        report(
            name,
            len,
            best_of(3, || {
                let home = tempfile::tempdir().expect("temp dir");
                let store =
                    ModelStore::open_with(&LasHome::at(home.path()), config(mode)).expect("open");
                let t = Instant::now();
                rt.block_on(store.ensure(&spec(&src), &EnsureOptions::default()))
                    .expect("import");
                t.elapsed()
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
    report(
        "download over local HTTP",
        len,
        best_of(3, || {
            let home = tempfile::tempdir().expect("temp dir");
            let store = ModelStore::open_with(&LasHome::at(home.path()), config(ImportMode::Copy))
                .expect("open");
            let t = Instant::now();
            rt.block_on(store.ensure(&spec(&url), &EnsureOptions::default()))
                .expect("download");
            t.elapsed()
        }),
    );
}
