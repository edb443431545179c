//! weft's compute kernels: block-quantized formats and their dot products, matrix products,
//! attention over a paged KV cache, norms, rotary embeddings, activations, and the thread pool
//! they run on. Nothing here knows about models.

pub mod attention;
#[cfg(target_arch = "x86_64")]
mod byte_dot;
pub mod encoder_attention;
pub mod float_ops;
pub mod interleaved;
pub mod matmul;
pub mod ops;
pub mod packed;
pub mod pool;
pub mod quant;
mod row_groups;
pub mod sgemm;
#[cfg(test)]
mod test_util;
