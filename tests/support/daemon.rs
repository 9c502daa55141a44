//! Helpers for tests that run the real daemon: start it, wait for objects, and leave nothing behind
//! (the daemon's process group, every native workload it started, every container of the test).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{ChildGuard, FreshEnv};

/// A running `lasctl daemon` in a FreshEnv; on drop it is killed and everything it started is swept.
pub struct Daemon {
    pub guard: ChildGuard,
    pub listen: String,
    home: PathBuf,
    log: PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    pub fn start(env: &FreshEnv, watch: &[&Path], extra: &[&str]) -> Daemon {
        Self::start_with(env, watch, extra, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_with(
        env: &FreshEnv,
        watch: &[&Path],
        extra: &[&str],
        vars: &[(&str, &Path)],
    ) -> Daemon {
        let listen = format!("127.0.0.1:{}", free_port());
        let log = env.work.path().join(format!("daemon-{}.log", free_port()));
        let mut c = env.cmd();
        c.envs(vars.iter().copied());
        c.arg("daemon").arg("--listen").arg(&listen);
        for w in watch {
            c.arg("--watch").arg(w);
        }
        c.args(extra)
            .env("LAS_RESYNC_SECONDS", "2")
            .env("LAS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let guard = ChildGuard::spawn(c);
        let d = Daemon {
            guard,
            listen,
            home: env.home_path().to_path_buf(),
            log,
        };
        d.wait_http();
        d
    }

    fn wait_http(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&self.listen).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon did not listen on {}:\n{}", self.listen, self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// SIGKILL the daemon (its process group only: workloads run in their own groups).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.guard.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn sigterm_and_wait(&mut self, timeout: Duration) -> i32 {
        let mut c = self.guard.0.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!(
                    "daemon did not exit within {timeout:?} after SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        sweep(&self.home);
    }
}

/// Live processes whose environment has LAS_HOME=`home`, as (pid, parent pid): the daemon and
/// everything it started.
pub fn home_processes(home: &Path) -> Vec<(u32, u32)> {
    let needle = format!("LAS_HOME={}", home.display());
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let rest = stat
                .rsplit(')')
                .next()
                .unwrap_or_default()
                .trim_start()
                .to_string();
            if rest.starts_with('Z') {
                continue;
            }
            let ppid = rest
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            out.push((pid, ppid));
        }
    }
    out
}

/// The workloads of a home: its processes minus `daemon` and minus children of other workloads
/// (e.g. a server's per-request forks).
pub fn workload_pids_except(home: &Path, daemon: Option<u32>) -> Vec<u32> {
    let all = home_processes(home);
    let set: Vec<u32> = all
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| Some(*p) != daemon)
        .collect();
    all.iter()
        .filter(|(p, pp)| Some(*p) != daemon && !set.contains(pp))
        .map(|(p, _)| *p)
        .collect()
}

pub fn workload_pids(home: &Path) -> Vec<u32> {
    workload_pids_except(home, None)
}

/// Kills every process of this LAS_HOME and removes every container whose owner uid is recorded there.
pub fn sweep(home: &Path) {
    for (pid, _) in home_processes(home) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    remove_cgroups(home);
    let label = format!("localaistack.io/stack={}", home.display());
    if let Ok(o) = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={label}")])
        .output()
    {
        for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}

pub fn get_json(env: &FreshEnv, kind: &str, name: &str) -> Option<Value> {
    let r = env.run(&["get", kind, name, "-o", "json"]);
    (r.code == 0).then(|| serde_json::from_str(&r.stdout).unwrap())
}

pub fn is_ready(o: &Value) -> bool {
    o["status"]["observedGeneration"] == o["metadata"]["generation"]
        && o["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Waits until `kind/name` is Ready at its generation; panics with its status and the log.
pub fn wait_ready(env: &FreshEnv, d: &Daemon, kind: &str, name: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(o) = get_json(env, kind, name) {
            if is_ready(&o) {
                return o;
            }
            last = Some(o);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "{kind}/{name} not Ready within {timeout:?}; last: {}\nevents:\n{}\ndaemon log:\n{}",
        last.map(|o| o["status"].to_string())
            .unwrap_or("<absent>".into()),
        env.run(&["events"]).stdout,
        d.log()
    );
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Removes the (emptied) cgroups of this home's native workloads: `runtime::limits` names them
/// `las-<first 10 hex of sha256(LAS_HOME/logs)>-<owner>`.
pub fn remove_cgroups(home: &Path) {
    use sha2::Digest;
    let stack = hex::encode(sha2::Sha256::digest(
        home.join("logs").as_os_str().as_encoded_bytes(),
    ));
    let prefix = format!("las-{}-", &stack[..10]);
    for base in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
            if !e.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
            for _ in 0..100 {
                if std::fs::remove_dir(e.path()).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
