//! The C ABI (`ffi/`, docs/c-abi.md) driven from C: the library is built with cargo, the C program
//! `ffi/examples/drive.c` is compiled with `cc` against the committed header and linked to the
//! shared library and to the static one, and each build drives a real daemon (a temporary
//! `LAS_HOME`, the tiny test model, the real llama engine) under Valgrind, which must find no
//! error and no leak. Without `cc` or `valgrind` the test fails (`make deps` installs them).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use support::daemon::Daemon;
use support::{ChildGuard, FreshEnv};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What `cargo build -p localaistack-ffi` made.
struct Built {
    shared: PathBuf,
    static_lib: PathBuf,
    /// The header cbindgen generated from the sources just built.
    generated_header: PathBuf,
}

/// Builds the ffi package once per test binary (the same profile as this test).
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(&cargo)
            .current_dir(repo())
            .args([
                "build",
                "-p",
                "localaistack-ffi",
                "--message-format=json-render-diagnostics",
            ])
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo");
        assert!(
            out.status.success(),
            "cargo build -p localaistack-ffi failed"
        );
        let (mut shared, mut static_lib, mut out_dir) = (None, None, None);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(m) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let is_ffi = m["package_id"]
                .as_str()
                .is_some_and(|p| p.contains("localaistack-ffi") || p.contains("/ffi#"));
            if !is_ffi {
                continue;
            }
            match m["reason"].as_str() {
                Some("compiler-artifact") => {
                    for f in m["filenames"].as_array().into_iter().flatten() {
                        let f = PathBuf::from(f.as_str().unwrap());
                        match f.extension().and_then(|e| e.to_str()) {
                            Some("so") => shared = Some(f),
                            Some("a") => static_lib = Some(f),
                            _ => {}
                        }
                    }
                }
                Some("build-script-executed") => {
                    out_dir = m["out_dir"].as_str().map(PathBuf::from);
                }
                _ => {}
            }
        }
        Built {
            shared: shared.expect("cargo reported no liblocalaistack.so"),
            static_lib: static_lib.expect("cargo reported no liblocalaistack.a"),
            generated_header: out_dir
                .expect("cargo reported no build script run of localaistack-ffi")
                .join("localaistack.h"),
        }
    })
}

fn tool(name: &str) -> PathBuf {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("`{name}` is not installed: run `make deps` (deps/debian-packages.txt lists it)")
    })
}

/// Compiles `drive.c` against the committed header: linked to the shared library (found through
/// its rpath) or to the static one.
fn compile_driver(dir: &Path, static_link: bool) -> PathBuf {
    let b = built();
    let exe = dir.join(if static_link { "drive-static" } else { "drive" });
    let mut c = Command::new(tool("cc"));
    c.args([
        "-std=c11",
        "-D_POSIX_C_SOURCE=200809L",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-g",
    ])
    .arg("-I")
    .arg(repo().join("ffi/include"))
    .arg(repo().join("ffi/examples/drive.c"))
    .arg("-o")
    .arg(&exe);
    if static_link {
        // The system libraries Rust's std needs (`rustc --print native-static-libs`).
        c.arg(&b.static_lib).args([
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
        ]);
    } else {
        let libdir = b.shared.parent().unwrap();
        c.arg("-L")
            .arg(libdir)
            .arg(format!("-Wl,-rpath,{}", libdir.display()))
            .args(["-llocalaistack", "-lpthread"]);
    }
    let out = c.output().expect("run cc");
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// The `RESULT name json` lines of a run, parsed.
fn results(stdout: &str) -> std::collections::BTreeMap<String, Value> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(|l| {
            let (name, json) = l.split_once(' ').unwrap();
            let v = serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("RESULT {name} is not JSON ({e}): {json}"));
            (name.to_string(), v)
        })
        .collect()
}

/// Runs the driver under Valgrind: any memory error or leak fails the run (exit 99).
fn valgrind(exe: &Path, args: &[&str]) -> support::Run {
    let mut c = Command::new(tool("valgrind"));
    c.args([
        "--quiet",
        "--error-exitcode=99",
        "--leak-check=full",
        "--show-leak-kinds=definite,indirect,possible",
        "--errors-for-leak-kinds=definite,indirect,possible",
        "--track-fds=no",
    ])
    .arg(exe)
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    ChildGuard::spawn(c).wait_output(Duration::from_secs(600))
}

fn stack(gguf: &Path) -> String {
    format!(
        "{}---\napiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {{name: chat}}\nspec:\n  model: tiny\n  engine: {{type: llama, contextSize: 256, parallel: 1}}\n",
        support::model_doc("tiny", gguf.to_str().unwrap())
    )
}

#[track_caller]
fn check_run(run: &support::Run, d: &Daemon, first: bool) {
    assert_eq!(
        run.code,
        0,
        "the C driver failed (99: Valgrind found errors or leaks)\nstdout:\n{}\nstderr:\n{}\ndaemon log:\n{}",
        run.stdout,
        run.stderr,
        d.log()
    );
    let r = results(&run.stdout);
    let ctx = || format!("{}\n{}", run.stdout, run.stderr);
    assert_eq!(r["version"], env!("CARGO_PKG_VERSION"), "{}", ctx());
    assert_eq!(r["null_client"]["code"], "InvalidArgument", "{}", ctx());
    assert_eq!(r["bad_addr"]["code"], "InvalidArgument", "{}", ctx());

    // Bad YAML: the daemon's Status, with where the input went wrong.
    let bad = &r["bad_yaml"];
    let status = bad["status"].as_u64().unwrap();
    assert!((400..500).contains(&status), "{bad}");
    assert_eq!(bad["details"]["kind"], "Status", "{bad}");
    // `request:LINE:COLUMN: ...` (the body has no file name).
    let msg = bad["message"].as_str().unwrap();
    let at = msg
        .split_once("request:")
        .map(|(_, rest)| rest)
        .unwrap_or("");
    assert!(at.starts_with(|c: char| c.is_ascii_digit()), "{bad}");

    // The stack: created by the first run, unchanged by the second.
    let changes = r["apply"]["changes"].as_array().expect("apply changes");
    assert_eq!(changes.len(), 2, "{}", r["apply"]);
    let want = if first { "created" } else { "unchanged" };
    assert!(
        changes.iter().all(|c| c["action"] == want),
        "{want}: {}",
        r["apply"]
    );
    assert_eq!(r["model"]["status"]["digest"].as_str().unwrap().len(), 64);
    assert!(support::daemon::is_ready(&r["module"]), "{}", r["module"]);

    // The model answered.
    let chat = &r["chat"];
    assert_eq!(chat["object"], "chat.completion", "{chat}");
    assert_eq!(chat["choices"][0]["message"]["role"], "assistant", "{chat}");
    assert!(
        chat["usage"]["completion_tokens"].as_u64().unwrap() >= 1,
        "{chat}"
    );
    let names: Vec<_> = r["list"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].clone())
        .collect();
    assert_eq!(names, vec![Value::from("tiny")], "{}", r["list"]);

    // The plugin inventory lists the seams, inference among them.
    let seams = r["inventory"]["seams"].as_array().expect("inventory seams");
    assert!(
        seams.iter().any(|s| s["seam"] == "inference"),
        "{}",
        r["inventory"]
    );

    // Errors the daemon answered, as JSON with its own words.
    let nf = &r["not_found"];
    assert_eq!(
        (nf["code"].as_str(), nf["status"].as_u64()),
        (Some("NotFound"), Some(404)),
        "{nf}"
    );
    assert!(
        nf["message"].as_str().unwrap().contains("no-such-module"),
        "{nf}"
    );
    let bk = &r["bad_kind"];
    assert_eq!(bk["status"], 404, "{bk}");
    assert!(
        bk["message"].as_str().unwrap().contains("known kinds are"),
        "{bk}"
    );
    assert!(bk["message"].as_str().unwrap().contains("gizmo"), "{bk}");
    let ce = &r["chat_error"];
    assert_eq!(ce["status"], 404, "{ce}");
    assert!(
        ce["message"].as_str().unwrap().contains("tiny"),
        "the served models are listed: {ce}"
    );
    if !first {
        let wt = &r["wrong_token"];
        assert_eq!(
            (wt["code"].as_str(), wt["status"].as_u64()),
            (Some("Unauthorized"), Some(401)),
            "{wt}"
        );
    }
    assert_eq!(r["threads"], true);
    assert_eq!(r["done"], true);
}

#[test]
fn a_c_program_drives_a_real_daemon_through_the_library_under_valgrind_without_leaks() {
    let env = FreshEnv::new();
    let gguf = env.work.path().join("tiny.gguf");
    env.run(&[
        "model",
        "generate-test",
        gguf.to_str().unwrap(),
        "--preset",
        "tiny",
    ])
    .ok();
    let stack_file = env.write("stack.yaml", &stack(&gguf));
    let d = Daemon::start(&env, &[], &[]);

    let dynamic = compile_driver(env.work.path(), false);
    let socket = env.home_path().join("run/lasd.sock");
    let run = valgrind(
        &dynamic,
        &[
            "unix",
            socket.to_str().unwrap(),
            stack_file.to_str().unwrap(),
        ],
    );
    check_run(&run, &d, true);

    // The static library, over TCP with the token: the same program, the same stack again.
    let fixed = compile_driver(env.work.path(), true);
    let token = env.home_path().join("run/token");
    let run = valgrind(
        &fixed,
        &[
            "tcp",
            &d.listen,
            token.to_str().unwrap(),
            stack_file.to_str().unwrap(),
        ],
    );
    check_run(&run, &d, false);

    // An empty token is refused when the client is made, before anything is sent.
    let mut c = Command::new(&fixed);
    let empty = env.write("empty-token", "");
    c.args([
        "tcp",
        &d.listen,
        empty.to_str().unwrap(),
        stack_file.to_str().unwrap(),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let run = ChildGuard::spawn(c).wait_output(Duration::from_secs(60));
    assert_eq!(
        run.code, 1,
        "an empty token is refused\n{}\n{}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr.contains("token must be non-empty"),
        "{}",
        run.stderr
    );
}

#[test]
fn committed_c_header_is_fresh() {
    let generated = std::fs::read_to_string(&built().generated_header).expect("generated header");
    let committed_path = repo().join("ffi/include/localaistack.h");
    if std::env::var_os("LAS_UPDATE_HEADER").is_some() {
        std::fs::write(&committed_path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == generated,
        "ffi/include/localaistack.h is stale: run `LAS_UPDATE_HEADER=1 cargo test --test c_abi committed_c_header_is_fresh`"
    );
}
