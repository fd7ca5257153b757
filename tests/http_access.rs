//! The client port's HTTP access controls, side by side with the real etcd 3.4.23:
//! `--host-whitelist` (a Host header off the list gets etcd's 421 answer against DNS
//! rebinding, CVE-2018-5702), `--cors` (the `Access-Control-Allow-*` headers only for
//! allowed origins, OPTIONS preflights answered at once) and `--enable-grpc-gateway=false`
//! (no JSON routes). gRPC is subject to none of them, in etcd as here.
//!
//! Each request goes to the server under test and to etcd started with the same flags;
//! status, the CORS and content-type headers, and the body (JSON bodies only as JSON,
//! since ids differ) must be the same. With `DETCD_TEST_SERVER=etcd` both sides are etcd.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Kind, Server};

/// What one raw HTTP/1.1 answer holds that the comparison looks at.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    /// `access-control-*` and `content-type` headers, lower-cased names, sorted.
    headers: Vec<(String, String)>,
    /// The body, or `<json>` for a JSON body (its ids differ between clusters).
    body: String,
}

/// Sends one request with exactly these headers (the Host header among them) and reads
/// the answer until the server closes the connection.
fn send(server: &Server, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let addr = server
        .client_url()
        .trim_start_matches("http://")
        .to_string();
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    parse(&String::from_utf8_lossy(&raw))
}

fn parse(raw: &str) -> Answer {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let mut headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .filter(|(n, _)| n.starts_with("access-control-") || n == "content-type")
        .collect();
    headers.sort();
    let body = if body.starts_with('{') && serde_json::from_str::<serde_json::Value>(body).is_ok() {
        "<json>".to_string()
    } else {
        body.to_string()
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// One request, with the Host header naming `host` plus the client port.
struct Probe {
    method: &'static str,
    path: &'static str,
    host: &'static str,
    origin: Option<&'static str>,
    body: &'static str,
}

fn probe(
    method: &'static str,
    path: &'static str,
    host: &'static str,
    origin: Option<&'static str>,
) -> Probe {
    Probe {
        method,
        path,
        host,
        origin,
        body: if method == "POST" {
            r#"{"key":"Zm9v"}"#
        } else {
            ""
        },
    }
}

fn ask(server: &Server, p: &Probe) -> Answer {
    let port = server
        .client_url()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let host = if p.host.contains(':') || p.host.starts_with("bare:") {
        p.host.trim_start_matches("bare:").to_string()
    } else {
        format!("{}:{port}", p.host)
    };
    let mut headers = vec![("Host", host.as_str())];
    if let Some(o) = p.origin {
        headers.push(("Origin", o));
    }
    send(server, p.method, p.path, &headers, p.body)
}

/// Starts the server under test and etcd with `flags`, sends every probe to both and
/// requires the same answers. Returns the answers of the server under test.
fn compare(flags: &[&str], probes: &[Probe]) -> Vec<Answer> {
    let ours = Server::start_with_args(flags);
    let reference = Server::start_kind_with_args(Kind::Etcd, flags);
    let mut answers = Vec::new();
    for p in probes {
        let a = ask(&ours, p);
        let b = ask(&reference, p);
        assert_eq!(
            a,
            b,
            "{} {} with Host {} and Origin {:?}: {} (left) and etcd (right) differ",
            p.method,
            p.path,
            p.host,
            p.origin,
            ours.kind().name()
        );
        answers.push(a);
    }
    // gRPC is not behind the access controller: etcdctl, whose :authority is 127.0.0.1,
    // works whatever the whitelist says.
    for s in [&ours, &reference] {
        let out = s.etcdctl(&["put", "grpc", "works"]);
        assert_eq!(out.ok(), "OK\n", "{}", s.kind().name());
    }
    answers
}

#[test]
fn host_whitelist_and_cors_origins_are_enforced() {
    let flags = [
        "--cors",
        "https://a.example:443,http://b.example:80",
        "--host-whitelist",
        "localhost,good.example",
    ];
    let probes = [
        probe(
            "GET",
            "/version",
            "127.0.0.1",
            Some("https://a.example:443"),
        ),
        probe(
            "GET",
            "/version",
            "localhost",
            Some("https://a.example:443"),
        ),
        probe(
            "GET",
            "/version",
            "bare:good.example",
            Some("http://b.example:80"),
        ),
        probe("GET", "/health", "localhost", Some("https://c.example:443")),
        probe("GET", "/health", "localhost", None),
        probe("GET", "/metrics", "evil.example", None),
        probe("POST", "/v3/kv/range", "bare:evil", None),
        probe(
            "POST",
            "/v3/kv/range",
            "localhost",
            Some("https://a.example:443"),
        ),
        probe(
            "POST",
            "/v3beta/kv/range",
            "good.example",
            Some("https://c.example:443"),
        ),
        probe(
            "OPTIONS",
            "/v3/kv/range",
            "localhost",
            Some("http://b.example:80"),
        ),
        probe(
            "OPTIONS",
            "/anything",
            "localhost",
            Some("https://c.example:443"),
        ),
        probe(
            "OPTIONS",
            "/version",
            "evil.example",
            Some("http://b.example:80"),
        ),
        probe("GET", "/version", "bare:[::1]:2379", None),
    ];
    let answers = compare(&flags, &probes);
    // The comparison alone would pass if both ignored the flags; these pin what etcd does.
    assert_eq!(answers[0].status, 421);
    assert!(answers[0]
        .body
        .contains("etcd --host-whitelist \"127.0.0.1\""));
    assert_eq!(answers[1].status, 200);
    let allow = |a: &Answer| {
        a.headers
            .iter()
            .find(|(n, _)| n == "access-control-allow-origin")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(allow(&answers[1]).as_deref(), Some("https://a.example:443"));
    assert_eq!(allow(&answers[3]), None);
    assert_eq!(answers[5].status, 421);
    assert_eq!(answers[6].status, 421);
    assert_eq!(answers[7].status, 200);
    assert_eq!((answers[9].status, answers[9].body.as_str()), (200, ""));
    assert_eq!(allow(&answers[9]).as_deref(), Some("http://b.example:80"));
    assert_eq!(answers[11].status, 421);
}

#[test]
fn default_access_allows_every_host_and_origin() {
    let probes = [
        probe(
            "GET",
            "/version",
            "evil.example",
            Some("https://c.example:443"),
        ),
        probe("POST", "/v3/kv/range", "bare:evil", None),
        probe("OPTIONS", "/v3/kv/range", "evil.example", None),
    ];
    let answers = compare(&[], &probes);
    for a in &answers {
        assert_eq!(a.status, 200, "{a:?}");
        assert!(a
            .headers
            .iter()
            .any(|(n, v)| n == "access-control-allow-origin" && v == "*"));
    }
}

#[test]
fn gateway_can_be_turned_off() {
    let probes = [
        probe("POST", "/v3/kv/range", "localhost", None),
        probe("POST", "/v3beta/kv/range", "localhost", None),
        probe("POST", "/v3/kv/put", "localhost", None),
        probe("GET", "/health", "localhost", None),
        probe("GET", "/version", "localhost", None),
    ];
    let answers = compare(&["--enable-grpc-gateway=false"], &probes);
    for a in &answers[..3] {
        assert_eq!((a.status, a.body.as_str()), (404, "404 page not found\n"));
    }
    assert_eq!(answers[3].status, 200);
}
