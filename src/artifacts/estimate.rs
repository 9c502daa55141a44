//! How much memory llama.cpp will take to serve a model with a given placement, before loading it.
//!
//! The estimate follows llama.cpp's own allocation rules (b8000-era, the version `llama-cpp-2`
//! 0.1.160 builds):
//! - **Weights**: the tensors' bytes. The input embedding always stays in RAM; repeating layers are
//!   offloaded from the last one backwards, and `n_gpu_layers` counts the output layer as one
//!   more layer (`-ngl N` puts the output and the last N-1 blocks on the GPU).
//! - **KV cache**: F16 K and V for every layer, on the device of its layer, for `n_ctx` cells,
//!   with `n_ctx` rounded up to 256 per parallel slot.
//! - **Output buffer** (RAM): logits for one token per slot.
//! - **Compute buffers**: the largest set of intermediate tensors live at once when llama.cpp
//!   reserves its graph for one micro-batch; modelled from the shapes and checked against
//!   llama.cpp's reported buffer sizes in `tests/estimate_llama.rs`.
//!
//! # Caveats
//! Only the dense llama-style transformer is modelled (llama, qwen2, mistral, gemma, phi3...);
//! mixture-of-experts, recurrent and sliding-window models get the same formula and are less exact.

use super::gguf::GgufHeader;

#[derive(Debug, thiserror::Error)]
pub enum EstimateError {
    #[error("the GGUF header has no {0}: cannot estimate memory for this model")]
    Missing(&'static str),
}

/// The shape facts the estimate needs, read from a GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFacts {
    pub n_layer: u64,
    pub n_embd: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    /// Per-head K and V widths.
    pub head_dim_k: u64,
    pub head_dim_v: u64,
    pub n_vocab: u64,
    pub n_ff: u64,
    /// Weight bytes of each repeating block `blk.N.*`.
    pub layer_bytes: Vec<u64>,
    /// The input embedding (always kept in RAM by llama.cpp).
    pub input_bytes: u64,
    /// The output norm and head, and any other tensor outside the blocks.
    pub output_bytes: u64,
}

impl ModelFacts {
    pub fn from_header(h: &GgufHeader) -> Result<Self, EstimateError> {
        let n_layer = h
            .arch_u64("block_count")
            .ok_or(EstimateError::Missing("block_count"))?;
        let n_embd = h
            .arch_u64("embedding_length")
            .ok_or(EstimateError::Missing("embedding_length"))?;
        let n_head = h
            .arch_u64("attention.head_count")
            .ok_or(EstimateError::Missing("attention.head_count"))?
            .max(1);
        let n_head_kv = h.arch_u64("attention.head_count_kv").unwrap_or(n_head);
        let head_dim_k = h
            .arch_u64("attention.key_length")
            .unwrap_or(n_embd / n_head);
        let head_dim_v = h
            .arch_u64("attention.value_length")
            .unwrap_or(n_embd / n_head);
        let n_vocab = h
            .arch_u64("vocab_size")
            .or_else(|| match h.get("tokenizer.ggml.tokens") {
                Some(super::gguf::GgufValue::Array(a)) => Some(a.len() as u64),
                _ => None,
            })
            .or_else(|| {
                h.tensor("token_embd.weight")
                    .and_then(|t| t.dims.get(1).copied())
            })
            .ok_or(EstimateError::Missing("vocabulary size"))?;
        let n_ff = h
            .arch_u64("feed_forward_length")
            .unwrap_or(n_embd.saturating_mul(4));

        // Bounded by the header's own tensor count, which the reader has already limited.
        let mut layer_bytes = vec![0u64; n_layer.min(h.tensors.len() as u64 + 1) as usize];
        let (mut input_bytes, mut output_bytes) = (0u64, 0u64);
        for t in &h.tensors {
            let layer = t
                .name
                .strip_prefix("blk.")
                .and_then(|r| r.split('.').next())
                .and_then(|n| n.parse::<usize>().ok());
            match layer {
                Some(i) if i < layer_bytes.len() => {
                    layer_bytes[i] = layer_bytes[i].saturating_add(t.size)
                }
                _ if t.name.starts_with("token_embd") => {
                    input_bytes = input_bytes.saturating_add(t.size)
                }
                _ => output_bytes = output_bytes.saturating_add(t.size),
            }
        }
        Ok(ModelFacts {
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            n_vocab,
            n_ff,
            layer_bytes,
            input_bytes,
            output_bytes,
        })
    }

    fn kv_width(&self) -> u64 {
        prod(&[
            self.n_head_kv,
            self.head_dim_k.saturating_add(self.head_dim_v),
        ])
    }
}

/// Where and how a model is to be served.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Total context (all slots together), before llama.cpp rounds it up.
    pub n_ctx: u32,
    /// llama.cpp's `n_gpu_layers`: 0 keeps everything in RAM.
    pub n_gpu_layers: u32,
    /// Parallel slots (sequences).
    pub n_parallel: u32,
    /// Physical micro-batch (llama.cpp default 512).
    pub n_ubatch: u32,
    /// Whether flash attention is used (llama.cpp's `auto` picks it where the device supports it,
    /// which the CPU does).
    pub flash_attn: bool,
    /// Whether a GPU backend exists at all; without one, `n_gpu_layers` is ignored (as llama.cpp
    /// does).
    pub has_gpu: bool,
}

impl Placement {
    /// llama.cpp's defaults for one slot on the CPU.
    pub fn cpu(n_ctx: u32) -> Self {
        Placement {
            n_ctx,
            n_gpu_layers: 0,
            n_parallel: 1,
            n_ubatch: 512,
            flash_attn: true,
            has_gpu: false,
        }
    }

    /// The KV cells llama.cpp allocates: `n_ctx / n_parallel` rounded up to 256, per slot.
    pub fn kv_cells(&self) -> u64 {
        let slots = u64::from(self.n_parallel.max(1));
        let n_ctx = u64::from(self.n_ctx.max(1)).div_ceil(256) * 256;
        let per_seq = (n_ctx / slots).max(1).div_ceil(256) * 256;
        per_seq * slots
    }
}

/// Bytes, split between RAM and VRAM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryEstimate {
    pub weights_ram: u64,
    pub weights_vram: u64,
    pub kv_ram: u64,
    pub kv_vram: u64,
    pub compute_ram: u64,
    pub compute_vram: u64,
    /// Logits (always in RAM).
    pub output_ram: u64,
}

impl MemoryEstimate {
    pub fn ram(&self) -> u64 {
        [
            self.weights_ram,
            self.kv_ram,
            self.compute_ram,
            self.output_ram,
        ]
        .iter()
        .fold(0u64, |a, &x| a.saturating_add(x))
    }
    pub fn vram(&self) -> u64 {
        [self.weights_vram, self.kv_vram, self.compute_vram]
            .iter()
            .fold(0u64, |a, &x| a.saturating_add(x))
    }
    pub fn total(&self) -> u64 {
        self.ram().saturating_add(self.vram())
    }
}

/// Peak bytes of intermediate tensors for one micro-batch of `t` tokens over `n_kv` cells.
///
/// The graph allocator reuses memory, so the buffer is the largest set of tensors alive at
/// once: at the output (hidden state, its norm and the logits of every token), in the feed-forward
/// block (gate, up and their product next to the residual stream) or in attention (Q, K, V, and
/// the score matrix when flash attention is off).
fn compute_bytes(m: &ModelFacts, t: u64, n_kv: u64, flash_attn: bool) -> u64 {
    let e = m.n_embd;
    let q = prod(&[m.n_head, m.head_dim_k]);
    let kv = prod(&[m.n_head_kv, m.head_dim_k]);
    let sum = |xs: &[u64]| xs.iter().fold(0u64, |a, &x| a.saturating_add(x));
    let output = prod(&[t, sum(&[m.n_vocab, prod(&[2, e])]), 4]);
    let ffn = prod(&[t, sum(&[prod(&[3, m.n_ff]), prod(&[2, e])]), 4]);
    let qkv = prod(&[t, sum(&[prod(&[2, q]), prod(&[2, kv])]), 4]);
    let scores = if flash_attn {
        // F16 copies of Q, K and V for the flash-attention kernel.
        prod(&[t, sum(&[q, prod(&[2, kv])]), 2])
    } else {
        prod(&[t, n_kv, m.n_head, 4])
    };
    let attn = sum(&[qkv, scores, prod(&[t, 2, e, 4])]);
    output.max(ffn).max(attn)
}

/// A product that saturates instead of overflowing (header values are untrusted).
fn prod(xs: &[u64]) -> u64 {
    xs.iter().fold(1u64, |a, &x| a.saturating_mul(x))
}

/// Estimates what llama.cpp allocates for `model` served with `p`.
pub fn estimate(m: &ModelFacts, p: &Placement) -> MemoryEstimate {
    let ngl = if p.has_gpu {
        u64::from(p.n_gpu_layers).min(m.n_layer + 1)
    } else {
        0
    };
    // Layers i >= n_layer + 1 - ngl are on the GPU; "layer" n_layer is the output.
    let gpu_start = (m.n_layer + 1).saturating_sub(ngl);
    let mut e = MemoryEstimate::default();
    e.weights_ram = m.input_bytes;
    if ngl > 0 && gpu_start <= m.n_layer {
        e.weights_vram = m.output_bytes;
    } else {
        e.weights_ram = e.weights_ram.saturating_add(m.output_bytes);
    }
    let cells = p.kv_cells();
    let kv_per_layer = prod(&[cells, m.kv_width(), 2]);
    let mut gpu_layers = 0;
    for (i, &b) in m.layer_bytes.iter().enumerate() {
        if (i as u64) >= gpu_start {
            e.weights_vram = e.weights_vram.saturating_add(b);
            e.kv_vram = e.kv_vram.saturating_add(kv_per_layer);
            gpu_layers += 1;
        } else {
            e.weights_ram = e.weights_ram.saturating_add(b);
            e.kv_ram = e.kv_ram.saturating_add(kv_per_layer);
        }
    }
    let t = u64::from(p.n_ubatch.max(1)).min(cells);
    let compute = compute_bytes(m, t, cells, p.flash_attn);
    if gpu_layers > 0 || (ngl > 0 && gpu_start <= m.n_layer) {
        // The GPU runs the graph; the host keeps a buffer for the input embedding rows.
        e.compute_vram = compute;
        e.compute_ram = prod(&[t, m.n_embd, 4]);
    } else {
        e.compute_ram = compute;
    }
    e.output_ram = prod(&[m.n_vocab, u64::from(p.n_parallel.max(1)), 4]);
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::gguf::{Limits, read_from};
    use crate::artifacts::testmodel::{TestModelConfig, write_to};

    fn facts(cfg: &TestModelConfig) -> ModelFacts {
        let bytes = write_to(Vec::new(), cfg).unwrap();
        let h = read_from(&mut std::io::Cursor::new(&bytes), &Limits::default()).unwrap();
        ModelFacts::from_header(&h).unwrap()
    }

    #[test]
    fn facts_from_a_generated_header() {
        let cfg = TestModelConfig::tiny();
        let m = facts(&cfg);
        assert_eq!(m.n_layer, 2);
        assert_eq!(m.n_vocab, 512);
        assert_eq!(m.head_dim_k, 32);
        assert_eq!(m.kv_width(), 2 * 2 * 32);
        let total: u64 = m.layer_bytes.iter().sum::<u64>() + m.input_bytes + m.output_bytes;
        assert_eq!(total, cfg.parameter_count() * 4);
    }

    #[test]
    fn cells_round_up_per_slot() {
        assert_eq!(Placement::cpu(100).kv_cells(), 256);
        assert_eq!(Placement::cpu(512).kv_cells(), 512);
        let mut p = Placement::cpu(1024);
        p.n_parallel = 3;
        assert_eq!(p.kv_cells(), 3 * 512);
    }

    #[test]
    fn offload_moves_layers_from_the_end_and_counts_the_output() {
        let m = facts(&TestModelConfig::tiny());
        let mut p = Placement::cpu(512);
        p.has_gpu = true;
        let none = estimate(&m, &p);
        assert_eq!(none.vram(), 0);
        p.n_gpu_layers = 1;
        let out_only = estimate(&m, &p);
        assert_eq!(out_only.weights_vram, m.output_bytes);
        assert_eq!(out_only.kv_vram, 0);
        p.n_gpu_layers = 99;
        let all = estimate(&m, &p);
        assert_eq!(all.weights_ram, m.input_bytes);
        assert_eq!(all.kv_ram, 0);
        assert_eq!(
            all.weights_ram + all.weights_vram,
            none.weights_ram + none.weights_vram
        );
        p.has_gpu = false;
        assert_eq!(estimate(&m, &p), none, "without a GPU nothing is offloaded");
    }
}
