use std::path::PathBuf;

/// Why a GGUF file could not be read, or why a metadata lookup failed.
///
/// Every message starts with the file's path (or the name given to
/// [`GgufFile::from_bytes`](super::GgufFile::from_bytes)) and, where there is one, names the
/// tensor or metadata key involved.
#[derive(thiserror::Error, Debug)]
pub enum GgufError {
    /// The file could not be opened, inspected or memory-mapped.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The first four bytes are not `GGUF`.
    #[error("{}: not a GGUF file (magic bytes {found}, expected \"GGUF\")", path.display())]
    BadMagic { path: PathBuf, found: String },

    /// A GGUF version other than 2 or 3.
    #[error("{}: unsupported GGUF version {version}: {reason}", path.display())]
    UnsupportedVersion {
        path: PathBuf,
        version: u32,
        reason: &'static str,
    },

    /// The file ends in the middle of the header, the metadata or the tensor infos.
    #[error(
        "{}: truncated file: {what} at byte {offset} needs {needed} bytes, but only {available} remain",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },

    /// A structural problem in the header or the metadata (bad counts, lengths, value types,
    /// duplicate keys, bad alignment, ...). `context` says where (e.g. `metadata key 'x'`).
    #[error("{}: {context}: {problem}", path.display())]
    Malformed {
        path: PathBuf,
        context: String,
        problem: String,
    },

    /// A problem with one tensor's info or data range.
    #[error("{}: tensor '{tensor}': {problem}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        problem: String,
    },

    /// A tensor whose ggml type id weft does not know or does not support.
    #[error("{}: tensor '{tensor}': unsupported ggml type id {id}{}", path.display(), known_type_suffix(*id))]
    UnsupportedTensorType {
        path: PathBuf,
        tensor: String,
        id: u32,
    },

    /// A typed getter found the key with a different value type.
    #[error("{}: metadata key '{key}' has type {found}, expected {expected}", path.display())]
    MetadataType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },

    /// A typed getter found an integer that does not fit the requested type.
    #[error("{}: metadata key '{key}' has value {value}, which does not fit in {expected}", path.display())]
    MetadataRange {
        path: PathBuf,
        key: String,
        expected: &'static str,
        value: String,
    },
}

/// Names for ggml type ids that exist in ggml but that weft does not implement, so the error
/// says "(IQ2_XXS)" rather than only a number.
fn known_type_suffix(id: u32) -> String {
    let name = match id {
        4 => "Q4_2, removed from ggml",
        5 => "Q4_3, removed from ggml",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        31..=33 => "Q4_0_N_M, removed from GGUF files",
        34 => "TQ1_0",
        35 => "TQ2_0",
        36..=38 => "IQ4_NL_N_M, removed from GGUF files",
        39 => "MXFP4",
        40 => "NVFP4",
        41 => "Q1_0",
        42 => "Q2_0",
        _ => return " (not a ggml type)".to_string(),
    };
    format!(" ({name})")
}
