//! `detcd snapshot status` and `detcd snapshot restore` on snapshots saved by the real
//! `etcdctl snapshot save` from a real etcd 3.4: the same status as `etcdctl snapshot
//! status`, and a detcd member started on the restored directory serving every key, with
//! the revision bumped and the old revisions compacted.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{
    all_kvs, etcdctl_bin, run_with_timeout, within, ClusterProc, Kind, Output, Server,
    ETCDCTL_TIMEOUT,
};
use etcd_client::PutOptions;

/// Why these tests run against detcd only: they test `detcd snapshot status` and `detcd
/// snapshot restore` (etcdutl's commands, which etcd 3.4 has as `etcdctl snapshot`, tested
/// against both in tests/snapshot.rs) and detcd members started on what they restore.
const SNAPSHOT_TOOL: &str = "it tests detcd's own snapshot commands and detcd members \
                             restored with them";

fn etcdctl_offline(args: &[&str]) -> Output {
    let mut cmd = Command::new(etcdctl_bin());
    cmd.env("ETCDCTL_API", "3").args(args);
    run_with_timeout(cmd, None, ETCDCTL_TIMEOUT)
}

fn detcd_offline(args: &[&str]) -> Output {
    let mut cmd = Command::new(Kind::Detcd.binary());
    cmd.args(args);
    run_with_timeout(cmd, None, ETCDCTL_TIMEOUT)
}

/// Writes some history to the real etcd and returns the live keys and values.
fn load(server: &Server) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(within(120, "loading etcd", async {
        let mut client = server.client().await;
        let mut want = BTreeMap::new();
        for i in 0..300 {
            let key = format!("key/{i:04}").into_bytes();
            let value = format!("value-{i}-{}", "y".repeat(80)).into_bytes();
            client
                .put(key.clone(), value.clone(), None)
                .await
                .expect("put");
            want.insert(key, value);
        }
        let big: Vec<u8> = (0..20_000).map(|i| b'a' + (i % 26) as u8).collect();
        client.put("big", big.clone(), None).await.expect("put big");
        want.insert(b"big".to_vec(), big);
        client.delete("key/0005", None).await.expect("delete");
        want.remove(&b"key/0005"[..]);
        client.compact(100, None).await.expect("compact");
        let lease = client.lease_grant(600, None).await.expect("grant").id();
        client
            .put("leased", "v", Some(PutOptions::new().with_lease(lease)))
            .await
            .expect("put with lease");
        want.insert(b"leased".to_vec(), b"v".to_vec());
        want
    }))
}

fn save(server: &Server, path: &Path) {
    let out = server.etcdctl(&["snapshot", "save", path.to_str().unwrap()]);
    out.ok();
}

fn revision(server: &Server) -> i64 {
    server.etcdctl(&["get", "\u{1}none", "-w", "json"]).json()["header"]["revision"]
        .as_i64()
        .unwrap()
}

/// `detcd snapshot restore FILE` into `server`'s data directory, for a one-member
/// cluster of `server`'s name and peer URL, with `extra` flags.
fn restore_into(server: &Server, file: &str, extra: &[&str]) -> Output {
    let name = server.name().to_string();
    let peer = server.peer_url();
    let cluster = format!("{name}={peer}");
    let data_dir = server.data_dir();
    let mut args = vec![
        "snapshot",
        "restore",
        file,
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--name",
        &name,
        "--initial-cluster",
        &cluster,
        "--initial-advertise-peer-urls",
        &peer,
    ];
    args.extend_from_slice(extra);
    detcd_offline(&args)
}

#[test]
fn status_and_restore_of_a_real_etcd_snapshot() {
    common::detcd_only(SNAPSHOT_TOOL);
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Server::start_etcd();
    let want = load(&etcd);
    let rev = revision(&etcd);
    let file = tmp.path().join("etcd.db");
    save(&etcd, &file);
    let file_s = file.to_str().unwrap();

    // Status: the same output as etcdctl in every format.
    for format in ["simple", "table", "json"] {
        let theirs = etcdctl_offline(&["snapshot", "status", file_s, "-w", format]);
        let ours = detcd_offline(&["snapshot", "status", file_s, "-w", format]);
        assert_eq!(ours.ok(), theirs.ok(), "format {format}");
    }
    let status = detcd_offline(&["snapshot", "status", file_s, "-w", "json"]).json();
    assert_eq!(status["revision"].as_i64(), Some(rev));

    // Restore into a detcd member's data directory and start it there.
    let mut detcd = Server::start();
    detcd.stop();
    std::fs::remove_dir_all(detcd.data_dir()).unwrap();
    restore_into(&detcd, file_s, &[]).ok();
    // A second restore into the same directory is refused, as etcdctl refuses it.
    let again = restore_into(&detcd, file_s, &[]);
    assert!(!again.success());
    assert!(again.stderr.contains("exists"), "{}", again.stderr);
    detcd.restart();

    // The revision moved past the snapshot's by the default bump, and everything older
    // is compacted.
    let bumped = rev + 1_000_000_000;
    assert_eq!(revision(&detcd), bumped);
    let old = detcd.etcdctl(&["get", "key/0001", "--rev", &rev.to_string()]);
    assert_eq!(
        old.err_line(),
        "Error: etcdserver: mvcc: required revision has been compacted"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let served = rt.block_on(within(60, "reading the restored detcd", async {
        all_kvs(&mut detcd.client().await, false).await
    }));
    assert_eq!(served.len(), want.len());
    assert!(served == want, "the restored detcd serves different data");
    let leases = detcd.etcdctl(&["lease", "list"]);
    assert!(
        leases.ok().starts_with("found 1 leases\n"),
        "{}",
        leases.stdout
    );
    // New writes continue after the bumped revision.
    detcd.etcdctl(&["put", "after", "restore"]).ok();
    assert_eq!(revision(&detcd), bumped + 1);
}

#[test]
fn restore_refuses_a_damaged_snapshot_and_a_name_outside_the_cluster() {
    common::detcd_only(SNAPSHOT_TOOL);
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Server::start_etcd();
    etcd.etcdctl(&["put", "a", "1"]).ok();
    let file = tmp.path().join("etcd.db");
    save(&etcd, &file);
    let mut bytes = std::fs::read(&file).unwrap();
    let damaged = tmp.path().join("damaged.db");
    let n = bytes.len();
    bytes[n - 40] ^= 0xff;
    std::fs::write(&damaged, &bytes).unwrap();
    let dir = tmp.path().join("restored");
    let out = detcd_offline(&[
        "snapshot",
        "restore",
        damaged.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.err_line(), "Error: expected sha256 mismatch");
    assert!(!dir.exists());
    let out = detcd_offline(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
        "--name",
        "other",
    ]);
    assert!(!out.success());
    assert!(
        out.stderr.contains("couldn't find local name \"other\""),
        "{}",
        out.stderr
    );
}

#[test]
fn restore_of_a_detcd_snapshot_into_detcd() {
    common::detcd_only(SNAPSHOT_TOOL);
    let tmp = tempfile::tempdir().unwrap();
    let mut detcd = Server::start();
    for i in 0..50 {
        detcd
            .etcdctl(&["put", &format!("k{i:02}"), &format!("v{i}")])
            .ok();
    }
    let rev = revision(&detcd);
    let file = tmp.path().join("detcd.db");
    save(&detcd, &file);
    let file_s = file.to_str().unwrap();
    let theirs = etcdctl_offline(&["snapshot", "status", file_s, "-w", "json"]);
    let ours = detcd_offline(&["snapshot", "status", file_s, "-w", "json"]);
    assert_eq!(ours.ok(), theirs.ok());

    detcd.stop();
    std::fs::remove_dir_all(detcd.data_dir()).unwrap();
    restore_into(&detcd, file_s, &["--bump-revision", "1000"]).ok();
    detcd.restart();
    assert_eq!(revision(&detcd), rev + 1000);
    let all = detcd.etcdctl(&["get", "k", "--prefix", "--keys-only"]);
    assert_eq!(all.ok().lines().filter(|l| !l.is_empty()).count(), 50);
    assert_eq!(
        detcd.etcdctl(&["get", "k07", "--print-value-only"]).ok(),
        "v7\n"
    );
}

/// etcd's disaster-recovery drill: every member of a new 3-member cluster is restored
/// from the same real etcd snapshot with its own `--name` and the shared
/// `--initial-cluster`, the members start together, and each one serves every key, at
/// the same bumped revision and with the same HashKV, and takes new writes.
#[test]
fn restore_of_a_real_etcd_snapshot_into_a_three_member_cluster() {
    common::detcd_only(SNAPSHOT_TOOL);
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Server::start_etcd();
    let want = load(&etcd);
    let rev = revision(&etcd);
    let file = tmp.path().join("etcd.db");
    save(&etcd, &file);
    let file_s = file.to_str().unwrap();

    // The ports and names of a cluster; its first data directories are thrown away.
    let mut cluster = ClusterProc::start(3);
    for i in 0..3 {
        cluster.stop(i);
        std::fs::remove_dir_all(cluster.data_dir(i)).unwrap();
    }
    let initial = cluster.initial_cluster();
    for i in 0..3 {
        let peer = format!("http://127.0.0.1:{}", cluster.peer_ports[i]);
        let data_dir = cluster.data_dir(i);
        detcd_offline(&[
            "snapshot",
            "restore",
            file_s,
            "--name",
            &cluster.names[i].clone(),
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--initial-cluster",
            &initial,
            "--initial-cluster-token",
            "detcd-test-cluster",
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .ok();
    }
    for i in 0..3 {
        cluster.restart_nowait(i);
    }
    cluster.put_when_writable(&cluster.endpoints(), "after", "restore");
    let bumped = rev + 1_000_000_000;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut hashes = Vec::new();
    for i in 0..3 {
        let url = cluster.client_url(i);
        // Each member answers from its own store (serializable), so each is checked.
        let mut served = rt.block_on(within(60, "reading a restored member", async {
            let mut client = etcd_client::Client::connect([url.clone()], None)
                .await
                .expect("connect");
            all_kvs(&mut client, true).await
        }));
        served.remove(&b"after"[..]);
        assert!(served == want, "member {i} serves different data");
        let out = cluster
            .etcdctl(&url, &["endpoint", "hashkv", "-w", "json"])
            .json();
        let hashkv = &out[0]["HashKV"];
        assert_eq!(hashkv["header"]["revision"].as_i64(), Some(bumped + 1));
        hashes.push(hashkv["hash"].as_u64().expect("hash"));
    }
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "the members' HashKV differ: {hashes:?}"
    );
    let old = cluster.etcdctl(
        &cluster.endpoints(),
        &["get", "key/0001", "--rev", &rev.to_string()],
    );
    assert_eq!(
        old.err_line(),
        "Error: etcdserver: mvcc: required revision has been compacted"
    );
}
