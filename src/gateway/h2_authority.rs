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
//! hold an unbounded amount of memory.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
    /// A header block exceeded [`MAX_HEADER_BLOCK`].
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
    decoder: loona_hpack::Decoder<'static>,
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
        let mut decoder = loona_hpack::Decoder::new();
        // A size update beyond what the server advertised is a compression error for h2;
        // refusing it here too keeps this decoder from accepting what h2 would not.
        decoder.set_max_allowed_table_size(HPACK_TABLE_SIZE);
        AuthorityRewriter {
            state: State::Preface(0),
            frame: Vec::with_capacity(FRAME_HEADER_LEN),
            block: None,
            decoder,
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
        let block = self.block.take().expect("a header block is pending");
        let mut headers = Vec::new();
        let decoded = self.decoder.decode_with_cb(&block.fragment, |name, value| {
            headers.push((name.into_owned(), value.into_owned()))
        });
        if let Err(e) = decoded {
            self.block = Some(block);
            return self.give_up(out, &format!("undecodable header block: {e}"));
        }
        let needs_fix = headers
            .iter()
            .any(|(name, value)| name == b":authority" && contains_scheme(value));
        if !needs_fix && !self.rewriting {
            out.extend_from_slice(&block.raw);
            return Ok(());
        }
        self.rewriting = true;
        let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
        for (name, value) in &headers {
            if name == b":authority" && contains_scheme(value) {
                let fixed = strip_scheme(value);
                // An authority that is empty once the scheme is removed (`unix:///path`)
                // is not valid for h2; HTTP/2 allows leaving the pseudo-header out.
                if !fixed.is_empty() {
                    encode_literal(name, fixed, &mut encoded);
                }
            } else {
                encode_literal(name, value, &mut encoded);
            }
        }
        write_header_frames(block.stream_id, block.flags, block.priority, &encoded, out);
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
