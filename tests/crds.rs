//! `crds/` is generated from the Rust types: this test fails when it is stale (run `make crds`),
//! and validates every example against it with a real JSON-Schema validator.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use localaistack::api::schema::crd_files;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn crds_are_up_to_date() {
    let dir = root().join("crds");
    let update = std::env::var_os("LAS_UPDATE_CRDS").is_some();
    let mut stale = Vec::new();
    for (name, text) in crd_files() {
        let p = dir.join(&name);
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&p, &text).unwrap();
        } else if std::fs::read_to_string(&p).ok().as_deref() != Some(text.as_str()) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "crds/ is stale for {stale:?}: run `make crds` and commit the result"
    );
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

fn validator(kind: &str) -> jsonschema::Validator {
    let text =
        std::fs::read_to_string(root().join(format!("crds/{}.schema.json", kind.to_lowercase())))
            .unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&schema).expect("the generated schema is valid JSON Schema")
}

/// Every document of examples/ and policies/, with the file it comes from.
fn documents() -> Vec<(PathBuf, serde_json::Value)> {
    let mut files = Vec::new();
    yaml_files(&root().join("examples"), &mut files);
    yaml_files(&root().join("policies"), &mut files);
    assert!(!files.is_empty());
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            if !v.is_null() {
                out.push((f.clone(), v));
            }
        }
    }
    out
}

#[test]
fn examples_and_policies_validate_against_crds() {
    let mut checked = 0;
    for (f, v) in documents() {
        let kind = v["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no kind", f.display()));
        let errors: Vec<String> = validator(kind)
            .iter_errors(&v)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{} does not validate: {errors:?}",
            f.display()
        );
        checked += 1;
    }
    assert!(checked >= 3, "checked only {checked} documents");
}

#[test]
fn the_schema_rejects_what_the_decoder_rejects() {
    let bad = serde_json::json!({
        "apiVersion": "localaistack.io/v1alpha1", "kind": "Model",
        "metadata": {"name": "Bad_Name"}, "spec": {"source": "/x", "bogus": 1}
    });
    let errs: Vec<String> = validator("Model")
        .iter_errors(&bad)
        .map(|e| e.to_string())
        .collect();
    assert!(errs.len() >= 2, "{errs:?}");
}

/// Documents every validator must refuse: a bad name and an unknown field, an unknown kind, a
/// Module without a spec.
fn bad_documents() -> Vec<serde_json::Value> {
    vec![
        serde_json::json!({
            "apiVersion": "localaistack.io/v1alpha1", "kind": "Model",
            "metadata": {"name": "Bad_Name"}, "spec": {"source": "/x", "bogus": 1}
        }),
        serde_json::json!({
            "apiVersion": "localaistack.io/v1alpha1", "kind": "Widget",
            "metadata": {"name": "w"}, "spec": {}
        }),
        serde_json::json!({
            "apiVersion": "localaistack.io/v1alpha1", "kind": "Module",
            "metadata": {"name": "m"}
        }),
    ]
}

fn combined() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("crds/localaistack.schema.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Defect 8 of issue 12: the editor schema referred to the per-kind files relatively, which
/// validators resolve against its remote `$id`. Every `$ref` now points into the file itself.
#[test]
fn the_editor_schema_refers_only_to_itself() {
    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|c| refs(c, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|c| refs(c, out)),
            _ => {}
        }
    }
    let schema = combined();
    let mut all = Vec::new();
    refs(&schema, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        let name = r
            .strip_prefix("#/$defs/")
            .unwrap_or_else(|| panic!("{r} points outside the file"));
        assert!(schema["$defs"].get(name).is_some(), "{r} points nowhere");
    }
    // The Rust validator accepts the examples and refuses the bad documents with it too.
    let v = jsonschema::validator_for(&schema).expect("the editor schema compiles offline");
    for (f, doc) in documents() {
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", f.display());
    }
    for doc in bad_documents() {
        assert!(!v.is_valid(&doc), "accepted {doc}");
    }
}

/// The interpreter: `$LAS_PYTHON` (set by `make test`), else `.venv/bin/python` of this checkout
/// (`make venv`). Without either the test fails and says so; it never skips.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("LAS_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with the jsonschema package: set LAS_PYTHON, or run `make venv` to create {}",
        venv.display()
    );
    venv
}

/// Defect 8 of issue 12, with a validator editors use: Python's `jsonschema`, offline (no
/// registry of other files, no network), validates every example and policy with the editor
/// schema and refuses the bad documents.
#[test]
fn the_editor_schema_resolves_offline_in_python_jsonschema() {
    const SCRIPT: &str = r#"
import json, sys
from jsonschema.validators import validator_for
schema = json.load(open(sys.argv[1]))
cls = validator_for(schema)
cls.check_schema(schema)
v = cls(schema)
print(json.dumps([sorted(e.message for e in v.iter_errors(d)) for d in json.load(sys.stdin)]))
"#;
    let good = documents();
    let bad = bad_documents();
    let docs: Vec<&serde_json::Value> = good.iter().map(|(_, d)| d).chain(&bad).collect();
    let python = python();
    let mut child = Command::new(&python)
        .args(["-c", SCRIPT])
        .arg(root().join("crds/localaistack.schema.json"))
        // No network: a reference outside the file cannot be fetched.
        .env("http_proxy", "http://127.0.0.1:9")
        .env("https_proxy", "http://127.0.0.1:9")
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); run `make venv` to create the Python environment",
                python.display()
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&docs).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python jsonschema failed (is the jsonschema package installed? `make venv`)\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let verdicts: Vec<Vec<String>> = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(verdicts.len(), docs.len());
    for ((f, _), errors) in good.iter().zip(&verdicts) {
        assert!(errors.is_empty(), "{}: {errors:?}", f.display());
    }
    for (doc, errors) in bad.iter().zip(&verdicts[good.len()..]) {
        assert!(!errors.is_empty(), "python jsonschema accepted {doc}");
    }
    assert!(good.len() >= 3, "checked only {} documents", good.len());
}
