//! Who may use the client port's HTTP side, as etcd 3.4's `accessController` decides:
//! the Host-header whitelist (`--host-whitelist`), the CORS origins (`--cors`) and whether
//! the JSON gateway is served at all (`--enable-grpc-gateway`).
//!
//! These are pure decisions on strings; the HTTP layer applies them. gRPC requests are
//! not subject to them, as in etcd, whose gRPC server sits beside the HTTP mux rather
//! than behind the access controller.

/// The HTTP access settings of a client listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    /// `--cors`: origins a browser may call from; empty or containing `*` allows all.
    pub cors: Vec<String>,
    /// `--host-whitelist`: Host header values served over plain HTTP; empty or containing
    /// `*` allows all.
    pub host_whitelist: Vec<String>,
    /// `--enable-grpc-gateway`: whether `/v3/` and `/v3beta/` JSON routes are served.
    pub gateway_enabled: bool,
}

impl Default for AccessPolicy {
    /// etcd's defaults: every origin, every host, the gateway on.
    fn default() -> Self {
        AccessPolicy {
            cors: vec!["*".to_string()],
            host_whitelist: vec!["*".to_string()],
            gateway_enabled: true,
        }
    }
}

impl AccessPolicy {
    /// Whether a request naming `host` (the Host header without its port) may be
    /// served over plain HTTP. Requests over TLS are always served: a DNS-rebinding page
    /// cannot present the member's certificate name.
    pub fn host_allowed(&self, host: &str) -> bool {
        allows(&self.host_whitelist, host)
    }

    /// The `Access-Control-Allow-Origin` value for a request with this `Origin` header,
    /// or `None` when no CORS headers are to be written (the origin is not allowed).
    pub fn allow_origin(&self, origin: Option<&str>) -> Option<String> {
        if allows_all(&self.cors) {
            return Some("*".to_string());
        }
        let origin = origin?;
        self.cors
            .iter()
            .any(|o| o == origin)
            .then(|| origin.to_string())
    }
}

fn allows_all(list: &[String]) -> bool {
    list.is_empty() || list.iter().any(|s| s == "*")
}

fn allows(list: &[String], value: &str) -> bool {
    allows_all(list) || list.iter().any(|s| s == value)
}

/// The host part of a Host header, as etcd's `httputil.GetHostname` takes it: Go's
/// `net.SplitHostPort` when the value has a port, the whole value when it has none.
pub fn hostname(host_header: &str) -> &str {
    if let Some(rest) = host_header.strip_prefix('[') {
        // "[::1]:2379" gives "::1"; "[::1]" has no port, so Go keeps it whole.
        return match rest.split_once("]:") {
            Some((host, _)) if !host.contains(['[', ']']) => host,
            _ => host_header,
        };
    }
    match host_header.split_once(':') {
        Some((host, port)) if !port.contains(':') => host,
        _ => host_header,
    }
}

/// The body of etcd's 421 answer to a Host header off the whitelist (CVE-2018-5702),
/// with the newline Go's `http.Error` adds. `host` is quoted as Go's `%q` quotes it (for
/// printable hosts, which are all a Host header can hold, the same as a JSON string).
pub fn rebinding_refusal(host: &str) -> String {
    let mut quoted = String::new();
    crate::gojson::push_string(&mut quoted, host, crate::gojson::Html::Keep);
    format!(
        "\netcd received your request, but the Host header was unrecognized.\n\n\
         To fix this, choose one of the following options:\n\
         - Enable TLS, then any HTTPS request will be allowed.\n\
         - Add the hostname you want to use to the whitelist in settings.\n  \
         - e.g. etcd --host-whitelist {}\n\n\
         This requirement has been added to help prevent \"DNS Rebinding\" attacks (CVE-2018-5702).\n\n",
        quoted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(cors: &[&str], hosts: &[&str]) -> AccessPolicy {
        AccessPolicy {
            cors: cors.iter().map(|s| s.to_string()).collect(),
            host_whitelist: hosts.iter().map(|s| s.to_string()).collect(),
            gateway_enabled: true,
        }
    }

    #[test]
    fn hostname_follows_go_split_host_port() {
        assert_eq!(hostname("localhost:2379"), "localhost");
        assert_eq!(hostname("evil.example"), "evil.example");
        assert_eq!(hostname("[::1]:2379"), "::1");
        assert_eq!(hostname("[::1]"), "[::1]");
        assert_eq!(hostname("::1"), "::1");
        assert_eq!(hostname(""), "");
    }

    #[test]
    fn whitelist_and_origins() {
        let open = AccessPolicy::default();
        assert!(open.host_allowed("anything"));
        assert_eq!(open.allow_origin(None).as_deref(), Some("*"));
        let closed = policy(&["https://a.example:443"], &["localhost", "good.example"]);
        assert!(closed.host_allowed("localhost"));
        assert!(closed.host_allowed("good.example"));
        assert!(!closed.host_allowed("127.0.0.1"));
        assert!(!closed.host_allowed("evil.example"));
        assert_eq!(
            closed
                .allow_origin(Some("https://a.example:443"))
                .as_deref(),
            Some("https://a.example:443")
        );
        assert_eq!(closed.allow_origin(Some("https://c.example")), None);
        assert_eq!(closed.allow_origin(None), None);
        assert!(policy(&[], &[]).host_allowed("x"));
    }

    #[test]
    fn refusal_names_the_host() {
        let body = rebinding_refusal("evil");
        assert!(body.starts_with("\netcd received your request"));
        assert!(body.contains("  - e.g. etcd --host-whitelist \"evil\"\n\n"));
        assert!(body.ends_with("(CVE-2018-5702).\n\n"));
        // The length etcd 3.4.23 answers with for this host.
        assert_eq!(body.len(), 366);
    }
}
