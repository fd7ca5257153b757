//! bbolt's file format, written and read without bbolt: etcd's backend (and so its
//! snapshots) is a bbolt database, and the real `etcdctl snapshot status/restore` and
//! etcd itself only accept files in that format.
//!
//! The writer lays out a database of named top-level buckets the way bbolt would after a
//! fresh bulk load: two meta pages (0 and 1), an empty freelist page (2), then each
//! bucket's pages bottom-up (leaves, then each level of branches), then the root bucket's
//! pages. Small buckets are stored inline in the root bucket's leaf, as bbolt does. All
//! integers are little-endian, as bbolt writes them on every platform etcd supports.
//!
//! The reader accepts any valid bbolt file with top-level buckets only (etcd's shape),
//! including etcd's own, and returns an error, never a panic, on a malformed one.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Write};

/// The page size detcd writes (bbolt's default on the platforms etcd runs on).
pub const PAGE_SIZE_BYTES: usize = 4096;
/// bbolt's magic number, in every meta page.
const MAGIC: u32 = 0xED0C_DAED;
/// bbolt's file format version.
const VERSION: u32 = 2;
/// A page header: id (u64), flags (u16), count (u16), overflow (u32).
const PAGE_HEADER_BYTES: usize = 16;
/// A leaf element (flags, pos, ksize, vsize: u32 each) and a branch element (pos and
/// ksize: u32, pgid: u64) are both 16 bytes.
const ELEMENT_BYTES: usize = 16;
/// A bucket's header in its parent's leaf value: root pgid (u64) and sequence (u64).
const BUCKET_HEADER_BYTES: usize = 16;
/// The bytes of the meta structure covered by its checksum (everything before it).
const META_CHECKSUMMED_BYTES: usize = 56;
/// The meta structure's size: the checksummed part and the checksum.
const META_BYTES: usize = META_CHECKSUMMED_BYTES + 8;
/// The page flags.
const BRANCH_PAGE_FLAG: u16 = 0x01;
const LEAF_PAGE_FLAG: u16 = 0x02;
const META_PAGE_FLAG: u16 = 0x04;
const FREELIST_PAGE_FLAG: u16 = 0x10;
/// The leaf element flag marking a sub-bucket.
const BUCKET_LEAF_FLAG: u32 = 0x01;
/// The page holding the freelist in files detcd writes.
const FREELIST_PGID: u64 = 2;
/// The first page id available for buckets in files detcd writes.
const FIRST_DATA_PGID: u64 = 3;
/// Deeper trees than this cannot come from a real file (a 4 KiB-page tree of this depth
/// would hold more pages than any disk), so the reader treats them as corrupt.
const MAX_TREE_DEPTH: usize = 32;

/// A bucket's entries: keys and values in strictly ascending key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;
/// Top-level buckets by name.
pub type Buckets = BTreeMap<Vec<u8>, Entries>;

/// Why a database could not be written or read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BboltError {
    /// The input to the writer is not a valid database (unsorted keys, for one).
    #[error("bbolt: invalid input: {0}")]
    InvalidInput(String),
    /// The file is not a valid bbolt database.
    #[error("bbolt: corrupt database: {0}")]
    Corrupt(String),
    /// The file is valid bbolt but has a shape this reader does not handle.
    #[error("bbolt: unsupported: {0}")]
    Unsupported(String),
}

fn corrupt(what: impl Into<String>) -> BboltError {
    BboltError::Corrupt(what.into())
}

/// bbolt's meta checksum: 64-bit FNV-1a.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

// ---------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------

/// One node of a planned tree: a page and its overflow pages.
#[derive(Debug, Clone)]
struct Node {
    /// Index of the node's first element in its level's elements (entries for a leaf,
    /// the nodes of the level below for a branch).
    first: usize,
    /// How many elements it holds.
    count: usize,
    /// Its serialized size in bytes.
    size_bytes: usize,
    /// Index of the first entry under it, whose key is the node's key in its parent.
    first_entry: usize,
    /// Its page id (0 for an inline leaf).
    pgid: u64,
}

impl Node {
    /// Pages the node occupies: bbolt gives a node larger than a page overflow pages.
    fn page_count(&self) -> u64 {
        self.size_bytes.div_ceil(PAGE_SIZE_BYTES).max(1) as u64
    }
}

/// The planned pages of one bucket: `levels[0]` are its leaves, each further level the
/// branches above, and the last level a single root node.
#[derive(Debug, Clone)]
struct Tree {
    levels: Vec<Vec<Node>>,
    /// Whether the bucket is stored inline in its parent's leaf value.
    inline: bool,
}

impl Tree {
    fn root(&self) -> &Node {
        let top = &self.levels[self.levels.len() - 1];
        &top[0]
    }
}

/// Groups elements of the given data sizes into nodes, in order: a node takes elements
/// while it still fits in one page, and never has fewer than one element, so a single
/// element larger than a page gets overflow pages, as in bbolt.
fn pack(data_sizes: impl Iterator<Item = usize>) -> Vec<Node> {
    let empty = |first: usize| Node {
        first,
        count: 0,
        size_bytes: PAGE_HEADER_BYTES,
        first_entry: first,
        pgid: 0,
    };
    let mut nodes = Vec::new();
    let mut current = empty(0);
    for (i, size) in data_sizes.enumerate() {
        let element_bytes = ELEMENT_BYTES + size;
        if current.count > 0 && current.size_bytes + element_bytes > PAGE_SIZE_BYTES {
            nodes.push(std::mem::replace(&mut current, empty(i)));
        }
        current.count += 1;
        current.size_bytes += element_bytes;
    }
    nodes.push(current);
    nodes
}

/// Plans the pages of a bucket holding `entries`. With `allow_inline`, a bucket that fits
/// in one leaf of at most a quarter page is stored inline, which is bbolt's own rule.
fn plan_tree(entries: &[(Vec<u8>, Vec<u8>)], allow_inline: bool) -> Tree {
    let leaves = pack(entries.iter().map(|(k, v)| k.len() + v.len()));
    let inline = allow_inline && leaves.len() == 1 && leaves[0].size_bytes <= PAGE_SIZE_BYTES / 4;
    let mut levels = vec![leaves];
    while levels[levels.len() - 1].len() > 1 {
        let below = &levels[levels.len() - 1];
        let mut branches = pack(below.iter().map(|child| entries[child.first_entry].0.len()));
        for branch in &mut branches {
            branch.first_entry = below[branch.first].first_entry;
        }
        levels.push(branches);
    }
    Tree { levels, inline }
}

/// Gives every node of `tree` its page id, from `next_pgid` on, leaves first and then each
/// level of branches, so children always precede their parents in the file.
fn assign_pgids(tree: &mut Tree, next_pgid: &mut u64) {
    if tree.inline {
        return;
    }
    for level in &mut tree.levels {
        for node in level {
            node.pgid = *next_pgid;
            *next_pgid += node.page_count();
        }
    }
}

fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Writes a page header at the start of `buf`.
fn put_page_header(buf: &mut [u8], pgid: u64, flags: u16, count: u16, overflow: u32) {
    put_u64(buf, 0, pgid);
    put_u16(buf, 8, flags);
    put_u16(buf, 10, count);
    put_u32(buf, 12, overflow);
}

/// Serializes one node of `tree`. A paged node is padded to whole pages; an inline leaf
/// is exactly its size with page id 0, as bbolt embeds it in the parent's value.
fn node_bytes(
    entries: &[(Vec<u8>, Vec<u8>)],
    tree: &Tree,
    level: usize,
    node: &Node,
    leaf_flags: u32,
) -> Vec<u8> {
    let len = if tree.inline {
        node.size_bytes
    } else {
        node.page_count() as usize * PAGE_SIZE_BYTES
    };
    let mut buf = vec![0u8; len];
    // The planner keeps page nodes under 256 elements and inline ones under 64, so the
    // count fits bbolt's u16; the overflow count fits u32 since sizes are checked on input.
    let count = node.count as u16;
    if level == 0 {
        put_page_header(
            &mut buf,
            node.pgid,
            LEAF_PAGE_FLAG,
            count,
            (node.page_count() - 1) as u32,
        );
        let mut data_at = PAGE_HEADER_BYTES + node.count * ELEMENT_BYTES;
        for (i, (key, value)) in entries[node.first..node.first + node.count]
            .iter()
            .enumerate()
        {
            let element_at = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
            put_u32(&mut buf, element_at, leaf_flags);
            put_u32(&mut buf, element_at + 4, (data_at - element_at) as u32);
            put_u32(&mut buf, element_at + 8, key.len() as u32);
            put_u32(&mut buf, element_at + 12, value.len() as u32);
            buf[data_at..data_at + key.len()].copy_from_slice(key);
            data_at += key.len();
            buf[data_at..data_at + value.len()].copy_from_slice(value);
            data_at += value.len();
        }
    } else {
        put_page_header(
            &mut buf,
            node.pgid,
            BRANCH_PAGE_FLAG,
            count,
            (node.page_count() - 1) as u32,
        );
        let children = &tree.levels[level - 1][node.first..node.first + node.count];
        let mut data_at = PAGE_HEADER_BYTES + node.count * ELEMENT_BYTES;
        for (i, child) in children.iter().enumerate() {
            let key = &entries[child.first_entry].0;
            let element_at = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
            put_u32(&mut buf, element_at, (data_at - element_at) as u32);
            put_u32(&mut buf, element_at + 4, key.len() as u32);
            put_u64(&mut buf, element_at + 8, child.pgid);
            buf[data_at..data_at + key.len()].copy_from_slice(key);
            data_at += key.len();
        }
    }
    buf
}

/// bbolt's largest key.
const MAX_KEY_BYTES: usize = 32768;
/// bbolt's largest value ((1 << 31) - 2).
const MAX_VALUE_BYTES: usize = (1 << 31) - 2;

/// Checks that a bucket's entries are what bbolt can hold: non-empty keys no longer than
/// bbolt allows, in strictly ascending order, with values within bbolt's limit.
fn check_entries(name: &[u8], entries: &[(Vec<u8>, Vec<u8>)]) -> Result<(), BboltError> {
    let bad = |what: &str| {
        BboltError::InvalidInput(format!("bucket {}: {what}", String::from_utf8_lossy(name)))
    };
    if name.is_empty() || name.len() > MAX_KEY_BYTES {
        return Err(bad("bucket names must have 1 to 32768 bytes"));
    }
    for (i, (key, value)) in entries.iter().enumerate() {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(bad("keys must have 1 to 32768 bytes"));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(bad("value too large"));
        }
        if i > 0 && entries[i - 1].0 >= *key {
            return Err(bad("keys are not in strictly ascending order"));
        }
    }
    Ok(())
}

/// A planned database file: every page id is fixed before anything is written, so the
/// file's size is known up front and its pages can be produced in order without holding
/// the whole file in memory (only one node's pages at a time).
#[derive(Debug)]
pub struct DbWriter {
    /// The buckets, in name order, with their planned trees.
    buckets: Vec<(Entries, Tree)>,
    /// The root bucket's entries: each bucket's name and its header (with the inline
    /// page for an inline bucket).
    root_entries: Entries,
    root_tree: Tree,
    /// The number of pages in the file (bbolt's high water mark).
    page_count: u64,
}

/// Where a [`Pages`] iterator is in the file.
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    /// 0 and 1: the meta pages; 2: the freelist; 3: the trees.
    fixed_page: u64,
    /// Index of the tree being written; the number of buckets means the root bucket.
    tree: usize,
    level: usize,
    node: usize,
}

impl DbWriter {
    /// Plans the file holding `buckets`; fails if a bucket's entries are unsorted or
    /// exceed bbolt's limits.
    pub fn new(buckets: Buckets) -> Result<DbWriter, BboltError> {
        let mut next_pgid = FIRST_DATA_PGID;
        let mut planned = Vec::with_capacity(buckets.len());
        let mut root_entries = Vec::with_capacity(buckets.len());
        for (name, entries) in buckets {
            check_entries(&name, &entries)?;
            let mut tree = plan_tree(&entries, true);
            assign_pgids(&mut tree, &mut next_pgid);
            let mut value = vec![0u8; BUCKET_HEADER_BYTES];
            if tree.inline {
                value.extend(node_bytes(&entries, &tree, 0, tree.root(), 0));
            } else {
                put_u64(&mut value, 0, tree.root().pgid);
            }
            root_entries.push((name, value));
            planned.push((entries, tree));
        }
        let mut root_tree = plan_tree(&root_entries, false);
        assign_pgids(&mut root_tree, &mut next_pgid);
        Ok(DbWriter {
            buckets: planned,
            root_entries,
            root_tree,
            page_count: next_pgid,
        })
    }

    /// The size of the file in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.page_count * PAGE_SIZE_BYTES as u64
    }

    /// The meta page `which` (0 or 1). Page 0 carries transaction id 0 and page 1 id 1,
    /// as in a freshly created bbolt file, so bbolt reads page 1 and next writes page 0.
    fn meta_page(&self, which: u64) -> Vec<u8> {
        let mut page = vec![0u8; PAGE_SIZE_BYTES];
        put_page_header(&mut page, which, META_PAGE_FLAG, 0, 0);
        let m = PAGE_HEADER_BYTES;
        put_u32(&mut page, m, MAGIC);
        put_u32(&mut page, m + 4, VERSION);
        put_u32(&mut page, m + 8, PAGE_SIZE_BYTES as u32);
        put_u32(&mut page, m + 12, 0);
        put_u64(&mut page, m + 16, self.root_tree.root().pgid);
        put_u64(&mut page, m + 24, 0);
        put_u64(&mut page, m + 32, FREELIST_PGID);
        put_u64(&mut page, m + 40, self.page_count);
        put_u64(&mut page, m + 48, which);
        let checksum = fnv1a_64(&page[m..m + META_CHECKSUMMED_BYTES]);
        put_u64(&mut page, m + META_CHECKSUMMED_BYTES, checksum);
        page
    }

    /// The next node's pages after `cursor` (advancing it), or `None` at the end.
    fn next_pages(&self, cursor: &mut Cursor) -> Option<Vec<u8>> {
        match cursor.fixed_page {
            0 | 1 => {
                cursor.fixed_page += 1;
                return Some(self.meta_page(cursor.fixed_page - 1));
            }
            2 => {
                cursor.fixed_page += 1;
                // Every page is in use, so the freelist is empty.
                let mut freelist = vec![0u8; PAGE_SIZE_BYTES];
                put_page_header(&mut freelist, FREELIST_PGID, FREELIST_PAGE_FLAG, 0, 0);
                return Some(freelist);
            }
            _ => {}
        }
        loop {
            let (entries, tree, leaf_flags) = match self.buckets.get(cursor.tree) {
                Some((entries, tree)) => (entries, tree, 0),
                None if cursor.tree == self.buckets.len() => {
                    (&self.root_entries, &self.root_tree, BUCKET_LEAF_FLAG)
                }
                None => return None,
            };
            let nodes = if tree.inline {
                None
            } else {
                tree.levels.get(cursor.level)
            };
            match nodes.and_then(|nodes| nodes.get(cursor.node)) {
                Some(node) => {
                    let bytes = node_bytes(entries, tree, cursor.level, node, leaf_flags);
                    cursor.node += 1;
                    return Some(bytes);
                }
                None if nodes.is_some() => {
                    cursor.level += 1;
                    cursor.node = 0;
                }
                None => {
                    cursor.tree += 1;
                    cursor.level = 0;
                    cursor.node = 0;
                }
            }
        }
    }

    /// Writes the whole file to `w`, page by page in page-id order.
    pub fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        let mut cursor = Cursor::default();
        while let Some(pages) = self.next_pages(&mut cursor) {
            w.write_all(&pages)?;
        }
        Ok(())
    }

    /// The file's pages in page-id order, one node (a page with its overflow pages) at a
    /// time.
    pub fn into_pages(self) -> Pages {
        Pages {
            writer: self,
            cursor: Cursor::default(),
        }
    }
}

/// The pages of a planned file, in order; see [`DbWriter::into_pages`].
#[derive(Debug)]
pub struct Pages {
    writer: DbWriter,
    cursor: Cursor,
}

impl Pages {
    /// The size of the whole file in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.writer.size_bytes()
    }
}

impl Iterator for Pages {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        self.writer.next_pages(&mut self.cursor)
    }
}

/// Encodes `buckets` as a bbolt database file held in memory.
pub fn encode(buckets: Buckets) -> Result<Vec<u8>, BboltError> {
    let writer = DbWriter::new(buckets)?;
    let mut out = Vec::with_capacity(writer.size_bytes() as usize);
    for pages in writer.into_pages() {
        out.extend_from_slice(&pages);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------

/// A database read from a bbolt file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    /// The top-level buckets and their entries.
    pub buckets: Buckets,
    /// The file's page size.
    pub page_size_bytes: usize,
    /// The number of pages the database uses (bbolt's high water mark); times the page
    /// size this is what bbolt reports as the transaction's size.
    pub page_count: u64,
    /// The transaction id of the meta page in use.
    pub txid: u64,
}

/// The fields of a meta page the reader uses.
#[derive(Debug, Clone, Copy)]
struct Meta {
    page_size_bytes: usize,
    root_pgid: u64,
    page_count: u64,
    txid: u64,
}

fn get_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn get_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn get_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Parses and validates the meta page starting at `offset` (magic, version, checksum).
fn parse_meta(bytes: &[u8], offset: usize) -> Result<Meta, BboltError> {
    let m = offset
        .checked_add(PAGE_HEADER_BYTES)
        .ok_or_else(|| corrupt("meta page offset overflows"))?;
    let meta = bytes
        .get(m..m.saturating_add(META_BYTES))
        .ok_or_else(|| corrupt("file too short for a meta page"))?;
    let short = || corrupt("meta page truncated");
    if get_u32(meta, 0).ok_or_else(short)? != MAGIC {
        return Err(corrupt("invalid magic number"));
    }
    let version = get_u32(meta, 4).ok_or_else(short)?;
    if version != VERSION {
        return Err(corrupt(format!("version mismatch: {version}")));
    }
    let checksum = get_u64(meta, META_CHECKSUMMED_BYTES).ok_or_else(short)?;
    if checksum != fnv1a_64(&meta[..META_CHECKSUMMED_BYTES]) {
        return Err(corrupt("meta checksum mismatch"));
    }
    Ok(Meta {
        page_size_bytes: get_u32(meta, 8).ok_or_else(short)? as usize,
        root_pgid: get_u64(meta, 16).ok_or_else(short)?,
        page_count: get_u64(meta, 40).ok_or_else(short)?,
        txid: get_u64(meta, 48).ok_or_else(short)?,
    })
}

/// Finds the page size the way bbolt does: from the first meta page, or, if that one is
/// damaged, from the second meta page looked for at each possible page size.
fn find_page_size(bytes: &[u8]) -> Result<usize, BboltError> {
    if let Ok(meta) = parse_meta(bytes, 0) {
        return Ok(meta.page_size_bytes);
    }
    for shift in 0..=14 {
        if let Ok(meta) = parse_meta(bytes, 1024 << shift) {
            return Ok(meta.page_size_bytes);
        }
    }
    Err(corrupt("no valid meta page"))
}

/// One leaf element as read: key, value and flags.
type Element<'a> = (&'a [u8], &'a [u8], u32);

/// Walks the pages of a file, each at most once, so that a malicious file cannot make it
/// loop or repeat work.
struct Reader<'a> {
    bytes: &'a [u8],
    page_size_bytes: usize,
    page_count: u64,
    visited: HashSet<u64>,
}

impl<'a> Reader<'a> {
    /// The page `pgid` with its overflow pages.
    fn page(&mut self, pgid: u64) -> Result<&'a [u8], BboltError> {
        if pgid < 2 || pgid >= self.page_count {
            return Err(corrupt(format!("page id {pgid} out of range")));
        }
        if !self.visited.insert(pgid) {
            return Err(corrupt(format!("page {pgid} is referenced twice")));
        }
        let out_of_file = || corrupt(format!("page {pgid} lies beyond the end of the file"));
        let start = usize::try_from(pgid)
            .ok()
            .and_then(|p| p.checked_mul(self.page_size_bytes))
            .ok_or_else(out_of_file)?;
        let header = self
            .bytes
            .get(start..start.saturating_add(PAGE_HEADER_BYTES))
            .ok_or_else(out_of_file)?;
        let id = get_u64(header, 0).ok_or_else(out_of_file)?;
        if id != pgid {
            return Err(corrupt(format!("page {pgid} has id {id}")));
        }
        let overflow = get_u32(header, 12).ok_or_else(out_of_file)? as usize;
        let len = overflow
            .checked_add(1)
            .and_then(|n| n.checked_mul(self.page_size_bytes))
            .ok_or_else(out_of_file)?;
        self.bytes
            .get(start..start.checked_add(len).ok_or_else(out_of_file)?)
            .ok_or_else(out_of_file)
    }

    /// Appends the leaf elements of the tree rooted at `page`, in order.
    fn collect(
        &mut self,
        page: &'a [u8],
        depth: usize,
        out: &mut Vec<Element<'a>>,
    ) -> Result<(), BboltError> {
        if depth > MAX_TREE_DEPTH {
            return Err(corrupt("tree too deep"));
        }
        let short = || corrupt("page header truncated");
        let flags = get_u16(page, 8).ok_or_else(short)?;
        let count = get_u16(page, 10).ok_or_else(short)? as usize;
        let elements_end = PAGE_HEADER_BYTES + count * ELEMENT_BYTES;
        if elements_end > page.len() {
            return Err(corrupt("page elements overrun the page"));
        }
        // bbolt writes each element's data after the element array, in element order;
        // requiring that layout also keeps a crafted page from making the reader copy
        // the same bytes many times over.
        let mut data_end = elements_end;
        let mut take = |element_at: usize, pos: u32, len: usize| -> Result<&'a [u8], BboltError> {
            let start = element_at
                .checked_add(pos as usize)
                .filter(|&s| s >= data_end)
                .ok_or_else(|| corrupt("element data out of order"))?;
            let end = start
                .checked_add(len)
                .filter(|&e| e <= page.len())
                .ok_or_else(|| corrupt("element data overruns the page"))?;
            data_end = end;
            Ok(&page[start..end])
        };
        match flags {
            LEAF_PAGE_FLAG => {
                for i in 0..count {
                    let at = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
                    let e = &page[at..at + ELEMENT_BYTES];
                    let (flags, pos, ksize, vsize) = (
                        get_u32(e, 0).ok_or_else(short)?,
                        get_u32(e, 4).ok_or_else(short)?,
                        get_u32(e, 8).ok_or_else(short)? as usize,
                        get_u32(e, 12).ok_or_else(short)? as usize,
                    );
                    let kv = take(at, pos, ksize + vsize)?;
                    out.push((&kv[..ksize], &kv[ksize..], flags));
                }
                Ok(())
            }
            BRANCH_PAGE_FLAG => {
                let mut children = Vec::with_capacity(count);
                for i in 0..count {
                    let at = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
                    let e = &page[at..at + ELEMENT_BYTES];
                    let pos = get_u32(e, 0).ok_or_else(short)?;
                    let ksize = get_u32(e, 4).ok_or_else(short)? as usize;
                    take(at, pos, ksize)?;
                    children.push(get_u64(e, 8).ok_or_else(short)?);
                }
                for child in children {
                    let child_page = self.page(child)?;
                    self.collect(child_page, depth + 1, out)?;
                }
                Ok(())
            }
            other => Err(corrupt(format!(
                "unexpected page flags {other:#x} in a tree"
            ))),
        }
    }
}

/// Checks that keys are strictly ascending, as bbolt keeps them.
fn check_order(elements: &[Element<'_>], what: &str) -> Result<(), BboltError> {
    if elements.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(corrupt(format!("{what}: keys out of order")));
    }
    Ok(())
}

/// Reads a bbolt database file: its top-level buckets and their entries. Nested buckets
/// (which etcd never creates) are reported as unsupported.
pub fn read(bytes: &[u8]) -> Result<Database, BboltError> {
    let page_size_bytes = find_page_size(bytes)?;
    if !page_size_bytes.is_power_of_two() || !(1024..=1 << 24).contains(&page_size_bytes) {
        return Err(corrupt(format!("invalid page size {page_size_bytes}")));
    }
    let metas = [parse_meta(bytes, 0), parse_meta(bytes, page_size_bytes)];
    // bbolt uses the valid meta page with the higher transaction id.
    let meta = match metas {
        [Ok(a), Ok(b)] => {
            if b.txid > a.txid {
                b
            } else {
                a
            }
        }
        [Ok(m), Err(_)] | [Err(_), Ok(m)] => m,
        [Err(e), Err(_)] => return Err(e),
    };
    if meta.page_size_bytes != page_size_bytes {
        return Err(corrupt("meta pages disagree on the page size"));
    }
    let mut reader = Reader {
        bytes,
        page_size_bytes,
        page_count: meta.page_count,
        visited: HashSet::new(),
    };
    let root_page = reader.page(meta.root_pgid)?;
    let mut root_elements = Vec::new();
    reader.collect(root_page, 0, &mut root_elements)?;
    check_order(&root_elements, "root bucket")?;
    let mut buckets = Buckets::new();
    for (name, value, flags) in root_elements {
        let label = String::from_utf8_lossy(name).into_owned();
        if flags & BUCKET_LEAF_FLAG == 0 {
            return Err(corrupt(format!("root bucket holds a plain key {label:?}")));
        }
        let bucket_root = get_u64(value, 0)
            .filter(|_| value.len() >= BUCKET_HEADER_BYTES)
            .ok_or_else(|| corrupt(format!("bucket {label:?}: header truncated")))?;
        let mut elements = Vec::new();
        if bucket_root == 0 {
            let inline_page = &value[BUCKET_HEADER_BYTES..];
            if get_u16(inline_page, 8) != Some(LEAF_PAGE_FLAG) {
                return Err(corrupt(format!("bucket {label:?}: bad inline page")));
            }
            reader.collect(inline_page, 1, &mut elements)?;
        } else {
            let page = reader.page(bucket_root)?;
            reader.collect(page, 1, &mut elements)?;
        }
        check_order(&elements, &format!("bucket {label:?}"))?;
        let mut entries = Vec::with_capacity(elements.len());
        for (key, value, flags) in elements {
            if flags & BUCKET_LEAF_FLAG != 0 {
                return Err(BboltError::Unsupported(format!(
                    "bucket {label:?} holds a nested bucket"
                )));
            }
            entries.push((key.to_vec(), value.to_vec()));
        }
        buckets.insert(name.to_vec(), entries);
    }
    Ok(Database {
        buckets,
        page_size_bytes,
        page_count: meta.page_count,
        txid: meta.txid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// etcd's buckets, all present even when empty, as in etcd's own files.
    const ETCD_BUCKETS: [&str; 10] = [
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

    fn entries(items: &[(&[u8], &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
        items
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    fn round_trip(buckets: &Buckets) -> Database {
        let writer = DbWriter::new(buckets.clone()).expect("plan");
        let bytes = encode(buckets.clone()).expect("encode");
        let mut written = Vec::new();
        writer.write_to(&mut written).expect("write");
        assert_eq!(written, bytes);
        assert_eq!(bytes.len() as u64, writer.size_bytes());
        assert_eq!(bytes.len() % PAGE_SIZE_BYTES, 0);
        let db = read(&bytes).expect("read back");
        assert_eq!(&db.buckets, buckets);
        assert_eq!(db.page_size_bytes, PAGE_SIZE_BYTES);
        assert_eq!(db.page_count * PAGE_SIZE_BYTES as u64, writer.size_bytes());
        db
    }

    #[test]
    fn fnv1a_64_matches_reference_values() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn empty_and_small_databases_round_trip_inline() {
        round_trip(&Buckets::new());
        let mut buckets: Buckets = ETCD_BUCKETS
            .iter()
            .map(|n| (n.as_bytes().to_vec(), Vec::new()))
            .collect();
        // Small buckets live inline in the root leaf: metas, freelist and root only.
        let db = round_trip(&buckets);
        assert_eq!(db.page_count, 4);
        buckets.insert(
            b"meta".to_vec(),
            entries(&[(b"consistent_index", &[0, 0, 0, 0, 0, 0, 0, 7])]),
        );
        assert_eq!(round_trip(&buckets).page_count, 4);
    }

    #[test]
    fn large_buckets_split_into_branches_and_overflow_pages() {
        let mut buckets = Buckets::new();
        let many: Vec<(Vec<u8>, Vec<u8>)> = (0..20_000u32)
            .map(|i| {
                (
                    format!("key/{i:08}").into_bytes(),
                    vec![(i % 251) as u8; (i % 97) as usize],
                )
            })
            .collect();
        buckets.insert(b"key".to_vec(), many);
        let big: Vec<(Vec<u8>, Vec<u8>)> = [1usize, 4000, 4096, 5000, 100_000, 3]
            .iter()
            .enumerate()
            .map(|(i, &n)| (vec![b'b', i as u8], vec![i as u8 + 1; n]))
            .collect();
        buckets.insert(b"big".to_vec(), big);
        buckets.insert(b"empty".to_vec(), Vec::new());
        let db = round_trip(&buckets);
        // 20,000 entries need several levels of branches; the big values overflow.
        assert!(db.page_count > 200);
    }

    #[test]
    fn many_buckets_split_the_root_bucket() {
        // Each bucket is just small enough to be inline, so the root leaf needs pages.
        let buckets: Buckets = (0..40u8)
            .map(|i| {
                let value = vec![i; 900];
                (vec![b'n', i], vec![(b"k".to_vec(), value)])
            })
            .collect();
        round_trip(&buckets);
    }

    #[test]
    fn encoding_is_deterministic() {
        let buckets: Buckets = [(
            b"key".to_vec(),
            entries(&[(b"a", b"1"), (b"b", &[7; 9000])]),
        )]
        .into_iter()
        .collect();
        assert_eq!(encode(buckets.clone()).unwrap(), encode(buckets).unwrap());
    }

    #[test]
    fn writer_rejects_what_bbolt_cannot_hold() {
        let with = |e: Vec<(Vec<u8>, Vec<u8>)>| {
            let b: Buckets = [(b"x".to_vec(), e)].into_iter().collect();
            DbWriter::new(b).map(|_| ())
        };
        assert!(with(entries(&[(b"b", b""), (b"a", b"")])).is_err());
        assert!(with(entries(&[(b"a", b""), (b"a", b"")])).is_err());
        assert!(with(entries(&[(b"", b"v")])).is_err());
        assert!(with(vec![(vec![1; MAX_KEY_BYTES + 1], vec![])]).is_err());
        let unnamed: Buckets = [(Vec::new(), Vec::new())].into_iter().collect();
        assert!(DbWriter::new(unnamed).is_err());
    }

    #[test]
    fn reader_falls_back_to_the_other_meta_page() {
        let buckets: Buckets = [(b"key".to_vec(), entries(&[(b"a", b"1")]))]
            .into_iter()
            .collect();
        let mut bytes = encode(buckets.clone()).unwrap();
        // Page 1 (txid 1) is in use; damaging it makes the reader use page 0.
        bytes[PAGE_SIZE_BYTES + PAGE_HEADER_BYTES + 20] ^= 0xff;
        let db = read(&bytes).unwrap();
        assert_eq!(db.txid, 0);
        assert_eq!(db.buckets, buckets);
        // With both damaged nothing is readable.
        bytes[PAGE_HEADER_BYTES + 20] ^= 0xff;
        assert!(matches!(read(&bytes), Err(BboltError::Corrupt(_))));
    }

    /// A snapshot taken from etcd 3.4.23 by `etcdctl snapshot save` after
    /// `put foo bar; put a 1; put big <6000 x>; put foo baz; del a; compaction 3;
    /// put --lease leased v`; the last 32 bytes are etcd's SHA-256 of the rest.
    const ETCD_FIXTURE: &[u8] = include_bytes!("../../tests/fixtures/etcd-3.4.23-snapshot.db");

    #[test]
    fn reads_a_snapshot_written_by_etcd() {
        let bytes = &ETCD_FIXTURE[..ETCD_FIXTURE.len() - 32];
        let db = read(bytes).expect("etcd's file reads");
        assert_eq!(db.page_size_bytes, 4096);
        assert_eq!(db.page_count * 4096, bytes.len() as u64);
        let names: Vec<&[u8]> = db.buckets.keys().map(Vec::as_slice).collect();
        let want: Vec<&[u8]> = ETCD_BUCKETS.iter().map(|n| n.as_bytes()).collect();
        assert_eq!(names, want);
        let total: usize = db.buckets.values().map(Vec::len).sum();
        assert_eq!(total, 13, "etcdctl snapshot status reports totalKey 13");
        let keys = &db.buckets[&b"key".to_vec()];
        assert_eq!(keys.len(), 6);
        let (last_rev, _) = keys.last().unwrap();
        assert_eq!(&last_rev[..8], &7u64.to_be_bytes());
        let big = keys
            .iter()
            .find(|(_, v)| v.len() > 6000)
            .expect("the big value");
        assert!(big.1.ends_with(&[b'x'; 6000]));
        let meta = &db.buckets[&b"meta".to_vec()];
        assert_eq!(meta[0].0, b"consistent_index");
        assert_eq!(
            db.buckets[&b"cluster".to_vec()],
            entries(&[(b"clusterVersion", b"3.4.0")])
        );
        assert_eq!(
            db.buckets[&b"auth".to_vec()],
            entries(&[(b"authRevision", &1u64.to_be_bytes())])
        );
        // Written back by detcd and read again, the content is unchanged.
        round_trip(&db.buckets);
    }

    fn sample_file() -> Vec<u8> {
        let mut buckets = Buckets::new();
        buckets.insert(
            b"key".to_vec(),
            (0..600u32)
                .map(|i| (i.to_be_bytes().to_vec(), vec![b'v'; (i % 40) as usize]))
                .collect(),
        );
        buckets.insert(b"big".to_vec(), entries(&[(b"x", &[9; 5000])]));
        buckets.insert(b"small".to_vec(), entries(&[(b"s", b"t")]));
        encode(buckets).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn reader_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..20_000)) {
            let _ = read(&bytes);
        }

        #[test]
        fn reader_never_panics_on_damaged_files(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut bytes = sample_file();
            for (at, byte) in flips {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            let _ = read(&bytes);
        }

        #[test]
        fn reader_never_panics_on_damaged_metas(
            flips in proptest::collection::vec((0usize..200, any::<u8>()), 1..8),
        ) {
            // Damage that keeps the meta checksums valid reaches the page walk.
            let mut bytes = sample_file();
            for (at, byte) in flips {
                bytes[PAGE_SIZE_BYTES + PAGE_HEADER_BYTES + at % META_CHECKSUMMED_BYTES] = byte;
            }
            let m = PAGE_SIZE_BYTES + PAGE_HEADER_BYTES;
            let sum = fnv1a_64(&bytes[m..m + META_CHECKSUMMED_BYTES]);
            put_u64(&mut bytes, m + META_CHECKSUMMED_BYTES, sum);
            let _ = read(&bytes);
        }

        #[test]
        fn any_sorted_buckets_round_trip(
            raw in proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 1..12),
                proptest::collection::btree_map(
                    proptest::collection::vec(any::<u8>(), 1..40),
                    proptest::collection::vec(any::<u8>(), 0..3000),
                    0..60,
                ),
                0..6,
            )
        ) {
            let buckets: Buckets = raw
                .into_iter()
                .map(|(name, kvs)| (name, kvs.into_iter().collect()))
                .collect();
            let bytes = encode(buckets.clone()).unwrap();
            prop_assert_eq!(read(&bytes).unwrap().buckets, buckets);
        }
    }
}
