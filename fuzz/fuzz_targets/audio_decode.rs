//! Decodes arbitrary bytes as audio (any container and codec the server accepts) to 16 kHz
//! mono, with a 60-second limit. Decoding must not panic, hang or allocate without bound, and
//! what it accepts is within the limit.
//!
//! `decode` returns panics inside symphonia as errors (its codecs overflow integers on
//! malformed streams, which panics in this build with overflow checks). libFuzzer's panic
//! hook aborts on any panic, caught or not, so this target's hook lets those through and
//! reports every other one.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;

fn contain_symphonia_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info
                .location()
                .is_some_and(|l| l.file().contains("/symphonia"))
            {
                fuzzer_hook(info);
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    contain_symphonia_panics();
    if let Ok(samples) = weft_audio::audio::decode(data, 60.0) {
        assert!(!samples.is_empty());
        assert!(samples.len() <= 60 * 16_000 + 16_000);
        std::hint::black_box(samples.iter().sum::<f32>());
    }
});
