//! Every case in tests/cases/bad-input is applied with the real `lasctl`: it must fail with exit 1,
//! print each `# expect:` line of the case on stderr, and record nothing.

mod support;

use support::FreshEnv;

fn expectations(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(str::to_string)
        .collect()
}

fn assert_nothing_recorded(env: &FreshEnv) {
    let h = env.run(&["history", "-o", "json"]).ok();
    assert_eq!(h.stdout.trim(), "[]", "history must stay empty");
    let all = env.run(&["get", "all", "-o", "name"]).ok();
    assert_eq!(all.stdout.trim(), "", "no object may be recorded");
}

#[test]
fn every_bad_input_case_fails_clearly_and_records_nothing() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases/bad-input");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 20, "the case directory lost cases");
    let env = FreshEnv::new();
    let mut failures = Vec::new();
    for case in &cases {
        let text = std::fs::read_to_string(case).unwrap();
        let expect = expectations(&text);
        assert!(
            !expect.is_empty(),
            "{} has no # expect: line",
            case.display()
        );
        let r = env.run(&["apply", "-f", case.to_str().unwrap()]);
        let missing: Vec<&String> = expect
            .iter()
            .filter(|e| !r.stderr.contains(e.as_str()))
            .collect();
        if r.code != 1 || !missing.is_empty() || r.stderr.contains("panicked") {
            failures.push(format!(
                "{}: exit {} (want 1); missing {:?}\nstderr: {}",
                case.file_name().unwrap().to_string_lossy(),
                r.code,
                missing,
                r.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_nothing_recorded(&env);
}

#[test]
fn non_utf8_bytes_are_a_clean_error() {
    let env = FreshEnv::new();
    let p = env.work.path().join("latin1.yaml");
    std::fs::write(
        &p,
        b"apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata: {name: caf\xe9}\n",
    )
    .unwrap();
    let r = env.run(&["apply", "-f", p.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains("latin1.yaml:3:21: invalid UTF-8 at byte"),
        "{}",
        r.stderr
    );
    assert_nothing_recorded(&env);
}

#[test]
fn oversized_document_is_refused_before_parsing() {
    let env = FreshEnv::new();
    let mut doc = support::model_doc("big", "/x.gguf");
    doc.push_str("  format: gguf\n");
    let padding = format!("# {}\n", "x".repeat(1024));
    for _ in 0..1100 {
        doc.push_str(&padding);
    }
    let p = env.write("big.yaml", &doc);
    let r = env.run(&["apply", "-f", p.to_str().unwrap()]).fails();
    assert!(
        r.stderr
            .contains("at most 1048576 bytes are accepted per document"),
        "{}",
        r.stderr
    );
    assert_nothing_recorded(&env);
}

#[test]
fn one_bad_document_among_good_ones_records_nothing() {
    let env = FreshEnv::new();
    env.write("dir/a.yaml", &support::model_doc("a", "/a.gguf"));
    env.write("dir/b.yaml", &support::model_doc("b", "/b.gguf"));
    env.write("dir/c.yaml", &support::model_doc("c", "relative.gguf"));
    let dir = env.work.path().join("dir");
    let r = env.run(&["apply", "-f", dir.to_str().unwrap()]).fails();
    assert!(r.stderr.contains("c.yaml:6:3: spec.source"), "{}", r.stderr);
    assert_nothing_recorded(&env);
}

#[test]
fn stdin_errors_name_stdin() {
    let env = FreshEnv::new();
    let r = env.run_stdin(&["apply", "-f", "-"], Some(b"apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata: {name: x}\nspec: {source: 3}\n"));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("<stdin>:4:"), "{}", r.stderr);
}
