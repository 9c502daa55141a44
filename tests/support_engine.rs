//! Helpers for tests (and the engine benchmark) that run `lasctl engine llama` as a real process
//! serving a generated test model. Every engine is killed when its handle is dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub fn lasctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lasctl"))
}

/// Generates a test model with `lasctl model generate-test PATH --preset PRESET`.
pub fn generate_model(dir: &Path, preset: &str) -> PathBuf {
    let path = dir.join(format!("{preset}.gguf"));
    let out = Command::new(lasctl())
        .args(["model", "generate-test"])
        .arg(&path)
        .args(["--preset", preset])
        .env("LAS_HOME", dir.join("home"))
        .output()
        .expect("run lasctl model generate-test");
    assert!(
        out.status.success(),
        "generate-test failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// A running engine process.
pub struct Engine {
    child: Option<Child>,
    lines: Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// Lines read from stdout so far.
    pub stdout: Vec<String>,
}

impl Engine {
    /// Starts `lasctl engine llama --model MODEL --port 0 ARGS...` and waits for its
    /// `listening on` line (not for the model to load).
    pub fn start(model: &Path, args: &[&str]) -> Engine {
        let mut c = Command::new(lasctl());
        c.args(["engine", "llama", "--model"])
            .arg(model)
            .args(["--port", "0"])
            .args(args)
            .env("LAS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = c.spawn().expect("spawn lasctl engine");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
            s
        });
        let mut e = Engine {
            child: Some(child),
            lines: rx,
            stderr: Some(err),
            base: String::new(),
            stdout: Vec::new(),
        };
        let line = e.wait_line("listening on ", Duration::from_secs(60));
        e.base = line.trim_start_matches("listening on ").trim().to_owned();
        e
    }

    /// Starts the engine and waits until it printed `ready` and `/health` answers 200.
    pub fn start_ready(model: &Path, args: &[&str]) -> Engine {
        let mut e = Engine::start(model, args);
        e.wait_line("ready", Duration::from_secs(120));
        e
    }

    /// Waits for a stdout line starting with `prefix`; panics with stderr after `timeout`.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        if let Some(l) = self.stdout.iter().find(|l| l.starts_with(prefix)) {
            return l.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.stdout.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    let (code, stderr) = self.kill_and_collect();
                    panic!(
                        "engine printed no {prefix:?} line (exit {code:?})\nstdout: {:?}\nstderr:\n{stderr}",
                        self.stdout
                    );
                }
            }
        }
    }

    /// Lines printed so far without waiting.
    pub fn poll_lines(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.stdout.push(l);
        }
        &self.stdout
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a signal (by name, e.g. "TERM") to the engine process.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid();
        assert_ne!(pid, 0, "the engine is not running");
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code and stderr. Kills it after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        let mut child = self.child.take().expect("engine already waited for");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let err = self.stderr.take().map(|h| h.join().unwrap_or_default());
                return (status.code(), err.unwrap_or_default());
            }
            if Instant::now() > deadline {
                kill_group(child.id());
                let _ = child.wait();
                let err = self.stderr.take().map(|h| h.join().unwrap_or_default());
                panic!(
                    "engine did not exit within {timeout:?}\nstderr:\n{}",
                    err.unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill_and_collect(&mut self) -> (Option<i32>, String) {
        let Some(mut child) = self.child.take() else {
            return (None, String::new());
        };
        kill_group(child.id());
        let status = child.wait().ok().and_then(|s| s.code());
        let err = self.stderr.take().map(|h| h.join().unwrap_or_default());
        (status, err.unwrap_or_default())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(c.id());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn kill_group(pid: u32) {
    // Never `kill -KILL -PID` (procps 4 reads it as kill(-1)), and never group 0 (our own).
    if pid == 0 {
        return;
    }
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Parses a server-sent-events body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| {
            let data: Vec<&str> = ev
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// Makes a tokio runtime for a test body.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
