//! A small blocking HTTP/1.1 client of the daemon: one request per connection (`Connection:
//! close`), over the unix socket or TCP, with a bearer token on TCP. No runtime, no threads of its
//! own: a C program that links the library gets no hidden threads and can fork.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;

/// The most a response body may hold (a plugin inventory or a long list stays far below).
pub(crate) const MAX_BODY: usize = 64 << 20;
/// The most one header line may hold.
const MAX_LINE: usize = 64 << 10;
/// The most header lines an answer may have.
const MAX_HEADERS: usize = 100;

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

impl Endpoint {
    /// `127.0.0.1:7411`, `localhost:7411` or `http://127.0.0.1:7411` (a trailing `/` is allowed).
    pub fn tcp(addr: &str) -> Result<Endpoint, Error> {
        let bare = addr.trim();
        let bare = bare.strip_prefix("http://").unwrap_or(bare);
        let bare = bare.strip_suffix('/').unwrap_or(bare);
        let bad = || {
            Error::InvalidArgument(format!(
                "addr {addr:?} is not an address like 127.0.0.1:7411 or localhost:7411"
            ))
        };
        if bare.is_empty() || bare.contains('/') {
            return Err(bad());
        }
        if let Ok(a) = bare.parse::<SocketAddr>() {
            return Ok(Endpoint::Tcp(a));
        }
        bare.to_socket_addrs()
            .map_err(|_| bad())?
            .next()
            .map(Endpoint::Tcp)
            .ok_or_else(bad)
    }

    /// The `Host` header: the daemon answers only to names on its allowlist.
    fn host(&self) -> String {
        match self {
            Endpoint::Tcp(a) if a.ip().is_unspecified() => format!("localhost:{}", a.port()),
            Endpoint::Tcp(a) => a.to_string(),
            Endpoint::Unix(_) => "localhost".into(),
        }
    }
}

trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

/// What the daemon answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One request to build.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// The daemon's address, its token and the per-call timeout.
#[derive(Debug, Clone)]
pub struct Client {
    pub endpoint: Endpoint,
    pub token: Option<String>,
    pub timeout: Option<Duration>,
}

/// The default per-call timeout (connect, each read and each write).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

impl Client {
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Client {
        Client {
            endpoint,
            token,
            timeout: Some(DEFAULT_TIMEOUT),
        }
    }

    fn connect(&self) -> Result<Box<dyn Conn>, Error> {
        let at = self.endpoint.to_string();
        let err = |source: std::io::Error| Error::Connect {
            at: at.clone(),
            source,
        };
        Ok(match &self.endpoint {
            Endpoint::Unix(p) => {
                let s = UnixStream::connect(p).map_err(err)?;
                s.set_read_timeout(self.timeout).map_err(err)?;
                s.set_write_timeout(self.timeout).map_err(err)?;
                Box::new(s)
            }
            Endpoint::Tcp(a) => {
                let s = match self.timeout {
                    Some(t) => TcpStream::connect_timeout(a, t),
                    None => TcpStream::connect(a),
                }
                .map_err(err)?;
                s.set_nodelay(true).map_err(err)?;
                s.set_read_timeout(self.timeout).map_err(err)?;
                s.set_write_timeout(self.timeout).map_err(err)?;
                Box::new(s)
            }
        })
    }

    /// Sends one request on a fresh connection and reads the whole answer.
    pub fn send(&self, req: &Request<'_>) -> Result<Answer, Error> {
        let mut conn = self.connect()?;
        let head = self.head(req);
        let io = |source| Error::Io {
            what: "talking to the daemon",
            source,
        };
        conn.write_all(head.as_bytes()).map_err(io)?;
        conn.write_all(req.body).map_err(io)?;
        conn.flush().map_err(io)?;
        read_answer(BufReader::new(conn))
    }

    fn head(&self, req: &Request<'_>) -> String {
        let mut h = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\nUser-Agent: liblocalaistack/{}\r\nContent-Length: {}\r\n",
            req.method,
            req.path,
            self.endpoint.host(),
            env!("CARGO_PKG_VERSION"),
            req.body.len()
        );
        if let Some(ct) = req.content_type {
            h.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        if let Some(t) = &self.token {
            h.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        h.push_str("\r\n");
        h
    }
}

/// A token goes into a header line: printable ASCII without spaces only.
pub fn check_token(token: &str) -> Result<(), Error> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidArgument(
            "token must be non-empty printable ASCII without spaces (the contents of $LAS_HOME/run/token)".into(),
        ));
    }
    Ok(())
}

fn protocol(msg: impl Into<String>) -> Error {
    Error::Protocol(msg.into())
}

fn read_line<R: BufRead>(r: &mut R) -> Result<String, Error> {
    let mut buf = Vec::new();
    r.by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .map_err(|source| Error::Io {
            what: "reading the daemon's answer",
            source,
        })?;
    if buf.len() > MAX_LINE {
        return Err(protocol(format!(
            "a header line of the answer is longer than {MAX_LINE} bytes"
        )));
    }
    if !buf.ends_with(b"\n") {
        return Err(protocol("the daemon closed the connection mid-answer"));
    }
    buf.pop();
    if buf.ends_with(b"\r") {
        buf.pop();
    }
    String::from_utf8(buf).map_err(|_| protocol("a header line of the answer is not UTF-8"))
}

/// Parses an HTTP/1.1 answer: the status line, headers, then a body framed by
/// `Transfer-Encoding: chunked`, `Content-Length` or the end of the connection.
pub fn read_answer<R: BufRead>(mut r: R) -> Result<Answer, Error> {
    let status_line = read_line(&mut r)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..600).contains(s));
    let Some(status) = status.filter(|_| version.starts_with("HTTP/1.")) else {
        return Err(protocol(format!(
            "the answer does not start with an HTTP/1.x status line: {status_line:?}"
        )));
    };
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut n = 0;
    loop {
        let line = read_line(&mut r)?;
        if line.is_empty() {
            break;
        }
        n += 1;
        if n > MAX_HEADERS {
            return Err(protocol(format!(
                "the answer has more than {MAX_HEADERS} headers"
            )));
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(protocol(format!("a malformed header line: {line:?}")));
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(
                v.parse()
                    .map_err(|_| protocol(format!("a bad Content-Length: {v:?}")))?,
            );
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    let io = |source| Error::Io {
        what: "reading the daemon's answer",
        source,
    };
    let too_big = || protocol(format!("the answer's body is larger than {MAX_BODY} bytes"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let line = read_line(&mut r)?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| protocol(format!("a bad chunk size: {line:?}")))?;
            if size == 0 {
                // Trailers, if any, up to the empty line.
                while !read_line(&mut r)?.is_empty() {}
                break;
            }
            if body.len() + size > MAX_BODY {
                return Err(too_big());
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..]).map_err(io)?;
            if !read_line(&mut r)?.is_empty() {
                return Err(protocol("a chunk is not followed by CRLF"));
            }
        }
    } else if let Some(len) = length {
        if len > MAX_BODY {
            return Err(too_big());
        }
        body.resize(len, 0);
        r.read_exact(&mut body).map_err(io)?;
    } else {
        r.take(MAX_BODY as u64 + 1)
            .read_to_end(&mut body)
            .map_err(io)?;
        if body.len() > MAX_BODY {
            return Err(too_big());
        }
    }
    Ok(Answer { status, body })
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved characters).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Answer, Error> {
        read_answer(BufReader::new(raw.as_bytes()))
    }

    #[test]
    fn content_length_chunked_and_close_delimited_bodies() {
        let a = parse("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{}{}trailing").unwrap();
        assert_eq!((a.status, a.body), (200, b"{}{}".to_vec()));
        let a = parse(
            "HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\n{\"a\r\n2\r\n\":\r\n2\r\n1}\r\n0\r\nX-T: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!((a.status, a.body), (404, b"{\"a\":1}".to_vec()));
        let a = parse("HTTP/1.0 500 Oops\nX: y\n\nuntil close").unwrap();
        assert_eq!((a.status, a.body), (500, b"until close".to_vec()));
    }

    #[test]
    fn malformed_answers_are_protocol_errors_not_panics() {
        for raw in [
            "",
            "garbage\r\n\r\n",
            "HTTP/1.1 abc OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            "HTTP/1.1 200 OK\r\nX: y",
        ] {
            let e = parse(raw).expect_err(raw);
            assert!(
                matches!(e, Error::Protocol(_) | Error::Io { .. }),
                "{raw:?}: {e:?}"
            );
        }
    }

    #[test]
    fn segments_are_percent_encoded_so_a_name_cannot_change_the_path() {
        assert_eq!(segment("chat-1.x_y~"), "chat-1.x_y~");
        assert_eq!(segment("a/b?c d\r\n"), "a%2Fb%3Fc%20d%0D%0A");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn tcp_addresses_parse_with_or_without_a_scheme() {
        let want = Endpoint::Tcp("127.0.0.1:7411".parse().unwrap());
        assert_eq!(Endpoint::tcp("127.0.0.1:7411").unwrap(), want);
        assert_eq!(Endpoint::tcp("http://127.0.0.1:7411/").unwrap(), want);
        assert!(matches!(
            Endpoint::tcp("localhost:7411").unwrap(),
            Endpoint::Tcp(a) if a.ip().is_loopback() && a.port() == 7411
        ));
        for bad in [
            "",
            "127.0.0.1",
            "http://127.0.0.1:7411/api",
            "127.0.0.1:notaport",
        ] {
            assert!(
                matches!(Endpoint::tcp(bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_request_head_names_host_token_and_length() {
        let c = Client::new(
            Endpoint::Tcp("0.0.0.0:7411".parse().unwrap()),
            Some("abc".into()),
        );
        let h = c.head(&Request {
            method: "POST",
            path: "/api/v1/apply",
            content_type: Some("application/yaml"),
            body: b"kind: x",
        });
        assert!(
            h.starts_with("POST /api/v1/apply HTTP/1.1\r\nHost: localhost:7411\r\n"),
            "{h}"
        );
        assert!(h.contains("Content-Length: 7\r\n"), "{h}");
        assert!(h.contains("Content-Type: application/yaml\r\n"), "{h}");
        assert!(h.contains("Authorization: Bearer abc\r\n"), "{h}");
        assert!(h.ends_with("\r\n\r\n"), "{h}");
    }

    #[test]
    fn tokens_with_spaces_or_line_breaks_are_refused() {
        assert!(check_token("0123abcd").is_ok());
        for bad in ["", "a b", "a\r\nX-Evil: 1", "é"] {
            assert!(check_token(bad).is_err(), "{bad:?}");
        }
    }
}
