//! Core KV flows through the Rust `etcd-client` crate.

mod common;

use common::{grpc_err, within, Server};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};

fn kv_tuple(kv: &etcd_client::KeyValue) -> (String, String, i64, i64, i64) {
    (
        String::from_utf8_lossy(kv.key()).into_owned(),
        String::from_utf8_lossy(kv.value()).into_owned(),
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
    )
}

/// Gets `key` with `opts`, failing the test if the get fails.
async fn get_with(
    c: &mut etcd_client::Client,
    key: &str,
    opts: GetOptions,
) -> etcd_client::GetResponse {
    within(10, "get", c.get(key, Some(opts))).await.unwrap()
}

fn t(k: &str, v: &str, c: i64, m: i64, ver: i64) -> (String, String, i64, i64, i64) {
    (k.to_string(), v.to_string(), c, m, ver)
}

#[tokio::test]
async fn put_get_delete_revisions() {
    let s = Server::start();
    let mut c = s.client().await;
    let r = within(10, "get", c.get("x", None)).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 1);
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 0);

    let r = within(10, "put", c.put("a", "1", None)).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 2);
    assert!(r.prev_key().is_none());
    let r = within(
        10,
        "put",
        c.put("a", "2", Some(PutOptions::new().with_prev_key())),
    )
    .await
    .unwrap();
    assert_eq!(r.header().unwrap().revision(), 3);
    assert_eq!(kv_tuple(r.prev_key().unwrap()), t("a", "1", 2, 2, 1));
    within(10, "put", c.put("b", "x", None)).await.unwrap(); // 4
    within(10, "put", c.put("b/c", "y", None)).await.unwrap(); // 5

    let r = within(10, "get", c.get("a", None)).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 5);
    assert_eq!(
        r.kvs().iter().map(kv_tuple).collect::<Vec<_>>(),
        vec![t("a", "2", 2, 3, 2)]
    );
    assert_eq!(r.count(), 1);
    assert!(!r.more());

    // Historical read.
    let r = get_with(&mut c, "a", GetOptions::new().with_revision(2)).await;
    assert_eq!(
        r.kvs().iter().map(kv_tuple).collect::<Vec<_>>(),
        vec![t("a", "1", 2, 2, 1)]
    );
    assert_eq!(
        r.header().unwrap().revision(),
        5,
        "header revision is the current one"
    );

    // Delete with prev_kv.
    let r = within(
        10,
        "del",
        c.delete(
            "b",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.deleted(), 2);
    assert_eq!(r.header().unwrap().revision(), 6);
    assert_eq!(
        r.prev_kvs().iter().map(kv_tuple).collect::<Vec<_>>(),
        vec![t("b", "x", 4, 4, 1), t("b/c", "y", 5, 5, 1)]
    );
    // Deleting nothing does not bump the revision.
    let r = within(10, "del", c.delete("zzz", None)).await.unwrap();
    assert_eq!(r.deleted(), 0);
    assert_eq!(r.header().unwrap().revision(), 6);
    // Re-create: version restarts.
    within(10, "put", c.put("b", "new", None)).await.unwrap(); // 7
    let r = within(10, "get", c.get("b", None)).await.unwrap();
    assert_eq!(kv_tuple(&r.kvs()[0]), t("b", "new", 7, 7, 1));
    // Historical read before the deletion still sees the old incarnation.
    let r = get_with(
        &mut c,
        "b",
        GetOptions::new().with_prefix().with_revision(5),
    )
    .await;
    assert_eq!(r.kvs().len(), 2);
    // ignore_value keeps value, bumps version.
    let r = within(
        10,
        "put",
        c.put(
            "b",
            "",
            Some(PutOptions::new().with_ignore_value().with_prev_key()),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.header().unwrap().revision(), 8);
    let r = within(10, "get", c.get("b", None)).await.unwrap();
    assert_eq!(kv_tuple(&r.kvs()[0]), t("b", "new", 7, 8, 2));
}

#[tokio::test]
async fn range_options() {
    let s = Server::start();
    let mut c = s.client().await;
    // Same layout as etcdctl_kv::sort_by_and_order:
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
        within(10, "put", c.put(k, v, None)).await.unwrap();
    }
    let keys = |r: &etcd_client::GetResponse| -> String {
        r.kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect()
    };
    let cases = [
        (SortTarget::Key, "abc"),
        (SortTarget::Version, "cab"),
        (SortTarget::Create, "bca"),
        (SortTarget::Mod, "cba"),
        (SortTarget::Value, "bac"),
    ];
    for (target, asc) in cases {
        let r = get_with(
            &mut c,
            "",
            GetOptions::new()
                .with_all_keys()
                .with_sort(target, SortOrder::Ascend),
        )
        .await;
        assert_eq!(keys(&r), asc, "{target:?} ascend");
        let r = get_with(
            &mut c,
            "",
            GetOptions::new()
                .with_all_keys()
                .with_sort(target, SortOrder::Descend),
        )
        .await;
        assert_eq!(
            keys(&r),
            asc.chars().rev().collect::<String>(),
            "{target:?} descend"
        );
    }
    // limit + more + count
    let r = get_with(&mut c, "a", GetOptions::new().with_from_key().with_limit(2)).await;
    assert_eq!(keys(&r), "ab");
    assert!(r.more());
    assert_eq!(r.count(), 3);
    // count_only
    let r = get_with(
        &mut c,
        "",
        GetOptions::new().with_all_keys().with_count_only(),
    )
    .await;
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 3);
    // keys_only
    let r = get_with(
        &mut c,
        "a",
        GetOptions::new().with_range("c").with_keys_only(),
    )
    .await;
    assert_eq!(keys(&r), "ab");
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
    assert_eq!(r.kvs()[0].version(), 2);
    // mod / create revision filters (count is unaffected by filters)
    let r = get_with(
        &mut c,
        "",
        GetOptions::new().with_all_keys().with_min_mod_revision(6),
    )
    .await;
    assert_eq!(keys(&r), "ab");
    assert_eq!(r.count(), 3);
    let r = get_with(
        &mut c,
        "",
        GetOptions::new().with_all_keys().with_max_mod_revision(6),
    )
    .await;
    assert_eq!(keys(&r), "bc");
    let r = get_with(
        &mut c,
        "",
        GetOptions::new()
            .with_all_keys()
            .with_min_create_revision(3),
    )
    .await;
    assert_eq!(keys(&r), "ac");
    let r = get_with(
        &mut c,
        "",
        GetOptions::new()
            .with_all_keys()
            .with_max_create_revision(3),
    )
    .await;
    assert_eq!(keys(&r), "bc");
    // prefix / interval
    let r = get_with(&mut c, "b", GetOptions::new().with_prefix()).await;
    assert_eq!(keys(&r), "b");
    let r = get_with(&mut c, "a", GetOptions::new().with_range("b")).await;
    assert_eq!(keys(&r), "a");
    // range end <= key: empty
    let r = get_with(&mut c, "c", GetOptions::new().with_range("a")).await;
    assert_eq!(keys(&r), "");
    // revision errors
    let e = within(
        10,
        "get",
        c.get("a", Some(GetOptions::new().with_revision(100))),
    )
    .await
    .unwrap_err();
    assert_eq!(
        grpc_err(&e),
        (
            11,
            "etcdserver: mvcc: required revision is a future revision".into()
        )
    );
}

#[tokio::test]
async fn txn_compact_status_members() {
    let s = Server::start();
    let mut c = s.client().await;
    within(10, "put", c.put("k", "v", None)).await.unwrap(); // 2
    let txn = Txn::new()
        .when(vec![
            Compare::value("k", CompareOp::Equal, "v"),
            Compare::version("k", CompareOp::Greater, 0),
            Compare::mod_revision("k", CompareOp::Less, 3),
            Compare::create_revision("k", CompareOp::NotEqual, 0),
        ])
        .and_then(vec![
            TxnOp::put("k", "v2", Some(PutOptions::new().with_prev_key())),
            TxnOp::get("k", None),
            TxnOp::txn(Txn::new().and_then(vec![TxnOp::put("n", "1", None)])),
        ])
        .or_else(vec![TxnOp::delete("k", None)]);
    let r = within(10, "txn", c.txn(txn)).await.unwrap();
    assert!(r.succeeded());
    assert_eq!(r.header().unwrap().revision(), 3);
    let ops = r.op_responses();
    assert_eq!(ops.len(), 3);
    match &ops[0] {
        TxnOpResponse::Put(p) => {
            assert_eq!(kv_tuple(p.prev_key().unwrap()), t("k", "v", 2, 2, 1));
            assert_eq!(p.header().unwrap().revision(), 3);
        }
        o => panic!("{o:?}"),
    }
    match &ops[1] {
        TxnOpResponse::Get(g) => assert_eq!(kv_tuple(&g.kvs()[0]), t("k", "v2", 2, 3, 2)),
        o => panic!("{o:?}"),
    }
    match &ops[2] {
        TxnOpResponse::Txn(n) => {
            assert!(n.succeeded());
            assert_eq!(n.op_responses().len(), 1);
        }
        o => panic!("{o:?}"),
    }
    let r = within(10, "get", c.get("n", None)).await.unwrap();
    assert_eq!(kv_tuple(&r.kvs()[0]), t("n", "1", 3, 3, 1));

    // Compares need a key.
    let txn = Txn::new().when(vec![Compare::version("", CompareOp::Equal, 1).with_prefix()]);
    let e = within(10, "txn", c.txn(txn)).await.unwrap_err();
    assert_eq!(grpc_err(&e), (3, "etcdserver: key is not provided".into()));

    // Failure branch: a range compare over several keys.
    let txn = Txn::new()
        .when(vec![
            Compare::version("a", CompareOp::Equal, 1).with_range("zzz")
        ])
        .and_then(vec![])
        .or_else(vec![TxnOp::delete(
            "n",
            Some(DeleteOptions::new().with_prev_key()),
        )]);
    let r = within(10, "txn", c.txn(txn)).await.unwrap();
    assert!(!r.succeeded());
    assert_eq!(r.header().unwrap().revision(), 4);
    match &r.op_responses()[0] {
        TxnOpResponse::Delete(d) => {
            assert_eq!(d.deleted(), 1);
            assert_eq!(kv_tuple(&d.prev_kvs()[0]), t("n", "1", 3, 3, 1));
        }
        o => panic!("{o:?}"),
    }
    // A read-only txn does not bump the revision.
    let r = within(
        10,
        "txn",
        c.txn(Txn::new().and_then(vec![TxnOp::get("k", None)])),
    )
    .await
    .unwrap();
    assert_eq!(r.header().unwrap().revision(), 4);

    // Compaction.
    within(10, "put", c.put("k", "v3", None)).await.unwrap(); // 5
    let r = within(10, "compact", c.compact(4, None)).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 5);
    let e = within(
        10,
        "get",
        c.get("k", Some(GetOptions::new().with_revision(3))),
    )
    .await
    .unwrap_err();
    assert_eq!(
        grpc_err(&e),
        (
            11,
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );
    let e = within(10, "compact", c.compact(4, None)).await.unwrap_err();
    assert_eq!(
        grpc_err(&e),
        (
            11,
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );
    let e = within(10, "compact", c.compact(6, None)).await.unwrap_err();
    assert_eq!(
        grpc_err(&e),
        (
            11,
            "etcdserver: mvcc: required revision is a future revision".into()
        )
    );
    let r = get_with(&mut c, "k", GetOptions::new().with_revision(4)).await;
    assert_eq!(kv_tuple(&r.kvs()[0]), t("k", "v2", 2, 3, 2));
    let r = within(
        10,
        "compact",
        c.compact(
            5,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.header().unwrap().revision(), 5);

    // Status and member list.
    let st = within(10, "status", c.status()).await.unwrap();
    let member_id = st.header().unwrap().member_id();
    assert_ne!(member_id, 0);
    assert_eq!(st.leader(), member_id);
    assert!(st.version().starts_with("3.4."), "{}", st.version());
    assert!(st.db_size() > 0);
    assert!(st.raft_index() > 0);
    assert!(st.raft_term() > 0);
    assert_eq!(st.header().unwrap().revision(), 5);
    let ml = within(10, "member list", c.member_list()).await.unwrap();
    assert_eq!(ml.members().len(), 1);
    let m = &ml.members()[0];
    assert_eq!(m.id(), member_id);
    assert_eq!(m.name(), s.name());
    assert_eq!(m.peer_urls(), &[s.peer_url()]);
    assert_eq!(m.client_urls(), &[s.client_url()]);
    assert!(!m.is_learner());
}

#[tokio::test]
async fn graceful_restart_keeps_data() {
    let mut s = Server::start();
    let mut c = s.client().await;
    for i in 0..20 {
        within(
            10,
            "put",
            c.put(format!("key{i:02}"), format!("val{i}"), None),
        )
        .await
        .unwrap();
    }
    within(10, "compact", c.compact(10, None)).await.unwrap();
    drop(c);
    s.stop();
    s.restart();
    let mut c = s.client().await;
    let r = get_with(&mut c, "key", GetOptions::new().with_prefix()).await;
    assert_eq!(r.header().unwrap().revision(), 21);
    assert_eq!(r.kvs().len(), 20);
    for (i, kv) in r.kvs().iter().enumerate() {
        assert_eq!(
            kv_tuple(kv),
            t(
                &format!("key{i:02}"),
                &format!("val{i}"),
                i as i64 + 2,
                i as i64 + 2,
                1
            )
        );
    }
    // The compaction survived the restart.
    let e = within(
        10,
        "get",
        c.get("key", Some(GetOptions::new().with_revision(9))),
    )
    .await
    .unwrap_err();
    assert_eq!(
        grpc_err(&e).1,
        "etcdserver: mvcc: required revision has been compacted"
    );
    let r = within(10, "put", c.put("after", "restart", None))
        .await
        .unwrap();
    assert_eq!(r.header().unwrap().revision(), 22);
}
