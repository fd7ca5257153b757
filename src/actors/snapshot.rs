//! The content of a `Maintenance.Snapshot`: detcd's backend translated into the buckets
//! etcd 3.4 keeps in its bbolt file, so the real `etcdctl snapshot status/restore` and
//! etcd itself read it as one of etcd's own snapshots.
//!
//! Most buckets already hold etcd's encodings (`key`: revision keys and
//! `mvccpb.KeyValue` values; `meta`: `consistent_index` as 8 big-endian bytes and the
//! compaction revisions as 17-byte revision keys; `lease`: `leasepb.Lease` by 8-byte id).
//! What differs is translated here:
//! - `members` holds etcd's JSON member records under the unpadded hex id, built from
//!   the storage actor's member list rather than detcd's protobuf records;
//! - `members_removed` holds etcd's "removed" markers under the unpadded hex id;
//! - `meta` loses detcd's raft `term` key, which etcd 3.4 does not have;
//! - `cluster` gets etcd's `clusterVersion`, and `auth` etcd's initial `authRevision`
//!   (1) while detcd stores no auth state, since etcd 3.4 always writes both;
//! - every bucket etcd 3.4 creates is present, empty or not.

use std::collections::BTreeMap;
use std::io;

use crate::actors::storage::TERM_KEY;
use crate::pb::detcdpb::MemberRecord;
use crate::storage::backend::{Backend, Bucket};
use crate::storage::bbolt::Buckets;

/// The buckets etcd 3.4 creates in its backend, all present in its snapshots.
pub const ETCD_BUCKET_NAMES: [&str; 10] = [
    "alarm",
    "auth",
    "authRoles",
    "authUsers",
    "cluster",
    "key",
    "lease",
    "members",
    "members_removed",
    "meta",
];

/// etcd's key for the cluster version in the `cluster` bucket.
const CLUSTER_VERSION_KEY: &[u8] = b"clusterVersion";
/// etcd's key for the auth store's revision in the `auth` bucket.
const AUTH_REVISION_KEY: &[u8] = b"authRevision";

fn push_json_strings(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        crate::gojson::push_string(out, item, crate::gojson::Html::Escape);
    }
    out.push(']');
}

/// A member as etcd 3.4 stores it in its `members` bucket: the key is the id in
/// lowercase hex without padding, the value the JSON of etcd's `Member` (`name` and
/// `clientURLs` left out while empty, as their `omitempty` tags say).
pub fn etcd_member_entry(record: &MemberRecord) -> (Vec<u8>, Vec<u8>) {
    let mut json = format!("{{\"id\":{},\"peerURLs\":", record.id);
    push_json_strings(&mut json, &record.peer_urls);
    if !record.name.is_empty() {
        json.push_str(",\"name\":");
        crate::gojson::push_string(&mut json, &record.name, crate::gojson::Html::Escape);
    }
    if !record.client_urls.is_empty() {
        json.push_str(",\"clientURLs\":");
        push_json_strings(&mut json, &record.client_urls);
    }
    if record.is_learner {
        json.push_str(",\"isLearner\":true");
    }
    json.push('}');
    (format!("{:x}", record.id).into_bytes(), json.into_bytes())
}

/// A consistent copy of the backend in etcd 3.4's bucket layout (see the module docs).
/// The caller must not let the backend change while this runs; the storage actor calls
/// it between two messages.
pub fn etcd_buckets(
    backend: &dyn Backend,
    members: &BTreeMap<u64, MemberRecord>,
) -> io::Result<Buckets> {
    let mut buckets: Buckets = ETCD_BUCKET_NAMES
        .iter()
        .map(|name| (name.as_bytes().to_vec(), Vec::new()))
        .collect();
    for bucket in Bucket::ALL {
        let entries = match bucket {
            Bucket::Members => continue,
            // etcd keys removed ids in unpadded hex, each with the value "removed".
            Bucket::MembersRemoved => {
                let mut entries: Vec<(Vec<u8>, Vec<u8>)> = backend
                    .scan(bucket)?
                    .into_iter()
                    .filter_map(|(k, _)| {
                        let id = u64::from_str_radix(std::str::from_utf8(&k).ok()?, 16).ok()?;
                        Some((format!("{id:x}").into_bytes(), b"removed".to_vec()))
                    })
                    .collect();
                entries.sort();
                entries
            }
            Bucket::Meta => {
                let mut entries = backend.scan(bucket)?;
                entries.retain(|(k, _)| k != TERM_KEY);
                entries
            }
            _ => backend.scan(bucket)?,
        };
        buckets.insert(bucket.etcd_name().as_bytes().to_vec(), entries);
    }
    let mut member_entries: Vec<_> = members.values().map(etcd_member_entry).collect();
    // etcd's keys are unpadded hex, whose byte order is not the numeric order.
    member_entries.sort();
    buckets.insert(b"members".to_vec(), member_entries);
    buckets.insert(
        b"cluster".to_vec(),
        vec![(
            CLUSTER_VERSION_KEY.to_vec(),
            crate::ETCD_CLUSTER_VERSION.as_bytes().to_vec(),
        )],
    );
    let auth = buckets.entry(b"auth".to_vec()).or_default();
    if auth.is_empty() {
        auth.push((AUTH_REVISION_KEY.to_vec(), 1u64.to_be_bytes().to_vec()));
    }
    Ok(buckets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::storage::CONSISTENT_INDEX_KEY;
    use crate::storage::backend::{MemBackend, WriteBatch};

    #[test]
    fn member_entries_match_etcds_json() {
        // As etcd 3.4.23 stored the member of tests/fixtures/etcd-3.4.23-snapshot.db.
        let record = MemberRecord {
            id: 185828541645115251,
            name: "fixture".into(),
            peer_urls: vec!["http://127.0.0.1:23802".into()],
            client_urls: vec!["http://127.0.0.1:23792".into()],
            is_learner: false,
        };
        let (key, value) = etcd_member_entry(&record);
        assert_eq!(key, b"2943212f5e2cf73");
        assert_eq!(
            String::from_utf8(value).unwrap(),
            r#"{"id":185828541645115251,"peerURLs":["http://127.0.0.1:23802"],"name":"fixture","clientURLs":["http://127.0.0.1:23792"]}"#
        );
        let unstarted = MemberRecord {
            id: 0xa,
            name: String::new(),
            peer_urls: vec!["http://h:1/<&>\"\\\n".into()],
            client_urls: vec![],
            is_learner: true,
        };
        assert_eq!(
            String::from_utf8(etcd_member_entry(&unstarted).1).unwrap(),
            r#"{"id":10,"peerURLs":["http://h:1/\u003c\u0026\u003e\"\\\n"],"isLearner":true}"#
        );
    }

    #[test]
    fn buckets_are_etcds() {
        let mut backend = MemBackend::new();
        let mut batch = WriteBatch::new();
        batch.put(Bucket::Key, b"rev".to_vec(), b"kv".to_vec());
        batch.put(
            Bucket::Meta,
            CONSISTENT_INDEX_KEY.to_vec(),
            5u64.to_be_bytes().to_vec(),
        );
        batch.put(Bucket::Meta, TERM_KEY.to_vec(), 2u64.to_be_bytes().to_vec());
        batch.put(
            Bucket::Members,
            b"ignored".to_vec(),
            b"detcd's own record".to_vec(),
        );
        backend.write(&batch).unwrap();
        let members: BTreeMap<u64, MemberRecord> = [0x10u64, 0x9]
            .into_iter()
            .map(|id| {
                let record = MemberRecord {
                    id,
                    peer_urls: vec![format!("http://m{id}")],
                    ..Default::default()
                };
                (id, record)
            })
            .collect();
        let buckets = etcd_buckets(&backend, &members).unwrap();
        let names: Vec<String> = buckets
            .keys()
            .map(|k| String::from_utf8(k.clone()).unwrap())
            .collect();
        assert_eq!(names, ETCD_BUCKET_NAMES);
        assert_eq!(
            buckets[&b"key".to_vec()],
            vec![(b"rev".to_vec(), b"kv".to_vec())]
        );
        assert_eq!(
            buckets[&b"meta".to_vec()],
            vec![(CONSISTENT_INDEX_KEY.to_vec(), 5u64.to_be_bytes().to_vec())]
        );
        let member_keys: Vec<&[u8]> = buckets[&b"members".to_vec()]
            .iter()
            .map(|(k, _)| k.as_slice())
            .collect();
        assert_eq!(member_keys, vec![&b"10"[..], &b"9"[..]]);
        assert_eq!(buckets[&b"cluster".to_vec()][0].1, b"3.4.0");
        assert_eq!(buckets[&b"auth".to_vec()].len(), 1);
        // The result is a valid bbolt file.
        crate::storage::bbolt::encode(buckets).unwrap();
    }
}
