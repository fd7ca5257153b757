//! TLS between clients and members and among members, driven by the real `etcdctl`
//! 3.4.23: client TLS, client-certificate authentication (with the certificate's common
//! name as the user once auth is enabled), revoked certificates, auto TLS, cipher suites,
//! start-up errors, and peer TLS in a three-member cluster.
//!
//! Certificates are made at run time with rcgen (a CA, a server certificate for
//! 127.0.0.1 and localhost, client certificates with CN=root and CN=user0, a revoked one
//! and a CRL listing it), so no private key is committed. Expected strings were recorded
//! from the real etcd 3.4.23: `DETCD_TEST_SERVER=etcd cargo test --test tls` runs the same
//! tests against it.

mod common;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{etcdctl_bin, free_port, run_with_timeout, terminate, Kind, Output, READY_MARKER};

/// How long a member gets to print the ready marker.
const READY_TIMEOUT: Duration = Duration::from_secs(25);
/// The serial number of the revoked client certificate.
const REVOKED_SERIAL: u64 = 0x7e70_4b3d;

/// A test certificate authority and the files it issued, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("detcd-tls-")
            .tempdir()
            .unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = name("detcd test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        Pki {
            dir,
            ca_cert,
            ca_key,
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    /// Issues `<file>.pem` and `<file>.key` with common name `cn`. A server certificate
    /// (valid for 127.0.0.1 and localhost) may also be presented as a client certificate,
    /// as members do when they dial each other.
    fn issue(&self, file: &str, cn: &str, server: bool, serial: u64) {
        let sans = if server {
            vec!["127.0.0.1".to_string(), "localhost".to_string()]
        } else {
            Vec::new()
        };
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params.distinguished_name = name(cn);
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        if server {
            params
                .extended_key_usages
                .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        fs::write(self.dir.path().join(format!("{file}.pem")), cert.pem()).unwrap();
        fs::write(
            self.dir.path().join(format!("{file}.key")),
            key.serialize_pem(),
        )
        .unwrap();
    }

    /// Writes `crl.pem`, revoking the certificate with serial number `serial`.
    fn revoke(&self, serial: u64) {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(serial),
                revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.ca_cert, &self.ca_key).unwrap();
        fs::write(self.dir.path().join("crl.pem"), crl.pem().unwrap()).unwrap();
    }

    /// etcdctl's flags to trust the CA and present the certificate `file`.
    fn etcdctl_cert(&self, file: &str) -> Vec<String> {
        vec![
            "--cacert".into(),
            self.path("ca.pem"),
            "--cert".into(),
            self.path(&format!("{file}.pem")),
            "--key".into(),
            self.path(&format!("{file}.key")),
        ]
    }
}

fn name(cn: &str) -> rcgen::DistinguishedName {
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, cn);
    dn
}

/// One member process with whatever URLs and flags a test gives it.
struct Member {
    child: Option<Child>,
    log: PathBuf,
    client_url: String,
    /// Keeps the data directory for the member's lifetime.
    _dir: tempfile::TempDir,
    data_dir: PathBuf,
}

impl Member {
    /// Spawns the server under test with `--name`, `--data-dir` and `args`.
    fn spawn(name: &str, client_url: &str, args: &[String]) -> Member {
        let dir = tempfile::Builder::new()
            .prefix("detcd-tls-member-")
            .tempdir()
            .unwrap();
        let data_dir = dir.path().join("data");
        let log = dir.path().join("server.log");
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(Kind::under_test().binary())
            .args(["--name", name])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn the server");
        Member {
            child: Some(child),
            log,
            client_url: client_url.to_string(),
            _dir: dir,
            data_dir,
        }
    }

    /// A single-member cluster on fresh ports, its client URL with `client_scheme`, with
    /// `args` added.
    fn single(client_scheme: &str, args: &[&str]) -> Member {
        let client = format!("{client_scheme}://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let mut all: Vec<String> = [
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("tls0={peer}"),
            "--bcrypt-cost",
            "4",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        all.extend(args.iter().map(|s| s.to_string()));
        let mut m = Member::spawn("tls0", &client, &all);
        m.wait_ready();
        m
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn is_ready(&self) -> bool {
        self.log_text().contains(READY_MARKER)
    }

    #[track_caller]
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.is_ready() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the server exited with {status}; log:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "the server did not become ready; log:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
        // The marker is printed as the listener starts; wait until it accepts.
        let addr = self.client_url.split("://").nth(1).unwrap().to_string();
        while TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "{addr} does not accept");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit by itself (a refused start) and returns its log.
    #[track_caller]
    fn wait_exit(&mut self) -> String {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                assert!(!status.success(), "the server exited successfully");
                self.child = None;
                return self.log_text();
            }
            assert!(
                Instant::now() < deadline,
                "the server kept running; log:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `etcdctl --endpoints <client URL> <tls> <args>`, with short timeouts so that a
    /// refused connection fails quickly.
    fn etcdctl(&self, tls: &[String], args: &[&str]) -> Output {
        etcdctl(&self.client_url, tls, args)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            eprintln!("--- server log {} ---\n{}", self.log.display(), {
                let text = self.log_text();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(30)..].join("\n")
            });
        }
    }
}

fn etcdctl(endpoints: &str, tls: &[String], args: &[&str]) -> Output {
    let mut cmd = Command::new(etcdctl_bin());
    cmd.env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoints])
        .args(["--dial-timeout", "2s", "--command-timeout", "4s"])
        .args(tls)
        .args(args);
    run_with_timeout(cmd, None, Duration::from_secs(30))
}

fn cacert(pki: &Pki) -> Vec<String> {
    vec!["--cacert".into(), pki.path("ca.pem")]
}

/// The server flags for a certificate `file` issued by `pki`.
fn server_flags(pki: &Pki, file: &str) -> Vec<String> {
    vec![
        "--cert-file".into(),
        pki.path(&format!("{file}.pem")),
        "--key-file".into(),
        pki.path(&format!("{file}.key")),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn client_tls_serves_https_and_refuses_plain_connections() {
    let pki = Pki::new();
    pki.issue("server", "server", true, 1);
    let m = Member::single("https", &strs(&server_flags(&pki, "server")));
    assert_eq!(
        m.etcdctl(&cacert(&pki), &["put", "foo", "bar"]).ok(),
        "OK\n"
    );
    assert_eq!(m.etcdctl(&cacert(&pki), &["get", "foo"]).ok(), "foo\nbar\n");
    // A client speaking plain HTTP/2 to the TLS port gets nowhere.
    let plain = m.client_url.replace("https://", "http://");
    let out = etcdctl(&plain, &[], &["get", "foo"]);
    assert!(!out.success(), "plain text was served: {}", out.stdout);
    assert_eq!(out.err_line(), "Error: context deadline exceeded");
    // A client that does not trust the server's CA does not connect either.
    let out = m.etcdctl(&[], &["get", "foo"]);
    assert!(!out.success(), "an untrusted server was accepted");
}

#[test]
fn client_cert_auth_requires_a_certificate_whose_cn_is_the_user() {
    let pki = Pki::new();
    pki.issue("server", "server", true, 1);
    pki.issue("root", "root", false, 2);
    pki.issue("user0", "user0", false, 3);
    let mut flags = server_flags(&pki, "server");
    flags.extend([
        "--trusted-ca-file".to_string(),
        pki.path("ca.pem"),
        "--client-cert-auth".to_string(),
    ]);
    let m = Member::single("https", &strs(&flags));
    let root = pki.etcdctl_cert("root");
    let user0 = pki.etcdctl_cert("user0");

    // Without a client certificate the handshake fails.
    let out = m.etcdctl(&cacert(&pki), &["put", "foo", "bar"]);
    assert!(!out.success(), "served without a client certificate");
    assert_eq!(out.err_line(), "Error: context deadline exceeded");

    // etcd's walkthrough, as the root certificate (auth is still off).
    for args in [
        vec!["user", "add", "root:rootpw"],
        vec!["role", "add", "root"],
        vec!["user", "grant-role", "root", "root"],
        vec!["role", "add", "role0"],
        vec!["role", "grant-permission", "role0", "readwrite", "foo"],
        vec!["user", "add", "user0:pw0"],
        vec!["user", "grant-role", "user0", "role0"],
    ] {
        m.etcdctl(&root, &args).ok();
    }
    // Once auth is on, the certificate's CN is the user: CN=root may enable it.
    assert_eq!(
        m.etcdctl(&root, &["auth", "enable"]).ok(),
        "Authentication Enabled\n"
    );
    assert_eq!(m.etcdctl(&user0, &["put", "foo", "bar"]).ok(), "OK\n");
    assert_eq!(m.etcdctl(&user0, &["get", "foo"]).ok(), "foo\nbar\n");
    assert_eq!(
        m.etcdctl(&user0, &["put", "other", "x"]).err_line(),
        "Error: etcdserver: permission denied"
    );
    assert_eq!(
        m.etcdctl(&user0, &["get", "other"]).err_line(),
        "Error: etcdserver: permission denied"
    );
    assert_eq!(
        m.etcdctl(&user0, &["user", "list"]).err_line(),
        "Error: etcdserver: permission denied"
    );
    // CN=root holds the root role.
    assert_eq!(m.etcdctl(&root, &["put", "other", "x"]).ok(), "OK\n");
    // A token, when given, takes precedence over the certificate, as in etcd.
    let mut root_with_user0_cert = user0.clone();
    root_with_user0_cert.extend(["--user".to_string(), "root:rootpw".to_string()]);
    assert_eq!(
        m.etcdctl(&root_with_user0_cert, &["put", "other", "y"])
            .ok(),
        "OK\n"
    );
    let mut user0_with_root_cert = root.clone();
    user0_with_root_cert.extend(["--user".to_string(), "user0:pw0".to_string()]);
    assert_eq!(
        m.etcdctl(&user0_with_root_cert, &["put", "other", "z"])
            .err_line(),
        "Error: etcdserver: permission denied"
    );
}

#[test]
fn client_certificate_common_name_is_ignored_without_client_cert_auth() {
    // A trusted CA alone makes client certificates mandatory (etcd's
    // RequireAndVerifyClientCert), but only --client-cert-auth makes the CN a user.
    let pki = Pki::new();
    pki.issue("server", "server", true, 1);
    pki.issue("root", "root", false, 2);
    let mut flags = server_flags(&pki, "server");
    flags.extend(["--trusted-ca-file".to_string(), pki.path("ca.pem")]);
    let m = Member::single("https", &strs(&flags));
    let root = pki.etcdctl_cert("root");
    assert!(!m.etcdctl(&cacert(&pki), &["get", "foo"]).success());
    for args in [
        vec!["user", "add", "root:rootpw"],
        vec!["role", "add", "root"],
        vec!["user", "grant-role", "root", "root"],
        vec!["auth", "enable"],
    ] {
        m.etcdctl(&root, &args).ok();
    }
    let out = m.etcdctl(&root, &["put", "foo", "bar"]);
    assert_eq!(out.err_line(), "Error: etcdserver: user name is empty");
}

#[test]
fn revoked_client_certificate_is_refused() {
    let pki = Pki::new();
    pki.issue("server", "server", true, 1);
    pki.issue("root", "root", false, 2);
    pki.issue("revoked", "root", false, REVOKED_SERIAL);
    pki.revoke(REVOKED_SERIAL);
    let mut flags = server_flags(&pki, "server");
    flags.extend([
        "--trusted-ca-file".to_string(),
        pki.path("ca.pem"),
        "--client-cert-auth".to_string(),
        "--client-crl-file".to_string(),
        pki.path("crl.pem"),
    ]);
    let m = Member::single("https", &strs(&flags));
    assert_eq!(
        m.etcdctl(&pki.etcdctl_cert("root"), &["put", "foo", "bar"])
            .ok(),
        "OK\n"
    );
    let out = m.etcdctl(&pki.etcdctl_cert("revoked"), &["get", "foo"]);
    assert!(!out.success(), "a revoked certificate was accepted");
    assert_eq!(out.err_line(), "Error: context deadline exceeded");
}

/// Certificates are rotated by replacing the files: as etcd reads `--cert-file` and
/// `--key-file` at every handshake, the next connection gets the new certificate without
/// a restart, and a new `--client-crl-file` takes effect for the next client.
#[test]
fn rotated_certificate_and_crl_files_take_effect_without_a_restart() {
    let pki = Pki::new();
    pki.issue("server", "server", true, 1);
    pki.issue("root", "root", false, 2);
    pki.issue("user0", "user0", false, 3);
    pki.revoke(99);
    let mut flags = server_flags(&pki, "server");
    flags.extend([
        "--trusted-ca-file".to_string(),
        pki.path("ca.pem"),
        "--client-cert-auth".to_string(),
        "--client-crl-file".to_string(),
        pki.path("crl.pem"),
    ]);
    let m = Member::single("https", &strs(&flags));
    assert_eq!(
        m.etcdctl(&pki.etcdctl_cert("user0"), &["put", "foo", "bar"])
            .ok(),
        "OK\n"
    );

    // A new CRL revoking user0's certificate refuses user0's next connection only.
    pki.revoke(3);
    let out = m.etcdctl(&pki.etcdctl_cert("user0"), &["get", "foo"]);
    assert!(!out.success(), "a certificate revoked on disk was accepted");
    assert_eq!(
        m.etcdctl(&pki.etcdctl_cert("root"), &["get", "foo"]).ok(),
        "foo\nbar\n"
    );

    // The server's certificate is replaced by one from another CA: clients that trust
    // only the new CA connect, and clients that trust only the old one no longer do.
    let other = Pki::new();
    other.issue("server", "server", true, 10);
    for ext in ["pem", "key"] {
        fs::copy(
            other.path(&format!("server.{ext}")),
            pki.path(&format!("server.{ext}")),
        )
        .unwrap();
    }
    let new_ca_with_old_client_cert = vec![
        "--cacert".to_string(),
        other.path("ca.pem"),
        "--cert".to_string(),
        pki.path("root.pem"),
        "--key".to_string(),
        pki.path("root.key"),
    ];
    assert_eq!(
        m.etcdctl(&new_ca_with_old_client_cert, &["get", "foo"])
            .ok(),
        "foo\nbar\n"
    );
    let out = m.etcdctl(&pki.etcdctl_cert("root"), &["get", "foo"]);
    assert!(!out.success(), "the old certificate is still served");
}

#[test]
fn auto_tls_generates_a_self_signed_certificate() {
    let m = Member::single("https", &["--auto-tls"]);
    let fixtures = m.data_dir.join("fixtures").join("client");
    let cert = fs::read_to_string(fixtures.join("cert.pem")).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(fixtures.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
    }
    let insecure: Vec<String> = vec![
        "--insecure-skip-tls-verify".into(),
        "--insecure-transport=false".into(),
    ];
    assert_eq!(m.etcdctl(&insecure, &["put", "foo", "bar"]).ok(), "OK\n");
    assert_eq!(m.etcdctl(&insecure, &["get", "foo"]).ok(), "foo\nbar\n");
    // The certificate is self-signed: a client that verifies it refuses it.
    let verify = vec!["--insecure-transport=false".to_string()];
    assert!(!m.etcdctl(&verify, &["get", "foo"]).success());
}

/// Handshakes with the member at `addr` offering only `suite` over TLS 1.2, trusting the
/// test CA; returns the handshake's error, if any.
fn handshake_with(
    addr: &str,
    pki: &Pki,
    suite: rustls::SupportedCipherSuite,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = fs::read(pki.path("ca.pem")).unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(&ca).unwrap();
    roots.add(der).unwrap();
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite];
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.flush().map_err(|e| e.to_string())?;
    // Writing drives the handshake to its end; a refused one fails here.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    tls.read(&mut byte).map_err(|e| e.to_string())?;
    Ok(())
}

#[test]
fn mismatched_cipher_suite_is_refused() {
    let pki = Pki::new();
    pki.issue("server", "server", true, 1);
    let mut flags = server_flags(&pki, "server");
    flags.extend([
        "--cipher-suites".to_string(),
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".to_string(),
    ]);
    let m = Member::single("https", &strs(&flags));
    let addr = m.client_url.trim_start_matches("https://").to_string();
    let suites = rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384;
    let refused = handshake_with(&addr, &pki, suites).unwrap_err();
    assert!(refused.contains("HandshakeFailure"), "{refused}");
    let allowed = rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256;
    handshake_with(&addr, &pki, allowed).unwrap();
    // etcdctl negotiates a suite the member allows.
    assert_eq!(
        m.etcdctl(&cacert(&pki), &["put", "foo", "bar"]).ok(),
        "OK\n"
    );
}

#[test]
fn bad_tls_configuration_refuses_to_start() {
    let pki = Pki::new();
    pki.issue("server", "server", true, 1);
    fs::write(pki.path("bad.pem"), "bad\n").unwrap();
    let start = |client_scheme: &str, peer_scheme: &str, args: &[String]| {
        let client = format!("{client_scheme}://127.0.0.1:{}", free_port());
        let peer = format!("{peer_scheme}://127.0.0.1:{}", free_port());
        let mut all: Vec<String> = [
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("bad={peer}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        all.extend(args.iter().cloned());
        let mut m = Member::spawn("bad", &client, &all);
        (m.wait_exit(), client, peer)
    };
    let (log, client, _) = start("https", "http", &[]);
    assert!(
        log.contains(&format!(
            "TLS key/cert (--cert-file, --key-file) must be provided for client url {client} with HTTPS scheme"
        )),
        "{log}"
    );
    let (log, _, peer) = start("http", "https", &[]);
    assert!(
        log.contains(&format!(
            "cannot listen on TLS for {}: KeyFile and CertFile are not presented",
            peer.trim_start_matches("https://")
        )),
        "{log}"
    );
    let (log, _, _) = start(
        "http",
        "http",
        &["--cipher-suites".to_string(), "TLS_FOO".to_string()],
    );
    assert!(
        log.contains("unexpected TLS cipher suite \"TLS_FOO\""),
        "{log}"
    );
    let mut flags = server_flags(&pki, "server");
    flags[1] = pki.path("bad.pem");
    let (log, _, _) = start("https", "http", &flags);
    assert!(
        log.contains("tls: failed to find any PEM data in certificate input"),
        "{log}"
    );
    let mut flags = server_flags(&pki, "server");
    flags[1] = pki.path("missing.pem");
    let (log, _, _) = start("https", "http", &flags);
    assert!(
        log.contains(&format!(
            "open {}: no such file or directory",
            pki.path("missing.pem")
        )),
        "{log}"
    );
}

/// A three-member cluster with https peer URLs; member `i` presents certificate
/// `peer{i}`, and every member gets `extra`.
fn peer_tls_cluster(pki: &Pki, extra: &[String]) -> Vec<Member> {
    let clients: Vec<String> = (0..3)
        .map(|_| format!("http://127.0.0.1:{}", free_port()))
        .collect();
    let peers: Vec<String> = (0..3)
        .map(|_| format!("https://127.0.0.1:{}", free_port()))
        .collect();
    let initial = (0..3)
        .map(|i| format!("p{i}={}", peers[i]))
        .collect::<Vec<_>>()
        .join(",");
    (0..3)
        .map(|i| {
            let mut args: Vec<String> = [
                "--listen-client-urls",
                &clients[i],
                "--advertise-client-urls",
                &clients[i],
                "--listen-peer-urls",
                &peers[i],
                "--initial-advertise-peer-urls",
                &peers[i],
                "--initial-cluster",
                &initial,
                "--initial-cluster-token",
                "tls-cluster",
                "--peer-cert-file",
                &pki.path(&format!("peer{i}.pem")),
                "--peer-key-file",
                &pki.path(&format!("peer{i}.key")),
                "--peer-trusted-ca-file",
                &pki.path("ca.pem"),
                "--peer-client-cert-auth",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().cloned());
            Member::spawn(&format!("p{i}"), &clients[i], &args)
        })
        .collect()
}

#[test]
fn peer_tls_cluster_elects_a_leader_and_replicates() {
    let pki = Pki::new();
    for i in 0..3u64 {
        pki.issue(&format!("peer{i}"), "peer", true, 10 + i);
    }
    let mut members = peer_tls_cluster(&pki, &[]);
    for m in &mut members {
        m.wait_ready();
    }
    assert_eq!(members[0].etcdctl(&[], &["put", "foo", "bar"]).ok(), "OK\n");
    for m in &members {
        assert_eq!(m.etcdctl(&[], &["get", "foo"]).ok(), "foo\nbar\n");
    }
    let list = members[2]
        .etcdctl(&[], &["member", "list"])
        .ok()
        .to_string();
    assert_eq!(list.matches("https://127.0.0.1:").count(), 3, "{list}");
}

#[test]
fn peer_with_a_disallowed_common_name_is_kept_out() {
    let pki = Pki::new();
    pki.issue("peer0", "peer", true, 10);
    pki.issue("peer1", "peer", true, 11);
    pki.issue("peer2", "intruder", true, 12);
    let allowed = vec!["--peer-cert-allowed-cn".to_string(), "peer".to_string()];
    let mut members = peer_tls_cluster(&pki, &allowed);
    members[0].wait_ready();
    members[1].wait_ready();
    assert_eq!(members[0].etcdctl(&[], &["put", "foo", "bar"]).ok(), "OK\n");
    assert_eq!(members[1].etcdctl(&[], &["get", "foo"]).ok(), "foo\nbar\n");
    // The intruder never hears from the cluster, so it never serves.
    thread::sleep(Duration::from_secs(3));
    assert!(
        !members[2].is_ready(),
        "a member with CN=intruder joined; log:\n{}",
        members[2].log_text()
    );
    let out = members[2].etcdctl(&[], &["get", "foo"]);
    assert!(!out.success(), "the intruder served a read: {}", out.stdout);
}

#[tokio::test]
async fn certificate_user_metadata_cannot_be_forged_by_a_client() {
    // The member hands a verified certificate's CN to its auth checks as request
    // metadata; a client sending that metadata itself over a plain connection must stay
    // anonymous.
    let m = Member::single("http", &[]);
    for args in [
        vec!["user", "add", "root:rootpw"],
        vec!["role", "add", "root"],
        vec!["user", "grant-role", "root", "root"],
        vec!["auth", "enable"],
    ] {
        m.etcdctl(&[], &args).ok();
    }
    let channel = tonic::transport::Endpoint::from_shared(m.client_url.clone())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let mut kv = detcd::pb::etcdserverpb::kv_client::KvClient::new(channel);
    let mut req = tonic::Request::new(detcd::pb::etcdserverpb::PutRequest {
        key: b"foo".to_vec(),
        value: b"bar".to_vec(),
        ..Default::default()
    });
    req.metadata_mut().insert(
        detcd::gateway::CERT_CN_METADATA_KEY,
        tonic::metadata::MetadataValue::from_static("root"),
    );
    let status = kv.put(req).await.unwrap_err();
    assert_eq!(status.message(), "etcdserver: user name is empty");
    assert_eq!(
        m.etcdctl(
            &[],
            &["--user", "root:rootpw", "get", "foo", "--print-value-only"]
        )
        .ok(),
        ""
    );
}

#[test]
fn unixs_listener_serves_tls_over_a_unix_socket() {
    // `unixs://host:port`: a Unix-domain socket file named `host:port` in the member's
    // working directory, served with the client certificate as an https URL would be.
    let pki = Pki::new();
    pki.issue("server", "server", true, 1);
    let dir = tempfile::tempdir().unwrap();
    let client = format!("https://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let socket = format!("localhost:{}", free_port());
    let log = File::create(dir.path().join("server.log")).unwrap();
    let mut child = Command::new(Kind::under_test().binary())
        .current_dir(dir.path())
        .args(["--name", "us0", "--data-dir", "data"])
        .arg("--listen-client-urls")
        .arg(format!("{client},unixs://{socket}"))
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("us0={peer}")])
        .args(server_flags(&pki, "server"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn the server");
    let unixs = format!("unixs://{socket}");
    let run = |endpoint: &str, tls: &[String], args: &[&str]| {
        let mut cmd = Command::new(etcdctl_bin());
        cmd.current_dir(dir.path())
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint])
            .args(["--dial-timeout", "2s", "--command-timeout", "4s"])
            .args(tls)
            .args(args);
        run_with_timeout(cmd, None, Duration::from_secs(30))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut put = run(
        &unixs,
        &cacert(&pki),
        &["put", "foo", "over-tls-on-a-socket"],
    );
    while !put.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        put = run(
            &unixs,
            &cacert(&pki),
            &["put", "foo", "over-tls-on-a-socket"],
        );
    }
    assert_eq!(put.ok(), "OK\n");
    assert_eq!(
        run(&client, &cacert(&pki), &["get", "foo"]).ok(),
        "foo\nover-tls-on-a-socket\n"
    );
    // Plain text on the TLS socket gets nowhere.
    let plain = run(&format!("unix://{socket}"), &[], &["get", "foo"]);
    assert!(!plain.success(), "plain text was served: {}", plain.stdout);
    terminate(&mut child);
}
