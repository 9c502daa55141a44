//! `lasctl events [KIND/NAME] -w`: the event log, then every new event as the daemon records it
//! (server-sent events, resumed after the last id printed).

use std::io::Write;

use futures_util::StreamExt;

use super::CliError;
use super::output::age;
use crate::api::Kind;
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
        e.message
    )
}

/// Prints the last `limit` events and then follows.
pub fn watch(object: Option<&str>, limit: usize) -> Result<(), CliError> {
    let obj = match object {
        Some(s) => {
            let (k, n) = s
                .split_once('/')
                .ok_or_else(|| CliError::Usage(format!("{s:?} is not of the form KIND/NAME")))?;
            let kind = Kind::parse_loose(k).ok_or_else(|| {
                CliError::Usage(format!(
                    "unknown kind {k:?}: known kinds are {}",
                    Kind::known_list()
                ))
            })?;
            Some(format!("{}/{n}", kind.as_str()))
        }
        None => None,
    };
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
        }
    }
}
