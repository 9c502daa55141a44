//! The OpenAI wire format: request bodies (lenient about fields we ignore, strict about values),
//! response and chunk bodies, and OpenAI's error body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

/// An error answered with OpenAI's body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some("overloaded"),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// A string or a list of strings (`stop`, `prompt`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Message content: a string, or a list of parts of which only `text` parts are supported.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// The sampling and length fields shared by both endpoints. Unknown fields are ignored, as clients
/// send many; `stream_options` among them: the last chunk of a stream always carries `usage`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CommonParams {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<i32>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Option<OneOrMany>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub repeat_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub n: Option<u32>,
    /// Token id (as a string) → bias added to its logit, -100 to 100 (OpenAI's `logit_bias`).
    #[serde(default)]
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    /// A GBNF grammar (rule `root`) the output must follow, as llama.cpp's server takes it.
    #[serde(default)]
    pub grammar: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub common: CommonParams,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: OneOrMany,
    #[serde(flatten)]
    pub common: CommonParams,
}

/// Parses a JSON body into `T`, answering OpenAI's 400 body for malformed JSON or a wrong shape.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid(
            "the request body is empty; expected JSON",
            None,
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("could not parse the JSON body: {e}"), None))
}

/// Validated sampling settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 = off.
    pub top_k: i32,
    pub min_p: f32,
    pub seed: u32,
    pub repeat_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// (token id, bias), applied before any other sampler.
    pub logit_bias: Vec<(i32, f32)>,
    /// A GBNF grammar (checked against the model before the job is queued).
    pub grammar: Option<String>,
}

impl CommonParams {
    /// Checks ranges and returns the sampling settings; an absent seed is drawn at random.
    pub fn sampling(&self) -> Result<Sampling, ApiError> {
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                format!("temperature must be between 0 and 2, got {temperature}"),
                Some("temperature"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                format!("top_p must be in (0, 1], got {top_p}"),
                Some("top_p"),
            ));
        }
        let min_p = self.min_p.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_p) {
            return Err(ApiError::invalid(
                format!("min_p must be in [0, 1], got {min_p}"),
                Some("min_p"),
            ));
        }
        let top_k = self.top_k.unwrap_or(0);
        if top_k < 0 {
            return Err(ApiError::invalid(
                "top_k must not be negative",
                Some("top_k"),
            ));
        }
        let repeat_penalty = self.repeat_penalty.unwrap_or(1.0);
        if !(repeat_penalty.is_finite() && repeat_penalty > 0.0) {
            return Err(ApiError::invalid(
                "repeat_penalty must be a positive number",
                Some("repeat_penalty"),
            ));
        }
        let frequency_penalty = self.frequency_penalty.unwrap_or(0.0);
        let presence_penalty = self.presence_penalty.unwrap_or(0.0);
        for (v, name) in [
            (frequency_penalty, "frequency_penalty"),
            (presence_penalty, "presence_penalty"),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(ApiError::invalid(
                    format!("{name} must be between -2 and 2, got {v}"),
                    Some(if name == "frequency_penalty" {
                        "frequency_penalty"
                    } else {
                        "presence_penalty"
                    }),
                ));
            }
        }
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::invalid("only n = 1 is supported", Some("n")));
        }
        let mut logit_bias = Vec::new();
        for (k, v) in self.logit_bias.iter().flatten() {
            let id: i32 = k.parse().ok().filter(|i| *i >= 0).ok_or_else(|| {
                ApiError::invalid(
                    format!("logit_bias keys must be token ids, got {k:?}"),
                    Some("logit_bias"),
                )
            })?;
            if !(-100.0..=100.0).contains(v) {
                return Err(ApiError::invalid(
                    format!("logit_bias values must be between -100 and 100, got {v} for {k}"),
                    Some("logit_bias"),
                ));
            }
            logit_bias.push((id, *v));
        }
        let seed = match self.seed {
            // Any i64 is accepted, as OpenAI does; llama.cpp takes 32 bits.
            Some(s) => (s as u64 & 0xffff_ffff) as u32,
            None => random_seed(),
        };
        Ok(Sampling {
            temperature,
            top_p,
            top_k,
            min_p,
            seed,
            repeat_penalty,
            frequency_penalty,
            presence_penalty,
            logit_bias,
            grammar: self.grammar.clone().filter(|g| !g.trim().is_empty()),
        })
    }

    /// The requested completion length, if any (must be at least 1).
    pub fn max_tokens(&self) -> Result<Option<u32>, ApiError> {
        match self.max_completion_tokens.or(self.max_tokens) {
            None => Ok(None),
            Some(n) if n >= 1 => Ok(Some(u32::try_from(n).unwrap_or(u32::MAX))),
            Some(n) => Err(ApiError::invalid(
                format!("max_tokens must be at least 1, got {n}"),
                Some("max_tokens"),
            )),
        }
    }

    pub fn stops(&self) -> Result<Vec<String>, ApiError> {
        let stops = self
            .stop
            .clone()
            .map(OneOrMany::into_vec)
            .unwrap_or_default();
        if stops.len() > 4 {
            return Err(ApiError::invalid(
                "at most 4 stop sequences are allowed",
                Some("stop"),
            ));
        }
        Ok(stops)
    }
}

fn random_seed() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// Converts chat messages to (role, text) pairs; empty lists and non-text parts are 400s.
pub fn chat_messages(messages: &[ChatMessage]) -> Result<Vec<(String, String)>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages must contain at least one message",
            Some("messages"),
        ));
    }
    messages
        .iter()
        .map(|m| {
            if m.role.trim().is_empty() {
                return Err(ApiError::invalid(
                    "every message needs a role",
                    Some("messages"),
                ));
            }
            let text = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut s = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => s.push_str(t),
                            _ => {
                                return Err(ApiError::invalid(
                                    format!(
                                        "content parts of type {:?} are not supported; only text",
                                        p.kind
                                    ),
                                    Some("messages"),
                                ));
                            }
                        }
                    }
                    s
                }
            };
            Ok((m.role.clone(), text))
        })
        .collect()
}

pub fn usage(prompt: u32, completion: u32) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_json_is_an_invalid_request() {
        let e = parse_body::<ChatRequest>(b"{not json").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.body()["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn empty_messages_are_rejected() {
        let r: ChatRequest = parse_body(br#"{"model":"m","messages":[]}"#).unwrap();
        let e = chat_messages(&r.messages).unwrap_err();
        assert_eq!(e.param, Some("messages"));
    }

    #[test]
    fn fixed_seed_is_kept_and_ranges_checked() {
        let r: CompletionRequest =
            parse_body(br#"{"prompt":"x","seed":7,"temperature":0.5}"#).unwrap();
        assert_eq!(r.common.sampling().unwrap().seed, 7);
        let bad: CompletionRequest = parse_body(br#"{"prompt":"x","temperature":3}"#).unwrap();
        assert_eq!(
            bad.common.sampling().unwrap_err().param,
            Some("temperature")
        );
        let zero: CompletionRequest = parse_body(br#"{"prompt":"x","max_tokens":0}"#).unwrap();
        assert!(zero.common.max_tokens().is_err());
    }
}
