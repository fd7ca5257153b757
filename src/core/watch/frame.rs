//! Watch responses encoded for the wire, in pieces that many responses share.
//!
//! With many watchers of one key, every response of a revision carries the same header
//! and the same events and differs only in its watch id. Encoding each response whole
//! (and cloning its events first) made the hub and the gRPC encoder do the same work
//! once per watcher. A [`WatchFrame`] instead holds the encoded header and the encoded
//! events as [`Bytes`], shared by reference count, and only the watch id of its own;
//! writing it out is copying a few slices. The pieces are the encodings of disjoint
//! fields of etcd's `WatchResponse`, written in field order, so the bytes on the wire are
//! exactly what prost encodes for the whole response.

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message as _;

use crate::pb::etcdserverpb::{ResponseHeader, WatchResponse};
use crate::pb::mvccpb::Event;

/// `WatchResponse.header`'s field number.
const HEADER_FIELD: u32 = 1;
/// `WatchResponse.watch_id`'s field number.
const WATCH_ID_FIELD: u32 = 2;
/// `WatchResponse.events`'s field number.
const EVENTS_FIELD: u32 = 11;
/// `WatchResponse.fragment = true`, encoded (field 7, varint 1).
const FRAGMENT_TRUE: &[u8] = &[7 << 3, 1];

/// One watch response, encoded in shareable pieces (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchFrame {
    /// The encoded `header` field (tag and length included), or nothing.
    header: Bytes,
    /// The watch id (written unless 0, as prost writes it).
    watch_id: i64,
    /// The encoded fields between the watch id and the events (`created` through
    /// `fragment`).
    middle: Bytes,
    /// The encoded `events` fields, each with its tag and length.
    events: Bytes,
}

impl WatchFrame {
    /// The frame of any response (control responses, and tests).
    pub fn from_response(resp: &WatchResponse) -> WatchFrame {
        let middle = WatchResponse {
            created: resp.created,
            canceled: resp.canceled,
            compact_revision: resp.compact_revision,
            cancel_reason: resp.cancel_reason.clone(),
            fragment: resp.fragment,
            ..WatchResponse::default()
        };
        let mut events = BytesMut::new();
        for e in &resp.events {
            events.put_slice(&encode_event(e));
        }
        WatchFrame {
            header: resp.header.as_ref().map(encode_header).unwrap_or_default(),
            watch_id: resp.watch_id,
            middle: Bytes::from(middle.encode_to_vec()),
            events: events.freeze(),
        }
    }

    /// A response carrying events: `header` from [`encode_header`], `events` the
    /// concatenation of [`encode_event`]s.
    pub fn with_events(header: Bytes, watch_id: i64, fragment: bool, events: Bytes) -> WatchFrame {
        WatchFrame {
            header,
            watch_id,
            middle: if fragment {
                Bytes::from_static(FRAGMENT_TRUE)
            } else {
                Bytes::new()
            },
            events,
        }
    }

    /// The encoded size of the response (what `encoded_len` says of the decoded one).
    pub fn len(&self) -> usize {
        self.header.len() + watch_id_len(self.watch_id) + self.middle.len() + self.events.len()
    }

    /// Whether the response encodes to nothing (every field at its default).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the response carries events.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The watch id.
    pub fn watch_id(&self) -> i64 {
        self.watch_id
    }

    /// Writes the encoded response.
    pub fn write(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.header);
        if self.watch_id != 0 {
            encode_key(WATCH_ID_FIELD, WireType::Varint, buf);
            encode_varint(self.watch_id as u64, buf);
        }
        buf.put_slice(&self.middle);
        buf.put_slice(&self.events);
    }

    /// The encoded response in one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.len());
        self.write(&mut buf);
        buf.freeze()
    }

    /// The response itself (for consumers inside the process, and tests).
    pub fn decode(&self) -> WatchResponse {
        WatchResponse::decode(self.to_bytes()).expect("a watch frame decodes")
    }
}

fn watch_id_len(watch_id: i64) -> usize {
    if watch_id == 0 {
        0
    } else {
        1 + encoded_len_varint(watch_id as u64)
    }
}

/// The `header` field of a response, encoded with its tag and length.
pub fn encode_header(h: &ResponseHeader) -> Bytes {
    let mut buf = BytesMut::with_capacity(h.encoded_len() + 2);
    prost::encoding::message::encode(HEADER_FIELD, h, &mut buf);
    buf.freeze()
}

/// One event as an `events` field of a response, encoded with its tag and length.
pub fn encode_event(e: &Event) -> Bytes {
    let mut buf = BytesMut::with_capacity(e.encoded_len() + 6);
    prost::encoding::message::encode(EVENTS_FIELD, e, &mut buf);
    buf.freeze()
}

/// Splits encoded `events` fields (as [`encode_event`] makes them, concatenated) back
/// into one slice per event, sharing the buffer.
pub fn split_events(events: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < events.len() {
        let mut rest = &events[at + 1..];
        let before = rest.len();
        let len = prost::encoding::decode_varint(&mut rest).expect("an encoded event") as usize;
        let end = at + 1 + (before - rest.len()) + len;
        out.push(events.slice(at..end));
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::mvccpb::KeyValue;

    fn event(key: &str, value: &str, rev: i64, prev: bool) -> Event {
        let kv = |v: &str, r: i64| KeyValue {
            key: key.into(),
            value: v.into(),
            create_revision: 2,
            mod_revision: r,
            version: 1,
            lease: 0,
        };
        Event {
            r#type: 0,
            kv: Some(kv(value, rev)),
            prev_kv: prev.then(|| kv("old", rev - 1)),
        }
    }

    /// A frame writes exactly what prost writes for the whole response, and its length
    /// is that response's encoded length.
    #[test]
    fn frames_encode_as_prost_does() {
        let header = ResponseHeader {
            cluster_id: 7,
            member_id: 9,
            revision: 42,
            raft_term: 3,
        };
        let events = vec![event("a", "1", 42, true), event("b", "2", 42, false)];
        let responses = [
            WatchResponse {
                header: Some(header),
                watch_id: 5,
                events: events.clone(),
                ..WatchResponse::default()
            },
            WatchResponse {
                header: Some(header),
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason: "mvcc: watcher range is empty".into(),
                ..WatchResponse::default()
            },
            WatchResponse {
                header: Some(ResponseHeader::default()),
                watch_id: 0,
                canceled: true,
                compact_revision: 12,
                ..WatchResponse::default()
            },
            WatchResponse {
                header: Some(header),
                watch_id: 1 << 40,
                fragment: true,
                events: events.clone(),
                ..WatchResponse::default()
            },
            WatchResponse::default(),
        ];
        for resp in &responses {
            let frame = WatchFrame::from_response(resp);
            assert_eq!(frame.to_bytes().as_ref(), resp.encode_to_vec().as_slice());
            assert_eq!(frame.len(), resp.encoded_len());
            assert_eq!(&frame.decode(), resp);
        }
        let mut body = BytesMut::new();
        for e in &events {
            body.put_slice(&encode_event(e));
        }
        let body = body.freeze();
        let built = WatchFrame::with_events(encode_header(&header), 1 << 40, true, body.clone());
        assert_eq!(
            built.to_bytes(),
            WatchFrame::from_response(&responses[3]).to_bytes()
        );
        let parts = split_events(&body);
        assert_eq!(
            parts,
            vec![encode_event(&events[0]), encode_event(&events[1])]
        );
    }
}
