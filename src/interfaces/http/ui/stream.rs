//! `GET /ui/stream`: the one server-sent event stream of a console tab. Each message says the
//! store changed (its id is the daemon's change counter); the page then re-fetches the fragments
//! it shows (`?fragment=live`). A reconnect with `Last-Event-ID` older than the counter gets a
//! message at once, so a tab that was hidden (its stream closed) resyncs.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;

use super::super::ApiContext;
use super::{harden, viewer};

#[derive(serde::Deserialize)]
pub(super) struct StreamQuery {
    /// The change counter the page was rendered at (a first connection's `Last-Event-ID`).
    since: Option<u64>,
}

pub(super) async fn stream(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Response {
    if let Err(page) = viewer(&ctx, &headers, None) {
        return page;
    }
    let last: Option<u64> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
        .or(q.since);
    let mut rx = ctx.changes.clone();
    let mut stop = ctx.shutdown_signal();
    let s = async_stream(move |tx| async move {
        let mut seen = last;
        loop {
            let now = *rx.borrow_and_update();
            if seen != Some(now) {
                {
                    let ev = Event::default()
                        .event("changed")
                        .id(now.to_string())
                        .data(now.to_string());
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
                seen = Some(now);
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = stop.wait_for(|v| *v) => return,
            }
        }
    });
    harden(
        Sse::new(s)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response(),
    )
}

/// A stream fed by a task through a small channel; the task ends when the client goes.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    futures_util::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}
