//! `--snapshot-count` with real processes: a member that was down while the others wrote
//! enough to snapshot and compact their raft logs catches up from a streamed snapshot,
//! keeps it on disk, serves every key, and every member restarts from a compacted log.

mod common;

use std::time::{Duration, Instant};

use common::ClusterProc;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The index of the member every live member names as leader.
fn leader_of(c: &ClusterProc, alive: &[usize]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for &i in alive {
            let out = c.etcdctl(&c.client_url(i), &["endpoint", "status", "-w", "json"]);
            if out.success() {
                let v = out.json();
                let st = &v[0]["Status"];
                if st["leader"].as_u64().is_some() && st["leader"] == st["header"]["member_id"] {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader among {alive:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn snap_files(c: &ClusterProc, i: usize) -> Vec<String> {
    std::fs::read_dir(c.data_dir(i).join("member").join("snap"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".snap"))
                .collect()
        })
        .unwrap_or_default()
}

/// Every key and value under `k/` through member `i` (linearizable).
fn all_keys(c: &ClusterProc, i: usize) -> Vec<(String, String)> {
    runtime().block_on(async {
        let mut client = etcd_client::Client::connect([c.client_url(i)], None)
            .await
            .expect("connect");
        let resp = client
            .get("k/", Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .expect("get");
        resp.kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_string(),
                    kv.value_str().unwrap().to_string(),
                )
            })
            .collect()
    })
}

#[test]
fn a_member_behind_the_compacted_log_catches_up_from_a_snapshot() {
    common::detcd_only(
        "it needs --experimental-snapshot-catchup-entries (an etcd 3.5 flag that detcd \
         accepts ahead of 3.4) to snapshot after a few writes; etcd 3.4.23 refuses the flag",
    );
    let mut c = ClusterProc::start_with_args(
        3,
        &[
            "--snapshot-count",
            "100",
            "--experimental-snapshot-catchup-entries",
            "20",
        ],
    );
    let leader = leader_of(&c, &[0, 1, 2]);
    let down = (leader + 1) % 3;
    c.kill_9(down);
    let up: Vec<usize> = (0..3).filter(|&i| i != down).collect();

    let mut want = Vec::new();
    runtime().block_on(async {
        let mut client = etcd_client::Client::connect([c.client_url(up[0])], None)
            .await
            .expect("connect");
        for i in 0..450 {
            let (k, v) = (format!("k/{i:04}"), format!("value-{i}"));
            client.put(k.as_str(), v.as_str(), None).await.expect("put");
            want.push((k, v));
        }
    });
    for &i in &up {
        let log = std::fs::read_to_string(c.log_path(i)).unwrap_or_default();
        assert!(
            log.contains("compacted Raft logs"),
            "member {i} never compacted"
        );
    }
    assert!(snap_files(&c, down).is_empty());

    c.restart(down);
    assert_eq!(all_keys(&c, down), want);
    let files = snap_files(&c, down);
    assert_eq!(files.len(), 1, "{files:?}");
    let log = std::fs::read_to_string(c.log_path(down)).unwrap_or_default();
    assert!(
        log.contains("applying snapshot from the leader"),
        "no snapshot applied"
    );

    // All members agree on the KV hash at one revision.
    c.wait_hashkv_agree(Some(451));

    // Every member restarts from its compacted log with every key.
    for i in 0..3 {
        c.kill_9(i);
    }
    for i in 0..3 {
        c.restart_nowait(i);
    }
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.ready_count(i) < if i == down { 3 } else { 2 } {
            assert!(Instant::now() < deadline, "member {i} did not restart");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(all_keys(&c, i), want, "member {i}");
    }
}
