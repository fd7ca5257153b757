//! Starting one- and three-member clusters of a server binary (detcd or etcd) the same
//! way, and reading what each member process costs from Linux's `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client;

/// Clock ticks per second in `/proc/<pid>/stat` (Linux's USER_HZ, 100 on every
/// architecture Linux exposes to user space).
const CLOCK_TICKS_PER_S: f64 = 100.0;

/// How long a cluster may take to answer its first write.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One member process.
struct Member {
    child: Child,
    client_url: String,
    args: Vec<String>,
    log: PathBuf,
}

/// A running cluster, stopped on drop.
pub struct Cluster {
    binary: PathBuf,
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Cluster {
    /// Starts `size` members of `binary` with etcd's flags (and etcd's defaults for the
    /// rest), plus `extra` on every member.
    pub fn start(binary: &Path, size: usize, extra: &[String]) -> Cluster {
        assert!(size == 1 || size == 3, "clusters of 1 or 3 members");
        let dir = tempfile::Builder::new()
            .prefix("detcd-bench-")
            .tempdir()
            .expect("temp dir");
        let peers: Vec<String> = (0..size)
            .map(|_| format!("http://127.0.0.1:{}", free_port()))
            .collect();
        let initial_cluster = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}={p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, peer) in peers.iter().enumerate() {
            let client_url = format!("http://127.0.0.1:{}", free_port());
            let mut args: Vec<String> = [
                "--name",
                &format!("m{i}"),
                "--data-dir",
                &dir.path().join(format!("m{i}")).display().to_string(),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                &initial_cluster,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().cloned());
            let log = dir.path().join(format!("m{i}.log"));
            let child = spawn(binary, &args, &log);
            members.push(Member {
                child,
                client_url,
                args,
                log,
            });
        }
        Cluster {
            binary: binary.to_path_buf(),
            members,
            _dir: dir,
        }
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// A client over every member, once the cluster takes a write.
    pub async fn client(&self) -> Client {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(mut c) = Client::connect(self.endpoints(), None).await {
                if c.put("bench/ready", "1", None).await.is_ok() {
                    return c;
                }
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| std::fs::read_to_string(&m.log).unwrap_or_default())
                    .collect();
                panic!(
                    "{:?} does not answer:\n{}",
                    self.endpoints(),
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// CPU seconds (user and system) the member processes have used so far.
    pub fn cpu_s(&self) -> f64 {
        self.members
            .iter()
            .filter_map(|m| cpu_s(m.child.id()))
            .sum()
    }

    /// The members' peak resident memory, added up, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.members
            .iter()
            .filter_map(|m| peak_rss_mib(m.child.id()))
            .sum()
    }

    /// Stops every member (SIGTERM, then SIGKILL after 10 s) and starts them again on
    /// the same data; returns how long until the cluster answered a write.
    pub async fn restart(&mut self) -> Duration {
        for m in &mut self.members {
            stop(&mut m.child);
        }
        let began = Instant::now();
        for m in &mut self.members {
            m.child = spawn(&self.binary, &m.args, &m.log);
        }
        let _ = self.client().await;
        began.elapsed()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
    }
}

fn spawn(binary: &Path, args: &[String], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()))
}

/// SIGTERM, then SIGKILL if the process has not exited within 10 s.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// User plus system CPU seconds of a process, from `/proc/<pid>/stat`.
fn cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are space separated, utime
    // and stime being the 14th and 15th fields of the whole line.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS_PER_S)
}

/// The peak resident memory of a process in MiB, from `/proc/<pid>/status`.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
