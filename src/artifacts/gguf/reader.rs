//! The bounded GGUF header reader.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};

use super::{
    DEFAULT_ALIGNMENT, GGUF_MAGIC, GgmlType, GgufArray, GgufError, GgufHeader, GgufValue,
    GgufValueType, TensorInfo,
};

/// Bounds on what the reader accepts, on top of "never more than the bytes left in the file".
///
/// The defaults are far above real models (a 256k-token vocabulary, a few thousand tensors, a
/// header of tens of MiB) and far below what would hurt a workstation.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_string_len: u64,
    pub max_array_len: u64,
    pub max_kv_count: u64,
    pub max_tensor_count: u64,
    /// Arrays of arrays deeper than this are refused (keeps the recursion shallow).
    pub max_array_depth: u32,
    /// The header (everything before the tensor data) may not be longer than this.
    pub max_header_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_string_len: 16 << 20,
            max_array_len: 1 << 24,
            max_kv_count: 1 << 16,
            max_tensor_count: 1 << 20,
            max_array_depth: 4,
            max_header_bytes: 512 << 20,
        }
    }
}

/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Smallest possible tensor info: name length (8) + n_dims (4) + type (4) + offset (8).
const MIN_TENSOR_INFO: u64 = 24;
/// Smallest possible key/value: key length (8) + type (4) + a one-byte value.
const MIN_KV: u64 = 13;

struct Cursor<'a, R> {
    r: &'a mut R,
    pos: u64,
    len: u64,
    limits: &'a Limits,
}

impl<R: Read> Cursor<'_, R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn need(&self, n: u64, what: &str) -> Result<(), GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what.to_string(),
                offset: self.pos,
                needed: n,
                remaining: self.remaining(),
            });
        }
        let end = self.pos.saturating_add(n);
        if end > self.limits.max_header_bytes {
            return Err(GgufError::TooLarge {
                what: format!("the header (reading {what})"),
                offset: self.pos,
                value: end,
                limit: self.limits.max_header_bytes,
            });
        }
        Ok(())
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<(), GgufError> {
        self.need(buf.len() as u64, what)?;
        self.r.read_exact(buf).map_err(|source| {
            if source.kind() == std::io::ErrorKind::UnexpectedEof {
                GgufError::Truncated {
                    what: what.to_string(),
                    offset: self.pos,
                    needed: buf.len() as u64,
                    remaining: 0,
                }
            } else {
                GgufError::Io {
                    offset: self.pos,
                    source,
                }
            }
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut b = [0u8; N];
        self.fill(&mut b, what)?;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must fit the limit and, at `min_each` bytes per item, the rest of the file.
    fn count(&mut self, what: &str, limit: u64, min_each: u64) -> Result<u64, GgufError> {
        let offset = self.pos;
        let n = self.u64(what)?;
        if n > limit {
            return Err(GgufError::TooLarge {
                what: what.to_string(),
                offset,
                value: n,
                limit,
            });
        }
        let needed = n.saturating_mul(min_each);
        if needed > self.remaining() {
            return Err(GgufError::Truncated {
                what: format!("{what} ({n} items)"),
                offset,
                needed,
                remaining: self.remaining(),
            });
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let offset = self.pos;
        let n = self.count(what, self.limits.max_string_len, 1)?;
        // Bounded above by max_string_len and by the bytes left in the file.
        let mut buf = vec![0u8; n as usize];
        self.fill(&mut buf, what)?;
        String::from_utf8(buf).map_err(|_| GgufError::BadUtf8 {
            what: what.to_string(),
            offset,
        })
    }

    fn value_type(&mut self, what: &str) -> Result<GgufValueType, GgufError> {
        let offset = self.pos;
        let v = self.u32(what)?;
        GgufValueType::from_u32(v).ok_or_else(|| GgufError::BadValueType {
            what: what.to_string(),
            offset,
            value: v,
        })
    }

    fn value(&mut self, t: GgufValueType, what: &str) -> Result<GgufValue, GgufError> {
        use GgufValueType as T;
        Ok(match t {
            T::U8 => GgufValue::U8(u8::from_le_bytes(self.array(what)?)),
            T::I8 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            T::U16 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            T::I16 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            T::U32 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            T::I32 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            T::F32 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            T::Bool => GgufValue::Bool(self.array::<1>(what)?[0] != 0),
            T::String => GgufValue::String(self.string(what)?),
            T::Array => GgufValue::Array(self.gguf_array(what, 1)?),
            T::U64 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            T::I64 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            T::F64 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
        })
    }

    fn gguf_array(&mut self, what: &str, depth: u32) -> Result<GgufArray, GgufError> {
        if depth > self.limits.max_array_depth {
            return Err(GgufError::TooDeep {
                offset: self.pos,
                limit: self.limits.max_array_depth,
            });
        }
        let t = self.value_type(what)?;
        let n = self.count(what, self.limits.max_array_len, t.min_size())?;
        // Grow as elements arrive rather than trusting the count for a large reservation.
        let cap = n.min(1 << 16) as usize;
        macro_rules! read_all {
            ($variant:ident, $ty:ty) => {{
                let mut v: Vec<$ty> = Vec::with_capacity(cap);
                for _ in 0..n {
                    v.push(<$ty>::from_le_bytes(self.array(what)?));
                }
                GgufArray::$variant(v)
            }};
        }
        use GgufValueType as T;
        Ok(match t {
            T::U8 => read_all!(U8, u8),
            T::I8 => read_all!(I8, i8),
            T::U16 => read_all!(U16, u16),
            T::I16 => read_all!(I16, i16),
            T::U32 => read_all!(U32, u32),
            T::I32 => read_all!(I32, i32),
            T::F32 => read_all!(F32, f32),
            T::U64 => read_all!(U64, u64),
            T::I64 => read_all!(I64, i64),
            T::F64 => read_all!(F64, f64),
            T::Bool => {
                let mut v = Vec::with_capacity(cap);
                for _ in 0..n {
                    v.push(self.array::<1>(what)?[0] != 0);
                }
                GgufArray::Bool(v)
            }
            T::String => {
                let mut v = Vec::with_capacity(cap);
                for _ in 0..n {
                    v.push(self.string(what)?);
                }
                GgufArray::String(v)
            }
            T::Array => {
                let mut v = Vec::with_capacity(cap.min(1024));
                for _ in 0..n {
                    v.push(self.gguf_array(what, depth + 1)?);
                }
                GgufArray::Array(v)
            }
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo, GgufError> {
        let name = self.string("tensor name")?;
        let bad = |reason: String| GgufError::BadTensor {
            name: name.clone(),
            reason,
        };
        let n_dims = self.u32("tensor dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(bad(format!(
                "{n_dims} dimensions, expected 1 to {MAX_DIMS}"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64("tensor dimension")?);
        }
        let type_id = self.u32("tensor type")?;
        let offset = self.u64("tensor offset")?;
        let ggml_type = GgmlType(type_id);
        let Some(block) = ggml_type.block_size() else {
            return Err(bad(format!("unknown ggml type {type_id}")));
        };
        let elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&e| e <= i64::MAX as u64)
            .ok_or_else(|| bad(format!("shape {dims:?} has too many elements")))?;
        if dims[0] % block != 0 {
            return Err(bad(format!(
                "row length {} is not a multiple of the {ggml_type} block size {block}",
                dims[0]
            )));
        }
        let size = ggml_type
            .bytes_for(elements)
            .ok_or_else(|| bad(format!("shape {dims:?} is too large")))?;
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            size,
        })
    }
}

/// Reads a GGUF header from any seekable stream (a file, a `Cursor<&[u8]>`).
///
/// The stream's length is taken from `seek(End)`; reading starts at offset 0.
pub fn read_from<R: Read + Seek>(r: &mut R, limits: &Limits) -> Result<GgufHeader, GgufError> {
    let len = r
        .seek(SeekFrom::End(0))
        .and_then(|len| r.seek(SeekFrom::Start(0)).map(|_| len))
        .map_err(|source| GgufError::Io { offset: 0, source })?;
    let mut c = Cursor {
        r,
        pos: 0,
        len,
        limits,
    };

    let mut magic = [0u8; 4];
    let got = (len as usize).min(4);
    c.fill(&mut magic[..got], "magic")?;
    if got < 4 || magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic {
            found: magic[..got].to_vec(),
        });
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let tensor_count = c.count("tensor count", limits.max_tensor_count, MIN_TENSOR_INFO)?;
    let kv_count = c.count("key/value count", limits.max_kv_count, MIN_KV)?;

    let mut metadata = Vec::with_capacity(kv_count.min(1024) as usize);
    let mut keys = HashSet::new();
    for _ in 0..kv_count {
        let key = c.string("metadata key")?;
        let t = c.value_type(&format!("value type of key {key:?}"))?;
        let v = c.value(t, &format!("value of key {key:?}"))?;
        if !keys.insert(key.clone()) {
            return Err(GgufError::DuplicateKey { key });
        }
        metadata.push((key, v));
    }

    let mut tensors = Vec::with_capacity(tensor_count.min(4096) as usize);
    let mut names = HashSet::new();
    for _ in 0..tensor_count {
        let t = c.tensor_info()?;
        if !names.insert(t.name.clone()) {
            return Err(GgufError::DuplicateTensor { name: t.name });
        }
        tensors.push(t);
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => {
            let a = v.as_u64().ok_or_else(|| GgufError::WrongKeyType {
                key: "general.alignment".into(),
                found: format!("{:?}", v.value_type()),
                expected: "an unsigned integer",
            })?;
            if a == 0 || !a.is_power_of_two() {
                return Err(GgufError::BadAlignment(a));
            }
            a
        }
    };
    let data_offset = c.pos.div_ceil(alignment).saturating_mul(alignment);
    let data_len = len.saturating_sub(data_offset);
    for t in &tensors {
        if t.offset % alignment != 0 {
            return Err(GgufError::BadTensor {
                name: t.name.clone(),
                reason: format!(
                    "data offset {} is not a multiple of the alignment {alignment}",
                    t.offset
                ),
            });
        }
        let end = t.offset.checked_add(t.size);
        if end.is_none_or(|e| e > data_len) {
            return Err(GgufError::Truncated {
                what: format!("data of tensor {:?}", t.name),
                offset: data_offset.saturating_add(t.offset),
                needed: t.size,
                remaining: data_len.saturating_sub(t.offset),
            });
        }
    }

    Ok(GgufHeader {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
        file_size: len,
    })
}
