//! KV cache storage: per layer, K and V in f16, split into fixed-size blocks that sequences
//! reach through block tables. Which block belongs to whom is the engine's business; this
//! type only holds the memory and knows its shape.

use half::f16;
use weft_kernels::attention::PagedKv;

/// The shape of one layer's cache entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// Bytes one token occupies across all layers (K and V).
    pub fn bytes_per_token(&self) -> usize {
        self.n_layers * 2 * self.n_kv_heads * self.head_dim * std::mem::size_of::<f16>()
    }
}

/// Paged K/V memory for every layer of a model.
pub struct KvCache {
    shape: KvShape,
    block_size: usize,
    n_blocks: usize,
    k: Vec<Vec<f16>>,
    v: Vec<Vec<f16>>,
}

impl KvCache {
    /// Allocates `n_blocks` blocks of `block_size` tokens for every layer.
    pub fn new(shape: KvShape, block_size: usize, n_blocks: usize) -> KvCache {
        let per_layer = n_blocks * block_size * shape.n_kv_heads * shape.head_dim;
        KvCache {
            shape,
            block_size,
            n_blocks,
            k: (0..shape.n_layers)
                .map(|_| vec![f16::ZERO; per_layer])
                .collect(),
            v: (0..shape.n_layers)
                .map(|_| vec![f16::ZERO; per_layer])
                .collect(),
        }
    }

    pub fn shape(&self) -> KvShape {
        self.shape
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Element offset of token slot `index` of a sequence with `block_table`.
    fn slot_offset(&self, block_table: &[u32], index: usize) -> usize {
        let block = block_table[index / self.block_size] as usize;
        (block * self.block_size + index % self.block_size)
            * self.shape.n_kv_heads
            * self.shape.head_dim
    }

    /// Stores one token's K and V rows (all KV heads) for `layer`, converting to f16.
    pub fn write(&mut self, layer: usize, block_table: &[u32], index: usize, k: &[f32], v: &[f32]) {
        let width = self.shape.n_kv_heads * self.shape.head_dim;
        let off = self.slot_offset(block_table, index);
        for (d, &s) in self.k[layer][off..off + width].iter_mut().zip(k) {
            *d = f16::from_f32(s);
        }
        for (d, &s) in self.v[layer][off..off + width].iter_mut().zip(v) {
            *d = f16::from_f32(s);
        }
    }

    /// A read view of `layer` through `block_table`, for the attention kernel.
    pub fn view<'a>(&'a self, layer: usize, block_table: &'a [u32]) -> PagedKv<'a> {
        PagedKv {
            k: &self.k[layer],
            v: &self.v[layer],
            block_size: self.block_size,
            n_kv_heads: self.shape.n_kv_heads,
            head_dim: self.shape.head_dim,
            block_table,
        }
    }
}
