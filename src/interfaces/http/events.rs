//! `GET /api/v1/events`: the durable event log as server-sent events; `POST /api/v1/events`:
//! publish a custom event into it (source `published`, delivered to event sinks like any other).
//!
//! # Guarantees
//! - Each SSE message carries the event's id; reconnecting with `Last-Event-ID` (or `?after=`)
//!   resumes after it, with nothing skipped or repeated.
//! - Events are aggregated (`count`, `firstTimestamp`, `lastTimestamp`): a repeat moves its row to
//!   a new id, so a stream sends it again with the higher count.
//! - No polling: a stream reads the store again only when the daemon's change counter moves.
//!
//! # Caveats
//! - Without `after`, a stream starts with the last `limit` (default 100) events.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;

use super::ApiContext;
use super::resources::{ApiError, parse_kind, wait_true};
use crate::control::store::Event;

#[derive(Debug, Deserialize, Default)]
pub(crate) struct EventsQuery {
    /// `KIND/NAME`
    object: Option<String>,
    /// Only events with a larger id.
    after: Option<i64>,
    limit: Option<usize>,
    /// `false`: send what is there and end the stream.
    watch: Option<bool>,
}

struct Cursor {
    ctx: ApiContext,
    object: Option<(String, String)>,
    after: i64,
    limit: usize,
    watch: bool,
    pending: std::collections::VecDeque<Event>,
    first: bool,
}

pub(super) async fn stream(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let object = match q.object.as_deref() {
        Some(s) => {
            let (k, n) = s.split_once('/').ok_or_else(|| {
                ApiError::BadRequest(format!("object {s:?} is not of the form KIND/NAME"))
            })?;
            Some((parse_kind(k)?.as_str().to_string(), n.to_string()))
        }
        None => None,
    };
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.trim().parse::<i64>().map_err(|_| {
                ApiError::BadRequest(format!("Last-Event-ID {s:?} is not an event id"))
            })
        })
        .transpose()?;
    let resume = last_id.or(q.after);
    let cursor = Cursor {
        ctx: ctx.clone(),
        object,
        after: resume.unwrap_or(0),
        limit: if resume.is_some() {
            usize::MAX >> 1
        } else {
            q.limit.unwrap_or(100)
        },
        watch: q.watch.unwrap_or(true),
        pending: Default::default(),
        first: true,
    };
    let stop = wait_true(ctx.shutdown_signal());
    let s = futures_util::StreamExt::take_until(events(cursor), stop);
    Ok(Sse::new(s)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn events(cursor: Cursor) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(e) = c.pending.pop_front() {
                c.after = e.id;
                let msg = SseEvent::default()
                    .id(e.id.to_string())
                    .event("event")
                    .json_data(&e)
                    .unwrap_or_default();
                return Some((Ok(msg), c));
            }
            if !c.first && !c.watch {
                return None;
            }
            // Mark the counter seen before reading, so a change during the read wakes us again.
            let mut rx = c.ctx.changes.clone();
            rx.borrow_and_update();
            let (after, limit, obj) = (c.after, c.limit, c.object.clone());
            let read = c
                .ctx
                .with_store(move |s| {
                    s.events(
                        obj.as_ref().map(|(k, n)| (k.as_str(), n.as_str())),
                        after,
                        limit,
                    )
                })
                .await;
            let fresh = c.first;
            c.first = false;
            // After the backlog, every new event is sent, however many arrive at once.
            c.limit = usize::MAX >> 1;
            match read {
                Ok(evs) if !evs.is_empty() => {
                    c.pending.extend(evs);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read events for a stream");
                }
            }
            if !c.watch && !fresh {
                return None;
            }
            if !c.watch {
                continue;
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    })
}

/// `POST /api/v1/events`: `{type, reason, message, involvedObject?}` → 201 with the recorded
/// event. Bad input is a 422 naming every bad field; nothing is recorded then.
pub(super) async fn publish(
    State(ctx): State<ApiContext>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    use crate::api::decode::{InputError, InputErrors};
    use crate::api::event::{PUBLISHED_SOURCE, PublishedEvent};
    let bad = |errors: Vec<(String, String)>| {
        ApiError::Input(InputErrors(
            errors
                .into_iter()
                .map(|(path, message)| InputError {
                    file: "<request>".into(),
                    line: 1,
                    column: 1,
                    path,
                    message,
                })
                .collect(),
        ))
    };
    // JSON, or YAML (the guard admits both content types).
    let v: serde_json::Value = serde_yaml::from_slice(&body)
        .map_err(|e| bad(vec![(String::new(), format!("not JSON or YAML: {e}"))]))?;
    let e = PublishedEvent::from_json(&v).map_err(bad)?;
    let type_ = match e.type_ {
        crate::api::plugin::SinkEventType::Normal => crate::control::store::EventType::Normal,
        crate::api::plugin::SinkEventType::Warning => crate::control::store::EventType::Warning,
    };
    let recorded = ctx
        .with_store(move |s| {
            s.record_event_from(
                PUBLISHED_SOURCE,
                &e.kind,
                e.name.as_str(),
                type_,
                &e.reason,
                &e.message,
            )
        })
        .await?;
    Ok((axum::http::StatusCode::CREATED, axum::Json(recorded)).into_response())
}
