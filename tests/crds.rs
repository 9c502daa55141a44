//! `crds/` is generated from the Rust types: this test fails when it is stale (run `make crds`),
//! and validates every example against it with a real JSON-Schema validator.

use std::path::{Path, PathBuf};

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

#[test]
fn examples_and_policies_validate_against_crds() {
    let mut files = Vec::new();
    yaml_files(&root().join("examples"), &mut files);
    yaml_files(&root().join("policies"), &mut files);
    assert!(!files.is_empty());
    let mut checked = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            if v.is_null() {
                continue;
            }
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
