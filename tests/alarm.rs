//! Alarms and the backend quota through the real `etcdctl`: a full backend raises
//! NOSPACE, writes fail with etcd's error while reads still work, and the operator's
//! recovery (compact, defrag, disarm) makes writes work again, with the same etcdctl
//! output as the real etcd 3.4. A 3-member cluster shows the alarm on every member, and
//! the corruption checks find a member whose data was tampered with.

mod common;

use common::{ClusterProc, Kind, Output, Server};

/// A value large enough that a few puts fill a small quota.
fn big_value() -> String {
    "x".repeat(3000)
}

/// The quota that a few dozen puts of [`big_value`] exceed: etcd measures its bbolt file,
/// which starts at about 20 kB and grows in pages; detcd counts stored bytes.
fn small_quota(kind: Kind) -> &'static str {
    match kind {
        Kind::Etcd => "200000",
        Kind::Detcd => "30000",
    }
}

const NOSPACE: &str = "Error: etcdserver: mvcc: database space exceeded";

/// The member id of the member at `server`, from `endpoint status`.
fn member_id(status: &serde_json::Value) -> u64 {
    status[0]["Status"]["header"]["member_id"]
        .as_u64()
        .expect("member id in endpoint status")
}

/// Puts [`big_value`]s until the server refuses; returns how many succeeded and the
/// refusal's error line.
fn fill(put: impl Fn(&str) -> Output) -> (usize, String) {
    for i in 0..1000 {
        let out = put(&format!("k{i:04}"));
        if !out.success() {
            return (i, out.err_line().to_string());
        }
    }
    panic!("1000 puts did not exhaust the quota");
}

/// The NOSPACE scenario on one server, as a transcript with member ids and endpoints
/// replaced by placeholders, so that transcripts from detcd and etcd can be compared.
fn nospace_transcript(s: &Server) -> Vec<String> {
    let value = big_value();
    let mut t = Vec::new();
    let status = s.etcdctl(&["endpoint", "status", "-w", "json"]).json();
    let id = member_id(&status).to_string();
    let endpoint = s.client_url();
    let norm = |text: &str| {
        text.replace(&id, "<id>")
            .replace(&endpoint, "<endpoint>")
            .replace(endpoint.trim_start_matches("http://"), "<endpoint>")
    };
    let (written, err) = fill(|key| s.etcdctl(&["put", key, &value]));
    assert!(written > 0, "the first put must fit");
    t.push(format!("fill: {err}"));
    t.push(format!(
        "alarm list: {}",
        norm(s.etcdctl(&["alarm", "list"]).ok())
    ));
    t.push(format!(
        "alarm list json: {}",
        norm(s.etcdctl(&["alarm", "list", "-w", "json"]).ok())
    ));
    let status = s.etcdctl(&["endpoint", "status", "-w", "json"]).json();
    t.push(format!(
        "status errors: {}",
        norm(&status[0]["Status"]["errors"].to_string())
    ));
    // Reads still work.
    t.push(format!(
        "get: {}",
        s.etcdctl(&["get", "k0000", "--print-value-only"])
            .ok()
            .len()
    ));
    // Writes that add data are refused, on a full backend and because of the alarm.
    t.push(format!(
        "put small: {}",
        s.etcdctl(&["put", "a", "b"]).err_line()
    ));
    t.push(format!(
        "txn put: {}",
        s.etcdctl_stdin(&["txn"], "\n\nput a b\n\n").err_line()
    ));
    t.push(format!(
        "lease grant: {}",
        s.etcdctl(&["lease", "grant", "100"]).err_line()
    ));
    // Recovery: delete, compact, defragment, disarm.
    // (How many keys fit differs: etcd measures its bbolt file.)
    s.etcdctl(&["del", "--prefix", "k"]).ok();
    let status = s.etcdctl(&["endpoint", "status", "-w", "json"]).json();
    let rev = status[0]["Status"]["header"]["revision"].as_i64().unwrap();
    let compacted = s.etcdctl(&["compact", &rev.to_string()]);
    t.push(format!(
        "compact: {}",
        compacted.ok().replace(&rev.to_string(), "<rev>")
    ));
    t.push(format!("defrag: {}", norm(s.etcdctl(&["defrag"]).ok())));
    t.push(format!(
        "still refused before disarm: {}",
        s.etcdctl(&["put", "a", "b"]).err_line()
    ));
    t.push(format!(
        "disarm: {}",
        norm(s.etcdctl(&["alarm", "disarm"]).ok())
    ));
    t.push(format!(
        "disarm again: {:?}",
        s.etcdctl(&["alarm", "disarm"]).ok()
    ));
    t.push(format!(
        "alarm list: {:?}",
        s.etcdctl(&["alarm", "list"]).ok()
    ));
    let status = s.etcdctl(&["endpoint", "status", "-w", "json"]).json();
    t.push(format!("status errors: {}", status[0]["Status"]["errors"]));
    t.push(format!("put: {}", s.etcdctl(&["put", "a", "b"]).ok()));
    t.push(format!(
        "txn: {}",
        s.etcdctl_stdin(&["txn"], "\n\nput c d\n\n").ok()
    ));
    t
}

#[test]
fn nospace_and_recovery_print_what_etcd_prints() {
    let kind = Kind::under_test();
    let s = Server::start_with_args(&["--quota-backend-bytes", small_quota(kind)]);
    let etcd = Server::start_kind_with_args(
        Kind::Etcd,
        &["--quota-backend-bytes", small_quota(Kind::Etcd)],
    );
    let got = nospace_transcript(&s);
    let want = nospace_transcript(&etcd);
    assert_eq!(got, want);
    assert_eq!(got[0], format!("fill: {NOSPACE}"));
    assert_eq!(got[1], "alarm list: memberID:<id> alarm:NOSPACE \n");
}

#[test]
fn size_falls_after_compaction_and_defragmentation() {
    let s = Server::start_with_args(&["--quota-backend-bytes", small_quota(Kind::under_test())]);
    let value = big_value();
    let (written, err) = fill(|key| s.etcdctl(&["put", key, &value]));
    assert_eq!(err, NOSPACE);
    let size = |s: &Server| {
        let j = s.etcdctl(&["endpoint", "status", "-w", "json"]).json();
        (
            j[0]["Status"]["dbSize"].as_i64().unwrap(),
            j[0]["Status"]["dbSizeInUse"].as_i64().unwrap(),
            j[0]["Status"]["header"]["revision"].as_i64().unwrap(),
        )
    };
    let (full, _, _) = size(&s);
    assert!(full as usize > written * value.len() / 2, "size {full}");
    s.etcdctl(&["del", "--prefix", "k"]).ok();
    let (after_delete, _, rev) = size(&s);
    assert!(
        after_delete >= full,
        "deleting alone does not shrink the file"
    );
    s.etcdctl(&["compact", &rev.to_string()]).ok();
    s.etcdctl(&["defrag"]).ok();
    let (defragged, in_use, _) = size(&s);
    assert!(
        defragged < full / 4,
        "{defragged} after defrag, {full} before"
    );
    assert!(in_use <= defragged);
    s.etcdctl(&["alarm", "disarm"]).ok();
    s.etcdctl(&["put", "k", &value]).ok();
}

#[test]
fn alarms_are_replicated_to_every_member() {
    let kind = Kind::under_test();
    let c = ClusterProc::start_with_args(3, &["--quota-backend-bytes", small_quota(kind)]);
    let ep = |i: usize| c.client_url(i);
    let ids: Vec<u64> = (0..3)
        .map(|i| {
            member_id(
                &c.etcdctl(&ep(i), &["endpoint", "status", "-w", "json"])
                    .json(),
            )
        })
        .collect();
    let value = big_value();
    let (_, err) = fill(|key| c.etcdctl(&ep(0), &["put", key, &value]));
    assert_eq!(err, NOSPACE);
    // Every member refuses writes.
    for i in 0..3 {
        assert_eq!(c.etcdctl(&ep(i), &["put", "a", "b"]).err_line(), NOSPACE);
    }
    // Which members raise NOSPACE is each member's own finding: etcd raises it on every
    // member whose apply of a write, or whose check of a refused request, finds its own
    // backend over the quota, so one to three alarms, of any members, may be raised
    // (detcd raises member 0's, whose quota check refused the put first). What is replicated is the list: once it settles, every member
    // lists the same NOSPACE alarms, of members of this cluster, and reports them in its
    // status. etcd lists several alarms in Go map order, so lists compare as sets.
    let sorted = |text: &str| -> Vec<String> {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    let lists = || -> Vec<Vec<String>> {
        (0..3)
            .map(|i| sorted(c.etcdctl(&ep(i), &["alarm", "list"]).ok()))
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let want = loop {
        let first = lists();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let second = lists();
        if first == second && second.iter().all(|l| *l == second[0]) {
            break second[0].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the members' alarm lists do not settle on one list: {second:?}"
        );
    };
    println!("alarm list on every member: {want:?}");
    let alarms = want;
    assert!(!alarms.is_empty(), "no alarm after NOSPACE");
    for line in &alarms {
        assert!(
            ids.iter()
                .any(|id| *line == format!("memberID:{id} alarm:NOSPACE ")),
            "{line:?} is not a NOSPACE alarm of a member ({ids:?})"
        );
    }
    for i in 0..3 {
        let status = c
            .etcdctl(&ep(i), &["endpoint", "status", "-w", "json"])
            .json();
        let mut errors: Vec<String> = status[0]["Status"]["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e.as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default();
        errors.sort();
        assert_eq!(errors, alarms, "member {i}");
        // Reads work everywhere.
        c.etcdctl(&ep(i), &["get", "k0000"]).ok();
    }
    // Recovery across the cluster: delete, compact, defragment every member, disarm.
    c.etcdctl(&ep(1), &["del", "--prefix", "k"]).ok();
    let status = c
        .etcdctl(&ep(1), &["endpoint", "status", "-w", "json"])
        .json();
    let rev = status[0]["Status"]["header"]["revision"].as_i64().unwrap();
    c.etcdctl(&ep(1), &["compact", &rev.to_string()]).ok();
    let defrag = c.etcdctl(&c.endpoints(), &["defrag"]);
    assert_eq!(defrag.ok().lines().count(), 3, "{}", defrag.stdout);
    c.etcdctl(&ep(2), &["alarm", "disarm"]).ok();
    for i in 0..3 {
        assert_eq!(c.etcdctl(&ep(i), &["alarm", "list"]).ok(), "", "member {i}");
        assert_eq!(c.etcdctl(&ep(i), &["put", "a", "b"]).ok(), "OK\n");
    }
}

/// Why the corruption tests run against detcd only: they damage a stopped member's data
/// with detcd's own backend code, which cannot write etcd's bbolt file.
const TAMPERS: &str = "it tampers with the member's backend through detcd's sled backend \
                       code; etcd's backend is a bbolt file";

/// Changes the value of the oldest key revision in a stopped member's backend, as a disk
/// corruption or a bug would, without touching anything raft knows about.
fn tamper_with_backend(data_dir: &std::path::Path) {
    use detcd::storage::backend::{Backend, Bucket, SledBackend, WriteBatch};
    use prost::Message as _;
    let mut backend =
        SledBackend::open(&data_dir.join("member").join("snap").join("db")).expect("open backend");
    let (key, value) = backend
        .scan(Bucket::Key)
        .expect("scan")
        .into_iter()
        .next()
        .expect("a key revision");
    let mut kv = detcd::pb::mvccpb::KeyValue::decode(&value[..]).expect("decode");
    kv.value = b"tampered".to_vec();
    let mut batch = WriteBatch::new();
    batch.put(Bucket::Key, key, kv.encode_to_vec());
    backend.write(&batch).expect("write");
    backend.sync().expect("sync");
}

/// Puts a few keys through member 0 and waits until member `i` has applied them.
fn write_and_replicate(c: &ClusterProc, i: usize) {
    for k in ["a", "b", "c"] {
        assert_eq!(c.etcdctl(&c.client_url(0), &["put", k, "v"]).ok(), "OK\n");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while c
        .etcdctl(
            &c.client_url(i),
            &["get", "c", "--consistency=s", "--print-value-only"],
        )
        .ok()
        != "v\n"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "member {i} did not catch up"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn initial_corrupt_check_refuses_a_member_whose_data_differs() {
    common::detcd_only(TAMPERS);
    let mut c = ClusterProc::start(3);
    write_and_replicate(&c, 2);
    let id2 = member_id(
        &c.etcdctl(&c.client_url(2), &["endpoint", "status", "-w", "json"])
            .json(),
    );
    c.stop(2);
    tamper_with_backend(&c.data_dir(2));
    let err = c
        .restart_with_args(2, &["--experimental-initial-corrupt-check"])
        .expect_err("a member with tampered data must not start");
    assert!(
        err.contains(&format!("{id2:x} found data inconsistency with peers")),
        "{err}"
    );
    // Without the check it starts (etcd would, too). A member whose data agrees with its
    // running peers passes the check; with the tampered member running, any member's
    // check would find the mismatch, so it is stopped first.
    c.restart_with_args(2, &[])
        .expect("starts without the check");
    c.stop(2);
    c.stop(1);
    c.restart_with_args(1, &["--experimental-initial-corrupt-check"])
        .expect("an intact member passes the check");
}

#[test]
fn periodic_corrupt_check_raises_corrupt_and_writes_stop() {
    common::detcd_only(TAMPERS);
    let mut c = ClusterProc::start_with_args(3, &["--experimental-corrupt-check-time", "1s"]);
    let status = c
        .etcdctl(&c.client_url(0), &["endpoint", "status", "-w", "json"])
        .json();
    let leader = status[0]["Status"]["leader"].as_u64().unwrap();
    let follower = (0..3)
        .find(|&i| {
            let s = c
                .etcdctl(&c.client_url(i), &["endpoint", "status", "-w", "json"])
                .json();
            member_id(&s) != leader
        })
        .unwrap();
    let id = member_id(
        &c.etcdctl(
            &c.client_url(follower),
            &["endpoint", "status", "-w", "json"],
        )
        .json(),
    );
    write_and_replicate(&c, follower);
    c.stop(follower);
    tamper_with_backend(&c.data_dir(follower));
    c.restart_with_args(follower, &[]).expect("restart");
    let want = format!("memberID:{id} alarm:CORRUPT \n");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let list = c.etcdctl(&c.client_url(follower), &["alarm", "list"]);
        if list.success() && list.stdout == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no CORRUPT alarm: {list:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for i in 0..3 {
        let ep = c.client_url(i);
        assert_eq!(
            c.etcdctl(&ep, &["put", "k", "v"]).err_line(),
            "Error: etcdserver: corrupt cluster"
        );
        assert_eq!(
            c.etcdctl(&ep, &["del", "a"]).err_line(),
            "Error: etcdserver: corrupt cluster"
        );
        // etcd 3.4 serves reads outside the apply path: they still work.
        c.etcdctl(&ep, &["get", "a"]).ok();
    }
    c.etcdctl(&c.client_url(0), &["alarm", "disarm"]).ok();
}
