//! A small HPACK decoder (RFC 7541) for the HTTP/2 `:authority` shim.
//!
//! [`AuthorityRewriter`](super::h2_authority::AuthorityRewriter) decodes every header
//! block a client sends, to mirror the client's dynamic table and to find `:authority`
//! values that need fixing. With a general-purpose decoder (`loona-hpack`) that cost 18% of
//! the server's CPU with 100 clients doing puts, because it built a hash map of the Huffman
//! code for every Huffman-coded string and allocated every name and value. This one is
//! tuned for exactly that job, and decodes such a request's block in well under a
//! microsecond:
//!
//! - Huffman codes are decoded four bits at a time by a state machine built at compile
//!   time from the code table, so decoding a string is two table lookups per input byte.
//! - Names and values are handed to a callback as borrowed slices: of the input, of the
//!   static or dynamic table, or of a reusable buffer for Huffman-decoded strings.
//! - Dynamic table entries keep their name and value in one buffer, and the buffers of
//!   evicted entries are reused for new ones.
//!
//! It never panics on any input and never allocates more than a small multiple of the
//! input's size: every malformed block is reported as a [`HpackError`].
//!
//! The rules on what is accepted follow the `h2` crate, the decoder that reads the same
//! header blocks behind the shim, so the shim's view of the client's dynamic table never
//! goes on where h2's would have stopped: integers may take at most five octets, dynamic
//! table size updates must come before the block's first header field and may not exceed
//! the size the server allows, and Huffman padding must be at most seven bits of the EOS
//! code.

use std::collections::VecDeque;

/// Why a header block could not be decoded. The decoder's dynamic table may have been
/// changed by the fields before the error, so the connection's later blocks cannot be
/// decoded reliably either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    /// An integer or a string runs past the end of the block.
    #[error("HPACK header block truncated")]
    Truncated,
    /// An integer takes more than five octets, which no sensible encoder produces.
    #[error("HPACK integer too long")]
    IntegerTooLong,
    /// An index refers to neither the static nor the dynamic table.
    #[error("HPACK index {0} is outside the header table")]
    InvalidIndex(usize),
    /// A Huffman-coded string contains the EOS symbol or is padded wrongly.
    #[error("invalid HPACK Huffman code")]
    InvalidHuffman,
    /// A dynamic table size update asks for more than the server allows.
    #[error("HPACK dynamic table size update to {0} exceeds the allowed maximum")]
    TableSizeTooLarge(usize),
    /// A dynamic table size update follows a header field in the same block.
    #[error("HPACK dynamic table size update after a header field")]
    MisplacedSizeUpdate,
}

/// The most octets an integer may take, prefix octet included. Like h2's limit it admits
/// every value up to 2^28, far beyond any size a header block may have.
const MAX_INTEGER_OCTETS: usize = 5;

/// The per-entry overhead the dynamic table's size accounting adds to the name and value
/// lengths (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// How many evicted entry buffers the dynamic table keeps for reuse.
const SPARE_BUFFERS: usize = 4;

/// Buffers larger than this are dropped on eviction rather than kept for reuse, so that a
/// connection does not hold on to much more memory than its table needs.
const SPARE_CAPACITY: usize = 512;

/// The static table (RFC 7541 Appendix A); index 1 is the first entry.
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// A decoder for the header blocks of one HTTP/2 connection, direction client to server.
/// It keeps the connection's dynamic table between blocks.
pub struct Decoder {
    table: DynamicTable,
    /// The largest dynamic table size a size update may ask for: the
    /// SETTINGS_HEADER_TABLE_SIZE the server advertised.
    max_allowed: usize,
    /// Reused output for Huffman-coded names.
    name_buf: Vec<u8>,
    /// Reused output for Huffman-coded values.
    value_buf: Vec<u8>,
}

impl Decoder {
    /// A decoder for a fresh connection whose server advertised `max_table_size` as its
    /// SETTINGS_HEADER_TABLE_SIZE: the dynamic table starts at that size, and size
    /// updates beyond it are refused.
    pub fn new(max_table_size: usize) -> Self {
        Decoder {
            table: DynamicTable::new(max_table_size),
            max_allowed: max_table_size,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// The dynamic table's current size by RFC 7541's accounting (entry lengths plus 32
    /// per entry).
    pub fn table_size(&self) -> usize {
        self.table.size
    }

    /// The dynamic table's entries, newest first (the order of HPACK indices 62 on).
    pub fn table_entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.table.entries.iter().map(Entry::split)
    }

    /// Decodes one complete header block (the HPACK fragments of a HEADERS frame and its
    /// CONTINUATION frames, concatenated), calling `emit` with each header field's name
    /// and value in order and updating the dynamic table as it goes.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut emit: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut pos = 0;
        // Size updates are only allowed before the first header field (RFC 7541 §4.2).
        let mut at_start = true;
        while let Some(&first) = block.get(pos) {
            if first & 0x80 != 0 {
                // Indexed header field (§6.1).
                let index = decode_integer(block, &mut pos, 7)?;
                let (name, value) = self.table.get(index)?;
                emit(name, value);
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3).
                if !at_start {
                    return Err(HpackError::MisplacedSizeUpdate);
                }
                let size = decode_integer(block, &mut pos, 5)?;
                if size > self.max_allowed {
                    return Err(HpackError::TableSizeTooLarge(size));
                }
                self.table.set_max_size(size);
                continue;
            } else {
                // A literal: with incremental indexing (§6.2.1, `01` and a 6-bit index),
                // or without indexing or never indexed (§6.2.2 and §6.2.3, `0000` or
                // `0001` and a 4-bit index), which decode alike.
                let indexing = first & 0x40 != 0;
                let name_index = decode_integer(block, &mut pos, if indexing { 6 } else { 4 })?;
                // Taken before the name is borrowed from the table, which then cannot
                // change until the new entry is complete.
                let mut entry = if indexing {
                    self.table.take_buffer()
                } else {
                    Vec::new()
                };
                let name = if name_index == 0 {
                    decode_string(block, &mut pos, &mut self.name_buf)?
                } else {
                    self.table.get(name_index)?.0
                };
                let value = decode_string(block, &mut pos, &mut self.value_buf)?;
                emit(name, value);
                if indexing {
                    // The name is copied before the insertion evicts anything, because
                    // it may be the name of an entry the insertion evicts (§4.4).
                    entry.extend_from_slice(name);
                    entry.extend_from_slice(value);
                    let name_len = name.len();
                    self.table.insert(entry, name_len);
                }
            }
            at_start = false;
        }
        Ok(())
    }
}

/// An entry of the dynamic table: its name and value in one buffer.
struct Entry {
    bytes: Vec<u8>,
    name_len: usize,
}

impl Entry {
    /// The entry's name and value.
    fn split(&self) -> (&[u8], &[u8]) {
        self.bytes.split_at(self.name_len)
    }

    /// The entry's size by RFC 7541 §4.1.
    fn size(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD
    }
}

/// The dynamic table (RFC 7541 §2.3.2 and §4).
struct DynamicTable {
    /// Newest first, so HPACK index 62 is `entries[0]`.
    entries: VecDeque<Entry>,
    /// The sum of the entries' sizes.
    size: usize,
    /// The current maximum size, as last set by a size update.
    max_size: usize,
    /// Buffers of evicted entries, cleared, for the next insertions.
    spare: Vec<Vec<u8>>,
}

impl DynamicTable {
    fn new(max_size: usize) -> Self {
        DynamicTable {
            entries: VecDeque::new(),
            size: 0,
            max_size,
            spare: Vec::new(),
        }
    }

    /// The name and value at an HPACK index, which counts the static table first.
    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        if let Some(&(name, value)) = index.checked_sub(1).and_then(|i| STATIC_TABLE.get(i)) {
            return Ok((name, value));
        }
        index
            .checked_sub(STATIC_TABLE.len() + 1)
            .and_then(|i| self.entries.get(i))
            .map(Entry::split)
            .ok_or(HpackError::InvalidIndex(index))
    }

    /// An empty buffer for a new entry, reusing an evicted entry's when there is one.
    fn take_buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    /// Adds an entry, evicting the oldest ones until it fits; an entry larger than the
    /// whole table empties the table and is not added (§4.4).
    fn insert(&mut self, bytes: Vec<u8>, name_len: usize) {
        let entry = Entry { bytes, name_len };
        let needed = entry.size();
        while self.size + needed > self.max_size && self.evict_oldest() {}
        if needed > self.max_size {
            self.recycle(entry.bytes);
            return;
        }
        self.size += needed;
        self.entries.push_front(entry);
    }

    /// Changes the maximum size, evicting the oldest entries until the table fits (§4.3).
    fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
        while self.size > self.max_size && self.evict_oldest() {}
    }

    /// Removes the oldest entry; false if the table was empty.
    fn evict_oldest(&mut self) -> bool {
        let Some(entry) = self.entries.pop_back() else {
            return false;
        };
        self.size -= entry.size();
        self.recycle(entry.bytes);
        true
    }

    /// Keeps an entry's buffer for a later insertion, if it is worth keeping.
    fn recycle(&mut self, mut bytes: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS && bytes.capacity() <= SPARE_CAPACITY {
            bytes.clear();
            self.spare.push(bytes);
        }
    }
}

/// Decodes an integer with an `prefix_bits`-bit prefix (RFC 7541 §5.1) starting at
/// `block[*pos]`, and moves `pos` past it.
fn decode_integer(block: &[u8], pos: &mut usize, prefix_bits: u32) -> Result<usize, HpackError> {
    let mask = (1usize << prefix_bits) - 1;
    let first = *block.get(*pos).ok_or(HpackError::Truncated)?;
    *pos += 1;
    let mut value = usize::from(first) & mask;
    if value < mask {
        return Ok(value);
    }
    let mut shift = 0;
    for _ in 1..MAX_INTEGER_OCTETS {
        let byte = *block.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        // At most 4 × 7 bits are added to a prefix below 256, so this cannot overflow
        // even a 32-bit usize; checked arithmetic keeps that from being an assumption.
        value = value
            .checked_add(usize::from(byte & 0x7f) << shift)
            .ok_or(HpackError::IntegerTooLong)?;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
    }
    Err(HpackError::IntegerTooLong)
}

/// Decodes a string literal (RFC 7541 §5.2) starting at `block[*pos]` and moves `pos`
/// past it. A raw string is returned as a slice of `block`; a Huffman-coded one is
/// decoded into `buf`.
fn decode_string<'a>(
    block: &'a [u8],
    pos: &mut usize,
    buf: &'a mut Vec<u8>,
) -> Result<&'a [u8], HpackError> {
    let huffman = block.get(*pos).is_some_and(|&b| b & 0x80 != 0);
    let len = decode_integer(block, pos, 7)?;
    // The length is checked against the block before anything is allocated for it.
    let raw = block
        .get(*pos..)
        .and_then(|rest| rest.get(..len))
        .ok_or(HpackError::Truncated)?;
    *pos += len;
    if huffman {
        huffman_decode(raw, buf)?;
        Ok(buf)
    } else {
        Ok(raw)
    }
}

/// The Huffman code of RFC 7541 Appendix B: for each octet, then for EOS (256), the code
/// right-aligned in a `u32` and its length in bits.
const HUFFMAN_CODES: [(u32, u8); 257] = [
    (0x1ff8, 13),     // 0
    (0x7fffd8, 23),   // 1
    (0xfffffe2, 28),  // 2
    (0xfffffe3, 28),  // 3
    (0xfffffe4, 28),  // 4
    (0xfffffe5, 28),  // 5
    (0xfffffe6, 28),  // 6
    (0xfffffe7, 28),  // 7
    (0xfffffe8, 28),  // 8
    (0xffffea, 24),   // 9
    (0x3ffffffc, 30), // 10
    (0xfffffe9, 28),  // 11
    (0xfffffea, 28),  // 12
    (0x3ffffffd, 30), // 13
    (0xfffffeb, 28),  // 14
    (0xfffffec, 28),  // 15
    (0xfffffed, 28),  // 16
    (0xfffffee, 28),  // 17
    (0xfffffef, 28),  // 18
    (0xffffff0, 28),  // 19
    (0xffffff1, 28),  // 20
    (0xffffff2, 28),  // 21
    (0x3ffffffe, 30), // 22
    (0xffffff3, 28),  // 23
    (0xffffff4, 28),  // 24
    (0xffffff5, 28),  // 25
    (0xffffff6, 28),  // 26
    (0xffffff7, 28),  // 27
    (0xffffff8, 28),  // 28
    (0xffffff9, 28),  // 29
    (0xffffffa, 28),  // 30
    (0xffffffb, 28),  // 31
    (0x14, 6),        // 32 ' '
    (0x3f8, 10),      // 33 '!'
    (0x3f9, 10),      // 34 '"'
    (0xffa, 12),      // 35 '#'
    (0x1ff9, 13),     // 36 '$'
    (0x15, 6),        // 37 '%'
    (0xf8, 8),        // 38 '&'
    (0x7fa, 11),      // 39 '\''
    (0x3fa, 10),      // 40 '('
    (0x3fb, 10),      // 41 ')'
    (0xf9, 8),        // 42 '*'
    (0x7fb, 11),      // 43 '+'
    (0xfa, 8),        // 44 ','
    (0x16, 6),        // 45 '-'
    (0x17, 6),        // 46 '.'
    (0x18, 6),        // 47 '/'
    (0x0, 5),         // 48 '0'
    (0x1, 5),         // 49 '1'
    (0x2, 5),         // 50 '2'
    (0x19, 6),        // 51 '3'
    (0x1a, 6),        // 52 '4'
    (0x1b, 6),        // 53 '5'
    (0x1c, 6),        // 54 '6'
    (0x1d, 6),        // 55 '7'
    (0x1e, 6),        // 56 '8'
    (0x1f, 6),        // 57 '9'
    (0x5c, 7),        // 58 ':'
    (0xfb, 8),        // 59 ';'
    (0x7ffc, 15),     // 60 '<'
    (0x20, 6),        // 61 '='
    (0xffb, 12),      // 62 '>'
    (0x3fc, 10),      // 63 '?'
    (0x1ffa, 13),     // 64 '@'
    (0x21, 6),        // 65 'A'
    (0x5d, 7),        // 66 'B'
    (0x5e, 7),        // 67 'C'
    (0x5f, 7),        // 68 'D'
    (0x60, 7),        // 69 'E'
    (0x61, 7),        // 70 'F'
    (0x62, 7),        // 71 'G'
    (0x63, 7),        // 72 'H'
    (0x64, 7),        // 73 'I'
    (0x65, 7),        // 74 'J'
    (0x66, 7),        // 75 'K'
    (0x67, 7),        // 76 'L'
    (0x68, 7),        // 77 'M'
    (0x69, 7),        // 78 'N'
    (0x6a, 7),        // 79 'O'
    (0x6b, 7),        // 80 'P'
    (0x6c, 7),        // 81 'Q'
    (0x6d, 7),        // 82 'R'
    (0x6e, 7),        // 83 'S'
    (0x6f, 7),        // 84 'T'
    (0x70, 7),        // 85 'U'
    (0x71, 7),        // 86 'V'
    (0x72, 7),        // 87 'W'
    (0xfc, 8),        // 88 'X'
    (0x73, 7),        // 89 'Y'
    (0xfd, 8),        // 90 'Z'
    (0x1ffb, 13),     // 91 '['
    (0x7fff0, 19),    // 92 '\\'
    (0x1ffc, 13),     // 93 ']'
    (0x3ffc, 14),     // 94 '^'
    (0x22, 6),        // 95 '_'
    (0x7ffd, 15),     // 96 '`'
    (0x3, 5),         // 97 'a'
    (0x23, 6),        // 98 'b'
    (0x4, 5),         // 99 'c'
    (0x24, 6),        // 100 'd'
    (0x5, 5),         // 101 'e'
    (0x25, 6),        // 102 'f'
    (0x26, 6),        // 103 'g'
    (0x27, 6),        // 104 'h'
    (0x6, 5),         // 105 'i'
    (0x74, 7),        // 106 'j'
    (0x75, 7),        // 107 'k'
    (0x28, 6),        // 108 'l'
    (0x29, 6),        // 109 'm'
    (0x2a, 6),        // 110 'n'
    (0x7, 5),         // 111 'o'
    (0x2b, 6),        // 112 'p'
    (0x76, 7),        // 113 'q'
    (0x2c, 6),        // 114 'r'
    (0x8, 5),         // 115 's'
    (0x9, 5),         // 116 't'
    (0x2d, 6),        // 117 'u'
    (0x77, 7),        // 118 'v'
    (0x78, 7),        // 119 'w'
    (0x79, 7),        // 120 'x'
    (0x7a, 7),        // 121 'y'
    (0x7b, 7),        // 122 'z'
    (0x7ffe, 15),     // 123 '{'
    (0x7fc, 11),      // 124 '|'
    (0x3ffd, 14),     // 125 '}'
    (0x1ffd, 13),     // 126 '~'
    (0xffffffc, 28),  // 127
    (0xfffe6, 20),    // 128
    (0x3fffd2, 22),   // 129
    (0xfffe7, 20),    // 130
    (0xfffe8, 20),    // 131
    (0x3fffd3, 22),   // 132
    (0x3fffd4, 22),   // 133
    (0x3fffd5, 22),   // 134
    (0x7fffd9, 23),   // 135
    (0x3fffd6, 22),   // 136
    (0x7fffda, 23),   // 137
    (0x7fffdb, 23),   // 138
    (0x7fffdc, 23),   // 139
    (0x7fffdd, 23),   // 140
    (0x7fffde, 23),   // 141
    (0xffffeb, 24),   // 142
    (0x7fffdf, 23),   // 143
    (0xffffec, 24),   // 144
    (0xffffed, 24),   // 145
    (0x3fffd7, 22),   // 146
    (0x7fffe0, 23),   // 147
    (0xffffee, 24),   // 148
    (0x7fffe1, 23),   // 149
    (0x7fffe2, 23),   // 150
    (0x7fffe3, 23),   // 151
    (0x7fffe4, 23),   // 152
    (0x1fffdc, 21),   // 153
    (0x3fffd8, 22),   // 154
    (0x7fffe5, 23),   // 155
    (0x3fffd9, 22),   // 156
    (0x7fffe6, 23),   // 157
    (0x7fffe7, 23),   // 158
    (0xffffef, 24),   // 159
    (0x3fffda, 22),   // 160
    (0x1fffdd, 21),   // 161
    (0xfffe9, 20),    // 162
    (0x3fffdb, 22),   // 163
    (0x3fffdc, 22),   // 164
    (0x7fffe8, 23),   // 165
    (0x7fffe9, 23),   // 166
    (0x1fffde, 21),   // 167
    (0x7fffea, 23),   // 168
    (0x3fffdd, 22),   // 169
    (0x3fffde, 22),   // 170
    (0xfffff0, 24),   // 171
    (0x1fffdf, 21),   // 172
    (0x3fffdf, 22),   // 173
    (0x7fffeb, 23),   // 174
    (0x7fffec, 23),   // 175
    (0x1fffe0, 21),   // 176
    (0x1fffe1, 21),   // 177
    (0x3fffe0, 22),   // 178
    (0x1fffe2, 21),   // 179
    (0x7fffed, 23),   // 180
    (0x3fffe1, 22),   // 181
    (0x7fffee, 23),   // 182
    (0x7fffef, 23),   // 183
    (0xfffea, 20),    // 184
    (0x3fffe2, 22),   // 185
    (0x3fffe3, 22),   // 186
    (0x3fffe4, 22),   // 187
    (0x7ffff0, 23),   // 188
    (0x3fffe5, 22),   // 189
    (0x3fffe6, 22),   // 190
    (0x7ffff1, 23),   // 191
    (0x3ffffe0, 26),  // 192
    (0x3ffffe1, 26),  // 193
    (0xfffeb, 20),    // 194
    (0x7fff1, 19),    // 195
    (0x3fffe7, 22),   // 196
    (0x7ffff2, 23),   // 197
    (0x3fffe8, 22),   // 198
    (0x1ffffec, 25),  // 199
    (0x3ffffe2, 26),  // 200
    (0x3ffffe3, 26),  // 201
    (0x3ffffe4, 26),  // 202
    (0x7ffffde, 27),  // 203
    (0x7ffffdf, 27),  // 204
    (0x3ffffe5, 26),  // 205
    (0xfffff1, 24),   // 206
    (0x1ffffed, 25),  // 207
    (0x7fff2, 19),    // 208
    (0x1fffe3, 21),   // 209
    (0x3ffffe6, 26),  // 210
    (0x7ffffe0, 27),  // 211
    (0x7ffffe1, 27),  // 212
    (0x3ffffe7, 26),  // 213
    (0x7ffffe2, 27),  // 214
    (0xfffff2, 24),   // 215
    (0x1fffe4, 21),   // 216
    (0x1fffe5, 21),   // 217
    (0x3ffffe8, 26),  // 218
    (0x3ffffe9, 26),  // 219
    (0xffffffd, 28),  // 220
    (0x7ffffe3, 27),  // 221
    (0x7ffffe4, 27),  // 222
    (0x7ffffe5, 27),  // 223
    (0xfffec, 20),    // 224
    (0xfffff3, 24),   // 225
    (0xfffed, 20),    // 226
    (0x1fffe6, 21),   // 227
    (0x3fffe9, 22),   // 228
    (0x1fffe7, 21),   // 229
    (0x1fffe8, 21),   // 230
    (0x7ffff3, 23),   // 231
    (0x3fffea, 22),   // 232
    (0x3fffeb, 22),   // 233
    (0x1ffffee, 25),  // 234
    (0x1ffffef, 25),  // 235
    (0xfffff4, 24),   // 236
    (0xfffff5, 24),   // 237
    (0x3ffffea, 26),  // 238
    (0x7ffff4, 23),   // 239
    (0x3ffffeb, 26),  // 240
    (0x7ffffe6, 27),  // 241
    (0x3ffffec, 26),  // 242
    (0x3ffffed, 26),  // 243
    (0x7ffffe7, 27),  // 244
    (0x7ffffe8, 27),  // 245
    (0x7ffffe9, 27),  // 246
    (0x7ffffea, 27),  // 247
    (0x7ffffeb, 27),  // 248
    (0xffffffe, 28),  // 249
    (0x7ffffec, 27),  // 250
    (0x7ffffed, 27),  // 251
    (0x7ffffee, 27),  // 252
    (0x7ffffef, 27),  // 253
    (0x7fffff0, 27),  // 254
    (0x3ffffee, 26),  // 255
    (0x3fffffff, 30), // 256 EOS
];

/// The symbol that may only appear, truncated, as padding.
const EOS: u16 = 256;

/// The number of internal nodes of the Huffman code tree, which are the decoding
/// automaton's states: a code of 257 symbols that leaves no bit pattern unused is a full
/// binary tree with 257 leaves, hence 256 internal nodes, numbered so they fit in a `u8`.
const HUFFMAN_STATES: usize = 256;

/// Marks a child in the code tree as a leaf; the other bits are its symbol.
const LEAF: u16 = 0x8000;

/// A step of the automaton completes a symbol.
const STEP_EMIT: u8 = 1;
/// A step of the automaton completes EOS, which must not appear inside a string (§5.2).
const STEP_FAIL: u8 = 2;

/// What the Huffman decoder does on four input bits in a given state.
#[derive(Clone, Copy)]
struct Step {
    /// The state after the four bits: the tree node reached since the last symbol.
    next: u8,
    /// The symbol completed by the four bits, if `flags` has [`STEP_EMIT`]. Four bits
    /// complete at most one symbol, because every code is at least five bits long.
    symbol: u8,
    /// [`STEP_EMIT`] or [`STEP_FAIL`], or neither.
    flags: u8,
}

/// The Huffman decoder: a state machine that reads a string four bits at a time.
struct HuffmanAutomaton {
    /// For each state and each four-bit input, the step to take.
    steps: [[Step; 16]; HUFFMAN_STATES],
    /// Whether a string may end in a state: the bits read since the last complete symbol
    /// must be the most significant bits of EOS, which are all 1, and at most seven of
    /// them (§5.2). State 0, the tree's root, means no such bits.
    accepting: [bool; HUFFMAN_STATES],
}

/// Built by the compiler from [`HUFFMAN_CODES`], so a malformed code table fails the build
/// and nothing is computed at run time.
static HUFFMAN: HuffmanAutomaton = build_automaton(&build_tree());

/// Builds the code tree: for each internal node (node 0 is the root), its children for a
/// 0 and a 1 bit, each either another internal node or `LEAF | symbol`. Refuses (at
/// compile time) a table in which one code is a prefix of another or some bit pattern
/// decodes to nothing.
const fn build_tree() -> [[u16; 2]; HUFFMAN_STATES] {
    // No node has the root as a child, so 0 marks a child not yet set.
    let mut tree = [[0u16; 2]; HUFFMAN_STATES];
    let mut nodes = 1;
    let mut symbol = 0;
    while symbol < HUFFMAN_CODES.len() {
        let (code, len) = HUFFMAN_CODES[symbol];
        assert!(
            len >= 5 && len <= 30 && code >> len == 0,
            "malformed Huffman code"
        );
        let mut node = 0;
        let mut bit = len - 1;
        while bit > 0 {
            let b = ((code >> bit) & 1) as usize;
            let child = tree[node][b];
            if child == 0 {
                assert!(nodes < HUFFMAN_STATES, "too many Huffman tree nodes");
                tree[node][b] = nodes as u16;
                node = nodes;
                nodes += 1;
            } else {
                assert!(child & LEAF == 0, "a Huffman code is a prefix of another");
                node = child as usize;
            }
            bit -= 1;
        }
        assert!(
            tree[node][(code & 1) as usize] == 0,
            "Huffman codes collide"
        );
        tree[node][(code & 1) as usize] = LEAF | symbol as u16;
        symbol += 1;
    }
    assert!(
        nodes == HUFFMAN_STATES,
        "the Huffman code leaves bit patterns unused"
    );
    let mut node = 0;
    while node < HUFFMAN_STATES {
        assert!(
            tree[node][0] != 0 && tree[node][1] != 0,
            "incomplete Huffman code"
        );
        node += 1;
    }
    tree
}

/// Builds the four-bits-at-a-time automaton from the code tree by walking, from every
/// internal node, every four-bit path.
const fn build_automaton(tree: &[[u16; 2]; HUFFMAN_STATES]) -> HuffmanAutomaton {
    let none = Step {
        next: 0,
        symbol: 0,
        flags: 0,
    };
    let mut steps = [[none; 16]; HUFFMAN_STATES];
    let mut state = 0;
    while state < HUFFMAN_STATES {
        let mut nibble = 0;
        while nibble < 16 {
            let mut step = none;
            let mut node = state;
            let mut bit = 4;
            while bit > 0 {
                bit -= 1;
                let child = tree[node][(nibble >> bit) & 1];
                if child & LEAF == 0 {
                    node = child as usize;
                } else if child & !LEAF == EOS {
                    step.flags = STEP_FAIL;
                    break;
                } else {
                    assert!(step.flags & STEP_EMIT == 0, "two symbols in four bits");
                    step.flags = STEP_EMIT;
                    step.symbol = (child & !LEAF) as u8;
                    node = 0;
                }
            }
            step.next = node as u8;
            steps[state][nibble] = step;
            nibble += 1;
        }
        state += 1;
    }
    // The accepting states are the root and the nodes reached from it by one to seven 1
    // bits, all of them internal because EOS, the only code of all 1 bits, has 30.
    let mut accepting = [false; HUFFMAN_STATES];
    let mut node = 0;
    let mut ones = 0;
    loop {
        accepting[node] = true;
        if ones == 7 {
            break;
        }
        let child = tree[node][1];
        assert!(child & LEAF == 0, "a short Huffman code of all 1 bits");
        node = child as usize;
        ones += 1;
    }
    HuffmanAutomaton { steps, accepting }
}

/// Decodes a Huffman-coded string (RFC 7541 §5.2) into `out`, replacing its contents.
fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    out.clear();
    // Every code is at least five bits long, so this is the most the input can yield; it
    // is bounded by the input's length, itself bounded by the header block's.
    out.reserve(src.len() * 8 / 5);
    let mut state = 0;
    for &byte in src {
        for nibble in [byte >> 4, byte & 0x0f] {
            let step = HUFFMAN.steps[state][usize::from(nibble)];
            if step.flags & STEP_FAIL != 0 {
                return Err(HpackError::InvalidHuffman);
            }
            if step.flags & STEP_EMIT != 0 {
                out.push(step.symbol);
            }
            state = usize::from(step.next);
        }
    }
    if HUFFMAN.accepting[state] {
        Ok(())
    } else {
        Err(HpackError::InvalidHuffman)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn owned(list: &[(&str, &str)]) -> Headers {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn decode(d: &mut Decoder, block: &[u8]) -> Result<Headers, HpackError> {
        let mut out = Vec::new();
        d.decode(block, |n, v| out.push((n.to_vec(), v.to_vec())))?;
        Ok(out)
    }

    fn table(d: &Decoder) -> Headers {
        d.table_entries()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect()
    }

    /// One header block of an RFC 7541 Appendix C example: its encoding, the header list
    /// it decodes to, and the dynamic table (newest first) and its size afterwards.
    struct Example<'a> {
        hex: &'a str,
        headers: &'a [(&'a str, &'a str)],
        table: &'a [(&'a str, &'a str)],
        size: usize,
    }

    /// Decodes a sequence of blocks on one connection and checks every step.
    fn check_examples(max_table_size: usize, examples: &[Example<'_>]) {
        let mut d = Decoder::new(max_table_size);
        for (i, e) in examples.iter().enumerate() {
            assert_eq!(
                decode(&mut d, &unhex(e.hex)),
                Ok(owned(e.headers)),
                "block {i}"
            );
            assert_eq!(table(&d), owned(e.table), "table after block {i}");
            assert_eq!(d.table_size(), e.size, "table size after block {i}");
        }
    }

    #[test]
    fn rfc7541_c1_integers() {
        let int = |bytes: &[u8], prefix| decode_integer(bytes, &mut 0, prefix);
        assert_eq!(int(&[0x0a], 5), Ok(10));
        assert_eq!(
            int(&[0xea], 5),
            Ok(10),
            "the bits above the prefix are ignored"
        );
        assert_eq!(int(&[0x1f, 0x9a, 0x0a], 5), Ok(1337));
        assert_eq!(int(&[0x2a], 8), Ok(42));
        // Five octets are the most; the largest value they hold is 2^28 - 1 past the prefix.
        assert_eq!(
            int(&[0x7f, 0xff, 0xff, 0xff, 0x7f], 7),
            Ok(127 + (1 << 28) - 1)
        );
        assert_eq!(
            int(&[0x7f, 0x80, 0x80, 0x80, 0x80, 0x00], 7),
            Err(HpackError::IntegerTooLong)
        );
        assert_eq!(int(&[0x7f], 7), Err(HpackError::Truncated));
        assert_eq!(int(&[0x7f, 0x80], 7), Err(HpackError::Truncated));
        assert_eq!(int(&[], 7), Err(HpackError::Truncated));
        let mut pos = 1;
        assert_eq!(
            decode_integer(&[0, 0x1f, 0x9a, 0x0a, 9], &mut pos, 5),
            Ok(1337)
        );
        assert_eq!(pos, 4);
    }

    #[test]
    fn rfc7541_c2_header_field_representations() {
        check_examples(
            4096,
            &[Example {
                hex: "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
                headers: &[("custom-key", "custom-header")],
                table: &[("custom-key", "custom-header")],
                size: 55,
            }],
        );
        check_examples(
            4096,
            &[Example {
                hex: "040c 2f73 616d 706c 652f 7061 7468",
                headers: &[(":path", "/sample/path")],
                table: &[],
                size: 0,
            }],
        );
        check_examples(
            4096,
            &[Example {
                hex: "1008 7061 7373 776f 7264 0673 6563 7265 74",
                headers: &[("password", "secret")],
                table: &[],
                size: 0,
            }],
        );
        check_examples(
            4096,
            &[Example {
                hex: "82",
                headers: &[(":method", "GET")],
                table: &[],
                size: 0,
            }],
        );
    }

    const C3_HEADERS: [&[(&str, &str)]; 3] = [
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ],
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
            ("cache-control", "no-cache"),
        ],
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ],
    ];

    const C3_TABLES: [&[(&str, &str)]; 3] = [
        &[(":authority", "www.example.com")],
        &[
            ("cache-control", "no-cache"),
            (":authority", "www.example.com"),
        ],
        &[
            ("custom-key", "custom-value"),
            ("cache-control", "no-cache"),
            (":authority", "www.example.com"),
        ],
    ];

    fn request_examples(hex: [&'static str; 3]) -> Vec<Example<'static>> {
        (0..3)
            .map(|i| Example {
                hex: hex[i],
                headers: C3_HEADERS[i],
                table: C3_TABLES[i],
                size: [57, 110, 164][i],
            })
            .collect()
    }

    #[test]
    fn rfc7541_c3_requests_without_huffman() {
        check_examples(
            4096,
            &request_examples([
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ]),
        );
    }

    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        check_examples(
            4096,
            &request_examples([
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ]),
        );
    }

    const DATE_21: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
    const DATE_22: &str = "Mon, 21 Oct 2013 20:13:22 GMT";
    const LOCATION: &str = "https://www.example.com";
    const COOKIE: &str = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";

    /// C.5 and C.6: responses with a 256-octet table, so entries get evicted.
    fn response_examples(hex: [&'static str; 3]) -> Vec<Example<'static>> {
        vec![
            Example {
                hex: hex[0],
                headers: &[
                    (":status", "302"),
                    ("cache-control", "private"),
                    ("date", DATE_21),
                    ("location", LOCATION),
                ],
                table: &[
                    ("location", LOCATION),
                    ("date", DATE_21),
                    ("cache-control", "private"),
                    (":status", "302"),
                ],
                size: 222,
            },
            Example {
                hex: hex[1],
                headers: &[
                    (":status", "307"),
                    ("cache-control", "private"),
                    ("date", DATE_21),
                    ("location", LOCATION),
                ],
                // `:status: 302` was evicted to make room.
                table: &[
                    (":status", "307"),
                    ("location", LOCATION),
                    ("date", DATE_21),
                    ("cache-control", "private"),
                ],
                size: 222,
            },
            Example {
                hex: hex[2],
                headers: &[
                    (":status", "200"),
                    ("cache-control", "private"),
                    ("date", DATE_22),
                    ("location", LOCATION),
                    ("content-encoding", "gzip"),
                    ("set-cookie", COOKIE),
                ],
                table: &[
                    ("set-cookie", COOKIE),
                    ("content-encoding", "gzip"),
                    ("date", DATE_22),
                ],
                size: 215,
            },
        ]
    }

    #[test]
    fn rfc7541_c5_responses_without_huffman() {
        check_examples(
            256,
            &response_examples([
                "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230
                 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65
                 7861 6d70 6c65 2e63 6f6d",
                "4803 3330 37c1 c0bf",
                "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220
                 474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157
                 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076
                 6572 7369 6f6e 3d31",
            ]),
        );
    }

    #[test]
    fn rfc7541_c6_responses_with_huffman() {
        check_examples(
            256,
            &response_examples([
                "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0
                 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
                "4883 640e ffc1 c0bf",
                "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b
                 d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27
                 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
            ]),
        );
    }

    #[test]
    fn static_table_matches_an_independent_decoder() {
        let mut theirs = loona_hpack::Decoder::new();
        for index in 1..=61u8 {
            let block = [0x80 | index];
            let ours = decode(&mut Decoder::new(4096), &block).unwrap();
            assert_eq!(ours, theirs.decode(&block).unwrap(), "index {index}");
        }
        assert_eq!(
            decode(&mut Decoder::new(4096), &[0x80 | 62]),
            Err(HpackError::InvalidIndex(62))
        );
        assert_eq!(
            decode(&mut Decoder::new(4096), &[0x80]),
            Err(HpackError::InvalidIndex(0))
        );
        // A literal's name index is checked the same way.
        assert_eq!(
            decode(&mut Decoder::new(4096), &[0x40 | 62, 0]),
            Err(HpackError::InvalidIndex(62))
        );
    }

    /// A literal without indexing whose value is `value` Huffman-coded by an independent
    /// encoder.
    fn huffman_literal(value: &[u8]) -> Vec<u8> {
        let mut block = Vec::new();
        httlib_hpack::Encoder::default()
            .encode(
                (
                    b"x".to_vec(),
                    value.to_vec(),
                    httlib_hpack::Encoder::HUFFMAN_VALUE,
                ),
                &mut block,
            )
            .unwrap();
        assert_eq!(block[3] & 0x80, 0x80, "Huffman-coded");
        block
    }

    #[test]
    fn huffman_decodes_every_octet() {
        let all: Vec<u8> = (0..=255).collect();
        let mut d = Decoder::new(4096);
        assert_eq!(
            decode(&mut d, &huffman_literal(&all)),
            Ok(vec![(b"x".to_vec(), all.clone())])
        );
        // Each octet alone, so every code is followed by padding of its own length.
        for b in all {
            assert_eq!(
                decode(&mut d, &huffman_literal(&[b])),
                Ok(vec![(b"x".to_vec(), vec![b])]),
                "octet {b}"
            );
        }
        // '0' has one of the shortest codes, so these expand the most.
        for len in 0..40 {
            let zeros = vec![b'0'; len];
            assert_eq!(
                decode(&mut d, &huffman_literal(&zeros)),
                Ok(vec![(b"x".to_vec(), zeros)])
            );
        }
    }

    #[test]
    fn huffman_padding_is_checked() {
        let one = |bytes: &[u8]| {
            let mut out = Vec::new();
            huffman_decode(bytes, &mut out).map(|()| out)
        };
        // 'a' is 00011; three 1 bits pad it to an octet.
        assert_eq!(one(&[0x1f]), Ok(b"a".to_vec()));
        assert_eq!(one(&[]), Ok(Vec::new()));
        // Padding that is not a prefix of EOS.
        assert_eq!(one(&[0x1e]), Err(HpackError::InvalidHuffman));
        assert_eq!(one(&[0x18]), Err(HpackError::InvalidHuffman));
        // Padding longer than seven bits, even of 1 bits.
        assert_eq!(one(&[0x1f, 0xff]), Err(HpackError::InvalidHuffman));
        assert_eq!(one(&[0xff]), Err(HpackError::InvalidHuffman));
        // EOS itself (30 1 bits) inside a string.
        assert_eq!(
            one(&[0xff, 0xff, 0xff, 0xfc]),
            Err(HpackError::InvalidHuffman)
        );
        assert_eq!(
            one(&[0x1f, 0xff, 0xff, 0xff, 0xff]),
            Err(HpackError::InvalidHuffman)
        );
        // A code cut short, with no room for its remaining bits.
        assert_eq!(one(&[0xfe]), Err(HpackError::InvalidHuffman));
        // And through the decoder: a Huffman-coded value `a`, then a bad one.
        let mut d = Decoder::new(4096);
        assert_eq!(
            decode(&mut d, &[0x01, 0x81, 0x1f]),
            Ok(owned(&[(":authority", "a")]))
        );
        assert_eq!(
            decode(&mut d, &[0x01, 0x81, 0x1e]),
            Err(HpackError::InvalidHuffman)
        );
    }

    #[test]
    fn strings_are_checked_against_the_block() {
        let mut d = Decoder::new(4096);
        assert_eq!(
            decode(&mut d, &[0x00, 0x05, b'a']),
            Err(HpackError::Truncated)
        );
        // A huge announced length fails before anything is allocated for it.
        assert_eq!(
            decode(&mut d, &[0x00, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(HpackError::Truncated)
        );
        assert_eq!(
            decode(&mut d, &[0x01, 0x01, b'a', 0x00]),
            Err(HpackError::Truncated)
        );
        assert_eq!(decode(&mut d, &[0x01]), Err(HpackError::Truncated));
        // A string may be empty, raw or Huffman-coded.
        assert_eq!(
            decode(&mut d, &[0x00, 0x00, 0x00, 0x00, 0x80, 0x80]),
            Ok(vec![(Vec::new(), Vec::new()), (Vec::new(), Vec::new())])
        );
    }

    #[test]
    fn size_updates() {
        let mut d = Decoder::new(4096);
        let fill = unhex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
        decode(&mut d, &fill).unwrap();
        assert_eq!(d.table_size(), 55);
        // Up to the allowed maximum (4096 = 31 + 0x61 + 0x1f * 128), several in a row,
        // and a block made of nothing else.
        assert_eq!(
            decode(&mut d, &[0x3f, 0xe1, 0x1f, 0x3f, 0x18]),
            Ok(Vec::new())
        );
        assert_eq!(d.table_size(), 55, "55 still fits in 31 + 24");
        assert_eq!(
            decode(&mut d, &[0x3f, 0x17, 0x82]),
            Ok(owned(&[(":method", "GET")]))
        );
        assert_eq!(table(&d), Vec::new(), "evicted by the size update to 54");
        assert_eq!(d.table_size(), 0);
        // Beyond the maximum.
        assert_eq!(
            decode(&mut d, &[0x3f, 0xe2, 0x1f]),
            Err(HpackError::TableSizeTooLarge(4097))
        );
        // After a header field.
        assert_eq!(
            decode(&mut Decoder::new(4096), &[0x82, 0x20]),
            Err(HpackError::MisplacedSizeUpdate)
        );
        // A table of size 0 keeps nothing.
        let mut d = Decoder::new(4096);
        decode(&mut d, &[0x20]).unwrap();
        decode(&mut d, &fill).unwrap();
        assert_eq!((table(&d), d.table_size()), (Vec::new(), 0));
        // The size can grow back, up to the maximum.
        decode(&mut d, &[0x3f, 0xe1, 0x1f]).unwrap();
        decode(&mut d, &fill).unwrap();
        assert_eq!(d.table_size(), 55);
    }

    #[test]
    fn eviction_by_entry_size() {
        // Room for one 37-octet entry ("aaaa" + "b" + 32) but not two.
        let mut d = Decoder::new(60);
        decode(&mut d, &[0x40, 4, b'a', b'a', b'a', b'a', 1, b'b']).unwrap();
        assert_eq!(d.table_size(), 37);
        // A new entry named by index after the one it evicts (RFC 7541 §4.4).
        assert_eq!(
            decode(&mut d, &[0x40 | 62, 2, b'c', b'c']),
            Ok(owned(&[("aaaa", "cc")]))
        );
        assert_eq!(table(&d), owned(&[("aaaa", "cc")]));
        assert_eq!(d.table_size(), 38);
        // An entry larger than the table empties it and is not added.
        let big = [&[0x40, 0x00, 0x1e][..], &[b'v'; 30]].concat();
        assert_eq!(decode(&mut d, &big), Ok(vec![(Vec::new(), vec![b'v'; 30])]));
        assert_eq!((table(&d), d.table_size()), (Vec::new(), 0));
        // Many insertions, so evicted buffers are reused.
        for i in 0..200u8 {
            decode(&mut d, &[0x40 | 1, 3, b'x', b'y', i]).unwrap();
            assert_eq!(
                table(&d),
                vec![(b":authority".to_vec(), vec![b'x', b'y', i])]
            );
        }
    }

    /// Header blocks as grpc-go sends them for etcd puts on one connection: Huffman-coded
    /// strings, every field indexed, and a `grpc-timeout` that changes with every request
    /// and so adds (and, once the table is full, evicts) an entry each time.
    fn grpc_go_blocks(n: usize) -> Vec<Vec<u8>> {
        let mut enc = httlib_hpack::Encoder::default();
        let flags = httlib_hpack::Encoder::HUFFMAN_NAME
            | httlib_hpack::Encoder::HUFFMAN_VALUE
            | httlib_hpack::Encoder::WITH_INDEXING
            | httlib_hpack::Encoder::BEST_FORMAT;
        (0..n)
            .map(|i| {
                let timeout = format!("{}u", 4_999_000 + i % 997);
                let mut block = Vec::new();
                for (name, value) in [
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", "/etcdserverpb.KV/Put"),
                    (":authority", "127.0.0.1:2379"),
                    ("content-type", "application/grpc"),
                    ("user-agent", "grpc-go/1.59.0"),
                    ("te", "trailers"),
                    ("grpc-timeout", &timeout),
                ] {
                    let field = (name.as_bytes().to_vec(), value.as_bytes().to_vec(), flags);
                    enc.encode(field, &mut block).unwrap();
                }
                block
            })
            .collect()
    }

    /// Times this decoder against `loona_hpack` on grpc-go request blocks, both on one
    /// connection (mostly indexed fields) and as each connection's first block (all
    /// literals, Huffman-coded). Meaningful only in a release build:
    /// `cargo test --release --lib gateway::hpack::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing_against_loona() {
        use std::time::Instant;
        const N: usize = 100_000;
        let blocks = grpc_go_blocks(N);
        let first = &blocks[0];
        let per_block = |start: Instant| start.elapsed().as_nanos() as f64 / N as f64;

        let mut sum = 0;
        let start = Instant::now();
        let mut d = Decoder::new(4096);
        for b in &blocks {
            d.decode(b, |n, v| sum += n.len() + v.len()).unwrap();
        }
        let ours = per_block(start);
        let start = Instant::now();
        for _ in 0..N {
            let mut d = Decoder::new(4096);
            d.decode(first, |n, v| sum += n.len() + v.len()).unwrap();
        }
        let ours_first = per_block(start);

        let start = Instant::now();
        let mut d = loona_hpack::Decoder::new();
        d.set_max_allowed_table_size(4096);
        for b in &blocks {
            d.decode_with_cb(b, |n, v| sum += n.len() + v.len())
                .unwrap();
        }
        let loona = per_block(start);
        let start = Instant::now();
        for _ in 0..N {
            let mut d = loona_hpack::Decoder::new();
            d.set_max_allowed_table_size(4096);
            d.decode_with_cb(first, |n, v| sum += n.len() + v.len())
                .unwrap();
        }
        let loona_first = per_block(start);

        eprintln!(
            "ns per block, one connection: ours {ours:.0}, loona {loona:.0}; \
             first block of a connection: ours {ours_first:.0}, loona {loona_first:.0} \
             ({} and {} bytes; checksum {sum})",
            blocks[N - 1].len(),
            first.len()
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// A header name or value: often one an encoder finds in its tables, sometimes
        /// arbitrary octets.
        fn string(common: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                3 => proptest::sample::select(common).prop_map(|s| s.as_bytes().to_vec()),
                1 => proptest::collection::vec(any::<u8>(), 0..40),
            ]
        }

        fn header() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
            (
                string(&[
                    ":authority",
                    ":method",
                    ":path",
                    "content-type",
                    "grpc-timeout",
                    "te",
                    "x-a",
                ]),
                string(&[
                    "",
                    "POST",
                    "GET",
                    "/",
                    "127.0.0.1:2379",
                    "trailers",
                    "9999m",
                ]),
            )
        }

        /// A header field and the flags to encode it with.
        type Field = ((Vec<u8>, Vec<u8>), u8);

        /// The header lists of several blocks on one connection, each with an optional
        /// dynamic table size update in front and an encoding flag per field.
        fn connection() -> impl Strategy<Value = Vec<(Option<u16>, Vec<Field>)>> {
            proptest::collection::vec(
                (
                    proptest::option::weighted(0.2, 0..=4096u16),
                    proptest::collection::vec((header(), any::<u8>()), 0..12),
                ),
                1..6,
            )
        }

        proptest! {
            /// Header lists encoded by two independent encoders, with and without Huffman
            /// coding and indexing, decode back to themselves across the blocks of one
            /// connection, so the dynamic table is mirrored exactly.
            #[test]
            fn independent_encoders_round_trip(blocks in connection(), httlib in any::<bool>()) {
                let mut huff = httlib_hpack::Encoder::default();
                let mut plain = loona_hpack::Encoder::new();
                let mut d = Decoder::new(4096);
                for (size, fields) in blocks {
                    let mut block = Vec::new();
                    if let Some(size) = size {
                        if httlib {
                            huff.update_max_dynamic_size(size.into(), &mut block).unwrap();
                        } else {
                            let mut update = loona_hpack::encoder::encode_integer(size.into(), 5);
                            update[0] |= 0x20;
                            block.extend(update);
                            plain.set_max_table_size(size.into());
                        }
                    }
                    let headers: Headers = fields.iter().map(|(h, _)| h.clone()).collect();
                    if httlib {
                        for ((name, value), flags) in fields {
                            // Huffman for the name and value, incremental indexing or
                            // never indexed or neither, searching the tables or not.
                            huff.encode((name, value, flags & 0x1f), &mut block).unwrap();
                        }
                    } else {
                        block.extend(plain.encode(headers.iter().map(|(n, v)| (&n[..], &v[..]))));
                    }
                    prop_assert_eq!(decode(&mut d, &block), Ok(headers));
                }
            }

            /// Arbitrary blocks never panic, also on a decoder that earlier blocks left
            /// in any state; where an independent decoder accepts the same blocks, both
            /// decode them alike.
            #[test]
            fn arbitrary_bytes_never_panic(blocks in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..256), 1..8)) {
                let mut d = Decoder::new(4096);
                let mut theirs = loona_hpack::Decoder::new();
                theirs.set_max_allowed_table_size(4096);
                let mut agree = true;
                for block in &blocks {
                    let ours = decode(&mut d, block);
                    if agree {
                        match (&ours, theirs.decode(block)) {
                            (Ok(a), Ok(b)) => prop_assert_eq!(a, &b),
                            _ => agree = false,
                        }
                    }
                }
            }

            /// Corrupted real blocks never panic, and decode as an independent decoder
            /// does where it accepts them.
            #[test]
            fn corrupted_blocks_never_panic(blocks in connection(),
                                            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
                let mut huff = httlib_hpack::Encoder::default();
                let mut d = Decoder::new(4096);
                let mut theirs = loona_hpack::Decoder::new();
                theirs.set_max_allowed_table_size(4096);
                let mut agree = true;
                for (i, (_, fields)) in blocks.into_iter().enumerate() {
                    let mut block = Vec::new();
                    for ((name, value), flags) in fields {
                        huff.encode((name, value, flags & 0x1f), &mut block).unwrap();
                    }
                    if i == 0 && !block.is_empty() {
                        for &(at, x) in &flips {
                            let n = block.len();
                            block[at % n] ^= x;
                        }
                    }
                    let ours = decode(&mut d, &block);
                    if agree {
                        match (&ours, theirs.decode(&block)) {
                            (Ok(a), Ok(b)) => prop_assert_eq!(a, &b),
                            _ => agree = false,
                        }
                    }
                }
            }
        }
    }
}
