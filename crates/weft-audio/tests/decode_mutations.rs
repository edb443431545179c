//! Robustness of audio decoding: deterministic mutations of small valid files in every
//! container the server accepts must decode or be refused, never panic, hang or allocate
//! without bound. The `audio_decode` fuzz target (fuzz/) does the same with coverage
//! guidance.
//!
//! tests/data holds the seeds (a 440 Hz tone), made with
//! `sox -n -r 22050 -b 16 -c 2 tone.flac synth 0.03 sine 440 vol 0.5` (likewise
//! `-r 8000 -e ms-adpcm -c 1 tone_ms_adpcm.wav` and `-r 11025 -e floating-point -b 32 -c 1
//! tone_f32.wav`) and `ffmpeg -f lavfi -i sine=frequency=440:duration=0.1 -ac 1` with
//! `-ar 8000 -c:a libmp3lame -b:a 8k tone.mp3`, `-ar 16000 -c:a libvorbis -q:a 0 tone.ogg`
//! and `-ar 8000 -c:a aac -b:a 8k tone.m4a`.

use weft_audio::audio::decode;

use weft_test_support::Rng;

/// A PCM WAV file (16-bit integer samples).
fn wav(rate: u32, channels: u16, frames: usize) -> Vec<u8> {
    let data_len = (frames * 2 * channels as usize) as u32;
    let mut v = Vec::new();
    v.extend(b"RIFF");
    v.extend((36 + data_len).to_le_bytes());
    v.extend(b"WAVEfmt ");
    v.extend(16u32.to_le_bytes());
    v.extend(1u16.to_le_bytes());
    v.extend(channels.to_le_bytes());
    v.extend(rate.to_le_bytes());
    v.extend(rate.wrapping_mul(2 * channels as u32).to_le_bytes());
    v.extend((2 * channels).to_le_bytes());
    v.extend(16u16.to_le_bytes());
    v.extend(b"data");
    v.extend(data_len.to_le_bytes());
    for i in 0..frames * channels as usize {
        v.extend((((i * 7919) % 20_000) as i16 - 10_000).to_le_bytes());
    }
    v
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let mut seeds = vec![
        ("16k mono wav".to_string(), wav(16_000, 1, 400)),
        ("44.1k stereo wav".to_string(), wav(44_100, 2, 600)),
    ];
    for name in [
        "tone.flac",
        "tone.mp3",
        "tone.ogg",
        "tone.m4a",
        "tone_ms_adpcm.wav",
        "tone_f32.wav",
    ] {
        let bytes = std::fs::read(format!("{dir}/{name}")).expect("seed file");
        seeds.push((name.to_string(), bytes));
    }
    seeds
}

/// Little-endian integers that make headers lie: sizes, counts, sample rates, channels.
const INTERESTING: [u32; 12] = [
    0,
    1,
    2,
    0xff,
    0xffff,
    16_001,
    44_101,
    192_000,
    1_000_000,
    0x7fff_ffff,
    4_294_967_291,
    u32::MAX,
];

fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            return;
        }
        let p = rng.below(b.len());
        match rng.below(6) {
            0 => b[p] ^= 1 << rng.below(8),
            1 => b[p] = rng.next_u64() as u8,
            2 => b.truncate(p),
            3 => {
                let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                let w = if rng.below(2) == 0 { 2 } else { 4 };
                if p + w <= b.len() {
                    b[p..p + w].copy_from_slice(&v[..w]);
                }
            }
            4 => {
                if rng.below(2) == 0 {
                    let n = 1 + rng.below(8);
                    b.splice(p..p, (0..n).map(|_| rng.next_u64() as u8));
                } else {
                    let end = (p + 1 + rng.below(8)).min(b.len());
                    b.drain(p..end);
                }
            }
            _ => b[p] = b[p].wrapping_add(rng.below(5) as u8).wrapping_sub(2),
        }
    }
}

#[test]
fn decode_mutations_never_panic() {
    let seeds = seeds();
    for (name, bytes) in &seeds {
        let samples = decode(bytes, 60.0).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!samples.is_empty(), "{name}");
    }
    let mut rng = Rng(0x0a0d_10de_c0de_5eed);
    let (mut ok, mut err) = (0, 0);
    for i in 0..5000 {
        let (_, seed) = &seeds[i % seeds.len()];
        let mut b = seed.clone();
        mutate(&mut rng, &mut b);
        match decode(&b, 2.0) {
            Ok(samples) => {
                assert!(!samples.is_empty());
                assert!(samples.len() <= 2 * 16_000 + 1);
                ok += 1;
            }
            Err(_) => err += 1,
        }
    }
    println!("mutations: {ok} decoded, {err} refused");
    assert!(ok > 0 && err > 0);
}
