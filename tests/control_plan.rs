//! Hardware profiles, tiers, admission and plans end to end: the real `lasctl hardware` and
//! `lasctl plan`, with `LAS_HARDWARE_PROFILE` pointing at the profiles in tests/cases/profiles.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{FreshEnv, Run};

fn profile(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cases/profiles")
        .join(format!("{name}.yaml"))
}

fn run_with(env: &FreshEnv, prof: Option<&Path>, extra: &[(&str, &str)], args: &[&str]) -> Run {
    let mut c = env.cmd();
    match prof {
        Some(p) => c.env("LAS_HARDWARE_PROFILE", p),
        None => c.env_remove("LAS_HARDWARE_PROFILE"),
    };
    c.env_remove("LAS_CATALOG");
    for (k, v) in extra {
        c.env(k, v);
    }
    c.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    support::ChildGuard::spawn(c).wait_output(std::time::Duration::from_secs(120))
}

/// A sparse file of `bytes` (no disk used) standing for a model's weights.
fn sparse(env: &FreshEnv, name: &str, bytes: u64) -> PathBuf {
    let p = env.work.path().join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(bytes).unwrap();
    p
}

const GIB: u64 = 1 << 30;

fn model(name: &str, path: &Path) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata: {{name: {name}}}\nspec: {{source: {}}}\n---\n",
        path.display()
    )
}

fn engine(name: &str, model: &str, extra: &str) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {{name: {name}}}\nspec:\n  model: {model}\n  engine: {{type: llama{extra}}}\n---\n"
    )
}

fn from(name: &str, module: &str, version: &str, model: Option<&str>) -> String {
    let m = model.map(|m| format!("\n  model: {m}")).unwrap_or_default();
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {{name: {name}}}\nspec:\n  from: {module}\n  version: \"{version}\"{m}\n---\n"
    )
}

fn plan_json(env: &FreshEnv, prof: &str, dir: &Path) -> (Run, Value) {
    let r = run_with(
        env,
        Some(&profile(prof)),
        &[],
        &["plan", "-f", dir.to_str().unwrap(), "-o", "json"],
    );
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| {
        panic!(
            "plan -o json is not JSON ({e}):\n{}\n{}",
            r.stdout, r.stderr
        )
    });
    (r, v)
}

fn refusal(plan: &Value, object: &str) -> Option<String> {
    plan["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["object"] == object)
        .map(|r| r["reason"].as_str().unwrap().to_string())
}

fn actions(plan: &Value) -> Vec<(u64, String, String, Vec<u64>)> {
    plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["id"].as_u64().unwrap(),
                a["action"].as_str().unwrap().to_string(),
                a["object"].as_str().unwrap().to_string(),
                a["dependsOn"]
                    .as_array()
                    .map(|d| d.iter().map(|x| x.as_u64().unwrap()).collect())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn each_profile_falls_in_its_tier_with_the_reason() {
    let env = FreshEnv::new();
    for (prof, tier, why) in [
        (
            "laptop-8g",
            "cpu-only",
            "policy default tier cpu-only: it has no condition; not chosen earlier: default/multi-gpu (gpus.count >= 2 does not hold (gpus.count is 0)); default/single-gpu (gpus.max.memoryTotalBytes is not in the profile); default/cpu-small (memory.usableBytes < 8.0 GiB does not hold (memory.usableBytes is 8.0 GiB))",
        ),
        (
            "workstation-24g",
            "single-gpu",
            "policy default tier single-gpu: gpus.max.memoryTotalBytes >= 4.0 GiB holds (gpus.max.memoryTotalBytes is 24.0 GiB); not chosen earlier: default/multi-gpu (gpus.count >= 2 does not hold (gpus.count is 1))",
        ),
        (
            "dual-80g",
            "multi-gpu",
            "policy default tier multi-gpu: gpus.count >= 2 holds (gpus.count is 2) and gpus.min.memoryTotalBytes >= 4.0 GiB holds (gpus.min.memoryTotalBytes is 79.6 GiB)",
        ),
    ] {
        let r = run_with(&env, Some(&profile(prof)), &[], &["hardware", "-o", "json"]).ok();
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v["tier"]["name"], tier, "{prof}");
        assert_eq!(v["tier"]["reason"], why, "{prof}");
        assert_eq!(v["source"]["type"], "file");
        let text = run_with(&env, Some(&profile(prof)), &[], &["hardware"])
            .ok()
            .stdout;
        assert!(
            text.contains(&format!("Tier:     {tier} (policy default)")),
            "{text}"
        );
    }
}

#[test]
fn a_bad_profile_file_is_an_error_with_its_position() {
    let env = FreshEnv::new();
    let p = env.write(
        "bad.yaml",
        &std::fs::read_to_string(profile("laptop-8g"))
            .unwrap()
            .replace("physicalCores: 4", "physicalCores: four"),
    );
    let r = run_with(&env, Some(&p), &[], &["hardware"]).fails();
    assert!(r.stderr.contains("bad.yaml:5:"), "{}", r.stderr);
    assert!(r.stderr.contains("cpu.physicalCores"), "{}", r.stderr);
}

#[test]
fn live_profile_round_trips_through_a_profile_file() {
    let env = FreshEnv::new();
    let live = run_with(&env, None, &[], &["hardware", "-o", "yaml"])
        .ok()
        .stdout;
    let file = env.write("captured.yaml", &live);
    let again = run_with(&env, Some(&file), &[], &["hardware", "-o", "yaml"])
        .ok()
        .stdout;
    let mut a: Value = serde_yaml::from_str(&live).unwrap();
    let mut b: Value = serde_yaml::from_str(&again).unwrap();
    assert_eq!(a["source"]["type"], "live");
    assert_eq!(b["source"]["type"], "file");
    assert_eq!(b["source"]["path"], file.display().to_string());
    a.as_object_mut().unwrap().remove("source");
    b.as_object_mut().unwrap().remove("source");
    assert_eq!(a, b, "a captured profile reads back as the same profile");
}

#[test]
fn live_detection_matches_the_machine() {
    let env = FreshEnv::new();
    let r = run_with(&env, None, &[], &["hardware", "-o", "json"]).ok();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let nproc: f64 =
        String::from_utf8(std::process::Command::new("nproc").output().unwrap().stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    let usable = v["cpu"]["usableCores"].as_f64().unwrap();
    let logical = v["cpu"]["logicalCores"].as_f64().unwrap();
    assert!(logical >= nproc, "logical {logical} < nproc {nproc}");
    match v["cpu"]["cgroupQuotaCores"].as_f64() {
        Some(q) => assert_eq!(usable, q.min(nproc)),
        None => assert_eq!(
            usable, nproc,
            "usable cores without a quota are what nproc reports"
        ),
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb = |key: &str| -> u64 {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        v["memory"]["totalBytes"].as_u64().unwrap(),
        kb("MemTotal:") * 1024
    );
    let avail = v["memory"]["availableBytes"].as_u64().unwrap() as f64;
    let avail_now = (kb("MemAvailable:") * 1024) as f64;
    assert!(
        (avail - avail_now).abs() / avail_now < 0.25,
        "available {avail} vs /proc/meminfo {avail_now}"
    );
    let usable_mem = v["memory"]["usableBytes"].as_u64().unwrap();
    match v["memory"]["cgroupLimitBytes"].as_u64() {
        Some(l) => assert_eq!(usable_mem, l.min(kb("MemTotal:") * 1024)),
        None => assert_eq!(usable_mem, kb("MemTotal:") * 1024),
    }
    assert!(
        v["disks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["totalBytes"].as_u64().unwrap() > 0)
    );
    assert!(!v["os"]["kernel"].as_str().unwrap().is_empty());
}

/// This machine has no NVIDIA driver: the real NVML load fails, and the profile says so.
#[test]
fn no_nvml_means_no_nvidia_gpus_and_a_note() {
    let has_driver = [
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "/usr/lib64/libnvidia-ml.so.1",
        "/usr/lib/libnvidia-ml.so.1",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    assert!(
        !has_driver,
        "this test checks the absence path; this machine has an NVIDIA driver"
    );
    let env = FreshEnv::new();
    let r = run_with(&env, None, &[], &["hardware", "-o", "json"]).ok();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        v["gpus"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["vendor"] != "nvidia")
    );
    let notes = v["notes"].to_string();
    assert!(notes.contains("NVML unavailable"), "{notes}");
}

#[test]
fn a_hardware_change_is_an_event() {
    let env = FreshEnv::new();
    let p = env.write(
        "box.yaml",
        &std::fs::read_to_string(profile("workstation-24g")).unwrap(),
    );
    run_with(&env, Some(&p), &[], &["hardware"]).ok();
    // The GPU is gone and memory was added.
    let text = std::fs::read_to_string(&p).unwrap();
    let cut = text.find("gpus:").unwrap();
    let changed = text[..cut]
        .replace("totalBytes: 68719476736", "totalBytes: 137438953472")
        .replace("usableBytes: 68719476736", "usableBytes: 137438953472")
        + "gpus: []\n";
    std::fs::write(&p, changed).unwrap();
    run_with(&env, Some(&p), &[], &["hardware"]).ok();
    let ev = env.run(&["events"]).ok().stdout;
    assert!(ev.contains("HardwareChanged"), "{ev}");
    assert!(
        ev.contains("memory changed from 64.0 GiB to 128.0 GiB"),
        "{ev}"
    );
    assert!(
        ev.contains(
            "GPU 0 (NVIDIA GeForce RTX 4090, GPU-3f2a1c1e-0000-4000-8000-000000000001) is gone"
        ),
        "{ev}"
    );
}

#[test]
fn laptop_admits_small_models_and_refuses_with_reasons() {
    let env = FreshEnv::new();
    let small = sparse(&env, "small.gguf", GIB);
    let mid = sparse(&env, "mid.gguf", 6 * GIB);
    let big = sparse(&env, "big.gguf", 9 * GIB);
    let doc = model("small", &small)
        + &model("mid", &mid)
        + &model("big", &big)
        + &engine("chat", "small", "")
        + &engine("mid-chat", "mid", "")
        + &engine("big-chat", "big", "")
        + &from("embed", "text-embeddings-inference", "^1", None);
    let dir = env.work.path().join("stack");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("stack.yaml"), doc).unwrap();
    let (r, plan) = plan_json(&env, "laptop-8g", &dir);
    assert_eq!(r.code, 1, "refusals exit 1: {}", r.stderr);
    assert_eq!(plan["tier"]["tier"], "cpu-only");
    assert_eq!(
        refusal(&plan, "model/big").unwrap(),
        "model big is 9.0 GiB; tier cpu-only allows models up to 8.0 GiB"
    );
    assert_eq!(
        refusal(&plan, "module/big-chat").unwrap(),
        "it serves model/big, which is refused"
    );
    assert_eq!(
        refusal(&plan, "module/mid-chat").unwrap(),
        "model mid needs 6.8 GiB of RAM at contextSize 4096; 2.7 GiB of RAM free after headroom (tier cpu-only)"
    );
    assert_eq!(
        refusal(&plan, "module/embed").unwrap(),
        "module/embed requires a GPU; this machine has none (tier cpu-only)"
    );
    assert!(refusal(&plan, "module/chat").is_none());
    assert_eq!(
        plan["placements"]["module/chat"],
        "model small on the CPU: 1.8 GiB of RAM at contextSize 4096 (layer count unknown: 32 assumed)"
    );
    let acts = actions(&plan);
    let dl = acts
        .iter()
        .find(|a| a.1 == "downloadModel" && a.2 == "model/small")
        .unwrap();
    let start = acts
        .iter()
        .find(|a| a.1 == "startProcess" && a.2 == "module/chat")
        .unwrap();
    assert_eq!(start.3, vec![dl.0], "the engine waits for its model");
    assert!(
        !acts
            .iter()
            .any(|a| a.2 == "model/big" || a.2 == "module/mid-chat"),
        "refused objects get no actions"
    );
    let ram = &plan["devices"][0];
    assert_eq!(ram["device"], "ram");
    assert_eq!(
        ram["plannedBytes"].as_u64().unwrap(),
        GIB + 4096 * (128 << 10) + (256 << 20)
    );
}

#[test]
fn workstation_offloads_partially_when_vram_is_short() {
    let env = FreshEnv::new();
    let fits = sparse(&env, "fits.gguf", 18 * GIB);
    let dir = env.work.path().join("a");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("s.yaml"),
        model("fits", &fits) + &engine("chat", "fits", ", contextSize: 8192"),
    )
    .unwrap();
    let (r, plan) = plan_json(&env, "workstation-24g", &dir);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(plan["tier"]["tier"], "single-gpu");
    assert_eq!(
        plan["placements"]["module/chat"],
        "model fits fully on GPU 0: 19.2 GiB of VRAM at contextSize 8192 (layer count unknown: 32 assumed)"
    );

    let env = FreshEnv::new();
    let big = sparse(&env, "qwen.gguf", 30 * GIB);
    let dir = env.work.path().join("b");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("s.yaml"),
        model("qwen-32b", &big) + &engine("chat", "qwen-32b", ", contextSize: 8192"),
    )
    .unwrap();
    let (r, plan) = plan_json(&env, "workstation-24g", &dir);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        plan["placements"]["module/chat"],
        "model qwen-32b needs 31.2 GiB of VRAM at contextSize 8192; GPU 0 has 21.0 GiB free after headroom; tier single-gpu allows CPU fallback: placing 21 of 32 layers on GPU 0 (layer count unknown: 32 assumed)"
    );
    let gpu = &plan["devices"][1];
    assert_eq!(gpu["device"], "gpu0");
    assert!(
        gpu["plannedBytes"].as_u64().unwrap()
            <= gpu["capacityBytes"].as_u64().unwrap() - gpu["headroomBytes"].as_u64().unwrap()
    );
    // A tier without CPU fallback refuses the same model.
    let strict = "apiVersion: localaistack.io/v1alpha1\nkind: Policy\nmetadata: {name: strict}\nspec:\n  priority: 10\n  tiers:\n  - name: gpu-only\n    when: {fact: gpus.count, op: \">=\", value: 1}\n    capabilities: {allowCpuFallback: false, vramHeadroomPercent: 10}\n";
    std::fs::write(dir.join("policy.yaml"), strict).unwrap();
    let (r, plan) = plan_json(&env, "workstation-24g", &dir);
    assert_eq!(r.code, 1);
    assert_eq!(plan["tier"]["tier"], "gpu-only");
    assert_eq!(
        refusal(&plan, "module/chat").unwrap(),
        "model qwen-32b needs 31.2 GiB of VRAM at contextSize 8192; GPU 0 has 21.0 GiB free after headroom; tier gpu-only does not allow CPU fallback"
    );
}

#[test]
fn dual_gpu_box_splits_a_large_model_and_runs_the_catalog() {
    let env = FreshEnv::new();
    let big = sparse(&env, "llama-70b.gguf", 120 * GIB);
    let dir = env.work.path().join("stack");
    std::fs::create_dir_all(&dir).unwrap();
    let doc = model("llama-70b", &big)
        + &engine("chat", "llama-70b", "")
        + &from("embed", "text-embeddings-inference", "^1.8", None)
        + &from("webui", "open-webui", ">=0.11", None);
    std::fs::write(dir.join("s.yaml"), doc).unwrap();
    let (r, plan) = plan_json(&env, "dual-80g", &dir);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(plan["tier"]["tier"], "multi-gpu");
    assert_eq!(
        plan["placements"]["module/chat"],
        "model llama-70b split across GPUs at contextSize 4096: 18 on GPU 0, 14 on GPU 1 of 32 layers (layer count unknown: 32 assumed)"
    );
    // open-webui needs ollama: an implied instance, started first.
    let acts = actions(&plan);
    let ollama = acts
        .iter()
        .find(|a| a.1 == "createContainer" && a.2 == "module/ollama")
        .unwrap();
    let webui = acts
        .iter()
        .find(|a| a.1 == "createContainer" && a.2 == "module/webui")
        .unwrap();
    assert!(webui.3.contains(&ollama.0), "{acts:?}");
    assert!(ollama.0 < webui.0);
    let resolved = plan["resolved"].to_string();
    assert!(
        resolved.contains("\"module\":\"ollama\",\"version\":\"0.6.5\""),
        "{resolved}"
    );
    // The plan writes no lock; `lasctl lock` does, pinning exact versions and digests.
    assert!(!dir.join("las.lock").exists(), "a plan writes nothing");
    run_with(
        &env,
        Some(&profile("dual-80g")),
        &[],
        &["lock", "-f", dir.to_str().unwrap()],
    )
    .ok();
    let lock = std::fs::read_to_string(dir.join("las.lock")).unwrap();
    assert!(lock.contains("name: open-webui\n  version: 0.11.3\n  artifact: ghcr.io/open-webui/open-webui@sha256:9cd136ef"), "{lock}");
    assert!(lock.contains("dependencies:\n  - ollama"), "{lock}");
}

#[test]
fn plans_are_byte_identical_and_apply_dry_run_prints_one() {
    let env = FreshEnv::new();
    let m = sparse(&env, "m.gguf", 3 * GIB);
    let dir = env.work.path().join("stack");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("s.yaml"),
        model("m", &m)
            + &engine("chat", "m", "")
            + &from("vec", "qdrant", "^1", None)
            + &from("ui", "open-webui", "*", None),
    )
    .unwrap();
    let a = run_with(
        &env,
        Some(&profile("workstation-24g")),
        &[],
        &["plan", "-f", dir.to_str().unwrap(), "-o", "json"],
    )
    .ok();
    let b = run_with(
        &env,
        Some(&profile("workstation-24g")),
        &[],
        &["plan", "-f", dir.to_str().unwrap(), "-o", "json"],
    )
    .ok();
    assert_eq!(a.stdout, b.stdout);
    let t1 = run_with(
        &env,
        Some(&profile("workstation-24g")),
        &[],
        &["plan", "-f", dir.to_str().unwrap()],
    )
    .ok();
    let t2 = run_with(
        &env,
        Some(&profile("workstation-24g")),
        &[],
        &["plan", "-f", dir.to_str().unwrap()],
    )
    .ok();
    assert_eq!(t1.stdout, t2.stdout);
    assert!(
        t1.stdout.contains("Memory after the change:"),
        "{}",
        t1.stdout
    );
    let d = run_with(
        &env,
        Some(&profile("workstation-24g")),
        &[],
        &["apply", "--dry-run", "-f", dir.to_str().unwrap()],
    )
    .ok();
    assert!(
        d.stdout.contains("model/m created (dry run)"),
        "{}",
        d.stdout
    );
    assert!(
        d.stdout.contains("\nPlan:\nTier: single-gpu"),
        "{}",
        d.stdout
    );
    assert!(
        d.stdout.contains("create container module/vec"),
        "{}",
        d.stdout
    );
    let got = env.run(&["get", "models", "-o", "name"]).ok();
    assert_eq!(got.stdout, "", "dry run records nothing");
}

#[test]
fn lock_file_keeps_versions_until_update() {
    let env = FreshEnv::new();
    let cat = env.work.path().join("catalog");
    std::fs::create_dir_all(&cat).unwrap();
    let manifest = |versions: &[&str]| {
        let mut s = "apiVersion: localaistack.io/v1alpha1\nkind: ModuleManifest\nmetadata: {name: store}\nspec:\n  description: a store\n  versions:\n".to_string();
        for v in versions {
            s += &format!(
                "  - version: {v}\n    container: {{image: \"example.org/store@sha256:{}\"}}\n",
                &v.replace('.', "").repeat(64)[..64]
            );
        }
        s
    };
    std::fs::write(cat.join("store.yaml"), manifest(&["1.0.0"])).unwrap();
    let dir = env.work.path().join("stack");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("s.yaml"), from("db", "store", "^1", None)).unwrap();
    let catalog = [("LAS_CATALOG", cat.to_str().unwrap())];
    let p = |args: &[&str]| run_with(&env, Some(&profile("laptop-8g")), &catalog, args);
    p(&["lock", "-f", dir.to_str().unwrap()]).ok();
    assert!(
        std::fs::read_to_string(dir.join("las.lock"))
            .unwrap()
            .contains("version: 1.0.0")
    );
    std::fs::write(cat.join("store.yaml"), manifest(&["1.0.0", "1.1.0"])).unwrap();
    let r = p(&["plan", "-f", dir.to_str().unwrap(), "-o", "json"]).ok();
    assert!(
        r.stdout.contains("\"version\": \"1.0.0\""),
        "the lock holds: {}",
        r.stdout
    );
    let r = p(&[
        "plan",
        "-f",
        dir.to_str().unwrap(),
        "-o",
        "json",
        "--update",
    ])
    .ok();
    assert!(r.stdout.contains("\"version\": \"1.1.0\""), "{}", r.stdout);
    // plan --update is a preview: the lock still holds until `lock --update`.
    assert!(
        std::fs::read_to_string(dir.join("las.lock"))
            .unwrap()
            .contains("version: 1.0.0")
    );
    p(&["lock", "-f", dir.to_str().unwrap(), "--update"]).ok();
    assert!(
        std::fs::read_to_string(dir.join("las.lock"))
            .unwrap()
            .contains("version: 1.1.0")
    );
}

#[test]
fn bad_manifests_are_reported_and_ignored_and_conflicts_refused() {
    let env = FreshEnv::new();
    let cat = env.work.path().join("catalog");
    std::fs::create_dir_all(&cat).unwrap();
    let head = |name: &str| {
        format!(
            "apiVersion: localaistack.io/v1alpha1\nkind: ModuleManifest\nmetadata: {{name: {name}}}\nspec:\n  description: d\n  versions:\n"
        )
    };
    let digest = "a".repeat(64);
    std::fs::write(cat.join("a.yaml"), head("a") + &format!("  - version: 1.0.0\n    container: {{image: \"x/a@sha256:{digest}\"}}\n    conflicts: [{{name: b, reason: both bind port 8080}}]\n")).unwrap();
    std::fs::write(
        cat.join("b.yaml"),
        head("b")
            + &format!("  - version: 2.0.0\n    container: {{image: \"x/b@sha256:{digest}\"}}\n"),
    )
    .unwrap();
    std::fs::write(
        cat.join("c.yaml"),
        head("c") + "  - version: 1.0.0\n    container: {image: \"x/c:latest\"}\n",
    )
    .unwrap();
    let dir = env.work.path().join("stack");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("s.yaml"),
        from("one", "a", "*", None)
            + &from("two", "b", "^2", None)
            + &from("three", "c", "*", None),
    )
    .unwrap();
    let r = run_with(
        &env,
        Some(&profile("laptop-8g")),
        &[("LAS_CATALOG", cat.to_str().unwrap())],
        &["plan", "-f", dir.to_str().unwrap(), "-o", "json"],
    )
    .fails();
    assert!(
        r.stderr.contains(&format!("warning: manifest ignored: {}:8:5: spec.versions[0].container.image: image \"x/c:latest\" is not pinned", cat.join("c.yaml").display())),
        "{}",
        r.stderr
    );
    let plan: Value = serde_json::from_str(&r.stdout).unwrap();
    let reason = refusal(&plan, "module/three").unwrap();
    assert_eq!(
        reason,
        "resolution failed: module/three requires module c, which is not in the catalog"
    );
    assert!(
        !dir.join("las.lock").exists(),
        "a failed resolution writes no lock"
    );
    std::fs::write(
        dir.join("s.yaml"),
        from("one", "a", "*", None) + &from("two", "b", "^2", None),
    )
    .unwrap();
    let r = run_with(
        &env,
        Some(&profile("laptop-8g")),
        &[("LAS_CATALOG", cat.to_str().unwrap())],
        &["plan", "-f", dir.to_str().unwrap(), "-o", "json"],
    )
    .fails();
    let plan: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        refusal(&plan, "module/one").unwrap(),
        "resolution failed: a@1.0.0 conflicts with b@2.0.0: both bind port 8080 (module/one → a@1.0.0 ; module/two → b@2.0.0)"
    );
}

/// A real GGUF (generated by `lasctl model generate-test`) is estimated from its header: its real
/// layer count is used and nothing is "assumed".
#[test]
fn a_real_gguf_is_estimated_from_its_header() {
    let env = FreshEnv::new();
    let gguf = env.work.path().join("bench.gguf");
    env.run(&[
        "model",
        "generate-test",
        gguf.to_str().unwrap(),
        "--preset",
        "bench",
    ])
    .ok();
    let dir = env.work.path().join("s");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("s.yaml"),
        model("bench", &gguf) + &engine("chat", "bench", ", contextSize: 2048"),
    )
    .unwrap();
    let (r, plan) = plan_json(&env, "laptop-8g", &dir);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let placement = plan["placements"]["module/chat"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        placement.starts_with("model bench on the CPU: "),
        "{placement}"
    );
    assert!(
        placement.ends_with("of RAM at contextSize 2048"),
        "{placement}"
    );
    // More than the file (KV cache and compute buffers come on top), less than twice it.
    let planned = plan["devices"][0]["plannedBytes"].as_u64().unwrap();
    let file = std::fs::metadata(&gguf).unwrap().len();
    assert!(
        planned > file && planned < 2 * file + (64 << 20),
        "planned {planned} for a {file}-byte model"
    );
    let (_, plan) = plan_json(&env, "workstation-24g", &dir);
    let placement = plan["placements"]["module/chat"].as_str().unwrap();
    assert!(
        placement.starts_with("model bench fully on GPU 0: "),
        "{placement}"
    );
    assert!(!placement.contains("assumed"), "{placement}");
}
