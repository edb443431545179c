//! Allocation of KV cache blocks to sequences.

/// A free list over the blocks of one KV cache.
pub struct BlockAllocator {
    free: Vec<u32>,
    total: usize,
}

impl BlockAllocator {
    pub fn new(n_blocks: usize) -> BlockAllocator {
        // Reversed so that blocks are handed out in ascending order.
        BlockAllocator {
            free: (0..n_blocks as u32).rev().collect(),
            total: n_blocks,
        }
    }

    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    pub fn total_blocks(&self) -> usize {
        self.total
    }

    /// Grows `table` until it covers `tokens` tokens of `block_size`; false (and `table`
    /// unchanged) when there are not enough free blocks.
    pub fn ensure(&mut self, table: &mut Vec<u32>, tokens: usize, block_size: usize) -> bool {
        let need = tokens.div_ceil(block_size).saturating_sub(table.len());
        if need > self.free.len() {
            return false;
        }
        for _ in 0..need {
            table.push(self.free.pop().expect("checked above"));
        }
        true
    }

    /// Shrinks `table` to the blocks needed for `tokens` tokens, returning the rest.
    pub fn truncate(&mut self, table: &mut Vec<u32>, tokens: usize, block_size: usize) {
        let keep = tokens.div_ceil(block_size);
        while table.len() > keep {
            self.free.push(table.pop().expect("len > keep"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_and_truncate_balance() {
        let mut a = BlockAllocator::new(4);
        let mut t = Vec::new();
        assert!(a.ensure(&mut t, 33, 16));
        assert_eq!(t, vec![0, 1, 2]);
        assert!(!a.ensure(&mut t, 80, 16));
        assert_eq!(t.len(), 3);
        a.truncate(&mut t, 16, 16);
        assert_eq!((t.len(), a.free_blocks()), (1, 3));
        a.truncate(&mut t, 0, 16);
        assert_eq!(a.free_blocks(), 4);
    }
}
