//! Robustness of image decoding: deterministic mutations (flipped, overwritten, inserted and
//! removed bytes, truncations) of small valid PNG, JPEG, GIF and WebP files made here must
//! decode or be refused with a `DecodeError`, never panic; and the refusals that matter to a
//! server (not an image, unsupported, too large, damaged) must come out as such.

use image::{ImageFormat, RgbImage as Buf, RgbaImage};
use std::io::Cursor;
use weft_vision::{decode, Alpha, DecodeError, DecodeOptions};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn rgb(width: u32, height: u32) -> Buf {
    Buf::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7 + y) as u8, (y * 13) as u8, ((x ^ y) * 5) as u8])
    })
}

fn encode(image: image::DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encode seed");
    out.into_inner()
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let rgba = RgbaImage::from_fn(17, 11, |x, y| {
        image::Rgba([x as u8 * 9, y as u8 * 20, 77, (x * 15) as u8])
    });
    vec![
        ("png", encode(rgb(23, 19).into(), ImageFormat::Png)),
        ("png rgba", encode(rgba.clone().into(), ImageFormat::Png)),
        ("jpeg", encode(rgb(33, 20).into(), ImageFormat::Jpeg)),
        ("gif", encode(rgba.into(), ImageFormat::Gif)),
        ("webp", encode(rgb(21, 14).into(), ImageFormat::WebP)),
    ]
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if bytes.is_empty() {
            break;
        }
        let at = rng.below(bytes.len());
        match rng.below(6) {
            0 => bytes[at] ^= 1 << rng.below(8),
            1 => bytes[at] = rng.next() as u8,
            2 => bytes[at] = [0x00, 0xff, 0x7f, 0x80][rng.below(4)],
            3 => bytes.insert(at, rng.next() as u8),
            4 => {
                bytes.remove(at);
            }
            _ => bytes.truncate(at),
        }
    }
    bytes
}

#[test]
fn seeds_decode() {
    for (name, bytes) in seeds() {
        let image =
            decode(&bytes, &DecodeOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(image.width() > 10 && image.height() > 10, "{name}");
    }
}

#[test]
fn mutated_images_never_panic() {
    let options = DecodeOptions {
        max_pixels: 1 << 20,
        alpha: Alpha::CompositeOnWhite,
    };
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut decoded, mut refused) = (0, 0);
    for (name, seed) in seeds() {
        // Every truncation point of the header region, then random mutations.
        for len in 0..seed.len().min(96) {
            let _ = decode(&seed[..len], &options);
        }
        for i in 0..400 {
            let bytes = mutate(&seed, &mut rng);
            let result = std::panic::catch_unwind(|| decode(&bytes, &options));
            match result {
                Ok(Ok(image)) => {
                    assert!(
                        u64::from(image.width()) * u64::from(image.height()) <= options.max_pixels
                    );
                    decoded += 1;
                }
                Ok(Err(_)) => refused += 1,
                Err(_) => panic!("{name} mutation {i} panicked"),
            }
        }
    }
    eprintln!("{decoded} mutations decoded, {refused} refused");
    assert!(refused > 0 && decoded > 0);
}

#[test]
fn refusals_say_why() {
    let o = DecodeOptions::default();
    assert!(matches!(decode(b"", &o), Err(DecodeError::Empty)));
    assert!(matches!(
        decode(b"hello, I am text and not a picture", &o),
        Err(DecodeError::NotAnImage)
    ));
    // A BMP header: an image, but not a format the server takes.
    let mut bmp = b"BM".to_vec();
    bmp.extend([0u8; 60]);
    assert!(
        matches!(decode(&bmp, &o), Err(DecodeError::Unsupported(_))),
        "{:?}",
        decode(&bmp, &o)
    );
    let png = encode(rgb(23, 19).into(), ImageFormat::Png);
    assert!(matches!(
        decode(&png[..png.len() / 2], &o),
        Err(DecodeError::Corrupt(_))
    ));
}

#[test]
fn the_pixel_limit_is_checked_from_the_header() {
    // A PNG whose header claims 60000 x 60000 pixels and whose data is a few bytes: refused as
    // too large before anything is allocated for its pixels.
    let mut png = encode(rgb(4, 4).into(), ImageFormat::Png);
    png[16..20].copy_from_slice(&60_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&60_000u32.to_be_bytes());
    // Fix the IHDR CRC so that the header itself is valid.
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    match decode(&png, &DecodeOptions::default()) {
        Err(DecodeError::TooLarge {
            width: 60_000,
            height: 60_000,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // The limit is the caller's: a real 23 x 19 image is too large for 400 pixels.
    let small = encode(rgb(23, 19).into(), ImageFormat::Png);
    let tight = DecodeOptions {
        max_pixels: 400,
        ..DecodeOptions::default()
    };
    assert!(matches!(
        decode(&small, &tight),
        Err(DecodeError::TooLarge { pixels: 437, .. })
    ));
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
