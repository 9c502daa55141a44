use std::io::Cursor;

use super::*;

fn kv(k: &str, v: GgufValue) -> (String, GgufValue) {
    (k.to_string(), v)
}

fn sample() -> (Vec<(String, GgufValue)>, Vec<TensorSpec>) {
    let md = vec![
        kv("general.architecture", GgufValue::String("llama".into())),
        kv("a.u8", GgufValue::U8(7)),
        kv("a.i8", GgufValue::I8(-7)),
        kv("a.u16", GgufValue::U16(700)),
        kv("a.i16", GgufValue::I16(-700)),
        kv("llama.block_count", GgufValue::U32(2)),
        kv("a.i32", GgufValue::I32(-70000)),
        kv("a.f32", GgufValue::F32(1.5)),
        kv("a.bool", GgufValue::Bool(true)),
        kv("a.u64", GgufValue::U64(1 << 40)),
        kv("a.i64", GgufValue::I64(-(1 << 40))),
        kv("a.f64", GgufValue::F64(-2.25)),
        kv(
            "a.strings",
            GgufValue::Array(GgufArray::String(vec!["x".into(), "".into(), "ü".into()])),
        ),
        kv(
            "a.nested",
            GgufValue::Array(GgufArray::Array(vec![
                GgufArray::I32(vec![1, -2]),
                GgufArray::Bool(vec![true, false]),
                GgufArray::F64(vec![]),
            ])),
        ),
        kv(
            "llama.attention.head_count",
            GgufValue::Array(GgufArray::U32(vec![4, 8])),
        ),
        kv("general.file_type", GgufValue::U32(1)),
        kv("general.alignment", GgufValue::U32(64)),
    ];
    let tensors = vec![
        TensorSpec::new("a", &[3, 2], GgmlType::F32),
        TensorSpec::new("b", &[5], GgmlType::F16),
        TensorSpec::new("q", &[64, 2], GgmlType(8)),
    ];
    (md, tensors)
}

fn write_sample() -> Vec<u8> {
    let (md, tensors) = sample();
    let mut w = GgufWriter::new(Vec::new(), &md, &tensors).unwrap();
    w.write_tensor_data(&[1u8; 24]).unwrap();
    w.write_tensor_data(&[2u8; 10]).unwrap();
    w.write_tensor_data(&[3u8; 136]).unwrap();
    w.finish().unwrap()
}

#[test]
fn round_trip_every_value_type() {
    let bytes = write_sample();
    let h = read_from(&mut Cursor::new(&bytes), &Limits::default()).unwrap();
    let (md, tensors) = sample();
    assert_eq!(h.version, 3);
    assert_eq!(h.metadata, md);
    assert_eq!(h.alignment, 64);
    assert_eq!(h.data_offset % 64, 0);
    assert_eq!(h.tensors.len(), 3);
    for (got, want) in h.tensors.iter().zip(&tensors) {
        assert_eq!(got.name, want.name);
        assert_eq!(got.dims, want.dims);
        assert_eq!(got.ggml_type, want.ggml_type);
        assert_eq!(got.offset % 64, 0);
    }
    assert_eq!(h.tensors[2].size, 136);
    let start = (h.data_offset + h.tensors[1].offset) as usize;
    assert_eq!(&bytes[start..start + 10], &[2u8; 10]);
    let info = h.info();
    assert_eq!(info.architecture.as_deref(), Some("llama"));
    assert_eq!(info.parameter_count, Some(6 + 5 + 128));
    assert_eq!(info.quantization.as_deref(), Some("F16"));
    assert_eq!(info.layers, Some(2));
    assert_eq!(
        info.head_count,
        Some(8),
        "per-layer arrays report their maximum"
    );
    assert_eq!(info.head_count_kv, Some(8));
}

#[test]
fn quantization_falls_back_to_the_dominant_tensor_type() {
    let tensors = [
        TensorSpec::new("big", &[256, 4], GgmlType(12)),
        TensorSpec::new("norm", &[16], GgmlType::F32),
    ];
    let mut w = GgufWriter::new(Vec::new(), &[], &tensors).unwrap();
    w.write_tensor_data(&[0; 576]).unwrap();
    w.write_tensor_data(&[0; 64]).unwrap();
    let bytes = w.finish().unwrap();
    let h = read_from(&mut Cursor::new(&bytes), &Limits::default()).unwrap();
    assert_eq!(h.quantization().as_deref(), Some("Q4_K"));
}

#[test]
fn writer_refuses_wrong_data() {
    let tensors = [TensorSpec::new("a", &[4], GgmlType::F32)];
    let mut w = GgufWriter::new(Vec::new(), &[], &tensors).unwrap();
    assert!(w.write_tensor_data(&[0; 15]).is_err());
    let w = GgufWriter::new(Vec::new(), &[], &tensors).unwrap();
    assert!(w.finish().is_err(), "a missing tensor is an error");
    assert!(GgufWriter::new(Vec::new(), &[], &[TensorSpec::new("q", &[10], GgmlType(8))]).is_err());
}

#[test]
fn truncated_data_is_detected() {
    let bytes = write_sample();
    let h = read_from(&mut Cursor::new(&bytes), &Limits::default()).unwrap();
    let q = &h.tensors[2];
    let cut = (h.data_offset + q.offset + q.size - 1) as usize;
    let err = read_from(&mut Cursor::new(&bytes[..cut]), &Limits::default()).unwrap_err();
    assert!(matches!(err, GgufError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("tensor \"q\""), "{err}");
}
