//! Declarative core figures (not a test: prints numbers). Targets on the 2-core reference machine:
//! apply of 1,000 objects < 1 s, unchanged re-apply < 300 ms with no write, `get -o json` of all < 200 ms.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn lasctl(home: &Path, args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_lasctl"))
        .env("LAS_HOME", home)
        .args(args)
        .output()
        .expect("run lasctl");
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

fn write_objects(dir: &Path, n: usize) {
    let mut text = String::new();
    for i in 0..n {
        if i % 2 == 0 {
            text += &format!(
                "apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata:\n  name: model-{i}\n  labels: {{bench: core}}\nspec:\n  source: /srv/models/m{i}.gguf\n  sha256: {i:064x}\n---\n"
            );
        } else {
            text += &format!(
                "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata:\n  name: module-{i}\nspec:\n  native:\n    command: [/usr/bin/sleep, '3600']\n    env: {{N: '{i}'}}\n  health: {{tcp: {{port: {}}}}}\n  restartPolicy: OnFailure\n---\n",
                20000 + i
            );
        }
    }
    std::fs::write(dir.join("objects.yaml"), text).unwrap();
}

fn db_rv(home: &Path) -> i64 {
    let c = rusqlite::Connection::open(home.join("state.db")).unwrap();
    c.query_row(
        "SELECT value FROM counters WHERE name='resource_version'",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let n = 1000;
    let work = tempfile::tempdir().unwrap();
    write_objects(work.path(), n);
    let file = work.path().join("objects.yaml");
    let f = file.to_str().unwrap();
    let (mut first, mut again, mut get) = (Vec::new(), Vec::new(), Vec::new());
    let mut no_write = true;
    for _ in 0..5 {
        let home = tempfile::tempdir().unwrap();
        lasctl(home.path(), &["version"]);
        first.push(lasctl(home.path(), &["apply", "-f", f]));
        let rv = db_rv(home.path());
        for _ in 0..3 {
            again.push(lasctl(home.path(), &["apply", "-f", f]));
            get.push(lasctl(home.path(), &["get", "all", "-o", "json"]));
        }
        no_write &= db_rv(home.path()) == rv;
    }
    println!(
        "core: apply {n} objects in one call      median {:>7.1} ms  (target < 1000 ms)",
        median(first).as_secs_f64() * 1e3
    );
    println!(
        "core: unchanged re-apply of {n}          median {:>7.1} ms  (target < 300 ms), wrote nothing: {no_write}",
        median(again).as_secs_f64() * 1e3
    );
    println!(
        "core: get all -o json ({n} objects)      median {:>7.1} ms  (target < 200 ms)",
        median(get).as_secs_f64() * 1e3
    );
}
