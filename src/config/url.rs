//! A small URL type covering exactly what etcd accepts in its URL flags.
//!
//! etcd parses `--listen-client-urls` and friends with Go's `net/url` and then
//! insists on a known scheme, a `host:port` authority and no path. We only need
//! those parts, so a tiny parser is clearer than a general-purpose URL crate.

use std::fmt;

/// A URL as accepted by etcd's URL-list flags: `scheme://host:port` with no path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Url {
    /// The lower-case scheme: `http`, `https`, `unix` or `unixs`.
    pub scheme: String,
    /// The host without IPv6 brackets, e.g. `localhost`, `127.0.0.1` or `::1`.
    ///
    /// For `unix`/`unixs` URLs etcd treats `host:port` as a socket path, so the
    /// host is kept verbatim.
    pub host: String,
    /// The port; an empty port (`http://host:`) is 0, which Go treats as "any port".
    pub port: u16,
}

impl Url {
    /// Parses one URL the way etcd's `types.NewURLs` does, with etcd's messages.
    ///
    /// Surrounding whitespace is trimmed, as etcd does before parsing.
    pub fn parse(input: &str) -> Result<Url, String> {
        let s = input.trim();
        let Some((scheme, rest)) = split_scheme(s) else {
            return Err(format!(
                "URL scheme must be http, https, unix, or unixs: {s}"
            ));
        };
        let scheme = scheme.to_ascii_lowercase();
        if !matches!(scheme.as_str(), "http" | "https" | "unix" | "unixs") {
            return Err(format!(
                "URL scheme must be http, https, unix, or unixs: {s}"
            ));
        }
        // Go keeps the query and fragment separately and etcd ignores them, so
        // cut them off before looking at the authority and path.
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let Some(rest) = rest.strip_prefix("//") else {
            // "http:foo" is an opaque URL in Go: no host at all.
            return Err(format!(
                "URL address does not have the form \"host:port\": {s}"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        // User information ("user:pass@") is legal in Go URLs and ignored by etcd.
        let authority = authority.rsplit('@').next().unwrap_or_default();
        // Go's `parseHost` refuses an IPv6 literal that is not closed before it looks at
        // the port.
        if authority.starts_with('[') && !authority.contains(']') {
            return Err(format!("parse {s:?}: missing ']' in host"));
        }
        if let Some(bad) = authority
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | '`'))
        {
            return Err(format!(
                "parse {s:?}: invalid character {:?} in host name",
                bad.to_string()
            ));
        }
        let Some((host, port)) = split_host_port(authority) else {
            return Err(format!(
                "URL address does not have the form \"host:port\": {s}"
            ));
        };
        if !path.is_empty() {
            return Err(format!("URL must not contain a path: {s}"));
        }
        let port = if port.is_empty() {
            0
        } else if port.bytes().all(|b| b.is_ascii_digit()) {
            port.parse::<u16>()
                .map_err(|_| format!("invalid port {port:?} in URL: {s}"))?
        } else {
            return Err(format!("parse {s:?}: invalid port \":{port}\" after host"));
        };
        Ok(Url {
            scheme,
            host: host.to_string(),
            port,
        })
    }

    /// Parses a comma-separated list like etcd's `types.NewURLs`: every element
    /// must be valid, and the result is sorted by its string form.
    pub fn parse_list(input: &str) -> Result<Vec<Url>, String> {
        let mut urls = input
            .split(',')
            .map(Url::parse)
            .collect::<Result<Vec<_>, _>>()?;
        urls.sort_by_key(|u| u.to_string());
        Ok(urls)
    }

    /// The `host:port` string to bind or dial, with brackets around IPv6 hosts.
    pub fn socket_addr_string(&self) -> String {
        if self.host.contains(':') && !self.is_unix() {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether this is a Unix-domain socket URL (`unix` or `unixs`).
    pub fn is_unix(&self) -> bool {
        self.scheme == "unix" || self.scheme == "unixs"
    }

    /// Whether the scheme asks for TLS (`https` or `unixs`).
    pub fn is_tls(&self) -> bool {
        self.scheme == "https" || self.scheme == "unixs"
    }
}

impl fmt::Display for Url {
    /// Go's `URL.String`, which etcd prints: the host's bytes outside the characters a
    /// host may hold are %-escaped (`http://%C3%A9:1`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = escape_host(&self.host);
        if self.host.contains(':') && !self.is_unix() {
            write!(f, "{}://[{host}]:{}", self.scheme, self.port)
        } else {
            write!(f, "{}://{host}:{}", self.scheme, self.port)
        }
    }
}

/// Go's `escape(host, encodeHost)`: unreserved characters, the sub-delimiters and
/// `:[]<>"` stay, every other byte becomes `%XX` (upper-case hex).
fn escape_host(host: &str) -> String {
    let mut out = String::with_capacity(host.len());
    for b in host.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]<>\"".contains(&b);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Splits `scheme:rest` when the scheme is syntactically valid, as Go's `getScheme` does.
fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let colon = s.find(':')?;
    let scheme = &s[..colon];
    let mut chars = scheme.chars();
    let first = chars.next()?;
    if !first.is_ascii_alphabetic()
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    Some((scheme, &s[colon + 1..]))
}

/// Mirrors Go's `net.SplitHostPort`: `host:port` or `[v6host]:port`, where a
/// bare host containing colons is rejected as ambiguous.
pub(crate) fn split_host_port(hostport: &str) -> Option<(&str, &str)> {
    if let Some(rest) = hostport.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &rest[..end];
        let port = rest[end + 1..].strip_prefix(':')?;
        if port.contains([':', '[', ']']) {
            return None;
        }
        return Some((host, port));
    }
    let colon = hostport.rfind(':')?;
    let host = &hostport[..colon];
    if host.contains([':', '[', ']']) {
        return None;
    }
    Some((host, &hostport[colon + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_urls() {
        let u = Url::parse(" http://127.0.0.1:2379 ").unwrap();
        assert_eq!(u.scheme, "http");
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 2379);
        assert_eq!(u.socket_addr_string(), "127.0.0.1:2379");
        let v6 = Url::parse("https://[::1]:2380").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "https://[::1]:2380");
        assert!(v6.is_tls());
        let unix = Url::parse("unix://sock:1").unwrap();
        assert!(unix.is_unix());
        assert_eq!(Url::parse("HTTP://a:1").unwrap().scheme, "http");
        assert_eq!(Url::parse("http://a:").unwrap().port, 0);
    }

    #[test]
    fn rejects_like_etcd() {
        assert_eq!(
            Url::parse("foo").unwrap_err(),
            "URL scheme must be http, https, unix, or unixs: foo"
        );
        assert_eq!(
            Url::parse("ftp://a:1").unwrap_err(),
            "URL scheme must be http, https, unix, or unixs: ftp://a:1"
        );
        assert_eq!(
            Url::parse("http://a").unwrap_err(),
            "URL address does not have the form \"host:port\": http://a"
        );
        assert_eq!(
            Url::parse("http://a:2379/path").unwrap_err(),
            "URL must not contain a path: http://a:2379/path"
        );
        assert!(Url::parse("http://::1:2379").is_err());
        assert!(Url::parse("http://a:99999").is_err());
        assert!(Url::parse("http://a:xy").is_err());
        assert!(Url::parse("").is_err());
        assert_eq!(
            Url::parse("http://[::1").unwrap_err(),
            "parse \"http://[::1\": missing ']' in host"
        );
    }

    #[test]
    fn hosts_print_escaped_as_go_prints_them() {
        assert_eq!(
            Url::parse("http://\u{e9}:1").unwrap().to_string(),
            "http://%C3%A9:1"
        );
        assert_eq!(
            Url::parse("http://a-b.c_d~:1").unwrap().to_string(),
            "http://a-b.c_d~:1"
        );
    }

    #[test]
    fn lists_are_sorted() {
        let l = Url::parse_list("http://b:1,http://a:1").unwrap();
        assert_eq!(l[0].host, "a");
        assert!(Url::parse_list("http://a:1,").is_err());
    }
}
