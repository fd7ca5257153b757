//! CRC-32C (Castagnoli), the checksum etcd's `HashKV` uses.
//!
//! `crc32fast` only implements the IEEE polynomial, and etcd hashes with Castagnoli, so a
//! small table-driven implementation lives here to keep hashes comparable with etcd's.

/// The reflected Castagnoli polynomial.
const POLY_REFLECTED: u32 = 0x82F6_3B78;

/// The byte-at-a-time lookup table, computed at compile time.
const TABLE: [u32; 256] = make_table();

const fn make_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY_REFLECTED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// A streaming CRC-32C, fed like Go's `hash.Hash32`.
#[derive(Debug, Clone)]
pub(crate) struct Crc32c {
    /// The running state, kept inverted as the algorithm prescribes.
    state: u32,
}

impl Crc32c {
    /// A hasher over the empty input.
    pub(crate) fn new() -> Self {
        Crc32c { state: !0 }
    }

    /// Feeds `bytes`.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        let mut crc = self.state;
        for &b in bytes {
            crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
        }
        self.state = crc;
    }

    /// The checksum of everything fed so far.
    pub(crate) fn sum(&self) -> u32 {
        !self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value() {
        // The standard check value of CRC-32C.
        let mut h = Crc32c::new();
        h.update(b"1234");
        h.update(b"56789");
        assert_eq!(h.sum(), 0xE306_9283);
        assert_eq!(Crc32c::new().sum(), 0);
    }
}
