//! `run/lasd.lock`: one daemon per `LAS_HOME`, and what the CLI learns from it.
//!
//! The daemon holds an exclusive `flock` on the file for its life and writes into it its pid and the
//! device and inode of the `state.db` it opened (`pid DEV INO`). The kernel drops the lock when the
//! holder's last descriptor closes, which for a process killed with SIGKILL happens a moment *after*
//! the signal, while it exits: so a new daemon waits for the lock (bounded) instead of failing,
//! and names the holder and whether it is alive or exiting.

use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use super::CliError;
use crate::home::LasHome;

pub const LOCK_FILE: &str = "lasd.lock";

/// How long a starting daemon waits for a lock held by another process.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The held lock; released when dropped.
pub struct DaemonLock {
    file: Flock<std::fs::File>,
}

/// The process holding the lock, as far as `/proc` tells.
#[derive(Debug, Clone)]
pub struct Holder {
    pub pid: Option<i32>,
    /// The `state.db` the holder opened (device, inode), once it recorded it.
    pub db: Option<(u64, u64)>,
}

impl Holder {
    fn describe(&self) -> String {
        match self.pid {
            None => "a process that did not record its pid".into(),
            Some(pid) => match proc_state(pid) {
                None => format!("pid {pid}, which has exited"),
                Some(s) if s.dying => format!("pid {pid}, which is exiting (state {})", s.state),
                Some(s) => format!("pid {pid}, alive (state {})", s.state),
            },
        }
    }
}

struct ProcState {
    state: char,
    /// A zombie, or a process with SIGKILL pending: it will not run user code again.
    dying: bool,
}

fn proc_state(pid: i32) -> Option<ProcState> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit(')').next()?.trim_start().chars().next()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let sigkill_pending = status.lines().any(|l| {
        (l.starts_with("SigPnd:") || l.starts_with("ShdPnd:"))
            && l.split_whitespace()
                .nth(1)
                .and_then(|m| u64::from_str_radix(m, 16).ok())
                .is_some_and(|m| m & (1 << (libc::SIGKILL - 1)) != 0)
    });
    Some(ProcState {
        state,
        dying: matches!(state, 'Z' | 'X' | 'x') || sigkill_pending,
    })
}

fn lock_path(home: &LasHome) -> PathBuf {
    home.run().join(LOCK_FILE)
}

fn read_holder(path: &Path) -> Holder {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut it = text.split_whitespace();
    let pid = it.next().and_then(|p| p.parse().ok());
    let db = match (
        it.next().and_then(|d| d.parse().ok()),
        it.next().and_then(|i| i.parse().ok()),
    ) {
        (Some(d), Some(i)) => Some((d, i)),
        _ => None,
    };
    Holder { pid, db }
}

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

impl DaemonLock {
    /// Takes the lock, waiting up to `wait` (saying so on stderr) while another process holds it.
    pub fn acquire(home: &LasHome, wait: Duration) -> Result<DaemonLock, CliError> {
        let path = lock_path(home);
        let deadline = Instant::now() + wait;
        let mut said = false;
        loop {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| err(format!("cannot open {}: {e}", path.display())))?;
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(file) => {
                    let mut lock = DaemonLock { file };
                    lock.write(None)?;
                    return Ok(lock);
                }
                Err((_, errno)) if errno != nix::errno::Errno::EWOULDBLOCK => {
                    return Err(err(format!("cannot lock {}: {errno}", path.display())));
                }
                Err(_) => {
                    let holder = read_holder(&path);
                    if Instant::now() >= deadline {
                        let alive = holder.pid.and_then(proc_state).is_some_and(|s| !s.dying);
                        return Err(err(if alive {
                            format!(
                                "another lasctl daemon runs on {} ({}; lock {} is held): stop it first",
                                home.root().display(),
                                holder.describe(),
                                path.display()
                            )
                        } else {
                            format!(
                                "the lock {} on {} is still held after {:?} by {}: wait for it to \
                                 finish exiting, then start again",
                                path.display(),
                                home.root().display(),
                                wait,
                                holder.describe()
                            )
                        }));
                    }
                    if !said {
                        eprintln!(
                            "lasctl daemon: waiting up to {:?} for the lock {} (held by {})",
                            wait,
                            path.display(),
                            holder.describe()
                        );
                        said = true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Records this process and the state database it opened, for the CLI's check.
    pub fn record_db(&mut self, db: &Path) -> Result<(), CliError> {
        let id = std::fs::metadata(db)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| err(format!("cannot stat {}: {e}", db.display())))?;
        self.write(Some(id))
    }

    fn write(&mut self, db: Option<(u64, u64)>) -> Result<(), CliError> {
        let f: &mut std::fs::File = &mut self.file;
        let mut line = format!("{}", std::process::id());
        if let Some((d, i)) = db {
            line.push_str(&format!(" {d} {i}"));
        }
        line.push('\n');
        f.set_len(0)
            .and_then(|_| f.rewind())
            .and_then(|_| f.write_all(line.as_bytes()))
            .map_err(|e| err(format!("cannot write the daemon lock: {e}")))
    }
}

/// The daemon holding `home`'s lock now, if any.
pub fn holder(home: &LasHome) -> Option<Holder> {
    let path = lock_path(home);
    let mut f = std::fs::File::open(&path).ok()?;
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    match Flock::lock(f, FlockArg::LockSharedNonblock) {
        // Nobody holds it (our shared lock goes when `_free` drops).
        Ok(_free) => None,
        Err(_) => Some(read_holder(&path)),
    }
}

/// Refuses to open `state.db` when the running daemon holds another one (the file was deleted or
/// replaced under it): the CLI would write into a database the daemon never reads.
pub fn check_same_db(home: &LasHome) -> Result<(), CliError> {
    let Some(h) = holder(home) else {
        return Ok(());
    };
    let Some(held) = h.db else {
        return Ok(()); // a daemon still starting
    };
    let db = home.state_db();
    let now = std::fs::metadata(&db).ok().map(|m| (m.dev(), m.ino()));
    if now == Some(held) {
        return Ok(());
    }
    Err(err(format!(
        "the daemon on {} ({}) holds a state database that was {} ({}): writing here would split \
         the state; restart the daemon (it exits when it notices), then run this again",
        home.root().display(),
        h.describe(),
        if now.is_none() { "deleted" } else { "replaced" },
        db.display()
    )))
}
