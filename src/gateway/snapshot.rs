//! `Maintenance.Snapshot`: the backend as a bbolt file in etcd's layout, streamed the way
//! etcd 3.4 streams it: 32 KiB blobs, each with `remaining_bytes` set to what is left of
//! the file after it, then one last response whose blob is the SHA-256 of the file (with
//! `remaining_bytes` 0), which `etcdctl snapshot save` appends and `snapshot restore`
//! checks.
//!
//! Memory: the storage actor copies the backend's buckets once, between two applies,
//! which is what makes the snapshot consistent (detcd's backends have no point-in-time
//! views) and is the only part that holds up applies. That copy is at most the size of
//! the stored data, which detcd's MVCC store already keeps in memory. Planning the file
//! runs on the blocking pool; the pages are then produced one node at a time, and at
//! most [`SNAPSHOT_STREAM_BOUND`] responses wait for a slow client, so the encoded file
//! is never held whole.

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::Handle;
use crate::error::EtcdError;
use crate::msg::StorageMsg;
use crate::pb::etcdserverpb::SnapshotResponse;
use crate::rt;
use crate::storage::bbolt::{DbWriter, Pages};

/// The blob size of each response: etcd's `snapshotSendBufferSize`.
pub const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;
/// Responses produced ahead of a slow client, at most.
pub const SNAPSHOT_STREAM_BOUND: usize = 4;

/// The responses of one snapshot stream, produced lazily from the file's pages.
#[derive(Debug)]
pub struct SnapshotChunks {
    pages: Pages,
    /// Bytes produced but not yet sent (less than a chunk, or one node's overflow).
    pending: Vec<u8>,
    total_bytes: u64,
    sent_bytes: u64,
    sha: Sha256,
    done: bool,
}

impl SnapshotChunks {
    /// Streams the file whose pages are `pages`.
    pub fn new(pages: Pages) -> SnapshotChunks {
        SnapshotChunks {
            total_bytes: pages.size_bytes(),
            pages,
            pending: Vec::with_capacity(SNAPSHOT_CHUNK_BYTES),
            sent_bytes: 0,
            sha: Sha256::new(),
            done: false,
        }
    }

    /// The size of the file (without the checksum) in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }
}

impl Iterator for SnapshotChunks {
    type Item = SnapshotResponse;

    fn next(&mut self) -> Option<SnapshotResponse> {
        if self.done {
            return None;
        }
        while self.pending.len() < SNAPSHOT_CHUNK_BYTES {
            match self.pages.next() {
                Some(pages) => self.pending.extend_from_slice(&pages),
                None => break,
            }
        }
        if self.pending.is_empty() {
            self.done = true;
            return Some(SnapshotResponse {
                remaining_bytes: 0,
                blob: self.sha.clone().finalize().to_vec(),
                ..Default::default()
            });
        }
        let n = self.pending.len().min(SNAPSHOT_CHUNK_BYTES);
        let rest = self.pending.split_off(n);
        let blob = std::mem::replace(&mut self.pending, rest);
        self.sha.update(&blob);
        self.sent_bytes += blob.len() as u64;
        Some(SnapshotResponse {
            remaining_bytes: self.total_bytes - self.sent_bytes,
            blob,
            ..Default::default()
        })
    }
}

/// Starts a snapshot: asks the storage actor for a consistent copy, plans the file and
/// returns the stream a task fills as the client reads.
pub async fn snapshot_stream(
    handle: &Handle,
) -> Result<ReceiverStream<Result<SnapshotResponse, tonic::Status>>, EtcdError> {
    let (tx, rx) = oneshot::channel();
    let buckets = handle
        .call(StorageMsg::Snapshot { reply: tx }, rx, &handle.storage_tx)
        .await??;
    let writer = rt::blocking(move || DbWriter::new(buckets))
        .await
        .map_err(|e| EtcdError::Internal(format!("etcdserver: snapshot: {e}")))?;
    let chunks = SnapshotChunks::new(writer.into_pages());
    tracing::info!(
        total_bytes = chunks.total_bytes(),
        "sending database snapshot to client"
    );
    let (out_tx, out_rx) = mpsc::channel(SNAPSHOT_STREAM_BOUND);
    rt::spawn("snapshot-stream", async move {
        for response in chunks {
            if out_tx.send(Ok(response)).await.is_err() {
                // The client went away; the rest of the file is never produced.
                return;
            }
        }
    });
    Ok(ReceiverStream::new(out_rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::bbolt::{self, Buckets};

    fn buckets(values: usize, value_bytes: usize) -> Buckets {
        let entries = (0..values)
            .map(|i| (format!("k{i:06}").into_bytes(), vec![b'v'; value_bytes]))
            .collect();
        [(b"key".to_vec(), entries)].into_iter().collect()
    }

    #[test]
    fn chunks_are_etcds() {
        for (values, value_bytes) in [(0, 0), (3000, 40), (20, 70_000)] {
            let b = buckets(values, value_bytes);
            let file = bbolt::encode(b.clone()).unwrap();
            let responses: Vec<SnapshotResponse> =
                SnapshotChunks::new(DbWriter::new(b).unwrap().into_pages()).collect();
            let (sha, blobs) = responses.split_last().unwrap();
            let mut joined = Vec::new();
            for (i, r) in blobs.iter().enumerate() {
                // Every blob but the last is exactly 32 KiB.
                if i + 1 < blobs.len() {
                    assert_eq!(r.blob.len(), SNAPSHOT_CHUNK_BYTES);
                }
                joined.extend_from_slice(&r.blob);
                assert_eq!(r.remaining_bytes, (file.len() - joined.len()) as u64);
            }
            assert_eq!(joined, file);
            assert_eq!(sha.remaining_bytes, 0);
            assert_eq!(sha.blob, Sha256::digest(&file).to_vec());
        }
    }
}
