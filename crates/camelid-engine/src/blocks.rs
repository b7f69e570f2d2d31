//! The KV block pool's bookkeeping (no tensors here): fixed-size blocks with reference
//! counts, a hash chain that names every full block by its whole prefix, and LRU eviction of
//! cached blocks no sequence holds. The tensors live in `PagedKv` (paged.rs).

use std::collections::{HashMap, VecDeque};

pub type BlockId = u32;

#[derive(Debug, Clone, Default)]
struct Block {
    refs: u32,
    /// Set once the block is full and registered in the prefix cache.
    hash: Option<u64>,
    /// Tick of the last release, for LRU eviction.
    last_used: u64,
}

#[derive(Debug)]
pub struct BlockPool {
    pub block_size: usize,
    blocks: Vec<Block>,
    /// Blocks holding nothing reusable.
    free: Vec<BlockId>,
    /// Cached (hashed) blocks with no holder, oldest release first.
    evictable: VecDeque<BlockId>,
    cache: HashMap<u64, BlockId>,
    tick: u64,
    pub hits: u64,
    pub lookups: u64,
}

/// FNV-1a over the parent hash and the block's tokens: the hash of a block names its whole
/// prefix, so equal hashes mean equal token histories (up to 64-bit collisions).
pub fn chain_hash(parent: Option<u64>, tokens: &[u32]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    };
    for b in parent.unwrap_or(0x9e3779b97f4a7c15).to_le_bytes() {
        eat(b);
    }
    for t in tokens {
        for b in t.to_le_bytes() {
            eat(b);
        }
    }
    h
}

impl BlockPool {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        Self {
            block_size,
            blocks: vec![Block::default(); num_blocks],
            free: (0..num_blocks as BlockId).rev().collect(),
            evictable: VecDeque::new(),
            cache: HashMap::new(),
            tick: 0,
            hits: 0,
            lookups: 0,
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks held by at least one sequence.
    pub fn used(&self) -> usize {
        self.blocks.iter().filter(|b| b.refs > 0).count()
    }

    /// Blocks that `allocate` can still hand out.
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    pub fn refs(&self, b: BlockId) -> u32 {
        self.blocks[b as usize].refs
    }

    /// A block for new K/V: a free one, else the least recently used cached one.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let id = self.evictable.pop_front()?;
                if let Some(h) = self.blocks[id as usize].hash.take() {
                    self.cache.remove(&h);
                }
                id
            }
        };
        self.blocks[id as usize].refs = 1;
        Some(id)
    }

    /// Another holder of `b` (n>1 choices sharing a prompt).
    pub fn share(&mut self, b: BlockId) {
        let blk = &mut self.blocks[b as usize];
        if blk.refs == 0 {
            self.evictable.retain(|&x| x != b);
        }
        blk.refs += 1;
    }

    pub fn release(&mut self, b: BlockId) {
        self.tick += 1;
        let blk = &mut self.blocks[b as usize];
        assert!(blk.refs > 0, "block {b} released more often than held");
        blk.refs -= 1;
        if blk.refs == 0 {
            blk.last_used = self.tick;
            if blk.hash.is_some() {
                self.evictable.push_back(b);
            } else {
                self.free.push(b);
            }
        }
    }

    /// Registers a full block under its chain hash so later prompts can reuse it.
    pub fn register(&mut self, b: BlockId, hash: u64) {
        if self.cache.contains_key(&hash) {
            return; // an identical block is cached already; this one stays private
        }
        self.blocks[b as usize].hash = Some(hash);
        self.cache.insert(hash, b);
    }

    /// The cached blocks covering the longest prefix of `tokens` (full blocks only, and
    /// never the whole prompt: the last token must be computed to get logits). The caller
    /// holds a reference to each returned block.
    pub fn lookup_prefix(&mut self, tokens: &[u32]) -> (Vec<BlockId>, Vec<u64>) {
        self.lookups += 1;
        let (ids, hashes) = self.extend_prefix(tokens, &[]);
        if !ids.is_empty() {
            self.hits += 1;
        }
        (ids, hashes)
    }

    /// The cached blocks that continue a prefix already held (`held`: the chain hashes of
    /// its leading full blocks) along `tokens`, under the same rules as
    /// [`Self::lookup_prefix`]. A sequence that waited while another one computed the blocks
    /// they share picks them up this way. The caller holds a reference to each returned block.
    pub fn extend_prefix(&mut self, tokens: &[u32], held: &[u64]) -> (Vec<BlockId>, Vec<u64>) {
        let bs = self.block_size;
        let usable = tokens.len().saturating_sub(1) / bs;
        let (mut ids, mut hashes) = (vec![], vec![]);
        let mut parent = held.last().copied();
        for i in held.len()..usable {
            let h = chain_hash(parent, &tokens[i * bs..(i + 1) * bs]);
            match self.cache.get(&h) {
                Some(&b) => {
                    self.share(b);
                    ids.push(b);
                    hashes.push(h);
                    parent = Some(h);
                }
                None => break,
            }
        }
        (ids, hashes)
    }
}

/// Chain hashes of the full blocks of `tokens` that a prefix lookup could reuse (all but a
/// block holding the last token).
pub fn prefix_hashes(tokens: &[u32], block_size: usize) -> Vec<u64> {
    let usable = tokens.len().saturating_sub(1) / block_size.max(1);
    let mut out: Vec<u64> = Vec::with_capacity(usable);
    for chunk in tokens.chunks(block_size.max(1)).take(usable) {
        out.push(chain_hash(out.last().copied(), chunk));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_release_and_refcounts() {
        let mut p = BlockPool::new(3, 4);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        let c = p.allocate().unwrap();
        assert!(p.allocate().is_none());
        assert_eq!(p.used(), 3);
        p.share(a);
        p.release(a);
        assert_eq!(p.refs(a), 1);
        assert_eq!(p.available(), 0);
        p.release(a);
        p.release(b);
        p.release(c);
        assert_eq!((p.used(), p.available()), (0, 3));
    }

    #[test]
    fn hash_chain_names_whole_prefix() {
        let h1 = chain_hash(None, &[1, 2, 3, 4]);
        let h2 = chain_hash(Some(h1), &[5, 6, 7, 8]);
        let other_parent = chain_hash(None, &[9, 2, 3, 4]);
        assert_ne!(h2, chain_hash(Some(other_parent), &[5, 6, 7, 8]));
        assert_eq!(
            h2,
            chain_hash(Some(chain_hash(None, &[1, 2, 3, 4])), &[5, 6, 7, 8])
        );
    }

    #[test]
    fn prefix_lookup_reuses_full_blocks_and_never_the_last_token() {
        let mut p = BlockPool::new(8, 2);
        let toks = [10, 11, 12, 13, 14];
        // A first sequence fills and registers two full blocks.
        let (mut parent, mut held) = (None, vec![]);
        for chunk in toks.chunks(2).take(2) {
            let b = p.allocate().unwrap();
            let h = chain_hash(parent, chunk);
            p.register(b, h);
            parent = Some(h);
            held.push(b);
        }
        let (ids, _) = p.lookup_prefix(&toks);
        assert_eq!(ids, held);
        assert_eq!(p.refs(held[0]), 2);
        // Exactly four tokens: only the first block may be reused (the last token is computed).
        let (ids4, _) = p.lookup_prefix(&toks[..4]);
        assert_eq!(ids4, vec![held[0]]);
        // A different first block breaks the chain at once.
        let (none, _) = p.lookup_prefix(&[99, 11, 12, 13, 14]);
        assert!(none.is_empty());
        assert_eq!((p.hits, p.lookups), (2, 3));
    }

    #[test]
    fn a_held_prefix_extends_with_blocks_cached_since() {
        let mut p = BlockPool::new(8, 2);
        let toks = [10, 11, 12, 13, 14, 15, 16];
        let hashes = prefix_hashes(&toks, 2);
        assert_eq!(hashes.len(), 3);
        assert_eq!(hashes[1], chain_hash(Some(hashes[0]), &[12, 13]));
        // A leader registers its first block; a follower finds it.
        let first = p.allocate().unwrap();
        p.register(first, hashes[0]);
        let (ids, got) = p.lookup_prefix(&toks);
        assert_eq!((ids, got.clone()), (vec![first], vec![hashes[0]]));
        // Later the leader registers two more: the follower extends from what it holds, and
        // never takes the block of the last token.
        let (b1, b2) = (p.allocate().unwrap(), p.allocate().unwrap());
        p.register(b1, hashes[1]);
        p.register(b2, hashes[2]);
        let (more, more_h) = p.extend_prefix(&toks, &got);
        assert_eq!(more, vec![b1, b2]);
        assert_eq!(more_h, hashes[1..].to_vec());
        assert_eq!(p.refs(b1), 2);
        let (none, _) = p.extend_prefix(&toks[..6], &hashes[..2]);
        assert!(none.is_empty(), "block 2 holds the last of six tokens");
    }

    #[test]
    fn unreferenced_cached_blocks_are_evicted_lru() {
        let mut p = BlockPool::new(2, 1);
        let a = p.allocate().unwrap();
        p.register(a, chain_hash(None, &[1]));
        let b = p.allocate().unwrap();
        p.register(b, chain_hash(None, &[2]));
        p.release(a);
        p.release(b);
        assert_eq!(p.available(), 2);
        // Reuse b: it leaves the evictable list; a is the one evicted next.
        let (got, _) = p.lookup_prefix(&[2, 0]);
        assert_eq!(got, vec![b]);
        let fresh = p.allocate().unwrap();
        assert_eq!(fresh, a);
        assert!(
            p.lookup_prefix(&[1, 0]).0.is_empty(),
            "evicted block is no longer cached"
        );
        assert!(p.allocate().is_none(), "b is held");
    }
}
