//! Issue 10: only the owner may drive the daemon. Every test runs the real `lasctl daemon` on a
//! loopback port and talks raw HTTP/1.1 to it, so each header is exactly what an attacker's
//! browser or another local user would send.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use support::FreshEnv;
use support::daemon::{Daemon, get_json, wait_until};

/// One HTTP exchange on a fresh connection: (status, headers as lower-case text, body).
fn raw(addr: &str, head: &str, body: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = head.replace('\n', "\r\n");
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(req.as_bytes()).unwrap();
    if !head.contains("Expect: 100-continue") {
        // A server that refuses early may close while the body is still being sent.
        let _ = s.write_all(body);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_ascii_lowercase(), body.to_string())
}

fn token(home: &Path) -> String {
    std::fs::read_to_string(home.join("run/token"))
        .unwrap()
        .trim()
        .to_string()
}

/// The request of the issue: a native Module that touches `marker`.
fn pwn(marker: &Path) -> String {
    format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {{name: pwn}}\n\
         spec: {{native: {{command: [\"/bin/sh\", \"-c\", \"touch {} && exec sleep 600\"]}}}}\n",
        marker.display()
    )
}

fn refused_total(addr: &str) -> u64 {
    let (_, _, body) = raw(addr, "GET /metrics HTTP/1.1\nHost: 127.0.0.1\n", b"");
    body.lines()
        .filter(|l| l.starts_with("las_http_refused_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn issue10_cross_site_and_foreign_requests_change_nothing_regression() {
    let env = FreshEnv::new();
    let d = Daemon::start(&env, &[], &[]);
    let addr = d.listen.clone();
    let port = addr.rsplit(':').next().unwrap().to_string();
    let tok = token(env.home_path());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(env.home_path().join("run/token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the token file is the owner's alone");
    let other = FreshEnv::new();
    let other_daemon = Daemon::start(&other, &[], &[]);
    let other_tok = token(other.home_path());
    drop(other_daemon);
    assert_ne!(tok, other_tok);

    let marker = env.work.path().join("pwned-by-web");
    let body = pwn(&marker);
    let auth = format!("Authorization: Bearer {tok}\n");
    // (what, request head, expected status)
    let variants: Vec<(&str, String, u16)> = vec![
        (
            "the issue's request: foreign Host and Origin, text/plain, no token",
            format!(
                "POST /api/v1/apply HTTP/1.1\nHost: evil.example:{port}\nOrigin: http://evil.example\nContent-Type: text/plain\n"
            ),
            403,
        ),
        (
            "DNS rebinding: our address, a foreign name",
            format!(
                "POST /api/v1/apply HTTP/1.1\nHost: evil.example:{port}\nContent-Type: application/yaml\n{auth}"
            ),
            403,
        ),
        (
            "text/plain with the right token",
            format!(
                "POST /api/v1/apply HTTP/1.1\nHost: 127.0.0.1:{port}\nContent-Type: text/plain\n{auth}"
            ),
            415,
        ),
        (
            "form-encoded with the right token",
            format!(
                "POST /api/v1/apply HTTP/1.1\nHost: localhost:{port}\nContent-Type: application/x-www-form-urlencoded\n{auth}"
            ),
            415,
        ),
        (
            "no Content-Type",
            format!("POST /api/v1/apply HTTP/1.1\nHost: localhost:{port}\n{auth}"),
            415,
        ),
        (
            "a page on another local port (foreign Origin)",
            format!(
                "POST /api/v1/apply HTTP/1.1\nHost: 127.0.0.1:{port}\nOrigin: http://127.0.0.1:3000\nContent-Type: application/yaml\n{auth}"
            ),
            403,
        ),
        (
            "Origin null (sandboxed frame)",
            format!(
                "POST /api/v1/apply HTTP/1.1\nHost: 127.0.0.1:{port}\nOrigin: null\nContent-Type: application/yaml\n{auth}"
            ),
            403,
        ),
        (
            "Sec-Fetch-Site: cross-site",
            format!(
                "POST /api/v1/apply HTTP/1.1\nHost: 127.0.0.1:{port}\nSec-Fetch-Site: cross-site\nContent-Type: application/yaml\n{auth}"
            ),
            403,
        ),
        (
            "Sec-Fetch-Site: same-site",
            format!(
                "PUT /api/v1/modules/pwn HTTP/1.1\nHost: 127.0.0.1:{port}\nSec-Fetch-Site: same-site\nContent-Type: application/yaml\n{auth}"
            ),
            403,
        ),
        (
            "no token (another local user)",
            format!(
                "POST /api/v1/apply HTTP/1.1\nHost: 127.0.0.1:{port}\nContent-Type: application/yaml\n"
            ),
            401,
        ),
        (
            "a wrong token",
            format!(
                "POST /api/v1/apply HTTP/1.1\nHost: 127.0.0.1:{port}\nContent-Type: application/yaml\nAuthorization: Bearer {}\n",
                "0".repeat(64)
            ),
            401,
        ),
        (
            "the token of another LAS_HOME",
            format!(
                "POST /api/v1/modules HTTP/1.1\nHost: 127.0.0.1:{port}\nContent-Type: application/yaml\nAuthorization: Bearer {other_tok}\n"
            ),
            401,
        ),
        (
            "a console cookie that is no session",
            format!(
                "POST /api/v1/apply HTTP/1.1\nHost: 127.0.0.1:{port}\nContent-Type: application/json\nCookie: las_session=forged\n"
            ),
            401,
        ),
        (
            "HTTP/1.0 without Host",
            "POST /api/v1/apply HTTP/1.0\nContent-Type: application/yaml\n".to_string(),
            403,
        ),
    ];
    let before = refused_total(&addr);
    for (what, head, want) in &variants {
        let (code, _, answer) = raw(&addr, head, body.as_bytes());
        assert_eq!(code, *want, "{what}: {answer}");
        assert!(
            !answer.contains(&tok),
            "{what}: the answer must not echo the token"
        );
    }
    // Reads are guarded too: a rebinding page reads neither objects, events nor models.
    for path in [
        "/api/v1/modules",
        "/api/v1/events?watch=false",
        "/v1/models",
    ] {
        let (code, _, _) = raw(
            &addr,
            &format!("GET {path} HTTP/1.1\nHost: evil.example:{port}\n"),
            b"",
        );
        assert_eq!(code, 403, "GET {path} with a foreign Host");
    }
    let (code, _, _) = raw(
        &addr,
        &format!("GET /api/v1/modules HTTP/1.1\nHost: 127.0.0.1:{port}\n"),
        b"",
    );
    assert_eq!(code, 401, "objects are the owner's to read");
    let refused = refused_total(&addr) - before;
    assert_eq!(refused, variants.len() as u64 + 4, "every refusal counted");
    assert!(
        !d.log().contains(&tok),
        "refusals are logged without the token"
    );

    // Nothing was recorded and nothing ran.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!marker.exists(), "a refused request ran its command");
    assert!(get_json(&env, "module", "pwn").is_none());
    assert_eq!(env.run(&["history"]).ok().stdout.lines().count(), 1);

    // What stays open on loopback: liveness, metrics, and text generation (as with Ollama).
    for path in ["/healthz", "/metrics", "/v1/models"] {
        let (code, _, _) = raw(
            &addr,
            &format!("GET {path} HTTP/1.1\nHost: localhost:{port}\n"),
            b"",
        );
        assert_eq!(code, 200, "GET {path} without a token");
    }

    // The owner still drives it: the same request with the token, our Host and a YAML body.
    let (code, _, answer) = raw(
        &addr,
        &format!(
            "POST /api/v1/apply HTTP/1.1\nHost: 127.0.0.1:{port}\nContent-Type: application/yaml\n{auth}"
        ),
        body.as_bytes(),
    );
    assert_eq!(code, 201, "{answer}");
    wait_until("the owner's module to run", Duration::from_secs(30), || {
        marker.exists()
    });
    // And the CLI, over TCP with the token file (LAS_LISTEN) and over the unix socket.
    let mut c = env.cmd();
    c.env("LAS_LISTEN", &addr)
        .args(["events", "module/pwn", "-w"])
        .stdout(std::process::Stdio::piped());
    let mut events = support::ChildGuard::spawn(c);
    let out = events.0.as_mut().unwrap().stdout.take().unwrap();
    let mut seen = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(out)) {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("module/pwn") {
            break;
        }
    }
    assert!(
        seen.contains("module/pwn"),
        "events over TCP with the token:\n{seen}"
    );
    drop(events);
    env.run(&["delete", "module", "pwn"]).ok();
}

#[test]
fn issue10_console_login_is_one_time_and_writes_need_the_csrf_header() {
    let env = FreshEnv::new();
    let d = Daemon::start(&env, &[], &[]);
    let addr = d.listen.clone();
    let port = addr.rsplit(':').next().unwrap().to_string();
    assert!(
        d.log().contains("/ui/login?token="),
        "the start line gives a login link:\n{}",
        d.log()
    );
    let url = env.run(&["ui"]).ok().stdout.trim().to_string();
    let path = url
        .strip_prefix(&format!("http://{addr}"))
        .unwrap_or_else(|| panic!("{url} is not on {addr}"));
    let (code, head, _) = raw(
        &addr,
        &format!("GET {path} HTTP/1.1\nHost: 127.0.0.1:{port}\n"),
        b"",
    );
    assert_eq!(code, 303);
    let cookie_line = head
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .expect("a session cookie");
    for attr in ["httponly", "samesite=strict", "path=/"] {
        assert!(cookie_line.contains(attr), "{cookie_line}");
    }
    let session = cookie_line
        .split_once("las_session=")
        .unwrap()
        .1
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (code, _, _) = raw(
        &addr,
        &format!("GET {path} HTTP/1.1\nHost: 127.0.0.1:{port}\n"),
        b"",
    );
    assert_eq!(code, 401, "a login link works once");

    let cookie = format!("Cookie: las_session={session}\n");
    let (code, head, page) = raw(
        &addr,
        &format!("GET /ui/ HTTP/1.1\nHost: 127.0.0.1:{port}\n{cookie}"),
        b"",
    );
    assert_eq!(code, 200, "{page}");
    assert!(head.contains("frame-ancestors 'none'"), "{head}");
    assert!(head.contains("content-security-policy: default-src 'self'"));
    assert!(head.contains("x-frame-options: deny"));
    let csrf = page
        .split_once("name=\"las-csrf\" content=\"")
        .unwrap()
        .1
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let (code, _, _) = raw(
        &addr,
        &format!("GET /ui/ HTTP/1.1\nHost: 127.0.0.1:{port}\n"),
        b"",
    );
    assert_eq!(code, 401, "no cookie, no console");

    // The session reads; a write needs the anti-forgery header of that session.
    let (code, _, _) = raw(
        &addr,
        &format!("GET /api/v1/models HTTP/1.1\nHost: 127.0.0.1:{port}\n{cookie}"),
        b"",
    );
    assert_eq!(code, 200);
    let model = "{\"apiVersion\":\"localaistack.io/v1alpha1\",\"kind\":\"Model\",\"metadata\":{\"name\":\"m\"},\"spec\":{\"source\":\"/srv/m.gguf\"}}";
    let (code, _, _) = raw(
        &addr,
        &format!(
            "POST /api/v1/apply HTTP/1.1\nHost: 127.0.0.1:{port}\nContent-Type: application/json\n{cookie}"
        ),
        model.as_bytes(),
    );
    assert_eq!(code, 403, "a console write without the csrf header");
    let (code, _, answer) = raw(
        &addr,
        &format!(
            "POST /api/v1/apply HTTP/1.1\nHost: 127.0.0.1:{port}\nContent-Type: application/json\nOrigin: http://127.0.0.1:{port}\nX-LAS-CSRF: {csrf}\n{cookie}"
        ),
        model.as_bytes(),
    );
    assert_eq!(code, 201, "{answer}");
    assert!(get_json(&env, "model", "m").is_some());
}

#[test]
fn issue10_bodies_and_slow_clients_are_bounded_regression() {
    let env = FreshEnv::new();
    let d = Daemon::start(&env, &[], &[]);
    let addr = d.listen.clone();
    let tok = token(env.home_path());
    let head = format!(
        "POST /api/v1/apply HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/yaml\nAuthorization: Bearer {tok}\n"
    );
    // 20 MB bodies, two at once: refused by size, not parsed (once 2 GB of memory each). A
    // client that asks first (curl does for large bodies) gets 413 before sending anything.
    let big = format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata: {{name: big}}\nspec: {{source: /x}}\nx: \"{}\"\n",
        "a".repeat(20 << 20)
    );
    let (code, _, answer) = raw(
        &addr,
        &format!("{head}Expect: 100-continue\n"),
        big.as_bytes(),
    );
    assert_eq!(code, 413, "{answer}");
    // One that just sends is cut off (413, or the connection closed under it).
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (addr, head, big) = (addr.clone(), head.clone(), big.clone());
            std::thread::spawn(move || raw(&addr, &head, big.as_bytes()).0)
        })
        .collect();
    for t in threads {
        let code = t.join().unwrap();
        assert!(code == 413 || code == 0, "{code}");
    }
    assert!(get_json(&env, "model", "big").is_none());
    // One document over 1 MiB inside an acceptable body is named with its line, unparsed.
    let doc = format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata: {{name: fat}}\nspec: {{source: /x}}\n# {}\n",
        "b".repeat(2 << 20)
    );
    let (code, _, answer) = raw(&addr, &head, doc.as_bytes());
    assert_eq!(code, 422, "{answer}");
    assert!(
        answer.contains("bytes are accepted per document"),
        "{answer}"
    );
    let hwm_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", d.guard.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(
        hwm_kib < 512 * 1024,
        "the daemon's peak memory was {hwm_kib} KiB after the big bodies"
    );

    // Connections that never send a request head are cut, and cannot starve everyone else.
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127").unwrap();
            s
        })
        .collect();
    let start = Instant::now();
    let (code, _, _) = raw(&addr, "GET /healthz HTTP/1.1\nHost: 127.0.0.1\n", b"");
    assert_eq!(code, 200, "liveness answered while 300 clients stall");
    assert!(start.elapsed() < Duration::from_secs(45));
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 256];
        // Closed by the server (EOF or reset), never left open.
        let n = s.read(&mut buf).unwrap_or(0);
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

#[test]
fn issue10_engine_refuses_settings_the_model_or_machine_cannot_take_regression() {
    let env = FreshEnv::new();
    let gguf = env.work.path().join("tiny.gguf");
    env.run(&["model", "generate-test", gguf.to_str().unwrap()])
        .ok();
    for (args, want) in [
        (vec!["--ctx", "2000000000"], "trained for"),
        (vec!["--threads", "1000"], "CPUs this process may use"),
        (
            vec!["--parallel", "100000"],
            "--parallel 100000 is out of range",
        ),
    ] {
        let mut all = vec!["engine", "llama", "--model", gguf.to_str().unwrap()];
        all.extend(args);
        let r = env.run(&all).fails();
        assert!(r.stderr.contains(want), "{all:?}: {}", r.stderr);
    }
}

#[test]
fn issue10_policy_can_forbid_custom_workloads_for_every_writer() {
    let env = FreshEnv::new();
    let policy = env.write(
        "policy.yaml",
        "apiVersion: localaistack.io/v1alpha1\nkind: Policy\nmetadata: {name: locked}\n\
         spec:\n  priority: 10\n  tiers:\n  - name: catalog-only\n    capabilities: {allowCustomWorkloads: false}\n",
    );
    env.run(&["apply", "-f", policy.to_str().unwrap()]).ok();
    let d = Daemon::start(&env, &[], &[]);
    let addr = d.listen.clone();
    let tok = token(env.home_path());
    let marker = env.work.path().join("ran");
    let head = format!(
        "POST /api/v1/apply HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/yaml\nAuthorization: Bearer {tok}\n"
    );
    let (code, _, answer) = raw(&addr, &head, pwn(&marker).as_bytes());
    assert_eq!(code, 403, "{answer}");
    assert!(answer.contains("catalog-only"), "{answer}");
    // The API cannot loosen its own limits.
    let open = "apiVersion: localaistack.io/v1alpha1\nkind: Policy\nmetadata: {name: open}\nspec:\n  priority: 99\n  tiers:\n  - name: all\n    capabilities: {}\n";
    let (code, _, answer) = raw(&addr, &head, open.as_bytes());
    assert_eq!(code, 403, "{answer}");
    let (code, _, _) = raw(
        &addr,
        &format!(
            "DELETE /api/v1/policies/locked HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {tok}\n"
        ),
        b"",
    );
    assert_eq!(code, 403);
    // The owner's CLI records it, and the daemon's admission still refuses to run it.
    let m = env.write("pwn.yaml", &pwn(&marker));
    env.run(&["apply", "-f", m.to_str().unwrap()]).ok();
    wait_until("the module to be refused", Duration::from_secs(30), || {
        get_json(&env, "module", "pwn").is_some_and(|o| {
            o["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    c["type"] == "Stalled"
                        && c["status"] == "True"
                        && c["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("allows only catalog modules"))
                })
            })
        })
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(!marker.exists());
}
