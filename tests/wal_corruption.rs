//! A corrupt record in the middle of the WAL stops the member with a clear error: it must
//! never skip the record and serve what follows.

mod common;

use common::{Kind, Server};
use std::fs;

#[test]
fn corrupt_wal_record_refuses_to_start() {
    let mut s = Server::start();
    for i in 0..40 {
        let out = s.etcdctl(&[
            "put",
            &format!("key{i:02}"),
            &format!("value-{i:02}-padding"),
        ]);
        assert_eq!(out.ok().trim(), "OK");
    }
    s.stop();

    let wal_dir = s.data_dir().join("member").join("wal");
    let mut segments: Vec<_> = fs::read_dir(&wal_dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", wal_dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().map(|x| x == "wal").unwrap_or(false))
        .collect();
    segments.sort();
    assert!(
        !segments.is_empty(),
        "no WAL segment in {}",
        wal_dir.display()
    );
    let segment = segments.last().unwrap();
    let mut bytes = fs::read(segment).unwrap();
    // Flip a byte of the value of an entry in the middle of the log: a record that was
    // synced and acknowledged, followed by many good records.
    let needle = b"value-20-padding";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the entry for key20 is in the last segment");
    bytes[at + 3] ^= 0x5a;
    fs::write(segment, &bytes).unwrap();

    let err = s
        .try_restart()
        .expect_err("a member with a corrupt WAL record must not start");
    let lower = err.to_lowercase();
    if s.kind() == Kind::Detcd {
        assert!(
            lower.contains("corrupt"),
            "the error names the corruption: {err}"
        );
        assert!(
            err.contains(&segment.file_name().unwrap().to_string_lossy().to_string()),
            "the error names the file: {err}"
        );
    }
}
