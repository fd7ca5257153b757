//! `--force-new-cluster`, etcd's disaster recovery: with two of three members lost for
//! good, the survivor restarts as a one-member cluster that keeps all its data, serves
//! writes again, and stays a one-member cluster across later restarts.

mod common;

use common::ClusterProc;

#[test]
fn a_lone_survivor_restarts_as_a_one_member_cluster_with_its_data() {
    let mut c = ClusterProc::start(3);
    c.put_spread("f", 30);
    // `--force-new-cluster` keeps what the survivor's WAL records as committed and drops
    // the rest. etcd writes a commit index that moved without new entries to its WAL
    // without an fsync (its buffer is lost with the process), so the last write before a
    // `kill -9` can be dropped although it was applied. One more write makes the survivor
    // append an entry and sync its WAL with the commit index covering all of `f`; that
    // last write itself may be dropped and is not checked.
    c.etcdctl(&c.client_url(0), &["put", "last", "may-be-dropped"])
        .ok();
    c.etcdctl(&c.client_url(0), &["get", "last"]).ok();
    for i in 0..3 {
        c.kill_9(i);
    }

    c.restart_with_args(0, &["--force-new-cluster"])
        .expect("the survivor restarts alone");
    let log = std::fs::read_to_string(c.log_path(0)).unwrap_or_default();
    // etcd 3.4.23 logs "forcing restart of member <id> in cluster <cid> at commit index
    // <n>".
    assert!(
        log.contains("forcing restart of member"),
        "no force-new-cluster in the log"
    );

    c.put_when_writable(&c.client_url(0), "after", "alone");
    let list = c
        .etcdctl(&c.client_url(0), &["member", "list", "-w", "json"])
        .json();
    let members = list["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{list}");
    assert_eq!(members[0]["name"], "m0", "{list}");
    let got = c.etcdctl(
        &c.client_url(0),
        &["get", "f", "--prefix", "--print-value-only"],
    );
    let values: Vec<&str> = got.ok().lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(values.len(), 30, "{values:?}");

    // A plain restart keeps the new one-member cluster and its data.
    c.stop(0);
    c.restart(0);
    let list = c
        .etcdctl(&c.client_url(0), &["member", "list", "-w", "json"])
        .json();
    assert_eq!(
        list["members"].as_array().map(|m| m.len()),
        Some(1),
        "{list}"
    );
    assert_eq!(
        c.etcdctl(&c.client_url(0), &["get", "after", "--print-value-only"])
            .ok()
            .trim(),
        "alone"
    );
    c.etcdctl(&c.client_url(0), &["put", "again", "ok"]).ok();
}
