//! A `dependsOn` cycle is refused by `plan`, `apply --dry-run` and `apply`, naming every member,
//! also when it closes across two applies (issue 11, defect 2). The daemon's second line of
//! defence (a cycle written through the HTTP API is Stalled with `DependencyCycle`) is in
//! tests/quiet.rs.

mod support;

use support::FreshEnv;

fn module(name: &str, deps: &[&str]) -> String {
    let deps = if deps.is_empty() {
        String::new()
    } else {
        format!(
            "  dependsOn:\n{}",
            deps.iter()
                .map(|d| format!("  - {{kind: Module, name: {d}}}\n"))
                .collect::<String>()
        )
    };
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata:\n  name: {name}\nspec:\n  native:\n    command: [/bin/sleep, '3600']\n{deps}"
    )
}

fn stored_modules(env: &FreshEnv) -> String {
    env.run(&["get", "modules", "-o", "name"]).stdout
}

#[track_caller]
fn assert_names_cycle(text: &str, cycle: &str, members: &[&str]) {
    assert!(
        text.contains(cycle),
        "the cycle {cycle} is not named:\n{text}"
    );
    for m in members {
        assert!(text.contains(m), "member {m} is not named:\n{text}");
    }
}

#[test]
fn depends_on_cycle_is_refused_by_plan_and_apply_regression() {
    let env = FreshEnv::new();
    let f = env.write(
        "stack.yaml",
        &format!(
            "{}---\n{}---\n{}",
            module("ping", &["pong"]),
            module("pong", &["ping"]),
            module("free", &[])
        ),
    );
    let f = f.to_str().unwrap();
    let plan = env.run(&["plan", "-f", f]).fails();
    assert_names_cycle(
        &plan.stdout,
        "ping → pong → ping",
        &["module/ping", "module/pong"],
    );
    assert!(!plan.stdout.contains("start ping"), "{}", plan.stdout);

    let dry = env.run(&["apply", "-f", f, "--dry-run"]).fails();
    assert_names_cycle(&dry.stderr, "ping → pong → ping", &["ping", "pong"]);
    // At the dependsOn of each member (lines 8 and 18 of the file).
    assert!(
        dry.stderr
            .contains("stack.yaml:8:3: spec.dependsOn: Module ping:"),
        "{}",
        dry.stderr
    );
    assert!(
        dry.stderr
            .contains("stack.yaml:18:3: spec.dependsOn: Module pong:"),
        "{}",
        dry.stderr
    );

    let apply = env.run(&["apply", "-f", f]).fails();
    assert_names_cycle(&apply.stderr, "ping → pong → ping", &["ping", "pong"]);
    assert_eq!(stored_modules(&env).trim(), "", "nothing is recorded");
    assert!(env.run(&["history"]).stdout.lines().count() <= 1);
}

#[test]
fn depends_on_cycle_closed_across_two_applies_is_refused_regression() {
    let env = FreshEnv::new();
    let a = env.write(
        "a.yaml",
        &format!("{}---\n{}", module("a", &["b"]), module("b", &["c"])),
    );
    env.run(&["apply", "-f", a.to_str().unwrap()]).ok();
    // c closes a → b → c → a with the two stored Modules.
    let c = env.write("c.yaml", &module("c", &["a"]));
    let c = c.to_str().unwrap();
    let plan = env.run(&["plan", "-f", c]).fails();
    assert_names_cycle(&plan.stdout, "a → b → c → a", &["module/c"]);
    let dry = env.run(&["apply", "-f", c, "--dry-run"]).fails();
    assert_names_cycle(&dry.stderr, "a → b → c → a", &["a, b, c"]);
    let apply = env.run(&["apply", "-f", c]).fails();
    assert_names_cycle(&apply.stderr, "a → b → c → a", &["a, b, c"]);
    assert!(
        apply
            .stderr
            .contains("c.yaml:8:3: spec.dependsOn: Module c:"),
        "{}",
        apply.stderr
    );
    let stored = stored_modules(&env);
    assert!(
        !stored.contains("module/c"),
        "nothing is recorded: {stored}"
    );
    // Without the closing edge it is accepted.
    let c2 = env.write("c.yaml", &module("c", &[]));
    env.run(&["apply", "-f", c2.to_str().unwrap()]).ok();
}
