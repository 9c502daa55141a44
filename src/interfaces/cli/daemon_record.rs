//! `run/daemon.json`: where the daemon of a home is, so clients can tell whether a daemon serves
//! the home they write to, and `lasctl status` can say which one.
//!
//! # Guarantees
//! - The daemon writes the record (atomically: a temporary name, then a rename) once its
//!   listeners are bound, and removes it when it exits cleanly.
//! - A record is believed only while the daemon lock (`run/lasd.lock`) is held by the pid it
//!   names: a record left by a daemon killed with SIGKILL is reported as stale, never as running.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::CliError;
use crate::home::LasHome;

pub const RECORD_FILE: &str = "daemon.json";

/// What a running daemon says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonRecord {
    pub pid: u32,
    pub version: String,
    /// The TCP address of the management API and `/v1`.
    pub listen: String,
    /// The unix socket the CLI uses.
    pub socket: PathBuf,
    /// RFC 3339, UTC.
    pub started: String,
    /// The watched directories, as given.
    #[serde(default)]
    pub watch: Vec<PathBuf>,
}

pub fn record_path(home: &LasHome) -> PathBuf {
    home.run().join(RECORD_FILE)
}

impl DaemonRecord {
    /// Writes the record for this process.
    pub fn write(&self, home: &LasHome) -> Result<(), CliError> {
        let path = record_path(home);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("records serialize");
        std::fs::write(&tmp, text + "\n")
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| CliError::Usage(format!("cannot write {}: {e}", path.display())))
    }

    /// Removes the record if it is still this process's.
    pub fn remove(home: &LasHome) {
        let path = record_path(home);
        if read(home).is_some_and(|r| r.pid == std::process::id()) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Seconds since the daemon started (0 when the time does not parse).
    pub fn uptime_seconds(&self) -> u64 {
        chrono::DateTime::parse_from_rfc3339(&self.started)
            .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
            .unwrap_or(0)
            .max(0) as u64
    }
}

fn read(home: &LasHome) -> Option<DaemonRecord> {
    let text = std::fs::read_to_string(record_path(home)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether a daemon serves a home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serving {
    /// A daemon holds the lock and its record names it.
    Running(DaemonRecord),
    /// A daemon holds the lock but wrote no record yet (starting) or an older one.
    Starting { pid: Option<i32> },
    /// No daemon holds the lock; `stale` is a record a killed daemon left behind.
    None { stale: Option<DaemonRecord> },
}

impl Serving {
    pub fn is_running(&self) -> bool {
        !matches!(self, Serving::None { .. })
    }
}

/// Asks the lock and the record whether a daemon serves `home` now. Reads only.
pub fn serving(home: &LasHome) -> Serving {
    let record = read(home);
    match super::lock::holder(home) {
        None => Serving::None { stale: record },
        Some(h) => match record {
            Some(r) if h.pid.is_some_and(|p| p as i64 == r.pid as i64) => Serving::Running(r),
            _ => Serving::Starting { pid: h.pid },
        },
    }
}

/// Where the home comes from, for messages.
pub fn home_origin() -> &'static str {
    if std::env::var_os("LAS_HOME").is_some_and(|v| !v.is_empty()) {
        "LAS_HOME"
    } else if std::env::var_os("XDG_DATA_HOME").is_some_and(|v| !v.is_empty()) {
        "default: $XDG_DATA_HOME/localaistack; LAS_HOME is not set"
    } else {
        "default: ~/.local/share/localaistack; LAS_HOME is not set"
    }
}

/// The default home (what `LasHome::from_env` gives without `LAS_HOME`), if it differs from `home`.
fn default_home_if_other(home: &LasHome) -> Option<LasHome> {
    let root = if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        PathBuf::from(x).join("localaistack")
    } else {
        PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?)
            .join(".local/share/localaistack")
    };
    (root != home.root()).then(|| LasHome::at(root))
}

/// The warning for a write (or an empty read) in a home no daemon serves, or `None` when one does.
/// Names another home whose daemon runs, when the default home is that one.
pub fn no_daemon_warning(home: &LasHome, what: &str) -> Option<String> {
    if serving(home).is_running() {
        return None;
    }
    let mut s = format!(
        "warning: {what} {} ({}), but no daemon serves it: run `lasctl daemon --watch DIR` \
         (or `make run`) with this home, or point LAS_HOME at the home of a running daemon \
         (`lasctl status` says which)",
        home.root().display(),
        home_origin()
    );
    if let Some(other) = default_home_if_other(home)
        && let Serving::Running(r) = serving(&other)
    {
        s.push_str(&format!(
            "; a daemon (pid {}) serves the default home {}: unset LAS_HOME to use it",
            r.pid,
            other.root().display()
        ));
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_without_a_lock_holder_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let home = LasHome::at(dir.path());
        home.ensure().unwrap();
        let r = DaemonRecord {
            pid: 1,
            version: "0".into(),
            listen: "127.0.0.1:1".into(),
            socket: home.run().join("lasd.sock"),
            started: chrono::Utc::now().to_rfc3339(),
            watch: vec![],
        };
        r.write(&home).unwrap();
        assert_eq!(serving(&home), Serving::None { stale: Some(r) });
    }
}
