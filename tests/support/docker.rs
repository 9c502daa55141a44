//! The Docker side of end-to-end tests: the test image, built locally (no registry is reachable).

pub const E2E_IMAGE: &str = "localaistack-e2e/busybox:1";

/// Builds the test image from Debian's static busybox (no registry is reachable), or fails loudly
/// when no Docker engine answers and LAS_REQUIRE_DOCKER=1; otherwise a counted, loud skip.
pub fn e2e_image() -> bool {
    let engine = std::process::Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !engine {
        assert_ne!(
            std::env::var("LAS_REQUIRE_DOCKER").as_deref(),
            Ok("1"),
            "LAS_REQUIRE_DOCKER=1 but no Docker engine answers"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED (loudly): no Docker engine answers; set LAS_REQUIRE_DOCKER=1 to fail instead"
        );
        return false;
    }
    let present = std::process::Command::new("docker")
        .args(["image", "inspect", E2E_IMAGE])
        .output()
        .unwrap()
        .status
        .success();
    if !present {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["bin", "www", "tmp"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("install busybox-static (make deps)");
        std::fs::write(root.join("www/index.html"), "container-ok\n").unwrap();
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C {} -cf - . | docker import - {E2E_IMAGE}",
                root.display()
            ))
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
    true
}
