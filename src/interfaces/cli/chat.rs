//! `lasctl run MODEL [PROMPT]`: a chat with a served model in the terminal, like `ollama run`.
//!
//! It talks to the daemon's OpenAI endpoint (`/v1/chat/completions`, streamed as server-sent
//! events) over the daemon's socket and starts nothing itself: when no Module serves MODEL it says
//! so and shows the Module to apply.
//!
//! - `PROMPT` given, or stdin not a terminal (its whole text is the prompt): one answer, then exit.
//! - Otherwise a conversation: every turn is sent with the ones before it; `/bye` or Ctrl-D ends
//!   it, `/clear` forgets it.

use std::io::{BufRead, IsTerminal, Read, Write};

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::Method;
use serde_json::{Value, json};

use super::CliError;
use super::daemon_record::serving;
use crate::api::{ConditionStatus, Kind};
use crate::control::store::Store;
use crate::home::LasHome;
use crate::interfaces::http::client::{DaemonClient, sse_messages};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A served model, or the Module serving it (as `/v1/models` lists them).
    #[arg(add = super::complete::models())]
    pub model: String,
    /// Answer this prompt and exit (several words are joined with spaces).
    pub prompt: Vec<String>,
    /// A system message that starts the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// The most tokens of one answer.
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Sampling temperature (0: greedy).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// After each answer, print its token counts on stderr.
    #[arg(long)]
    pub verbose: bool,
}

struct Chat {
    client: DaemonClient,
    model: String,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    verbose: bool,
}

fn module_snippet(model: &str) -> String {
    format!(
        "  apiVersion: localaistack.io/v1alpha1\n  kind: Module\n  metadata:\n    name: {model}-chat\n  \
         spec:\n    model: {model}            # the Model whose weights it serves\n    \
         engine: {{type: llama}}    # the built-in llama.cpp engine\n"
    )
}

/// Why `model` is not served, and what to do: the Modules that would serve it and their state,
/// else the Module to apply.
fn not_served(home: &LasHome, model: &str, served: &[String]) -> CliError {
    let listed = if served.is_empty() {
        "nothing is served yet".to_string()
    } else {
        format!("served here: {}", served.join(", "))
    };
    let mut waiting = Vec::new();
    let mut model_known = false;
    if home.state_db().exists()
        && let Ok(store) = Store::open(&home.state_db())
    {
        model_known = store.get(Kind::Model, model).is_ok();
        for m in store
            .list(Some(Kind::Module), &Default::default())
            .unwrap_or_default()
        {
            if m.spec.get("model").and_then(Value::as_str) != Some(model)
                && m.name.as_str() != model
            {
                continue;
            }
            let state = match m.condition("Ready") {
                Some((ConditionStatus::True, _, _)) => "Ready, not routed yet".to_string(),
                Some((_, reason, message)) => format!("not Ready ({reason}): {message}"),
                None => "not reconciled yet".to_string(),
            };
            waiting.push(format!("module/{} serves it but is {state}", m.name));
        }
    }
    if !waiting.is_empty() {
        return CliError::Usage(format!(
            "the model {model:?} is not served yet ({listed}): {}; `lasctl wait module/NAME` \
             waits for it, `lasctl describe module NAME` says more",
            waiting.join("; ")
        ));
    }
    CliError::Usage(format!(
        "no Module serves the model {model:?} ({listed}). `lasctl run` starts nothing itself; \
         to serve it, apply a Module like this{}:\n\n{}\nthen `lasctl wait module/{model}-chat` \
         and run this again",
        if model_known {
            ""
        } else {
            " (and a Model of that name whose spec.source is the GGUF file)"
        },
        module_snippet(model)
    ))
}

fn api_error(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("error")
                .and_then(|e| e.get("message"))
                .or_else(|| v.get("message"))
                .and_then(Value::as_str)
                .map(String::from)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

impl Chat {
    async fn served(&self) -> Result<Vec<String>, CliError> {
        let body = self.client.get_bytes("/v1/models").await?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| CliError::Usage(format!("the daemon's /v1/models is not JSON: {e}")))?;
        Ok(v["data"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|m| m["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Streams one answer to stdout and returns its text.
    async fn ask(&self, messages: &[Value]) -> Result<String, CliError> {
        let mut req = json!({
            "model": self.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(n) = self.max_tokens {
            req["max_tokens"] = json!(n);
        }
        if let Some(t) = self.temperature {
            req["temperature"] = json!(t);
        }
        let (status, mut body) = self
            .client
            .send(
                Method::POST,
                "/v1/chat/completions",
                &[
                    ("content-type", "application/json"),
                    ("accept", "text/event-stream"),
                ],
                Bytes::from(req.to_string()),
            )
            .await?;
        if !status.is_success() {
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.extend_from_slice(&chunk);
            }
            return Err(CliError::Usage(format!(
                "the model {:?} answered {status}: {}",
                self.model,
                api_error(&buf)
            )));
        }
        let mut events = Box::pin(sse_messages(body));
        let mut text = String::new();
        let mut usage = Value::Null;
        let mut out = std::io::stdout();
        while let Some(m) = events.next().await {
            let m = m?;
            if m.data.trim() == "[DONE]" {
                break;
            }
            let Ok(v) = serde_json::from_str::<Value>(&m.data) else {
                continue;
            };
            if let Some(e) = v.get("error") {
                return Err(CliError::Usage(format!(
                    "the model {:?} failed while answering: {}",
                    self.model,
                    e.get("message").and_then(Value::as_str).unwrap_or("?")
                )));
            }
            if let Some(piece) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(piece);
                out.write_all(piece.as_bytes())?;
                out.flush()?;
            }
            if !v["usage"].is_null() {
                usage = v["usage"].clone();
            }
        }
        if !text.ends_with('\n') {
            writeln!(out)?;
        }
        if self.verbose {
            eprintln!(
                "prompt tokens: {}, completion tokens: {}",
                usage["prompt_tokens"].as_u64().unwrap_or(0),
                usage["completion_tokens"].as_u64().unwrap_or(0)
            );
        }
        Ok(text)
    }
}

pub fn run(a: RunArgs) -> Result<(), CliError> {
    let home = LasHome::from_env()?;
    if std::env::var_os("LAS_LISTEN").is_none() && !serving(&home).is_running() {
        return Err(super::ps::no_daemon(&home, "no model is served from it"));
    }
    let chat = Chat {
        client: DaemonClient::from_env(&home)?,
        model: a.model.clone(),
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        verbose: a.verbose,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let served = rt.block_on(chat.served())?;
    if !served.contains(&a.model) {
        return Err(not_served(&home, &a.model, &served));
    }
    let mut messages: Vec<Value> = Vec::new();
    if let Some(s) = &a.system {
        messages.push(json!({"role": "system", "content": s}));
    }
    let stdin = std::io::stdin();
    let one = if !a.prompt.is_empty() {
        Some(a.prompt.join(" "))
    } else if !stdin.is_terminal() {
        let mut s = String::new();
        stdin.lock().read_to_string(&mut s)?;
        if s.trim().is_empty() {
            return Err(CliError::Usage(
                "no prompt: give one as an argument, on stdin, or run in a terminal to chat".into(),
            ));
        }
        Some(s)
    } else {
        None
    };
    if let Some(prompt) = one {
        messages.push(json!({"role": "user", "content": prompt}));
        rt.block_on(chat.ask(&messages))?;
        return Ok(());
    }
    eprintln!(
        "Chatting with {} (/bye or Ctrl-D ends, /clear forgets the conversation)",
        a.model
    );
    let system = messages.clone();
    let mut lines = stdin.lock();
    loop {
        print!(">>> ");
        std::io::stdout().flush()?;
        let mut line = String::new();
        if lines.read_line(&mut line)? == 0 {
            println!();
            return Ok(());
        }
        match line.trim() {
            "" => continue,
            "/bye" => return Ok(()),
            "/clear" => {
                messages = system.clone();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        messages.push(json!({"role": "user", "content": line.trim_end()}));
        match rt.block_on(chat.ask(&messages)) {
            Ok(answer) => messages.push(json!({"role": "assistant", "content": answer})),
            Err(e) => {
                // The turn is dropped; the conversation goes on.
                messages.pop();
                eprintln!("error: {e}");
            }
        }
    }
}
