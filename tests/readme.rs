//! The README is true (issue 12): every command of its `sh` blocks runs, in the order the README
//! shows them, as a new user would type it — the real `lasctl` on PATH, a fresh home, a daemon
//! started where the README starts one — and does what its line says.
//!
//! `make` lines are what CI itself runs and are skipped (a test cannot run `make test`). Paths the
//! README names are made real in a scratch directory: `examples/quickstart/` is a copy of the
//! repository's, `./stack` and `DIR` are a copy of it with a smaller context, `plugins/` and `examples/plugins/` are copies, `box.yaml` is `lasctl hardware -o yaml`,
//! `/tmp/` is a private directory, and 127.0.0.1:7411 is a free port (`LAS_LISTEN`).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{ChildGuard, FreshEnv};

/// The commands of the README's `sh` blocks, in order, continuation lines joined, comments cut.
fn readme_commands() -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_sh = line.trim() == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = match line.find("  #") {
            Some(i) if !line[..i].contains('\'') || line[..i].matches('\'').count() % 2 == 0 => {
                &line[..i]
            }
            _ => line,
        };
        let code = code.trim_end();
        if let Some(head) = code.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(code.trim_start());
        let cmd = std::mem::take(&mut pending);
        if !cmd.trim().is_empty() {
            out.push(cmd.trim().to_string());
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// How a README line is run and what counts as doing what it says.
enum Expect {
    /// Exit 0.
    Ok,
    /// Exit 0 or 1 (`diff`: 1 means "there are changes").
    ZeroOrOne,
    /// Runs until stopped (`-w`, `-f`): still running, or exited 0, after a few seconds, having
    /// printed something.
    Follows,
    /// The daemon: started in the background, serving within a minute.
    Daemon,
}

fn expect(cmd: &str) -> Expect {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    if words.contains(&"daemon") {
        Expect::Daemon
    } else if words.contains(&"diff") {
        Expect::ZeroOrOne
    } else if words
        .iter()
        .any(|w| ["-w", "-f", "--watch", "--follow"].contains(w))
        && (words.contains(&"events") || words.contains(&"logs") || words.contains(&"get"))
    {
        Expect::Follows
    } else {
        Expect::Ok
    }
}

#[test]
fn every_readme_command_runs_in_order_and_does_what_it_says() {
    let commands = readme_commands();
    assert!(
        commands.iter().filter(|c| c.contains("lasctl")).count() >= 20,
        "the README's sh blocks were not found: {commands:?}"
    );
    let env = FreshEnv::new();
    let work = env.work.path();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    copy_dir(
        &repo.join("examples/quickstart"),
        &work.join("examples/quickstart"),
    );
    copy_dir(&repo.join("examples/quickstart"), &work.join("stack"));
    // `./stack` is the user's own directory: the quickstart with a smaller context, so applying
    // it changes something (and a rollback of it has something to undo).
    let chat = work.join("stack/chat.yaml");
    let text = std::fs::read_to_string(&chat).unwrap();
    assert!(text.contains("contextSize: 512"), "{text}");
    std::fs::write(&chat, text.replace("contextSize: 512", "contextSize: 256")).unwrap();
    copy_dir(
        &repo.join("examples/plugins"),
        &work.join("examples/plugins"),
    );
    copy_dir(&repo.join("plugins"), &work.join("plugins"));
    let tmp = work.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    // The demo model the quickstart names (what `make run` generates first).
    let demo = Path::new("/tmp/localaistack-demo/tiny-llama.gguf");
    if !demo.exists() {
        env.run(&[
            "model",
            "generate-test",
            demo.to_str().unwrap(),
            "--preset",
            "tiny",
        ])
        .ok();
    }
    let port = support::daemon::free_port();
    let listen = format!("127.0.0.1:{port}");
    let bin = support::lasctl_bin();
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let shell = |cmd: &str| {
        let cmd = cmd
            .replace("127.0.0.1:7411", &listen)
            .replace(" DIR", " ./stack")
            .replace("/tmp/", &format!("{}/", tmp.display()));
        let mut c = Command::new("bash");
        c.args(["-c", &cmd])
            .current_dir(work)
            .env("PATH", &path)
            .env("LAS_HOME", env.home_path())
            .env("LAS_LISTEN", &listen)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        c
    };
    // `box.yaml`: "plan for another machine (`hardware -o yaml`)".
    let out = shell("lasctl hardware -o yaml > box.yaml")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Whatever the README's daemon starts is stopped when the test ends, pass or fail.
    struct Sweep(std::path::PathBuf);
    impl Drop for Sweep {
        fn drop(&mut self) {
            support::daemon::sweep(&self.0);
        }
    }
    let _sweep = Sweep(env.home_path().to_path_buf());
    let mut daemon: Option<ChildGuard> = None;
    let mut ran = 0;
    for cmd in commands.iter().filter(|c| !c.starts_with("make ")) {
        let started = Instant::now();
        match expect(cmd) {
            Expect::Daemon => {
                let mut c = shell(cmd);
                c.stdout(Stdio::null()).stderr(Stdio::null());
                daemon = Some(ChildGuard::spawn(c));
                let deadline = Instant::now() + Duration::from_secs(60);
                // Serving, and its watched directory applied once (what a user sees a moment
                // later in `get sources`).
                loop {
                    let out = shell("lasctl get sources -o json").output().unwrap();
                    let table = String::from_utf8_lossy(&out.stdout).to_string();
                    if out.status.success()
                        && table.contains("/stack")
                        && table.contains("lastApplied")
                    {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "`{cmd}` did not apply ./stack: {table}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Expect::Follows => {
                let mut c = shell(cmd);
                c.stdout(Stdio::piped()).stderr(Stdio::piped());
                let mut child = ChildGuard::spawn(c);
                std::thread::sleep(Duration::from_secs(3));
                let still = child.0.as_mut().unwrap().try_wait().unwrap().is_none();
                support::kill_group(child.id());
                let r = child.wait_output(Duration::from_secs(10));
                assert!(
                    still || r.code == 0,
                    "`{cmd}` ended with {}: {}",
                    r.code,
                    r.stderr
                );
                assert!(
                    !r.stdout.trim().is_empty(),
                    "`{cmd}` printed nothing: {}",
                    r.stderr
                );
            }
            e @ (Expect::Ok | Expect::ZeroOrOne) => {
                let out = shell(cmd).output().unwrap();
                let code = out.status.code().unwrap_or(-1);
                let fine = code == 0 || (matches!(e, Expect::ZeroOrOne) && code == 1);
                assert!(
                    fine,
                    "README command `{cmd}` exited {code}\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                eprintln!("{}", String::from_utf8_lossy(&out.stdout));
                if cmd.starts_with("curl") {
                    let body = String::from_utf8_lossy(&out.stdout);
                    assert!(body.contains("chat.completion"), "`{cmd}`: {body}");
                }
            }
        }
        eprintln!("README: `{cmd}` ok ({:?})", started.elapsed());
        ran += 1;
    }
    assert!(daemon.is_some(), "the README starts a daemon");
    assert!(ran >= 20, "{ran} commands ran");
}
