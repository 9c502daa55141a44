//! `lasctl events [KIND NAME | KIND/NAME] [-w]`: the event log, then every new event as the daemon records it
//! (server-sent events, resumed after the last id printed).

use std::io::Write;

use futures_util::StreamExt;

use super::output::age;
use super::{CliError, objref};
use crate::control::store::Event;
use crate::home::LasHome;
use crate::interfaces::http::client::{DaemonClient, sse_messages};

/// `5s`, or for a series `5s (x12 over 2m)`, as `kubectl describe` says it.
pub(crate) fn seen(e: &Event) -> String {
    if e.count <= 1 {
        return age(&e.time);
    }
    let span = match (
        chrono::DateTime::parse_from_rfc3339(&e.first_timestamp),
        chrono::DateTime::parse_from_rfc3339(&e.time),
    ) {
        (Ok(first), Ok(last)) => {
            let s = (last - first).num_seconds().max(0);
            match s {
                s if s < 120 => format!("{s}s"),
                s if s < 7200 => format!("{}m", s / 60),
                s if s < 172800 => format!("{}h", s / 3600),
                s => format!("{}d", s / 86400),
            }
        }
        _ => "?".into(),
    };
    format!("{} (x{} over {span})", age(&e.time), e.count)
}

fn line(e: &Event) -> String {
    format!(
        "{:<22} {:<8} {:<20} {:<30} {}",
        seen(e),
        format!("{:?}", e.type_),
        e.reason,
        format!("{}/{}", e.kind.to_lowercase(), e.name),
        message(e)
    )
}

/// The message, prefixed with its source when the event is not the system's own
/// (`[published] ...`, `[eventBus] ...`).
fn message(e: &Event) -> String {
    match &e.source {
        Some(s) => format!("[{s}] {}", e.message),
        None => e.message.clone(),
    }
}

/// Prints the last `limit` events and then follows.
pub fn watch(object: &[String], limit: usize) -> Result<(), CliError> {
    let obj = objref::optional(object)?.map(|(kind, n)| format!("{}/{n}", kind.as_str()));
    let home = LasHome::from_env()?;
    let client = DaemonClient::from_env(&home)?;
    let mut path = format!("/api/v1/events?limit={limit}");
    if let Some(o) = &obj {
        path.push_str(&format!("&object={o}"));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let body = client.get_stream(&path, &[]).await?;
        let mut msgs = Box::pin(sse_messages(body));
        {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<22} {:<8} {:<20} {:<30} MESSAGE",
                "LAST SEEN", "TYPE", "REASON", "OBJECT"
            )?;
            out.flush()?;
        }
        while let Some(m) = msgs.next().await {
            let m = m?;
            let Ok(e) = serde_json::from_str::<EventIn>(&m.data) else {
                continue;
            };
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", line(&e.into()))?;
            out.flush()?;
        }
        Ok(())
    })
}

#[derive(serde::Deserialize)]
struct EventIn {
    id: i64,
    time: String,
    kind: String,
    name: String,
    #[serde(rename = "type")]
    type_: String,
    reason: String,
    message: String,
    #[serde(default = "one")]
    count: u64,
    #[serde(default, rename = "firstTimestamp")]
    first_timestamp: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

fn one() -> u64 {
    1
}

impl From<EventIn> for Event {
    fn from(e: EventIn) -> Self {
        Event {
            id: e.id,
            first_timestamp: e.first_timestamp.unwrap_or_else(|| e.time.clone()),
            last_timestamp: e.time.clone(),
            time: e.time,
            count: e.count,
            kind: e.kind,
            name: e.name,
            type_: if e.type_ == "Warning" {
                crate::control::store::EventType::Warning
            } else {
                crate::control::store::EventType::Normal
            },
            reason: e.reason,
            message: e.message,
            source: e.source,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Record a custom event through the daemon (POST /api/v1/events); it reaches event sinks.
    Publish {
        /// UpperCamelCase, e.g. BackupDone.
        reason: String,
        message: String,
        /// Normal or Warning.
        #[arg(long = "type", default_value = "Normal")]
        type_: String,
        /// The involved object, KIND/NAME (default Host/local).
        #[arg(long)]
        object: Option<String>,
    },
}

/// `lasctl events publish`: checks the event here (the same rules as the daemon), sends it, prints
/// the recorded event's id.
pub fn publish(c: EventsCommand) -> Result<(), CliError> {
    let EventsCommand::Publish {
        reason,
        message,
        type_,
        object,
    } = c;
    let mut body = serde_json::json!({"type": type_, "reason": reason, "message": message});
    if let Some(o) = object {
        let (kind, name) = o.split_once('/').ok_or_else(|| {
            CliError::Usage(format!("--object {o:?} is not of the form KIND/NAME"))
        })?;
        body["involvedObject"] = serde_json::json!({"kind": kind, "name": name});
    }
    if let Err(errors) = crate::api::event::PublishedEvent::from_json(&body) {
        let text: Vec<String> = errors.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        return Err(CliError::Failed(format!(
            "invalid event: {}",
            text.join("; ")
        )));
    }
    let home = LasHome::from_env()?;
    let client = DaemonClient::from_env(&home)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (status, mut stream) = client
            .send(
                hyper::Method::POST,
                "/api/v1/events",
                &[("content-type", "application/json")],
                bytes::Bytes::from(body.to_string()),
            )
            .await?;
        let mut buf = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            buf.extend_from_slice(&chunk);
        }
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap_or_default();
        if !status.is_success() {
            return Err(CliError::Failed(format!(
                "the daemon answered {status}: {}",
                v["message"]
                    .as_str()
                    .unwrap_or(&String::from_utf8_lossy(&buf))
            )));
        }
        println!("event {} recorded", v["id"]);
        Ok(())
    })
}

/// Prints the last `limit` events from the state database.
pub fn list(object: &[String], limit: usize) -> Result<(), CliError> {
    let store = super::verbs::open_store()?;
    let obj = objref::optional(object)?;
    let ev = store.events(
        obj.as_ref().map(|(k, n)| (k.as_str(), n.as_str())),
        0,
        limit,
    )?;
    let rows: Vec<Vec<String>> = ev
        .iter()
        .map(|e| {
            vec![
                seen(e),
                format!("{:?}", e.type_),
                e.reason.clone(),
                format!("{}/{}", e.kind.to_lowercase(), e.name),
                message(e),
            ]
        })
        .collect();
    super::output::print_table(
        &mut std::io::stdout().lock(),
        &["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        &rows,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::store::{EventType, Store, event_series};

    /// Issue 11, defect 3: a failing container start wrote nine Warning events in two seconds,
    /// each with another container id.
    #[test]
    fn repeated_events_are_one_row_with_a_count_regression() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("state.db")).unwrap();
        for (id, code) in [
            ("3f2a9c1d0e4b", 137),
            ("a0b1c2d3e4f5", 1),
            ("0123456789ab", 2),
        ] {
            let msg = format!("start container {id}: exited with code {code}");
            s.record_event("Module", "web", EventType::Warning, "RuntimeError", &msg)
                .unwrap();
        }
        s.record_event("Module", "web", EventType::Normal, "Started", "started")
            .unwrap();
        s.record_event("Module", "other", EventType::Warning, "RuntimeError", "x")
            .unwrap();
        let ev = s.events(Some(("Module", "web")), 0, 100).unwrap();
        assert_eq!(ev.len(), 2, "{ev:#?}");
        let failing = &ev[0];
        assert_eq!(failing.count, 3);
        assert_eq!(
            failing.message,
            "start container 0123456789ab: exited with code 2"
        );
        assert!(failing.first_timestamp <= failing.last_timestamp);
        assert_eq!(failing.time, failing.last_timestamp);
        // A repeat moves the row to a new id: a stream resumed after the old one sees it again.
        let before = failing.id;
        s.record_event(
            "Module",
            "web",
            EventType::Warning,
            "RuntimeError",
            "start container ffffffffffff: exited with code 9",
        )
        .unwrap();
        let after: Vec<Event> = s
            .events(Some(("Module", "web")), before, 100)
            .unwrap()
            .into_iter()
            .filter(|e| e.reason == "RuntimeError")
            .collect();
        assert_eq!(after.len(), 1);
        assert!(after[0].id > before);
        assert_eq!(after[0].count, 4);
        let json = serde_json::to_value(&after[0]).unwrap();
        for k in ["count", "firstTimestamp", "lastTimestamp"] {
            assert!(json.get(k).is_some(), "{k} in {json}");
        }
        assert!(seen(&after[0]).contains("(x4 over "), "{}", seen(&after[0]));
    }

    #[test]
    fn series_strip_ids_and_numbers_only() {
        assert_eq!(
            event_series("container 3f2a9c1d0e4b exited (code 137), restart 4"),
            "container <hex> exited (code #), restart #"
        );
        assert_eq!(
            event_series("model tiny is not Ready"),
            "model tiny is not Ready"
        );
        assert_ne!(
            event_series("port 8080 in use"),
            event_series("model a missing")
        );
    }

    #[test]
    fn seen_says_how_often_over_how_long() {
        let e = Event {
            id: 1,
            time: "2026-01-01T00:02:00.000Z".into(),
            kind: "Module".into(),
            name: "web".into(),
            type_: EventType::Warning,
            reason: "Failed".into(),
            message: "m".into(),
            count: 12,
            first_timestamp: "2026-01-01T00:00:00.000Z".into(),
            last_timestamp: "2026-01-01T00:02:00.000Z".into(),
            source: None,
        };
        assert!(seen(&e).ends_with(" (x12 over 2m)"), "{}", seen(&e));
        let once = Event { count: 1, ..e };
        assert!(!seen(&once).contains('x'));
    }
}
