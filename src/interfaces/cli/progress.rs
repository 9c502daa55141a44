//! Progress as people see it: a Model's `status.progress` as a table cell, a bar on a terminal
//! and plain lines otherwise (shared by `get`, `wait` and `rollout status`).

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::output::human_bytes;
use crate::api::Kind;
use crate::api::model::ModelProgress;
use crate::control::store::{Store, StoredObject};

/// The progress of a fetch the Model controller reported, while it runs.
pub fn of(o: &StoredObject) -> Option<ModelProgress> {
    if o.kind != Kind::Model {
        return None;
    }
    serde_json::from_value(o.status.get("progress")?.clone()).ok()
}

/// The fetch `o` waits for, as (Model name, progress): its own (a Model), or its Model's (a
/// Module with `spec.model`), while one runs.
pub fn followed(store: &Store, o: &StoredObject) -> Option<(String, ModelProgress)> {
    match o.kind {
        Kind::Model => of(o).map(|p| (o.name.to_string(), p)),
        Kind::Module => {
            let m = o.spec.get("model")?.as_str()?;
            let p = of(&store.get(Kind::Model, m).ok()?)?;
            Some((m.to_string(), p))
        }
        _ => None,
    }
}

/// The SIZE cell of `get models`: the size, or while a fetch runs how far it is (`11% of 104.0MiB`).
pub fn size_cell(o: &StoredObject) -> String {
    if let Some(p) = of(o) {
        return match (p.percent(), p.bytes_total) {
            (Some(pc), Some(t)) => format!("{pc}% of {}", human_bytes(t)),
            _ => format!("{} so far", human_bytes(p.bytes_done)),
        };
    }
    o.status
        .get("sizeBytes")
        .and_then(serde_json::Value::as_u64)
        .map(human_bytes)
        .unwrap_or_else(|| "-".into())
}

/// Shows progress and state lines on stderr: a bar for a fetch and lines printed above it on a
/// terminal; otherwise one plain line per change (the controller reports about once a second).
pub struct View {
    bar: Option<ProgressBar>,
    terminal: bool,
    last_state: Option<String>,
    last_progress: Option<String>,
}

impl View {
    pub fn new() -> Self {
        View {
            bar: None,
            terminal: std::io::stderr().is_terminal(),
            last_state: None,
            last_progress: None,
        }
    }

    /// Prints `line` (above the bar, if one is drawn).
    pub fn line(&mut self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => {
                let mut e = std::io::stderr().lock();
                let _ = writeln!(e, "{line}");
            }
        }
    }

    /// Prints `line` unless it is the state printed last.
    pub fn state(&mut self, line: &str) {
        if self.last_state.as_deref() != Some(line) {
            self.last_state = Some(line.to_string());
            self.line(line);
        }
    }

    /// The fetch of `model` is at `p` (or over, with `None`).
    pub fn progress(&mut self, model: &str, p: Option<&ModelProgress>) {
        let Some(p) = p else {
            if let Some(b) = self.bar.take() {
                b.finish_and_clear();
            }
            return;
        };
        if !self.terminal {
            let line = format!("model/{model}: {} {}", p.phase, p.summary());
            if self.last_progress.as_deref() != Some(&line) {
                self.line(&line);
                self.last_progress = Some(line);
            }
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        });
        bar.set_message(format!("{} model/{model}", p.phase.to_lowercase()));
        if let Some(t) = p.bytes_total {
            bar.set_length(t);
        }
        bar.set_position(p.bytes_done);
    }

    /// Shows the fetch `o` waits for, if any (see [`followed`]); ends the bar when none runs.
    pub fn follow(&mut self, store: &Store, o: &StoredObject) {
        match followed(store, o) {
            Some((model, p)) => self.progress(&model, Some(&p)),
            None => self.progress("", None),
        }
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Default for View {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for View {
    fn drop(&mut self) {
        self.finish();
    }
}
