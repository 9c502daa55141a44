//! GGUF (version 3, also reads 2): a bounded streaming reader and a writer of our own.
//!
//! The reader takes any `Read + Seek`, reads the header (magic, version, key/values, tensor infos)
//! and checks that every tensor's data lies inside the file. It never trusts a count or a length:
//! each is checked against the bytes left in the file and against [`Limits`] before anything is
//! allocated, so a truncated or hostile file gives a [`GgufError`], never a panic or a huge
//! allocation.

mod reader;
mod types;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use reader::{Limits, read_from};
pub use types::{GgmlType, GgufValueType, file_type_name};
pub use writer::{GgufWriter, TensorSpec};

use crate::api::model::GgufInfo;

/// `GGUF` read as a little-endian u32.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The version this crate writes.
pub const GGUF_VERSION: u32 = 3;
/// Tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<GgufError>,
    },
    #[error("read error at byte {offset}: {source}")]
    Io { offset: u64, source: std::io::Error },
    #[error("not a GGUF file: the first bytes are {found:02x?}, expected \"GGUF\" (47 47 55 46)")]
    BadMagic { found: Vec<u8> },
    #[error("unsupported GGUF version {0}: versions 2 and 3 are supported")]
    UnsupportedVersion(u32),
    #[error(
        "truncated file: {what} at byte {offset} needs {needed} bytes but only {remaining} remain (an interrupted download?)"
    )]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        remaining: u64,
    },
    #[error("{what} at byte {offset} is {value}, more than the limit of {limit}")]
    TooLarge {
        what: String,
        offset: u64,
        value: u64,
        limit: u64,
    },
    #[error("unknown value type {value} for {what} at byte {offset}: expected 0..=12")]
    BadValueType {
        what: String,
        offset: u64,
        value: u32,
    },
    #[error("{what} at byte {offset} is not valid UTF-8")]
    BadUtf8 { what: String, offset: u64 },
    #[error("arrays nested deeper than {limit} levels at byte {offset}")]
    TooDeep { offset: u64, limit: u32 },
    #[error("duplicate metadata key {key:?}")]
    DuplicateKey { key: String },
    #[error("duplicate tensor name {name:?}")]
    DuplicateTensor { name: String },
    #[error("general.alignment is {0}: it must be a non-zero power of two")]
    BadAlignment(u64),
    #[error("metadata key {key:?} has type {found}, expected {expected}")]
    WrongKeyType {
        key: String,
        found: String,
        expected: &'static str,
    },
    #[error("tensor {name:?}: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("cannot write GGUF: {0}")]
    Write(#[source] std::io::Error),
    #[error("cannot write GGUF: {0}")]
    WriteUsage(String),
}

/// A homogeneous array value. Elements are stored typed, so memory stays close to the file's size.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    /// An array of arrays (allowed by the format; nesting depth is bounded by [`Limits`]).
    Array(Vec<GgufArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl GgufArray {
    pub fn elem_type(&self) -> GgufValueType {
        use GgufValueType as T;
        match self {
            GgufArray::U8(_) => T::U8,
            GgufArray::I8(_) => T::I8,
            GgufArray::U16(_) => T::U16,
            GgufArray::I16(_) => T::I16,
            GgufArray::U32(_) => T::U32,
            GgufArray::I32(_) => T::I32,
            GgufArray::F32(_) => T::F32,
            GgufArray::Bool(_) => T::Bool,
            GgufArray::String(_) => T::String,
            GgufArray::Array(_) => T::Array,
            GgufArray::U64(_) => T::U64,
            GgufArray::I64(_) => T::I64,
            GgufArray::F64(_) => T::F64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The largest element of an integer array, as u64 (per-layer head counts use this).
    fn max_uint(&self) -> Option<u64> {
        let it: Box<dyn Iterator<Item = Option<u64>>> = match self {
            GgufArray::U8(v) => Box::new(v.iter().map(|&x| Some(x as u64))),
            GgufArray::U16(v) => Box::new(v.iter().map(|&x| Some(x as u64))),
            GgufArray::U32(v) => Box::new(v.iter().map(|&x| Some(x as u64))),
            GgufArray::U64(v) => Box::new(v.iter().map(|&x| Some(x))),
            GgufArray::I8(v) => Box::new(v.iter().map(|&x| u64::try_from(x).ok())),
            GgufArray::I16(v) => Box::new(v.iter().map(|&x| u64::try_from(x).ok())),
            GgufArray::I32(v) => Box::new(v.iter().map(|&x| u64::try_from(x).ok())),
            GgufArray::I64(v) => Box::new(v.iter().map(|&x| u64::try_from(x).ok())),
            _ => return None,
        };
        it.collect::<Option<Vec<u64>>>()?.into_iter().max()
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(GgufArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    pub fn value_type(&self) -> GgufValueType {
        use GgufValueType as T;
        match self {
            GgufValue::U8(_) => T::U8,
            GgufValue::I8(_) => T::I8,
            GgufValue::U16(_) => T::U16,
            GgufValue::I16(_) => T::I16,
            GgufValue::U32(_) => T::U32,
            GgufValue::I32(_) => T::I32,
            GgufValue::F32(_) => T::F32,
            GgufValue::Bool(_) => T::Bool,
            GgufValue::String(_) => T::String,
            GgufValue::Array(_) => T::Array,
            GgufValue::U64(_) => T::U64,
            GgufValue::I64(_) => T::I64,
            GgufValue::F64(_) => T::F64,
        }
    }

    /// Any non-negative integer value as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// A tensor's description in the header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (row) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data, relative to [`GgufHeader::data_offset`].
    pub offset: u64,
    /// Bytes of data (computed from the shape and type).
    pub size: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        // Overflow was ruled out when the header was read.
        self.dims.iter().product()
    }
}

/// Everything before the tensor data.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufHeader {
    pub version: u32,
    /// Key/values in file order.
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute file offset where tensor data begins.
    pub data_offset: u64,
    /// Length of the file the header was read from.
    pub file_size: u64,
}

/// Reads and validates the header of the GGUF file at `path`.
///
/// # Guarantees
/// Returns an error, never panics, for any content; memory use is bounded by the file size and
/// [`Limits::default`]. Tensor data is not read, but every tensor must lie inside the file.
pub fn read_header(path: &Path) -> Result<GgufHeader, GgufError> {
    let file = std::fs::File::open(path).map_err(|source| GgufError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut r = std::io::BufReader::with_capacity(1 << 16, file);
    read_from(&mut r, &Limits::default()).map_err(|e| GgufError::InFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

impl GgufHeader {
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(GgufValue::as_str)
    }

    /// An integer key; for a per-layer array, its largest element.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        match self.get(key)? {
            GgufValue::Array(a) => a.max_uint(),
            v => v.as_u64(),
        }
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(GgufValue::as_f64)
    }

    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// `{architecture}.{suffix}` as an integer.
    pub fn arch_u64(&self, suffix: &str) -> Option<u64> {
        let arch = self.architecture()?;
        self.get_u64(&format!("{arch}.{suffix}"))
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Elements over all tensors.
    pub fn parameter_count(&self) -> u64 {
        self.tensors
            .iter()
            .fold(0u64, |acc, t| acc.saturating_add(t.elements()))
    }

    /// Bytes of tensor data (excluding padding).
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .fold(0u64, |acc, t| acc.saturating_add(t.size))
    }

    /// The quantization: `general.file_type` when present, else the type holding most bytes.
    pub fn quantization(&self) -> Option<String> {
        if let Some(name) = self.get_u64("general.file_type").and_then(file_type_name) {
            return Some(name.to_string());
        }
        let mut by_type: BTreeMap<GgmlType, u64> = BTreeMap::new();
        for t in &self.tensors {
            *by_type.entry(t.ggml_type).or_default() += t.size;
        }
        by_type
            .into_iter()
            .max_by_key(|&(_, bytes)| bytes)
            .map(|(t, _)| t.to_string())
    }

    /// The facts Model status reports.
    pub fn info(&self) -> GgufInfo {
        GgufInfo {
            architecture: self.architecture().map(String::from),
            parameter_count: Some(self.parameter_count()),
            quantization: self.quantization(),
            context_length: self.arch_u64("context_length"),
            layers: self.arch_u64("block_count"),
            head_count: self.arch_u64("attention.head_count"),
            head_count_kv: self
                .arch_u64("attention.head_count_kv")
                .or_else(|| self.arch_u64("attention.head_count")),
            embedding_length: self.arch_u64("embedding_length"),
        }
    }
}

#[cfg(test)]
mod tests;
