//! Progress of a fetch: a caller's callback (the Model controller turns it into status) and, when
//! stderr is a terminal, an indicatif bar.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressStyle};

use super::error::Phase;

/// One progress report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    pub done_bytes: u64,
    pub total_bytes: Option<u64>,
}

/// Called from a worker thread; keep it cheap. Reports come at most once per MiB per phase.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

const REPORT_STEP: u64 = 1 << 20;

#[derive(Clone)]
pub(crate) struct Reporter {
    inner: Arc<ReporterInner>,
}

struct ReporterInner {
    callback: Option<ProgressFn>,
    bar: Option<ProgressBar>,
    label: String,
    state: Mutex<(Phase, Option<u64>)>,
    last_reported: AtomicU64,
}

impl Reporter {
    pub fn new(label: &str, callback: Option<ProgressFn>, bar: bool) -> Self {
        let bar = (bar && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::hidden();
            b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        });
        Reporter {
            inner: Arc::new(ReporterInner {
                callback,
                bar,
                label: label.to_string(),
                state: Mutex::new((Phase::Downloading, None)),
                last_reported: AtomicU64::new(0),
            }),
        }
    }

    pub fn start(&self, phase: Phase, total: Option<u64>) {
        *self.inner.state.lock().unwrap_or_else(|p| p.into_inner()) = (phase, total);
        self.inner.last_reported.store(0, Ordering::Relaxed);
        if let Some(b) = &self.inner.bar {
            b.set_message(format!(
                "{} {}",
                phase.reason().to_lowercase(),
                self.inner.label
            ));
            b.set_length(total.unwrap_or(0));
            b.set_position(0);
        }
        self.emit(0, phase, total);
    }

    pub fn set(&self, done: u64) {
        if let Some(b) = &self.inner.bar {
            b.set_position(done);
        }
        let (phase, total) = *self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let last = self.inner.last_reported.load(Ordering::Relaxed);
        if done >= last + REPORT_STEP || Some(done) == total {
            self.inner.last_reported.store(done, Ordering::Relaxed);
            self.emit(done, phase, total);
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.inner.bar {
            b.finish_and_clear();
        }
    }

    fn emit(&self, done: u64, phase: Phase, total: Option<u64>) {
        if let Some(cb) = &self.inner.callback {
            cb(Progress {
                phase,
                done_bytes: done,
                total_bytes: total,
            });
        }
    }
}
