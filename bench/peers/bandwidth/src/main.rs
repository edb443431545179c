//! Measures how fast `threads` threads can read memory: each sums its share of a buffer far
//! larger than the caches, the best of several passes is reported in GB/s (10^9 bytes). Decode
//! reads every weight once per token, so bandwidth / bytes-per-token bounds tokens/s.
//!
//! Usage: bandwidth [THREADS] [MIB]   (defaults: all cores, 1024 MiB)

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args
        .next()
        .map(|a| a.parse().expect("THREADS must be a number"))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mib: usize = args
        .next()
        .map(|a| a.parse().expect("MIB must be a number"))
        .unwrap_or(1024);
    let words = mib * 1024 * 1024 / 8;
    // Non-zero contents so that the pages are really allocated.
    let buf: Vec<u64> = (0..words as u64).collect();
    let share = words.div_ceil(threads);
    let mut best = f64::MAX;
    let mut checksum = 0u64;
    for _ in 0..7 {
        let t0 = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(share)
                .map(|part| s.spawn(move || read_all(part)))
                .collect();
            handles.into_iter().map(|h| h.join().expect("reader")).collect()
        });
        best = best.min(t0.elapsed().as_secs_f64());
        checksum = checksum.wrapping_add(sums.iter().fold(0, |a, b| a.wrapping_add(*b)));
    }
    let gbs = (words * 8) as f64 / best / 1e9;
    println!("{{\"threads\": {threads}, \"bytes\": {}, \"read_gbs\": {gbs:.2}}}", words * 8);
    eprintln!("(checksum {checksum:x})");
}

/// Sums the words with eight independent accumulators, so the loop is bound by loads, not by
/// the latency of one add chain.
fn read_all(part: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = part.chunks_exact(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(*v);
        }
    }
    let tail = chunks.remainder().iter().fold(0u64, |a, v| a.wrapping_add(*v));
    acc.iter().fold(tail, |a, v| a.wrapping_add(*v))
}
