//! Logging of `lasctl` on stderr: the filter, colour only on a terminal, and repeats of the same
//! warning rate-limited.
//!
//! # Guarantees
//! - No ANSI escape codes unless stderr is a terminal (and `NO_COLOR` is unset): a daemon's stderr
//!   redirected to a file, and the output of engines the native runtime copies into `logs/`, are
//!   plain text.
//! - `LAS_LOG` (a `RUST_LOG`-style filter) wins. Without it, `lasctl daemon` shows warnings and
//!   its state-change lines (target [`STATE_TARGET`], one per event the controllers record);
//!   every other verb only warnings.
//! - The same warning or error (same place in the code, same fields, same spans) is shown once
//!   per [`REPEAT_WINDOW`]; the next one shown after that says how many were held back.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use super::LogFormat;

/// The target of the daemon's one line per state change (see `daemon.rs`).
pub const STATE_TARGET: &str = "lasd::state";

/// How long repeats of one warning are held back after it was shown.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);

/// Sets up the global subscriber for one run of `lasctl`.
pub fn init(format: LogFormat, daemon: bool) {
    let default = if daemon {
        format!("warn,{STATE_TARGET}=info")
    } else {
        "warn".to_string()
    };
    let filter = EnvFilter::try_from_env("LAS_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(RateLimit::default());
    match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_ansi(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr)
                    .event_format(Repeats(tracing_subscriber::fmt::format().with_ansi(ansi))),
            )
            .init(),
    }
}

/// Colour only on a terminal, and never with `NO_COLOR` set to anything non-empty.
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

std::thread_local! {
    /// Repeats held back before the event being formatted on this thread (set by [`RateLimit`]
    /// just before the formatting layer sees the event).
    static HELD_BACK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Holds back repeats of WARN and ERROR events within [`REPEAT_WINDOW`].
#[derive(Default)]
pub struct RateLimit {
    seen: Mutex<HashMap<u64, Seen>>,
}

struct Seen {
    shown: Instant,
    held_back: u64,
}

/// A span's fields as text, kept in its extensions so repeats can be told by their spans too.
struct SpanText(String);

#[derive(Default)]
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl<S> Layer<S> for RateLimit
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut t = Text::default();
        attrs.record(&mut t);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanText(t.0));
        }
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        HELD_BACK.with(|h| h.set(0));
        if *event.metadata().level() > Level::WARN {
            return true;
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        event.metadata().callsite().hash(&mut h);
        let mut t = Text::default();
        event.record(&mut t);
        t.0.hash(&mut h);
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(s) = span.extensions().get::<SpanText>() {
                    s.0.hash(&mut h);
                }
            }
        }
        let key = h.finish();
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        // Forget what has been quiet for a long time, so the map stays small.
        if seen.len() > 1024 {
            seen.retain(|_, s| now.duration_since(s.shown) < REPEAT_WINDOW);
        }
        match seen.get_mut(&key) {
            Some(s) if now.duration_since(s.shown) < REPEAT_WINDOW => {
                s.held_back += 1;
                false
            }
            Some(s) => {
                HELD_BACK.with(|h| h.set(s.held_back));
                s.shown = now;
                s.held_back = 0;
                true
            }
            None => {
                seen.insert(
                    key,
                    Seen {
                        shown: now,
                        held_back: 0,
                    },
                );
                true
            }
        }
    }
}

/// The usual text format, preceded by `(N similar held back) ` after rate-limited repeats.
struct Repeats<F>(F);

impl<S, N, F> FormatEvent<S, N> for Repeats<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let held = HELD_BACK.with(|h| h.replace(0));
        if held > 0 {
            write!(
                writer,
                "({held} repeats of this line held back over {}s) ",
                REPEAT_WINDOW.as_secs()
            )?;
        }
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the events that reach it.
    struct Count(Arc<AtomicUsize>);

    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &Event<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn repeats_of_one_warning_are_held_back_and_others_pass() {
        let n = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(RateLimit::default())
            .with(Count(n.clone()));
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..5 {
                tracing::warn!(source = "a", "cannot fetch");
            }
            tracing::warn!(source = "b", "cannot fetch");
            for name in ["x", "y"] {
                let span = tracing::info_span!("reconcile", name);
                let _e = span.enter();
                for _ in 0..2 {
                    tracing::warn!("failed");
                }
            }
            for _ in 0..3 {
                tracing::info!("not limited");
            }
        });
        // a once, b once, once per span, and every INFO line.
        assert_eq!(n.load(Ordering::SeqCst), 1 + 1 + 2 + 3);
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None));
        assert!(!colour(true, Some("1".into())));
        assert!(colour(true, Some("".into())));
    }
}
