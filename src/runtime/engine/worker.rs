//! The inference thread: owns the llama.cpp model and context and decodes every slot.
//!
//! # Why one context with several sequences
//! `--parallel N` slots are N sequences (`seq_id` 0..N) of ONE llama.cpp context
//! (`n_seq_max = N`, a non-unified KV cache of `ctx` tokens per sequence). Each step puts one
//! token of every generating slot (or the whole prompt of a newly admitted one) into a single
//! batch and calls `decode` once. So the engine runs exactly one set of `threads` decode threads
//! however many slots are busy: ggml's threads spin while waiting, and two contexts with their own
//! thread pools on the same cores would fight each other (thousands of times slower on a 2-core
//! machine). Batching also raises throughput: the weights are read once per step for all slots.
//! Splitting the threads between per-slot contexts was the alternative; it wastes cores whenever
//! fewer slots than N are busy.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::UnboundedSender;

use super::metrics::Metrics;
use super::openai::Sampling;
use super::text::{StopMatcher, Utf8Decoder};
use super::{EngineConfig, EngineError};

/// How many past tokens the repeat penalty looks at.
const PENALTY_LAST_N: i32 = 64;

/// Why a completion ended, as OpenAI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of generation token or a stop sequence.
    Stop,
    /// `max_tokens` or the context was reached, or the engine cancelled it while shutting down.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What the inference thread reports about one request.
#[derive(Debug)]
pub enum Event {
    /// Newly complete text (valid UTF-8, never part of a stop sequence).
    Delta(String),
    Done {
        finish: FinishReason,
        prompt_tokens: u32,
        completion_tokens: u32,
    },
    Failed(String),
}

/// Counts requests admitted (decoding or queued); dropping the guard releases the place.
#[derive(Debug)]
pub struct Admission {
    inflight: AtomicUsize,
    limit: usize,
}

#[derive(Debug)]
pub struct AdmissionGuard(Arc<Admission>);

impl Admission {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Admission {
            inflight: AtomicUsize::new(0),
            limit,
        })
    }

    /// A place for one more request, or `None` when slots and queue are full.
    pub fn try_admit(self: &Arc<Self>) -> Option<AdmissionGuard> {
        let prev = self.inflight.fetch_add(1, Ordering::AcqRel);
        if prev >= self.limit {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            None
        } else {
            Some(AdmissionGuard(Arc::clone(self)))
        }
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One request for the inference thread.
pub struct Job {
    pub prompt: Vec<LlamaToken>,
    pub max_tokens: u32,
    pub sampling: Sampling,
    pub stops: Vec<String>,
    /// Deltas are sent as they come; otherwise the text is sent once at the end, so that the
    /// HTTP thread is not woken per token while the decode threads hold every core.
    pub stream: bool,
    pub events: UnboundedSender<Event>,
    /// Held until the request is done: its place in slots + queue is released on drop.
    pub _admission: AdmissionGuard,
}

/// What the HTTP side needs once the model is loaded.
pub struct Loaded {
    pub model: Arc<LlamaModel>,
    pub template: Option<LlamaChatTemplate>,
    /// Tokens per slot (prompt + completion).
    pub ctx_per_slot: u32,
    pub threads: u32,
    pub load_ms: u128,
}

/// Settings the inference thread resolved from the configuration.
pub struct WorkerParams {
    pub config: EngineConfig,
    pub threads: u32,
}

/// Loads the model and runs the decode loop until `jobs` is closed and every slot is done.
///
/// `on_loaded` is called once with the load result, before any job is taken. `cancel` ends all
/// in-flight requests at the next step (finish reason `length`).
pub fn run(
    backend: &LlamaBackend,
    params: WorkerParams,
    jobs: Receiver<Job>,
    cancel: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    on_loaded: impl FnOnce(Result<Loaded, EngineError>),
) {
    let started = Instant::now();
    let config = &params.config;
    let model = match load_model(backend, config) {
        Ok(m) => Arc::new(m),
        Err(e) => return on_loaded(Err(e)),
    };
    // `settings::check` resolved `--ctx 0` to the model's context (capped) before loading.
    let ctx_per_slot = config.ctx.max(1);
    let parallel = config.parallel.max(1);
    let total = ctx_per_slot.saturating_mul(parallel);
    let ctx_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(total))
        .with_n_batch(total)
        .with_n_ubatch(total.min(512))
        .with_n_seq_max(parallel)
        .with_n_threads(params.threads as i32)
        .with_n_threads_batch(params.threads as i32);
    let mut ctx = match model.new_context(backend, ctx_params) {
        Ok(c) => c,
        Err(e) => {
            return on_loaded(Err(EngineError::Context(format!(
                "{e} (context {total} tokens = {ctx_per_slot} per slot x {parallel} slots)"
            ))));
        }
    };
    let template = model.chat_template(None).ok();
    on_loaded(Ok(Loaded {
        model: Arc::clone(&model),
        template,
        ctx_per_slot,
        threads: params.threads,
        load_ms: started.elapsed().as_millis(),
    }));

    let vocab = model.vocab();
    let mut batch = LlamaBatch::new(total as usize, 1);
    let mut slots: Vec<Option<Slot>> = (0..parallel).map(|_| None).collect();
    let mut closed = false;
    let mut piece = Vec::with_capacity(32);

    loop {
        // Admit waiting jobs into free slots; block only when nothing is decoding.
        let busy = slots.iter().filter(|s| s.is_some()).count();
        if busy == 0 {
            if closed {
                break;
            }
            match jobs.recv() {
                Ok(job) => place(&mut slots, job, &model),
                Err(_) => break,
            }
        }
        while !closed && slots.iter().any(Option::is_none) {
            match jobs.try_recv() {
                Ok(job) => place(&mut slots, job, &model),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => closed = true,
            }
        }
        let busy = slots.iter().filter(|s| s.is_some()).count();
        metrics.slots_busy.store(busy as u64, Ordering::Relaxed);
        if busy == 0 {
            continue;
        }
        let cancelling = cancel.load(Ordering::Acquire);

        batch.clear();
        let mut batch_ok = true;
        for (seq, slot) in slots.iter_mut().enumerate() {
            let Some(s) = slot.as_mut() else { continue };
            if cancelling || s.job.events.is_closed() {
                s.cancelled = true;
                continue;
            }
            let seq_ids = [seq as i32];
            let added = match s.next {
                Next::Prompt => {
                    let last = s.job.prompt.len() - 1;
                    let mut r = Ok(());
                    for (i, t) in s.job.prompt.iter().enumerate() {
                        r = r.and(batch.add(*t, i as i32, &seq_ids, i == last));
                    }
                    s.n_past = s.job.prompt.len() as u32;
                    metrics
                        .prompt_tokens
                        .fetch_add(s.job.prompt.len() as u64, Ordering::Relaxed);
                    r
                }
                Next::Token(t) => {
                    let r = batch.add(t, s.n_past as i32, &seq_ids, true);
                    s.n_past += 1;
                    r
                }
            };
            if added.is_err() {
                batch_ok = false;
            }
            s.logits = batch.n_tokens() - 1;
        }

        if !batch_ok {
            fail_all(
                &mut slots,
                "the batch overflowed; this is a bug in the engine",
            );
        } else if batch.n_tokens() > 0 {
            let t = Instant::now();
            let decoded = ctx.decode(&mut batch);
            metrics
                .decode_nanos
                .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            if let Err(e) = decoded {
                fail_all(&mut slots, &format!("llama.cpp decode failed: {e}"));
            }
        }

        for (seq, slot) in slots.iter_mut().enumerate() {
            let Some(s) = slot.as_mut() else { continue };
            let finish = if s.cancelled {
                Some(FinishReason::Length)
            } else if s.failed {
                None
            } else {
                let token = s.sampler.sample(&ctx, s.logits);
                step(s, token, &vocab, &mut piece, ctx_per_slot, &metrics)
            };
            if s.cancelled || s.failed || finish.is_some() {
                if let Some(f) = finish {
                    finish_slot(s, f);
                }
                let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
                *slot = None;
            }
        }
    }
    metrics.slots_busy.store(0, Ordering::Relaxed);
    tracing::info!("inference thread stopped; freeing the model");
}

enum Next {
    Prompt,
    Token(LlamaToken),
}

struct Slot {
    job: Job,
    sampler: LlamaSampler,
    next: Next,
    n_past: u32,
    logits: i32,
    generated: u32,
    utf8: Utf8Decoder,
    stop: StopMatcher,
    /// The text so far of a non-streamed request.
    text: String,
    cancelled: bool,
    failed: bool,
}

fn place(slots: &mut [Option<Slot>], job: Job, model: &LlamaModel) {
    if job.events.is_closed() {
        return; // the client left while queued
    }
    let Some(free) = slots.iter_mut().find(|s| s.is_none()) else {
        // Unreachable: callers only place into a free slot.
        let _ = job.events.send(Event::Failed("no free slot".into()));
        return;
    };
    let sampler = build_sampler(&job.sampling, model);
    let stop = StopMatcher::new(job.stops.clone());
    *free = Some(Slot {
        job,
        sampler,
        next: Next::Prompt,
        n_past: 0,
        logits: 0,
        generated: 0,
        utf8: Utf8Decoder::new(),
        stop,
        text: String::new(),
        cancelled: false,
        failed: false,
    });
}

/// The sampler chain: a grammar and logit biases when asked, penalties, then greedy (temperature
/// 0) or top-k → top-p → min-p → temperature → a seeded draw. The same settings and seed give the
/// same tokens.
pub fn build_sampler(s: &Sampling, model: &LlamaModel) -> LlamaSampler {
    let n_vocab = model.n_vocab();
    let mut chain = Vec::new();
    // Checked against this model when the request came in (a 400 otherwise).
    if let Some(g) = &s.grammar
        && let Ok(grammar) = LlamaSampler::grammar(model, g, "root")
    {
        chain.push(grammar);
    }
    let biases: Vec<llama_cpp_2::token::logit_bias::LlamaLogitBias> = s
        .logit_bias
        .iter()
        .filter(|(id, _)| *id < n_vocab)
        .map(|(id, b)| {
            llama_cpp_2::token::logit_bias::LlamaLogitBias::new(
                llama_cpp_2::token::LlamaToken::new(*id),
                *b,
            )
        })
        .collect();
    if !biases.is_empty() {
        chain.push(LlamaSampler::logit_bias(n_vocab, &biases));
    }
    if s.repeat_penalty != 1.0 || s.frequency_penalty != 0.0 || s.presence_penalty != 0.0 {
        chain.push(LlamaSampler::penalties(
            n_vocab,
            PENALTY_LAST_N,
            s.repeat_penalty,
            s.frequency_penalty,
            s.presence_penalty,
        ));
    }
    if s.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if s.top_k > 0 {
            chain.push(LlamaSampler::top_k(s.top_k));
        }
        if s.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(s.top_p, 1));
        }
        if s.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(s.min_p, 1));
        }
        chain.push(LlamaSampler::temp(s.temperature));
        chain.push(LlamaSampler::dist(s.seed));
    }
    LlamaSampler::chain_simple(chain)
}

/// Handles one sampled token; returns the finish reason when the request is complete.
fn step(
    s: &mut Slot,
    token: LlamaToken,
    vocab: &llama_cpp_2::vocab::LlamaVocab<'_>,
    piece: &mut Vec<u8>,
    ctx_per_slot: u32,
    metrics: &Metrics,
) -> Option<FinishReason> {
    if vocab.is_eog(token) {
        return Some(FinishReason::Stop);
    }
    s.generated += 1;
    metrics.completion_tokens.fetch_add(1, Ordering::Relaxed);
    piece.clear();
    vocab.token_to_piece_into(token, piece, false, None);
    let text = s.utf8.push(piece);
    if !text.is_empty() {
        let st = s.stop.push(&text);
        emit(s, st.emit);
        if st.stopped {
            return Some(FinishReason::Stop);
        }
    }
    if s.generated >= s.job.max_tokens || s.n_past + 1 >= ctx_per_slot {
        return Some(FinishReason::Length);
    }
    s.next = Next::Token(token);
    None
}

/// Flushes held text and reports the end of a request.
fn finish_slot(s: &mut Slot, mut finish: FinishReason) {
    let tail = s.utf8.finish();
    let mut out = String::new();
    let st = s.stop.push(&tail);
    out.push_str(&st.emit);
    if st.stopped {
        finish = FinishReason::Stop;
    } else {
        // Text held back in case it began a stop sequence is output after all.
        out.push_str(&s.stop.finish());
    }
    emit(s, out);
    if !s.text.is_empty() {
        let _ = s.job.events.send(Event::Delta(std::mem::take(&mut s.text)));
    }
    let _ = s.job.events.send(Event::Done {
        finish,
        prompt_tokens: s.job.prompt.len() as u32,
        completion_tokens: s.generated,
    });
}

/// Sends text now (streaming) or keeps it for the end.
fn emit(s: &mut Slot, text: String) {
    if text.is_empty() {
        return;
    }
    if s.job.stream {
        let _ = s.job.events.send(Event::Delta(text));
    } else {
        s.text.push_str(&text);
    }
}

fn fail_all(slots: &mut [Option<Slot>], message: &str) {
    for s in slots.iter_mut().flatten() {
        if !s.cancelled {
            s.failed = true;
            let _ = s.job.events.send(Event::Failed(message.to_owned()));
        }
    }
}

fn load_model(backend: &LlamaBackend, config: &EngineConfig) -> Result<LlamaModel, EngineError> {
    let meta = std::fs::metadata(&config.model).map_err(|source| EngineError::ModelFile {
        path: config.model.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(EngineError::ModelFile {
            path: config.model.clone(),
            source: std::io::Error::other("not a regular file"),
        });
    }
    let gpu_layers = u32::try_from(config.gpu_layers).unwrap_or(u32::MAX);
    let params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers);
    LlamaModel::load_from_file(backend, &config.model, &params).map_err(|e| {
        EngineError::ModelLoad {
            path: config.model.clone(),
            reason: e.to_string(),
        }
    })
}
