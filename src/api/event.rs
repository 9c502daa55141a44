//! A custom event published through `POST /api/v1/events` (or `lasctl events publish`), checked
//! like Kubernetes checks an Event: a type, an UpperCamelCase reason of bounded length, a message
//! of bounded length, and an optional involved object.

use serde_json::Value;

use super::meta::ObjectName;
use super::plugin::{MAX_REASON_LEN, SinkEventType, is_upper_camel};

/// The longest message accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// The involved object of an event published without one.
pub const DEFAULT_INVOLVED: (&str, &str) = ("Host", "local");
/// The source recorded with a published event.
pub const PUBLISHED_SOURCE: &str = "published";

/// A checked custom event.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedEvent {
    pub type_: SinkEventType,
    pub reason: String,
    pub message: String,
    pub kind: String,
    pub name: ObjectName,
}

impl PublishedEvent {
    /// Checks a request body; every problem is reported with its field path.
    pub fn from_json(v: &Value) -> Result<PublishedEvent, Vec<(String, String)>> {
        let mut errors: Vec<(String, String)> = Vec::new();
        let Some(obj) = v.as_object() else {
            return Err(vec![(
                String::new(),
                "expected an object {type, reason, message, involvedObject?}".into(),
            )]);
        };
        for k in obj.keys() {
            if !["type", "reason", "message", "involvedObject"].contains(&k.as_str()) {
                errors.push((
                    k.clone(),
                    "unknown field, expected one of type, reason, message, involvedObject".into(),
                ));
            }
        }
        let type_ = match obj.get("type").and_then(Value::as_str) {
            Some("Normal") => Some(SinkEventType::Normal),
            Some("Warning") => Some(SinkEventType::Warning),
            other => {
                errors.push((
                    "type".into(),
                    format!(
                        "{}: expected Normal or Warning",
                        other.map_or("missing".to_string(), |s| format!("{s:?}"))
                    ),
                ));
                None
            }
        };
        let reason = match obj.get("reason").and_then(Value::as_str) {
            Some(r) if is_upper_camel(r, MAX_REASON_LEN) => Some(r.to_string()),
            other => {
                errors.push((
                    "reason".into(),
                    format!(
                        "{}: expected UpperCamelCase (a capital letter, then letters and digits), at most {MAX_REASON_LEN} characters",
                        other.map_or("missing".to_string(), |s| format!("{s:?}"))
                    ),
                ));
                None
            }
        };
        let message = match obj.get("message") {
            Some(Value::String(m)) if m.len() <= MAX_MESSAGE_BYTES => Some(m.clone()),
            Some(Value::String(m)) => {
                errors.push((
                    "message".into(),
                    format!("{} bytes: expected at most {MAX_MESSAGE_BYTES}", m.len()),
                ));
                None
            }
            _ => {
                errors.push(("message".into(), "expected a string".into()));
                None
            }
        };
        let (mut kind, mut name) = (
            DEFAULT_INVOLVED.0.to_string(),
            ObjectName::new(DEFAULT_INVOLVED.1).ok(),
        );
        match obj.get("involvedObject") {
            None | Some(Value::Null) => {}
            Some(Value::Object(o)) => {
                for k in o.keys() {
                    if !["kind", "name"].contains(&k.as_str()) {
                        errors.push((
                            format!("involvedObject.{k}"),
                            "unknown field, expected kind or name".into(),
                        ));
                    }
                }
                match o.get("kind").and_then(Value::as_str) {
                    Some(k) if is_upper_camel(k, 63) => kind = k.to_string(),
                    other => errors.push((
                        "involvedObject.kind".into(),
                        format!(
                            "{}: expected a kind in UpperCamelCase (e.g. Module), at most 63 characters",
                            other.map_or("missing".to_string(), |s| format!("{s:?}"))
                        ),
                    )),
                }
                match o.get("name").and_then(Value::as_str).map(ObjectName::new) {
                    Some(Ok(n)) => name = Some(n),
                    Some(Err(e)) => errors.push(("involvedObject.name".into(), e)),
                    None => errors.push(("involvedObject.name".into(), "expected a string".into())),
                }
            }
            Some(_) => errors.push((
                "involvedObject".into(),
                "expected an object {kind, name}".into(),
            )),
        }
        match (type_, reason, message, name) {
            (Some(type_), Some(reason), Some(message), Some(name)) if errors.is_empty() => {
                Ok(PublishedEvent {
                    type_,
                    reason,
                    message,
                    kind,
                    name,
                })
            }
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_good_event_and_its_default_object() {
        let e = PublishedEvent::from_json(
            &json!({"type": "Warning", "reason": "DiskSlow", "message": "fsync took 2 s"}),
        )
        .unwrap();
        assert_eq!(e.type_, SinkEventType::Warning);
        assert_eq!((e.kind.as_str(), e.name.as_str()), DEFAULT_INVOLVED);
        let e = PublishedEvent::from_json(&json!({"type": "Normal", "reason": "Deployed",
            "message": "", "involvedObject": {"kind": "Module", "name": "chat"}}))
        .unwrap();
        assert_eq!(e.kind, "Module");
    }

    #[test]
    fn every_bad_field_is_named() {
        let long = "A".repeat(MAX_REASON_LEN + 1);
        let cases = [
            (
                json!({"type": "Info", "reason": "X", "message": ""}),
                "type",
            ),
            (
                json!({"type": "Normal", "reason": "lower", "message": ""}),
                "reason",
            ),
            (
                json!({"type": "Normal", "reason": "Has Space", "message": ""}),
                "reason",
            ),
            (
                json!({"type": "Normal", "reason": long, "message": ""}),
                "reason",
            ),
            (
                json!({"type": "Normal", "reason": "X", "message": 3}),
                "message",
            ),
            (
                json!({"type": "Normal", "reason": "X", "message": "x".repeat(MAX_MESSAGE_BYTES + 1)}),
                "message",
            ),
            (
                json!({"type": "Normal", "reason": "X", "message": "", "involvedObject": {"kind": "Module", "name": "Bad_Name"}}),
                "involvedObject.name",
            ),
            (
                json!({"type": "Normal", "reason": "X", "message": "", "involvedObject": {"kind": "module", "name": "a"}}),
                "involvedObject.kind",
            ),
            (
                json!({"type": "Normal", "reason": "X", "message": "", "extra": 1}),
                "extra",
            ),
        ];
        for (body, field) in cases {
            let errs = PublishedEvent::from_json(&body).unwrap_err();
            assert!(
                errs.iter().any(|(f, _)| f == field),
                "{body}: {errs:?} should name {field}"
            );
        }
        let errs = PublishedEvent::from_json(&json!({})).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["type", "reason", "message"]);
    }
}
