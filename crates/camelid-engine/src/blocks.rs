//! The KV block pool's bookkeeping (no tensors here): fixed-size blocks with reference
//! counts, the prefix cache that names every full block by its whole prefix, and LRU
//! eviction of cached blocks no sequence holds. The tensors live in `PagedKv` (paged.rs).
//!
//! A cached block is found by a 64-bit chain hash (parent hash, the request's cache salt for
//! a first block, the block's tokens) but matched only on equality: its tokens, its salt or
//! its parent's cache entry must all be the prefix asked for, so a hash collision can cost a
//! cache hit, never give a sequence another prefix's keys and values. The salt (vLLM's
//! `cache_salt`) keeps one client's prefixes from another's.
//!
//! Each entry also records how many of its positions were prompt when computed: prompt
//! positions and generated ones take kernels that round differently
//! (`camelid_kernels::attention`). A sequence's generated positions (a preempted sequence's
//! answer, computed again) reuse only blocks whose positions had the same roles: they never
//! read keys and values the prompt kernel computed for them. A prompt's blocks reuse either:
//! a chat's next turn takes back the previous answer's blocks instead of computing it again
//! (and what that prompt's answer attends to then depends on what is cached).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

pub type BlockId = u32;

/// Names one registration in the prefix cache; never reused, so a child registered under an
/// entry that was evicted since matches nothing.
pub type EntryId = u64;

/// The chain hash of a block: `(parent hash, salt, tokens) -> hash`; the salt is given for a
/// first block only (later blocks carry it through their parent).
pub type ChainHasher = Box<dyn Fn(Option<u64>, Option<&str>, &[u32]) -> u64 + Send + Sync>;

/// What a sequence knows about one of its full blocks in the prefix cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixLink {
    /// Chain hash of the prefix through this block.
    pub hash: u64,
    /// The cache entry holding exactly this prefix (this block's own or an identical block's);
    /// `None` when there is none, and then no block after it is cached either.
    pub entry: Option<EntryId>,
}

/// What comes before a cached block.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Parent {
    /// The block starts the prompt: the request's cache salt.
    Start(Option<Arc<str>>),
    /// The cache entry of the block before.
    Entry(EntryId),
}

/// A full block's place in the prefix cache: exactly the prefix its keys and values hold.
#[derive(Debug, Clone)]
struct Entry {
    id: EntryId,
    hash: u64,
    parent: Parent,
    tokens: Box<[u32]>,
    /// Its leading positions that were prompt ([`prompt_part`]).
    prompt: u32,
}

/// How many of block `i`'s positions are prompt in a sequence whose prompt is `prompt_len`
/// tokens long (`block_size`: all of them).
pub fn prompt_part(block_size: usize, prompt_len: usize, i: usize) -> u32 {
    prompt_len.saturating_sub(i * block_size).min(block_size) as u32
}

/// Whether a block computed with `cached` prompt positions may serve one wanted with
/// `wanted` ([`prompt_part`]): any, for a block of prompt only; else only the same roles.
pub fn roles_reuse(block_size: usize, wanted: u32, cached: u32) -> bool {
    wanted as usize >= block_size || cached == wanted
}

#[derive(Debug, Clone, Default)]
struct Block {
    refs: u32,
    /// Set once the block is full and registered in the prefix cache.
    entry: Option<Entry>,
    /// The stamp of its place in `evictable` while it waits there, else 0.
    queued: u64,
}

pub struct BlockPool {
    pub block_size: usize,
    blocks: Vec<Block>,
    /// Blocks holding nothing reusable.
    free: Vec<BlockId>,
    /// Cached blocks with no holder, oldest release first, each with the stamp of its release:
    /// an entry whose block was taken up again since (its `queued` stamp differs) is stale
    /// and skipped, so taking a block up is O(1) (a prompt hitting 2 000 cached blocks of a
    /// large pool scanned the whole queue for each), not a search of the queue.
    evictable: VecDeque<(BlockId, u64)>,
    /// Live entries of `evictable`.
    evictable_len: usize,
    next_stamp: u64,
    /// Chain hash → the cached blocks under it (more than one only after a collision).
    cache: HashMap<u64, Vec<BlockId>>,
    hasher: ChainHasher,
    next_entry: EntryId,
    pub hits: u64,
    pub lookups: u64,
}

impl std::fmt::Debug for BlockPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockPool")
            .field("block_size", &self.block_size)
            .field("blocks", &self.blocks.len())
            .field("free", &self.free.len())
            .field("evictable", &self.evictable_len)
            .field("cached", &self.cache.len())
            .finish()
    }
}

/// SipHash under keys drawn per pool: no client can aim two prompts at one hash (vLLM seeds
/// its chain at random for the same reason).
fn keyed_sip_hasher() -> ChainHasher {
    let keys = RandomState::new();
    Box::new(move |parent, salt, tokens| {
        let mut h = keys.build_hasher();
        match parent {
            Some(p) => {
                h.write_u8(1);
                h.write_u64(p);
            }
            None => h.write_u8(0),
        }
        match salt {
            Some(s) => {
                h.write_u8(1);
                h.write_usize(s.len());
                h.write(s.as_bytes());
            }
            None => h.write_u8(0),
        }
        for &t in tokens {
            h.write_u32(t);
        }
        h.finish()
    })
}

impl BlockPool {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        Self::with_hasher(num_blocks, block_size, keyed_sip_hasher())
    }

    /// A pool whose chain hashes come from `hasher` (tests force collisions with it).
    pub fn with_hasher(num_blocks: usize, block_size: usize, hasher: ChainHasher) -> Self {
        Self {
            block_size,
            blocks: vec![Block::default(); num_blocks],
            free: (0..num_blocks as BlockId).rev().collect(),
            evictable: VecDeque::new(),
            evictable_len: 0,
            next_stamp: 1,
            cache: HashMap::new(),
            hasher,
            next_entry: 0,
            hits: 0,
            lookups: 0,
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks held by at least one sequence.
    pub fn used(&self) -> usize {
        // A block no sequence holds is free or waits in `evictable`.
        self.blocks.len() - self.available()
    }

    /// Blocks that `allocate` can still hand out.
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable_len
    }

    pub fn refs(&self, b: BlockId) -> u32 {
        self.blocks[b as usize].refs
    }

    /// The chain hash of a block after `parent` (`salt`: a first block's cache salt).
    pub fn chain_hash(&self, parent: Option<u64>, salt: Option<&str>, tokens: &[u32]) -> u64 {
        (self.hasher)(parent, if parent.is_none() { salt } else { None }, tokens)
    }

    /// Chain hashes of the full blocks of `tokens` that a prefix lookup could reuse (all but a
    /// block holding the last token).
    pub fn prefix_hashes(&self, tokens: &[u32], salt: Option<&str>) -> Vec<u64> {
        let bs = self.block_size.max(1);
        let usable = tokens.len().saturating_sub(1) / bs;
        let mut out: Vec<u64> = Vec::with_capacity(usable);
        for chunk in tokens.chunks(bs).take(usable) {
            out.push(self.chain_hash(out.last().copied(), salt, chunk));
        }
        out
    }

    /// A block for new K/V: a free one, else the least recently used cached one.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let id = loop {
                    let (id, stamp) = self.evictable.pop_front()?;
                    let blk = &mut self.blocks[id as usize];
                    if blk.queued == stamp {
                        blk.queued = 0;
                        self.evictable_len -= 1;
                        break id;
                    }
                };
                if let Some(e) = self.blocks[id as usize].entry.take() {
                    self.uncache(e.hash, id);
                }
                id
            }
        };
        self.blocks[id as usize].refs = 1;
        Some(id)
    }

    fn uncache(&mut self, hash: u64, b: BlockId) {
        if let Some(bucket) = self.cache.get_mut(&hash) {
            bucket.retain(|&x| x != b);
            if bucket.is_empty() {
                self.cache.remove(&hash);
            }
        }
    }

    /// Another holder of `b` (n>1 choices sharing a prompt).
    pub fn share(&mut self, b: BlockId) {
        let blk = &mut self.blocks[b as usize];
        if blk.refs == 0 && blk.queued != 0 {
            // Its place in `evictable` goes stale.
            blk.queued = 0;
            self.evictable_len -= 1;
        }
        blk.refs += 1;
    }

    pub fn release(&mut self, b: BlockId) {
        let blk = &mut self.blocks[b as usize];
        assert!(blk.refs > 0, "block {b} released more often than held");
        blk.refs -= 1;
        if blk.refs == 0 {
            if blk.entry.is_some() {
                blk.queued = self.next_stamp;
                self.evictable.push_back((b, self.next_stamp));
                self.next_stamp += 1;
                self.evictable_len += 1;
                // Stale entries pile up where cached blocks are taken up and released again
                // without evictions: drop them once they outnumber the pool (amortised O(1)).
                if self.evictable.len() > 2 * self.blocks.len() + 64 {
                    let blocks = &self.blocks;
                    self.evictable
                        .retain(|&(x, stamp)| blocks[x as usize].queued == stamp);
                }
            } else {
                self.free.push(b);
            }
        }
    }

    /// What must come before a block under `parent` (`None`: it starts the prompt), or
    /// `None` when that prefix has no cache entry to name it.
    fn parent_of(parent: Option<&PrefixLink>, salt: Option<&Arc<str>>) -> Option<Parent> {
        match parent {
            None => Some(Parent::Start(salt.cloned())),
            Some(l) => l.entry.map(Parent::Entry),
        }
    }

    /// The cached block holding exactly `tokens` after `parent` whose count of prompt
    /// positions `roles` accepts, if any.
    fn find(
        &self,
        hash: u64,
        parent: &Parent,
        tokens: &[u32],
        roles: impl Fn(u32) -> bool,
    ) -> Option<(BlockId, EntryId)> {
        self.cache.get(&hash)?.iter().find_map(|&b| {
            let e = self.blocks[b as usize].entry.as_ref()?;
            (e.parent == *parent && *e.tokens == *tokens && roles(e.prompt)).then_some((b, e.id))
        })
    }

    /// Which cached blocks may serve a block whose first `prompt` positions are prompt
    /// ([`roles_reuse`]).
    fn reusable(&self, prompt: u32) -> impl Fn(u32) -> bool {
        let bs = self.block_size;
        move |cached| roles_reuse(bs, prompt, cached)
    }

    /// Registers the full block `b` (holding `tokens` after the prefix `parent` names, under
    /// cache salt `salt`, its first `prompt` positions computed as prompt) so that later
    /// sequences can reuse it; returns its link. A block whose prefix is cached already stays
    /// private and links to the cached one.
    pub fn register(
        &mut self,
        b: BlockId,
        parent: Option<&PrefixLink>,
        salt: Option<&Arc<str>>,
        tokens: &[u32],
        prompt: u32,
    ) -> PrefixLink {
        let hash = self.chain_hash(parent.map(|p| p.hash), salt.map(|s| &**s), tokens);
        let Some(parent) = Self::parent_of(parent, salt) else {
            return PrefixLink { hash, entry: None };
        };
        // As a lookup would: a block of prompt alone links to an entry of any roles (no
        // second entry beside it to split the chain), one holding generated positions only
        // to one of the same roles.
        if let Some((_, id)) = self.find(hash, &parent, tokens, self.reusable(prompt)) {
            return PrefixLink {
                hash,
                entry: Some(id),
            };
        }
        let id = self.next_entry;
        self.next_entry += 1;
        let blk = &mut self.blocks[b as usize];
        if let Some(old) = blk.entry.take() {
            self.uncache(old.hash, b); // registered twice: the newer prefix names it
        }
        self.blocks[b as usize].entry = Some(Entry {
            id,
            hash,
            parent,
            tokens: tokens.into(),
            prompt,
        });
        self.cache.entry(hash).or_default().push(b);
        PrefixLink {
            hash,
            entry: Some(id),
        }
    }

    /// The cached blocks covering the longest prefix of `tokens` (the first `prompt_len` of
    /// them prompt) under cache salt `salt` (full blocks only, and never the whole prompt:
    /// the last token must be computed to get logits). The caller holds a reference to each
    /// returned block.
    pub fn lookup_prefix(
        &mut self,
        tokens: &[u32],
        salt: Option<&Arc<str>>,
        prompt_len: usize,
    ) -> (Vec<BlockId>, Vec<PrefixLink>) {
        self.lookups += 1;
        let (ids, links) = self.extend_prefix(tokens, salt, &[], prompt_len);
        if !ids.is_empty() {
            self.hits += 1;
        }
        (ids, links)
    }

    /// The cached blocks that continue a prefix already held (`held`: the links of its
    /// leading full blocks) along `tokens`, under the same rules as [`Self::lookup_prefix`].
    /// A sequence that waited while another one computed the blocks they share picks them up
    /// this way. The caller holds a reference to each returned block.
    pub fn extend_prefix(
        &mut self,
        tokens: &[u32],
        salt: Option<&Arc<str>>,
        held: &[PrefixLink],
        prompt_len: usize,
    ) -> (Vec<BlockId>, Vec<PrefixLink>) {
        let bs = self.block_size;
        let usable = tokens.len().saturating_sub(1) / bs;
        let (mut ids, mut links) = (vec![], vec![]);
        let mut last = held.last().copied();
        for i in held.len()..usable {
            let block = &tokens[i * bs..(i + 1) * bs];
            let Some(parent) = Self::parent_of(last.as_ref(), salt) else {
                break;
            };
            let roles = self.reusable(prompt_part(bs, prompt_len, i));
            let hash = self.chain_hash(last.map(|l| l.hash), salt.map(|s| &**s), block);
            let Some((b, id)) = self.find(hash, &parent, block, roles) else {
                break;
            };
            self.share(b);
            let link = PrefixLink {
                hash,
                entry: Some(id),
            };
            ids.push(b);
            links.push(link);
            last = Some(link);
        }
        (ids, links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every block hashes alike: whatever matches, matches on equality alone.
    fn colliding() -> ChainHasher {
        Box::new(|_, _, _| 7)
    }

    fn salt(s: &str) -> Option<Arc<str>> {
        Some(Arc::from(s))
    }

    /// Allocates and registers the full blocks of `tokens` as one sequence would; returns
    /// their ids and links.
    fn fill(
        p: &mut BlockPool,
        tokens: &[u32],
        salt: Option<&Arc<str>>,
    ) -> (Vec<BlockId>, Vec<PrefixLink>) {
        let (mut ids, mut links) = (vec![], vec![]);
        for chunk in tokens.chunks_exact(p.block_size) {
            let b = p.allocate().unwrap();
            let link = p.register(b, links.last(), salt, chunk, p.block_size as u32);
            ids.push(b);
            links.push(link);
        }
        (ids, links)
    }

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
    fn hash_chain_names_whole_prefix_and_salt() {
        let p = BlockPool::new(1, 4);
        let h1 = p.chain_hash(None, None, &[1, 2, 3, 4]);
        let h2 = p.chain_hash(Some(h1), None, &[5, 6, 7, 8]);
        let other_parent = p.chain_hash(None, None, &[9, 2, 3, 4]);
        assert_ne!(h2, p.chain_hash(Some(other_parent), None, &[5, 6, 7, 8]));
        assert_eq!(
            h2,
            p.chain_hash(
                Some(p.chain_hash(None, None, &[1, 2, 3, 4])),
                None,
                &[5, 6, 7, 8]
            )
        );
        // A salt changes the first block's hash, and through it every later one.
        let salted = p.chain_hash(None, Some("a"), &[1, 2, 3, 4]);
        assert_ne!(salted, h1);
        assert_ne!(salted, p.chain_hash(None, Some("b"), &[1, 2, 3, 4]));
        assert_eq!(p.prefix_hashes(&[1, 2, 3, 4, 5], Some("a")), vec![salted]);
        // Each pool draws its own keys: a hash says nothing outside its pool.
        let q = BlockPool::new(1, 4);
        assert_ne!(h1, q.chain_hash(None, None, &[1, 2, 3, 4]));
    }

    #[test]
    fn prefix_lookup_reuses_full_blocks_and_never_the_last_token() {
        let mut p = BlockPool::new(8, 2);
        let toks = [10, 11, 12, 13, 14];
        // A first sequence fills and registers two full blocks.
        let (held, _) = fill(&mut p, &toks[..4], None);
        let (ids, _) = p.lookup_prefix(&toks, None, usize::MAX);
        assert_eq!(ids, held);
        assert_eq!(p.refs(held[0]), 2);
        // Exactly four tokens: only the first block may be reused (the last token is computed).
        let (ids4, _) = p.lookup_prefix(&toks[..4], None, usize::MAX);
        assert_eq!(ids4, vec![held[0]]);
        // A different first block breaks the chain at once.
        let (none, _) = p.lookup_prefix(&[99, 11, 12, 13, 14], None, usize::MAX);
        assert!(none.is_empty());
        assert_eq!((p.hits, p.lookups), (2, 3));
    }

    #[test]
    fn a_held_prefix_extends_with_blocks_cached_since() {
        let mut p = BlockPool::new(8, 2);
        let toks = [10, 11, 12, 13, 14, 15, 16];
        let hashes = p.prefix_hashes(&toks, None);
        assert_eq!(hashes.len(), 3);
        assert_eq!(hashes[1], p.chain_hash(Some(hashes[0]), None, &[12, 13]));
        // A leader registers its first block; a follower finds it.
        let (lead, lead_links) = fill(&mut p, &toks[..2], None);
        let (ids, got) = p.lookup_prefix(&toks, None, usize::MAX);
        assert_eq!(ids, lead);
        assert_eq!(got, lead_links);
        assert_eq!(got[0].hash, hashes[0]);
        // Later the leader registers two more: the follower extends from what it holds, and
        // never takes the block of the last token.
        let (b1, b2) = (p.allocate().unwrap(), p.allocate().unwrap());
        let l1 = p.register(b1, lead_links.last(), None, &toks[2..4], 2);
        let l2 = p.register(b2, Some(&l1), None, &toks[4..6], 2);
        let (more, more_links) = p.extend_prefix(&toks, None, &got, usize::MAX);
        assert_eq!(more, vec![b1, b2]);
        assert_eq!(more_links, vec![l1, l2]);
        assert_eq!(
            more_links.iter().map(|l| l.hash).collect::<Vec<_>>(),
            hashes[1..].to_vec()
        );
        assert_eq!(p.refs(b1), 2);
        let (none, _) = p.extend_prefix(&toks[..6], None, &[got[0], l1], usize::MAX);
        assert!(none.is_empty(), "block 2 holds the last of six tokens");
    }

    #[test]
    fn unreferenced_cached_blocks_are_evicted_lru() {
        let mut p = BlockPool::new(2, 1);
        let (a, _) = fill(&mut p, &[1], None);
        let (b, _) = fill(&mut p, &[2], None);
        p.release(a[0]);
        p.release(b[0]);
        assert_eq!(p.available(), 2);
        // Reuse b: it leaves the evictable list; a is the one evicted next.
        let (got, _) = p.lookup_prefix(&[2, 0], None, usize::MAX);
        assert_eq!(got, b);
        let fresh = p.allocate().unwrap();
        assert_eq!(fresh, a[0]);
        assert!(
            p.lookup_prefix(&[1, 0], None, usize::MAX).0.is_empty(),
            "evicted block is no longer cached"
        );
        assert!(p.allocate().is_none(), "b is held");
    }

    /// A cached block taken up and released again goes to the back of the eviction order
    /// (its old place is stale and skipped), and the queue of stale places stays bounded
    /// however often a hot prefix is taken up and released without evictions.
    #[test]
    fn taken_up_blocks_requeue_at_the_back_and_stale_places_stay_bounded() {
        let mut p = BlockPool::new(4, 1);
        let ids: Vec<BlockId> = (1..=4).map(|t| fill(&mut p, &[t], None).0[0]).collect();
        for &b in &ids {
            p.release(b);
        }
        assert_eq!((p.available(), p.used()), (4, 0));
        // Block of token 2 taken up and released: now the newest.
        let (got, _) = p.lookup_prefix(&[2, 0], None, usize::MAX);
        assert_eq!(got, vec![ids[1]]);
        assert_eq!((p.available(), p.used()), (3, 1));
        p.release(ids[1]);
        let order: Vec<BlockId> = (0..4).map(|_| p.allocate().unwrap()).collect();
        assert_eq!(order, vec![ids[0], ids[2], ids[3], ids[1]]);
        assert!(p.allocate().is_none());
        assert_eq!((p.available(), p.used()), (0, 4));
        // A hot prefix taken up and released 10 000 times, nothing evicted meanwhile.
        let mut p = BlockPool::new(4, 1);
        let hot = fill(&mut p, &[9], None).0[0];
        p.release(hot);
        for _ in 0..10_000 {
            assert_eq!(p.lookup_prefix(&[9, 0], None, usize::MAX).0, vec![hot]);
            p.release(hot);
        }
        assert!(p.evictable.len() <= 2 * 4 + 64 + 1, "{}", p.evictable.len());
        assert_eq!((p.available(), p.used()), (4, 0));
        // Still cached and still the one evicted last.
        let order: Vec<BlockId> = (0..4).map(|_| p.allocate().unwrap()).collect();
        assert_eq!(order[3], hot);
    }

    /// With every hash equal, a block is shared only with a sequence whose whole prefix
    /// (salt, every earlier block, its own tokens) is the block's.
    #[test]
    fn a_hash_collision_never_shares_a_block() {
        let mut p = BlockPool::with_hasher(16, 2, colliding());
        let (a, _) = fill(&mut p, &[1, 2, 5, 6], None);
        // Another first block, and the same second block after it: all four hash alike.
        let (b, _) = fill(&mut p, &[3, 4, 5, 6], None);
        assert!(a
            .iter()
            .chain(&b)
            .all(|x| p.blocks[*x as usize].entry.is_some()));
        assert_eq!(p.lookup_prefix(&[1, 2, 5, 6, 0], None, usize::MAX).0, a);
        assert_eq!(p.lookup_prefix(&[3, 4, 5, 6, 0], None, usize::MAX).0, b);
        assert_eq!(
            p.lookup_prefix(&[1, 2, 7, 8, 0], None, usize::MAX).0,
            a[..1]
        );
        assert!(p
            .lookup_prefix(&[9, 9, 5, 6, 0], None, usize::MAX)
            .0
            .is_empty());
        // Salts are compared too, not only hashed.
        assert!(p
            .lookup_prefix(&[1, 2, 5, 6, 0], salt("x").as_ref(), usize::MAX)
            .0
            .is_empty());
        // A third sequence computing prefix a again keeps its blocks private and links to a's.
        let (c, c_links) = fill(&mut p, &[1, 2, 5, 6], None);
        let (_, a_links) = p.lookup_prefix(&[1, 2, 5, 6, 0], None, usize::MAX);
        assert_eq!(c_links, a_links);
        assert!(c.iter().all(|x| p.blocks[*x as usize].entry.is_none()));
    }

    /// The same tokens under different salts share nothing; under the same salt they do.
    #[test]
    fn salts_partition_the_cache() {
        for mut p in [
            BlockPool::new(16, 2),
            BlockPool::with_hasher(16, 2, colliding()),
        ] {
            let toks = [1, 2, 3, 4, 5];
            let (alice, _) = fill(&mut p, &toks[..4], salt("alice").as_ref());
            assert!(p.lookup_prefix(&toks, None, usize::MAX).0.is_empty());
            assert!(p
                .lookup_prefix(&toks, salt("bob").as_ref(), usize::MAX)
                .0
                .is_empty());
            assert_eq!(
                p.lookup_prefix(&toks, salt("alice").as_ref(), usize::MAX).0,
                alice
            );
            let (plain, _) = fill(&mut p, &toks[..4], None);
            assert_eq!(p.lookup_prefix(&toks, None, usize::MAX).0, plain);
        }
    }

    /// A cached block names its parent's registration, not only its hash: once the parent
    /// is evicted and its block refilled, the child matches nothing, even when the new
    /// contents hash alike.
    #[test]
    fn children_of_an_evicted_block_match_nothing() {
        let mut p = BlockPool::with_hasher(2, 1, colliding());
        let (ab, _) = fill(&mut p, &[1, 2], None);
        p.release(ab[0]);
        p.release(ab[1]);
        assert_eq!(p.lookup_prefix(&[1, 2, 0], None, usize::MAX).0, ab);
        p.release(ab[0]);
        p.release(ab[1]);
        // The parent was released first, so it is evicted first; it now holds token 3.
        let x = p.allocate().unwrap();
        assert_eq!(x, ab[0]);
        p.register(x, None, None, &[3], 1);
        assert_eq!(p.lookup_prefix(&[3, 2, 0], None, usize::MAX).0, vec![x]);
    }

    /// A sequence's generated positions reuse only blocks computed with the same roles (the
    /// prompt and decode kernels round differently); a prompt's blocks reuse either.
    #[test]
    fn generated_positions_reuse_only_blocks_computed_as_generated() {
        let mut p = BlockPool::new(8, 2);
        // Prompt [1, 2, 3], answer [4, 5, 6]: blocks [1, 2] prompt, [3, 4] half, [5, 6]
        // generated.
        let toks = [1, 2, 3, 4, 5, 6, 0];
        let mut links: Vec<PrefixLink> = vec![];
        let mut ids = vec![];
        for (i, chunk) in toks[..6].chunks(2).enumerate() {
            let b = p.allocate().unwrap();
            links.push(p.register(b, links.last(), None, chunk, prompt_part(2, 3, i)));
            ids.push(b);
        }
        // The same sequence again (a recompute after preemption) finds all three; so does a
        // prompt of all six (a chat's next turn).
        assert_eq!(p.lookup_prefix(&toks, None, 3).0, ids);
        assert_eq!(p.lookup_prefix(&toks, None, usize::MAX).0, ids);
        // Whose prompt ends elsewhere finds the blocks of its own roles only.
        assert_eq!(p.lookup_prefix(&toks, None, 2).0, ids[..1]);
        // (A prompt of four takes the half block as prompt, as a next turn would.)
        assert_eq!(p.lookup_prefix(&toks, None, 4).0, ids);
        // A prompt's blocks do not serve an answer: [7, 8, 9, 10] as prompt, then as a
        // prompt [7, 8] answered with [9, 10].
        let other = [7, 8, 9, 10, 0];
        let (mut oids, mut olinks) = (vec![], vec![]);
        for chunk in other[..4].chunks(2) {
            let b = p.allocate().unwrap();
            olinks.push(p.register(b, olinks.last(), None, chunk, 2));
            oids.push(b);
        }
        assert_eq!(p.lookup_prefix(&other, None, usize::MAX).0, oids);
        assert_eq!(p.lookup_prefix(&other, None, 2).0, oids[..1]);
        // Computed as an answer, that block is cached beside the prompt's and found by both.
        let b = p.allocate().unwrap();
        let link = p.register(b, Some(&olinks[0]), None, &other[2..4], 0);
        assert_ne!(link.entry, olinks[1].entry);
        assert_eq!(p.lookup_prefix(&other, None, 2).0, vec![oids[0], b]);
        assert_eq!(p.lookup_prefix(&other, None, usize::MAX).0.len(), 2);
    }
}
