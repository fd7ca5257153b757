//! `Maintenance.Snapshot` against the real tools: `etcdctl snapshot save` from the
//! server under test, `etcdctl snapshot status` compared with a real etcd 3.4.23 holding
//! the same data, `etcdctl snapshot restore` and the real etcd serving the restored
//! data, and restore's integrity check on a damaged file.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{all_kvs, etcdctl_bin, run_with_timeout, within, Output, Server, ETCDCTL_TIMEOUT};
use etcd_client::PutOptions;

/// Keys written one per revision: enough (with ~120-byte values) that the `key` bucket
/// spans many leaf pages under a branch page.
const KEY_COUNT: usize = 1200;
/// The revision at which the load compacts.
const COMPACT_REVISION: i64 = 600;

/// `etcdctl` without endpoints, for the offline `snapshot status/restore` commands.
fn etcdctl_offline(args: &[&str]) -> Output {
    let mut cmd = Command::new(etcdctl_bin());
    cmd.env("ETCDCTL_API", "3").args(args);
    run_with_timeout(cmd, None, ETCDCTL_TIMEOUT)
}

fn big_value(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Writes the same history to `server` whichever implementation it runs, and returns
/// the live keys and values it leaves.
fn load(server: &Server) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(within(120, "loading the server", async {
        let mut client = server.client().await;
        let mut want = BTreeMap::new();
        for i in 0..KEY_COUNT {
            let key = format!("key/{i:05}").into_bytes();
            let value = format!("value-{i}-{}", "x".repeat(100)).into_bytes();
            client
                .put(key.clone(), value.clone(), None)
                .await
                .expect("put");
            want.insert(key, value);
        }
        // Values larger than a page need overflow pages.
        for (key, len) in [("big", 100_000), ("mid", 6_000)] {
            let value = big_value(len);
            client.put(key, value.clone(), None).await.expect("put big");
            want.insert(key.as_bytes().to_vec(), value);
        }
        client.put("key/00001", "changed", None).await.expect("put");
        want.insert(b"key/00001".to_vec(), b"changed".to_vec());
        client
            .delete(
                "key/00010",
                Some(etcd_client::DeleteOptions::new().with_range("key/00020")),
            )
            .await
            .expect("delete range");
        want.retain(|k, _| {
            !(k.as_slice() >= &b"key/00010"[..] && k.as_slice() < &b"key/00020"[..])
        });
        client
            .compact(COMPACT_REVISION, None)
            .await
            .expect("compact");
        let lease = client.lease_grant(600, None).await.expect("grant").id();
        client
            .put("leased", "v", Some(PutOptions::new().with_lease(lease)))
            .await
            .expect("put with lease");
        want.insert(b"leased".to_vec(), b"v".to_vec());
        want
    }))
}

/// Saves a snapshot of `server` to `path`, checking etcdctl's report.
fn save(server: &Server, path: &Path) {
    let path = path.to_str().expect("utf-8 path");
    let out = server.etcdctl(&["snapshot", "save", path]);
    assert_eq!(out.ok(), format!("Snapshot saved at {path}\n"));
    assert!(
        out.stderr.contains("\"msg\":\"fetched snapshot\""),
        "{}",
        out.stderr
    );
}

/// `etcdctl snapshot status -w json` of the file at `path`.
fn status(path: &Path) -> serde_json::Value {
    etcdctl_offline(&["snapshot", "status", path.to_str().unwrap(), "-w", "json"]).json()
}

/// The revision the server is at.
fn revision(server: &Server) -> i64 {
    server.etcdctl(&["get", "\u{1}none", "-w", "json"]).json()["header"]["revision"]
        .as_i64()
        .unwrap()
}

#[test]
fn snapshot_save_and_status_agree_with_etcd() {
    let tmp = tempfile::tempdir().unwrap();
    let detcd = Server::start();
    let etcd = Server::start_etcd();
    load(&detcd);
    load(&etcd);
    let detcd_file = tmp.path().join("detcd.db");
    let etcd_file = tmp.path().join("etcd.db");
    save(&detcd, &detcd_file);
    save(&etcd, &etcd_file);

    let ours = status(&detcd_file);
    let theirs = status(&etcd_file);
    assert_eq!(ours["revision"], theirs["revision"], "{ours} vs {theirs}");
    assert_eq!(ours["revision"].as_i64(), Some(revision(&detcd)));
    assert_eq!(ours["totalKey"], theirs["totalKey"], "{ours} vs {theirs}");
    // The saved file is the database followed by its 32-byte SHA-256.
    let len = std::fs::metadata(&detcd_file).unwrap().len();
    assert_eq!(ours["totalSize"].as_u64(), Some(len - 32));
    assert_eq!(len % 512, 32, "etcdctl looks for the hash this way");

    // detcd's own reader reads both files, with the same buckets.
    for file in [&detcd_file, &etcd_file] {
        let bytes = std::fs::read(file).unwrap();
        let db = detcd::storage::bbolt::read(&bytes[..bytes.len() - 32]).expect("readable");
        let names: Vec<String> = db
            .buckets
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(names, detcd::actors::snapshot::ETCD_BUCKET_NAMES);
    }
}

#[test]
fn restored_snapshot_serves_every_key_in_real_etcd() {
    let tmp = tempfile::tempdir().unwrap();
    let source = Server::start();
    let want = load(&source);
    let rev = revision(&source);
    let file = tmp.path().join("snap.db");
    save(&source, &file);

    // Check the stream as it arrives: 32 KiB blobs counting down, then the checksum.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let streamed = rt.block_on(within(60, "snapshot stream", async {
        let mut client = source.client().await;
        let mut stream = client.snapshot().await.expect("snapshot");
        let mut messages = Vec::new();
        while let Some(m) = stream.message().await.expect("message") {
            messages.push((m.remaining_bytes(), m.blob().to_vec()));
        }
        messages
    }));
    let (_, blobs) = streamed.split_last().unwrap();
    let total: usize = blobs.iter().map(|(_, b)| b.len()).sum();
    let mut sent = 0;
    for (i, (remaining, blob)) in blobs.iter().enumerate() {
        if i + 1 < blobs.len() {
            assert_eq!(blob.len(), 32 * 1024);
        }
        sent += blob.len();
        assert_eq!(*remaining as usize, total - sent);
    }
    assert_eq!(streamed.last().unwrap().0, 0);
    assert_eq!(streamed.last().unwrap().1.len(), 32);

    // Restore into the data directory of a real etcd member, then start it there.
    let mut etcd = Server::start_etcd();
    etcd.stop();
    std::fs::remove_dir_all(etcd.data_dir()).unwrap();
    let name = etcd.name().to_string();
    let peer = etcd.peer_url();
    let cluster = format!("{name}={peer}");
    let restored = etcdctl_offline(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        etcd.data_dir().to_str().unwrap(),
        "--name",
        &name,
        "--initial-cluster",
        &cluster,
        "--initial-advertise-peer-urls",
        &peer,
    ]);
    restored.ok();
    assert!(
        restored.stderr.contains("restored snapshot"),
        "{}",
        restored.stderr
    );
    etcd.restart();

    assert_eq!(revision(&etcd), rev);
    let served = rt.block_on(within(60, "reading the restored etcd", async {
        all_kvs(&mut etcd.client().await, false).await
    }));
    assert_eq!(served.len(), want.len());
    assert!(served == want, "the restored etcd serves different data");
    // History before the compaction is gone there too; after it, it is kept.
    let before = etcd.etcdctl(&[
        "get",
        "key/00000",
        "--rev",
        &(COMPACT_REVISION - 1).to_string(),
    ]);
    assert_eq!(
        before.err_line(),
        "Error: etcdserver: mvcc: required revision has been compacted"
    );
    let old = etcd.etcdctl(&["get", "key/00001", "--rev", &COMPACT_REVISION.to_string()]);
    assert_eq!(
        old.ok(),
        format!("key/00001\nvalue-1-{}\n", "x".repeat(100))
    );
    // The lease and its key came along.
    let leases = etcd.etcdctl(&["lease", "list"]);
    assert!(
        leases.ok().starts_with("found 1 leases\n"),
        "{}",
        leases.stdout
    );
}

#[test]
fn restore_rejects_a_damaged_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let source = Server::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(within(30, "writing", async {
        let mut client = source.client().await;
        client.put("foo", "bar", None).await.expect("put");
    }));
    let file = tmp.path().join("snap.db");
    save(&source, &file);
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let out = etcdctl_offline(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        tmp.path().join("restored").to_str().unwrap(),
    ]);
    let err = out.err_line();
    assert!(
        err.starts_with("Error: expected sha256 [") && err.contains("], got ["),
        "{err}"
    );
}
