//! Shared helpers for end-to-end tests: a fresh `LAS_HOME`, the real `lasctl`, and children that
//! are killed when the test ends, pass or fail.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn lasctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lasctl"))
}

/// A temporary state directory and a scratch directory for input files.
pub struct FreshEnv {
    pub home: tempfile::TempDir,
    pub work: tempfile::TempDir,
}

/// The result of one `lasctl` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
    #[track_caller]
    pub fn fails(self) -> Self {
        assert_eq!(
            self.code, 1,
            "expected exit 1\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl FreshEnv {
    pub fn new() -> Self {
        FreshEnv {
            home: tempfile::tempdir().expect("tempdir"),
            work: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn home_path(&self) -> &Path {
        self.home.path()
    }

    /// Writes a file under the scratch directory and returns its path.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.work.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(lasctl_bin());
        c.env("LAS_HOME", self.home.path())
            .env_remove("LAS_LISTEN")
            .env("LAS_LOG", "warn")
            .stdin(Stdio::null());
        c
    }

    /// Runs `lasctl ARGS` to completion (killed after 120 s).
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_stdin(args, None)
    }

    pub fn run_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Run {
        let mut c = self.cmd();
        c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        if stdin.is_some() {
            c.stdin(Stdio::piped());
        }
        let mut child = ChildGuard::spawn(c);
        if let Some(input) = stdin {
            let mut si = child.0.as_mut().unwrap().stdin.take().unwrap();
            si.write_all(input).unwrap();
        }
        child.wait_output(Duration::from_secs(120))
    }
}

impl Default for FreshEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// A child process killed (with its process group) on drop.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn spawn(mut c: Command) -> Self {
        use std::os::unix::process::CommandExt;
        c.process_group(0);
        ChildGuard(Some(c.spawn().expect("spawn lasctl")))
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    /// Waits for exit with a deadline, collecting output; kills on timeout.
    pub fn wait_output(&mut self, timeout: Duration) -> Run {
        let mut child = self.0.take().unwrap();
        let deadline = Instant::now() + timeout;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let out_t = std::thread::spawn(move || read_all(stdout));
        let err_t = std::thread::spawn(move || read_all(stderr));
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Run {
                    code: status.code().unwrap_or(-1),
                    stdout: out_t.join().unwrap(),
                    stderr: err_t.join().unwrap(),
                };
            }
            if Instant::now() > deadline {
                kill_group(child.id());
                let _ = child.wait();
                panic!(
                    "lasctl did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    out_t.join().unwrap(),
                    err_t.join().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn read_all<R: std::io::Read>(r: Option<R>) -> String {
    let mut s = Vec::new();
    if let Some(mut r) = r {
        let _ = r.read_to_end(&mut s);
    }
    String::from_utf8_lossy(&s).into_owned()
}

pub fn kill_group(pid: u32) {
    // Never `kill -KILL -PID`: procps 4 misreads it as kill(-1), which signals every process.
    if pid == 0 {
        return;
    }
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            kill_group(c.id());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub const MODEL_DOC: &str = "apiVersion: localaistack.io/v1alpha1
kind: Model
metadata:
  name: tiny
spec:
  source: /srv/models/tiny.gguf
";

/// A Model document with the given name and source path.
pub fn model_doc(name: &str, source: &str) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata:\n  name: {name}\nspec:\n  source: {source}\n"
    )
}

pub mod daemon;
pub mod docker;

/// The next event of `owner` on a runtime's event stream that satisfies `want`, skipping others;
/// panics with what was seen when none comes within `timeout`.
pub async fn next_event(
    events: &mut localaistack::runtime::EventStream,
    owner: &localaistack::runtime::OwnerKey,
    timeout: Duration,
    want: impl Fn(localaistack::runtime::WorkloadState) -> bool,
) -> localaistack::runtime::WorkloadEvent {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(e)) if e.owner == *owner && want(e.state) => return e,
            Ok(Some(e)) => seen.push(e),
            Ok(None) => panic!("the event stream ended; saw {seen:?}"),
            Err(_) => panic!("no matching event of {owner} in {timeout:?}; saw {seen:?}"),
        }
    }
}
pub mod registry;
