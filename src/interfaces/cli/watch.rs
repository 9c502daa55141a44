//! `lasctl get KIND [NAME] -w`: the table, then a row whenever a listed object changes, as
//! `kubectl get -w` does — and [`StoreChanges`], the wake-up that `wait` and `rollout status`
//! share.
//!
//! Watching reads the store, not the daemon: it works without a daemon, and it sees every write
//! (status included, e.g. a download's progress), which the daemon's event stream does not carry.
//! It wakes on the filesystem's notice that `state.db` or its WAL was written (by any process),
//! and looks at least once a second in case a notice was missed; each look that finds the
//! store's change counter unmoved costs one indexed read.
//!
//! # Caveats
//! - A deleted object is printed once more, its READY cell saying `Deleted` (`-o json|yaml`: its
//!   last document; `-o name`: its name).
//! - Several writes between two looks print one row: the state at the look, as kubectl's watch
//!   prints the latest state of an object.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use super::CliError;
use super::get::{header, row};
use super::output::{OutputFormat, to_yaml};
use super::verbs::lower;
use crate::api::Kind;
use crate::control::store::{Store, StoreError, StoredObject};
use crate::home::LasHome;

/// The longest time between two looks at the store when no write was noticed.
pub const FALLBACK: Duration = Duration::from_secs(1);

/// Wakes on writes to a home's store, by any process (the daemon, the CLI, the API).
pub struct StoreChanges {
    notify: Arc<tokio::sync::Notify>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl StoreChanges {
    pub fn new(home: &LasHome) -> Self {
        let notify = Arc::new(tokio::sync::Notify::new());
        let n = notify.clone();
        // Without inotify (or over its limit) the fallback interval still sees every change.
        let watcher =
            crate::control::sources::watch_store(home.root(), move || n.notify_one()).ok();
        StoreChanges {
            notify,
            _watcher: watcher,
        }
    }

    /// Returns after the next write (or one noticed since the last call), or after `at_most`.
    pub async fn next(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.notify.notified()).await;
    }
}

/// What is watched: a kind (or all kinds), maybe one name, and a label selector.
pub struct Watched {
    pub kind: Option<Kind>,
    pub name: Option<String>,
    pub selector: std::collections::BTreeMap<String, String>,
    pub output: OutputFormat,
}

impl Watched {
    fn list(&self, store: &Store) -> Result<Vec<StoredObject>, CliError> {
        Ok(match (self.kind, &self.name) {
            (Some(k), Some(n)) => match store.get(k, n) {
                Ok(o) => vec![o],
                Err(StoreError::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(e.into()),
            },
            (kind, _) => store.list(kind, &self.selector)?,
        })
    }
}

/// Prints `objects` (already listed, in table order), then every change until interrupted.
pub fn run(w: Watched, store: Store, objects: Vec<StoredObject>) -> Result<(), CliError> {
    let home = LasHome::from_env()?;
    let all = w.kind.is_none();
    let wide = w.output == OutputFormat::Wide;
    let mut printer = Printer {
        out: std::io::stdout(),
        widths: HashMap::new(),
        output: w.output,
        only: w.kind,
        all,
        wide,
        printed: false,
    };
    printer.first(&objects)?;
    let mut seen: HashMap<(Kind, String), StoredObject> = objects
        .into_iter()
        .map(|o| ((o.kind, o.name.to_string()), o))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let changes = StoreChanges::new(&home);
        let mut version = store.current_resource_version()?;
        loop {
            changes.next(FALLBACK).await;
            let now = store.current_resource_version()?;
            if now == version {
                continue;
            }
            version = now;
            let current = w.list(&store)?;
            let mut still = std::collections::HashSet::new();
            for o in current {
                let key = (o.kind, o.name.to_string());
                still.insert(key.clone());
                if seen
                    .get(&key)
                    .is_some_and(|s| s.resource_version == o.resource_version)
                {
                    continue;
                }
                printer.changed(&o, false)?;
                seen.insert(key, o);
            }
            let gone: Vec<(Kind, String)> = seen
                .keys()
                .filter(|k| !still.contains(*k))
                .cloned()
                .collect();
            for key in gone {
                if let Some(o) = seen.remove(&key) {
                    printer.changed(&o, true)?;
                }
            }
        }
    })
}

struct Printer {
    out: std::io::Stdout,
    /// Column widths per kind, fixed by the first table (wider cells still print whole).
    widths: HashMap<Kind, Vec<usize>>,
    output: OutputFormat,
    only: Option<Kind>,
    all: bool,
    wide: bool,
    printed: bool,
}

impl Printer {
    fn first(&mut self, objects: &[StoredObject]) -> Result<(), CliError> {
        if !matches!(self.output, OutputFormat::Table | OutputFormat::Wide) {
            for o in objects {
                self.changed(o, false)?;
            }
            return Ok(());
        }
        let mut out = self.out.lock();
        for k in Kind::ALL {
            let rows: Vec<Vec<String>> = objects
                .iter()
                .filter(|o| o.kind == k)
                .map(|o| row(o, self.wide, self.all))
                .collect();
            // One kind watched: its header even when nothing is there yet; for `all`, a kind's
            // header comes with its first row.
            if rows.is_empty() && self.only != Some(k) {
                continue;
            }
            let h = header(k, self.wide);
            let mut widths: Vec<usize> = h.iter().map(|c| c.len()).collect();
            for r in &rows {
                for (i, c) in r.iter().enumerate() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
            if self.printed {
                writeln!(out)?;
            }
            self.printed = true;
            let h: Vec<String> = h.iter().map(|s| s.to_string()).collect();
            writeln!(out, "{}", line(&h, &widths))?;
            for r in &rows {
                writeln!(out, "{}", line(r, &widths))?;
            }
            self.widths.insert(k, widths);
        }
        out.flush()?;
        Ok(())
    }

    fn changed(&mut self, o: &StoredObject, deleted: bool) -> Result<(), CliError> {
        let mut out = self.out.lock();
        match self.output {
            OutputFormat::Table | OutputFormat::Wide => {
                let mut r = row(o, self.wide, self.all);
                if deleted {
                    r[1] = "Deleted".into();
                }
                if !self.widths.contains_key(&o.kind) {
                    let h: Vec<String> = header(o.kind, self.wide)
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                    let widths: Vec<usize> = h
                        .iter()
                        .zip(&r)
                        .map(|(h, c)| h.len().max(c.chars().count()))
                        .collect();
                    if self.printed {
                        writeln!(out)?;
                    }
                    self.printed = true;
                    writeln!(out, "{}", line(&h, &widths))?;
                    self.widths.insert(o.kind, widths);
                }
                writeln!(out, "{}", line(&r, &self.widths[&o.kind]))?;
            }
            OutputFormat::Name => writeln!(out, "{}/{}", lower(o.kind), o.name)?,
            OutputFormat::Json => writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&o.to_json()).expect("json")
            )?,
            OutputFormat::Yaml => write!(out, "---\n{}", to_yaml(&o.to_json()))?,
        }
        out.flush()?;
        Ok(())
    }
}

/// Cells padded to `widths` with three spaces between columns, like `output::print_table`.
fn line(cells: &[String], widths: &[usize]) -> String {
    let mut s = String::new();
    for (i, c) in cells.iter().enumerate() {
        s.push_str(c);
        if i + 1 < cells.len() {
            let w = widths.get(i).copied().unwrap_or(0);
            s.push_str(&" ".repeat(w.saturating_sub(c.chars().count()) + 3));
        }
    }
    s.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_line_up_with_the_first_table_and_long_cells_print_whole() {
        let w = vec![4, 5];
        assert_eq!(
            line(&["tiny".into(), "True".into(), "1s".into()], &w),
            "tiny   True    1s"
        );
        assert_eq!(
            line(&["longer-name".into(), "-".into(), "1s".into()], &w),
            "longer-name   -       1s"
        );
    }
}
