//! The generated test model is a real model for llama.cpp: it loads, tokenizes with the
//! byte-fallback vocabulary, decodes, and greedy decoding is repeatable.
#![cfg(feature = "llama")]

use std::num::NonZeroU32;
use std::path::Path;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use localaistack::artifacts::gguf::read_header;
use localaistack::artifacts::testmodel::{Precision, TestModelConfig, generate};

/// llama.cpp's default of 4 threads is ~2,600x slower on a 2-core machine: use the real count.
fn cores() -> i32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as i32)
}

/// Greedy-decodes `n` tokens after `prompt`; returns (prompt tokens, generated tokens).
fn greedy(
    backend: &LlamaBackend,
    model: &LlamaModel,
    prompt: &str,
    n: usize,
) -> (Vec<LlamaToken>, Vec<LlamaToken>) {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(256))
        .with_n_threads(cores())
        .with_n_threads_batch(cores());
    let mut ctx = model.new_context(backend, params).expect("context");
    let vocab = model.vocab();
    let prompt_tokens = vocab.tokenize(prompt.as_bytes(), true, false);
    let mut batch = LlamaBatch::new(256, 1);
    let last = prompt_tokens.len() - 1;
    for (i, &t) in prompt_tokens.iter().enumerate() {
        batch.add(t, i as i32, &[0], i == last).expect("batch");
    }
    ctx.decode(&mut batch).expect("decode prompt");
    let mut sampler = LlamaSampler::greedy();
    let mut out = Vec::new();
    let mut pos = prompt_tokens.len() as i32;
    for _ in 0..n {
        let t = sampler.sample(&ctx, batch.n_tokens() - 1);
        sampler.accept(t);
        out.push(t);
        batch.clear();
        batch.add(t, pos, &[0], true).expect("batch");
        pos += 1;
        ctx.decode(&mut batch).expect("decode");
    }
    (prompt_tokens, out)
}

fn load(backend: &LlamaBackend, path: &Path) -> LlamaModel {
    LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
        .unwrap_or_else(|e| panic!("llama.cpp refused {}: {e}", path.display()))
}

#[test]
fn generated_models_load_tokenize_and_decode_in_llama_cpp() {
    let backend = LlamaBackend::init().expect("backend");
    let dir = tempfile::tempdir().unwrap();

    for (file, cfg) in [
        ("tiny-f32.gguf", TestModelConfig::tiny()),
        (
            "tiny-f16.gguf",
            TestModelConfig::tiny()
                .with_seed(3)
                .with_precision(Precision::F16),
        ),
    ] {
        let path = dir.path().join(file);
        let made = generate(&path, &cfg).unwrap();
        let model = load(&backend, &path);

        // What llama.cpp sees is what we wrote and what our reader reports.
        let info = read_header(&path).unwrap().info();
        assert_eq!(model.n_params(), made.parameter_count, "{file}");
        assert_eq!(info.parameter_count, Some(made.parameter_count));
        assert_eq!(model.n_vocab() as u32, cfg.n_vocab());
        assert_eq!(model.n_layer(), cfg.n_layer);
        assert_eq!(model.n_head(), cfg.n_head);
        assert_eq!(model.n_head_kv(), cfg.n_head_kv);
        assert_eq!(model.n_embd() as u32, cfg.n_embd);
        assert_eq!(model.n_ctx_train(), cfg.n_ctx_train);
        assert_eq!(model.meta_val_str("general.architecture").unwrap(), "llama");
        assert!(
            model
                .meta_val_str("tokenizer.chat_template")
                .unwrap()
                .contains("<|im_start|>")
        );

        // The byte-fallback vocabulary round-trips any text, including characters with no
        // piece of their own, and uses the merged pieces where they apply.
        let vocab = model.vocab();
        let text = "Hello world, the model says: ü€ 42";
        let toks = vocab.tokenize(text.as_bytes(), false, false);
        let back = String::from_utf8(vocab.detokenize(&toks, false, false)).unwrap();
        assert_eq!(back.trim_start(), text, "{file}: tokens {toks:?}");
        assert!(
            toks.iter().any(|t| t.0 > 260),
            "{file}: merged pieces are used: {toks:?}"
        );
        assert!(
            toks.len() < text.len(),
            "{file}: pieces shorten the text: {toks:?}"
        );
        assert_eq!(vocab.bos(), LlamaToken(1));
        assert_eq!(vocab.eos(), LlamaToken(2));

        // Greedy decoding produces tokens, and the same ones every time.
        let (prompt, first) = greedy(&backend, &model, "Hello world", 16);
        assert_eq!(prompt[0], LlamaToken(1), "BOS is added");
        assert_eq!(first.len(), 16);
        assert!(
            first
                .iter()
                .all(|t| (0..cfg.n_vocab() as i32).contains(&t.0))
        );
        let distinct: std::collections::BTreeSet<_> = first.iter().map(|t| t.0).collect();
        assert!(
            distinct.len() > 1,
            "{file}: output is not one token: {first:?}"
        );
        let (_, second) = greedy(&backend, &model, "Hello world", 16);
        assert_eq!(first, second, "{file}: greedy output is repeatable");
        let (_, other) = greedy(&backend, &model, "What is a local stack?", 16);
        assert_ne!(first, other, "{file}: the prompt matters");
    }
}
