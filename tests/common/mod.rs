//! Real-process test harness shared by the integration tests.
//!
//! A [`Server`] runs one single-member server process — either detcd or the
//! real etcd 3.4.23, chosen by the `DETCD_TEST_SERVER` environment variable
//! (`detcd`, the default, or `etcd`) — with etcd's command-line flags, on
//! fresh loopback ports and a fresh temporary data directory.
//!
//! Everything here is bounded in time: nothing waits forever.
#![allow(dead_code)]

pub mod http;

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server gets to become ready after being spawned.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound for any single etcdctl invocation.
pub const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(30);
/// Marker line both etcd and detcd print once they serve clients.
pub const READY_MARKER: &str = "ready to serve client requests";

pub const ETCD_BIN: &str = "/usr/bin/etcd";
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";

/// Which server implementation a [`Server`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Detcd,
    Etcd,
}

impl Kind {
    /// The implementation under test, from `DETCD_TEST_SERVER`.
    pub fn under_test() -> Kind {
        match std::env::var("DETCD_TEST_SERVER") {
            Err(_) => Kind::Detcd,
            Ok(v) => match v.trim() {
                "" | "detcd" => Kind::Detcd,
                "etcd" => Kind::Etcd,
                other => panic!(
                    "DETCD_TEST_SERVER={other:?} is not understood: use `detcd` (default) or `etcd`"
                ),
            },
        }
    }

    pub fn binary(self) -> PathBuf {
        let p = match self {
            Kind::Detcd => PathBuf::from(env!("CARGO_BIN_EXE_detcd")),
            Kind::Etcd => {
                PathBuf::from(std::env::var("ETCD_BIN").unwrap_or_else(|_| ETCD_BIN.into()))
            }
        };
        assert!(
            p.exists(),
            "server binary {} does not exist ({:?}). For the real etcd install it with \
             `apt-get install -y etcd-server etcd-client` (or set ETCD_BIN).",
            p.display(),
            self
        );
        p
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Detcd => "detcd",
            Kind::Etcd => "etcd",
        }
    }
}

/// Path of the etcdctl binary; panics with a clear message if it is missing.
pub fn etcdctl_bin() -> PathBuf {
    let p = PathBuf::from(std::env::var("ETCDCTL_BIN").unwrap_or_else(|_| ETCDCTL_BIN.into()));
    assert!(
        p.exists(),
        "etcdctl not found at {} — install it with `apt-get install -y etcd-client` (or set ETCDCTL_BIN)",
        p.display()
    );
    p
}

fn used_ports() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A free loopback port: bind 127.0.0.1:0 and release it. Ports handed out
/// earlier in this test process are never handed out again, so parallel
/// tests do not collide with each other.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        drop(l);
        if used_ports().lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("could not find a free port");
}

/// Output of an etcdctl run.
#[derive(Debug)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub status: ExitStatus,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics (with both streams) unless the command succeeded; returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert!(
            self.status.success(),
            "etcdctl failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Panics unless the command failed; returns the last non-empty stderr
    /// line (etcdctl prints `Error: <message>` there, preceded by client
    /// retry logs whose content is irrelevant).
    #[track_caller]
    pub fn err_line(&self) -> &str {
        assert!(
            !self.status.success(),
            "etcdctl unexpectedly succeeded:\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    }

    /// Parse stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok().trim())
            .unwrap_or_else(|e| panic!("etcdctl stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Spawns `cmd` with stdout and stderr piped (and stdin piped when `with_stdin`), and
/// returns the child with a description of the command for error messages.
fn spawn_piped(mut cmd: Command, with_stdin: bool) -> (std::process::Child, String) {
    cmd.stdin(if with_stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {desc}: {e}"));
    (child, desc)
}

/// Run a command with optional stdin, capturing stdout/stderr, killing it and
/// panicking if it runs longer than `timeout`.
pub fn run_with_timeout(cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    let (mut child, desc) = spawn_piped(cmd, stdin.is_some());
    let writer = stdin.map(|data| {
        let data = data.to_vec();
        let mut pipe = child.stdin.take().unwrap();
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command timed out after {timeout:?}: {desc}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
    Output {
        stdout,
        stderr,
        status,
    }
}

/// One server process (single-member cluster) on its own ports and data dir.
pub struct Server {
    kind: Kind,
    bin: PathBuf,
    name: String,
    /// `None` only after Drop decided to keep the directory.
    dir: Option<tempfile::TempDir>,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    /// Number of times the process has been started (names the log files).
    generation: u32,
    /// Flags added after the standard ones.
    extra_args: Vec<String>,
}

impl Server {
    /// Start the server under test (per `DETCD_TEST_SERVER`).
    pub fn start() -> Server {
        Server::start_kind(Kind::under_test())
    }

    /// Start the real etcd (the reference implementation).
    pub fn start_etcd() -> Server {
        Server::start_kind(Kind::Etcd)
    }

    pub fn start_kind(kind: Kind) -> Server {
        Server::start_kind_with_args(kind, &[])
    }

    /// Start the server under test with extra command-line flags.
    pub fn start_with_args(args: &[&str]) -> Server {
        Server::start_kind_with_args(Kind::under_test(), args)
    }

    pub fn start_kind_with_args(kind: Kind, args: &[&str]) -> Server {
        let bin = kind.binary();
        let mut last_err = String::new();
        // Retry with fresh ports if somebody grabbed ours between probing and binding.
        for _attempt in 0..3 {
            let mut s = Server {
                kind,
                bin: bin.clone(),
                name: format!("{}-{}", kind.name(), std::process::id()),
                dir: Some(
                    tempfile::Builder::new()
                        .prefix(&format!("{}-test-", kind.name()))
                        .tempdir()
                        .expect("create temp dir"),
                ),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
                generation: 0,
                extra_args: args.iter().map(|a| a.to_string()).collect(),
            };
            match s.spawn_and_wait() {
                Ok(()) => return s,
                Err(e) if e.contains("address already in use") => {
                    last_err = e;
                    continue;
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{last_err}");
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("temp dir").path()
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir().join(format!("server-{}.log", self.generation))
    }
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => c.try_wait().ok().flatten().is_none(),
        }
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Last `n` lines of the current log file.
    pub fn log_tail(&self, n: usize) -> String {
        tail_of(&self.log_path(), n)
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "server already running");
        self.generation += 1;
        let log_path = self.log_path();
        let log = File::create(&log_path).expect("create log file");
        let log2 = log.try_clone().expect("clone log file");
        let client = self.client_url();
        let peer = self.peer_url();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("{}={}", self.name, peer))
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = format!("127.0.0.1:{}", self.client_port)
            .to_socket_addrs()
            .unwrap()
            .next()
            .unwrap();
        let mut seen_marker = false;
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                self.child = None;
                return Err(format!(
                    "{} ({}) exited with {st} before becoming ready; log {}:\n{}",
                    self.kind.name(),
                    self.bin.display(),
                    self.log_path().display(),
                    self.log_tail(40)
                ));
            }
            if !seen_marker {
                seen_marker = fs::read_to_string(self.log_path())
                    .map(|s| s.contains(READY_MARKER))
                    .unwrap_or(false);
            }
            if seen_marker && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                let out = run_with_timeout(
                    self.etcdctl_cmd(&["endpoint", "health", "--command-timeout=2s"]),
                    None,
                    Duration::from_secs(10),
                );
                // With auth enabled, an anonymous health check is refused by a server
                // that is serving: that answer means ready too.
                if out.success() || out.stderr.contains("etcdserver: user name is empty") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let tail = self.log_tail(40);
                self.kill_9();
                return Err(format!(
                    "{} ({}) did not become ready within {READY_TIMEOUT:?} (marker {:?} seen: {seen_marker}, \
                     client url {}); log tail:\n{tail}",
                    self.kind.name(),
                    self.bin.display(),
                    READY_MARKER,
                    self.client_url()
                ));
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGKILL the process and reap it.
    pub fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Graceful stop: SIGTERM, wait up to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c);
        }
    }

    /// Start again on the same data dir and ports (stopping gracefully first
    /// if still running). Retries briefly if the ports are not yet free.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        let mut last = String::new();
        for _ in 0..5 {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) if e.contains("address already in use") => {
                    last = e;
                    thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!("restart failed: {e}"),
            }
        }
        panic!("restart failed: {last}");
    }

    /// Start again on the same data dir and ports and report whether it became ready,
    /// instead of panicking: for tests where the start is expected to fail.
    pub fn try_restart(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn_and_wait()
    }

    fn etcdctl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(etcdctl_bin());
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.client_url())
            .args(args);
        cmd
    }

    /// Run `etcdctl --endpoints <url> <args>` (ETCDCTL_API=3).
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        run_with_timeout(self.etcdctl_cmd(args), None, ETCDCTL_TIMEOUT)
    }

    /// Same as [`Server::etcdctl`], feeding `stdin` to the process.
    pub fn etcdctl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        run_with_timeout(
            self.etcdctl_cmd(args),
            Some(stdin.as_bytes()),
            ETCDCTL_TIMEOUT,
        )
    }

    /// Starts `etcdctl --endpoints <url> <args>` in the background (for `watch`), with
    /// `stdin` piped if given; read its output with [`Background::lines_until`].
    pub fn etcdctl_background(&self, args: &[&str], stdin: Option<&str>) -> Background {
        Background::spawn(self.etcdctl_cmd(args), stdin)
    }

    /// A connected Rust client with connect/request timeouts.
    pub async fn client(&self) -> etcd_client::Client {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(15));
        let url = self.client_url();
        tokio::time::timeout(
            Duration::from_secs(20),
            etcd_client::Client::connect([url.clone()], Some(opts)),
        )
        .await
        .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
        .unwrap_or_else(|e| panic!("connecting to {url} failed: {e}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_9();
        let keep = std::env::var_os("DETCD_TEST_KEEP").is_some();
        if thread::panicking() || keep {
            eprintln!(
                "--- {} log tail ({}) ---\n{}",
                self.kind.name(),
                self.log_path().display(),
                self.log_tail(20)
            );
            // Keep data dir and logs of failed tests for post-mortem.
            if let Some(d) = self.dir.take() {
                eprintln!("--- kept {} ---", d.keep().display());
            }
        }
    }
}

fn tail_of(path: &Path, n: usize) -> String {
    match fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Extract (gRPC code, message) from a client error; panics on other errors.
#[track_caller]
pub fn grpc_err(e: &etcd_client::Error) -> (i32, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code() as i32, s.message().to_string()),
        other => panic!("expected a gRPC status error, got {other:?}"),
    }
}

/// Every key and value `client`'s member serves (`serializable`: from its own store).
pub async fn all_kvs(
    client: &mut etcd_client::Client,
    serializable: bool,
) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    let mut options = etcd_client::GetOptions::new().with_from_key();
    if serializable {
        options = options.with_serializable();
    }
    let resp = client.get(vec![0u8], Some(options)).await.expect("get all");
    resp.kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
        .collect()
}

/// Bound an async test step; panics with `what` on timeout.
pub async fn within<F: std::future::Future>(secs: u64, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s: {what}"),
    }
}

/// Decode standard base64 (as etcdctl's JSON output uses for keys/values).
pub fn b64(s: &str) -> String {
    let mut bits: u32 = 0;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => panic!("invalid base64 {s:?}"),
        } as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8(out).expect("utf8")
}

/// A background process whose stdout is read line by line (e.g. `etcdctl watch`). Killed
/// on drop.
pub struct Background {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Everything read so far.
    pub seen: Vec<String>,
    stdin: Option<std::process::ChildStdin>,
}

impl Background {
    fn spawn(cmd: Command, stdin: Option<&str>) -> Background {
        let (mut child, _desc) = spawn_piped(cmd, stdin.is_some());
        let (tx, rx) = std::sync::mpsc::sync_channel(100_000);
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut stdin_pipe = child.stdin.take();
        if let (Some(p), Some(data)) = (stdin_pipe.as_mut(), stdin) {
            p.write_all(data.as_bytes()).expect("write stdin");
            p.flush().expect("flush stdin");
        }
        Background {
            child,
            lines: rx,
            seen: Vec::new(),
            stdin: stdin_pipe,
        }
    }

    /// Writes more input to the process.
    pub fn write_stdin(&mut self, data: &str) {
        let p = self.stdin.as_mut().expect("stdin was piped");
        p.write_all(data.as_bytes()).expect("write stdin");
        p.flush().expect("flush stdin");
    }

    /// Reads lines (stdout and stderr, interleaved) until `n` lines have been seen in
    /// total or `timeout` passes; returns everything seen so far.
    pub fn lines_until(&mut self, n: usize, timeout: Duration) -> &[String] {
        let deadline = Instant::now() + timeout;
        while self.seen.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => break,
            }
        }
        &self.seen
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM (what etcdctl's `lock` and `elect` clean up on) and waits up to
    /// `timeout` for the process to exit; its status, if it did.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.wait_exit(timeout)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops a child gracefully: SIGTERM, up to 10 s, then SIGKILL.
pub fn terminate(c: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(c.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = c.kill();
                let _ = c.wait();
                return;
            }
        }
    }
}

/// Marks a test (or the rest of one) that checks what only detcd does: a detcd extension,
/// detcd's own tools or log lines, or a behaviour where detcd deliberately differs from
/// etcd 3.4. Against the real etcd (`DETCD_TEST_SERVER=etcd`) it panics with `reason`, so
/// such a test fails loudly instead of passing without having checked anything;
/// `ci/etcd-pass.sh` leaves these tests out by name and lists why.
pub fn detcd_only(reason: &str) {
    if Kind::under_test() == Kind::Etcd {
        panic!(
            "this test checks detcd-only behaviour and cannot run against the real etcd \
             ({reason}); ci/etcd-pass.sh skips it"
        );
    }
}

/// A multi-member cluster of real processes on loopback, bootstrapped from a static
/// `--initial-cluster`: members of the server under test (`DETCD_TEST_SERVER`) unless a
/// kind is given. Members are started together (none is ready until a quorum runs).
pub struct ClusterProc {
    /// The implementation every member runs.
    pub kind: Kind,
    pub dir: tempfile::TempDir,
    pub names: Vec<String>,
    pub client_ports: Vec<u16>,
    pub peer_ports: Vec<u16>,
    pub children: Vec<Option<Child>>,
    /// Flags every member gets besides the cluster's own.
    pub extra_args: Vec<String>,
}

impl ClusterProc {
    /// Starts `n` members and waits until each serves clients.
    pub fn start(n: usize) -> ClusterProc {
        ClusterProc::start_with_args(n, &[])
    }

    /// Starts `n` members, each also given `extra_args`, and waits until each serves.
    pub fn start_with_args(n: usize, extra_args: &[&str]) -> ClusterProc {
        ClusterProc::start_kind_with_args(Kind::under_test(), n, extra_args)
    }

    /// Starts `n` members of `kind`, each also given `extra_args`, and waits until each
    /// serves.
    pub fn start_kind_with_args(kind: Kind, n: usize, extra_args: &[&str]) -> ClusterProc {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-cluster-", kind.name()))
            .tempdir()
            .expect("temp dir");
        let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let client_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peer_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut c = ClusterProc {
            kind,
            dir,
            names,
            client_ports,
            peer_ports,
            children: (0..n).map(|_| None).collect(),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        };
        for i in 0..n {
            let child = c.spawn_member(i, &[]);
            c.children[i] = Some(child);
        }
        for i in 0..n {
            c.wait_ready(i, 1);
        }
        c
    }

    /// The `--initial-cluster` value.
    pub fn initial_cluster(&self) -> String {
        (0..self.names.len())
            .map(|i| format!("{}=http://127.0.0.1:{}", self.names[i], self.peer_ports[i]))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Member `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("data{i}"))
    }

    /// Spawns member `i` (appending to its log) with the cluster's flags and `more`,
    /// without waiting.
    fn spawn_member(&self, i: usize, more: &[String]) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("log file");
        let log2 = log.try_clone().unwrap();
        let client = self.client_url(i);
        let peer = format!("http://127.0.0.1:{}", self.peer_ports[i]);
        Command::new(self.kind.binary())
            .args(["--name", &self.names[i]])
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster()])
            .args(["--initial-cluster-token", "detcd-test-cluster"])
            .args(&self.extra_args)
            .args(more)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.kind.name()))
    }

    /// Waits until member `i`'s log shows it ready to serve for the `nth` time.
    fn wait_ready(&self, i: usize, nth: usize) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.ready_count(i) >= nth {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "member {i} did not become ready; log:\n{}",
                tail_of(&self.log_path(i), 40)
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many times member `i`'s log shows it ready to serve.
    pub fn ready_count(&self, i: usize) -> usize {
        fs::read_to_string(self.log_path(i))
            .map(|s| s.matches(READY_MARKER).count())
            .unwrap_or(0)
    }

    /// Restarts member `i` (after `kill_9` or `stop`) and waits until it serves again. It
    /// can only serve once a quorum is up; use [`ClusterProc::restart_nowait`] to bring
    /// several members back at once.
    pub fn restart(&mut self, i: usize) {
        if let Err(e) = self.restart_with_args(i, &[]) {
            panic!("{e}");
        }
    }

    /// Restarts member `i` without waiting for it to serve.
    pub fn restart_nowait(&mut self, i: usize) {
        assert!(self.children[i].is_none(), "member {i} is still running");
        let child = self.spawn_member(i, &[]);
        self.children[i] = Some(child);
    }

    /// Stops member `i` gracefully: SIGTERM, up to 10 s, then SIGKILL.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            terminate(&mut c);
        }
    }

    /// Starts the stopped member `i` again with `more` flags, and waits until it serves
    /// clients (`Ok`) or exits (`Err` with its exit status and log tail).
    pub fn restart_with_args(&mut self, i: usize, more: &[&str]) -> Result<(), String> {
        assert!(self.children[i].is_none(), "member {i} is still running");
        let ready_before = self.ready_count(i);
        let more: Vec<String> = more.iter().map(|a| a.to_string()).collect();
        let mut child = self.spawn_member(i, &more);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.ready_count(i) > ready_before {
                self.children[i] = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "member {i} exited ({status}); log:\n{}",
                    tail_of(&self.log_path(i), 20)
                ));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "member {i} did not become ready; log:\n{}",
                    tail_of(&self.log_path(i), 40)
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("member{i}.log"))
    }

    pub fn client_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.client_ports[i])
    }

    /// All client URLs, comma-separated, for `--endpoints`.
    pub fn endpoints(&self) -> String {
        (0..self.client_ports.len())
            .map(|i| self.client_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs etcdctl against `endpoints`.
    pub fn etcdctl(&self, endpoints: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(etcdctl_bin());
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoints)
            .args(args);
        run_with_timeout(cmd, None, ETCDCTL_TIMEOUT)
    }

    /// Puts `<prefix><i>` = `v<i>` for `i` in `0..n`, through the members in turn.
    pub fn put_spread(&self, prefix: &str, n: usize) {
        let members = self.names.len();
        for i in 0..n {
            self.etcdctl(
                &self.client_url(i % members),
                &["put", &format!("{prefix}{i}"), &format!("v{i}")],
            )
            .ok();
        }
    }

    /// Retries `put key value` through `endpoints` until it succeeds (bounded: 30 s).
    pub fn put_when_writable(&self, endpoints: &str, key: &str, value: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.etcdctl(endpoints, &["put", key, value, "--command-timeout=10s"]);
            if out.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "writes did not resume: {}",
                out.stderr
            );
            thread::sleep(Duration::from_millis(300));
        }
    }

    /// Waits until every member answers `endpoint hashkv` with the same non-zero hash at
    /// one revision (`want_revision`, if given), and returns that revision.
    pub fn wait_hashkv_agree(&self, want_revision: Option<i64>) -> i64 {
        let n = self.names.len();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.etcdctl(&self.endpoints(), &["endpoint", "hashkv", "-w", "json"]);
            let v = if out.success() {
                out.json()
            } else {
                serde_json::Value::Null
            };
            let rows = v.as_array().cloned().unwrap_or_default();
            let hashes: Vec<u64> = rows
                .iter()
                .map(|r| r["HashKV"]["hash"].as_u64().unwrap_or(0))
                .collect();
            let revs: Vec<i64> = rows
                .iter()
                .map(|r| r["HashKV"]["header"]["revision"].as_i64().unwrap_or(0))
                .collect();
            if rows.len() == n
                && revs.iter().all(|r| *r == want_revision.unwrap_or(revs[0]))
                && hashes.iter().all(|h| *h == hashes[0] && *h != 0)
            {
                return revs[0];
            }
            assert!(
                Instant::now() < deadline,
                "members' KV hashes differ: {v} {}",
                out.stderr
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILLs member `i`.
    pub fn kill_9(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ClusterProc {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill_9(i);
        }
        if thread::panicking() {
            for i in 0..self.names.len() {
                eprintln!(
                    "--- member {i} log tail ---\n{}",
                    tail_of(&self.log_path(i), 30)
                );
            }
        }
    }
}
