//! The declarative core end to end: the real `lasctl` in a temporary LAS_HOME.

mod support;

use serde_json::Value;
use support::{FreshEnv, model_doc};

fn json(r: &support::Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not json ({e}): {}", r.stdout))
}

const MODULE: &str = "apiVersion: localaistack.io/v1alpha1
kind: Module
metadata:
  name: web
  labels: {team: demo}
spec:
  native:
    command: [/usr/bin/python3, -m, http.server, '8000']
  health: {http: {path: /, port: 8000}}
";

#[test]
fn apply_get_describe_and_generations() {
    let env = FreshEnv::new();
    let m = env.write("m.yaml", &model_doc("tiny", "/srv/tiny.gguf"));
    let w = env.write("w.yaml", MODULE);
    let out = env
        .run(&[
            "apply",
            "-f",
            m.to_str().unwrap(),
            "-f",
            w.to_str().unwrap(),
        ])
        .ok();
    assert!(out.stdout.contains("model/tiny created"), "{}", out.stdout);
    assert!(out.stdout.contains("module/web created"), "{}", out.stdout);
    assert!(
        out.stdout.contains("generation 1 recorded"),
        "{}",
        out.stdout
    );

    // Unchanged re-apply: nothing recorded.
    let again = env
        .run(&[
            "apply",
            "-f",
            m.to_str().unwrap(),
            "-f",
            w.to_str().unwrap(),
        ])
        .ok();
    assert!(
        again.stdout.contains("model/tiny unchanged"),
        "{}",
        again.stdout
    );
    assert!(!again.stdout.contains("generation"), "{}", again.stdout);

    // Singular, plural and capitalized kinds; one object prints itself, several a List.
    for k in ["model", "models", "Model"] {
        let one = json(&env.run(&["get", k, "tiny", "-o", "json"]).ok());
        assert_eq!(one["kind"], "Model");
        assert_eq!(one["metadata"]["generation"], 1);
        assert_eq!(one["spec"]["source"], "file:///srv/tiny.gguf");
        assert_eq!(one["spec"]["format"], "gguf");
    }
    let list = json(&env.run(&["get", "modules", "-o", "json"]).ok());
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"][0]["metadata"]["name"], "web");
    let yaml = env.run(&["get", "module", "web", "-o", "yaml"]).ok();
    assert!(yaml.stdout.contains("kind: Module"), "{}", yaml.stdout);
    let names = env.run(&["get", "all", "-o", "name"]).ok();
    assert_eq!(names.stdout, "model/tiny\nmodule/web\n");
    let table = env.run(&["get", "modules"]).ok();
    let header = table.stdout.lines().next().unwrap();
    assert!(
        header.starts_with("NAME   READY   RUNTIME   ENDPOINT   RESTARTS   AGE"),
        "{header}"
    );
    let wide = env.run(&["get", "modules", "-o", "wide"]).ok();
    assert!(
        wide.stdout.lines().next().unwrap().contains("GENERATION"),
        "{}",
        wide.stdout
    );
    let sel = env
        .run(&["get", "modules", "-l", "team=demo", "-o", "name"])
        .ok();
    assert_eq!(sel.stdout, "module/web\n");
    let sel = env
        .run(&["get", "modules", "-l", "team=other", "-o", "name"])
        .ok();
    assert_eq!(sel.stdout, "");

    // A label change bumps resourceVersion but not generation; a spec change bumps both.
    let rv1 =
        json(&env.run(&["get", "module", "web", "-o", "json"]))["metadata"]["resourceVersion"]
            .clone();
    env.write("w.yaml", &MODULE.replace("team: demo", "team: ops"));
    env.run(&["apply", "-f", w.to_str().unwrap()]).ok();
    let o = json(&env.run(&["get", "module", "web", "-o", "json"]));
    assert_eq!(o["metadata"]["generation"], 1);
    assert_ne!(o["metadata"]["resourceVersion"], rv1);
    env.write("w.yaml", &MODULE.replace("8000'", "8001'"));
    env.run(&["apply", "-f", w.to_str().unwrap()]).ok();
    let o = json(&env.run(&["get", "module", "web", "-o", "json"]));
    assert_eq!(o["metadata"]["generation"], 2);

    let d = env.run(&["describe", "module", "web"]).ok();
    for want in [
        "Name:             web",
        "Generation:       2",
        "Spec:",
        "Events:",
        "Configured",
    ] {
        assert!(d.stdout.contains(want), "missing {want:?} in\n{}", d.stdout);
    }

    let h = json(&env.run(&["history", "-o", "json"]).ok());
    let h = h.as_array().unwrap();
    assert_eq!(h.len(), 3, "{h:?}");
    assert_eq!(
        (h[0]["added"].as_u64(), h[2]["changed"].as_u64()),
        (Some(2), Some(1))
    );
}

#[test]
fn unknown_kind_and_missing_object_are_errors() {
    let env = FreshEnv::new();
    let r = env.run(&["get", "pods"]).fails();
    assert!(
        r.stderr
            .contains("unknown kind \"pods\": known kinds are Model, Module, Policy"),
        "{}",
        r.stderr
    );
    let r = env.run(&["get", "model", "nope"]).fails();
    assert!(r.stderr.contains("Model/nope not found"), "{}", r.stderr);
}

#[test]
fn json_input_and_stdin_and_recursion() {
    let env = FreshEnv::new();
    env.write(
        "d/x.json",
        r#"{"apiVersion":"localaistack.io/v1alpha1","kind":"Model","metadata":{"name":"j"},"spec":{"source":"/j.gguf"}}"#,
    );
    env.write("d/sub/y.yaml", &model_doc("deep", "/d.gguf"));
    let d = env.work.path().join("d");
    let r = env.run(&["apply", "-f", d.to_str().unwrap()]).ok();
    assert!(
        r.stdout.contains("model/j created") && !r.stdout.contains("deep"),
        "{}",
        r.stdout
    );
    let r = env.run(&["apply", "-R", "-f", d.to_str().unwrap()]).ok();
    assert!(r.stdout.contains("model/deep created"), "{}", r.stdout);
    let r = env
        .run_stdin(
            &["apply", "-f", "-"],
            Some(model_doc("piped", "/p.gguf").as_bytes()),
        )
        .ok();
    assert!(r.stdout.contains("model/piped created"), "{}", r.stdout);
}

#[test]
fn diff_exit_codes_and_unified_output() {
    let env = FreshEnv::new();
    let p = env.write("m.yaml", &model_doc("tiny", "/a.gguf"));
    let r = env.run(&["diff", "-f", p.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stdout.contains("+++ desired/Model/tiny")
            && r.stdout.contains("+  source: file:///a.gguf"),
        "{}",
        r.stdout
    );
    env.run(&["apply", "-f", p.to_str().unwrap()]).ok();
    let r = env.run(&["diff", "-f", p.to_str().unwrap()]);
    assert_eq!((r.code, r.stdout.as_str()), (0, ""));
    env.write("m.yaml", &model_doc("tiny", "/b.gguf"));
    let r = env.run(&["diff", "-f", p.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout
            .contains("-  source: file:///a.gguf\n+  source: file:///b.gguf"),
        "{}",
        r.stdout
    );
    env.write("m.yaml", "kind: [");
    let r = env.run(&["diff", "-f", p.to_str().unwrap()]);
    assert_eq!(r.code, 2, "errors are >1 for diff: {}", r.stderr);
}

#[test]
fn delete_by_name_and_by_file() {
    let env = FreshEnv::new();
    let p = env.write(
        "m.yaml",
        &format!(
            "{}---\n{}",
            model_doc("a", "/a.gguf"),
            model_doc("b", "/b.gguf")
        ),
    );
    env.run(&["apply", "-f", p.to_str().unwrap()]).ok();
    let r = env.run(&["delete", "model", "a"]).ok();
    assert!(r.stdout.contains("model/a deleted"), "{}", r.stdout);
    env.run(&["get", "model", "a"]).fails();
    let r = env.run(&["delete", "-f", p.to_str().unwrap()]);
    assert_eq!(r.code, 1, "a is gone already: {}", r.stdout);
    assert!(r.stderr.contains("Model/a not found"));
    env.run(&["get", "model", "b"]).ok(); // the failed delete changed nothing
    env.run(&["delete", "model/b"]).ok();
    assert_eq!(env.run(&["get", "all", "-o", "name"]).ok().stdout, "");
}

#[test]
fn prune_is_scoped_to_its_path_and_empty_needs_consent() {
    let env = FreshEnv::new();
    let d1 = env.work.path().join("one");
    env.write("one/a.yaml", &model_doc("a", "/a.gguf"));
    env.write("one/b.yaml", &model_doc("b", "/b.gguf"));
    env.write("two/c.yaml", &model_doc("c", "/c.gguf"));
    let d2 = env.work.path().join("two");
    env.run(&["apply", "-f", d1.to_str().unwrap()]).ok();
    env.run(&["apply", "-f", d2.to_str().unwrap()]).ok();
    std::fs::remove_file(d1.join("b.yaml")).unwrap();
    let r = env
        .run(&["apply", "--prune", "-f", d1.to_str().unwrap()])
        .ok();
    assert!(r.stdout.contains("model/b pruned"), "{}", r.stdout);
    assert!(
        !r.stdout.contains("model/c"),
        "prune must not touch other paths: {}",
        r.stdout
    );
    std::fs::remove_file(d1.join("a.yaml")).unwrap();
    let r = env
        .run(&["apply", "--prune", "-f", d1.to_str().unwrap()])
        .fails();
    assert!(
        r.stderr
            .contains("would delete all 1 objects recorded for it; pass --allow-empty"),
        "{}",
        r.stderr
    );
    env.run(&["get", "model", "a"]).ok();
    let r = env
        .run(&[
            "apply",
            "--prune",
            "--allow-empty",
            "-f",
            d1.to_str().unwrap(),
        ])
        .ok();
    assert!(r.stdout.contains("model/a pruned"), "{}", r.stdout);
    assert_eq!(
        env.run(&["get", "models", "-o", "name"]).ok().stdout,
        "model/c\n"
    );
}

#[test]
fn dry_run_records_nothing() {
    let env = FreshEnv::new();
    let p = env.write("m.yaml", &model_doc("a", "/a.gguf"));
    let r = env
        .run(&["apply", "--dry-run", "-f", p.to_str().unwrap()])
        .ok();
    assert!(
        r.stdout.contains("model/a created (dry run)"),
        "{}",
        r.stdout
    );
    assert_eq!(env.run(&["get", "all", "-o", "name"]).ok().stdout, "");
}

#[test]
fn rollback_restores_desired_state_as_a_new_generation() {
    let env = FreshEnv::new();
    let p = env.write("m.yaml", &model_doc("a", "/v1.gguf"));
    env.run(&["apply", "-f", p.to_str().unwrap()]).ok(); // gen 1
    env.write(
        "m.yaml",
        &format!(
            "{}---\n{}",
            model_doc("a", "/v2.gguf"),
            model_doc("b", "/b.gguf")
        ),
    );
    env.run(&["apply", "-f", p.to_str().unwrap()]).ok(); // gen 2
    let uid_a = json(&env.run(&["get", "model", "a", "-o", "json"]))["metadata"]["uid"].clone();
    let r = env.run(&["rollback"]).ok(); // to gen 1 as gen 3
    assert!(
        r.stdout.contains("model/a configured") && r.stdout.contains("model/b deleted"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("generation 3 recorded"), "{}", r.stdout);
    let a = json(&env.run(&["get", "model", "a", "-o", "json"]));
    assert_eq!(a["spec"]["source"], "file:///v1.gguf");
    assert_eq!(a["metadata"]["uid"], uid_a, "same object, new spec");
    assert_eq!(a["metadata"]["generation"], 3);
    env.run(&["get", "model", "b"]).fails();
    let r = env.run(&["rollback", "2"]).ok();
    assert!(r.stdout.contains("model/b created"), "{}", r.stdout);
    let r = env.run(&["rollback", "99"]).fails();
    assert!(
        r.stderr.contains("generation 99 does not exist"),
        "{}",
        r.stderr
    );
    let h = json(&env.run(&["history", "-o", "json"]));
    assert_eq!(h.as_array().unwrap().len(), 4);
    assert_eq!(h[3]["source"], "rollback to generation 2");
}

#[test]
fn explain_version_and_completion() {
    let env = FreshEnv::new();
    let r = env.run(&["explain", "model"]).ok();
    assert!(
        r.stdout.contains("KIND:     Model") && r.stdout.contains("spec"),
        "{}",
        r.stdout
    );
    let r = env.run(&["explain", "module.spec.container.ports"]).ok();
    assert!(
        r.stdout.contains("containerPort") && r.stdout.contains("hostPort"),
        "{}",
        r.stdout
    );
    let r = env.run(&["explain", "module.spec", "--recursive"]).ok();
    assert!(r.stdout.contains("containerPort"), "{}", r.stdout);
    let r = env.run(&["explain", "module.spec.nope"]).fails();
    assert!(
        r.stderr.contains("field \"nope\" does not exist"),
        "{}",
        r.stderr
    );
    let r = env.run(&["version"]).ok();
    assert!(r.stdout.contains("lasctl ") && r.stdout.contains("localaistack.io/v1alpha1"));
    let r = env.run(&["completion", "bash"]).ok();
    assert!(
        r.stdout.contains("_lasctl"),
        "{}",
        &r.stdout[..200.min(r.stdout.len())]
    );
}

#[test]
fn state_db_is_private_and_in_wal_mode() {
    use std::os::unix::fs::PermissionsExt;
    let env = FreshEnv::new();
    let p = env.write("m.yaml", &model_doc("a", "/a.gguf"));
    env.run(&["apply", "-f", p.to_str().unwrap()]).ok();
    let db = env.home_path().join("state.db");
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let jm: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(jm, "wal");
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert!(v >= 1);
}

#[test]
fn concurrent_writers_never_lose_an_update() {
    // Two processes apply disjoint sets at once, many times over; every object and every
    // generation must be recorded, with no lost write.
    let env = FreshEnv::new();
    let mut files = Vec::new();
    for w in 0..2 {
        let mut text = String::new();
        for i in 0..30 {
            text.push_str(&model_doc(&format!("w{w}-m{i}"), &format!("/m{i}.gguf")));
            text.push_str("---\n");
        }
        files.push(env.write(&format!("w{w}.yaml"), &text));
    }
    let rounds = 5;
    let handles: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(w, f)| {
            let f = f.clone();
            let home = env.home_path().to_path_buf();
            std::thread::spawn(move || {
                for round in 0..rounds {
                    let text = std::fs::read_to_string(&f)
                        .unwrap()
                        .replace(".gguf", &format!("-{round}.gguf"));
                    let p = f.with_file_name(format!("w{w}-r{round}.yaml"));
                    std::fs::write(&p, text).unwrap();
                    let o = std::process::Command::new(support::lasctl_bin())
                        .env("LAS_HOME", &home)
                        .args(["apply", "-f", p.to_str().unwrap()])
                        .output()
                        .unwrap();
                    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let list = json(&env.run(&["get", "models", "-o", "json"]).ok());
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 60);
    for it in items {
        // Every object saw every round: generation == rounds, and its last spec.
        assert_eq!(it["metadata"]["generation"], rounds, "{it}");
        assert!(
            it["spec"]["source"]
                .as_str()
                .unwrap()
                .ends_with(&format!("-{}.gguf", rounds - 1))
        );
    }
    let h = json(&env.run(&["history", "-o", "json"]));
    assert_eq!(h.as_array().unwrap().len(), 2 * rounds as usize);
}

/// Issue 12: an upper-case sha256 (as some tools print it) names the same bytes; it is accepted
/// and recorded in lower case.
#[test]
fn uppercase_sha256_is_accepted_and_normalised_regression() {
    let env = FreshEnv::new();
    let digest = "AB".repeat(32);
    let f = env.write(
        "m.yaml",
        &format!(
            "apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata:\n  name: m\nspec:\n  source: /srv/m.gguf\n  sha256: {digest}\n"
        ),
    );
    env.run(&["apply", "-f", f.to_str().unwrap()]).ok();
    let out = env.run(&["get", "model", "m", "-o", "json"]).ok().stdout;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["spec"]["sha256"], "ab".repeat(32), "{out}");
}

/// Issue 12, defect 4: `get`/`describe` took `KIND NAME` while `wait`, `logs` and `events` required
/// `KIND/NAME`. Every verb now takes both forms and kubectl-style short names.
#[test]
fn object_arguments_are_inconsistent_across_verbs_regression() {
    let env = FreshEnv::new();
    let w = env.write("w.yaml", MODULE);
    env.run(&["apply", "-f", w.to_str().unwrap()]).ok();

    for form in [
        &["module", "web"][..],
        &["module/web"],
        &["mod", "web"],
        &["Modules/web"],
    ] {
        let mut get = vec!["get"];
        get.extend_from_slice(form);
        get.extend(["-o", "name"]);
        assert_eq!(env.run(&get).ok().stdout.trim(), "module/web", "{form:?}");

        let mut describe = vec!["describe"];
        describe.extend_from_slice(form);
        assert!(
            env.run(&describe)
                .ok()
                .stdout
                .contains("Name:             web")
        );

        let mut events = vec!["events"];
        events.extend_from_slice(form);
        env.run(&events).ok();

        // No daemon converges it: the wait runs out of time, having understood the object.
        let mut wait = vec!["wait"];
        wait.extend_from_slice(form);
        wait.push("--timeout=100ms");
        let r = env.run(&wait).fails();
        assert!(
            r.stderr.contains("timed out") && r.stderr.contains("Module/web"),
            "{}",
            r.stderr
        );
    }

    for bad in [
        &["module"][..],
        &["module/"],
        &["pods", "web"],
        &["module", "web", "extra"],
    ] {
        let mut describe = vec!["describe"];
        describe.extend_from_slice(bad);
        let r = env.run(&describe);
        assert_ne!(r.code, 0, "{bad:?}: {}", r.stdout);
        assert!(!r.stderr.is_empty(), "{bad:?}");
    }

    env.run(&["delete", "mod/web"]).ok();
    assert!(
        env.run(&["get", "modules", "-o", "name"])
            .ok()
            .stdout
            .is_empty()
    );
}
