//! Which tokens of which sequences the next forward pass evaluates.
//!
//! One rule (vLLM v1's): every sequence has `computed` tokens in the KV cache and `tokens`
//! known (prompt plus generated); each step hands out a budget of tokens, first to running
//! sequences in arrival order (a decode needs one, a prompt still being prefilled takes a
//! chunk), then to waiting sequences, which first pick up their longest cached prefix. A
//! sequence whose `computed` catches up with `tokens` gets a logits row and samples. When
//! blocks run out, the newest running sequence is preempted: its blocks are released (full
//! ones stay in the prefix cache) and it goes back to the head of the queue to be
//! recomputed.
//!
//! Media items (images) have a second budget: the encoder's. A chunk that reaches tokens of
//! an item whose rows are not there yet takes the item's length from the step's encoder
//! budget and lists it for encoding, or stops before the item when the budget is spent
//! (the first item of a step is always let in, so that any item can run). This bounds the
//! media tokens encoded per step, and decodes stay in every step; but an item is encoded
//! whole inside one step, so a large one delays that step (and every stream in it) by its
//! whole encoding time.
//!
//! A bidirectional item (Gemma 3's images: its tokens attend to each other both ways) is
//! never split between chunks, as vLLM's `disable_chunked_mm_input`: a chunk that would end
//! inside one stops before it, and one that starts inside it (at its start, or within it
//! after a prefix-cache hit, whose K/V were computed with the whole item) runs to its end even
//! past the step's token budget, which then counts as spent (it saturates at zero).

use std::collections::{HashMap, VecDeque};

use weft_models::batch::chunk_end;

use crate::blocks::{BlockManager, MediaSpan, SeqBlocks};

pub type SeqId = u64;

#[derive(Clone, Copy, Debug)]
pub struct SchedulerConfig {
    /// Most sequences in one step.
    pub max_num_seqs: usize,
    /// Token budget of one step.
    pub max_num_batched_tokens: usize,
    /// Media tokens the encoders may produce in one step.
    pub encoder_budget: usize,
}

/// The scheduler's view of one sequence.
#[derive(Debug)]
pub struct Sequence {
    pub id: SeqId,
    /// Prompt followed by the generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Leading tokens whose K/V are in the cache.
    pub computed: usize,
    /// Prompt tokens found in the prefix cache the first time it was scheduled.
    pub cached_prompt: Option<usize>,
    pub preemptions: usize,
    /// The prompt's media items, in token order.
    pub media: Vec<MediaSpan>,
    /// Whether each media item's rows are there (encoded, or found in the encoder cache).
    media_ready: Vec<bool>,
    blocks: SeqBlocks,
}

impl Sequence {
    pub fn new(id: SeqId, prompt: Vec<u32>) -> Sequence {
        Sequence::with_media(id, prompt, Vec::new())
    }

    /// A sequence whose prompt holds `media` (none ready yet).
    pub fn with_media(id: SeqId, prompt: Vec<u32>, media: Vec<MediaSpan>) -> Sequence {
        Sequence {
            id,
            prompt_len: prompt.len(),
            tokens: prompt,
            computed: 0,
            cached_prompt: None,
            preemptions: 0,
            media_ready: vec![false; media.len()],
            media,
            blocks: SeqBlocks::default(),
        }
    }

    /// Shortens a chunk of `len` tokens from `computed` so that every media item it reaches
    /// has rows or is listed in `encode` within `budget`, and no bidirectional item is split:
    /// the chunk stops before one it would end inside, or runs to the end of one it starts
    /// inside (so it may grow beyond `len`).
    fn fit_media(
        &self,
        len: usize,
        budget: &mut EncoderBudget,
        encode: &mut Vec<(SeqId, usize)>,
    ) -> usize {
        let from = self.computed;
        let bidirectional = self.media.iter().filter(|m| m.bidirectional);
        let to = chunk_end(from, from + len, bidirectional.map(MediaSpan::range));
        for (i, m) in self.media.iter().enumerate() {
            if m.start >= to {
                break;
            }
            if m.start + m.len <= from || self.media_ready[i] {
                continue;
            }
            if !budget.take(m.len) {
                return m.start.saturating_sub(from);
            }
            encode.push((self.id, i));
        }
        to - from
    }

    pub fn block_table(&self) -> &[u32] {
        self.blocks.table()
    }
}

/// Tokens `start..start + len` of sequence `id` go into this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub id: SeqId,
    pub start: usize,
    pub len: usize,
    /// The chunk reaches the last known token, so its last row's logits are sampled.
    pub sample: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub chunks: Vec<Chunk>,
    /// Media items (sequence, index in its `media`) to encode before the forward pass.
    pub encode: Vec<(SeqId, usize)>,
    /// Sequences sent back to the queue this step.
    pub preempted: Vec<SeqId>,
}

impl Plan {
    pub fn num_tokens(&self) -> usize {
        self.chunks.iter().map(|c| c.len).sum()
    }
}

pub struct Scheduler {
    config: SchedulerConfig,
    blocks: BlockManager,
    seqs: HashMap<SeqId, Sequence>,
    /// In arrival order.
    running: Vec<SeqId>,
    waiting: VecDeque<SeqId>,
    preemptions: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, blocks: BlockManager) -> Scheduler {
        assert!(config.max_num_seqs > 0 && config.max_num_batched_tokens > 0);
        Scheduler {
            config,
            blocks,
            seqs: HashMap::new(),
            running: Vec::new(),
            waiting: VecDeque::new(),
            preemptions: 0,
        }
    }

    pub fn blocks(&self) -> &BlockManager {
        &self.blocks
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Preemptions since start.
    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    /// Queues a new sequence.
    pub fn add(&mut self, seq: Sequence) {
        assert!(!seq.tokens.is_empty(), "empty sequence");
        self.waiting.push_back(seq.id);
        self.seqs.insert(seq.id, seq);
    }

    pub fn get(&self, id: SeqId) -> Option<&Sequence> {
        self.seqs.get(&id)
    }

    pub fn ids(&self) -> Vec<SeqId> {
        self.seqs.keys().copied().collect()
    }

    /// Adds a sampled token to a sequence (evaluated in a later step).
    pub fn append(&mut self, id: SeqId, token: u32) {
        self.seqs
            .get_mut(&id)
            .expect("known sequence")
            .tokens
            .push(token);
    }

    /// Removes a sequence (finished or aborted) and releases its blocks.
    pub fn remove(&mut self, id: SeqId) -> Option<Sequence> {
        let mut seq = self.seqs.remove(&id)?;
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        self.blocks.free(&mut seq.blocks);
        Some(seq)
    }

    /// Records that the rows of media item `index` of sequence `id` are there.
    pub fn media_ready(&mut self, id: SeqId, index: usize) {
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.media_ready[index] = true;
        }
    }

    /// Decides the next step.
    pub fn schedule(&mut self) -> Plan {
        let mut plan = Plan::default();
        let mut budget = self.config.max_num_batched_tokens;
        let mut encoder = EncoderBudget {
            left: self.config.encoder_budget,
            spent: false,
        };
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let seq = self.seqs.get_mut(&id).expect("running sequence");
            let (listed, before) = (plan.encode.len(), encoder);
            let len = (seq.tokens.len() - seq.computed).min(budget);
            let len = seq.fit_media(len, &mut encoder, &mut plan.encode);
            if len == 0 {
                // Waiting for the encoder budget of a later step.
                i += 1;
                continue;
            }
            if self.blocks.allocate(&mut seq.blocks, seq.computed + len) {
                plan.chunks.push(chunk(seq, len));
                budget = budget.saturating_sub(len);
                i += 1;
                continue;
            }
            plan.encode.truncate(listed);
            encoder = before;
            // Out of blocks: the newest running sequence makes room (possibly this one).
            let victim = self.running.pop().expect("running is not empty");
            self.preempt(victim);
            plan.preempted.push(victim);
        }
        // Sequences preempted this step go first next time; do not let newer ones pass them.
        if plan.preempted.is_empty() {
            self.admit(&mut plan, budget, encoder);
        }
        plan
    }

    /// Moves waiting sequences into the step while budget, sequence slots and blocks last.
    fn admit(&mut self, plan: &mut Plan, mut budget: usize, mut encoder: EncoderBudget) {
        while budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            let seq = self.seqs.get_mut(&id).expect("waiting sequence");
            if seq.computed == 0 {
                seq.computed = self
                    .blocks
                    .match_prefix(&mut seq.blocks, &seq.tokens, &seq.media);
                seq.cached_prompt
                    .get_or_insert(seq.computed.min(seq.prompt_len));
            }
            let listed = plan.encode.len();
            let len = (seq.tokens.len() - seq.computed).min(budget);
            let len = seq.fit_media(len, &mut encoder, &mut plan.encode);
            if len == 0 || !self.blocks.allocate(&mut seq.blocks, seq.computed + len) {
                plan.encode.truncate(listed);
                // Do not hold cached blocks while waiting: others may need them.
                self.blocks.free(&mut seq.blocks);
                seq.computed = 0;
                break;
            }
            plan.chunks.push(chunk(seq, len));
            budget = budget.saturating_sub(len);
            self.waiting.pop_front();
            self.running.push(id);
        }
    }

    fn preempt(&mut self, id: SeqId) {
        let seq = self.seqs.get_mut(&id).expect("running sequence");
        self.blocks.free(&mut seq.blocks);
        seq.computed = 0;
        seq.preemptions += 1;
        self.preemptions += 1;
        self.waiting.push_front(id);
    }

    /// Records that the plan's chunks were evaluated: their tokens are now in the cache and
    /// full blocks become findable.
    pub fn complete(&mut self, plan: &Plan) {
        for c in &plan.chunks {
            let seq = self.seqs.get_mut(&c.id).expect("scheduled sequence");
            seq.computed = c.start + c.len;
            self.blocks
                .commit(&mut seq.blocks, &seq.tokens, &seq.media, seq.computed);
        }
    }
}

/// Media tokens the encoders may still produce this step.
#[derive(Clone, Copy, Debug)]
struct EncoderBudget {
    left: usize,
    /// Something was encoded already this step.
    spent: bool,
}

impl EncoderBudget {
    /// Takes `tokens` from the budget; the first item of a step fits whatever its size.
    fn take(&mut self, tokens: usize) -> bool {
        if self.spent && tokens > self.left {
            return false;
        }
        self.left = self.left.saturating_sub(tokens);
        self.spent = true;
        true
    }
}

fn chunk(seq: &Sequence, len: usize) -> Chunk {
    Chunk {
        id: seq.id,
        start: seq.computed,
        len,
        sample: seq.computed + len == seq.tokens.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::BLOCK_SIZE;

    fn sched(blocks: usize, seqs: usize, budget: usize) -> Scheduler {
        Scheduler::new(
            SchedulerConfig {
                max_num_seqs: seqs,
                max_num_batched_tokens: budget,
                encoder_budget: budget,
            },
            BlockManager::new(blocks, true),
        )
    }

    fn prompt(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 3 + salt).collect()
    }

    /// Runs a plan as the engine would: every sampling chunk appends `token`.
    fn step(s: &mut Scheduler, token: u32) -> Plan {
        let plan = s.schedule();
        s.complete(&plan);
        for c in &plan.chunks {
            if c.sample {
                s.append(c.id, token);
            }
        }
        plan
    }

    #[test]
    fn long_prompt_is_chunked_and_decodes_go_first() {
        let mut s = sched(64, 4, 100);
        s.add(Sequence::new(1, prompt(10, 0)));
        let p = step(&mut s, 7);
        assert_eq!(
            p.chunks,
            vec![Chunk {
                id: 1,
                start: 0,
                len: 10,
                sample: true
            }]
        );

        s.add(Sequence::new(2, prompt(250, 1)));
        // The decode of 1 takes one token; the prompt of 2 gets the other 99.
        let p = step(&mut s, 7);
        assert_eq!(
            p.chunks,
            vec![
                Chunk {
                    id: 1,
                    start: 10,
                    len: 1,
                    sample: true
                },
                Chunk {
                    id: 2,
                    start: 0,
                    len: 99,
                    sample: false
                },
            ]
        );
        let p = step(&mut s, 7);
        assert_eq!(
            p.chunks[1],
            Chunk {
                id: 2,
                start: 99,
                len: 99,
                sample: false
            }
        );
        let p = step(&mut s, 7);
        assert_eq!(
            p.chunks[1],
            Chunk {
                id: 2,
                start: 198,
                len: 52,
                sample: true
            }
        );
        assert_eq!(p.num_tokens(), 53);
        let p = step(&mut s, 7);
        assert_eq!(p.num_tokens(), 2);
    }

    #[test]
    fn sequence_slots_limit_admission() {
        let mut s = sched(64, 2, 512);
        for id in 0..3 {
            s.add(Sequence::new(id, prompt(5, id as u32)));
        }
        let p = step(&mut s, 1);
        assert_eq!(p.chunks.len(), 2);
        assert_eq!((s.num_running(), s.num_waiting()), (2, 1));
        s.remove(0);
        let p = step(&mut s, 1);
        assert_eq!(
            p.chunks.iter().map(|c| c.id).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn shared_prefix_is_not_recomputed() {
        let mut s = sched(64, 4, 512);
        let system = prompt(64, 5);
        let mut a = system.clone();
        a.extend([1000, 1001]);
        s.add(Sequence::new(1, a));
        step(&mut s, 9);
        let mut b = system.clone();
        b.extend([2000, 2001, 2002]);
        s.add(Sequence::new(2, b));
        let p = step(&mut s, 9);
        assert_eq!(
            p.chunks[1],
            Chunk {
                id: 2,
                start: 64,
                len: 3,
                sample: true
            }
        );
        assert_eq!(s.get(2).unwrap().cached_prompt, Some(64));
        assert_eq!(s.blocks().prefix_stats().hit_tokens, 64);
    }

    #[test]
    fn out_of_blocks_preempts_the_newest_and_recomputes_it() {
        // 4 blocks: two sequences of 2 blocks each fill the pool.
        let mut s = sched(4, 4, 512);
        s.add(Sequence::new(1, prompt(2 * BLOCK_SIZE, 0)));
        s.add(Sequence::new(2, prompt(2 * BLOCK_SIZE, 100)));
        let p = step(&mut s, 1);
        assert_eq!(p.chunks.len(), 2);
        assert_eq!(s.blocks().free_blocks(), 0);
        // Both now need a third block: 1 is older, so 2 is preempted.
        let p = s.schedule();
        assert_eq!(p.preempted, vec![2]);
        assert_eq!(
            p.chunks,
            vec![Chunk {
                id: 1,
                start: 32,
                len: 1,
                sample: true
            }]
        );
        s.complete(&p);
        s.append(1, 1);
        assert_eq!((s.num_running(), s.num_waiting()), (1, 1));
        assert_eq!(s.get(2).unwrap().computed, 0);
        assert_eq!(s.preemptions(), 1);
        // 1's new block evicted 2's last block (released first); when 1 finishes, 2 comes
        // back, finds its first block in the cache and recomputes the rest, the generated
        // token included.
        s.remove(1);
        let p = s.schedule();
        assert_eq!(
            p.chunks,
            vec![Chunk {
                id: 2,
                start: 16,
                len: 17,
                sample: true
            }]
        );
    }

    #[test]
    fn a_lone_sequence_that_cannot_grow_preempts_itself() {
        let mut s = sched(2, 4, 512);
        s.add(Sequence::new(1, prompt(2 * BLOCK_SIZE, 0)));
        step(&mut s, 1);
        let p = s.schedule();
        assert_eq!(p.preempted, vec![1]);
        assert!(p.chunks.is_empty());
    }

    #[test]
    fn removing_frees_blocks_and_queue_places() {
        let mut s = sched(8, 1, 512);
        s.add(Sequence::new(1, prompt(40, 0)));
        s.add(Sequence::new(2, prompt(40, 50)));
        step(&mut s, 1);
        assert_eq!(s.blocks().used_blocks(), 3);
        assert!(s.remove(2).is_some());
        assert!(s.remove(1).is_some());
        assert!(s.is_idle());
        assert_eq!(s.blocks().used_blocks(), 0);
        assert!(s.remove(1).is_none());
    }

    fn image(start: usize, len: usize, hash: u128) -> MediaSpan {
        MediaSpan {
            start,
            len,
            hash,
            bidirectional: false,
        }
    }

    /// An image whose tokens attend to each other both ways (Gemma 3's).
    fn bidirectional(start: usize, len: usize, hash: u128) -> MediaSpan {
        MediaSpan {
            bidirectional: true,
            ..image(start, len, hash)
        }
    }

    fn lens(p: &Plan) -> Vec<(SeqId, usize, usize)> {
        p.chunks.iter().map(|c| (c.id, c.start, c.len)).collect()
    }

    /// A chunk stops before a bidirectional image it would end inside, and the next one takes
    /// the whole image even past the token budget (which then admits nothing more); a causal
    /// image is cut by the budget as text is.
    #[test]
    fn a_bidirectional_image_is_one_chunk() {
        let mut s = sched(64, 4, 20);
        s.add(Sequence::new(1, prompt(4, 0)));
        step(&mut s, 7);
        s.add(Sequence::with_media(
            2,
            prompt(60, 1),
            vec![bidirectional(10, 30, 1)],
        ));
        let p = step(&mut s, 7);
        assert_eq!(lens(&p), vec![(1, 4, 1), (2, 0, 10)]);
        assert!(p.encode.is_empty());
        s.add(Sequence::with_media(
            3,
            prompt(30, 2),
            vec![image(5, 20, 2)],
        ));
        let p = step(&mut s, 7);
        assert_eq!(lens(&p), vec![(1, 5, 1), (2, 10, 30)]);
        assert_eq!(p.encode, vec![(2, 0)]);
        s.media_ready(2, 0);
        let p = step(&mut s, 7);
        assert_eq!(lens(&p), vec![(1, 6, 1), (2, 40, 19)]);
        // 3's causal image is cut where the budget ends.
        let p = step(&mut s, 7);
        assert_eq!(lens(&p), vec![(1, 7, 1), (2, 59, 1), (3, 0, 18)]);
    }

    /// A prefix-cache hit may end inside a bidirectional image (its blocks were computed with
    /// the whole image); the next chunk then runs to the image's end, past the budget.
    #[test]
    fn a_prefix_hit_inside_a_bidirectional_image_runs_to_its_end() {
        let mut s = sched(64, 4, 100);
        let a = prompt(80, 0);
        s.add(Sequence::with_media(
            1,
            a.clone(),
            vec![bidirectional(10, 40, 9)],
        ));
        let p = step(&mut s, 7);
        assert_eq!(lens(&p), vec![(1, 0, 80)]);
        s.remove(1);

        let mut s = Scheduler::new(
            SchedulerConfig {
                max_num_seqs: 4,
                max_num_batched_tokens: 10,
                encoder_budget: 100,
            },
            s.blocks,
        );
        // The same first 45 tokens: blocks 0..32 are found, 32..48 is not.
        let mut b = a.clone();
        b[45] += 1;
        s.add(Sequence::with_media(2, b, vec![bidirectional(10, 40, 9)]));
        let p = step(&mut s, 7);
        assert_eq!(lens(&p), vec![(2, 32, 18)]);
        assert_eq!(p.encode, vec![(2, 0)]);
        let p = step(&mut s, 7);
        assert_eq!(lens(&p), vec![(2, 50, 10)]);
    }

    /// A chunk stops before an image the step's encoder budget cannot pay for; the first
    /// image of a step always runs; decodes are never held up by images.
    #[test]
    fn images_share_a_per_step_encoder_budget() {
        let mut s = Scheduler::new(
            SchedulerConfig {
                max_num_seqs: 4,
                max_num_batched_tokens: 512,
                encoder_budget: 60,
            },
            BlockManager::new(64, true),
        );
        s.add(Sequence::new(1, prompt(8, 0)));
        step(&mut s, 7);
        // Two prompts, each with a 50-token image; a 100-token image in a third.
        s.add(Sequence::with_media(
            2,
            prompt(80, 1),
            vec![image(10, 50, 1)],
        ));
        s.add(Sequence::with_media(
            3,
            prompt(80, 2),
            vec![image(20, 50, 2)],
        ));
        s.add(Sequence::with_media(
            4,
            prompt(120, 3),
            vec![image(5, 100, 3)],
        ));
        let p = s.schedule();
        assert_eq!(p.encode, vec![(2, 0)]);
        let lens: Vec<(SeqId, usize)> = p.chunks.iter().map(|c| (c.id, c.len)).collect();
        // 1 decodes, 2 runs whole, 3 and 4 stop before their images.
        assert_eq!(lens, vec![(1, 1), (2, 80), (3, 20), (4, 5)]);
        s.complete(&p);
        s.media_ready(2, 0);
        s.append(1, 7);
        s.append(2, 7);
        // Next step: 3's image is the first of the step; 4's does not fit after it.
        let p = s.schedule();
        assert_eq!(p.encode, vec![(3, 0)]);
        let lens: Vec<(SeqId, usize)> = p.chunks.iter().map(|c| (c.id, c.len)).collect();
        assert_eq!(lens, vec![(1, 1), (2, 1), (3, 60)]);
        s.complete(&p);
        s.media_ready(3, 0);
        // Then 4's image, larger than the budget, runs alone in its step.
        let p = s.schedule();
        assert_eq!(p.encode, vec![(4, 0)]);
        assert!(p.chunks.iter().any(|c| c.id == 4 && c.len == 115));
    }
}
