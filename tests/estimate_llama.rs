//! The memory estimate against what llama.cpp really allocates, read from the buffer sizes it
//! logs when it loads a model and creates a context (routed through `tracing`).
#![cfg(feature = "llama")]

use std::io::Write;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::{LogOptions, send_logs_to_tracing};
use localaistack::artifacts::estimate::{MemoryEstimate, ModelFacts, Placement, estimate};
use localaistack::artifacts::gguf::read_header;
use localaistack::artifacts::testmodel::{Precision, TestModelConfig, generate};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn take(&self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut *self.0.lock().unwrap())).into_owned()
    }
}

/// Sums llama.cpp's "<kind> buffer size = X MiB" lines.
#[derive(Debug, Default, Clone, Copy)]
struct Actual {
    model: f64,
    kv: f64,
    compute: f64,
    output: f64,
}

impl Actual {
    fn add_from(&mut self, log: &str) {
        for line in log.lines() {
            let Some((head, tail)) = line.split_once("buffer size =") else {
                continue;
            };
            let mib: f64 = tail
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("unparsable buffer line {line:?}"));
            let bytes = mib * 1024.0 * 1024.0;
            if head.contains("model") {
                self.model += bytes;
            } else if head.contains("KV") {
                self.kv += bytes;
            } else if head.contains("compute") {
                self.compute += bytes;
            } else if head.contains("output") {
                self.output += bytes;
            }
        }
    }
    fn total(&self) -> f64 {
        self.model + self.kv + self.compute + self.output
    }
}

fn mib(b: f64) -> f64 {
    b / 1024.0 / 1024.0
}

#[test]
fn estimate_is_within_ten_percent_of_llama_cpp() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    send_logs_to_tracing(LogOptions::default());
    let backend = LlamaBackend::init().expect("backend");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as i32);
    let dir = tempfile::tempdir().unwrap();

    let models = [
        ("tiny", TestModelConfig::tiny()),
        (
            "bench-f16",
            TestModelConfig::bench().with_precision(Precision::F16),
        ),
    ];
    // (n_ctx, n_parallel, n_ubatch)
    let placements: &[(u32, u32, u32)] = &[
        (256, 1, 512),
        (512, 1, 512),
        (2048, 1, 512),
        (4096, 4, 512),
        (1000, 2, 128),
    ];
    let mut report = String::new();
    let mut worst: f64 = 0.0;
    for (name, cfg) in &models {
        let path = dir.path().join(format!("{name}.gguf"));
        generate(&path, cfg).unwrap();
        let facts = ModelFacts::from_header(&read_header(&path).unwrap()).unwrap();
        captured.take();
        let model = LlamaModel::load_from_file(&backend, &path, &LlamaModelParams::default())
            .expect("load");
        let mut model_actual = Actual::default();
        model_actual.add_from(&captured.take());
        assert!(model_actual.model > 0.0, "no model buffer line was logged");
        for &(n_ctx, n_par, n_ubatch) in placements {
            let params = LlamaContextParams::default()
                .with_n_ctx(NonZeroU32::new(n_ctx))
                .with_n_seq_max(n_par)
                .with_n_ubatch(n_ubatch)
                .with_n_batch(n_ubatch.max(512))
                .with_n_threads(threads)
                .with_n_threads_batch(threads);
            let ctx = model.new_context(&backend, params).expect("context");
            let log = captured.take();
            drop(ctx);
            let mut actual = model_actual;
            actual.add_from(&log);
            assert!(actual.kv > 0.0 && actual.compute > 0.0, "log:\n{log}");
            let mut p = Placement::cpu(n_ctx);
            p.n_parallel = n_par;
            p.n_ubatch = n_ubatch;
            let est: MemoryEstimate = estimate(&facts, &p);
            let err = (est.total() as f64 - actual.total()) / actual.total();
            worst = worst.max(err.abs());
            report.push_str(&format!(
                "{name:10} ctx={n_ctx:5} par={n_par} ubatch={n_ubatch:3} | actual MiB: weights {:7.2} kv {:7.2} compute {:7.2} output {:5.2} total {:7.2} | estimate: {:7.2} {:7.2} {:7.2} {:5.2} total {:7.2} | {:+.1}%\n",
                mib(actual.model),
                mib(actual.kv),
                mib(actual.compute),
                mib(actual.output),
                mib(actual.total()),
                mib((est.weights_ram + est.weights_vram) as f64),
                mib((est.kv_ram + est.kv_vram) as f64),
                mib((est.compute_ram + est.compute_vram) as f64),
                mib(est.output_ram as f64),
                mib(est.total() as f64),
                err * 100.0
            ));
        }
    }
    eprintln!("{report}worst error {:.1}%", worst * 100.0);
    assert!(worst <= 0.10, "estimate off by more than 10%:\n{report}");
}
