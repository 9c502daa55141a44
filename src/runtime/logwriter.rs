//! The log writer of native workloads: `lasctl log-writer --max-bytes N PATH` reads the
//! workload's output from a pipe on stdin and appends it to `PATH`, rotating by rename.
//!
//! It is a process of its own (like a container runtime's shim) so that the workload's output
//! keeps flowing while `lasctl daemon` restarts: the workload's stdout and stderr are the write end
//! of a pipe this process reads, and it exits when every holder of that end has exited.
//!
//! # Guarantees
//! - `PATH` and `PATH.1` together never hold more than `max_bytes` plus one read buffer
//!   ([`BUF`]): each file is capped at half of it; when the current file would pass that, it is
//!   renamed to `PATH.1` (replacing the older one) and a new `PATH` is started. Nothing is copied.
//! - The pipe is always drained: if the disk refuses a write, that output is dropped (and the file
//!   is reopened at the next rotation), so a full disk never blocks the workload.
//!
//! # Caveats
//! - Bytes are copied as they come, escape codes included. `lasctl` processes (the built-in
//!   engine) write none when stderr is not a terminal (`interfaces::cli::logging`); another
//!   program that colours a pipe regardless shows its codes in the file, as `docker logs` would.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// How much the writer reads from the pipe at once.
pub const BUF: usize = 64 * 1024;

/// The rotated generation of `path` (`<name>.1`).
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// An append-only file capped at `max_file` bytes, rotated by rename.
pub struct RotatingLog {
    path: PathBuf,
    max_file: u64,
    file: Option<File>,
    size: u64,
}

impl RotatingLog {
    /// Opens `path` for appending; `max_total` bytes are shared by it and its rotated generation.
    pub fn open(path: &Path, max_total: u64) -> Self {
        let mut log = RotatingLog {
            path: path.to_path_buf(),
            max_file: (max_total / 2).max(BUF as u64),
            file: None,
            size: 0,
        };
        log.reopen();
        log
    }

    fn reopen(&mut self) {
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(f) => {
                self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(f);
            }
            Err(_) => self.file = None,
        }
    }

    fn rotate(&mut self) {
        self.file = None;
        let _ = std::fs::rename(&self.path, rotated_path(&self.path));
        self.reopen();
    }

    /// Appends `buf` (at most [`BUF`] bytes), rotating first when it would not fit.
    pub fn write(&mut self, buf: &[u8]) {
        if self.file.is_none() || (self.size > 0 && self.size + buf.len() as u64 > self.max_file) {
            self.rotate();
        }
        let Some(f) = self.file.as_mut() else {
            return;
        };
        match f.write_all(buf) {
            Ok(()) => self.size += buf.len() as u64,
            // Dropped: the pipe must keep draining. The next write reopens the file.
            Err(_) => self.file = None,
        }
    }
}

/// Copies `input` into the rotating log at `path` until end of input.
pub fn run(path: &Path, max_bytes: u64, mut input: impl Read) -> std::io::Result<()> {
    let mut log = RotatingLog::open(path, max_bytes);
    let mut buf = vec![0u8; BUF];
    loop {
        match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => log.write(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_renames_and_bounds_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("module-x.log");
        let max = 4 * BUF as u64;
        let input = std::io::repeat(b'y').take(50 * BUF as u64);
        run(&log, max, input).unwrap();
        let cur = std::fs::metadata(&log).unwrap().len();
        let old = std::fs::metadata(rotated_path(&log)).unwrap().len();
        assert!(cur + old <= max + BUF as u64, "{cur} + {old}");
        assert!(old > 0 && cur > 0);
        // Appending continues where the file left off.
        run(&log, max, &b"tail\n"[..]).unwrap();
        assert!(std::fs::read(&log).unwrap().ends_with(b"tail\n"));
    }
}
