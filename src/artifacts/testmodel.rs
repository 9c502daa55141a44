//! A generator of small llama-architecture GGUF models with random weights.
//!
//! No weights can be downloaded where LocalAIStack is tested, so tests, benchmarks and the quickstart
//! use models made here: the llama architecture with every key llama.cpp needs, a byte-fallback
//! SentencePiece vocabulary (`<unk>`, `<s>`, `</s>`, the 256 byte tokens, ChatML control tokens and
//! a few hundred merged pieces) and a ChatML chat template. The output is a deterministic function
//! of the [`TestModelConfig`]: the same seed gives the same bytes.
//!
//! The weights are random, so the text a model produces is gibberish; it is a real model for
//! llama.cpp all the same (same shapes, same kernels, same memory use as a trained one).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::gguf::{GgmlType, GgufArray, GgufError, GgufValue, GgufWriter, TensorSpec};

#[derive(Debug, thiserror::Error)]
pub enum TestModelError {
    #[error("invalid test model configuration: {0}")]
    Config(String),
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: GgufError,
    },
    #[error("cannot move {from} to {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
}

/// Element type of the 2-D weight matrices (norm vectors are always F32, as llama.cpp expects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
}

/// The shape of a generated model. Start from a preset ([`TestModelConfig::tiny`],
/// [`TestModelConfig::bench`]) and adjust.
#[derive(Debug, Clone, PartialEq)]
pub struct TestModelConfig {
    pub name: String,
    pub n_embd: u32,
    pub n_layer: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub n_ff: u32,
    /// `llama.context_length`: the context the model claims to be trained for.
    pub n_ctx_train: u32,
    /// Merged SentencePiece pieces added after the special and byte tokens.
    pub n_pieces: u32,
    pub seed: u64,
    pub precision: Precision,
}

/// Special and control tokens, in vocabulary order before the byte tokens.
const UNK: u32 = 0;
const BOS: u32 = 1;
const EOS: u32 = 2;
/// `<unk>`, `<s>`, `</s>`, 256 bytes, `<|im_start|>`, `<|im_end|>`.
const FIXED_TOKENS: u32 = 3 + 256 + 2;

/// ChatML, which llama.cpp also recognises by its `<|im_start|>` marker.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

impl TestModelConfig {
    /// About 400k parameters (1.7 MB as F32): loads and decodes in milliseconds, for tests.
    pub fn tiny() -> Self {
        TestModelConfig {
            name: "tiny".into(),
            n_embd: 128,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 256,
            n_ctx_train: 4096,
            n_pieces: 251,
            seed: 42,
            precision: Precision::F32,
        }
    }

    /// About 27M parameters (109 MB as F32): large enough that decoding is real work, for benchmarks.
    pub fn bench() -> Self {
        TestModelConfig {
            name: "bench".into(),
            n_embd: 512,
            n_layer: 8,
            n_head: 8,
            n_head_kv: 4,
            n_ff: 1536,
            n_ctx_train: 4096,
            n_pieces: 1787,
            seed: 42,
            precision: Precision::F32,
        }
    }

    /// A preset by name: `tiny` or `bench`.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "tiny" => Some(Self::tiny()),
            "bench" => Some(Self::bench()),
            _ => None,
        }
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    pub fn head_dim(&self) -> u32 {
        self.n_embd / self.n_head.max(1)
    }

    pub fn n_vocab(&self) -> u32 {
        FIXED_TOKENS + self.n_pieces
    }

    fn validate(&self) -> Result<(), TestModelError> {
        let bad = |m: String| Err(TestModelError::Config(m));
        if self.n_embd == 0 || self.n_layer == 0 || self.n_ff == 0 || self.n_ctx_train == 0 {
            return bad("n_embd, n_layer, n_ff and n_ctx_train must be positive".into());
        }
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!(
                "n_embd {} must be a positive multiple of n_head {}",
                self.n_embd, self.n_head
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head dimension {} must be even (RoPE)",
                self.head_dim()
            ));
        }
        if self.n_head_kv == 0 || !self.n_head.is_multiple_of(self.n_head_kv) {
            return bad(format!(
                "n_head {} must be a multiple of n_head_kv {}",
                self.n_head, self.n_head_kv
            ));
        }
        if self.n_pieces as usize > piece_candidates().len() {
            return bad(format!(
                "at most {} merged pieces can be generated",
                piece_candidates().len()
            ));
        }
        Ok(())
    }

    fn file_type(&self) -> u32 {
        match self.precision {
            Precision::F32 => 0,
            Precision::F16 => 1,
        }
    }

    fn metadata(&self) -> Vec<(String, GgufValue)> {
        let (tokens, scores, types) = vocabulary(self.n_pieces as usize);
        let s = |v: &str| GgufValue::String(v.to_string());
        let u = GgufValue::U32;
        let md: Vec<(&str, GgufValue)> = vec![
            ("general.architecture", s("llama")),
            (
                "general.name",
                s(&format!("LocalAIStack test model ({})", self.name)),
            ),
            ("general.file_type", u(self.file_type())),
            ("general.quantization_version", u(2)),
            ("llama.vocab_size", u(self.n_vocab())),
            ("llama.context_length", u(self.n_ctx_train)),
            ("llama.embedding_length", u(self.n_embd)),
            ("llama.block_count", u(self.n_layer)),
            ("llama.feed_forward_length", u(self.n_ff)),
            ("llama.attention.head_count", u(self.n_head)),
            ("llama.attention.head_count_kv", u(self.n_head_kv)),
            (
                "llama.attention.layer_norm_rms_epsilon",
                GgufValue::F32(1e-5),
            ),
            ("llama.rope.dimension_count", u(self.head_dim())),
            ("llama.rope.freq_base", GgufValue::F32(10000.0)),
            ("tokenizer.ggml.model", s("llama")),
            (
                "tokenizer.ggml.tokens",
                GgufValue::Array(GgufArray::String(tokens)),
            ),
            (
                "tokenizer.ggml.scores",
                GgufValue::Array(GgufArray::F32(scores)),
            ),
            (
                "tokenizer.ggml.token_type",
                GgufValue::Array(GgufArray::I32(types)),
            ),
            ("tokenizer.ggml.unknown_token_id", u(UNK)),
            ("tokenizer.ggml.bos_token_id", u(BOS)),
            ("tokenizer.ggml.eos_token_id", u(EOS)),
            ("tokenizer.ggml.add_bos_token", GgufValue::Bool(true)),
            ("tokenizer.ggml.add_eos_token", GgufValue::Bool(false)),
            ("tokenizer.chat_template", s(CHATML_TEMPLATE)),
        ];
        md.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// The tensors in file order, each with its fan-in (for the weight scale).
    fn tensors(&self) -> Vec<(TensorSpec, Option<u32>)> {
        let w = match self.precision {
            Precision::F32 => GgmlType::F32,
            Precision::F16 => GgmlType::F16,
        };
        let (e, v, f) = (
            u64::from(self.n_embd),
            u64::from(self.n_vocab()),
            u64::from(self.n_ff),
        );
        let kv = u64::from(self.n_head_kv * self.head_dim());
        let norm = |name: String| (TensorSpec::new(name, &[e], GgmlType::F32), None);
        let mat = |name: String, cols: u64, rows: u64| {
            (TensorSpec::new(name, &[cols, rows], w), Some(cols as u32))
        };
        let mut t = vec![mat("token_embd.weight".into(), e, v)];
        for i in 0..self.n_layer {
            t.push(norm(format!("blk.{i}.attn_norm.weight")));
            t.push(mat(format!("blk.{i}.attn_q.weight"), e, e));
            t.push(mat(format!("blk.{i}.attn_k.weight"), e, kv));
            t.push(mat(format!("blk.{i}.attn_v.weight"), e, kv));
            t.push(mat(format!("blk.{i}.attn_output.weight"), e, e));
            t.push(norm(format!("blk.{i}.ffn_norm.weight")));
            t.push(mat(format!("blk.{i}.ffn_gate.weight"), e, f));
            t.push(mat(format!("blk.{i}.ffn_up.weight"), e, f));
            t.push(mat(format!("blk.{i}.ffn_down.weight"), f, e));
        }
        t.push(norm("output_norm.weight".into()));
        t.push(mat("output.weight".into(), e, v));
        t
    }

    /// Parameters of the generated model.
    pub fn parameter_count(&self) -> u64 {
        self.tensors().iter().map(|(t, _)| t.elements()).sum()
    }
}

/// What [`generate`] made.
#[derive(Debug, Clone)]
pub struct GeneratedModel {
    pub path: PathBuf,
    pub size_bytes: u64,
    pub parameter_count: u64,
    pub n_vocab: u32,
}

/// Writes the model to `path` (through a temporary file in the same directory, renamed at the
/// end, so a reader never sees half a model).
pub fn generate(path: &Path, cfg: &TestModelConfig) -> Result<GeneratedModel, TestModelError> {
    cfg.validate()?;
    // A fresh machine may not have the directory yet; errors name the file asked for, not the
    // temporary one.
    let create_err = |source| TestModelError::Create {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(create_err)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let file = File::create(&tmp).map_err(create_err)?;
    let result = write_to(BufWriter::with_capacity(1 << 20, file), cfg);
    if let Err(source) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(TestModelError::Write {
            path: path.to_path_buf(),
            source,
        });
    }
    std::fs::rename(&tmp, path).map_err(|source| TestModelError::Rename {
        from: tmp.clone(),
        to: path.to_path_buf(),
        source,
    })?;
    let size_bytes =
        std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(|source| TestModelError::Create {
                path: path.to_path_buf(),
                source,
            })?;
    Ok(GeneratedModel {
        path: path.to_path_buf(),
        size_bytes,
        parameter_count: cfg.parameter_count(),
        n_vocab: cfg.n_vocab(),
    })
}

/// Writes the model as a GGUF stream.
pub fn write_to<W: Write>(w: W, cfg: &TestModelConfig) -> Result<W, GgufError> {
    cfg.validate()
        .map_err(|e| GgufError::WriteUsage(e.to_string()))?;
    let tensors = cfg.tensors();
    let specs: Vec<TensorSpec> = tensors.iter().map(|(t, _)| t.clone()).collect();
    let mut out = GgufWriter::new(w, &cfg.metadata(), &specs)?;
    let mut buf = Vec::new();
    for (i, (spec, fan_in)) in tensors.iter().enumerate() {
        let n = spec.elements() as usize;
        buf.clear();
        match fan_in {
            None => {
                // RMS norm weights: ones, as after initialisation.
                for _ in 0..n {
                    buf.extend_from_slice(&1.0f32.to_le_bytes());
                }
            }
            Some(fan_in) => {
                // Uniform in ±sqrt(3/fan_in): unit variance through each matrix.
                let scale = (3.0 / f64::from(*fan_in)).sqrt() as f32;
                let mut rng = SplitMix64::new(cfg.seed ^ (i as u64).wrapping_mul(0x9E37_79B9));
                for _ in 0..n {
                    let x = rng.next_unit() * scale;
                    match spec.ggml_type {
                        GgmlType::F16 => buf.extend_from_slice(&f32_to_f16(x).to_le_bytes()),
                        _ => buf.extend_from_slice(&x.to_le_bytes()),
                    }
                }
            }
        }
        out.write_tensor_data(&buf)?;
    }
    out.finish()
}

/// `<unk>`, `<s>`, `</s>`, `<0x00>`..`<0xFF>`, `<|im_start|>`, `<|im_end|>`, then `n_pieces`
/// merged pieces with decreasing scores.
fn vocabulary(n_pieces: usize) -> (Vec<String>, Vec<f32>, Vec<i32>) {
    const NORMAL: i32 = 1;
    const UNKNOWN: i32 = 2;
    const CONTROL: i32 = 3;
    const BYTE: i32 = 6;
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![UNKNOWN, CONTROL, CONTROL];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(BYTE);
    }
    tokens.push("<|im_start|>".into());
    tokens.push("<|im_end|>".into());
    types.extend([CONTROL, CONTROL]);
    let mut scores = vec![0.0f32; tokens.len()];
    for (i, p) in piece_candidates().into_iter().take(n_pieces).enumerate() {
        tokens.push(p);
        types.push(NORMAL);
        scores.push(-(i as f32) - 1.0);
    }
    (tokens, scores, types)
}

/// A deterministic list of SentencePiece pieces: single characters, word starts, common English
/// bigrams and words, then all letter pairs.
fn piece_candidates() -> Vec<String> {
    const SPACE: char = '\u{2581}';
    let lower: Vec<char> = ('a'..='z').collect();
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut add = |s: String, out: &mut Vec<String>| {
        if seen.insert(s.clone()) {
            out.push(s);
        }
    };
    add(SPACE.to_string(), &mut out);
    for c in ('a'..='z').chain('A'..='Z').chain('0'..='9') {
        add(c.to_string(), &mut out);
    }
    for c in ".,!?'\"-:;()/\n".chars() {
        add(c.to_string(), &mut out);
    }
    for c in ('a'..='z').chain('A'..='Z') {
        add(format!("{SPACE}{c}"), &mut out);
    }
    for bg in [
        "th", "he", "in", "er", "an", "re", "on", "at", "en", "nd", "ti", "es", "or", "te", "of",
        "ed", "is", "it", "al", "ar", "st", "to", "nt", "ng", "se", "ha", "as", "ou", "io", "le",
        "ve", "co", "me", "de", "hi", "ri", "ro", "ic", "ne", "ea", "ra", "ce", "ll", "lo",
    ] {
        add(bg.to_string(), &mut out);
    }
    for w in [
        "the", "of", "and", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are",
        "as", "with", "his", "they", "at", "be", "this", "have", "from", "or", "one", "had", "by",
        "word", "but", "not", "what", "all", "were", "we", "when", "your", "can", "said", "there",
        "use", "an", "each", "which", "she", "do", "how", "their", "if", "will", "up", "other",
        "about", "out", "many", "then", "them", "these", "so", "some", "her", "would", "make",
        "like", "him", "into", "time", "has", "look", "two", "more", "write", "go", "see",
        "number", "no", "way", "could", "people", "my", "than", "first", "water", "been", "call",
        "who", "its", "now", "find", "long", "down", "day", "did", "get", "come", "made", "may",
        "part", "hello", "world", "model", "test", "local", "stack", "Hello", "The", "What", "I",
    ] {
        add(format!("{SPACE}{w}"), &mut out);
    }
    for &a in &lower {
        for &b in &lower {
            add(format!("{a}{b}"), &mut out);
        }
    }
    for &a in &lower {
        for &b in &lower {
            add(format!("{SPACE}{a}{b}"), &mut out);
        }
    }
    for a in 'A'..='Z' {
        for &b in &lower {
            add(format!("{SPACE}{a}{b}"), &mut out);
        }
    }
    out
}

/// SplitMix64: small, fast and good enough for random weights; keeps the output stable across
/// dependency upgrades (a seed always gives the same file).
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn next_unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

/// IEEE 754 binary16 bits of `x`, rounded to nearest even (subnormals and overflow handled).
fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x007f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x0080_0000;
        let shift = (14 - e) as u32;
        let half = m >> shift;
        let rem = m & ((1 << shift) - 1);
        let mid = 1 << (shift - 1);
        let round = u32::from(rem > mid || (rem == mid && half & 1 == 1));
        return sign | (half + round) as u16;
    }
    let half = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    let round = u32::from(rem > 0x1000 || (rem == 0x1000 && half & 1 == 1));
    // A carry out of the mantissa correctly bumps the exponent (up to infinity).
    sign | (half + round) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::gguf::read_from;

    #[test]
    fn f16_conversion() {
        assert_eq!(f32_to_f16(0.0), 0);
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(-2.0), 0xc000);
        assert_eq!(f32_to_f16(65504.0), 0x7bff);
        assert_eq!(f32_to_f16(1e6), 0x7c00);
        assert_eq!(f32_to_f16(5.960_464_5e-8), 1, "smallest subnormal");
        assert_eq!(f32_to_f16(0.099_975_586), 0x2e66);
    }

    #[test]
    fn presets_have_the_advertised_size() {
        let tiny = TestModelConfig::tiny();
        assert!((200_000..1_000_000).contains(&tiny.parameter_count()));
        let bench = TestModelConfig::bench();
        assert!((10_000_000..100_000_000).contains(&bench.parameter_count()));
        assert_eq!(tiny.n_vocab(), 512);
        assert_eq!(bench.n_vocab(), 2048);
    }

    #[test]
    fn generated_header_reads_back() {
        let cfg = TestModelConfig::tiny();
        let bytes = write_to(Vec::new(), &cfg).unwrap();
        let h = read_from(
            &mut std::io::Cursor::new(&bytes),
            &crate::artifacts::gguf::Limits::default(),
        )
        .unwrap();
        let info = h.info();
        assert_eq!(info.architecture.as_deref(), Some("llama"));
        assert_eq!(info.parameter_count, Some(cfg.parameter_count()));
        assert_eq!(info.quantization.as_deref(), Some("F32"));
        assert_eq!(info.layers, Some(2));
        assert_eq!(info.head_count, Some(4));
        assert_eq!(info.head_count_kv, Some(2));
        assert_eq!(info.embedding_length, Some(128));
        assert_eq!(info.context_length, Some(4096));
        let tokens = match h.get("tokenizer.ggml.tokens") {
            Some(GgufValue::Array(GgufArray::String(t))) => t,
            other => panic!("tokens: {other:?}"),
        };
        assert_eq!(tokens.len(), 512);
        assert_eq!(tokens[3 + 0x41], "<0x41>");
        let again = write_to(Vec::new(), &cfg).unwrap();
        assert_eq!(bytes, again, "the same seed gives the same bytes");
        let other = write_to(Vec::new(), &cfg.clone().with_seed(7)).unwrap();
        assert_ne!(bytes, other);
        let f16 = write_to(Vec::new(), &cfg.with_precision(Precision::F16)).unwrap();
        assert!(f16.len() < bytes.len() * 6 / 10);
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = TestModelConfig::tiny();
        c.n_head_kv = 3;
        assert!(c.validate().is_err());
        let mut c = TestModelConfig::tiny();
        c.n_embd = 100;
        c.n_head = 3;
        assert!(c.validate().is_err());
        let mut c = TestModelConfig::tiny();
        c.n_pieces = 1_000_000;
        assert!(c.validate().is_err());
    }
}
