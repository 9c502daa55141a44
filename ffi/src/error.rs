//! Errors of the C ABI, and the JSON object `las_last_error()` returns for them.

use serde_json::{Value, json};

/// Why a call returned NULL.
#[derive(Debug)]
pub enum Error {
    /// A NULL pointer, a string that is not UTF-8, a bad address or token, a request that is not
    /// a JSON object. Nothing was sent.
    InvalidArgument(String),
    /// The daemon could not be reached.
    Connect { at: String, source: std::io::Error },
    /// The connection broke or timed out mid-call.
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    /// The answer was not HTTP/1.x, too large, or not a UTF-8 text without NUL bytes.
    Protocol(String),
    /// The daemon answered with a non-2xx status; `body` is what it said.
    Status { status: u16, body: Vec<u8> },
    /// A bug in the library: a panic was caught at the boundary.
    Panic(String),
}

impl Error {
    /// The stable `code` of the error object.
    pub fn code(&self) -> String {
        match self {
            Error::InvalidArgument(_) => "InvalidArgument".into(),
            Error::Connect { .. } => "Connect".into(),
            Error::Io { source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) =>
            {
                "Timeout".into()
            }
            Error::Io { .. } => "Io".into(),
            Error::Protocol(_) => "Protocol".into(),
            Error::Status { status, body } => {
                daemon_reason(body).unwrap_or_else(|| format!("HttpStatus{status}"))
            }
            Error::Panic(_) => "Panic".into(),
        }
    }

    /// One line for a person.
    pub fn message(&self) -> String {
        match self {
            Error::InvalidArgument(m) | Error::Protocol(m) => m.clone(),
            Error::Connect { at, source } => {
                format!("cannot reach the daemon at {at}: {source}; is `lasctl daemon` running?")
            }
            Error::Io { what, source } => format!("{what}: {source}"),
            Error::Status { status, body } => {
                let said = daemon_message(body).unwrap_or_else(|| {
                    String::from_utf8_lossy(body)
                        .trim()
                        .chars()
                        .take(2000)
                        .collect()
                });
                format!("the daemon answered {status}: {said}")
            }
            Error::Panic(m) => format!("internal error in liblocalaistack (a bug): {m}"),
        }
    }

    /// `{"code", "message", "status" (the HTTP status, 0 when the daemon did not answer),
    /// "details" (the daemon's own error body, when it answered one)}`.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "code": self.code(),
            "message": self.message(),
            "status": match self { Error::Status { status, .. } => *status, _ => 0 },
        });
        if let Error::Status { body, .. } = self {
            v["details"] = serde_json::from_slice(body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
        }
        v
    }
}

/// The `reason` of a Kubernetes-style `Status` body, or the `code`/`type` of an OpenAI error.
fn daemon_reason(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let s = v
        .get("reason")
        .or_else(|| v.get("error").and_then(|e| e.get("code")))
        .or_else(|| v.get("error").and_then(|e| e.get("type")))?
        .as_str()?;
    (!s.is_empty()).then(|| s.to_string())
}

/// The `message` of a `Status` body or of an OpenAI error.
fn daemon_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("message")
        .or_else(|| v.get("error").and_then(|e| e.get("message")))?
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_body_gives_its_reason_message_and_details() {
        let e = Error::Status {
            status: 404,
            body: br#"{"kind":"Status","status":"Failure","reason":"NotFound","message":"Module \"x\" not found","code":404}"#.to_vec(),
        };
        let v = e.to_json();
        assert_eq!(v["code"], "NotFound");
        assert_eq!(v["status"], 404);
        assert_eq!(
            v["message"],
            "the daemon answered 404: Module \"x\" not found"
        );
        assert_eq!(v["details"]["reason"], "NotFound");
    }

    #[test]
    fn an_openai_error_and_a_text_body_are_reported_too() {
        let e = Error::Status {
            status: 404,
            body: br#"{"error":{"message":"model nope is not served","type":"invalid_request_error","code":"model_not_found"}}"#.to_vec(),
        };
        assert_eq!(e.code(), "model_not_found");
        assert!(e.message().contains("model nope is not served"));
        let e = Error::Status {
            status: 502,
            body: b"bad gateway\n".to_vec(),
        };
        let v = e.to_json();
        assert_eq!(v["code"], "HttpStatus502");
        assert_eq!(v["details"], "bad gateway\n");
        assert_eq!(v["message"], "the daemon answered 502: bad gateway");
    }

    #[test]
    fn errors_without_an_answer_have_status_zero() {
        let e = Error::Connect {
            at: "unix:/nowhere".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let v = e.to_json();
        assert_eq!(
            (v["code"].as_str(), v["status"].as_u64()),
            (Some("Connect"), Some(0))
        );
        assert!(v.get("details").is_none());
        let t = Error::Io {
            what: "reading",
            source: std::io::Error::from(std::io::ErrorKind::WouldBlock),
        };
        assert_eq!(t.code(), "Timeout");
    }
}
