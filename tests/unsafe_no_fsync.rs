//! `--unsafe-no-fsync`: the WAL is never synced, so writes cost no fsync (the
//! `etcd_disk_wal_fsync_duration_seconds` count does not grow with them, as in etcd
//! 3.4.23), while a process crash still loses nothing (the writes are in the operating
//! system's page cache). Without the flag every write is synced. Runs against the server
//! under test and against etcd, so the property is etcd's.

mod common;

use common::{Kind, Server};

/// The WAL fsync count from `/metrics`.
fn fsyncs(s: &Server) -> u64 {
    let page = common::http::get(&s.client_url(), "/metrics").body;
    page.lines()
        .find_map(|l| l.strip_prefix("etcd_disk_wal_fsync_duration_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no WAL fsync count in /metrics"))
}

/// Writes 20 keys and returns how many WAL fsyncs they cost.
fn fsyncs_for_puts(s: &Server) -> u64 {
    assert_eq!(s.etcdctl(&["put", "warm", "up"]).ok(), "OK\n");
    let before = fsyncs(s);
    for i in 0..20 {
        assert_eq!(s.etcdctl(&["put", &format!("k{i:02}"), "v"]).ok(), "OK\n");
    }
    fsyncs(s) - before
}

fn check(kind: Kind) {
    let mut unsafe_server = Server::start_kind_with_args(kind, &["--unsafe-no-fsync"]);
    let unsynced = fsyncs_for_puts(&unsafe_server);
    println!(
        "{}: 20 puts cost {unsynced} WAL fsyncs with --unsafe-no-fsync",
        kind.name()
    );
    assert_eq!(
        unsynced,
        0,
        "{}: no fsync with --unsafe-no-fsync",
        kind.name()
    );
    // A process crash loses nothing that was acknowledged.
    unsafe_server.kill_9();
    unsafe_server.restart();
    let keys = unsafe_server.etcdctl(&["get", "k", "--prefix", "--keys-only"]);
    assert_eq!(keys.ok().lines().filter(|l| !l.is_empty()).count(), 20);

    let safe_server = Server::start_kind(kind);
    let synced = fsyncs_for_puts(&safe_server);
    println!(
        "{}: 20 puts cost {synced} WAL fsyncs by default",
        kind.name()
    );
    assert!(
        synced >= 20,
        "{}: every put is synced by default",
        kind.name()
    );
}

#[test]
fn unsafe_no_fsync_skips_wal_syncs_but_survives_a_process_crash() {
    check(Kind::under_test());
}
