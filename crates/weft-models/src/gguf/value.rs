use std::fmt;

/// One metadata value, with the GGUF value type it was stored as.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(MetaArray),
}

/// A metadata array: GGUF arrays are homogeneous, so each element type gets its own vector.
/// Arrays of arrays hold one [`MetaArray`] per element, each with its own element type.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<MetaArray>),
}

impl MetaValue {
    /// The GGUF name of the value's type: `u32`, `f32`, `string`, `array[string]`, ...
    pub fn type_name(&self) -> String {
        match self {
            MetaValue::Array(a) => a.type_name(),
            other => other.scalar_type_name().to_string(),
        }
    }

    fn scalar_type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }

    /// The value as an `i128` if it is an integer of any width or signedness.
    fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// True for the eight integer types.
    pub fn is_integer(&self) -> bool {
        self.as_integer().is_some()
    }

    /// Any integer value that is non-negative (so fits a `u64`).
    pub fn as_u64(&self) -> Option<u64> {
        self.as_integer().and_then(|v| u64::try_from(v).ok())
    }

    /// Any integer value that fits an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_integer().and_then(|v| i64::try_from(v).ok())
    }

    /// An `f32` or `f64` value, widened to `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl MetaArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::F64(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::String(v) => v.len(),
            MetaArray::Array(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The GGUF name of the element type: `u32`, `string`, `array`, ...
    pub fn element_type_name(&self) -> &'static str {
        match self {
            MetaArray::U8(_) => "u8",
            MetaArray::I8(_) => "i8",
            MetaArray::U16(_) => "u16",
            MetaArray::I16(_) => "i16",
            MetaArray::U32(_) => "u32",
            MetaArray::I32(_) => "i32",
            MetaArray::U64(_) => "u64",
            MetaArray::I64(_) => "i64",
            MetaArray::F32(_) => "f32",
            MetaArray::F64(_) => "f64",
            MetaArray::Bool(_) => "bool",
            MetaArray::String(_) => "string",
            MetaArray::Array(_) => "array",
        }
    }

    /// `array[<element type>]`.
    pub fn type_name(&self) -> String {
        format!("array[{}]", self.element_type_name())
    }
}

/// How many leading elements `Display` shows for an array before eliding the rest.
const DISPLAY_ARRAY_ITEMS: usize = 8;

fn write_str_value(f: &mut fmt::Formatter<'_>, s: &str, max_chars: Option<usize>) -> fmt::Result {
    f.write_str("\"")?;
    match max_chars {
        Some(max) if s.chars().count() > max => {
            let cut: String = s.chars().take(max).collect();
            write!(f, "{}\"... ({} bytes)", cut.escape_debug(), s.len())
        }
        _ => write!(f, "{}\"", s.escape_debug()),
    }
}

fn write_items<T>(
    f: &mut fmt::Formatter<'_>,
    items: &[T],
    max_chars: Option<usize>,
    mut item: impl FnMut(&mut fmt::Formatter<'_>, &T, Option<usize>) -> fmt::Result,
) -> fmt::Result {
    f.write_str("[")?;
    for (i, v) in items.iter().take(DISPLAY_ARRAY_ITEMS).enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        item(f, v, max_chars)?;
    }
    if items.len() > DISPLAY_ARRAY_ITEMS {
        write!(f, ", ... ({} items)", items.len())?;
    }
    f.write_str("]")
}

fn plain<T: fmt::Display>(f: &mut fmt::Formatter<'_>, v: &T, _: Option<usize>) -> fmt::Result {
    write!(f, "{v}")
}

/// Scalars print as themselves, strings quoted and escaped, arrays as their first
/// few elements followed by `... (N items)`. A precision (`{:.60}`) truncates strings
/// to that many characters.
impl fmt::Display for MetaValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaValue::U8(v) => write!(f, "{v}"),
            MetaValue::I8(v) => write!(f, "{v}"),
            MetaValue::U16(v) => write!(f, "{v}"),
            MetaValue::I16(v) => write!(f, "{v}"),
            MetaValue::U32(v) => write!(f, "{v}"),
            MetaValue::I32(v) => write!(f, "{v}"),
            MetaValue::U64(v) => write!(f, "{v}"),
            MetaValue::I64(v) => write!(f, "{v}"),
            MetaValue::F32(v) => write!(f, "{v}"),
            MetaValue::F64(v) => write!(f, "{v}"),
            MetaValue::Bool(v) => write!(f, "{v}"),
            MetaValue::String(s) => write_str_value(f, s, f.precision()),
            MetaValue::Array(a) => fmt::Display::fmt(a, f),
        }
    }
}

impl fmt::Display for MetaArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = f.precision();
        match self {
            MetaArray::U8(v) => write_items(f, v, p, plain),
            MetaArray::I8(v) => write_items(f, v, p, plain),
            MetaArray::U16(v) => write_items(f, v, p, plain),
            MetaArray::I16(v) => write_items(f, v, p, plain),
            MetaArray::U32(v) => write_items(f, v, p, plain),
            MetaArray::I32(v) => write_items(f, v, p, plain),
            MetaArray::U64(v) => write_items(f, v, p, plain),
            MetaArray::I64(v) => write_items(f, v, p, plain),
            MetaArray::F32(v) => write_items(f, v, p, plain),
            MetaArray::F64(v) => write_items(f, v, p, plain),
            MetaArray::Bool(v) => write_items(f, v, p, plain),
            MetaArray::String(v) => write_items(f, v, p, |f, s, p| write_str_value(f, s, p)),
            MetaArray::Array(v) => write_items(f, v, p, |f, a, p| match p {
                Some(p) => write!(f, "{a:.p$}"),
                None => write!(f, "{a}"),
            }),
        }
    }
}
