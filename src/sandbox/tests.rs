//! The engine against small modules written for one point each. The example plugins and the
//! hostile modules of `plugins/` are exercised in `tests/sandbox.rs`.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;

use super::*;

fn engine() -> WasmiEngine {
    WasmiEngine::new()
}

fn compile(wat: &str, grants: &Grants) -> Result<Arc<dyn Module>, SandboxError> {
    let wasm = wat::parse_str(wat).expect("test WAT parses");
    engine().compile(&wasm, grants)
}

fn compile_ok(wat: &str) -> Arc<dyn Module> {
    compile(wat, &Grants::none()).expect("test module compiles")
}

/// Runs `f` on another thread and fails the test if it has not returned after `limit`: a hang
/// guard, so a broken limit fails instead of blocking the suite.
fn ends_within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("the call did not end within {limit:?}"))
}

/// `echo` returns its input; `work` loops 100 000 times per byte of input, then returns `{}`;
/// the others return what their names say.
const BASIC: &str = r#"
(module
  (memory (export "memory") 1)
  (data (i32.const 0) "{}")
  (global $heap (mut i32) (i32.const 1024))
  (func (export "las_alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $len)))
    (local.get $p))
  (func (export "echo") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))
  (func (export "work") (param $ptr i32) (param $len i32) (result i64)
    (local $n i32)
    (local.set $n (i32.mul (local.get $len) (i32.const 100000)))
    (loop $more
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $more (i32.gt_s (local.get $n) (i32.const 0))))
    (i64.const 2))
  (func (export "not_json") (param i32 i32) (result i64) (i64.const 1))
  (func (export "out_of_range") (param i32 i32) (result i64) (i64.const 0xffff000000000010))
  (func (export "wrong_type") (param i32) (result i32) (i32.const 0))
  (global (export "a_global") i32 (i32.const 0)))
"#;

#[test]
fn capability_names_round_trip_through_serde_parse_and_display() {
    for c in Capability::ALL {
        assert_eq!(c.to_string().parse::<Capability>().unwrap(), c);
        let v = serde_json::to_value(c).unwrap();
        assert_eq!(v, json!(c.as_str()));
        assert_eq!(serde_json::from_value::<Capability>(v).unwrap(), c);
    }
    let g: Grants = serde_json::from_value(json!(["random", "log"])).unwrap();
    assert_eq!(g.to_string(), "log,random");
    assert_eq!(serde_json::to_value(&g).unwrap(), json!(["log", "random"]));
    assert_eq!(Grants::none().to_string(), "none");
    let requested = Grants::from_iter([Capability::Log, Capability::Clock]);
    assert_eq!(
        g.intersection(&requested),
        Grants::from_iter([Capability::Log])
    );
    assert_eq!(
        requested.difference(&g),
        Grants::from_iter([Capability::Clock])
    );
    assert!(g.difference(&g).is_empty());
}

#[test]
fn unknown_capability_is_refused_naming_the_known_ones() {
    let e = "network".parse::<Capability>().unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown capability \"network\": expected one of log, clock, random, content"
    );
    assert!(serde_json::from_value::<Capability>(json!("filesystem")).is_err());
}

#[test]
fn limits_serialize_with_the_timeout_in_milliseconds() {
    let l = Limits::default();
    let v = serde_json::to_value(&l).unwrap();
    assert_eq!(v["timeout"], json!(1000));
    assert_eq!(serde_json::from_value::<Limits>(v).unwrap(), l);
}

#[test]
fn echo_returns_the_input_and_reports_fuel() {
    let m = compile_ok(BASIC);
    let input = json!({"messages": [{"content": "héllo \"quoted\"\n"}], "n": 1.5});
    let out = m.call("echo", &input, &Limits::default()).unwrap();
    assert_eq!(out.output, input);
    assert!(out.fuel_used > 0, "fuel used is reported: {out:?}");
    assert!(out.logs.is_empty());
    assert_eq!(
        m.exports(),
        vec!["echo", "not_json", "out_of_range", "work"],
        "entries are the (i32, i32) -> i64 exports, without las_alloc"
    );
}

#[test]
fn fuel_is_counted_exactly_across_slices() {
    let m = compile_ok(BASIC);
    // 40 bytes of input: 4 million iterations, several fuel slices.
    let input = json!("0123456789012345678901234567890123456");
    let big = Limits {
        fuel: u64::MAX,
        timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let used = m.call("work", &input, &big).unwrap().fuel_used;
    assert!(
        used > 3 * wasmi_engine::FUEL_SLICE,
        "the loop spans several slices: {used}"
    );
    let exact = Limits {
        fuel: used,
        ..big.clone()
    };
    assert_eq!(m.call("work", &input, &exact).unwrap().fuel_used, used);
    let short = Limits {
        fuel: used - 1,
        ..big
    };
    assert_eq!(
        m.call("work", &input, &short).unwrap_err(),
        SandboxError::OutOfFuel { fuel: used - 1 }
    );
}

#[test]
fn zero_fuel_runs_nothing() {
    let m = compile_ok(BASIC);
    let l = Limits {
        fuel: 0,
        ..Limits::default()
    };
    assert_eq!(
        m.call("echo", &json!({}), &l).unwrap_err(),
        SandboxError::OutOfFuel { fuel: 0 }
    );
}

#[test]
fn the_timeout_holds_when_fuel_is_unlimited() {
    let m = compile_ok(BASIC);
    let limits = Limits {
        fuel: u64::MAX,
        timeout: Duration::from_millis(50),
        ..Limits::default()
    };
    // 20 KB of input: 2 billion iterations, seconds of work.
    let input = json!("x".repeat(20_000));
    let err = ends_within(Duration::from_secs(20), move || {
        m.call("work", &input, &limits).unwrap_err()
    });
    match err {
        SandboxError::Timeout { timeout, fuel_used } => {
            assert_eq!(timeout, Duration::from_millis(50));
            assert!(fuel_used > 0);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
}

#[test]
fn input_over_the_limit_is_refused_before_running() {
    let m = compile_ok(BASIC);
    let l = Limits {
        max_input_bytes: 10,
        ..Limits::default()
    };
    let err = m.call("echo", &json!("0123456789"), &l).unwrap_err();
    assert_eq!(
        err,
        SandboxError::InputTooLarge {
            size: 12,
            limit: 10
        }
    );
}

#[test]
fn output_over_the_limit_is_refused() {
    let m = compile_ok(BASIC);
    let l = Limits {
        max_output_bytes: 5,
        ..Limits::default()
    };
    let err = m.call("echo", &json!("0123456789"), &l).unwrap_err();
    assert_eq!(err, SandboxError::OutputTooLarge { size: 12, limit: 5 });
}

#[test]
fn output_that_is_not_json_or_outside_memory_is_bad_output() {
    let m = compile_ok(BASIC);
    let err = m
        .call("not_json", &json!({}), &Limits::default())
        .unwrap_err();
    assert!(
        matches!(&err, SandboxError::BadOutput(m) if m.starts_with("not JSON")),
        "{err:?}"
    );
    let l = Limits {
        max_output_bytes: 1 << 30,
        ..Limits::default()
    };
    let err = m.call("out_of_range", &json!({}), &l).unwrap_err();
    assert!(
        matches!(&err, SandboxError::BadOutput(m) if m.contains("outside the guest's memory")),
        "{err:?}"
    );
}

#[test]
fn entries_are_checked_by_name_and_signature() {
    let m = compile_ok(BASIC);
    assert_eq!(
        m.call("missing", &json!({}), &Limits::default())
            .unwrap_err(),
        SandboxError::MissingExport("missing".into())
    );
    for name in ["wrong_type", "a_global", "las_alloc"] {
        let err = m.call(name, &json!({}), &Limits::default()).unwrap_err();
        assert!(
            matches!(&err, SandboxError::BadExport { name: n, .. } if n == name),
            "{err:?}"
        );
    }
}

#[test]
fn the_abi_exports_are_required() {
    let no_memory =
        r#"(module (func (export "las_alloc") (param i32) (result i32) (i32.const 0)))"#;
    assert_eq!(
        compile(no_memory, &Grants::none()).err(),
        Some(SandboxError::MissingExport("memory".into()))
    );
    let no_alloc = r#"(module (memory (export "memory") 1))"#;
    assert_eq!(
        compile(no_alloc, &Grants::none()).err(),
        Some(SandboxError::MissingExport("las_alloc".into()))
    );
    let bad_alloc = r#"(module (memory (export "memory") 1)
        (func (export "las_alloc") (param i64) (result i32) (i32.const 0)))"#;
    assert!(matches!(
        compile(bad_alloc, &Grants::none()).err(),
        Some(SandboxError::BadExport { name, .. }) if name == "las_alloc"
    ));
}

#[test]
fn an_allocation_outside_memory_is_bad_output() {
    let m = compile_ok(
        r#"(module (memory (export "memory") 1)
        (func (export "las_alloc") (param i32) (result i32) (i32.const 65530))
        (func (export "run") (param i32 i32) (result i64) (i64.const 0)))"#,
    );
    let err = m
        .call("run", &json!("0123456789"), &Limits::default())
        .unwrap_err();
    assert!(
        matches!(&err, SandboxError::BadOutput(m) if m.contains("las_alloc(12) returned 65530")),
        "{err:?}"
    );
}

#[test]
fn only_binary_modules_are_accepted() {
    let err = engine()
        .compile(b"(module)", &Grants::none())
        .err()
        .unwrap();
    assert!(
        matches!(&err, SandboxError::InvalidModule(m) if m.contains("\\0asm")),
        "{err:?}"
    );
    let err = engine()
        .compile(b"\0asm\x01\0\0\0garbage", &Grants::none())
        .err()
        .unwrap();
    assert!(matches!(err, SandboxError::InvalidModule(_)), "{err:?}");
}

const IMPORTS_LOG_AND_CLOCK: &str = r#"
(module
  (import "las" "log" (func $log (param i32 i32)))
  (import "las" "clock_ms" (func $clock (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{}")
  (func (export "las_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "run") (param i32 i32) (result i64) (i64.const 2)))
"#;

#[test]
fn only_granted_host_functions_are_linked() {
    let err = compile(IMPORTS_LOG_AND_CLOCK, &Grants::none())
        .err()
        .unwrap();
    assert_eq!(
        err,
        SandboxError::UngrantedImport {
            module: "las".into(),
            name: "log".into(),
            capability: Capability::Log,
        }
    );
    let err = compile(IMPORTS_LOG_AND_CLOCK, &Grants::from_iter([Capability::Log]))
        .err()
        .unwrap();
    assert_eq!(
        err,
        SandboxError::UngrantedImport {
            module: "las".into(),
            name: "clock_ms".into(),
            capability: Capability::Clock,
        }
    );
    assert!(
        err.to_string().contains("needs the \"clock\" capability"),
        "{err}"
    );
    let grants = Grants::from_iter([Capability::Log, Capability::Clock]);
    let m = compile(IMPORTS_LOG_AND_CLOCK, &grants).unwrap();
    assert_eq!(
        m.call("run", &json!({}), &Limits::default())
            .unwrap()
            .output,
        json!({})
    );
}

#[test]
fn unknown_imports_and_wrong_signatures_are_refused() {
    let las_open = r#"(module (import "las" "open_file" (func (param i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "las_alloc") (param i32) (result i32) (i32.const 0)))"#;
    assert_eq!(
        compile(las_open, &Grants::from_iter(Capability::ALL)).err(),
        Some(SandboxError::UnknownImport {
            module: "las".into(),
            name: "open_file".into(),
            kind: "function".into(),
        })
    );
    let memory_import = r#"(module (import "env" "memory" (memory 1))
        (func (export "las_alloc") (param i32) (result i32) (i32.const 0)))"#;
    assert_eq!(
        compile(memory_import, &Grants::none()).err(),
        Some(SandboxError::UnknownImport {
            module: "env".into(),
            name: "memory".into(),
            kind: "memory".into(),
        })
    );
    let wrong_sig = r#"(module (import "las" "clock_ms" (func (result i32)))
        (memory (export "memory") 1)
        (func (export "las_alloc") (param i32) (result i32) (i32.const 0)))"#;
    let err = compile(wrong_sig, &Grants::from_iter([Capability::Clock]))
        .err()
        .unwrap();
    assert!(
        matches!(&err, SandboxError::InvalidModule(m) if m.contains("las.clock_ms must have the signature (result i64)")),
        "{err:?}"
    );
}

#[test]
fn memory_up_to_the_limit_is_allowed_and_past_it_refused() {
    let m = compile_ok(
        r#"(module (memory (export "memory") 1)
        (data (i32.const 0) "{}")
        (func (export "las_alloc") (param i32) (result i32) (i32.const 16))
        (func (export "grow") (param i32 i32) (result i64)
          (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then (unreachable)))
          (i64.const 2)))"#,
    );
    let two_pages = Limits {
        memory_bytes: 2 * 65536,
        ..Limits::default()
    };
    assert_eq!(
        m.call("grow", &json!(1), &two_pages).unwrap().output,
        json!({})
    );
    let one_page = Limits {
        memory_bytes: 65536,
        ..Limits::default()
    };
    assert_eq!(
        m.call("grow", &json!(1), &one_page).unwrap_err(),
        SandboxError::MemoryLimit {
            limit_bytes: 65536,
            requested_bytes: 2 * 65536
        }
    );
}

#[test]
fn logs_are_kept_in_order_and_capped() {
    let m = compile(
        r#"(module (import "las" "log" (func $log (param i32 i32)))
        (memory (export "memory") 1)
        (data (i32.const 0) "{}line")
        (func (export "las_alloc") (param i32) (result i32) (i32.const 1024))
        (func (export "chatty") (param i32 i32) (result i64)
          (local $n i32)
          (local.set $n (i32.const 5000))
          (loop $more
            (call $log (i32.const 2) (i32.const 4))
            (local.set $n (i32.sub (local.get $n) (i32.const 1)))
            (br_if $more (local.get $n)))
          (i64.const 2)))"#,
        &Grants::from_iter([Capability::Log]),
    )
    .unwrap();
    let out = m.call("chatty", &json!({}), &Limits::default()).unwrap();
    assert_eq!(out.logs.len(), 1001);
    assert!(out.logs[..1000].iter().all(|l| l == "line"));
    assert_eq!(
        out.logs[1000],
        "[4000 more log lines dropped: over 1000 lines or 1048576 bytes]"
    );
    let small = Limits {
        max_output_bytes: 10,
        ..Limits::default()
    };
    let out = m.call("chatty", &json!({}), &small).unwrap();
    assert_eq!(
        out.logs.len(),
        3,
        "two lines of 4 bytes fit in 10: {:?}",
        out.logs
    );
}

#[test]
fn one_module_serves_concurrent_calls() {
    let m = compile_ok(BASIC);
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let m = Arc::clone(&m);
            std::thread::spawn(move || {
                for j in 0..50 {
                    let input = json!({"thread": i, "call": j});
                    assert_eq!(
                        m.call("echo", &input, &Limits::default()).unwrap().output,
                        input
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn error_reasons_are_stable_names() {
    let e = SandboxError::OutOfFuel { fuel: 1 };
    assert_eq!(e.reason(), "OutOfFuel");
    assert!(!e.is_compile_error());
    assert!(SandboxError::MissingExport("memory".into()).is_compile_error());
    assert_eq!(
        e.to_string(),
        "the call ran out of fuel after 1 units: raise the fuel limit or make the plugin do less work"
    );
}
