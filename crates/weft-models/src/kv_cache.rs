//! KV cache storage: per layer, K and V in f16, split into fixed-size blocks that sequences
//! reach through block tables. Which block belongs to whom is the engine's business; this
//! type only holds the memory and knows its shape.

use half::f16;
use weft_kernels::attention::{KvLayout, PagedKv};

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
    layout: KvLayout,
    n_blocks: usize,
    k: Vec<Vec<f16>>,
    v: Vec<Vec<f16>>,
}

impl KvCache {
    /// Allocates `n_blocks` blocks of `block_size` tokens for every layer.
    pub fn new(shape: KvShape, block_size: usize, n_blocks: usize) -> KvCache {
        let layout = KvLayout {
            block_size,
            n_kv_heads: shape.n_kv_heads,
            head_dim: shape.head_dim,
        };
        let per_layer = n_blocks * layout.block_len();
        KvCache {
            shape,
            layout,
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
        self.layout.block_size
    }

    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Stores one token's K and V rows (all KV heads) for `layer`, converting to f16.
    pub fn write(&mut self, layer: usize, block_table: &[u32], index: usize, k: &[f32], v: &[f32]) {
        let (bs, hd) = (self.layout.block_size, self.layout.head_dim);
        let block = block_table[index / bs] as usize;
        for h in 0..self.layout.n_kv_heads {
            let off = self.layout.offset(block, h, index % bs);
            let (ks, vs) = (&k[h * hd..(h + 1) * hd], &v[h * hd..(h + 1) * hd]);
            for (d, &s) in self.k[layer][off..off + hd].iter_mut().zip(ks) {
                *d = f16::from_f32(s);
            }
            for (d, &s) in self.v[layer][off..off + hd].iter_mut().zip(vs) {
                *d = f16::from_f32(s);
            }
        }
    }

    /// A read view of `layer` through `block_table`, for the attention kernel.
    pub fn view<'a>(&'a self, layer: usize, block_table: &'a [u32]) -> PagedKv<'a> {
        PagedKv {
            k: &self.k[layer],
            v: &self.v[layer],
            layout: self.layout,
            block_table,
        }
    }
}
