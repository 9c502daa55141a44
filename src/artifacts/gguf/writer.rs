//! The GGUF v3 writer: header first, then each tensor's data in the order the header lists them.

use std::collections::VecDeque;
use std::io::Write;

use super::{
    DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, GgmlType, GgufArray, GgufError, GgufValue,
};

/// A tensor to be written: name, shape in ggml order (`dims[0]` is the row length) and type.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dims: &[u64], ggml_type: GgmlType) -> Self {
        TensorSpec {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type,
        }
    }

    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    pub fn size(&self) -> Result<u64, GgufError> {
        self.dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|e| self.ggml_type.bytes_for(e))
            .ok_or_else(|| {
                GgufError::WriteUsage(format!(
                    "tensor {:?}: shape {:?} does not fit type {}",
                    self.name, self.dims, self.ggml_type
                ))
            })
    }
}

/// Writes one GGUF file.
///
/// # Caveats
/// Tensor data must be given in header order with exactly the size the shape and type imply;
/// [`GgufWriter::finish`] fails if any tensor is missing.
pub struct GgufWriter<W: Write> {
    w: W,
    pos: u64,
    alignment: u64,
    pending: VecDeque<(String, u64)>,
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header: magic, version, key/values (in the given order) and tensor infos.
    /// The alignment is `general.alignment` when given, else 32.
    pub fn new(
        w: W,
        metadata: &[(String, GgufValue)],
        tensors: &[TensorSpec],
    ) -> Result<Self, GgufError> {
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => {
                    return Err(GgufError::WriteUsage(format!(
                        "bad general.alignment {v:?}"
                    )));
                }
            },
            None => DEFAULT_ALIGNMENT,
        };
        let mut me = GgufWriter {
            w,
            pos: 0,
            alignment,
            pending: VecDeque::new(),
        };
        me.put(&GGUF_MAGIC)?;
        me.put(&GGUF_VERSION.to_le_bytes())?;
        me.put(&(tensors.len() as u64).to_le_bytes())?;
        me.put(&(metadata.len() as u64).to_le_bytes())?;
        for (k, v) in metadata {
            me.string(k)?;
            me.put(&v.value_type().as_u32().to_le_bytes())?;
            me.value(v)?;
        }
        let mut offset = 0u64;
        for t in tensors {
            if t.dims.is_empty() || t.dims.len() > 4 {
                return Err(GgufError::WriteUsage(format!(
                    "tensor {:?} has {} dimensions, expected 1 to 4",
                    t.name,
                    t.dims.len()
                )));
            }
            let size = t.size()?;
            me.string(&t.name)?;
            me.put(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                me.put(&d.to_le_bytes())?;
            }
            me.put(&t.ggml_type.0.to_le_bytes())?;
            me.put(&offset.to_le_bytes())?;
            offset = (offset + size).div_ceil(alignment) * alignment;
            me.pending.push_back((t.name.clone(), size));
        }
        me.pad()?;
        Ok(me)
    }

    fn put(&mut self, b: &[u8]) -> Result<(), GgufError> {
        self.w.write_all(b).map_err(GgufError::Write)?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<(), GgufError> {
        let n = self.pos.div_ceil(self.alignment) * self.alignment - self.pos;
        const ZEROS: [u8; 256] = [0; 256];
        let mut left = n as usize;
        while left > 0 {
            let k = left.min(ZEROS.len());
            self.put(&ZEROS[..k])?;
            left -= k;
        }
        Ok(())
    }

    fn string(&mut self, s: &str) -> Result<(), GgufError> {
        self.put(&(s.len() as u64).to_le_bytes())?;
        self.put(s.as_bytes())
    }

    fn value(&mut self, v: &GgufValue) -> Result<(), GgufError> {
        match v {
            GgufValue::U8(x) => self.put(&x.to_le_bytes()),
            GgufValue::I8(x) => self.put(&x.to_le_bytes()),
            GgufValue::U16(x) => self.put(&x.to_le_bytes()),
            GgufValue::I16(x) => self.put(&x.to_le_bytes()),
            GgufValue::U32(x) => self.put(&x.to_le_bytes()),
            GgufValue::I32(x) => self.put(&x.to_le_bytes()),
            GgufValue::F32(x) => self.put(&x.to_le_bytes()),
            GgufValue::Bool(x) => self.put(&[u8::from(*x)]),
            GgufValue::String(s) => self.string(s),
            GgufValue::Array(a) => self.array(a),
            GgufValue::U64(x) => self.put(&x.to_le_bytes()),
            GgufValue::I64(x) => self.put(&x.to_le_bytes()),
            GgufValue::F64(x) => self.put(&x.to_le_bytes()),
        }
    }

    fn array(&mut self, a: &GgufArray) -> Result<(), GgufError> {
        self.put(&a.elem_type().as_u32().to_le_bytes())?;
        self.put(&(a.len() as u64).to_le_bytes())?;
        macro_rules! each {
            ($v:expr) => {{
                for x in $v {
                    self.put(&x.to_le_bytes())?;
                }
                Ok(())
            }};
        }
        match a {
            GgufArray::U8(v) => self.put(v),
            GgufArray::I8(v) => each!(v),
            GgufArray::U16(v) => each!(v),
            GgufArray::I16(v) => each!(v),
            GgufArray::U32(v) => each!(v),
            GgufArray::I32(v) => each!(v),
            GgufArray::F32(v) => each!(v),
            GgufArray::Bool(v) => each!(v.iter().map(|&b| u8::from(b))),
            GgufArray::String(v) => {
                for s in v {
                    self.string(s)?;
                }
                Ok(())
            }
            GgufArray::Array(v) => {
                for inner in v {
                    self.array(inner)?;
                }
                Ok(())
            }
            GgufArray::U64(v) => each!(v),
            GgufArray::I64(v) => each!(v),
            GgufArray::F64(v) => each!(v),
        }
    }

    /// Writes the next tensor's data (exactly its size), then pads to the alignment.
    pub fn write_tensor_data(&mut self, data: &[u8]) -> Result<(), GgufError> {
        let Some((name, size)) = self.pending.pop_front() else {
            return Err(GgufError::WriteUsage(
                "more tensor data than tensors in the header".into(),
            ));
        };
        if data.len() as u64 != size {
            return Err(GgufError::WriteUsage(format!(
                "tensor {name:?} needs {size} bytes of data, got {}",
                data.len()
            )));
        }
        self.put(data)?;
        self.pad()
    }

    /// Checks every tensor was written, flushes, and returns the inner writer.
    pub fn finish(mut self) -> Result<W, GgufError> {
        if let Some((name, _)) = self.pending.front() {
            return Err(GgufError::WriteUsage(format!(
                "no data written for tensor {name:?} ({} missing)",
                self.pending.len()
            )));
        }
        self.w.flush().map_err(GgufError::Write)?;
        Ok(self.w)
    }
}
