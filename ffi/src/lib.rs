//! liblocalaistack: the C ABI of LocalAIStack, a thin and stable client of the daemon's management
//! API (docs/c-abi.md). The header `include/localaistack.h` is generated from this file by
//! cbindgen (`build.rs`); a test fails when the committed one is stale.
//!
//! Rules every function keeps:
//! - no panic crosses the boundary: each body runs under `catch_unwind`, and a panic becomes an
//!   error (`code` `Panic`) like any other;
//! - a function that fails returns NULL (or -1) and sets this thread's last error, a JSON object
//!   that `las_last_error()` returns; a function that succeeds clears it;
//! - every `char *` returned is owned by the caller and freed with `las_string_free()`;
//! - NULL arguments are errors (`InvalidArgument`), never crashes.
//!
//! This is the one package of the repository with `unsafe` at an FFI boundary: each block says
//! why it is sound (clippy's `undocumented_unsafe_blocks` is denied).

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::ptr;
use std::time::Duration;

pub mod error;
pub mod http;

use error::Error;
use http::{Client, Endpoint, Request, segment};

/// The version of this C ABI. It changes only when a function's signature or meaning changes;
/// compare `las_abi_version()` with this macro to check that the library matches the header.
pub const LAS_ABI_VERSION: u32 = 1;

const VERSION: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => panic!("the package version has a NUL byte"),
    };

/// A client of one daemon: its address (unix socket or TCP), its token and a per-call timeout.
/// Opaque to C. Each call opens its own connection, so one client may be used from several
/// threads at once.
pub struct LasClient {
    inner: Client,
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn set_last_error(e: Option<&Error>) {
    let text = e.map(|e| {
        // serde_json escapes control characters (NUL included), so this cannot fail.
        CString::new(e.to_json().to_string()).unwrap_or_default()
    });
    // `try_with`: during thread teardown the slot may be gone; the error is then dropped.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = text);
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs `f` at the boundary: clears the last error, catches a panic, and turns an error into
/// `failed` plus the thread's last error.
fn boundary<T>(failed: T, f: impl FnOnce() -> Result<T, Error>) -> T {
    set_last_error(None);
    let e = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => return v,
        Ok(Err(e)) => e,
        Err(p) => Error::Panic(panic_message(p.as_ref())),
    };
    set_last_error(Some(&e));
    failed
}

/// A string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid and unchanged for `'a`.
unsafe fn arg<'a>(p: *const c_char, name: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(Error::InvalidArgument(format!("{name} is NULL")));
    }
    // SAFETY: `p` is not NULL, and the caller promises a NUL-terminated string valid for 'a.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str()
        .map_err(|_| Error::InvalidArgument(format!("{name} is not UTF-8")))
}

/// The client behind a handle.
///
/// # Safety
/// `p` is NULL or a handle from `las_client_new_*` not yet given to `las_client_free`.
unsafe fn client<'a>(p: *const LasClient) -> Result<&'a Client, Error> {
    // SAFETY: a non-NULL `p` came from `Box::into_raw` in `new_client` and is not freed yet
    // (the caller's promise); the client is only read, so shared use across threads is fine.
    unsafe { p.as_ref() }
        .map(|c| &c.inner)
        .ok_or_else(|| Error::InvalidArgument("client is NULL".into()))
}

/// A 2xx answer's body as a new C string; any other answer is an error.
fn answer(c: &Client, req: Request<'_>) -> Result<*mut c_char, Error> {
    let a = c.send(&req)?;
    if !(200..300).contains(&a.status) {
        return Err(Error::Status {
            status: a.status,
            body: a.body,
        });
    }
    let text = String::from_utf8(a.body)
        .map_err(|_| Error::Protocol("the daemon's answer is not UTF-8".into()))?;
    let c = CString::new(text)
        .map_err(|_| Error::Protocol("the daemon's answer holds a NUL byte".into()))?;
    Ok(c.into_raw())
}

fn get(c: &Client, path: &str) -> Result<*mut c_char, Error> {
    answer(
        c,
        Request {
            method: "GET",
            path,
            content_type: None,
            body: b"",
        },
    )
}

fn new_client(inner: Client) -> *mut LasClient {
    Box::into_raw(Box::new(LasClient { inner }))
}

/// The library's version, e.g. `"0.1.0"`: a static string, never freed. Never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn las_version() -> *const c_char {
    VERSION.as_ptr()
}

/// The ABI version the library was built with (`LAS_ABI_VERSION` of its header).
#[unsafe(no_mangle)]
pub extern "C" fn las_abi_version() -> u32 {
    LAS_ABI_VERSION
}

/// A client of the daemon listening on the unix socket `socket_path` (the daemon's is
/// `$LAS_HOME/run/lasd.sock`; the socket's file mode is the access control, no token is sent).
/// Nothing is connected yet: each call connects. Returns NULL (and sets the last error) when
/// `socket_path` is NULL, empty or not UTF-8. Free it with `las_client_free()`.
///
/// # Safety
/// `socket_path` is NULL or a NUL-terminated string, read only during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn las_client_new_unix(socket_path: *const c_char) -> *mut LasClient {
    boundary(ptr::null_mut(), || {
        // SAFETY: the caller's promise on `socket_path`; the string is copied before returning.
        let p = unsafe { arg(socket_path, "socket_path") }?;
        if p.is_empty() {
            return Err(Error::InvalidArgument("socket_path is empty".into()));
        }
        Ok(new_client(Client::new(
            Endpoint::Unix(PathBuf::from(p)),
            None,
        )))
    })
}

/// A client of the daemon listening on TCP at `addr` (`127.0.0.1:7411`, `localhost:7411`, or with
/// `http://`), sending `token` (the contents of `$LAS_HOME/run/token`) as a bearer token. `token`
/// may be NULL: then only the routes open without one answer (the `/v1` routes, from loopback).
/// Returns NULL (and sets the last error) for a bad address or token. Free it with
/// `las_client_free()`.
///
/// # Safety
/// `addr` and `token` are NULL or NUL-terminated strings, read only during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn las_client_new_tcp(
    addr: *const c_char,
    token: *const c_char,
) -> *mut LasClient {
    boundary(ptr::null_mut(), || {
        // SAFETY: the caller's promise on `addr`; it is parsed before returning.
        let endpoint = Endpoint::tcp(unsafe { arg(addr, "addr") }?)?;
        let token = if token.is_null() {
            None
        } else {
            // SAFETY: the caller's promise on `token`; it is copied before returning.
            let t = unsafe { arg(token, "token") }?.trim();
            http::check_token(t)?;
            Some(t.to_string())
        };
        Ok(new_client(Client::new(endpoint, token)))
    })
}

/// Sets how long one call may wait to connect, and then for each read or write
/// (`timeout_ms` = 0: forever). The default is 300 000 ms. Returns 0, or -1 when `client` is NULL.
///
/// # Safety
/// `client` is NULL or a live handle from `las_client_new_*`, not used by another thread during
/// this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn las_client_set_timeout_ms(client: *mut LasClient, timeout_ms: u64) -> i32 {
    boundary(-1, || {
        // SAFETY: a non-NULL `client` is a live handle from `new_client` (the caller's promise),
        // and no other thread uses it during this call, so a unique reference is sound.
        let c = unsafe { client.as_mut() }
            .ok_or_else(|| Error::InvalidArgument("client is NULL".into()))?;
        c.inner.timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms));
        Ok(0)
    })
}

/// Frees a client. NULL is ignored.
///
/// # Safety
/// `client` is NULL or a handle from `las_client_new_*` not freed before and no longer used by
/// any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn las_client_free(client: *mut LasClient) {
    if !client.is_null() {
        // SAFETY: `client` came from `Box::into_raw` in `new_client` and is freed only once
        // (the caller's promise). Dropping a `Client` cannot panic.
        drop(unsafe { Box::from_raw(client) });
    }
}

/// Applies one or more YAML (or JSON) documents, like `lasctl apply -f` (`POST /api/v1/apply`).
/// Returns the daemon's answer (JSON: what was created, configured or left unchanged), or NULL:
/// a document the daemon refuses is an error whose `details` are its `Status` (with the file,
/// line and field), and nothing is applied.
///
/// # Safety
/// `client` is NULL or a live handle; `yaml` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn las_apply_yaml(
    client: *const LasClient,
    yaml: *const c_char,
) -> *mut c_char {
    boundary(ptr::null_mut(), || {
        // SAFETY: the caller's promises on `client` and `yaml`, both used only during the call.
        let (c, yaml) = unsafe { (self::client(client)?, arg(yaml, "yaml")?) };
        answer(
            c,
            Request {
                method: "POST",
                path: "/api/v1/apply",
                content_type: Some("application/yaml"),
                body: yaml.as_bytes(),
            },
        )
    })
}

/// One object as JSON (`GET /api/v1/{kind}/{name}`), with its status. `kind` is a kind in any
/// spelling the API accepts (`module`, `Module`, `modules`). An absent object is an error with
/// `code` `NotFound` and `status` 404.
///
/// # Safety
/// `client` is NULL or a live handle; `kind` and `name` are NULL or NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn las_get(
    client: *const LasClient,
    kind: *const c_char,
    name: *const c_char,
) -> *mut c_char {
    boundary(ptr::null_mut(), || {
        // SAFETY: the caller's promises on the three pointers, used only during the call.
        let (c, kind, name) = unsafe {
            (
                self::client(client)?,
                arg(kind, "kind")?,
                arg(name, "name")?,
            )
        };
        get(c, &format!("/api/v1/{}/{}", segment(kind), segment(name)))
    })
}

/// Every object of a kind as a JSON `List` (`GET /api/v1/{kind}`): `{"items": [...]}`.
///
/// # Safety
/// `client` is NULL or a live handle; `kind` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn las_list(client: *const LasClient, kind: *const c_char) -> *mut c_char {
    boundary(ptr::null_mut(), || {
        // SAFETY: the caller's promises on both pointers, used only during the call.
        let (c, kind) = unsafe { (self::client(client)?, arg(kind, "kind")?) };
        get(c, &format!("/api/v1/{}", segment(kind)))
    })
}

/// An OpenAI chat completion (`POST /v1/chat/completions`): `request_json` is the request object
/// (`{"model": ..., "messages": [...]}`), the answer is the `chat.completion` object. Streaming
/// (`"stream": true`) is refused here (`InvalidArgument`): this call returns one JSON object.
///
/// # Safety
/// `client` is NULL or a live handle; `request_json` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn las_chat(
    client: *const LasClient,
    request_json: *const c_char,
) -> *mut c_char {
    boundary(ptr::null_mut(), || {
        // SAFETY: the caller's promises on both pointers, used only during the call.
        let (c, req) = unsafe { (self::client(client)?, arg(request_json, "request_json")?) };
        let v: serde_json::Value = serde_json::from_str(req)
            .map_err(|e| Error::InvalidArgument(format!("request_json is not JSON: {e}")))?;
        if !v.is_object() {
            return Err(Error::InvalidArgument(
                "request_json must be a JSON object like {\"model\": ..., \"messages\": [...]}"
                    .into(),
            ));
        }
        if v.get("stream").and_then(|s| s.as_bool()) == Some(true) {
            return Err(Error::InvalidArgument(
                "las_chat returns one JSON object: \"stream\": true is not supported".into(),
            ));
        }
        answer(
            c,
            Request {
                method: "POST",
                path: "/v1/chat/completions",
                content_type: Some("application/json"),
                body: req.as_bytes(),
            },
        )
    })
}

/// The plugin inventory (`GET /api/v1/plugins/inventory`) as JSON: every seam, its active
/// contributions, plugins and activations with their capabilities.
///
/// # Safety
/// `client` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn las_plugin_inventory(client: *const LasClient) -> *mut c_char {
    boundary(ptr::null_mut(), || {
        // SAFETY: the caller's promise on `client`, used only during the call.
        let c = unsafe { self::client(client) }?;
        get(c, "/api/v1/plugins/inventory")
    })
}

/// The error of this thread's last failed call, as a JSON object
/// `{"code": "...", "message": "...", "status": N, "details": ...}` (`status`: the HTTP status,
/// 0 when the daemon did not answer; `details`: the daemon's error body, when it sent one), or
/// NULL when the last call succeeded. Borrowed: do not free it; it stays valid until this thread
/// calls another `las_*` function that returns a string, a client or a status.
#[unsafe(no_mangle)]
pub extern "C" fn las_last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|slot| slot.borrow().as_ref().map_or(ptr::null(), |c| c.as_ptr()))
        .unwrap_or(ptr::null())
}

/// Frees a string returned by this library. NULL is ignored.
///
/// # Safety
/// `s` is NULL or a string returned by a `las_*` function of this library (never the one of
/// `las_version()` or `las_last_error()`), not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn las_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: `s` came from `CString::into_raw` in `answer` and is freed only once (the
        // caller's promise), so it is rebuilt with its original length and allocator.
        drop(unsafe { CString::from_raw(s) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixListener;

    fn last_error() -> Option<serde_json::Value> {
        let p = las_last_error();
        // SAFETY: a non-NULL pointer from `las_last_error` is a live NUL-terminated string.
        (!p.is_null())
            .then(|| serde_json::from_str(unsafe { CStr::from_ptr(p) }.to_str().unwrap()).unwrap())
    }

    /// Takes a returned string (and frees it).
    fn take(p: *mut c_char) -> Option<String> {
        (!p.is_null()).then(|| {
            // SAFETY: a non-NULL `p` is a string this library returned.
            let s = unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string();
            // SAFETY: as above, freed once.
            unsafe { las_string_free(p) };
            s
        })
    }

    /// A one-shot daemon stand-in on a unix socket: records the request, sends `reply`.
    fn fake_daemon(reply: &'static str) -> (tempfile_dir::Dir, std::thread::JoinHandle<String>) {
        let dir = tempfile_dir::Dir::new();
        let l = UnixListener::bind(dir.path.join("s.sock")).unwrap();
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s);
            let mut head = String::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            r.get_mut().write_all(reply.as_bytes()).unwrap();
            head + &String::from_utf8(body).unwrap()
        });
        (dir, h)
    }

    /// A scratch directory without a crate for it.
    mod tempfile_dir {
        pub struct Dir {
            pub path: std::path::PathBuf,
        }
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "las-ffi-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&path).unwrap();
                Dir { path }
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.path);
            }
        }
    }

    fn unix_client(dir: &tempfile_dir::Dir) -> *mut LasClient {
        let p = CString::new(dir.path.join("s.sock").to_str().unwrap()).unwrap();
        // SAFETY: `p` is a live C string.
        unsafe { las_client_new_unix(p.as_ptr()) }
    }

    #[test]
    fn version_strings_are_static_and_match_the_package() {
        // SAFETY: `las_version` returns a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(las_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
        assert_eq!(las_abi_version(), LAS_ABI_VERSION);
    }

    #[test]
    fn null_arguments_are_errors_and_a_success_clears_the_error() {
        // SAFETY: NULL is allowed for every pointer argument.
        unsafe {
            assert!(las_client_new_unix(ptr::null()).is_null());
            assert_eq!(last_error().unwrap()["code"], "InvalidArgument");
            assert!(las_get(ptr::null(), c"module".as_ptr(), c"x".as_ptr()).is_null());
            assert_eq!(last_error().unwrap()["message"], "client is NULL");
            assert!(las_client_new_tcp(ptr::null(), ptr::null()).is_null());
            assert_eq!(last_error().unwrap()["message"], "addr is NULL");
            assert_eq!(las_client_set_timeout_ms(ptr::null_mut(), 5), -1);
            las_string_free(ptr::null_mut());
            las_client_free(ptr::null_mut());
            let c = las_client_new_tcp(c"127.0.0.1:1".as_ptr(), ptr::null());
            assert!(!c.is_null());
            assert!(last_error().is_none(), "a success clears the last error");
            assert!(las_list(c, ptr::null()).is_null());
            assert_eq!(last_error().unwrap()["message"], "kind is NULL");
            assert!(las_chat(c, c"[1]".as_ptr()).is_null());
            assert_eq!(last_error().unwrap()["code"], "InvalidArgument");
            assert!(las_chat(c, c"{\"stream\": true}".as_ptr()).is_null());
            assert!(
                last_error().unwrap()["message"]
                    .as_str()
                    .unwrap()
                    .contains("stream")
            );
            assert!(
                las_client_new_tcp(c"127.0.0.1:1".as_ptr(), c"a b".as_ptr()).is_null(),
                "a token with a space is refused"
            );
            las_client_free(c);
        }
    }

    #[test]
    fn a_missing_daemon_is_a_connect_error_naming_the_socket() {
        let dir = tempfile_dir::Dir::new();
        let c = unix_client(&dir);
        // SAFETY: `c` is a live handle; the strings are literals.
        let out = unsafe { las_get(c, c"module".as_ptr(), c"x".as_ptr()) };
        assert!(out.is_null());
        let e = last_error().unwrap();
        assert_eq!(e["code"], "Connect", "{e}");
        assert_eq!(e["status"], 0, "{e}");
        assert!(e["message"].as_str().unwrap().contains("s.sock"), "{e}");
        // SAFETY: freed once.
        unsafe { las_client_free(c) };
    }

    #[test]
    fn the_last_error_is_per_thread() {
        // SAFETY: NULL is allowed.
        assert!(unsafe { las_client_new_unix(ptr::null()) }.is_null());
        let other = std::thread::spawn(|| {
            let before = last_error();
            // SAFETY: NULL is allowed.
            assert!(unsafe { las_list(ptr::null(), ptr::null()) }.is_null());
            (before, last_error().unwrap())
        })
        .join()
        .unwrap();
        assert!(other.0.is_none(), "a new thread starts without an error");
        assert_eq!(other.1["message"], "client is NULL");
        assert_eq!(last_error().unwrap()["message"], "socket_path is NULL");
    }

    #[test]
    fn get_sends_an_encoded_path_and_returns_the_body() {
        let (dir, h) = fake_daemon(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"kind\":\"M\"}\n",
        );
        let c = unix_client(&dir);
        // SAFETY: `c` is a live handle; the strings are literals.
        let out = take(unsafe { las_get(c, c"module".as_ptr(), c"a/b".as_ptr()) });
        assert_eq!(out.as_deref(), Some("{\"kind\":\"M\"}\n"));
        let req = h.join().unwrap();
        assert!(
            req.starts_with("GET /api/v1/module/a%2Fb HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(
            !req.contains("Authorization"),
            "no token over the unix socket: {req}"
        );
        // SAFETY: freed once.
        unsafe { las_client_free(c) };
    }

    #[test]
    fn apply_posts_yaml_and_a_refusal_carries_the_status_body() {
        let (dir, h) = fake_daemon(
            "HTTP/1.1 422 Unprocessable Entity\r\nTransfer-Encoding: chunked\r\n\r\n4c\r\n{\"kind\":\"Status\",\"reason\":\"Invalid\",\"message\":\"request:1: spec.x: unknown\"}\r\n0\r\n\r\n",
        );
        let c = unix_client(&dir);
        // SAFETY: `c` is a live handle; the string is a literal.
        let out = unsafe { las_apply_yaml(c, c"kind: Module\n".as_ptr()) };
        assert!(out.is_null());
        let e = last_error().unwrap();
        assert_eq!(e["code"], "Invalid", "{e}");
        assert_eq!(e["status"], 422, "{e}");
        assert_eq!(e["details"]["message"], "request:1: spec.x: unknown", "{e}");
        let req = h.join().unwrap();
        assert!(req.starts_with("POST /api/v1/apply HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Content-Type: application/yaml\r\n"), "{req}");
        assert!(req.ends_with("\r\n\r\nkind: Module\n"), "{req}");
        // SAFETY: freed once.
        unsafe { las_client_free(c) };
    }

    #[test]
    fn an_answer_with_a_nul_byte_is_a_protocol_error() {
        let (dir, h) = fake_daemon("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\na\0b");
        let c = unix_client(&dir);
        // SAFETY: `c` is a live handle.
        assert!(unsafe { las_plugin_inventory(c) }.is_null());
        assert_eq!(last_error().unwrap()["code"], "Protocol");
        h.join().unwrap();
        // SAFETY: freed once.
        unsafe { las_client_free(c) };
    }

    #[test]
    fn a_panic_becomes_an_error_and_does_not_unwind_into_the_caller() {
        let out = boundary(ptr::null_mut::<c_char>(), || panic!("boom"));
        assert!(out.is_null());
        let e = last_error().unwrap();
        assert_eq!(e["code"], "Panic");
        assert!(e["message"].as_str().unwrap().contains("boom"), "{e}");
    }
}
