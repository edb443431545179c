//! Media in engine requests: the items whose encoder output replaces placeholder tokens of a
//! prompt, and the cache that keeps encoder outputs by content hash.
//!
//! The engine does not know what an image or a tower is. A request brings, per media item,
//! the span of prompt tokens it fills, its content hash and a [`MediaEncoder`] that computes
//! its rows; the engine runs encoders on its own thread and pool when the scheduler lets
//! their tokens into a step (within a per-step encoder budget), and keeps the outputs in an
//! [`EncoderCache`] so that the same content is encoded once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use weft_kernels::pool::ThreadPool;
use weft_models::media::MediaPositions;

use crate::blocks::MediaSpan;

/// Computes one media item's embeddings: `span.len` rows of the language model's width.
pub trait MediaEncoder: Send + Sync {
    fn encode(&self, pool: &ThreadPool) -> Result<Vec<f32>, String>;
}

/// One media item of a request.
#[derive(Clone)]
pub struct MediaItem {
    /// Its prompt tokens and content hash.
    pub span: MediaSpan,
    /// Shared by the choices of one request (`n` > 1).
    pub encoder: Arc<dyn MediaEncoder>,
}

/// What a request's prompt carries besides token ids.
#[derive(Clone, Default)]
pub struct RequestMedia {
    /// In token order, not overlapping.
    pub items: Vec<MediaItem>,
    /// Rotary positions of the prompt (empty for text positions) and of what follows.
    pub positions: MediaPositions,
}

impl RequestMedia {
    /// Why these media cannot go with a prompt of `prompt_len` tokens, if they cannot.
    pub fn check(&self, prompt_len: usize) -> Result<(), String> {
        let mut end = 0;
        for (i, item) in self.items.iter().enumerate() {
            let s = item.span;
            if s.len == 0 || s.start < end || s.start + s.len > prompt_len {
                return Err(format!(
                    "media item {i} (tokens {}..{}) is empty, overlaps the one before it or \
                     ends past the prompt of {prompt_len} tokens",
                    s.start,
                    s.start + s.len
                ));
            }
            end = s.start + s.len;
        }
        let positions = self.positions.prompt.len();
        if positions != 0 && positions != prompt_len {
            return Err(format!(
                "{positions} positions for a prompt of {prompt_len} tokens"
            ));
        }
        Ok(())
    }

    pub fn spans(&self) -> Vec<MediaSpan> {
        self.items.iter().map(|i| i.span).collect()
    }
}

/// Encoder outputs by content hash, least recently used evicted first, within a byte budget.
/// An entry larger than the whole budget is not kept.
pub struct EncoderCache {
    capacity_bytes: usize,
    bytes: usize,
    entries: HashMap<u128, (Arc<[f32]>, u64)>,
    /// Last use -> hash (oldest first).
    order: BTreeMap<u64, u128>,
    clock: u64,
}

impl EncoderCache {
    pub fn new(capacity_bytes: usize) -> EncoderCache {
        EncoderCache {
            capacity_bytes,
            bytes: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            clock: 0,
        }
    }

    /// The rows kept for `hash`, now the most recently used.
    pub fn get(&mut self, hash: u128) -> Option<Arc<[f32]>> {
        let (rows, used) = self.entries.get_mut(&hash)?;
        self.order.remove(used);
        self.clock += 1;
        *used = self.clock;
        self.order.insert(self.clock, hash);
        Some(Arc::clone(rows))
    }

    /// Keeps `rows` under `hash`, evicting the least recently used entries to make room.
    pub fn insert(&mut self, hash: u128, rows: Arc<[f32]>) {
        let size = std::mem::size_of_val(&*rows);
        if size > self.capacity_bytes || self.entries.contains_key(&hash) {
            return;
        }
        while self.bytes + size > self.capacity_bytes {
            let (_, oldest) = self.order.pop_first().expect("bytes > 0 means entries");
            let (evicted, _) = self.entries.remove(&oldest).expect("ordered entry");
            self.bytes -= std::mem::size_of_val(&*evicted);
        }
        self.clock += 1;
        self.order.insert(self.clock, hash);
        self.entries.insert(hash, (rows, self.clock));
        self.bytes += size;
    }

    /// Bytes of rows held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, v: f32) -> Arc<[f32]> {
        vec![v; n].into()
    }

    #[test]
    fn least_recently_used_goes_first_and_bytes_stay_bounded() {
        let mut c = EncoderCache::new(3 * 400);
        c.insert(1, rows(100, 1.0));
        c.insert(2, rows(100, 2.0));
        c.insert(3, rows(100, 3.0));
        assert_eq!(c.bytes(), 1200);
        // 1 is used again, so 2 is the oldest when 4 needs room.
        assert_eq!(c.get(1).unwrap()[0], 1.0);
        c.insert(4, rows(100, 4.0));
        assert!(c.get(2).is_none());
        assert!(c.get(1).is_some() && c.get(3).is_some() && c.get(4).is_some());
        // A larger entry evicts as many as it needs.
        c.insert(5, rows(200, 5.0));
        assert_eq!(c.len(), 2);
        assert!(c.bytes() <= 1200);
        // Larger than the whole cache: not kept, nothing evicted.
        c.insert(6, rows(1000, 6.0));
        assert!(c.get(6).is_none());
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn spans_are_checked_against_the_prompt() {
        struct Never;
        impl MediaEncoder for Never {
            fn encode(&self, _: &ThreadPool) -> Result<Vec<f32>, String> {
                unreachable!()
            }
        }
        let media = |spans: &[(usize, usize)]| RequestMedia {
            items: spans
                .iter()
                .map(|&(start, len)| MediaItem {
                    span: MediaSpan {
                        start,
                        len,
                        hash: 0,
                        bidirectional: false,
                    },
                    encoder: Arc::new(Never),
                })
                .collect(),
            positions: MediaPositions::default(),
        };
        assert!(media(&[(1, 4), (5, 2)]).check(8).is_ok());
        assert!(media(&[(1, 4), (4, 2)]).check(8).is_err());
        assert!(media(&[(6, 4)]).check(8).is_err());
        assert!(media(&[(6, 0)]).check(8).is_err());
    }
}
