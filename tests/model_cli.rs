//! `lasctl model generate-test` and `lasctl model inspect`, run as the real binary.

mod support;

use support::FreshEnv;

#[test]
fn generate_test_writes_a_deterministic_model_that_inspect_reads() {
    let env = FreshEnv::new();
    let a = env.work.path().join("a.gguf");
    let b = env.work.path().join("b.gguf");
    let out = env
        .run(&["model", "generate-test", a.to_str().unwrap(), "--seed", "5"])
        .ok();
    assert!(out.stdout.contains("parameters"), "{}", out.stdout);
    env.run(&["model", "generate-test", b.to_str().unwrap(), "--seed", "5"])
        .ok();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    let info = env.run(&["model", "inspect", a.to_str().unwrap()]).ok();
    let v: serde_json::Value = serde_json::from_str(&info.stdout).unwrap();
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["quantization"], "F32");
    assert_eq!(v["layers"], 2);
    assert_eq!(v["contextLength"], 4096);
    assert_eq!(v["sizeBytes"], std::fs::metadata(&a).unwrap().len());

    let f16 = env.work.path().join("f16.gguf");
    env.run(&["model", "generate-test", f16.to_str().unwrap(), "--f16"])
        .ok();
    let info = env.run(&["model", "inspect", f16.to_str().unwrap()]).ok();
    assert!(info.stdout.contains("\"F16\""), "{}", info.stdout);
}

#[test]
fn bad_model_arguments_are_clear_errors() {
    let env = FreshEnv::new();
    // A path under a regular file cannot be created; the error names it, not a temporary file.
    let file = env.write("plain", "x");
    let under = file.join("x.gguf");
    let r = env
        .run(&["model", "generate-test", under.to_str().unwrap()])
        .fails();
    assert!(r.stderr.contains("cannot create"), "{}", r.stderr);
    assert!(!r.stderr.contains(".partial"), "{}", r.stderr);
    let r = env.run(&["model", "generate-test", "/tmp/x.gguf", "--preset", "huge"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("huge"), "{}", r.stderr);
    let junk = env.write("junk.gguf", "not a model");
    let r = env
        .run(&["model", "inspect", junk.to_str().unwrap()])
        .fails();
    assert!(
        r.stderr.contains("not a GGUF file") && r.stderr.contains("junk.gguf"),
        "{}",
        r.stderr
    );
}

/// Issue 12 defect 5: on a fresh machine the model's directory does not exist yet.
#[test]
fn generate_test_creates_a_missing_parent_directory_regression() {
    let env = FreshEnv::new();
    let path = env.work.path().join("new/deeper/tiny.gguf");
    env.run(&["model", "generate-test", path.to_str().unwrap()])
        .ok();
    assert!(path.is_file());
}
