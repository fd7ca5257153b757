//! `--wal-dir`: the write-ahead log lives in its own directory (a separate disk in
//! production), the data directory holds no WAL, and a restart recovers from both.
//! Runs against the real etcd too (`DETCD_TEST_SERVER=etcd`).

mod common;

use common::Server;

fn wal_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".wal"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_wal_goes_to_wal_dir_and_a_restart_reads_it_back() {
    let wal = tempfile::Builder::new()
        .prefix("detcd-wal-dir-")
        .tempdir()
        .expect("temp dir");
    let wal_dir = wal.path().join("wal");
    let wal_arg = wal_dir.to_string_lossy().into_owned();
    let mut s = Server::start_with_args(&["--wal-dir", &wal_arg]);
    for i in 0..20 {
        s.etcdctl(&["put", &format!("k{i}"), &format!("v{i}")]).ok();
    }
    assert!(
        !wal_files(&wal_dir).is_empty(),
        "no WAL in {}",
        wal_dir.display()
    );
    let default_wal = s.data_dir().join("member").join("wal");
    assert!(
        wal_files(&default_wal).is_empty(),
        "a WAL was written to {} as well",
        default_wal.display()
    );

    s.restart();
    let got = s.etcdctl(&["get", "k", "--prefix", "--keys-only"]);
    let keys: Vec<&str> = got.ok().lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys.len(), 20, "{keys:?}");
    assert_eq!(
        s.etcdctl(&["get", "k7", "--print-value-only"]).ok().trim(),
        "v7"
    );
}
