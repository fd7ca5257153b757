//! The server driven by the real `etcdctl` 3.4.23 binary: exact output text.
//!
//! Expected strings were recorded from the real etcd 3.4.23
//! (`DETCD_TEST_SERVER=etcd`); detcd must print-compatibly agree.

mod common;

use common::{b64, grpc_err, within, Server};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

fn put(s: &Server, k: &str, v: &str) {
    assert_eq!(s.etcdctl(&["put", k, v]).ok(), "OK\n");
}

/// Current store revision, via `get -w json` of an absent key.
fn revision(s: &Server) -> i64 {
    s.etcdctl(&["get", "\u{1}no-such-key", "-w", "json"]).json()["header"]["revision"]
        .as_i64()
        .unwrap()
}

#[test]
fn put_get_del_prefix_fromkey_limit() {
    let s = Server::start();
    for (k, v) in [
        ("foo", "1"),
        ("foo/a", "2"),
        ("foo/b", "3"),
        ("fop", "4"),
        ("g", "5"),
    ] {
        put(&s, k, v);
    }
    assert_eq!(s.etcdctl(&["get", "foo"]).ok(), "foo\n1\n");
    assert_eq!(s.etcdctl(&["get", "nope"]).ok(), "");
    assert_eq!(
        s.etcdctl(&["get", "foo", "--prefix"]).ok(),
        "foo\n1\nfoo/a\n2\nfoo/b\n3\n"
    );
    assert_eq!(
        s.etcdctl(&["get", "foo/", "--prefix"]).ok(),
        "foo/a\n2\nfoo/b\n3\n"
    );
    assert_eq!(
        s.etcdctl(&["get", "foo", "fop"]).ok(),
        "foo\n1\nfoo/a\n2\nfoo/b\n3\n"
    );
    assert_eq!(
        s.etcdctl(&["get", "foo/b", "--from-key"]).ok(),
        "foo/b\n3\nfop\n4\ng\n5\n"
    );
    assert_eq!(
        s.etcdctl(&["get", "foo", "--prefix", "--limit", "2"]).ok(),
        "foo\n1\nfoo/a\n2\n"
    );
    assert_eq!(
        s.etcdctl(&["get", "", "--from-key", "--limit", "1"]).ok(),
        "foo\n1\n"
    );
    assert_eq!(
        s.etcdctl(&["get", "foo", "--prefix", "--print-value-only"])
            .ok(),
        "1\n2\n3\n"
    );
    assert_eq!(
        s.etcdctl(&["get", "foo/", "--prefix", "--keys-only"]).ok(),
        "foo/a\n\nfoo/b\n\n"
    );

    let j = s
        .etcdctl(&["get", "foo", "--prefix", "--limit", "2", "-w", "json"])
        .json();
    assert_eq!(j["count"], 3);
    assert_eq!(j["more"], true);
    assert_eq!(j["kvs"].as_array().unwrap().len(), 2);

    // Deletes print the number of deleted keys.
    assert_eq!(s.etcdctl(&["del", "nope"]).ok(), "0\n");
    assert_eq!(s.etcdctl(&["del", "foo/", "--prefix"]).ok(), "2\n");
    assert_eq!(
        s.etcdctl(&["get", "", "--from-key", "--keys-only"]).ok(),
        "foo\n\nfop\n\ng\n\n"
    );
    assert_eq!(s.etcdctl(&["del", "fop", "--from-key"]).ok(), "2\n");
    assert_eq!(s.etcdctl(&["del", "a", "z"]).ok(), "1\n");
    assert_eq!(s.etcdctl(&["get", "", "--prefix"]).ok(), "");
}

#[test]
fn sort_by_and_order() {
    let s = Server::start();
    // Designed so every sort target yields a different order:
    //   a: create 4, mod 7, version 2, value "2"
    //   b: create 2, mod 6, version 3, value "1"
    //   c: create 3, mod 3, version 1, value "3"
    for (k, v) in [
        ("b", "x"),
        ("c", "3"),
        ("a", "y"),
        ("b", "y"),
        ("b", "1"),
        ("a", "2"),
    ] {
        put(&s, k, v);
    }
    let order = |target: &str, ord: &str| -> String {
        s.etcdctl(&[
            "get",
            "",
            "--prefix",
            "--keys-only",
            "--sort-by",
            target,
            "--order",
            ord,
        ])
        .ok()
        .split('\n')
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("")
    };
    let cases = [
        ("KEY", "abc"),
        ("VERSION", "cab"),
        ("CREATE", "bca"),
        ("MODIFY", "cba"),
        ("VALUE", "bac"),
    ];
    for (target, asc) in cases {
        assert_eq!(
            order(target, "ASCEND"),
            asc,
            "--sort-by {target} --order ASCEND"
        );
        let desc: String = asc.chars().rev().collect();
        assert_eq!(
            order(target, "DESCEND"),
            desc,
            "--sort-by {target} --order DESCEND"
        );
    }
    // Sort target without order is ascending; order without target sorts by key.
    assert_eq!(
        s.etcdctl(&["get", "", "--prefix", "--sort-by", "VERSION"])
            .ok(),
        "c\n3\na\n2\nb\n1\n"
    );
    assert_eq!(
        s.etcdctl(&["get", "", "--prefix", "--order", "DESCEND"])
            .ok(),
        "c\n3\nb\n1\na\n2\n"
    );
    // Sorting happens before the limit is applied.
    assert_eq!(
        s.etcdctl(&[
            "get",
            "",
            "--prefix",
            "--sort-by",
            "MODIFY",
            "--order",
            "DESCEND",
            "--limit",
            "1"
        ])
        .ok(),
        "a\n2\n"
    );
}

#[test]
fn historical_reads_and_prev_kv() {
    let s = Server::start();
    let r0 = revision(&s);
    assert_eq!(r0, 1, "a fresh store is at revision 1");
    put(&s, "k", "v1"); // rev 2
    put(&s, "k", "v2"); // rev 3
    assert_eq!(
        s.etcdctl(&["put", "k", "v3", "--prev-kv"]).ok(),
        "OK\nk\nv2\n"
    ); // rev 4
    assert_eq!(s.etcdctl(&["put", "new", "n", "--prev-kv"]).ok(), "OK\n"); // rev 5
    assert_eq!(s.etcdctl(&["get", "k", "--rev", "2"]).ok(), "k\nv1\n");
    assert_eq!(
        s.etcdctl(&["get", "k", "--rev", "3", "--print-value-only"])
            .ok(),
        "v2\n"
    );
    assert_eq!(s.etcdctl(&["get", "k", "--rev", "1"]).ok(), "");
    assert_eq!(
        s.etcdctl(&["get", "", "--prefix", "--rev", "4", "--keys-only"])
            .ok(),
        "k\n\n"
    );
    assert_eq!(s.etcdctl(&["del", "k", "--prev-kv"]).ok(), "1\nk\nv3\n"); // rev 6
    assert_eq!(s.etcdctl(&["del", "k", "--prev-kv"]).ok(), "0\n");
    assert_eq!(s.etcdctl(&["get", "k"]).ok(), "");
    assert_eq!(s.etcdctl(&["get", "k", "--rev", "5"]).ok(), "k\nv3\n");
    put(&s, "p/1", "a"); // 7
    put(&s, "p/2", "b"); // 8
    assert_eq!(
        s.etcdctl(&["del", "p/", "--prefix", "--prev-kv"]).ok(),
        "2\np/1\na\np/2\nb\n"
    ); // 9
    assert_eq!(revision(&s), 9);
    // Re-created key: version restarts at 1, create_revision is the new one.
    put(&s, "k", "again"); // 10
    let j = s.etcdctl(&["get", "k", "-w", "json"]).json();
    let kv = &j["kvs"][0];
    assert_eq!(
        (
            kv["create_revision"].as_i64(),
            kv["mod_revision"].as_i64(),
            kv["version"].as_i64()
        ),
        (Some(10), Some(10), Some(1))
    );
}

#[test]
fn get_json_fields() {
    let s = Server::start();
    put(&s, "a", "1"); // 2
    put(&s, "b", "2"); // 3
    put(&s, "a", "11"); // 4
    let j = s.etcdctl(&["get", "", "--prefix", "-w", "json"]).json();
    let h = &j["header"];
    assert_eq!(h["revision"], 4);
    assert!(h["cluster_id"].as_u64().unwrap() != 0);
    assert!(h["member_id"].as_u64().unwrap() != 0);
    assert!(h["raft_term"].as_u64().unwrap() >= 1);
    assert_eq!(j["count"], 2);
    assert!(j.get("more").is_none(), "more=false is omitted: {j}");
    let kvs = j["kvs"].as_array().unwrap();
    assert_eq!(kvs.len(), 2);
    assert_eq!(kvs[0]["key"], "YQ==");
    assert_eq!(b64(kvs[0]["key"].as_str().unwrap()), "a");
    assert_eq!(b64(kvs[0]["value"].as_str().unwrap()), "11");
    assert_eq!(kvs[0]["create_revision"], 2);
    assert_eq!(kvs[0]["mod_revision"], 4);
    assert_eq!(kvs[0]["version"], 2);
    assert!(kvs[0].get("lease").is_none(), "lease=0 is omitted: {j}");
    assert_eq!(b64(kvs[1]["key"].as_str().unwrap()), "b");
    assert_eq!(b64(kvs[1]["value"].as_str().unwrap()), "2");
    assert_eq!(kvs[1]["create_revision"], 3);
    assert_eq!(kvs[1]["mod_revision"], 3);
    assert_eq!(kvs[1]["version"], 1);

    // Empty result: no kvs, no count.
    let j = s.etcdctl(&["get", "zzz", "-w", "json"]).json();
    assert_eq!(j["header"]["revision"], 4);
    assert!(j.get("kvs").is_none() && j.get("count").is_none(), "{j}");

    // Put response JSON carries the new revision.
    let j = s.etcdctl(&["put", "c", "3", "-w", "json"]).json();
    assert_eq!(j["header"]["revision"], 5);
}

#[test]
fn txn_from_stdin() {
    let s = Server::start();
    put(&s, "k", "v"); // 2
    let script = "mod(\"k\") > \"0\"\nvalue(\"k\") = \"v\"\n\nput k v2\nget k\n\nput f 1\n\n";
    assert_eq!(
        s.etcdctl_stdin(&["txn"], script).ok(),
        "SUCCESS\n\nOK\n\nk\nv2\n"
    );
    // k is now at version 2: the version compare fails -> failure branch.
    let script = "version(\"k\") = \"1\"\n\nput k v3\n\ndel k\nget k\n\n";
    assert_eq!(s.etcdctl_stdin(&["txn"], script).ok(), "FAILURE\n\n1\n\n");
    assert_eq!(s.etcdctl(&["get", "k"]).ok(), "");
    assert_eq!(s.etcdctl(&["get", "f"]).ok(), "");
    // create("k") = "0" holds for a missing key.
    let script = "create(\"k\") = \"0\"\n\nput k fresh\nput other o\n\n\n";
    assert_eq!(
        s.etcdctl_stdin(&["txn"], script).ok(),
        "SUCCESS\n\nOK\n\nOK\n"
    );
    assert_eq!(
        s.etcdctl(&["get", "k", "--print-value-only"]).ok(),
        "fresh\n"
    );
    // JSON output of a txn.
    let script = "value(\"k\") = \"zz\"\n\n\nget other\n\n";
    let j = s.etcdctl_stdin(&["txn", "-w", "json"], script).json();
    assert!(
        j.get("succeeded").is_none(),
        "succeeded=false is omitted: {j}"
    );
    let rev = j["header"]["revision"].as_i64().unwrap();
    assert_eq!(rev, 5);
    let r = &j["responses"][0]["Response"]["ResponseRange"];
    assert_eq!(r["header"]["revision"], 5);
    assert_eq!(r["count"], 1);
    assert_eq!(b64(r["kvs"][0]["value"].as_str().unwrap()), "o");
    // A txn with no compares succeeds.
    assert_eq!(
        s.etcdctl_stdin(&["txn"], "\nput x 1\n\n\n").ok(),
        "SUCCESS\n\nOK\n"
    );
}

#[test]
fn compaction() {
    let s = Server::start();
    for i in 0..8 {
        put(&s, "k", &format!("v{i}")); // revs 2..=9
    }
    assert_eq!(s.etcdctl(&["get", "k", "--rev", "3"]).ok(), "k\nv1\n");
    assert_eq!(
        s.etcdctl(&["compaction", "5"]).ok(),
        "compacted revision 5\n"
    );
    assert_eq!(
        s.etcdctl(&["get", "k", "--rev", "4"]).err_line(),
        "Error: etcdserver: mvcc: required revision has been compacted"
    );
    // The compaction revision itself is still readable.
    assert_eq!(s.etcdctl(&["get", "k", "--rev", "5"]).ok(), "k\nv3\n");
    assert_eq!(
        s.etcdctl(&["get", "k", "--rev", "100"]).err_line(),
        "Error: etcdserver: mvcc: required revision is a future revision"
    );
    assert_eq!(
        s.etcdctl(&["compaction", "5"]).err_line(),
        "Error: etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(
        s.etcdctl(&["compaction", "3"]).err_line(),
        "Error: etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(
        s.etcdctl(&["compaction", "100"]).err_line(),
        "Error: etcdserver: mvcc: required revision is a future revision"
    );
    assert_eq!(
        s.etcdctl(&["compaction", "--physical", "7"]).ok(),
        "compacted revision 7\n"
    );
    assert_eq!(
        s.etcdctl(&["get", "k", "--rev", "6"]).err_line(),
        "Error: etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(s.etcdctl(&["get", "k"]).ok(), "k\nv7\n");
    // Compaction does not create a revision; the current revision is compactable.
    assert_eq!(revision(&s), 9);
    assert_eq!(
        s.etcdctl(&["compaction", "9"]).ok(),
        "compacted revision 9\n"
    );
    assert_eq!(
        s.etcdctl(&["get", "k", "-w", "json"]).json()["kvs"][0]["version"],
        8
    );
}

#[test]
fn endpoint_and_member() {
    let s = Server::start();
    put(&s, "x", "y");
    let j = s.etcdctl(&["endpoint", "status", "-w", "json"]).json();
    let arr = j.as_array().expect("endpoint status -w json is an array");
    assert_eq!(arr.len(), 1);
    assert_eq!(arr[0]["Endpoint"], s.client_url().as_str());
    let st = &arr[0]["Status"];
    let ver = st["version"].as_str().unwrap();
    assert!(
        ver.starts_with("3.4."),
        "version must look like etcd 3.4: {ver}"
    );
    let member_id = st["header"]["member_id"].as_u64().unwrap();
    assert_ne!(member_id, 0);
    assert_eq!(
        st["leader"].as_u64().unwrap(),
        member_id,
        "single member is the leader: {st}"
    );
    assert!(st["raftIndex"].as_u64().unwrap() > 0, "{st}");
    assert!(st["raftTerm"].as_u64().unwrap() > 0, "{st}");
    assert!(st["dbSize"].as_i64().unwrap() > 0, "{st}");
    assert_eq!(st["header"]["revision"], 2);

    let out = s.etcdctl(&["endpoint", "health"]);
    out.ok();
    let prefix = format!(
        "{} is healthy: successfully committed proposal: took = ",
        s.client_url()
    );
    assert!(
        out.stderr.starts_with(&prefix),
        "endpoint health said: {:?}",
        out.stderr
    );
    let j = s.etcdctl(&["endpoint", "health", "-w", "json"]).json();
    assert_eq!(j[0]["endpoint"], s.client_url().as_str());
    assert_eq!(j[0]["health"], true);

    let j = s.etcdctl(&["member", "list", "-w", "json"]).json();
    let members = j["members"].as_array().unwrap();
    assert_eq!(members.len(), 1);
    let m = &members[0];
    assert_eq!(m["ID"].as_u64().unwrap(), member_id);
    assert_eq!(m["name"], s.name());
    assert_eq!(m["peerURLs"], serde_json::json!([s.peer_url()]));
    assert_eq!(m["clientURLs"], serde_json::json!([s.client_url()]));
    assert_eq!(j["header"]["member_id"].as_u64().unwrap(), member_id);
    let table = s.etcdctl(&["member", "list"]).ok().to_string();
    assert_eq!(
        table,
        format!(
            "{member_id:x}, started, {}, {}, {}, false\n",
            s.name(),
            s.peer_url(),
            s.client_url()
        )
    );
}

#[test]
fn etcdctl_errors() {
    let s = Server::start();
    assert_eq!(
        s.etcdctl(&["put", "", "v"]).err_line(),
        "Error: etcdserver: key is not provided"
    );
    assert_eq!(
        s.etcdctl(&["put", "missing", "--ignore-value"]).err_line(),
        "Error: etcdserver: key not found"
    );
    put(&s, "present", "val");
    assert_eq!(
        s.etcdctl(&["put", "present", "--ignore-value"]).ok(),
        "OK\n"
    );
    let j = s.etcdctl(&["get", "present", "-w", "json"]).json();
    assert_eq!(b64(j["kvs"][0]["value"].as_str().unwrap()), "val");
    assert_eq!(j["kvs"][0]["version"], 2);
    // Failed requests did not consume revisions.
    assert_eq!(j["header"]["revision"], 3);
}

#[tokio::test]
async fn client_side_errors() {
    let s = Server::start();
    let mut c = s.client().await;

    // > 1.5 MiB request.
    let big = vec![b'x'; 1536 * 1024 + 1024];
    let e = within(30, "big put", c.put("big", big, None))
        .await
        .unwrap_err();
    assert_eq!(
        grpc_err(&e),
        (3, "etcdserver: request is too large".to_string())
    );

    // 129 ops in a txn (limit is 128).
    let ops: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    let e = within(30, "txn 129", c.txn(Txn::new().and_then(ops)))
        .await
        .unwrap_err();
    assert_eq!(
        grpc_err(&e),
        (
            3,
            "etcdserver: too many operations in txn request".to_string()
        )
    );
    // 128 is fine.
    let ops: Vec<TxnOp> = (0..128)
        .map(|i| TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    let r = within(30, "txn 128", c.txn(Txn::new().and_then(ops)))
        .await
        .unwrap();
    assert!(r.succeeded());
    assert_eq!(r.header().unwrap().revision(), 2, "a txn is one revision");

    // Duplicate keys among puts in one branch.
    let t = Txn::new().and_then(vec![TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
    let e = within(30, "dup", c.txn(t)).await.unwrap_err();
    assert_eq!(
        grpc_err(&e),
        (
            3,
            "etcdserver: duplicate key given in txn request".to_string()
        )
    );
    // Put overlapping a delete range in the same branch.
    let t = Txn::new().and_then(vec![
        TxnOp::put("p/1", "1", None),
        TxnOp::delete("p/", Some(etcd_client::DeleteOptions::new().with_prefix())),
    ]);
    let e = within(30, "dup del", c.txn(t)).await.unwrap_err();
    assert_eq!(
        grpc_err(&e),
        (
            3,
            "etcdserver: duplicate key given in txn request".to_string()
        )
    );
    // Same key in success and failure branches is fine.
    let t = Txn::new()
        .when(vec![Compare::version("d", CompareOp::Equal, 0)])
        .and_then(vec![TxnOp::put("d", "s", None)])
        .or_else(vec![TxnOp::put("d", "f", None)]);
    assert!(within(30, "txn", c.txn(t)).await.unwrap().succeeded());

    // Empty key via the client.
    let e = within(30, "empty key", c.put("", "v", Some(PutOptions::new())))
        .await
        .unwrap_err();
    assert_eq!(
        grpc_err(&e),
        (3, "etcdserver: key is not provided".to_string())
    );
    let e = within(
        30,
        "ignore value",
        c.put("nokey", "", Some(PutOptions::new().with_ignore_value())),
    )
    .await
    .unwrap_err();
    assert_eq!(grpc_err(&e), (3, "etcdserver: key not found".to_string()));
    let e = within(
        30,
        "value with ignore_value",
        c.put("d", "x", Some(PutOptions::new().with_ignore_value())),
    )
    .await
    .unwrap_err();
    assert_eq!(
        grpc_err(&e),
        (3, "etcdserver: value is provided".to_string())
    );
    // Nothing above except the two good txns consumed a revision.
    let r = within(30, "get", c.get("d", None)).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 3);
}
