//! Ownership of KV cache blocks: which sequence holds which block, and which full blocks can
//! be shared by a later sequence with the same prefix.
//!
//! A full block is keyed by a [`BlockHash`] of (parent block's hash, its token ids, the content
//! hashes of the media its tokens stand for), so a key names a whole prefix, not just 16
//! tokens, and the same placeholder tokens with a different image never share a block. A block is reference counted: several sequences may hold
//! the same prefix block. When its last holder lets go, a block that has a key stays in the
//! cache (free, but findable) until an allocation needs it; such blocks are evicted least
//! recently freed first. Blocks without a key are reused before any cached one.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use xxhash_rust::xxh3::Xxh3Default;

/// Tokens per KV cache block.
pub const BLOCK_SIZE: usize = 16;

/// The content hash that names a full block and, through its parent's, the whole prefix
/// before it: XXH3-128 over the parent's hash (16 bytes, little-endian) followed by the
/// block's token ids (4 bytes each, little-endian), then the content hash (16 bytes,
/// little-endian) of each media item whose tokens overlap the block, in token order (none for
/// text). The algorithm and byte order are fixed, so a prefix has the same hash in every
/// process and build of weft, which KV transfer between workers and a KV cache kept on disk
/// rely on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u128);

impl BlockHash {
    /// The parent of a sequence's first block.
    pub const ROOT: BlockHash = BlockHash(0);

    /// The hash of a block holding `tokens` after the prefix named by `parent`.
    pub fn chain(parent: BlockHash, tokens: &[u32]) -> BlockHash {
        Self::chain_with_media(parent, tokens, std::iter::empty())
    }

    /// The hash of a block holding `tokens`, some of which stand for the media of `media`.
    pub fn chain_with_media(
        parent: BlockHash,
        tokens: &[u32],
        media: impl Iterator<Item = u128>,
    ) -> BlockHash {
        let mut h = Xxh3Default::new();
        h.update(&parent.0.to_le_bytes());
        for t in tokens {
            h.update(&t.to_le_bytes());
        }
        for m in media {
            h.update(&m.to_le_bytes());
        }
        BlockHash(h.digest128())
    }

    /// The key of block `index` of a sequence, holding `tokens`, after `parent`.
    fn of_block(parent: BlockHash, index: usize, tokens: &[u32], media: &[MediaSpan]) -> BlockHash {
        let range = index * BLOCK_SIZE..(index + 1) * BLOCK_SIZE;
        let overlapping = media
            .iter()
            .filter(move |m| m.start < range.end && m.start + m.len > range.start)
            .map(|m| m.hash);
        Self::chain_with_media(parent, tokens, overlapping)
    }
}

/// Prompt tokens `start..start + len` stand for a media item (their embeddings come from its
/// encoder, not from the token ids) whose content hash is `hash`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaSpan {
    pub start: usize,
    pub len: usize,
    pub hash: u128,
    /// Its tokens attend to each other both ways (Gemma 3's images), so they are computed in
    /// one chunk.
    pub bidirectional: bool,
}

impl MediaSpan {
    /// Its tokens' sequence indices.
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }
}

/// The blocks one sequence holds, in order, and the keys of its leading full blocks.
#[derive(Debug, Default, Clone)]
pub struct SeqBlocks {
    table: Vec<u32>,
    /// Keys of `table[..keys.len()]` (full blocks whose contents are committed).
    keys: Vec<BlockHash>,
}

impl SeqBlocks {
    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// Tokens the held blocks can store.
    pub fn capacity(&self) -> usize {
        self.table.len() * BLOCK_SIZE
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct BlockState {
    refs: u32,
    key: Option<BlockHash>,
    /// Position in the eviction order while free and cached.
    freed_at: u64,
}

/// Prefix-cache lookups since start: tokens asked for and tokens found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    pub queried_tokens: u64,
    pub hit_tokens: u64,
}

/// The block pool of one KV cache.
pub struct BlockManager {
    blocks: Vec<BlockState>,
    /// Free blocks without a key (taken first).
    empty: Vec<u32>,
    /// Free blocks with a key, by the time they were freed (oldest evicted first).
    evictable: BTreeMap<u64, u32>,
    /// Key -> block holding that prefix, with the block's tokens to rule out hash collisions.
    cached: HashMap<BlockHash, (u32, [u32; BLOCK_SIZE])>,
    clock: u64,
    prefix_caching: bool,
    stats: PrefixStats,
}

impl BlockManager {
    pub fn new(n_blocks: usize, prefix_caching: bool) -> BlockManager {
        BlockManager {
            blocks: vec![BlockState::default(); n_blocks],
            // Reversed so that blocks are handed out in ascending order.
            empty: (0..n_blocks as u32).rev().collect(),
            evictable: BTreeMap::new(),
            cached: HashMap::new(),
            clock: 0,
            prefix_caching,
            stats: PrefixStats::default(),
        }
    }

    pub fn total_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks an allocation can take (empty plus evictable cached ones).
    pub fn free_blocks(&self) -> usize {
        self.empty.len() + self.evictable.len()
    }

    /// Blocks held by at least one sequence.
    pub fn used_blocks(&self) -> usize {
        self.total_blocks() - self.free_blocks()
    }

    /// Blocks that hold a findable prefix (in use or free).
    pub fn cached_blocks(&self) -> usize {
        self.cached.len()
    }

    pub fn prefix_stats(&self) -> PrefixStats {
        self.stats
    }

    /// Attaches the longest cached prefix of `tokens` (with `media` in them) to an empty `seq`
    /// and returns how many tokens it covers. The last token is never covered: its logits
    /// must be computed.
    pub fn match_prefix(
        &mut self,
        seq: &mut SeqBlocks,
        tokens: &[u32],
        media: &[MediaSpan],
    ) -> usize {
        debug_assert!(
            seq.table.is_empty(),
            "match_prefix on a sequence holding blocks"
        );
        self.stats.queried_tokens += tokens.len() as u64;
        if !self.prefix_caching {
            return 0;
        }
        let full = tokens.len().saturating_sub(1) / BLOCK_SIZE;
        let mut parent = BlockHash::ROOT;
        for (i, chunk) in tokens.chunks_exact(BLOCK_SIZE).take(full).enumerate() {
            let key = BlockHash::of_block(parent, i, chunk, media);
            let Some(&(block, ref held)) = self.cached.get(&key) else {
                break;
            };
            if held[..] != chunk[..] {
                break;
            }
            self.take(block);
            seq.table.push(block);
            seq.keys.push(key);
            parent = key;
        }
        let hit = seq.table.len() * BLOCK_SIZE;
        self.stats.hit_tokens += hit as u64;
        hit
    }

    /// Grows `seq` until it can store `tokens` tokens; false (and `seq` unchanged) when there
    /// are not enough free blocks.
    pub fn allocate(&mut self, seq: &mut SeqBlocks, tokens: usize) -> bool {
        let need = tokens.div_ceil(BLOCK_SIZE).saturating_sub(seq.table.len());
        if need > self.free_blocks() {
            return false;
        }
        for _ in 0..need {
            let block = match self.empty.pop() {
                Some(b) => b,
                None => {
                    let (_, b) = self.evictable.pop_first().expect("counted above");
                    let key = self.blocks[b as usize].key.take().expect("cached block");
                    self.cached.remove(&key);
                    b
                }
            };
            self.blocks[block as usize].refs = 1;
            seq.table.push(block);
        }
        true
    }

    /// Makes the full blocks among the first `computed` tokens of `seq` findable by later
    /// sequences. `tokens` holds at least `computed` tokens of the sequence, with `media` in
    /// them.
    pub fn commit(
        &mut self,
        seq: &mut SeqBlocks,
        tokens: &[u32],
        media: &[MediaSpan],
        computed: usize,
    ) {
        if !self.prefix_caching {
            return;
        }
        let full = (computed / BLOCK_SIZE).min(seq.table.len());
        while seq.keys.len() < full {
            let i = seq.keys.len();
            let parent = seq.keys.last().copied().unwrap_or(BlockHash::ROOT);
            let chunk = &tokens[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE];
            let key = BlockHash::of_block(parent, i, chunk, media);
            let block = seq.table[i];
            // The first block to hold a prefix stays its cached copy; a duplicate computed
            // concurrently is simply freed as an empty block later.
            if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(key) {
                let mut held = [0u32; BLOCK_SIZE];
                held.copy_from_slice(chunk);
                e.insert((block, held));
                self.blocks[block as usize].key = Some(key);
            }
            seq.keys.push(key);
        }
    }

    /// Lets go of the blocks of `seq` beyond the first `tokens` tokens (all of them for 0)
    /// and returns how many tokens it still holds. That is `tokens`, or fewer when the block
    /// that would be cut in two holds a cached prefix: it may be shared and must not be
    /// written again, so it goes too. The last blocks are released first so that they are
    /// also evicted first.
    pub fn truncate(&mut self, seq: &mut SeqBlocks, tokens: usize) -> usize {
        let mut kept = tokens.min(seq.capacity());
        if !kept.is_multiple_of(BLOCK_SIZE) && seq.keys.len() > kept / BLOCK_SIZE {
            kept -= kept % BLOCK_SIZE;
        }
        let keep = kept.div_ceil(BLOCK_SIZE);
        while seq.table.len() > keep {
            let block = seq.table.pop().expect("len > keep");
            self.release(block);
        }
        seq.keys.truncate(keep);
        kept
    }

    /// Lets go of every block of `seq`.
    pub fn free(&mut self, seq: &mut SeqBlocks) {
        self.truncate(seq, 0);
    }

    fn take(&mut self, block: u32) {
        let state = &mut self.blocks[block as usize];
        if state.refs == 0 {
            self.evictable.remove(&state.freed_at);
        }
        state.refs += 1;
    }

    fn release(&mut self, block: u32) {
        let state = &mut self.blocks[block as usize];
        state.refs -= 1;
        if state.refs > 0 {
            return;
        }
        if state.key.is_some() {
            self.clock += 1;
            state.freed_at = self.clock;
            self.evictable.insert(self.clock, block);
        } else {
            self.empty.push(block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Block hashes are a format, not an implementation detail: these values come from the
    /// Python `xxhash` package (`xxh3_128_intdigest` of the same bytes) and must never change.
    #[test]
    fn block_hashes_match_xxh3_128_of_the_documented_bytes() {
        let tokens: Vec<u32> = (1..=16).collect();
        let first = BlockHash::chain(BlockHash::ROOT, &tokens);
        assert_eq!(first, BlockHash(0xa2cb463757413304e4a9852f2e6f0836));
        let later: Vec<u32> = tokens.iter().map(|t| t * 1000).collect();
        assert_eq!(
            BlockHash::chain(first, &later),
            BlockHash(0xa90e4b4b53492e421b3fa10b4daa92e4)
        );
    }

    fn toks(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 + salt).collect()
    }

    #[test]
    fn allocate_and_free_balance() {
        let mut m = BlockManager::new(4, true);
        let mut s = SeqBlocks::default();
        assert!(m.allocate(&mut s, 33));
        assert_eq!(s.table(), &[0, 1, 2]);
        assert!(!m.allocate(&mut s, 80));
        assert_eq!(s.table().len(), 3);
        assert_eq!(m.truncate(&mut s, 16), 16);
        assert_eq!((s.table().len(), m.free_blocks()), (1, 3));
        m.free(&mut s);
        assert_eq!(m.free_blocks(), 4);
    }

    #[test]
    fn shared_prefix_is_reused_but_never_the_last_token() {
        let mut m = BlockManager::new(8, true);
        let prompt = toks(40, 1);
        let mut a = SeqBlocks::default();
        assert_eq!(m.match_prefix(&mut a, &prompt, &[]), 0);
        assert!(m.allocate(&mut a, prompt.len()));
        m.commit(&mut a, &prompt, &[], prompt.len());
        assert_eq!(m.cached_blocks(), 2);

        // Same first 32 tokens, different tail: two blocks shared while `a` still holds them.
        let mut other = prompt[..32].to_vec();
        other.extend(toks(5, 1000));
        let mut b = SeqBlocks::default();
        assert_eq!(m.match_prefix(&mut b, &other, &[]), 32);
        assert_eq!(&b.table()[..2], &a.table()[..2]);
        assert_eq!(m.used_blocks(), 3);

        // Exactly 32 tokens: the second block holds the last token, so only one is reused.
        let mut c = SeqBlocks::default();
        assert_eq!(m.match_prefix(&mut c, &prompt[..32], &[]), 16);
        assert_eq!(
            m.prefix_stats(),
            PrefixStats {
                queried_tokens: 40 + 37 + 32,
                hit_tokens: 48
            }
        );
    }

    #[test]
    fn a_different_first_block_changes_every_key() {
        let mut m = BlockManager::new(8, true);
        let p = toks(48, 1);
        let mut a = SeqBlocks::default();
        assert!(m.allocate(&mut a, 48));
        m.commit(&mut a, &p, &[], 48);
        let mut q = p.clone();
        q[0] += 1;
        let mut b = SeqBlocks::default();
        assert_eq!(m.match_prefix(&mut b, &q, &[]), 0);
    }

    #[test]
    fn freed_cached_blocks_survive_until_evicted_oldest_first() {
        let mut m = BlockManager::new(4, true);
        let (p1, p2) = (toks(17, 1), toks(17, 500));
        for p in [&p1, &p2] {
            let mut s = SeqBlocks::default();
            assert!(m.allocate(&mut s, p.len()));
            m.commit(&mut s, p, &[], p.len());
            m.free(&mut s);
        }
        // Both full blocks are cached and free; the partial blocks went back as empty.
        assert_eq!(
            (m.cached_blocks(), m.free_blocks(), m.used_blocks()),
            (2, 4, 0)
        );

        // Taking three blocks uses the two empty ones, then evicts p1's (freed first).
        let mut s = SeqBlocks::default();
        assert!(m.allocate(&mut s, 48));
        assert_eq!(m.cached_blocks(), 1);
        m.free(&mut s);
        let mut probe = SeqBlocks::default();
        assert_eq!(m.match_prefix(&mut probe, &p1, &[]), 0);
        assert_eq!(m.match_prefix(&mut probe, &p2, &[]), 16);
    }

    #[test]
    fn a_reused_block_leaves_the_eviction_order() {
        let mut m = BlockManager::new(2, true);
        let p = toks(17, 3);
        let mut a = SeqBlocks::default();
        assert!(m.allocate(&mut a, 17));
        m.commit(&mut a, &p, &[], 17);
        m.free(&mut a);
        let mut b = SeqBlocks::default();
        assert_eq!(m.match_prefix(&mut b, &p, &[]), 16);
        // One block left: the shared one is held, so it cannot be evicted.
        let mut c = SeqBlocks::default();
        assert!(!m.allocate(&mut c, 32));
        assert!(m.allocate(&mut c, 16));
        assert_eq!(m.cached_blocks(), 1);
    }

    #[test]
    fn truncating_inside_a_cached_block_drops_it() {
        let mut m = BlockManager::new(4, true);
        let p = toks(40, 1);
        let mut a = SeqBlocks::default();
        assert!(m.allocate(&mut a, 40));
        m.commit(&mut a, &p, &[], 40);
        assert_eq!(m.truncate(&mut a, 20), 16);
        assert_eq!(a.table().len(), 1);
        // Inside the uncached partial block a cut keeps what was asked.
        assert!(m.allocate(&mut a, 40));
        assert_eq!(m.truncate(&mut a, 36), 36);
    }

    #[test]
    fn switched_off_finds_nothing() {
        let mut m = BlockManager::new(4, false);
        let p = toks(40, 1);
        let mut a = SeqBlocks::default();
        assert!(m.allocate(&mut a, 40));
        m.commit(&mut a, &p, &[], 40);
        m.free(&mut a);
        let mut b = SeqBlocks::default();
        assert_eq!(m.match_prefix(&mut b, &p, &[]), 0);
        assert_eq!(m.cached_blocks(), 0);
    }

    /// The same placeholder tokens with different media never share a block; with the same
    /// media they do, and blocks without media keep their text-only keys.
    #[test]
    fn media_hashes_are_part_of_the_keys() {
        let mut m = BlockManager::new(16, true);
        let p = toks(50, 0);
        let image = |hash| {
            [MediaSpan {
                start: 20,
                len: 8,
                hash,
                bidirectional: false,
            }]
        };
        let mut a = SeqBlocks::default();
        assert!(m.allocate(&mut a, p.len()));
        m.commit(&mut a, &p, &image(1), p.len());
        // Block 0 holds text only: its key is the text key.
        assert_eq!(a.keys[0], BlockHash::chain(BlockHash::ROOT, &p[..16]));
        assert_ne!(a.keys[1], BlockHash::chain(a.keys[0], &p[16..32]));

        let mut b = SeqBlocks::default();
        assert_eq!(m.match_prefix(&mut b, &p, &image(2)), 16);
        m.free(&mut b);
        let mut c = SeqBlocks::default();
        assert_eq!(m.match_prefix(&mut c, &p, &image(1)), 48);
        m.free(&mut c);
        let mut d = SeqBlocks::default();
        assert_eq!(m.match_prefix(&mut d, &p, &[]), 16);
    }
}
