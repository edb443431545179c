//! GGUF reader tests: small images built in memory (v2 and v3, every metadata type, alignment)
//! and one test per validation error, plus a deterministic mutation fuzz and, when
//! `$WEFT_TEST_MODELS` is set, checks against real model files.

use std::path::PathBuf;

use weft_kernels::quant::GgmlType;
use weft_models::gguf::{GgufError, GgufFile, MetaArray, MetaValue};

// ---------------------------------------------------------------------------------------------
// A tiny GGUF writer.
// ---------------------------------------------------------------------------------------------

const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

const F32: u32 = 0;
const F16: u32 = 1;
const Q4_0: u32 = 2;
const Q8_0: u32 = 8;
const Q4_K: u32 = 12;

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_str(b: &mut Vec<u8>, s: &[u8]) {
    put_u64(b, s.len() as u64);
    b.extend_from_slice(s);
}

fn value_type(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => T_U8,
        MetaValue::I8(_) => T_I8,
        MetaValue::U16(_) => T_U16,
        MetaValue::I16(_) => T_I16,
        MetaValue::U32(_) => T_U32,
        MetaValue::I32(_) => T_I32,
        MetaValue::U64(_) => T_U64,
        MetaValue::I64(_) => T_I64,
        MetaValue::F32(_) => T_F32,
        MetaValue::F64(_) => T_F64,
        MetaValue::Bool(_) => T_BOOL,
        MetaValue::String(_) => T_STRING,
        MetaValue::Array(_) => T_ARRAY,
    }
}

fn array_elem_type(a: &MetaArray) -> u32 {
    match a {
        MetaArray::U8(_) => T_U8,
        MetaArray::I8(_) => T_I8,
        MetaArray::U16(_) => T_U16,
        MetaArray::I16(_) => T_I16,
        MetaArray::U32(_) => T_U32,
        MetaArray::I32(_) => T_I32,
        MetaArray::U64(_) => T_U64,
        MetaArray::I64(_) => T_I64,
        MetaArray::F32(_) => T_F32,
        MetaArray::F64(_) => T_F64,
        MetaArray::Bool(_) => T_BOOL,
        MetaArray::String(_) => T_STRING,
        MetaArray::Array(_) => T_ARRAY,
    }
}

/// Element type, count, elements.
fn put_array(b: &mut Vec<u8>, a: &MetaArray) {
    put_u32(b, array_elem_type(a));
    put_u64(b, a.len() as u64);
    match a {
        MetaArray::U8(v) => v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes())),
        MetaArray::I8(v) => v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes())),
        MetaArray::U16(v) => v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes())),
        MetaArray::I16(v) => v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes())),
        MetaArray::U32(v) => v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes())),
        MetaArray::I32(v) => v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes())),
        MetaArray::U64(v) => v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes())),
        MetaArray::I64(v) => v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes())),
        MetaArray::F32(v) => v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes())),
        MetaArray::F64(v) => v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes())),
        MetaArray::Bool(v) => v.iter().for_each(|&x| b.push(x as u8)),
        MetaArray::String(v) => v.iter().for_each(|s| put_str(b, s.as_bytes())),
        MetaArray::Array(v) => v.iter().for_each(|a| put_array(b, a)),
    }
}

/// Value type id followed by the payload.
fn put_value(b: &mut Vec<u8>, v: &MetaValue) {
    put_u32(b, value_type(v));
    match v {
        MetaValue::U8(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I8(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => b.push(*x as u8),
        MetaValue::String(s) => put_str(b, s.as_bytes()),
        MetaValue::Array(a) => put_array(b, a),
    }
}

/// Bytes of tensor data for a shape, for the types the tests use (0 for others, and for
/// shapes too large to hold: the tests' overflowing dimensions write no data).
fn data_size(type_id: u32, dims: &[u64]) -> u64 {
    let Some(t) = GgmlType::from_ggml_id(type_id) else {
        return 0;
    };
    let Some(&row) = dims.first() else {
        return 0;
    };
    let Some(row_bytes) = t.row_bytes(row as usize) else {
        return 0;
    };
    dims[1..]
        .iter()
        .try_fold(row_bytes as u64, |n, &d| n.checked_mul(d))
        .unwrap_or(0)
}

struct TensorSpec {
    name: Vec<u8>,
    dims: Vec<u64>,
    type_id: u32,
    /// Relative data offset to write instead of the computed one.
    offset: Option<u64>,
}

/// Builds a GGUF image: header, metadata, tensor infos, padding, tensor data (tensor `i` filled
/// with byte `i + 1`), each tensor padded to the alignment.
struct Gguf {
    version: u32,
    n_kv: Option<u64>,
    n_tensors: Option<u64>,
    kv: Vec<u8>,
    kv_count: u64,
    tensors: Vec<TensorSpec>,
    /// Alignment used for the layout (independent of what `general.alignment` says).
    align: u64,
    /// Skip the final padding after the last tensor.
    no_tail_pad: bool,
}

impl Gguf {
    fn new(version: u32) -> Gguf {
        Gguf {
            version,
            n_kv: None,
            n_tensors: None,
            kv: Vec::new(),
            kv_count: 0,
            tensors: Vec::new(),
            align: 32,
            no_tail_pad: false,
        }
    }

    fn kv(mut self, key: &str, v: MetaValue) -> Gguf {
        put_str(&mut self.kv, key.as_bytes());
        put_value(&mut self.kv, &v);
        self.kv_count += 1;
        self
    }

    /// A key followed by arbitrary bytes (type id and payload).
    fn kv_raw(mut self, key: &[u8], raw: &[u8]) -> Gguf {
        put_str(&mut self.kv, key);
        self.kv.extend_from_slice(raw);
        self.kv_count += 1;
        self
    }

    fn tensor(mut self, name: &str, dims: &[u64], type_id: u32) -> Gguf {
        self.tensors.push(TensorSpec {
            name: name.as_bytes().to_vec(),
            dims: dims.to_vec(),
            type_id,
            offset: None,
        });
        self
    }

    fn tensor_at(mut self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> Gguf {
        self.tensors.push(TensorSpec {
            name: name.as_bytes().to_vec(),
            dims: dims.to_vec(),
            type_id,
            offset: Some(offset),
        });
        self
    }

    fn build(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        put_u32(&mut b, self.version);
        put_u64(&mut b, self.n_tensors.unwrap_or(self.tensors.len() as u64));
        put_u64(&mut b, self.n_kv.unwrap_or(self.kv_count));
        b.extend_from_slice(&self.kv);
        let mut next = 0u64;
        for t in &self.tensors {
            put_str(&mut b, &t.name);
            put_u32(&mut b, t.dims.len() as u32);
            t.dims.iter().for_each(|&d| put_u64(&mut b, d));
            put_u32(&mut b, t.type_id);
            put_u64(&mut b, t.offset.unwrap_or(next));
            next = (next + data_size(t.type_id, &t.dims)).next_multiple_of(self.align);
        }
        if !self.tensors.is_empty() {
            b.resize((b.len() as u64).next_multiple_of(self.align) as usize, 0);
        }
        for (i, t) in self.tensors.iter().enumerate() {
            // Absurdly large tensors get no data (their data then runs past the end of the file).
            let size = data_size(t.type_id, &t.dims);
            let size = if size > 1 << 20 { 0 } else { size as usize };
            b.extend(std::iter::repeat_n(i as u8 + 1, size));
            if !(self.no_tail_pad && i + 1 == self.tensors.len()) {
                b.resize((b.len() as u64).next_multiple_of(self.align) as usize, 0);
            }
        }
        b
    }
}

/// A small valid v3 model-like image.
fn small_model() -> Gguf {
    Gguf::new(3)
        .kv("general.architecture", MetaValue::String("llama".into()))
        .kv("llama.block_count", MetaValue::U32(1))
        .kv("llama.rope.freq_base", MetaValue::F32(10000.0))
        .kv(
            "tokenizer.ggml.tokens",
            MetaValue::Array(MetaArray::String(vec![
                "<s>".into(),
                "a".into(),
                "b".into(),
            ])),
        )
        .kv(
            "tokenizer.ggml.scores",
            MetaValue::Array(MetaArray::F32(vec![0.0, -1.0, -2.0])),
        )
        .kv(
            "tokenizer.ggml.token_type",
            MetaValue::Array(MetaArray::I32(vec![3, 1, 1])),
        )
        .tensor("token_embd.weight", &[64, 3], Q8_0)
        .tensor("output_norm.weight", &[64], F32)
        .tensor("blk.0.attn_q.weight", &[256, 2], Q4_K)
        .tensor("blk.0.ffn_up.weight", &[32, 3], F16)
}

fn parse(bytes: &[u8]) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(bytes, "test.gguf")
}

/// Parses, expects an error, checks the message names the file and contains every fragment.
#[track_caller]
fn expect_err(bytes: &[u8], fragments: &[&str]) -> GgufError {
    let err = match parse(bytes) {
        Ok(_) => panic!("expected an error containing {fragments:?}, but the image parsed"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        msg.starts_with("test.gguf: "),
        "message does not name the file: {msg}"
    );
    for f in fragments {
        assert!(msg.contains(f), "message {msg:?} does not contain {f:?}");
    }
    err
}

// ---------------------------------------------------------------------------------------------
// Valid files.
// ---------------------------------------------------------------------------------------------

fn all_values() -> Vec<(&'static str, MetaValue)> {
    vec![
        ("t.u8", MetaValue::U8(250)),
        ("t.i8", MetaValue::I8(-7)),
        ("t.u16", MetaValue::U16(65000)),
        ("t.i16", MetaValue::I16(-30000)),
        ("t.u32", MetaValue::U32(4_000_000_000)),
        ("t.i32", MetaValue::I32(-2_000_000_000)),
        ("t.u64", MetaValue::U64(u64::MAX)),
        ("t.i64", MetaValue::I64(i64::MIN)),
        ("t.f32", MetaValue::F32(1e-5)),
        ("t.f64", MetaValue::F64(-2.5e300)),
        ("t.bool_true", MetaValue::Bool(true)),
        ("t.bool_false", MetaValue::Bool(false)),
        ("t.string", MetaValue::String("héllo \"wörld\"\n".into())),
        ("t.empty_string", MetaValue::String(String::new())),
        ("a.u8", MetaValue::Array(MetaArray::U8(vec![1, 2, 255]))),
        ("a.i8", MetaValue::Array(MetaArray::I8(vec![-1, 0, 127]))),
        ("a.u16", MetaValue::Array(MetaArray::U16(vec![1, 65535]))),
        ("a.i16", MetaValue::Array(MetaArray::I16(vec![-32768, 5]))),
        ("a.u32", MetaValue::Array(MetaArray::U32(vec![7; 20]))),
        ("a.i32", MetaValue::Array(MetaArray::I32(vec![-1, 2, -3]))),
        ("a.u64", MetaValue::Array(MetaArray::U64(vec![u64::MAX, 0]))),
        (
            "a.i64",
            MetaValue::Array(MetaArray::I64(vec![i64::MIN, i64::MAX])),
        ),
        (
            "a.f32",
            MetaValue::Array(MetaArray::F32(vec![0.5, -0.25, f32::INFINITY])),
        ),
        ("a.f64", MetaValue::Array(MetaArray::F64(vec![1.0 / 3.0]))),
        (
            "a.bool",
            MetaValue::Array(MetaArray::Bool(vec![true, false, true])),
        ),
        (
            "a.string",
            MetaValue::Array(MetaArray::String(vec![
                "x".into(),
                String::new(),
                "ü".into(),
            ])),
        ),
        ("a.empty", MetaValue::Array(MetaArray::U32(vec![]))),
        (
            "a.nested",
            MetaValue::Array(MetaArray::Array(vec![
                MetaArray::I32(vec![1, 2]),
                MetaArray::String(vec!["deep".into()]),
                MetaArray::Array(vec![MetaArray::F64(vec![9.0]), MetaArray::Bool(vec![])]),
                MetaArray::U8(vec![]),
            ])),
        ),
    ]
}

fn check_all_values(version: u32) {
    let mut g = Gguf::new(version);
    for (k, v) in all_values() {
        g = g.kv(k, v);
    }
    let f = parse(&g.tensor("w", &[32, 2], Q4_0).build()).expect("valid image");
    assert_eq!(f.version(), version);
    let expected = all_values();
    let got: Vec<_> = f.metadata().collect();
    assert_eq!(got.len(), expected.len());
    for ((gk, gv), (ek, ev)) in got.iter().zip(&expected) {
        assert_eq!(gk, ek, "metadata keeps file order");
        assert_eq!(*gv, ev, "value of {ek}");
        assert_eq!(f.get(ek), Some(ev));
    }
    // Bit-exact floats.
    assert_eq!(
        f.get_f32("t.f32").unwrap().unwrap().to_bits(),
        1e-5f32.to_bits()
    );
    assert_eq!(f.tensors().len(), 1);
    let t = f.tensor("w").unwrap();
    assert_eq!(t.ggml_type, GgmlType::Q4_0);
    assert_eq!(f.tensor_data(t), &[1u8; 36][..]);
}

#[test]
fn v3_every_metadata_type_roundtrips() {
    check_all_values(3);
}

#[test]
fn v2_every_metadata_type_roundtrips() {
    check_all_values(2);
}

#[test]
fn tensors_layout_and_helpers() {
    let bytes = small_model().build();
    let f = parse(&bytes).unwrap();
    assert_eq!(f.path(), std::path::Path::new("test.gguf"));
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.data_offset() % 32, 0);
    assert_eq!(f.len(), bytes.len() as u64);
    let names: Vec<_> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "token_embd.weight",
            "output_norm.weight",
            "blk.0.attn_q.weight",
            "blk.0.ffn_up.weight"
        ]
    );

    let e = f.tensor("token_embd.weight").unwrap();
    assert_eq!(e.ggml_type, GgmlType::Q8_0);
    assert_eq!(e.dims, vec![64, 3]);
    assert_eq!((e.n_elements(), e.row_len(), e.n_rows()), (192, 64, 3));
    assert_eq!(e.size, 2 * 34 * 3);
    assert_eq!(e.offset, f.data_offset());

    let n = f.tensor("output_norm.weight").unwrap();
    assert_eq!((n.n_elements(), n.row_len(), n.n_rows()), (64, 64, 1));
    assert_eq!(n.size, 256);
    assert_eq!(n.offset, f.data_offset() + (204u64).next_multiple_of(32));

    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.size, 2 * 144);
    let u = f.tensor("blk.0.ffn_up.weight").unwrap();
    assert_eq!(u.size, 32 * 3 * 2);
    assert!(f.tensor("missing").is_none());

    for (i, t) in f.tensors().iter().enumerate() {
        assert_eq!(t.offset % 32, 0);
        let data = f.tensor_data(t);
        assert_eq!(data.len() as u64, t.size);
        assert!(
            data.iter().all(|&b| b == i as u8 + 1),
            "tensor {} has its own bytes",
            t.name
        );
        // from_bytes keeps the image aligned like a mapping would.
        assert_eq!(data.as_ptr() as usize % 32, 0);
    }
}

#[test]
fn custom_alignment() {
    for align in [1u32, 8, 64, 256] {
        let mut g = small_model().kv("general.alignment", MetaValue::U32(align));
        g.align = align as u64;
        let f = parse(&g.build()).unwrap_or_else(|e| panic!("alignment {align}: {e}"));
        assert_eq!(f.alignment(), align);
        assert_eq!(f.data_offset() % align as u64, 0);
        for t in f.tensors() {
            assert_eq!((t.offset - f.data_offset()) % align as u64, 0);
        }
    }
    // The last tensor need not be followed by padding.
    let mut g = small_model().kv("general.alignment", MetaValue::U32(64));
    g.align = 64;
    g.no_tail_pad = true;
    parse(&g.build()).unwrap();
}

#[test]
fn no_tensors_and_no_metadata() {
    let f = parse(&Gguf::new(3).build()).unwrap();
    assert_eq!(f.tensors().len(), 0);
    assert_eq!(f.metadata().count(), 0);
    let f = parse(&Gguf::new(3).kv("k", MetaValue::U8(1)).build()).unwrap();
    assert_eq!(f.metadata().count(), 1);
}

#[test]
fn typed_getters() {
    let g = small_model()
        .kv("u8", MetaValue::U8(9))
        .kv("i64", MetaValue::I64(77))
        .kv("neg", MetaValue::I32(-1))
        .kv("big", MetaValue::U64(1 << 40))
        .kv("f64", MetaValue::F64(0.5))
        .kv("flag", MetaValue::Bool(true))
        .kv("u32s", MetaValue::Array(MetaArray::U32(vec![1])));
    let f = parse(&g.build()).unwrap();

    assert_eq!(f.get_str("general.architecture").unwrap(), Some("llama"));
    assert_eq!(f.get_str("absent").unwrap(), None);
    assert_eq!(f.get_u32("llama.block_count").unwrap(), Some(1));
    assert_eq!(f.get_u32("u8").unwrap(), Some(9));
    assert_eq!(f.get_u32("i64").unwrap(), Some(77));
    assert_eq!(f.get_u32("absent").unwrap(), None);
    assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), Some(10000.0));
    assert_eq!(f.get_f32("f64").unwrap(), Some(0.5));
    assert_eq!(f.get_bool("flag").unwrap(), Some(true));
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap(),
        ["<s>", "a", "b"]
    );
    assert_eq!(
        f.get_f32_array("tokenizer.ggml.scores").unwrap().unwrap(),
        [0.0, -1.0, -2.0]
    );
    assert_eq!(
        f.get_i32_array("tokenizer.ggml.token_type")
            .unwrap()
            .unwrap(),
        [3, 1, 1]
    );
    assert_eq!(f.get_i32_array("absent").unwrap(), None);

    let check = |r: Result<(), GgufError>, frags: &[&str]| {
        let e = r.unwrap_err();
        assert!(matches!(
            e,
            GgufError::MetadataType { .. } | GgufError::MetadataRange { .. }
        ));
        let msg = e.to_string();
        assert!(msg.starts_with("test.gguf: "), "{msg}");
        for f in frags {
            assert!(msg.contains(f), "{msg:?} lacks {f:?}");
        }
    };
    check(
        f.get_str("u8").map(drop),
        &["'u8'", "u8", "expected string"],
    );
    check(
        f.get_u32("f64").map(drop),
        &["'f64'", "f64", "expected u32"],
    );
    check(
        f.get_u32("general.architecture").map(drop),
        &["string", "expected u32"],
    );
    check(
        f.get_u32("neg").map(drop),
        &["'neg'", "-1", "does not fit in u32"],
    );
    check(
        f.get_u32("big").map(drop),
        &["'big'", "1099511627776", "does not fit"],
    );
    check(f.get_f32("u8").map(drop), &["expected f32"]);
    check(f.get_bool("u8").map(drop), &["expected bool"]);
    check(
        f.get_str_array("u32s").map(drop),
        &["array[u32]", "expected array[string]"],
    );
    check(
        f.get_f32_array("tokenizer.ggml.tokens").map(drop),
        &["array[string]", "expected array[f32]"],
    );
    check(
        f.get_i32_array("u32s").map(drop),
        &["array[u32]", "expected array[i32]"],
    );
    assert!(matches!(
        f.get_u32("neg"),
        Err(GgufError::MetadataRange { .. })
    ));
    assert!(matches!(
        f.get_str("u8"),
        Err(GgufError::MetadataType { .. })
    ));
}

#[test]
fn meta_value_helpers_and_display() {
    assert_eq!(MetaValue::I8(-1).as_u64(), None);
    assert_eq!(MetaValue::I8(-1).as_i64(), Some(-1));
    assert_eq!(MetaValue::U64(u64::MAX).as_u64(), Some(u64::MAX));
    assert_eq!(MetaValue::U64(u64::MAX).as_i64(), None);
    assert_eq!(MetaValue::F32(0.5).as_f64(), Some(0.5));
    assert_eq!(MetaValue::F32(0.5).as_u64(), None);
    assert_eq!(MetaValue::String("s".into()).as_str(), Some("s"));
    assert_eq!(MetaValue::Bool(true).as_bool(), Some(true));
    assert_eq!(MetaValue::U16(1).type_name(), "u16");
    assert_eq!(
        MetaValue::Array(MetaArray::String(vec![])).type_name(),
        "array[string]"
    );
    assert_eq!(
        MetaValue::Array(MetaArray::Array(vec![])).type_name(),
        "array[array]"
    );

    assert_eq!(MetaValue::U32(42).to_string(), "42");
    assert_eq!(MetaValue::F32(1e-5).to_string(), "0.00001");
    assert_eq!(MetaValue::Bool(false).to_string(), "false");
    assert_eq!(
        MetaValue::String("a\"b\n".into()).to_string(),
        r#""a\"b\n""#
    );
    assert_eq!(
        format!("{:.3}", MetaValue::String("abcdef".into())),
        r#""abc"... (6 bytes)"#
    );
    assert_eq!(
        MetaValue::Array(MetaArray::I32(vec![1, -2])).to_string(),
        "[1, -2]"
    );
    let long = MetaValue::Array(MetaArray::U32((0..100).collect()));
    assert_eq!(
        long.to_string(),
        "[0, 1, 2, 3, 4, 5, 6, 7, ... (100 items)]"
    );
    let strs = MetaValue::Array(MetaArray::String(vec!["a".into(), "b".into()]));
    assert_eq!(strs.to_string(), r#"["a", "b"]"#);
    let nested = MetaValue::Array(MetaArray::Array(vec![
        MetaArray::U8(vec![1]),
        MetaArray::Bool(vec![]),
    ]));
    assert_eq!(nested.to_string(), "[[1], []]");
}

#[test]
fn open_from_disk() {
    let dir = std::env::temp_dir().join(format!("weft-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("small.gguf");
    let bytes = small_model().build();
    std::fs::write(&path, &bytes).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.path(), path);
    assert_eq!(f.tensors().len(), 4);
    let t = f.tensor("output_norm.weight").unwrap();
    assert_eq!(f.tensor_data(t), &[2u8; 256][..]);

    // Errors from open() name the real path.
    let bad = dir.join("truncated.gguf");
    std::fs::write(&bad, &bytes[..bytes.len() - 10]).unwrap();
    let msg = GgufFile::open(&bad).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("{}: tensor 'blk.0.ffn_up.weight'", bad.display())),
        "{msg}"
    );

    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let msg = GgufFile::open(&empty).unwrap_err().to_string();
    assert!(
        msg.contains("empty.gguf") && msg.contains("truncated"),
        "{msg}"
    );

    let missing = dir.join("missing.gguf");
    let err = GgufFile::open(&missing).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }));
    assert!(err.to_string().contains("missing.gguf"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Header errors.
// ---------------------------------------------------------------------------------------------

#[test]
fn wrong_magic() {
    let mut b = small_model().build();
    b[..4].copy_from_slice(b"GGML");
    let e = expect_err(&b, &["not a GGUF file", "GGML"]);
    assert!(matches!(e, GgufError::BadMagic { .. }));
    expect_err(b"\x00\x01\x02\x03rest", &["not a GGUF file", "00 01 02 03"]);
}

#[test]
fn unsupported_versions() {
    let e = expect_err(
        &Gguf::new(1).build(),
        &["version 1", "v1 is no longer supported"],
    );
    assert!(matches!(
        e,
        GgufError::UnsupportedVersion { version: 1, .. }
    ));
    expect_err(&Gguf::new(0).build(), &["version 0"]);
    expect_err(&Gguf::new(4).build(), &["version 4", "2 and 3"]);
    expect_err(&Gguf::new(0x0300_0000).build(), &["big-endian"]);
}

#[test]
fn truncated_everywhere() {
    let b = small_model().build();
    // Every strict prefix fails cleanly.
    for len in 0..b.len() {
        let r = parse(&b[..len]);
        assert!(r.is_err(), "prefix of {len} bytes parsed");
    }
    expect_err(&b[..2], &["truncated", "magic"]);
    expect_err(&b[..6], &["truncated", "version"]);
    expect_err(&b[..12], &["truncated", "tensor count"]);
    expect_err(&b[..20], &["truncated", "metadata count"]);
    // Counts that the rest of the file cannot hold hint at truncation.
    expect_err(&b[..30], &["metadata count 6 is impossible", "truncated"]);
    // In the first key.
    let g = Gguf::new(3).kv("a.rather.long.key.name.for.testing", MetaValue::U8(1));
    expect_err(
        &g.build()[..24 + 8 + 10],
        &["truncated", "key of metadata entry 0"],
    );
    // In a value.
    let g = Gguf::new(3).kv("some.key", MetaValue::U64(5));
    let b2 = g.build();
    expect_err(
        &b2[..b2.len() - 3],
        &["truncated", "'some.key'", "needs 8 bytes", "only 5 remain"],
    );
    // In a tensor info.
    let name = "blk.0.attn_output.weight";
    let b3 = Gguf::new(3).tensor(name, &[32, 2], F32).build();
    let info_end = 24 + 8 + name.len() + 4 + 16 + 4 + 8;
    expect_err(
        &b3[..info_end - 2],
        &[
            "truncated",
            "data offset of tensor 'blk.0.attn_output.weight'",
        ],
    );
    expect_err(
        &b3[..24 + 8 + name.len() + 4 + 3],
        &[
            "truncated",
            "dimension 0 of tensor 'blk.0.attn_output.weight'",
        ],
    );
    expect_err(
        &b3[..24 + 8 + name.len() + 4 + 16 + 1],
        &["truncated", "type of tensor"],
    );
}

#[test]
fn absurd_counts() {
    let mut g = small_model();
    g.n_kv = Some(u64::MAX);
    expect_err(
        &g.build(),
        &["metadata count 18446744073709551615 is impossible"],
    );
    let mut g = small_model();
    g.n_tensors = Some(1 << 40);
    expect_err(&g.build(), &["tensor count 1099511627776 is impossible"]);
    // Plausible but wrong counts run into the end of the file.
    let mut g = small_model();
    g.n_kv = Some(g.kv_count + 1);
    assert!(parse(&g.build()).is_err());
}

// ---------------------------------------------------------------------------------------------
// Metadata errors.
// ---------------------------------------------------------------------------------------------

#[test]
fn string_length_past_end() {
    // A key whose length field claims far more bytes than the file has.
    let mut b = Gguf::new(3).build();
    b[16..24].copy_from_slice(&1u64.to_le_bytes());
    put_u64(&mut b, u64::MAX - 3);
    b.extend_from_slice(&[b'x'; 40]);
    expect_err(
        &b,
        &[
            "truncated",
            "key of metadata entry 0",
            "needs 18446744073709551612 bytes",
        ],
    );

    // A string value.
    let mut raw = Vec::new();
    put_u32(&mut raw, T_STRING);
    put_u64(&mut raw, 1 << 50);
    raw.extend_from_slice(b"short");
    expect_err(
        &Gguf::new(3).kv_raw(b"s", &raw).build(),
        &["'s'", "needs 1125899906842624 bytes"],
    );

    // A tensor name.
    let mut b = Gguf::new(3).build();
    b[8..16].copy_from_slice(&1u64.to_le_bytes());
    put_u64(&mut b, 1 << 40);
    b.extend_from_slice(&[0; 64]);
    expect_err(&b, &["truncated", "name of tensor 0"]);
}

#[test]
fn array_length_past_end() {
    for (elem, min) in [
        (T_U8, 1u64),
        (T_U32, 4),
        (T_F64, 8),
        (T_STRING, 8),
        (T_ARRAY, 12),
        (T_BOOL, 1),
    ] {
        let mut raw = Vec::new();
        put_u32(&mut raw, T_ARRAY);
        put_u32(&mut raw, elem);
        put_u64(&mut raw, 1 << 60);
        raw.extend_from_slice(&[0; 16]);
        let g = Gguf::new(3).kv_raw(b"arr", &raw);
        let needed = (1u64 << 60)
            .checked_mul(min)
            .map_or("2^64 or more".to_string(), |n| n.to_string());
        expect_err(
            &g.build(),
            &[
                "metadata key 'arr'",
                "array of 1152921504606846976",
                &needed,
            ],
        );
    }
    // Count that fits the remaining bytes at the minimum size but not really (strings).
    let mut raw = Vec::new();
    put_u32(&mut raw, T_ARRAY);
    put_u32(&mut raw, T_STRING);
    put_u64(&mut raw, 2);
    put_u64(&mut raw, 100);
    raw.extend_from_slice(&[b'a'; 10]);
    expect_err(
        &Gguf::new(3).kv_raw(b"strs", &raw).build(),
        &["element 0 of metadata key 'strs'", "needs 100 bytes"],
    );
}

#[test]
fn unknown_value_types() {
    let mut raw = Vec::new();
    put_u32(&mut raw, 13);
    raw.extend_from_slice(&[0; 8]);
    expect_err(
        &Gguf::new(3).kv_raw(b"weird", &raw).build(),
        &["metadata key 'weird'", "unknown value type 13"],
    );

    let mut raw = Vec::new();
    put_u32(&mut raw, T_ARRAY);
    put_u32(&mut raw, 0xdead);
    put_u64(&mut raw, 1);
    raw.extend_from_slice(&[0; 8]);
    expect_err(
        &Gguf::new(3).kv_raw(b"arr", &raw).build(),
        &["metadata key 'arr'", "unknown array element type 57005"],
    );

    // Unknown type inside a nested array.
    let mut raw = Vec::new();
    put_u32(&mut raw, T_ARRAY);
    put_u32(&mut raw, T_ARRAY);
    put_u64(&mut raw, 1);
    put_u32(&mut raw, 99);
    put_u64(&mut raw, 0);
    expect_err(
        &Gguf::new(3).kv_raw(b"nest", &raw).build(),
        &[
            "element 0 of metadata key 'nest'",
            "unknown array element type 99",
        ],
    );
}

#[test]
fn nesting_depth_limit() {
    let build = |depth: usize| {
        let mut a = MetaArray::U8(vec![1]);
        for _ in 1..depth {
            a = MetaArray::Array(vec![a]);
        }
        Gguf::new(3).kv("deep", MetaValue::Array(a)).build()
    };
    parse(&build(weft_models::gguf::MAX_ARRAY_DEPTH)).unwrap();
    expect_err(
        &build(weft_models::gguf::MAX_ARRAY_DEPTH + 1),
        &["'deep'", "nested more than"],
    );
}

#[test]
fn duplicate_and_empty_keys() {
    let g = small_model().kv("llama.block_count", MetaValue::U32(2));
    expect_err(
        &g.build(),
        &["metadata key 'llama.block_count'", "duplicate key"],
    );
    let g = small_model().kv("", MetaValue::U32(2));
    expect_err(&g.build(), &["metadata entry 6", "empty key"]);
}

#[test]
fn invalid_utf8() {
    let mut raw = Vec::new();
    put_u32(&mut raw, T_STRING);
    put_str(&mut raw, b"ok\xff\xfe");
    expect_err(
        &Gguf::new(3).kv_raw(b"bad", &raw).build(),
        &["metadata key 'bad'", "not valid UTF-8"],
    );
    let mut b = Gguf::new(3).build();
    b[16..24].copy_from_slice(&1u64.to_le_bytes());
    put_str(&mut b, b"\xc3");
    put_value(&mut b, &MetaValue::U8(0));
    expect_err(&b, &["key of metadata entry 0", "not valid UTF-8"]);
}

#[test]
fn alignment_errors() {
    for a in [0u32, 3, 48, 0x8000_0001] {
        let g = small_model().kv("general.alignment", MetaValue::U32(a));
        expect_err(
            &g.build(),
            &[
                "'general.alignment'",
                &format!("alignment {a} is not a non-zero power of two"),
            ],
        );
    }
    let g = small_model().kv("general.alignment", MetaValue::U64(32));
    expect_err(
        &g.build(),
        &["'general.alignment'", "must have type u32, found u64"],
    );
}

// ---------------------------------------------------------------------------------------------
// Tensor errors.
// ---------------------------------------------------------------------------------------------

#[test]
fn tensor_dimension_errors() {
    expect_err(
        &Gguf::new(3).tensor("scalar", &[], F32).build(),
        &["tensor 'scalar'", "has 0 dimensions"],
    );
    expect_err(
        &Gguf::new(3).tensor("t5", &[1, 1, 1, 1, 1], F32).build(),
        &["tensor 't5'", "has 5 dimensions"],
    );
    expect_err(
        &Gguf::new(3).tensor("z", &[32, 0], F32).build(),
        &["tensor 'z'", "dimension 1 is zero"],
    );
    expect_err(
        &Gguf::new(3).tensor("neg", &[32, 1 << 63], F32).build(),
        &["tensor 'neg'", "dimension 1 is 9223372036854775808"],
    );
    expect_err(
        &Gguf::new(3)
            .tensor("huge", &[1 << 32, 1 << 32], F32)
            .build(),
        &["tensor 'huge'", "more than 2^63 - 1 elements"],
    );
    expect_err(
        &Gguf::new(3)
            .tensor("huge2", &[1 << 20, 1 << 20, 1 << 20, 1 << 10], F32)
            .build(),
        &["tensor 'huge2'", "more than 2^63 - 1 elements"],
    );
    // Fits in elements but not in bytes.
    expect_err(
        &Gguf::new(3).tensor("bytes", &[1 << 62], F32).build(),
        &["tensor 'bytes'", "too large"],
    );
    // Huge but representable: runs past the end of the file.
    expect_err(
        &Gguf::new(3).tensor("big", &[1 << 20, 1 << 20], F32).build(),
        &["tensor 'big'", "runs past end of file"],
    );
}

#[test]
fn row_not_multiple_of_block() {
    expect_err(
        &Gguf::new(3)
            .tensor("blk.0.attn_k.weight", &[33, 4], Q8_0)
            .build(),
        &[
            "tensor 'blk.0.attn_k.weight'",
            "row length 33 is not a multiple of the Q8_0 block length 32",
        ],
    );
    expect_err(
        &Gguf::new(3).tensor("k", &[128, 2], Q4_K).build(),
        &["tensor 'k'", "row length 128", "Q4_K block length 256"],
    );
}

#[test]
fn unsupported_tensor_types() {
    let e = expect_err(
        &Gguf::new(3).tensor("iq", &[256], 16).build(),
        &["tensor 'iq'", "type id 16", "IQ2_XXS"],
    );
    assert!(matches!(e, GgufError::UnsupportedTensorType { id: 16, .. }));
    expect_err(
        &Gguf::new(3).tensor("x", &[256], 4).build(),
        &["tensor 'x'", "type id 4", "removed"],
    );
    expect_err(
        &Gguf::new(3).tensor("y", &[256], 999).build(),
        &["tensor 'y'", "type id 999", "not a ggml type"],
    );
    expect_err(
        &Gguf::new(3).tensor("w", &[256], u32::MAX).build(),
        &["type id 4294967295"],
    );
}

#[test]
fn duplicate_tensor_names() {
    let g = small_model().tensor("output_norm.weight", &[64], F32);
    expect_err(
        &g.build(),
        &["tensor 'output_norm.weight'", "duplicate tensor name"],
    );
}

#[test]
fn tensor_name_too_long() {
    let name = "x".repeat(64);
    expect_err(
        &Gguf::new(3).tensor(&name, &[1], F32).build(),
        &[&format!("tensor '{name}'"), "64 bytes", "at most 63"],
    );
    parse(&Gguf::new(3).tensor(&"y".repeat(63), &[1], F32).build()).unwrap();
}

#[test]
fn tensor_offsets() {
    // Not a multiple of the alignment.
    let g = Gguf::new(3)
        .tensor("a", &[8], F32)
        .tensor_at("b", &[8], F32, 40);
    expect_err(
        &g.build(),
        &[
            "tensor 'b'",
            "data offset 40 is not a multiple of the alignment 32",
        ],
    );
    // Aligned but leaving a gap, or overlapping: llama.cpp requires packed, in-order tensors.
    let g = Gguf::new(3)
        .tensor("a", &[8], F32)
        .tensor_at("b", &[8], F32, 64);
    expect_err(&g.build(), &["tensor 'b'", "data offset 64 should be 32"]);
    let g = Gguf::new(3)
        .tensor("a", &[64], F32)
        .tensor_at("b", &[8], F32, 0);
    expect_err(&g.build(), &["tensor 'b'", "data offset 0 should be 256"]);
    let g = Gguf::new(3).tensor_at("first", &[8], F32, 32);
    expect_err(
        &g.build(),
        &["tensor 'first'", "data offset 32 should be 0"],
    );
    // An offset so large that start + size overflows.
    let g = Gguf::new(3).tensor_at("wrap", &[8], F32, u64::MAX - 31);
    expect_err(&g.build(), &["tensor 'wrap'"]);
}

#[test]
fn tensor_data_past_end_of_file() {
    let b = small_model().build();
    let f = parse(&b).unwrap();
    let last = f.tensors().last().unwrap();
    let (offset, size) = (last.offset, last.size);
    let cut = &b[..(offset + size - 1) as usize];
    let e = expect_err(
        cut,
        &[&format!(
            "test.gguf: tensor 'blk.0.ffn_up.weight': data [offset {offset}, {size} bytes) runs past end of file ({} bytes)",
            cut.len()
        )],
    );
    assert!(matches!(e, GgufError::Tensor { .. }));
    // Exactly up to the end is fine.
    parse(&b[..(offset + size) as usize]).unwrap();
    // Cutting into the padding before the data section fails for the first tensor.
    let first = f.tensors()[0].offset;
    expect_err(
        &b[..first as usize - 1],
        &["tensor 'token_embd.weight'", "runs past end of file"],
    );
}

// ---------------------------------------------------------------------------------------------
// Robustness: deterministic mutations must never panic.
// ---------------------------------------------------------------------------------------------

use weft_test_support::Rng;

fn touch(f: &GgufFile) -> u64 {
    let mut sum = 0u64;
    for (k, v) in f.metadata() {
        sum += k.len() as u64 + v.to_string().len() as u64;
    }
    for t in f.tensors() {
        let d = f.tensor_data(t);
        assert_eq!(d.len() as u64, t.size);
        sum += d.iter().map(|&b| b as u64).sum::<u64>();
        sum += t.n_elements() + t.n_rows() as u64 + t.row_len() as u64;
    }
    sum
}

#[test]
fn mutations_never_panic() {
    let mut seeds = vec![small_model().build()];
    let mut g = Gguf::new(2);
    for (k, v) in all_values() {
        g = g.kv(k, v);
    }
    seeds.push(g.tensor("w", &[32, 2], Q4_0).tensor("v", &[4], F32).build());

    let interesting: [u64; 8] = [
        0,
        1,
        0x7f,
        0xff,
        0xffff_ffff,
        1 << 32,
        i64::MAX as u64,
        u64::MAX,
    ];
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let (mut ok, mut err) = (0, 0);
    for i in 0..6000 {
        let seed = &seeds[i % seeds.len()];
        let mut b = seed.clone();
        let n_mut = 1 + rng.below(4);
        for _ in 0..n_mut {
            match rng.below(6) {
                0 => {
                    let p = rng.below(b.len());
                    b[p] ^= 1 << rng.below(8);
                }
                1 => {
                    let p = rng.below(b.len());
                    b[p] = rng.next_u64() as u8;
                }
                2 => {
                    let len = rng.below(b.len() + 1);
                    b.truncate(len);
                }
                3 => {
                    // Overwrite 4 or 8 bytes with an interesting integer (lengths, counts, ids).
                    let v = interesting[rng.below(interesting.len())];
                    let w = if rng.below(2) == 0 { 4 } else { 8 };
                    if b.len() >= w {
                        let p = rng.below(b.len() - w + 1);
                        b[p..p + w].copy_from_slice(&v.to_le_bytes()[..w]);
                    }
                }
                4 => {
                    // Insert or delete a few bytes.
                    let p = rng.below(b.len() + 1);
                    if rng.below(2) == 0 {
                        let n = 1 + rng.below(8);
                        b.splice(p..p, (0..n).map(|_| rng.next_u64() as u8));
                    } else {
                        let end = (p + 1 + rng.below(8)).min(b.len());
                        b.drain(p..end);
                    }
                }
                _ => {
                    // Small integer tweak of a byte.
                    let p = rng.below(b.len());
                    b[p] = b[p].wrapping_add(rng.below(5) as u8).wrapping_sub(2);
                }
            }
            if b.is_empty() {
                break;
            }
        }
        match GgufFile::from_bytes(&b, "fuzz.gguf") {
            Ok(f) => {
                touch(&f);
                ok += 1;
            }
            Err(e) => {
                assert!(e.to_string().starts_with("fuzz.gguf: "), "{e}");
                err += 1;
            }
        }
    }
    println!("mutations: {ok} parsed, {err} rejected");
    assert!(ok > 0 && err > 0);
}

/// A `block_count` far beyond the file's tensors is refused before anything is sized by it
/// (it used to size per-layer tables: four billion of them aborted the process).
#[test]
fn absurd_block_count_is_an_error_not_an_allocation() {
    let bytes = Gguf::new(3)
        .kv("general.architecture", MetaValue::String("llama".into()))
        .kv("llama.block_count", MetaValue::U32(4_000_000_000))
        .kv("llama.embedding_length", MetaValue::U32(64))
        .kv("llama.feed_forward_length", MetaValue::U32(128))
        .kv("llama.attention.head_count", MetaValue::U32(2))
        .tensor("token_embd.weight", &[64, 3], Q8_0)
        .build();
    let file = parse(&bytes).unwrap();
    let err = weft_models::arch::DecoderConfig::from_gguf(&file)
        .unwrap_err()
        .to_string();
    assert!(err.contains("block_count 4000000000"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Real models (optional).
// ---------------------------------------------------------------------------------------------

fn test_model(name: &str) -> Option<PathBuf> {
    weft_test_support::model_path(name)
}

#[test]
fn real_model_smollm2() {
    let Some(path) = test_model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.tensors().len(), 272);
    assert_eq!(f.get_str("general.architecture").unwrap(), Some("llama"));
    let e = f.tensor("token_embd.weight").unwrap();
    assert_eq!(e.ggml_type, GgmlType::Q8_0);
    assert_eq!(e.dims, vec![576, 49152]);
    assert_eq!((e.row_len(), e.n_rows()), (576, 49152));
    assert_eq!(e.size, 576 / 32 * 34 * 49152);
    assert_eq!(f.tensor_data(e).len() as u64, e.size);
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens")
            .unwrap()
            .unwrap()
            .len(),
        49152
    );
    assert_eq!(f.get_u32("llama.block_count").unwrap(), Some(30));
    assert_eq!(f.data_offset(), 1785664);
    touch(&f);
}

#[test]
fn real_models_open() {
    for (name, n_tensors, arch) in [
        ("gemma-3-270m-q4_k_m.gguf", 236, "gemma3"),
        ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 291, "qwen2"),
    ] {
        let Some(path) = test_model(name) else {
            continue;
        };
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.tensors().len(), n_tensors, "{name}");
        assert_eq!(f.get_str("general.architecture").unwrap(), Some(arch));
        for t in f.tensors() {
            assert_eq!(f.tensor_data(t).len() as u64, t.size);
        }
        assert!(f.metadata().all(|(_, v)| !v.to_string().is_empty()));
    }
}
