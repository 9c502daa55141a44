//! The HTTP side of the engine: binds first, serves `/health` (503 until the model is loaded),
//! the OpenAI endpoints and `/metrics`, and shuts down gracefully on SIGTERM or SIGINT.

use std::convert::Infallible;
use std::future::IntoFuture;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaChatMessage;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::Instrument;

use super::metrics::Metrics;
use super::openai::{
    ApiError, ChatRequest, CommonParams, CompletionRequest, chat_messages, parse_body, usage,
};
use super::text::chatml;
use super::worker::{self, Admission, Event, Job, Loaded, WorkerParams};
use super::{EngineConfig, EngineError};

/// After SIGTERM, in-flight requests may finish for this long; then they are cut short
/// (finish reason `length`).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

struct AppState {
    model_id: String,
    loaded: OnceLock<Loaded>,
    jobs: Mutex<Option<Sender<Job>>>,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    parallel: u32,
}

pub fn serve(config: EngineConfig) -> Result<(), EngineError> {
    let checked = super::settings::check(&config, super::settings::Machine::detect())?;
    let threads = checked.threads;
    let config = EngineConfig {
        ctx: checked.ctx_per_slot,
        ..config
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve_async(config, threads))
}

async fn serve_async(config: EngineConfig, threads: u32) -> Result<(), EngineError> {
    // llama.cpp's own log lines go to tracing only when asked for (LAS_LOG=llama_cpp_2=info):
    // by default the engine's stderr stays one line per problem.
    let llama_logs = std::env::var("LAS_LOG").is_ok_and(|v| v.contains("llama_cpp_2"));
    llama_cpp_2::send_logs_to_tracing(
        llama_cpp_2::LogOptions::default().with_logs_enabled(llama_logs),
    );
    let backend = Arc::new(LlamaBackend::init().map_err(|e| EngineError::Backend(e.to_string()))?);

    let addr = std::net::SocketAddr::new(config.host, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| EngineError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr()?;
    let mut out = std::io::stdout();
    writeln!(out, "listening on http://{local}")?;
    out.flush()?;

    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
    let metrics = Arc::new(Metrics::default());
    let parallel = config.parallel;
    let state = Arc::new(AppState {
        model_id: config.model_id(),
        loaded: OnceLock::new(),
        jobs: Mutex::new(Some(jobs_tx)),
        admission: Admission::new((config.parallel + config.queue) as usize),
        metrics: Arc::clone(&metrics),
        parallel,
    });

    let cancel = Arc::new(AtomicBool::new(false));
    let (load_tx, load_rx) = tokio::sync::oneshot::channel();
    let worker = {
        let backend = Arc::clone(&backend);
        let cancel = Arc::clone(&cancel);
        let metrics = Arc::clone(&metrics);
        let params = WorkerParams {
            config: config.clone(),
            threads,
        };
        let span = tracing::info_span!("llama_worker", model = %config.model.display(), threads);
        std::thread::Builder::new()
            .name("las-llama".into())
            .spawn(move || {
                let _enter = span.enter();
                worker::run(&backend, params, jobs_rx, cancel, metrics, |r| {
                    let _ = load_tx.send(r);
                });
            })?
    };

    let app = router(Arc::clone(&state));
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal(Arc::clone(&cancel)))
            .into_future()
            .instrument(tracing::info_span!("engine_http", %local)),
    );

    let loaded = load_rx.await;
    match loaded {
        Ok(Ok(l)) => {
            tracing::info!(
                load_ms = l.load_ms as u64,
                threads = l.threads,
                "model loaded"
            );
            writeln!(
                out,
                "ready: model {} loaded in {} ms (context {} per slot, {} slots, {} threads)",
                state.model_id, l.load_ms, l.ctx_per_slot, parallel, l.threads
            )?;
            out.flush()?;
            let _ = state.loaded.set(l);
            metrics.loaded.store(1, Ordering::Relaxed);
        }
        Ok(Err(e)) => {
            server.abort();
            stop_worker(&state, worker).await;
            return Err(e);
        }
        Err(_) => {
            server.abort();
            stop_worker(&state, worker).await;
            return Err(EngineError::WorkerDied);
        }
    }

    let served = server.await;
    stop_worker(&state, worker).await;
    drop(state);
    drop(backend);
    match served {
        Ok(r) => r.map_err(EngineError::Io),
        Err(_) => Err(EngineError::WorkerDied),
    }
}

/// Closes the job channel and waits for the inference thread, which frees the model.
async fn stop_worker(state: &AppState, worker: std::thread::JoinHandle<()>) {
    if let Ok(mut jobs) = state.jobs.lock() {
        jobs.take();
    }
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
}

async fn shutdown_signal(cancel: Arc<AtomicBool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down: no new connections; finishing in-flight requests");
    tokio::spawn(async move {
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        tracing::warn!("grace period over; cancelling in-flight requests");
        cancel.store(true, Ordering::Release);
    });
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "no such endpoint".into(),
                kind: "invalid_request_error",
                param: None,
                code: Some("not_found"),
            }
        })
        .with_state(state)
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.loaded.get().is_some() {
        (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "loading"})),
        )
            .into_response()
    }
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": state.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "localaistack",
        }],
    }))
    .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let busy = state.metrics.slots_busy.load(Ordering::Relaxed) as usize;
    let queued = state.admission.inflight().saturating_sub(busy);
    state.metrics.queued.store(queued as u64, Ordering::Relaxed);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&state.model_id),
    )
        .into_response()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completion,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat_completions",
            Endpoint::Completion => "completions",
        }
    }
}

async fn chat(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let r = match parse_body::<ChatRequest>(&body).and_then(|req| {
        let msgs = chat_messages(&req.messages)?;
        Ok((req.common, msgs))
    }) {
        Ok((common, msgs)) => {
            let prompt = |l: &Loaded| chat_prompt(l, &msgs);
            generate(&state, Endpoint::Chat, common, prompt, started).await
        }
        Err(e) => Err(e),
    };
    finish(&state, Endpoint::Chat, r, started)
}

async fn completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let r = match parse_body::<CompletionRequest>(&body) {
        Ok(req) => {
            let prompts = req.prompt.into_vec();
            if prompts.len() != 1 {
                Err(ApiError::invalid(
                    "exactly one prompt is supported",
                    Some("prompt"),
                ))
            } else {
                let text = prompts.into_iter().next().unwrap_or_default();
                let prompt = move |_: &Loaded| text.clone();
                generate(&state, Endpoint::Completion, req.common, prompt, started).await
            }
        }
        Err(e) => Err(e),
    };
    finish(&state, Endpoint::Completion, r, started)
}

/// Counts a request that ended before streaming (errors and non-streaming answers).
fn finish(
    state: &AppState,
    endpoint: Endpoint,
    r: Result<Reply, ApiError>,
    started: Instant,
) -> Response {
    match r {
        Ok(Reply::Done(resp)) => {
            state
                .metrics
                .request(endpoint.name(), 200, started.elapsed());
            resp
        }
        // Counted when the stream ends.
        Ok(Reply::Streaming(resp)) => resp,
        Err(e) => {
            tracing::debug!(status = e.status.as_u16(), message = %e.message, "request refused");
            state
                .metrics
                .request(endpoint.name(), e.status.as_u16(), started.elapsed());
            e.into_response()
        }
    }
}

enum Reply {
    Done(Response),
    Streaming(Response),
}

/// The chat template of the GGUF when llama.cpp knows it, else ChatML ([`chatml`]).
fn chat_prompt(loaded: &Loaded, msgs: &[(String, String)]) -> String {
    if let Some(tmpl) = &loaded.template {
        let chat: Result<Vec<LlamaChatMessage>, _> = msgs
            .iter()
            .map(|(r, c)| LlamaChatMessage::new(r.clone(), c.clone()))
            .collect();
        if let Ok(chat) = chat
            && let Ok(p) = loaded.model.apply_chat_template(tmpl, &chat, true)
        {
            return p;
        }
    }
    chatml(msgs)
}

async fn generate(
    state: &Arc<AppState>,
    endpoint: Endpoint,
    common: CommonParams,
    prompt: impl FnOnce(&Loaded) -> String,
    started: Instant,
) -> Result<Reply, ApiError> {
    if let Some(m) = &common.model
        && m != &state.model_id
    {
        return Err(ApiError::invalid(
            format!(
                "the model {m:?} is not served here; this engine serves {:?}",
                state.model_id
            ),
            Some("model"),
        )
        .with_code("model_not_found"));
    }
    let Some(loaded) = state.loaded.get() else {
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the model is still loading; retry when /health answers 200".into(),
            kind: "server_error",
            param: None,
            code: Some("model_loading"),
        });
    };
    let sampling = common.sampling()?;
    if let Some(g) = &sampling.grammar {
        llama_cpp_2::sampling::LlamaSampler::grammar(&loaded.model, g, "root")
            .map_err(|e| ApiError::invalid(format!("grammar: {e}"), Some("grammar")))?;
    }
    let max_tokens = common.max_tokens()?;
    let stops = common.stops()?;

    let text = prompt(loaded);
    let tokens = loaded.model.vocab().tokenize(text.as_bytes(), true, true);
    let prompt_param = if endpoint == Endpoint::Chat {
        "messages"
    } else {
        "prompt"
    };
    if tokens.is_empty() {
        return Err(ApiError::invalid("the prompt is empty", Some(prompt_param)));
    }
    let ctx = loaded.ctx_per_slot as usize;
    if tokens.len() >= ctx {
        return Err(ApiError::invalid(
            format!(
                "the prompt has {} tokens; the context holds {ctx} including the completion",
                tokens.len()
            ),
            Some(prompt_param),
        )
        .with_code("context_length_exceeded"));
    }
    let room = (ctx - tokens.len()) as u32;
    let max_tokens = match max_tokens {
        Some(n) if n > room => {
            return Err(ApiError::invalid(
                format!(
                    "max_tokens is {n}, but the context of {ctx} tokens leaves room for {room} after the {}-token prompt",
                    tokens.len()
                ),
                Some("max_tokens"),
            )
            .with_code("context_length_exceeded"));
        }
        Some(n) => n,
        None => room,
    };

    let Some(admission) = state.admission.try_admit() else {
        return Err(ApiError::overloaded(format!(
            "all {} slots are busy and the queue is full; retry later",
            state.parallel
        )));
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let job = Job {
        prompt: tokens,
        max_tokens,
        sampling,
        stops,
        stream: common.stream,
        events: tx,
        _admission: admission,
    };
    let sent = state
        .jobs
        .lock()
        .ok()
        .and_then(|j| j.as_ref().map(|s| s.send(job).is_ok()))
        .unwrap_or(false);
    if !sent {
        return Err(ApiError::overloaded("the engine is shutting down"));
    }

    let meta = ResponseMeta {
        id: format!(
            "{}-{}",
            if endpoint == Endpoint::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            uuid::Uuid::new_v4().simple()
        ),
        created: chrono::Utc::now().timestamp(),
        model: state.model_id.clone(),
        endpoint,
    };
    if common.stream {
        Ok(Reply::Streaming(stream_reply(
            Arc::clone(state),
            meta,
            rx,
            started,
        )))
    } else {
        collect_reply(meta, rx).await.map(Reply::Done)
    }
}

struct ResponseMeta {
    id: String,
    created: i64,
    model: String,
    endpoint: Endpoint,
}

impl ResponseMeta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        }
    }

    fn body(&self, chunk: bool, choice: Value, usage: Option<Value>) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [choice],
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    }
}

async fn collect_reply(
    meta: ResponseMeta,
    mut rx: UnboundedReceiver<Event>,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Delta(d) => text.push_str(&d),
            Event::Failed(m) => return Err(ApiError::internal(m)),
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                let choice = match meta.endpoint {
                    Endpoint::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": null,
                        "finish_reason": finish.as_str(),
                    }),
                    Endpoint::Completion => json!({
                        "index": 0,
                        "text": text,
                        "logprobs": null,
                        "finish_reason": finish.as_str(),
                    }),
                };
                let body = meta.body(false, choice, Some(usage(prompt_tokens, completion_tokens)));
                return Ok(axum::Json(body).into_response());
            }
        }
    }
    Err(ApiError::internal(
        "the inference thread ended the request without an answer",
    ))
}

fn stream_reply(
    state: Arc<AppState>,
    meta: ResponseMeta,
    rx: UnboundedReceiver<Event>,
    started: Instant,
) -> Response {
    let meta = Arc::new(meta);
    let endpoint = meta.endpoint;
    let delta_choice = move |text: Option<&str>, role: bool, finish: Option<&str>| match endpoint {
        Endpoint::Chat => {
            let mut delta = json!({});
            if role {
                delta["role"] = json!("assistant");
            }
            if let Some(t) = text {
                delta["content"] = json!(t);
            }
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        }
        Endpoint::Completion => json!({
            "index": 0,
            "text": text.unwrap_or(""),
            "logprobs": null,
            "finish_reason": finish,
        }),
    };
    let first = if endpoint == Endpoint::Chat {
        vec![sse(&meta.body(
            true,
            delta_choice(Some(""), true, None),
            None,
        ))]
    } else {
        Vec::new()
    };
    let m = Arc::clone(&meta);
    let events = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).flat_map(move |ev| {
        let out: Vec<SseEvent> = match ev {
            Event::Delta(d) => vec![sse(&m.body(
                true,
                delta_choice(Some(&d), false, None),
                None,
            ))],
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                state
                    .metrics
                    .request(endpoint.name(), 200, started.elapsed());
                vec![
                    sse(&m.body(
                        true,
                        delta_choice(None, false, Some(finish.as_str())),
                        Some(usage(prompt_tokens, completion_tokens)),
                    )),
                    SseEvent::default().data("[DONE]"),
                ]
            }
            Event::Failed(msg) => {
                state
                    .metrics
                    .request(endpoint.name(), 500, started.elapsed());
                vec![
                    sse(&ApiError::internal(msg).body()),
                    SseEvent::default().data("[DONE]"),
                ]
            }
        };
        futures_util::stream::iter(out.into_iter().map(Ok::<_, Infallible>))
    });
    let stream =
        futures_util::stream::iter(first.into_iter().map(Ok::<_, Infallible>)).chain(events);
    Sse::new(stream).into_response()
}

fn sse(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}
