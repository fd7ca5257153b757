//! A minimal HTTP/1.1 client over `std::net::TcpStream`, for the gateway and metrics
//! tests: no HTTP crate or `curl` needed, and every read is bounded by a timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// An HTTP response: status, headers (lower-case names) and the decoded body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// Splits `http://host:port` into `host:port`.
fn authority(base_url: &str) -> &str {
    base_url.trim_start_matches("http://").trim_end_matches('/')
}

fn connect(base_url: &str, timeout: Duration) -> TcpStream {
    let s = TcpStream::connect(authority(base_url)).expect("connect");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    s.set_write_timeout(Some(timeout)).expect("timeout");
    s
}

fn write_request(
    s: &mut TcpStream,
    base_url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        authority(base_url),
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("write request");
}

fn read_head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header line");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    (status, headers)
}

/// Reads one chunk of a chunked body; `None` at the last chunk.
fn read_chunk(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut size = String::new();
    r.read_line(&mut size).ok()?;
    let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
    if size == 0 {
        return None;
    }
    let mut buf = vec![0; size + 2];
    r.read_exact(&mut buf).ok()?;
    buf.truncate(size);
    Some(buf)
}

/// Sends one request and reads the whole response (the server closes the connection).
pub fn request(
    base_url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut s = connect(base_url, Duration::from_secs(20));
    write_request(&mut s, base_url, method, path, headers, body);
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        while let Some(c) = read_chunk(&mut r) {
            body.extend(c);
        }
    } else if let Some(len) = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.resize(len, 0);
        r.read_exact(&mut body).expect("body");
    } else {
        let _ = r.read_to_end(&mut body);
    }
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// `POST path` with a JSON body.
pub fn post(base_url: &str, path: &str, body: &str) -> Reply {
    request(base_url, "POST", path, &[], body)
}

/// `GET path`.
pub fn get(base_url: &str, path: &str) -> Reply {
    request(base_url, "GET", path, &[], "")
}

/// Posts a streaming request (a watch) and returns the first `n` newline-delimited
/// lines of its response body, calling `between` once the response headers arrived
/// (to make the writes the stream should report). Gives up after `timeout`.
pub fn stream_lines(
    base_url: &str,
    path: &str,
    body: &str,
    n: usize,
    timeout: Duration,
    between: impl FnOnce(),
) -> Vec<String> {
    let mut s = connect(base_url, timeout);
    write_request(&mut s, base_url, "POST", path, &[], body);
    let mut r = BufReader::new(s);
    let (status, _) = read_head(&mut r);
    assert_eq!(status, 200, "stream status");
    let deadline = Instant::now() + timeout;
    let mut pending = String::new();
    let mut lines = Vec::new();
    let mut between = Some(between);
    while lines.len() < n && Instant::now() < deadline {
        let Some(chunk) = read_chunk(&mut r) else {
            break;
        };
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = pending.find('\n') {
            lines.push(pending[..i].to_string());
            pending.drain(..=i);
        }
        if let Some(f) = between.take() {
            f();
        }
    }
    lines
}

/// Standard base64 with padding, as the gateway wants bytes fields.
pub fn enc(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
