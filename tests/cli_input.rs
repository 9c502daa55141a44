//! Issue 12, input and previews, through the real `lasctl`: previews write nothing, one exit-code
//! rule, the built-in policy as an object, human units, `-o` values per verb, usage exit codes,
//! `get -o yaml | apply -f -` and GET → PUT round trips, and the adversarial pass (BOM, empty
//! applies, prune scopes, foreign files in a directory, ports, per-module resolution reasons,
//! condition case, error bodies of the HTTP API).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::daemon::{Daemon, wait_ready};
use support::{ChildGuard, FreshEnv, Run};

fn profile(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cases/profiles")
        .join(format!("{name}.yaml"))
}

/// `lasctl ARGS` with a hardware profile file and the shipped catalog.
fn run_prof(env: &FreshEnv, args: &[&str]) -> Run {
    let mut c = env.cmd();
    c.env("LAS_HARDWARE_PROFILE", profile("laptop-8g"))
        .env_remove("LAS_CATALOG")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    ChildGuard::spawn(c).wait_output(Duration::from_secs(120))
}

fn model(name: &str, path: &Path) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata: {{name: {name}}}\nspec: {{source: {}}}\n---\n",
        path.display()
    )
}

fn from(name: &str, module: &str) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {{name: {name}}}\nspec:\n  from: {module}\n---\n"
    )
}

fn web(name: &str, host_port: u16) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {{name: {name}}}\nspec:\n  container:\n    image: busybox:1.36\n    ports: [{{containerPort: 80, hostPort: {host_port}}}]\n---\n"
    )
}

fn sparse(env: &FreshEnv, name: &str, bytes: u64) -> PathBuf {
    let p = env.work.path().join(name);
    std::fs::File::create(&p).unwrap().set_len(bytes).unwrap();
    p
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

#[test]
fn plan_writes_nothing_into_the_users_directory() {
    let env = FreshEnv::new();
    let m = sparse(&env, "m.gguf", 100 << 20);
    let dir = env.work.path().join("stack");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("s.yaml"), model("m", &m) + &from("vec", "qdrant")).unwrap();
    let d = dir.to_str().unwrap();
    run_prof(&env, &["apply", "-f", d]).ok();
    let dir_before = snapshot(&dir);
    let db = env.home_path().join("state.db");
    let db_before = std::fs::read(&db).unwrap();
    let history_before = env.run(&["history", "-o", "json"]).ok().stdout;
    // The stack changes after the apply, so the previews have something to show.
    std::fs::write(
        dir.join("s.yaml"),
        model("m", &m) + &model("m2", &m) + &from("vec", "qdrant"),
    )
    .unwrap();
    let dir_before = {
        let mut s = dir_before;
        s.insert(
            dir.join("s.yaml"),
            std::fs::read(dir.join("s.yaml")).unwrap(),
        );
        s
    };
    run_prof(&env, &["plan", "-f", d]).ok();
    run_prof(&env, &["plan", "-f", d, "-o", "json", "--update"]).ok();
    run_prof(&env, &["apply", "--dry-run", "-f", d]).ok();
    run_prof(&env, &["apply", "--dry-run", "-f", d, "-o", "yaml"]).ok();
    let diff = run_prof(&env, &["diff", "-f", d]);
    assert_eq!(diff.code, 1, "diff shows the change: {}", diff.stderr);
    assert_eq!(
        snapshot(&dir),
        dir_before,
        "no las.lock or other file written"
    );
    assert!(
        std::fs::read(&db).unwrap() == db_before,
        "state.db is byte-identical after the previews"
    );
    let events = env.run(&["events"]).ok().stdout;
    assert!(!events.contains("HardwareProfiled"), "{events}");
    assert_eq!(
        env.run(&["history", "-o", "json"]).ok().stdout,
        history_before
    );
}

#[test]
fn a_what_if_hardware_profile_in_plan_records_no_event() {
    let env = FreshEnv::new();
    let m = sparse(&env, "m.gguf", 100 << 20);
    let f = env.write("m.yaml", &model("m", &m));
    env.run(&["apply", "-f", f.to_str().unwrap()]).ok();
    let db = env.home_path().join("state.db");
    let before = std::fs::read(&db).unwrap();
    run_prof(&env, &["plan", "-f", f.to_str().unwrap()]).ok();
    let events = env.run(&["events"]).ok();
    assert!(
        !events.stdout.contains("HardwareProfiled"),
        "{}",
        events.stdout
    );
    assert!(std::fs::read(&db).unwrap() == before, "state.db unchanged");
}

#[test]
fn previews_in_a_home_without_state_create_nothing() {
    let env = FreshEnv::new();
    let m = sparse(&env, "m.gguf", 100 << 20);
    let f = env.write("m.yaml", &model("m", &m));
    let home = env.home_path().join("never");
    for args in [
        vec!["plan", "-f", f.to_str().unwrap()],
        vec!["apply", "--dry-run", "-f", f.to_str().unwrap()],
        vec!["diff", "-f", f.to_str().unwrap()],
    ] {
        let mut c = env.cmd();
        c.env("LAS_HOME", &home)
            .env("LAS_HARDWARE_PROFILE", profile("laptop-8g"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let r = ChildGuard::spawn(c).wait_output(Duration::from_secs(60));
        assert!(
            r.code == 0 || (args[0] == "diff" && r.code == 1),
            "{args:?}: {r:?}"
        );
        assert!(!home.exists(), "{args:?} created {}", home.display());
    }
}

#[test]
fn plan_and_apply_dry_run_exit_1_on_the_same_refusals() {
    let env = FreshEnv::new();
    let f = env.write("s.yaml", &from("ghost", "no-such-module"));
    let f = f.to_str().unwrap();
    let plan = run_prof(&env, &["plan", "-f", f]).fails();
    assert!(
        plan.stderr.contains("1 object(s) refused"),
        "{}",
        plan.stderr
    );
    let dry = run_prof(&env, &["apply", "--dry-run", "-f", f]).fails();
    assert!(
        dry.stdout.contains("module/ghost created (dry run)"),
        "{}",
        dry.stdout
    );
    assert!(dry.stderr.contains("1 object(s) refused"), "{}", dry.stderr);
    let json = run_prof(&env, &["apply", "--dry-run", "-f", f, "-o", "json"]).fails();
    assert!(json.stdout.contains("\"created\""), "{}", json.stdout);
    assert_eq!(env.run(&["get", "all", "-o", "name"]).ok().stdout, "");
}

#[test]
fn the_lock_is_written_by_apply_and_by_the_lock_verb_only() {
    let env = FreshEnv::new();
    let dir = env.work.path().join("stack");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("s.yaml"), from("vec", "qdrant")).unwrap();
    let d = dir.to_str().unwrap();
    let lock = dir.join("las.lock");
    run_prof(&env, &["plan", "-f", d]).ok();
    assert!(!lock.exists(), "plan writes no lock");
    let r = run_prof(&env, &["lock", "-f", d]).ok();
    assert!(r.stdout.contains("wrote"), "{}", r.stdout);
    assert!(
        std::fs::read_to_string(&lock)
            .unwrap()
            .contains("name: qdrant")
    );
    let r = run_prof(&env, &["lock", "-f", d]).ok();
    assert!(r.stdout.contains("is up to date"), "{}", r.stdout);
    std::fs::remove_file(&lock).unwrap();
    run_prof(&env, &["apply", "-f", d]).ok();
    assert!(
        std::fs::read_to_string(&lock)
            .unwrap()
            .contains("name: qdrant")
    );
    // A lock that cannot be resolved is an error of the lock verb, and writes nothing.
    std::fs::write(dir.join("s.yaml"), from("ghost", "no-such-module")).unwrap();
    std::fs::remove_file(&lock).unwrap();
    let r = run_prof(&env, &["lock", "-f", d]).fails();
    assert!(r.stderr.contains("no-such-module"), "{}", r.stderr);
    assert!(!lock.exists());
}

#[test]
fn get_policy_default_shows_the_built_in_policy_while_no_policy_is_stored() {
    let env = FreshEnv::new();
    let y = env.run(&["get", "policy", "default", "-o", "yaml"]).ok();
    assert!(
        y.stdout.contains("localaistack.io/built-in: 'true'")
            || y.stdout.contains("localaistack.io/built-in: \"true\""),
        "{}",
        y.stdout
    );
    assert!(!y.stdout.contains("resourceVersion"), "{}", y.stdout);
    let t = env.run(&["get", "pol"]).ok();
    assert!(
        t.stdout
            .lines()
            .any(|l| l.starts_with("default") && l.ends_with("built-in")),
        "{}",
        t.stdout
    );
    // Read only.
    let d = env.run(&["delete", "policy", "default"]).fails();
    assert!(d.stderr.contains("built in"), "{}", d.stderr);
    // `hardware` names the same policy.
    let h = run_prof(&env, &["hardware"]).ok();
    assert!(h.stdout.contains("(policy default)"), "{}", h.stdout);
    // The built-in one saved and applied is a Policy of one's own; then it is stored, not built in.
    let f = env.write("default.yaml", &y.stdout);
    env.run(&["apply", "-f", f.to_str().unwrap()]).ok();
    let t = env.run(&["get", "policies"]).ok();
    assert!(!t.stdout.contains("built-in"), "{}", t.stdout);
    assert!(t.stdout.contains("default"), "{}", t.stdout);
}

#[test]
fn sizes_read_in_human_units_not_zero_gib_or_raw_bytes() {
    let env = FreshEnv::new();
    let m = sparse(&env, "m.gguf", 104 << 20);
    let engine = "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {name: chat}\nspec:\n  model: m\n  engine: {type: llama}\n";
    let f = env.write("m.yaml", &(model("m", &m) + engine));
    let p = run_prof(&env, &["plan", "-f", f.to_str().unwrap()]).ok();
    assert!(!p.stdout.contains("0.0 GiB"), "{}", p.stdout);
    assert!(!p.stdout.contains("0.1 GiB"), "{}", p.stdout);
    assert!(p.stdout.contains(" MiB"), "{}", p.stdout);
    let h = run_prof(&env, &["hardware"]).ok();
    let tier: String = h
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("Tier:"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(tier.contains("GiB"), "{tier}");
    let longest_number = tier
        .split(|c: char| !c.is_ascii_digit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(
        longest_number < 7,
        "raw byte counts in the tier reason: {tier}"
    );
}

#[test]
fn output_values_a_verb_does_not_honour_are_refused() {
    let env = FreshEnv::new();
    let f = env.write("m.yaml", &support::model_doc("m", "/m.gguf"));
    let f = f.to_str().unwrap();
    for args in [
        vec!["plan", "-f", f, "-o", "wide"],
        vec!["plan", "-f", f, "-o", "name"],
        vec!["apply", "-f", f, "-o", "wide"],
        vec!["apply", "-f", f, "-o", "table"],
        vec!["hardware", "-o", "name"],
        vec!["history", "-o", "wide"],
    ] {
        let r = env.run(&args);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(r.stderr.contains("invalid value"), "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("possible values"),
            "{args:?}: {}",
            r.stderr
        );
    }
    assert_eq!(env.run(&["get", "all", "-o", "name"]).ok().stdout, "");
}

#[test]
fn usage_errors_exit_1_and_diff_usage_errors_exit_2() {
    let env = FreshEnv::new();
    assert_eq!(env.run(&["get"]).code, 1);
    assert_eq!(env.run(&["no-such-verb"]).code, 1);
    assert_eq!(env.run(&["apply", "--bogus"]).code, 1);
    assert_eq!(env.run(&["diff"]).code, 2);
    assert_eq!(env.run(&["diff", "-f", "/x", "--bogus"]).code, 2);
    assert_eq!(env.run(&["--help"]).ok().code, 0);
    assert_eq!(env.run(&["version"]).ok().code, 0);
    let help = env.run(&["get", "--help"]).ok();
    assert!(help.stdout.contains("sources"), "{}", help.stdout);
}

#[test]
fn get_yaml_applies_back_unchanged_and_a_stale_resource_version_conflicts() {
    let env = FreshEnv::new();
    let f = env.write(
        "s.yaml",
        &(support::model_doc("tiny", "/srv/tiny.gguf") + "---\n" + &web("web", 18080)),
    );
    env.run(&["apply", "-f", f.to_str().unwrap()]).ok();
    // A List of several objects, with every system field, and a status as a daemon writes it.
    let all = env.run(&["get", "all", "-o", "yaml"]).ok().stdout;
    assert!(all.contains("kind: List"), "{all}");
    let r = env
        .run_stdin(&["apply", "-f", "-"], Some(all.as_bytes()))
        .ok();
    assert!(r.stdout.contains("model/tiny unchanged"), "{}", r.stdout);
    assert!(!r.stdout.contains("generation"), "{}", r.stdout);
    let one = env.run(&["get", "model", "tiny", "-o", "yaml"]).ok().stdout;
    let with_status = format!(
        "{one}status:\n  observedGeneration: 1\n  conditions:\n  - {{type: Ready, status: 'True', reason: Verified, lastTransitionTime: '2026-11-30T10:00:00Z'}}\n"
    );
    env.run_stdin(&["apply", "-f", "-"], Some(with_status.as_bytes()))
        .ok();
    let json = env.run(&["get", "all", "-o", "json"]).ok().stdout;
    env.run_stdin(&["apply", "-f", "-"], Some(json.as_bytes()))
        .ok();
    // A change in between makes the copy stale: a conflict, exit 1, nothing written.
    let changed = support::model_doc("tiny", "/srv/other.gguf");
    let f2 = env.write("t.yaml", &changed);
    env.run(&["apply", "-f", f2.to_str().unwrap()]).ok();
    let stale = one.replace("/srv/tiny.gguf", "/srv/third.gguf");
    let r = env
        .run_stdin(&["apply", "-f", "-"], Some(stale.as_bytes()))
        .fails();
    assert!(r.stderr.contains("conflict on Model/tiny"), "{}", r.stderr);
    let now = env.run(&["get", "model", "tiny", "-o", "json"]).ok().stdout;
    assert!(now.contains("/srv/other.gguf"), "{now}");
}

#[test]
fn a_list_item_error_names_the_item_and_its_line() {
    let env = FreshEnv::new();
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: localaistack.io/v1alpha1\n  kind: Model\n  metadata: {name: a}\n  spec: {source: /a.gguf}\n- apiVersion: localaistack.io/v1alpha1\n  kind: Model\n  metadata:\n    name: b\n  spec:\n    source: /b.gguf\n    sha256: nope\n";
    let r = env
        .run_stdin(&["apply", "-f", "-"], Some(list.as_bytes()))
        .fails();
    assert!(
        r.stderr.contains("<stdin>:14:5: items[1].spec.sha256:"),
        "{}",
        r.stderr
    );
    assert_eq!(env.run(&["get", "all", "-o", "name"]).ok().stdout, "");
}

#[test]
fn a_utf8_byte_order_mark_is_accepted() {
    let env = FreshEnv::new();
    let p = env.work.path().join("bom.yaml");
    let mut bytes = b"\xef\xbb\xbf".to_vec();
    bytes.extend_from_slice(support::model_doc("tiny", "/srv/tiny.gguf").as_bytes());
    std::fs::write(&p, bytes).unwrap();
    let r = env.run(&["apply", "-f", p.to_str().unwrap()]).ok();
    assert!(r.stdout.contains("model/tiny created"), "{}", r.stdout);
}

#[test]
fn an_empty_apply_is_an_error_not_a_silent_success() {
    let env = FreshEnv::new();
    let empty = env.write("empty.yaml", "# nothing here\n");
    let r = env.run(&["apply", "-f", empty.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains("no objects passed to apply"),
        "{}",
        r.stderr
    );
    let r = env.run_stdin(&["apply", "-f", "-"], Some(b"")).fails();
    assert!(
        r.stderr.contains("no objects passed to apply"),
        "{}",
        r.stderr
    );
    let dir = env.work.path().join("emptydir");
    std::fs::create_dir_all(&dir).unwrap();
    env.run(&["apply", "-f", dir.to_str().unwrap()]).fails();
    // Pruning a directory to nothing is the one empty apply that means something.
    env.run(&[
        "apply",
        "-f",
        dir.to_str().unwrap(),
        "--prune",
        "--allow-empty",
    ])
    .ok();
    assert_eq!(env.run(&["history", "-o", "json"]).ok().stdout.trim(), "[]");
}

#[test]
fn prune_from_stdin_is_refused_so_unrelated_stdin_applies_never_prune_each_other() {
    let env = FreshEnv::new();
    let a = support::model_doc("a", "/a.gguf");
    env.run_stdin(&["apply", "-f", "-"], Some(a.as_bytes()))
        .ok();
    let b = support::model_doc("b", "/b.gguf");
    let r = env
        .run_stdin(&["apply", "-f", "-", "--prune"], Some(b.as_bytes()))
        .fails();
    assert!(
        r.stderr.contains("--prune with stdin has no scope"),
        "{}",
        r.stderr
    );
    let names = env.run(&["get", "models", "-o", "name"]).ok().stdout;
    assert_eq!(names, "model/a\n");
    // Named scopes: each prunes only its own.
    let scoped = |scope: &str, doc: &str| {
        env.run_stdin(
            &["apply", "-f", "-", "--prune", "--prune-scope", scope],
            Some(doc.as_bytes()),
        )
        .ok()
    };
    scoped("one", &support::model_doc("c", "/c.gguf"));
    let r = scoped("two", &b);
    assert!(!r.stdout.contains("pruned"), "{}", r.stdout);
    let r = scoped("one", &support::model_doc("d", "/d.gguf"));
    assert!(r.stdout.contains("model/c pruned"), "{}", r.stdout);
    let names = env.run(&["get", "models", "-o", "name"]).ok().stdout;
    assert_eq!(names, "model/a\nmodel/b\nmodel/d\n");
}

#[test]
fn prune_without_recursion_of_a_directory_with_subdirectories_is_refused() {
    let env = FreshEnv::new();
    env.write("stack/top.yaml", &support::model_doc("top", "/t.gguf"));
    env.write(
        "stack/sub/deep.yaml",
        &support::model_doc("deep", "/d.gguf"),
    );
    let dir = env.work.path().join("stack");
    let d = dir.to_str().unwrap();
    env.run(&["apply", "-R", "-f", d]).ok();
    let r = env.run(&["apply", "--prune", "-f", d]).fails();
    assert!(r.stderr.contains("needs -R"), "{}", r.stderr);
    assert!(
        env.run(&["get", "model", "deep"]).code == 0,
        "nothing pruned"
    );
    env.run(&["apply", "--prune", "-R", "-f", d]).ok();
    assert!(env.run(&["get", "model", "deep"]).code == 0);
}

#[test]
fn an_unrelated_yaml_or_json_file_in_a_directory_is_skipped_with_a_notice() {
    let env = FreshEnv::new();
    env.write("stack/model.yaml", &support::model_doc("tiny", "/t.gguf"));
    env.write(
        "stack/docker-compose.yml",
        "services:\n  web:\n    image: nginx\n",
    );
    env.write(
        "stack/package.json",
        "{\"name\": \"x\", \"version\": \"1.0.0\"}\n",
    );
    env.write(
        "stack/deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
    );
    let dir = env.work.path().join("stack");
    let r = env.run(&["apply", "-f", dir.to_str().unwrap()]).ok();
    assert!(r.stdout.contains("model/tiny created"), "{}", r.stdout);
    for f in ["docker-compose.yml", "package.json", "deploy.yaml"] {
        assert!(
            r.stderr
                .contains(&format!("{f}: skipped: not a LocalAIStack manifest")),
            "{f}: {}",
            r.stderr
        );
    }
    // One that claims to be ours and is wrong is still an error; so is a file named explicitly.
    env.write(
        "stack/typo.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: Modle\nmetadata: {name: x}\nspec: {}\n",
    );
    let r = env.run(&["apply", "-f", dir.to_str().unwrap()]).fails();
    assert!(r.stderr.contains("unknown kind \"Modle\""), "{}", r.stderr);
    let compose = dir.join("docker-compose.yml");
    env.run(&["apply", "-f", compose.to_str().unwrap()]).fails();
}

#[test]
fn a_fixed_host_port_another_module_binds_is_refused_at_apply() {
    let env = FreshEnv::new();
    let a = env.write("a.yaml", &web("a", 18081));
    env.run(&["apply", "-f", a.to_str().unwrap()]).ok();
    let b = env.write("b.yaml", &web("b", 18081));
    let r = env.run(&["apply", "-f", b.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains("b.yaml:3:1: spec.container.ports[0].hostPort: host port 18081/tcp is already bound by module/a"),
        "{}",
        r.stderr
    );
    // Changing a's own port is no conflict with itself.
    let a2 = env.write("a2.yaml", &web("a", 18082));
    env.run(&["apply", "-f", a2.to_str().unwrap()]).ok();
    env.run(&["apply", "-f", b.to_str().unwrap()]).ok();
}

#[test]
fn a_from_module_that_resolves_is_not_refused_for_another_ones_failure() {
    let env = FreshEnv::new();
    let f = env.write(
        "s.yaml",
        &(from("vec", "qdrant") + &from("ghost", "no-such-module")),
    );
    let r = run_prof(&env, &["plan", "-f", f.to_str().unwrap(), "-o", "json"]).fails();
    let plan: Value = serde_json::from_str(&r.stdout).unwrap();
    let refusals = plan["refusals"].as_array().unwrap();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0]["object"], "module/ghost");
    assert!(
        refusals[0]["reason"]
            .as_str()
            .unwrap()
            .contains("module/ghost requires module no-such-module"),
        "{refusals:?}"
    );
    assert!(
        plan["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["object"] == "module/vec"),
        "{}",
        r.stdout
    );
}

#[test]
fn get_name_with_a_selector_is_an_error_not_ignored() {
    let env = FreshEnv::new();
    let f = env.write("m.yaml", &support::model_doc("tiny", "/t.gguf"));
    env.run(&["apply", "-f", f.to_str().unwrap()]).ok();
    let r = env.run(&["get", "model", "tiny", "-l", "team=x"]).fails();
    assert!(
        r.stderr.contains("cannot be given together"),
        "{}",
        r.stderr
    );
}

/// A request to the daemon over TCP with the home's token.
fn http(env: &FreshEnv, d: &Daemon, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let token = std::fs::read_to_string(env.home_path().join("run/token")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut req = c
            .request(method.parse().unwrap(), d.url(path))
            .bearer_auth(token.trim());
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

#[test]
fn http_get_then_put_round_trips_and_every_error_has_a_status_body() {
    let env = FreshEnv::new();
    let gguf = env.work.path().join("tiny.gguf");
    env.run(&["model", "generate-test", gguf.to_str().unwrap()])
        .ok();
    let d = Daemon::start(&env, &[], &[]);
    let f = env.write(
        "m.yaml",
        &support::model_doc("tiny", gguf.to_str().unwrap()),
    );
    env.run(&["apply", "-f", f.to_str().unwrap()]).ok();
    wait_ready(&env, &d, "model", "tiny", Duration::from_secs(60));

    // The lower-case condition type matches (it used to wait the full timeout).
    let w = env
        .run(&[
            "wait",
            "model/tiny",
            "--for=condition=ready",
            "--timeout=20s",
        ])
        .ok();
    assert!(w.stdout.contains("condition met"), "{}", w.stdout);

    // GET → PUT: status, uid, timestamps and the current resourceVersion are accepted.
    let (code, got) = http(&env, &d, "GET", "/api/v1/models/tiny", None);
    assert_eq!(code, 200, "{got}");
    let v: Value = serde_json::from_str(&got).unwrap();
    assert!(v.get("status").is_some(), "{got}");
    let (code, put) = http(&env, &d, "PUT", "/api/v1/models/tiny", Some(&got));
    assert_eq!(code, 200, "{put}");
    assert!(put.contains("unchanged"), "{put}");
    // A List is applied whole.
    let (_, list) = http(&env, &d, "GET", "/api/v1/models", None);
    let (code, out) = http(&env, &d, "POST", "/api/v1/apply", Some(&list));
    assert_eq!(code, 200, "{out}");
    // A stale resourceVersion is a conflict.
    let stale = got.replace(
        &format!(
            "\"resourceVersion\":\"{}\"",
            v["metadata"]["resourceVersion"].as_str().unwrap()
        ),
        "\"resourceVersion\":\"1\"",
    );
    let (code, out) = http(&env, &d, "PUT", "/api/v1/models/tiny", Some(&stale));
    assert_eq!(code, 409, "{out}");

    // The built-in policy is an object for the API too.
    let (code, pol) = http(&env, &d, "GET", "/api/v1/policies/default", None);
    assert_eq!(code, 200, "{pol}");
    assert!(
        pol.contains("\"localaistack.io/built-in\":\"true\""),
        "{pol}"
    );
    let (_, pols) = http(&env, &d, "GET", "/api/v1/policies", None);
    assert!(pols.contains("\"name\":\"default\""), "{pols}");

    // Errors nobody's handler wrote get the same Status body.
    for (method, path, want) in [
        ("GET", "/api/v1/models?labelSelector=a", 400u16),
        ("GET", "/api/v1/models/tiny/logs?tail=many", 400),
        ("PATCH", "/api/v1/models/tiny", 405),
        ("POST", "/api/v1/runtime", 405),
        ("GET", "/api/v1/no/such/route/here", 404),
    ] {
        let body = (method != "GET").then_some("{}");
        let (code, body) = http(&env, &d, method, path, body);
        assert_eq!(code, want, "{method} {path}: {body}");
        let s: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {body:?}"));
        assert_eq!(s["kind"], "Status", "{body}");
        assert_eq!(s["code"], want, "{body}");
        assert!(!s["message"].as_str().unwrap().is_empty(), "{body}");
    }
}

#[test]
fn a_watched_directory_with_an_unrelated_file_is_still_applied() {
    let env = FreshEnv::new();
    env.write(
        "watched/model.yaml",
        &support::model_doc("tiny", "/srv/tiny.gguf"),
    );
    env.write(
        "watched/docker-compose.yml",
        "services:\n  web:\n    image: nginx\n",
    );
    let dir = env.work.path().join("watched");
    let _d = Daemon::start(&env, &[&dir], &[]);
    support::daemon::wait_until(
        "the watched directory is applied",
        Duration::from_secs(30),
        || env.run(&["get", "model", "tiny"]).code == 0,
    );
    let sources = env.run(&["get", "sources", "-o", "json"]).ok().stdout;
    assert!(
        !sources.contains("docker-compose"),
        "no error recorded: {sources}"
    );
}
