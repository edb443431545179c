//! Feeds arbitrary bytes to the GGUF reader. Parsing must never panic, abort or allocate without
//! bound; when a file is accepted, every tensor's data must be addressable and every metadata
//! value printable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_models::gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data, "fuzz.gguf") else {
        return;
    };
    let mut sum = 0u64;
    for (key, value) in file.metadata() {
        sum = sum.wrapping_add(key.len() as u64);
        sum = sum.wrapping_add(format!("{value:.40}").len() as u64);
        assert!(std::ptr::eq(file.get(key).unwrap(), value));
    }
    for info in file.tensors() {
        let bytes = file.tensor_data(info);
        assert_eq!(bytes.len() as u64, info.size);
        assert_eq!(
            info.n_elements(),
            info.row_len() as u64 * info.n_rows() as u64
        );
        sum = sum.wrapping_add(bytes.iter().map(|&b| u64::from(b)).sum::<u64>());
        assert!(std::ptr::eq(file.tensor(&info.name).unwrap(), info));
    }
    std::hint::black_box(sum);
});
