//! Member and cluster ids derived exactly as etcd derives them, so a detcd member started
//! with the same flags as an etcd member gets the same ids, and a member started with a
//! different `--initial-cluster-token` or peer URL set is recognisably a different one.

use sha1::{Digest, Sha1};

/// etcd's member id: the first 8 bytes (big-endian) of SHA-1 over the member's sorted
/// peer URLs joined without separator, followed by the cluster token.
pub fn member_id(peer_urls: &[String], cluster_token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut hasher = Sha1::new();
    hasher.update(urls.concat().as_bytes());
    hasher.update(cluster_token.as_bytes());
    first_u64(&hasher.finalize())
}

/// etcd's cluster id: the first 8 bytes of SHA-1 over the sorted member ids, each as
/// 8 big-endian bytes.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut hasher = Sha1::new();
    for id in ids {
        hasher.update(id.to_be_bytes());
    }
    first_u64(&hasher.finalize())
}

/// The id etcd 3.4 gives a member added at run time (`MemberAdd`): the first 8 bytes of
/// SHA-1 over the sorted peer URLs, an empty cluster name (etcd's gRPC handler passes
/// none) and the decimal Unix time in seconds, so re-adding the same URLs later yields a
/// new id. `now_unix_s` comes from the runtime seam's clock, so simulations replay.
pub fn new_member_id(peer_urls: &[String], now_unix_s: u64) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut hasher = Sha1::new();
    hasher.update(urls.concat().as_bytes());
    hasher.update(now_unix_s.to_string().as_bytes());
    first_u64(&hasher.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_single_member_matches_etcd() {
        // A default etcd 3.4 (`--initial-advertise-peer-urls http://localhost:2380`,
        // token `etcd-cluster`) reports member 8e9e05c52164694d in cluster cdf818194e3a8c32.
        let id = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(format!("{id:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[id])), "cdf818194e3a8c32");
    }

    #[test]
    fn added_member_id_depends_on_urls_and_time_only() {
        // sha1("http://10.0.0.4:2380" + "" + "1700000000"), first 8 bytes, as etcd's
        // membership.NewMember computes it.
        let urls = vec!["http://10.0.0.4:2380".to_string()];
        let id = new_member_id(&urls, 1_700_000_000);
        let mut h = Sha1::new();
        h.update(b"http://10.0.0.4:23801700000000");
        assert_eq!(id, first_u64(&h.finalize()));
        assert_ne!(id, new_member_id(&urls, 1_700_000_001));
        let two = vec!["http://b:1".to_string(), "http://a:1".to_string()];
        let sorted = vec!["http://a:1".to_string(), "http://b:1".to_string()];
        assert_eq!(new_member_id(&two, 5), new_member_id(&sorted, 5));
    }

    #[test]
    fn url_order_does_not_matter_but_token_does() {
        let a = vec!["http://a:2380".to_string(), "http://b:2380".to_string()];
        let b = vec!["http://b:2380".to_string(), "http://a:2380".to_string()];
        assert_eq!(member_id(&a, "t"), member_id(&b, "t"));
        assert_ne!(member_id(&a, "t"), member_id(&a, "u"));
    }
}
