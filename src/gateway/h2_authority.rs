//! A connection shim that repairs the HTTP/2 `:authority` pseudo-header sent by old gRPC
//! clients before the bytes reach tonic's HTTP/2 server.
//!
//! etcdctl 3.4 dials some endpoints (`endpoint status`, `endpoint health`, `--cluster`)
//! through grpc-go's passthrough resolver with the full URL as the target, so its requests
//! carry `:authority: http://127.0.0.1:2379`. Go's HTTP/2 server accepts that, but the `h2`
//! crate under tonic rejects the request as malformed and resets the stream. etcd users
//! expect those commands to work, so this module rewrites such a value to the part after
//! `://` (without any path) in the client-to-server direction and leaves every other byte
//! alone.
//!
//! [`AuthorityRewriter`] is the pure, synchronous part: it is fed client bytes in arbitrary
//! chunks and returns the bytes to hand to the HTTP/2 server. [`AuthorityFixStream`] wraps
//! a connection and runs the rewriter on everything read from it.
//!
//! # How the rewriting keeps HPACK consistent
//!
//! Header blocks are HPACK-compressed against a dynamic table that the client's encoder
//! and the server's decoder both maintain. The rewriter decodes every header block with
//! its own decoder, so its table always mirrors the client's. While no block needed a fix,
//! the original frames are forwarded unchanged, and h2's table therefore mirrors the
//! client's too. The first block that needs a fix is re-encoded with literals that never
//! touch the dynamic table, and from then on every block is re-encoded that way: h2's table
//! no longer matches the client's (it never saw the rewritten block's insertions), but it
//! also never gets consulted again, so h2 decodes exactly the header lists the rewriter
//! produced.
//!
//! # What happens on bad input
//!
//! The rewriter never panics. While its output is still byte-identical to the client's
//! input (no block has been rewritten yet), anything it cannot understand — a malformed
//! frame, an undecodable header block, a violation of the HEADERS/CONTINUATION sequencing —
//! makes it give up and forward the remaining bytes unchanged, so h2 sees exactly what the
//! client sent and reports the protocol error itself. After a block has been rewritten that
//! is no longer sound, because h2's HPACK table has diverged from the client's and could
//! decode the client's later bytes into different headers; the rewriter then returns
//! [`RewriteError`] and the connection is closed instead. A header block larger than
//! [`MAX_HEADER_BLOCK`] also closes the connection, because buffering it would let one client
//! hold an unbounded amount of memory; so does a block that has to be re-encoded and decodes
//! to more than that, because a few bytes of indexed fields can stand for kilobytes each.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::hpack;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const CLIENT_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The largest header block (all HEADERS and CONTINUATION fragments of one request,
/// including their frame headers) the rewriter buffers before closing the connection.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;

/// The largest frame payload the rewriter emits. It is HTTP/2's default
/// SETTINGS_MAX_FRAME_SIZE, which tonic's server (through hyper) keeps for inbound frames
/// unless `Server::max_frame_size` is set, and detcd does not set it.
pub const MAX_FRAME_PAYLOAD: usize = 16_384;

/// The HPACK dynamic table size the server allows the client to use. tonic's server
/// (through hyper) never changes SETTINGS_HEADER_TABLE_SIZE, so it is the protocol default.
const HPACK_TABLE_SIZE: usize = 4_096;

/// The length of an HTTP/2 frame header.
const FRAME_HEADER_LEN: usize = 9;

const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;

const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Why the rewriter refuses to go on; the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// A header block exceeded [`MAX_HEADER_BLOCK`], as received or, when it had to be
    /// re-encoded, decoded.
    #[error("HTTP/2 header block exceeds {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    /// The client sent something malformed after a header block had been rewritten, when
    /// forwarding it unchanged could be misread by the server (see the module docs).
    #[error("malformed HTTP/2 input after :authority rewriting began: {0}")]
    Malformed(String),
}

/// Where the rewriter is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Inside the connection preface; the number of its bytes seen so far.
    Preface(usize),
    /// Collecting the 9 bytes of a frame header into `frame`.
    FrameHeader,
    /// Streaming the payload of a frame that needs no rewriting; the bytes still to come.
    Stream(usize),
    /// Buffering a HEADERS or CONTINUATION frame into `frame`; the payload bytes to come.
    Collect(usize),
    /// Forwarding every remaining byte unchanged.
    PassThrough,
    /// A [`RewriteError`] was returned; nothing more is accepted.
    Failed,
}

/// The header block being collected from a HEADERS frame and its CONTINUATION frames.
struct PendingBlock {
    /// The stream the block belongs to.
    stream_id: u32,
    /// The HEADERS frame's END_STREAM and PRIORITY flags.
    flags: u8,
    /// The HEADERS frame's priority fields, when PRIORITY is set.
    priority: Option<[u8; 5]>,
    /// The HPACK fragments concatenated.
    fragment: Vec<u8>,
    /// The original frames, byte for byte, to forward when nothing needs fixing.
    raw: Vec<u8>,
}

/// Rewrites, in a client-to-server HTTP/2 byte stream, `:authority` values that contain
/// `://` to the part after it. See the module docs for the approach and its limits.
pub struct AuthorityRewriter {
    state: State,
    /// The frame being collected: its header, then (for header frames) its payload.
    frame: Vec<u8>,
    /// The header block in progress, between a HEADERS frame without END_HEADERS and the
    /// CONTINUATION frame that ends it.
    block: Option<PendingBlock>,
    /// Tracks the client's HPACK dynamic table.
    decoder: hpack::Decoder,
    /// The current block re-encoded without the dynamic table, kept between blocks so its
    /// allocation is reused.
    encoded: Vec<u8>,
    /// Whether a block has been rewritten, which means h2's HPACK table no longer mirrors
    /// the client's and every later block must be re-encoded too.
    rewriting: bool,
}

impl Default for AuthorityRewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthorityRewriter {
    /// A rewriter for a fresh connection, expecting the client connection preface first.
    pub fn new() -> Self {
        AuthorityRewriter {
            state: State::Preface(0),
            frame: Vec::with_capacity(FRAME_HEADER_LEN),
            block: None,
            // A size update beyond what the server advertised is a compression error for
            // h2; the decoder refuses it too, so it never accepts what h2 would not.
            decoder: hpack::Decoder::new(HPACK_TABLE_SIZE),
            encoded: Vec::new(),
            rewriting: false,
        }
    }

    /// Whether some header block has been rewritten on this connection.
    pub fn has_rewritten(&self) -> bool {
        self.rewriting
    }

    /// Whether the rewriter gave up on parsing and forwards everything unchanged.
    pub fn is_pass_through(&self) -> bool {
        self.state == State::PassThrough
    }

    /// Consumes the next chunk of client bytes and appends what should be passed on to
    /// the server to `out`. Bytes of an incomplete header block are held back until the
    /// block is complete. After an error the connection must be closed.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        while !input.is_empty() {
            match self.state {
                State::Failed => {
                    return Err(RewriteError::Malformed(
                        "input after an earlier error".to_string(),
                    ))
                }
                State::PassThrough => {
                    out.extend_from_slice(input);
                    return Ok(());
                }
                State::Preface(seen) => {
                    let n = input.len().min(CLIENT_PREFACE.len() - seen);
                    let (chunk, rest) = input.split_at(n);
                    out.extend_from_slice(chunk);
                    input = rest;
                    if chunk != &CLIENT_PREFACE[seen..seen + n] {
                        // Not HTTP/2 with prior knowledge: leave it to the server to refuse.
                        self.state = State::PassThrough;
                    } else if seen + n == CLIENT_PREFACE.len() {
                        self.state = State::FrameHeader;
                    } else {
                        self.state = State::Preface(seen + n);
                    }
                }
                State::Stream(remaining) => {
                    let n = input.len().min(remaining);
                    let (chunk, rest) = input.split_at(n);
                    out.extend_from_slice(chunk);
                    input = rest;
                    self.state = if n == remaining {
                        State::FrameHeader
                    } else {
                        State::Stream(remaining - n)
                    };
                }
                State::FrameHeader => {
                    let n = input.len().min(FRAME_HEADER_LEN - self.frame.len());
                    let (chunk, rest) = input.split_at(n);
                    self.frame.extend_from_slice(chunk);
                    input = rest;
                    if self.frame.len() == FRAME_HEADER_LEN {
                        self.on_frame_header(out)?;
                    }
                }
                State::Collect(remaining) => {
                    let n = input.len().min(remaining);
                    let (chunk, rest) = input.split_at(n);
                    self.frame.extend_from_slice(chunk);
                    input = rest;
                    if n == remaining {
                        self.on_header_frame(out)?;
                    } else {
                        self.state = State::Collect(remaining - n);
                    }
                }
            }
        }
        Ok(())
    }

    /// Called at the end of the client's stream: hands on any bytes still held back, if
    /// that is sound (they are the client's own, unrewritten bytes), so the server sees
    /// the truncated input exactly as the client sent it.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.rewriting {
            self.flush_raw(out);
        }
        self.frame.clear();
        self.block = None;
    }

    /// Decides what to do with a complete frame header in `self.frame`.
    fn on_frame_header(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let h = &self.frame;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let kind = h[3];
        let stream_id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        if let Some(block) = &self.block {
            // RFC 9113 §6.10: nothing but CONTINUATION frames on the same stream may
            // follow a header block without END_HEADERS.
            if kind != FRAME_CONTINUATION || stream_id != block.stream_id {
                return self.give_up(out, "frame interleaved with a header block");
            }
        }
        let is_header_frame = kind == FRAME_HEADERS || self.block.is_some();
        if !is_header_frame {
            // Everything else is streamed through: a DATA frame may be up to 16 MiB and
            // must not be buffered.
            out.extend_from_slice(&self.frame);
            self.frame.clear();
            self.state = if len == 0 {
                State::FrameHeader
            } else {
                State::Stream(len)
            };
            return Ok(());
        }
        let buffered = self.block.as_ref().map_or(0, |b| b.raw.len());
        if buffered + FRAME_HEADER_LEN + len > MAX_HEADER_BLOCK {
            self.state = State::Failed;
            return Err(RewriteError::HeaderBlockTooLarge);
        }
        if len == 0 {
            self.on_header_frame(out)
        } else {
            self.frame.reserve(len);
            self.state = State::Collect(len);
            Ok(())
        }
    }

    /// Handles a complete HEADERS or CONTINUATION frame in `self.frame`.
    fn on_header_frame(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        self.state = State::FrameHeader;
        let kind = self.frame[3];
        let flags = self.frame[4];
        let stream_id =
            u32::from_be_bytes([self.frame[5], self.frame[6], self.frame[7], self.frame[8]])
                & 0x7fff_ffff;
        let payload = &self.frame[FRAME_HEADER_LEN..];
        let fragment = if kind == FRAME_HEADERS {
            let mut start = 0;
            let mut pad = 0;
            if flags & FLAG_PADDED != 0 {
                let Some(&p) = payload.first() else {
                    return self.give_up(out, "PADDED HEADERS frame without a pad length");
                };
                pad = p as usize;
                start = 1;
            }
            let mut priority = None;
            if flags & FLAG_PRIORITY != 0 {
                let Some(p) = payload.get(start..start + 5) else {
                    return self.give_up(out, "PRIORITY HEADERS frame too short");
                };
                priority = Some([p[0], p[1], p[2], p[3], p[4]]);
                start += 5;
            }
            if start + pad > payload.len() {
                return self.give_up(out, "HEADERS padding exceeds the frame");
            }
            let fragment = payload[start..payload.len() - pad].to_vec();
            self.block = Some(PendingBlock {
                stream_id,
                flags: flags & (FLAG_END_STREAM | FLAG_PRIORITY),
                priority,
                fragment,
                raw: Vec::new(),
            });
            None
        } else {
            Some(payload.to_vec())
        };
        let block = self
            .block
            .as_mut()
            .expect("a header frame always has a pending block");
        if let Some(fragment) = fragment {
            block.fragment.extend_from_slice(&fragment);
        }
        block.raw.extend_from_slice(&self.frame);
        self.frame.clear();
        if flags & FLAG_END_HEADERS != 0 {
            self.on_header_block(out)
        } else {
            Ok(())
        }
    }

    /// Decodes a complete header block and forwards it, rewritten if needed.
    fn on_header_block(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let mut encoded = std::mem::take(&mut self.encoded);
        encoded.clear();
        let result = self.decode_header_block(&mut encoded, out);
        // The buffer is kept for the next block unless an unusually large block grew it,
        // so an idle connection does not hold on to that memory.
        if encoded.capacity() <= MAX_FRAME_PAYLOAD {
            self.encoded = encoded;
        }
        result
    }

    /// [`Self::on_header_block`] with an empty buffer for the re-encoded block.
    fn decode_header_block(
        &mut self,
        encoded: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(), RewriteError> {
        let block = self.block.take().expect("a header block is pending");
        // Every block is re-encoded while it is decoded, as the decoder hands out each
        // field only once and whether the block needs the re-encoding is known only at
        // its end. Copying a few hundred bytes costs little next to the decoding.
        let mut needs_fix = false;
        let mut too_large = false;
        let decoded = self.decoder.decode(&block.fragment, |name, value| {
            let fix = name == b":authority" && contains_scheme(value);
            needs_fix |= fix;
            let value = if fix { strip_scheme(value) } else { value };
            // Indexed fields can make a block decode to far more than its own size, so
            // the re-encoding is bounded like the blocks received.
            let literal_len = 1 + 2 * MAX_INTEGER_LEN + name.len() + value.len();
            too_large |= encoded.len() + literal_len > MAX_HEADER_BLOCK;
            // An authority that is empty once the scheme is removed (`unix:///path`) is
            // not valid for h2; HTTP/2 allows leaving the pseudo-header out.
            let omit = fix && value.is_empty();
            if !too_large && !omit {
                encode_literal(name, value, encoded);
            }
        });
        if let Err(e) = decoded {
            self.block = Some(block);
            return self.give_up(out, &format!("undecodable header block: {e}"));
        }
        if !needs_fix && !self.rewriting {
            out.extend_from_slice(&block.raw);
            return Ok(());
        }
        if too_large {
            self.state = State::Failed;
            return Err(RewriteError::HeaderBlockTooLarge);
        }
        self.rewriting = true;
        write_header_frames(block.stream_id, block.flags, block.priority, encoded, out);
        Ok(())
    }

    /// Stops parsing because of malformed input: forwards what is held back and then
    /// everything else unchanged if the output still equals the input, and fails
    /// otherwise (see the module docs).
    fn give_up(&mut self, out: &mut Vec<u8>, why: &str) -> Result<(), RewriteError> {
        if self.rewriting {
            self.state = State::Failed;
            self.frame.clear();
            self.block = None;
            return Err(RewriteError::Malformed(why.to_string()));
        }
        self.flush_raw(out);
        self.state = State::PassThrough;
        Ok(())
    }

    /// Appends every client byte held back so far, in order, to `out`.
    fn flush_raw(&mut self, out: &mut Vec<u8>) {
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        out.extend_from_slice(&self.frame);
        self.frame.clear();
    }
}

/// Whether an `:authority` value carries a URL scheme.
fn contains_scheme(value: &[u8]) -> bool {
    value.windows(3).any(|w| w == b"://")
}

/// The part of `value` after the first `://`, up to (not including) any path.
fn strip_scheme(value: &[u8]) -> &[u8] {
    let after = match value.windows(3).position(|w| w == b"://") {
        Some(i) => &value[i + 3..],
        None => value,
    };
    match after.iter().position(|&b| b == b'/') {
        Some(i) => &after[..i],
        None => after,
    }
}

/// The most bytes [`encode_integer`] appends for a length below [`MAX_HEADER_BLOCK`]: the
/// prefix byte and three 7-bit continuation bytes.
const MAX_INTEGER_LEN: usize = 4;

/// Appends an HPACK integer with an `prefix_bits`-bit prefix (RFC 7541 §5.1).
fn encode_integer(mut value: usize, prefix_bits: u8, first: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// Appends a "literal header field without indexing — new name" representation with
/// raw (not Huffman-coded) strings (RFC 7541 §6.2.2). It neither reads nor changes the
/// decoder's dynamic table, which is what keeps h2's decoding independent of its table.
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    encode_integer(name.len(), 7, 0, out);
    out.extend_from_slice(name);
    encode_integer(value.len(), 7, 0, out);
    out.extend_from_slice(value);
}

/// Appends a 9-byte frame header.
fn write_frame_header(len: usize, kind: u8, flags: u8, stream_id: u32, out: &mut Vec<u8>) {
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
}

/// Appends a header block as a HEADERS frame and as many CONTINUATION frames as needed
/// to keep every payload within [`MAX_FRAME_PAYLOAD`]. Padding is dropped (it only hides
/// the original length, which changed anyway); END_STREAM and priority are kept.
fn write_header_frames(
    stream_id: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: &[u8],
    out: &mut Vec<u8>,
) {
    let prio_len = priority.map_or(0, |p| p.len());
    let first = block.len().min(MAX_FRAME_PAYLOAD - prio_len);
    let (head, mut rest) = block.split_at(first);
    let end = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
    write_frame_header(
        prio_len + head.len(),
        FRAME_HEADERS,
        flags | end,
        stream_id,
        out,
    );
    if let Some(p) = priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(head);
    while !rest.is_empty() {
        let n = rest.len().min(MAX_FRAME_PAYLOAD);
        let (chunk, tail) = rest.split_at(n);
        let end = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
        write_frame_header(n, FRAME_CONTINUATION, end, stream_id, out);
        out.extend_from_slice(chunk);
        rest = tail;
    }
}

/// The size of the buffer [`AuthorityFixStream`] reads the underlying connection into.
const READ_CHUNK: usize = 16 * 1024;

/// A connection whose client-to-server bytes go through an [`AuthorityRewriter`]; writes
/// pass straight through. A [`RewriteError`] surfaces as an `InvalidData` read error,
/// which makes the HTTP/2 server drop the connection.
pub struct AuthorityFixStream<S> {
    inner: S,
    rewriter: AuthorityRewriter,
    /// Rewritten bytes not yet handed to the reader, from `pos` on.
    out: Vec<u8>,
    pos: usize,
    scratch: Box<[u8]>,
    /// Whether the underlying connection reported end of stream.
    eof: bool,
}

impl<S> AuthorityFixStream<S> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: S) -> Self {
        AuthorityFixStream {
            inner,
            rewriter: AuthorityRewriter::new(),
            out: Vec::new(),
            pos: 0,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            eof: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFixStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.pos);
                buf.put_slice(&this.out[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.out.len() {
                    this.out.clear();
                    this.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Returning with nothing filled would signal end of stream, so keep reading
            // while the rewriter holds everything back (an incomplete header block).
            let mut read = ReadBuf::new(&mut this.scratch);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            this.out.clear();
            this.pos = 0;
            if read.filled().is_empty() {
                this.eof = true;
                this.rewriter.finish(&mut this.out);
                continue;
            }
            this.rewriter
                .feed(read.filled(), &mut this.out)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFixStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    /// The client→server bytes of a real `etcdctl 3.4.23 endpoint status` connection
    /// (preface, SETTINGS, SETTINGS ack, one Status request), captured through a proxy in
    /// front of etcd 3.4.23 advertising `http://127.0.0.1:25998`. grpc-go Huffman-codes
    /// the strings and indexes them into the dynamic table.
    const ETCDCTL_STATUS_CONN: &[&str] = &[
        "505249202a20485454502f322e300d0a0d0a534d0d0a0d0a00000004000000000000000004010000",
        "00000000770104000000018386459760a924882d9dcb6571afa066a925a87510ac6e48d36a3f4190",
        "9d29aee30c044eae05c0b86e09b7df7b5f8b1d75d0620d263d4c4d65647a8b9acac8b4c7602bb2ca",
        "ecff40027465864d833505b11f40899acac8b24d494f6a7f8669f7da0bcfdb408d25062d49587599",
        "6ee5b1063d5f03332e340000050001000000010000000000",
    ];

    fn unhex(parts: &[&str]) -> Vec<u8> {
        let s: String = parts.concat();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn frame(kind: u8, flags: u8, sid: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame_header(payload.len(), kind, flags, sid, &mut out);
        out.extend_from_slice(payload);
        out
    }

    /// How a client frames one header block.
    #[derive(Default, Clone)]
    struct Framing {
        end_stream: bool,
        pad: Option<u8>,
        priority: Option<[u8; 5]>,
        /// Cut points in the block: the first piece goes in HEADERS, the rest in
        /// CONTINUATION frames.
        splits: Vec<usize>,
    }

    fn header_frames(sid: u32, block: &[u8], f: &Framing) -> Vec<u8> {
        let mut cuts = vec![0];
        cuts.extend(f.splits.iter().map(|&c| c.min(block.len())));
        cuts.push(block.len());
        let mut out = Vec::new();
        for (i, w) in cuts.windows(2).enumerate() {
            let piece = &block[w[0]..w[1]];
            let last = i + 2 == cuts.len();
            let mut flags = if last { FLAG_END_HEADERS } else { 0 };
            if i == 0 {
                let mut payload = Vec::new();
                if let Some(p) = f.pad {
                    flags |= FLAG_PADDED;
                    payload.push(p);
                }
                if let Some(p) = f.priority {
                    flags |= FLAG_PRIORITY;
                    payload.extend_from_slice(&p);
                }
                if f.end_stream {
                    flags |= FLAG_END_STREAM;
                }
                payload.extend_from_slice(piece);
                payload.extend(std::iter::repeat_n(0u8, f.pad.unwrap_or(0) as usize));
                out.extend(frame(FRAME_HEADERS, flags, sid, &payload));
            } else {
                out.extend(frame(FRAME_CONTINUATION, flags, sid, piece));
            }
        }
        out
    }

    /// What an HTTP/2 server sees in a client byte stream: header blocks decoded (with
    /// one decoder for the connection, as h2 does) and every other frame verbatim.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Headers {
            sid: u32,
            end_stream: bool,
            priority: Option<[u8; 5]>,
            headers: Headers,
        },
        Frame {
            kind: u8,
            flags: u8,
            sid: u32,
            payload: Vec<u8>,
        },
    }

    /// Parses a well-formed client stream like h2 would, asserting HTTP/2's framing rules
    /// (frame size limit, CONTINUATION sequencing).
    fn server_view(bytes: &[u8]) -> Vec<Event> {
        assert_eq!(&bytes[..24], CLIENT_PREFACE);
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HPACK_TABLE_SIZE);
        let mut events = Vec::new();
        let mut p = 24;
        // The header block being assembled: its event (headers still empty) and fragments.
        let mut pending: Option<(Event, Vec<u8>)> = None;
        while p < bytes.len() {
            let h = &bytes[p..p + 9];
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let (kind, flags) = (h[3], h[4]);
            let sid = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
            assert!(len <= MAX_FRAME_PAYLOAD, "frame of {len} bytes");
            let payload = &bytes[p + 9..p + 9 + len];
            p += 9 + len;
            if let Some((Event::Headers { sid: psid, .. }, _)) = &pending {
                assert_eq!(kind, FRAME_CONTINUATION, "frame inside a header block");
                assert_eq!(sid, *psid);
            }
            match kind {
                FRAME_HEADERS => {
                    let mut start = 0;
                    let mut pad = 0;
                    if flags & FLAG_PADDED != 0 {
                        pad = payload[0] as usize;
                        start = 1;
                    }
                    let mut priority = None;
                    if flags & FLAG_PRIORITY != 0 {
                        priority = Some(payload[start..start + 5].try_into().unwrap());
                        start += 5;
                    }
                    let frag = payload[start..len - pad].to_vec();
                    let event = Event::Headers {
                        sid,
                        end_stream: flags & FLAG_END_STREAM != 0,
                        priority,
                        headers: Vec::new(),
                    };
                    pending = Some((event, frag));
                }
                FRAME_CONTINUATION => {
                    pending.as_mut().unwrap().1.extend_from_slice(payload);
                }
                _ => events.push(Event::Frame {
                    kind,
                    flags,
                    sid,
                    payload: payload.to_vec(),
                }),
            }
            if matches!(kind, FRAME_HEADERS | FRAME_CONTINUATION) && flags & FLAG_END_HEADERS != 0 {
                let (mut event, block) = pending.take().unwrap();
                if let Event::Headers { headers, .. } = &mut event {
                    *headers = decoder.decode(&block).expect("server-side HPACK decode");
                }
                events.push(event);
            }
        }
        assert!(pending.is_none(), "stream ends inside a header block");
        events
    }

    /// The server view the rewriter should produce from `input`: the client's, with
    /// scheme-carrying authorities fixed.
    fn expected_view(input: &[u8]) -> Vec<Event> {
        let mut events = server_view(input);
        for e in &mut events {
            if let Event::Headers { headers, .. } = e {
                headers.retain_mut(|(name, value)| {
                    if name.as_slice() != b":authority" {
                        return true;
                    }
                    let s = String::from_utf8(value.clone()).unwrap();
                    if let Some((_, rest)) = s.split_once("://") {
                        let host = rest.split('/').next().unwrap();
                        *value = host.as_bytes().to_vec();
                    }
                    !value.is_empty()
                });
            }
        }
        events
    }

    /// Feeds `input` in chunks of the given sizes (cycled), then finishes.
    fn run_chunked(input: &[u8], sizes: &[usize]) -> Result<Vec<u8>, RewriteError> {
        let mut r = AuthorityRewriter::new();
        let mut out = Vec::new();
        let mut rest = input;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].clamp(1, rest.len());
            let (chunk, tail) = rest.split_at(n);
            r.feed(chunk, &mut out)?;
            rest = tail;
            i += 1;
        }
        r.finish(&mut out);
        Ok(out)
    }

    /// Runs the rewriter over `input` whole, byte by byte, in a few irregular chunkings
    /// and, for small inputs, split in two at every position; asserts that every run
    /// produces the same output and returns it.
    fn rewrite(input: &[u8]) -> Vec<u8> {
        let whole = run_chunked(input, &[usize::MAX]).expect("rewrite");
        for sizes in [&[1][..], &[2, 3, 5], &[7, 1, 13], &[4096]] {
            assert_eq!(run_chunked(input, sizes).expect("rewrite"), whole);
        }
        if input.len() <= 4096 {
            for cut in 1..input.len() {
                let mut r = AuthorityRewriter::new();
                let mut out = Vec::new();
                r.feed(&input[..cut], &mut out).unwrap();
                r.feed(&input[cut..], &mut out).unwrap();
                r.finish(&mut out);
                assert_eq!(out, whole, "split at {cut}");
            }
        }
        whole
    }

    fn connection_start() -> Vec<u8> {
        let mut v = CLIENT_PREFACE.to_vec();
        v.extend(frame(0x4, 0, 0, &[0, 0x2, 0, 0, 0, 0])); // SETTINGS: ENABLE_PUSH=0
        v.extend(frame(0x4, 0x1, 0, &[])); // SETTINGS ack
        v.extend(frame(0x8, 0, 0, &[0, 0x0f, 0, 0x01])); // WINDOW_UPDATE
        v
    }

    fn grpc_request(authority: &[u8], path: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", path),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
            (b"user-agent", b"grpc-go/1.26.0"),
            (b"te", b"trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect()
    }

    /// Encodes like grpc-go: Huffman-coded strings, incremental indexing, reusing table
    /// entries where possible (httlib-hpack, independent of the decoder under test).
    fn huffman_block(enc: &mut httlib_hpack::Encoder<'_>, headers: &Headers) -> Vec<u8> {
        let mut dst = Vec::new();
        let flags = httlib_hpack::Encoder::HUFFMAN_NAME
            | httlib_hpack::Encoder::HUFFMAN_VALUE
            | httlib_hpack::Encoder::WITH_INDEXING
            | httlib_hpack::Encoder::BEST_FORMAT;
        for (n, v) in headers {
            enc.encode((n.clone(), v.clone(), flags), &mut dst).unwrap();
        }
        dst
    }

    fn loona_block(enc: &mut loona_hpack::Encoder<'_>, headers: &Headers) -> Vec<u8> {
        enc.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    fn data(sid: u32, end: bool, body: &[u8]) -> Vec<u8> {
        frame(0x0, if end { FLAG_END_STREAM } else { 0 }, sid, body)
    }

    #[test]
    fn strips_scheme_and_path() {
        assert_eq!(strip_scheme(b"http://127.0.0.1:2379"), b"127.0.0.1:2379");
        assert_eq!(strip_scheme(b"https://h:1/x/y"), b"h:1");
        assert_eq!(strip_scheme(b"unix:///tmp/sock"), b"");
        assert!(contains_scheme(b"http://x"));
        assert!(!contains_scheme(b"x:1"));
    }

    #[test]
    fn integer_encoding_matches_hpack() {
        for v in [0, 1, 126, 127, 128, 300, 16_383, 1 << 20] {
            let mut ours = Vec::new();
            encode_integer(v, 7, 0, &mut ours);
            assert_eq!(ours, loona_hpack::encoder::encode_integer(v, 7), "{v}");
        }
    }

    #[test]
    fn traffic_without_scheme_is_byte_identical() {
        // Every framing variant the rewriter has to parse.
        let framings = [
            Framing::default(),
            Framing {
                pad: Some(7),
                ..Framing::default()
            },
            Framing {
                priority: Some([0, 0, 0, 0, 15]),
                splits: vec![3, 10],
                ..Framing::default()
            },
            Framing {
                end_stream: true,
                pad: Some(0),
                priority: Some([0x80, 0, 0, 1, 200]),
                splits: vec![1],
            },
        ];
        for huffman in [true, false] {
            let mut input = connection_start();
            let mut huff = httlib_hpack::Encoder::default();
            let mut plain = loona_hpack::Encoder::new();
            // Several requests, so later blocks lean on the dynamic table.
            for (i, f) in framings.iter().enumerate() {
                let sid = 1 + 2 * i as u32;
                let mut block = Vec::new();
                if i == 2 {
                    // A table size update the rewriter's decoder must apply.
                    if huffman {
                        huff.update_max_dynamic_size(1024, &mut block).unwrap();
                    } else {
                        block.extend([0x3f, 0xe1, 0x07]); // size 1024
                        plain.set_max_table_size(1024);
                    }
                }
                let path = format!("/etcdserverpb.KV/Put{i}");
                let headers = grpc_request(b"127.0.0.1:2379", path.as_bytes());
                if huffman {
                    block.extend(huffman_block(&mut huff, &headers));
                } else {
                    block.extend(loona_block(&mut plain, &headers));
                }
                input.extend(header_frames(sid, &block, f));
                if !f.end_stream {
                    // A DATA frame of the largest size, so with its header larger than
                    // the adapter's read buffer: it is streamed, never buffered.
                    input.extend(data(sid, true, &vec![0xa5; MAX_FRAME_PAYLOAD]));
                }
                input.extend(frame(0x6, 0, 0, b"pingpong"));
                // A CONTINUATION outside a header block is h2's to reject, not ours.
                if i == 3 {
                    input.extend(frame(0x3, 0, sid, &[0, 0, 0, 8])); // RST_STREAM
                }
            }
            let out = rewrite(&input);
            assert_eq!(out, input, "huffman={huffman}");
            let mut r = AuthorityRewriter::new();
            r.feed(&input, &mut Vec::new()).unwrap();
            // The bytes are identical because nothing needed fixing, not because the
            // rewriter gave up on parsing.
            assert!(!r.has_rewritten() && !r.is_pass_through());
            assert_eq!(server_view(&out).len(), 3 + 4 + 3 + 4 + 1);
        }
    }

    #[test]
    fn real_etcdctl_status_request_is_fixed() {
        let input = unhex(ETCDCTL_STATUS_CONN);
        let client = server_view(&input);
        let Event::Headers { headers, .. } = &client[2] else {
            panic!("{client:?}")
        };
        assert!(headers.contains(&(b":authority".to_vec(), b"http://127.0.0.1:25998".to_vec())));
        let out = rewrite(&input);
        assert_ne!(out, input);
        let view = server_view(&out);
        assert_eq!(view, expected_view(&input));
        let Event::Headers { headers, .. } = &view[2] else {
            panic!("{view:?}")
        };
        assert!(headers.contains(&(b":authority".to_vec(), b"127.0.0.1:25998".to_vec())));
        assert!(headers.contains(&(
            b":path".to_vec(),
            b"/etcdserverpb.Maintenance/Status".to_vec()
        )));
        // The frames around the request are untouched.
        assert_eq!(&out[..24 + 9 + 9], &input[..24 + 9 + 9]);
        assert!(out.ends_with(&input[input.len() - 14..]));
    }

    /// Several requests on one connection whose encoder indexes headers, including the
    /// scheme-carrying authority, so later requests refer to it through the dynamic table
    /// only; the decoder must keep following the client's table after the rewrite.
    fn multi_request_connection(huffman: bool) -> Vec<u8> {
        let mut input = connection_start();
        let mut huff = httlib_hpack::Encoder::default();
        let mut plain = loona_hpack::Encoder::new();
        let requests: [(&[u8], Framing); 6] = [
            (b"127.0.0.1:2379", Framing::default()),
            (
                b"http://127.0.0.1:2379",
                Framing {
                    pad: Some(5),
                    priority: Some([0, 0, 0, 3, 7]),
                    ..Framing::default()
                },
            ),
            (
                b"http://127.0.0.1:2379",
                Framing {
                    splits: vec![1, 2, 9],
                    ..Framing::default()
                },
            ),
            (b"127.0.0.1:2379", Framing::default()),
            (
                b"https://[::1]:2379/some/path",
                Framing {
                    end_stream: true,
                    ..Framing::default()
                },
            ),
            (b"http://127.0.0.1:2379", Framing::default()),
        ];
        for (i, (authority, framing)) in requests.iter().enumerate() {
            let sid = 1 + 2 * i as u32;
            let mut headers = grpc_request(authority, b"/etcdserverpb.Maintenance/Status");
            headers.push((b"x-request".to_vec(), format!("r{i}").into_bytes()));
            let mut block = Vec::new();
            if i == 4 {
                // A table size update evicts the entries; the decoder must apply it and h2
                // must never see it, as it only sees rewritten blocks by then.
                if huffman {
                    huff.update_max_dynamic_size(0, &mut block).unwrap();
                    huff.update_max_dynamic_size(256, &mut block).unwrap();
                } else {
                    block.extend([0x20, 0x3f, 0xe1, 0x01]); // sizes 0, then 256
                    plain.set_max_table_size(0);
                    plain.set_max_table_size(256);
                }
            }
            if huffman {
                block.extend(huffman_block(&mut huff, &headers));
            } else {
                block.extend(loona_block(&mut plain, &headers));
            }
            input.extend(header_frames(sid, &block, framing));
            if !framing.end_stream {
                input.extend(data(sid, true, b"\0\0\0\0\0"));
            }
        }
        input
    }

    #[test]
    fn later_requests_on_a_connection_stay_correct() {
        for huffman in [true, false] {
            let input = multi_request_connection(huffman);
            // Sanity: the client really used the dynamic table and (for httlib) Huffman.
            let out = rewrite(&input);
            let view = server_view(&out);
            assert_eq!(view, expected_view(&input), "huffman={huffman}");
            let authorities: Vec<Vec<u8>> = view
                .iter()
                .filter_map(|e| match e {
                    Event::Headers { headers, .. } => Some(
                        headers
                            .iter()
                            .find(|(n, _)| n == b":authority")
                            .unwrap()
                            .1
                            .clone(),
                    ),
                    _ => None,
                })
                .collect();
            assert_eq!(
                authorities,
                [
                    &b"127.0.0.1:2379"[..],
                    b"127.0.0.1:2379",
                    b"127.0.0.1:2379",
                    b"127.0.0.1:2379",
                    b"[::1]:2379",
                    b"127.0.0.1:2379",
                ]
            );
            // The first request precedes any rewrite and passes byte for byte.
            let prefix = connection_start().len();
            let first = &input[prefix..prefix + 9];
            let first_len = u32::from_be_bytes([0, first[0], first[1], first[2]]) as usize;
            assert_eq!(
                &out[..prefix + 9 + first_len],
                &input[..prefix + 9 + first_len]
            );
        }
    }

    #[test]
    fn client_encoders_really_use_huffman_and_the_dynamic_table() {
        let mut huff = httlib_hpack::Encoder::default();
        let headers = grpc_request(b"http://127.0.0.1:2379", b"/x");
        let first = huffman_block(&mut huff, &headers);
        let second = huffman_block(&mut huff, &headers);
        // `:authority` with incremental indexing, name index 1, Huffman-coded value.
        let pos = first.iter().position(|&b| b == 0x41).unwrap();
        assert_eq!(first[pos + 1] & 0x80, 0x80);
        // The repeat is all indexed fields.
        assert!(second.iter().all(|&b| b & 0x80 == 0x80));
    }

    #[test]
    fn rewritten_block_larger_than_a_frame_uses_continuation() {
        let mut input = connection_start();
        let mut enc = loona_hpack::Encoder::new();
        let mut headers = grpc_request(b"http://127.0.0.1:2379", b"/etcdserverpb.KV/Put");
        headers.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
        let block = loona_block(&mut enc, &headers);
        let splits: Vec<usize> = (1..block.len() / 16_000 + 1).map(|i| i * 16_000).collect();
        input.extend(header_frames(
            1,
            &block,
            &Framing {
                priority: Some([0, 0, 0, 0, 1]),
                splits,
                ..Framing::default()
            },
        ));
        input.extend(data(1, true, b"\0\0\0\0\0"));
        let out = rewrite(&input);
        // server_view asserts every frame fits the default maximum frame size.
        assert_eq!(server_view(&out), expected_view(&input));
        let continuations = out
            .windows(4)
            .filter(|w| w[3] == FRAME_CONTINUATION && w[0] == 0)
            .count();
        assert!(continuations >= 2);
    }

    #[test]
    fn unix_authority_is_dropped() {
        let mut input = connection_start();
        let block = loona_block(
            &mut loona_hpack::Encoder::new(),
            &grpc_request(b"unix:///tmp/etcd.sock", b"/p"),
        );
        input.extend(header_frames(1, &block, &Framing::default()));
        let view = server_view(&rewrite(&input));
        let Event::Headers { headers, .. } = &view[view.len() - 1] else {
            panic!()
        };
        assert!(headers.iter().all(|(n, _)| n != b":authority"));
        assert_eq!(view, expected_view(&input));
    }

    #[test]
    fn undecodable_block_before_any_rewrite_passes_through() {
        let mut input = connection_start();
        // Index 70 is past the (empty) dynamic table.
        input.extend(header_frames(1, &[0x82, 0x80 | 70], &Framing::default()));
        input.extend(data(1, true, b"whatever"));
        let out = rewrite(&input);
        assert_eq!(out, input);
        let mut r = AuthorityRewriter::new();
        r.feed(&input, &mut Vec::new()).unwrap();
        assert!(r.is_pass_through());
    }

    #[test]
    fn interleaved_frame_before_any_rewrite_passes_through() {
        let mut input = connection_start();
        let block = loona_block(
            &mut loona_hpack::Encoder::new(),
            &grpc_request(b"http://h:1", b"/p"),
        );
        let framed = header_frames(
            1,
            &block,
            &Framing {
                splits: vec![4],
                ..Framing::default()
            },
        );
        // A PING between HEADERS and its CONTINUATION is a protocol error h2 must see.
        let cont_at = 9 + 4;
        input.extend(&framed[..cont_at]);
        input.extend(frame(0x6, 0, 0, b"pingpong"));
        input.extend(&framed[cont_at..]);
        assert_eq!(rewrite(&input), input);
    }

    #[test]
    fn malformed_input_after_a_rewrite_fails() {
        let mut enc = loona_hpack::Encoder::new();
        let mut input = connection_start();
        let block = loona_block(&mut enc, &grpc_request(b"http://h:1", b"/p"));
        input.extend(header_frames(1, &block, &Framing::default()));
        let good_len = input.len();
        input.extend(header_frames(3, &[0x80 | 120], &Framing::default()));
        let mut r = AuthorityRewriter::new();
        let mut out = Vec::new();
        r.feed(&input[..good_len], &mut out).unwrap();
        assert!(r.has_rewritten());
        assert!(matches!(
            r.feed(&input[good_len..], &mut out),
            Err(RewriteError::Malformed(_))
        ));
        assert!(r.feed(b"more", &mut out).is_err());
    }

    #[test]
    fn oversized_header_block_fails() {
        let mut input = connection_start();
        input.extend(frame(FRAME_HEADERS, 0, 1, &[0x82]));
        let chunk = vec![0u8; MAX_FRAME_PAYLOAD];
        let mut r = AuthorityRewriter::new();
        let mut out = Vec::new();
        r.feed(&input, &mut out).unwrap();
        let mut result = Ok(());
        for _ in 0..(MAX_HEADER_BLOCK / MAX_FRAME_PAYLOAD + 1) {
            result = r.feed(&frame(FRAME_CONTINUATION, 0, 1, &chunk), &mut out);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(RewriteError::HeaderBlockTooLarge));
        // A single frame announcing more than the limit fails at its header.
        let mut r = AuthorityRewriter::new();
        let mut big = connection_start();
        write_frame_header(MAX_HEADER_BLOCK + 1, FRAME_HEADERS, 0, 1, &mut big);
        assert_eq!(
            r.feed(&big, &mut Vec::new()),
            Err(RewriteError::HeaderBlockTooLarge)
        );
    }

    #[test]
    fn block_decoding_to_too_much_fails_only_when_rewritten() {
        // A 4000-byte value indexed once and then referred to 300 times by one byte each:
        // a 4 KiB block that decodes to 1.2 MB.
        let mut block = vec![0x40, 5];
        block.extend(b"x-big");
        encode_integer(4000, 7, 0, &mut block);
        block.extend(vec![b'v'; 4000]);
        block.extend([0x80 | 62; 300]);
        let mut input = connection_start();
        input.extend(header_frames(1, &block, &Framing::default()));
        // Nothing to fix: forwarded as is, without the copy that would be re-encoded.
        assert_eq!(rewrite(&input), input);
        // With a scheme-carrying authority the block cannot be re-encoded within bounds.
        block.extend([0x01, 10]);
        block.extend(b"http://h:1");
        let mut input = connection_start();
        input.extend(header_frames(1, &block, &Framing::default()));
        let mut r = AuthorityRewriter::new();
        assert_eq!(
            r.feed(&input, &mut Vec::new()),
            Err(RewriteError::HeaderBlockTooLarge)
        );
        assert!(r.feed(b"more", &mut Vec::new()).is_err());
    }

    #[test]
    fn not_http2_passes_through() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(rewrite(&input), input);
    }

    #[test]
    fn truncated_stream_is_flushed_at_the_end() {
        let input = unhex(ETCDCTL_STATUS_CONN);
        // Cut inside the HEADERS frame: nothing was rewritten yet, so the held-back bytes
        // go on at EOF and h2 sees the same truncated stream the client sent.
        let cut = &input[..60];
        assert_eq!(run_chunked(cut, &[1]).unwrap(), cut);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// Until a block has been rewritten the output is the input: all of it, or, when
        /// an oversized header block stopped the rewriter, a prefix of it.
        fn check_untouched(
            r: &AuthorityRewriter,
            error: Option<RewriteError>,
            out: &[u8],
            input: &[u8],
        ) -> Result<(), TestCaseError> {
            if r.has_rewritten() {
                return Ok(());
            }
            match error {
                None => prop_assert_eq!(out, input),
                Some(e) => {
                    prop_assert_eq!(e, RewriteError::HeaderBlockTooLarge);
                    prop_assert!(input.starts_with(out));
                }
            }
            Ok(())
        }

        proptest! {
            /// Arbitrary bytes after the preface never panic, and while nothing has been
            /// rewritten the output is exactly the input.
            #[test]
            fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..2048),
                                    chunk in 1usize..64) {
                let mut input = CLIENT_PREFACE.to_vec();
                input.extend(body);
                let mut r = AuthorityRewriter::new();
                let mut out = Vec::new();
                let mut error = None;
                for c in input.chunks(chunk) {
                    if let Err(e) = r.feed(c, &mut out) {
                        error = Some(e);
                        break;
                    }
                }
                r.finish(&mut out);
                check_untouched(&r, error, &out, &input)?;
            }

            /// Random corruption of a real connection never panics; if nothing was
            /// rewritten the bytes are untouched.
            #[test]
            fn corrupted_connection_never_panics(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
                                                 chunk in 1usize..32) {
                let mut input = multi_request_connection(true);
                for (at, x) in flips {
                    let i = 24 + at % (input.len() - 24);
                    input[i] ^= x;
                }
                let mut r = AuthorityRewriter::new();
                let mut out = Vec::new();
                let mut error = None;
                for c in input.chunks(chunk) {
                    if let Err(e) = r.feed(c, &mut out) {
                        error = Some(e);
                        break;
                    }
                }
                r.finish(&mut out);
                check_untouched(&r, error, &out, &input)?;
            }
        }
    }

    /// An `AsyncRead` that returns its data a few bytes at a time.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self
                .step
                .min(buf.remaining())
                .min(self.data.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.data[start..start + n]);
            self.pos += n;
            self.step = self.step % 7 + 1;
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn stream_adapter_rewrites_reads() {
        use tokio::io::AsyncReadExt;
        let input = multi_request_connection(true);
        let mut s = AuthorityFixStream::new(Trickle {
            data: input.clone(),
            pos: 0,
            step: 1,
        });
        let mut out = Vec::new();
        futures::executor::block_on(s.read_to_end(&mut out)).unwrap();
        assert_eq!(out, rewrite(&input));
        assert_eq!(server_view(&out), expected_view(&input));
    }
}
