//! A corpus of broken GGUF files: every one gives a clean error (no panic, no huge allocation),
//! and the message says what is wrong.

use std::io::Cursor;

use localaistack::artifacts::gguf::{
    GgmlType, GgufArray, GgufError, GgufValue, GgufWriter, Limits, TensorSpec, read_from,
    read_header,
};
use localaistack::artifacts::testmodel::{TestModelConfig, write_to};

fn read(bytes: &[u8]) -> Result<localaistack::artifacts::gguf::GgufHeader, GgufError> {
    read_from(&mut Cursor::new(bytes), &Limits::default())
}

/// A small valid file whose layout is known: key "general.architecture" first, then the rest.
fn small() -> Vec<u8> {
    let md = vec![
        (
            "general.architecture".to_string(),
            GgufValue::String("llama".into()),
        ),
        (
            "tokenizer.ggml.tokens".to_string(),
            GgufValue::Array(GgufArray::String(vec!["a".into(), "b".into()])),
        ),
    ];
    let tensors = [TensorSpec::new("t", &[4, 2], GgmlType::F32)];
    let mut w = GgufWriter::new(Vec::new(), &md, &tensors).unwrap();
    w.write_tensor_data(&[0u8; 32]).unwrap();
    w.finish().unwrap()
}

// Offsets in small(): magic 0, version 4, tensor count 8, kv count 16, first key length 24,
// key 32..52, value type 52, string length 56, "llama" 64..69, second key length 69,
// key 77..98, value type 98 (array), element type 102, array length 106, first element 114.
const FIRST_KEY_LEN: usize = 24;
const FIRST_VALUE_TYPE: usize = 52;
const SECOND_KEY_TYPE: usize = 98;
const ARRAY_ELEM_TYPE: usize = 102;
const ARRAY_LEN: usize = 106;

fn patch(mut b: Vec<u8>, at: usize, with: &[u8]) -> Vec<u8> {
    b[at..at + with.len()].copy_from_slice(with);
    b
}

/// The offset of the tensor info (after the last key/value).
fn tensor_info_offset(b: &[u8]) -> usize {
    let needle = [1u8, 0, 0, 0, 0, 0, 0, 0, b't'];
    b.windows(needle.len())
        .position(|w| w == needle)
        .expect("tensor name")
}

#[test]
fn layout_of_the_small_file_is_as_the_patches_assume() {
    let b = small();
    assert_eq!(&b[32..52], b"general.architecture");
    assert_eq!(&b[64..69], b"llama");
    assert_eq!(b[SECOND_KEY_TYPE], 9);
    assert_eq!(b[ARRAY_ELEM_TYPE], 8);
    assert_eq!(b[ARRAY_LEN], 2);
    let h = read(&b).unwrap();
    assert_eq!(h.tensors[0].name, "t");
}

#[test]
fn broken_files_give_clean_errors() {
    let good = small();
    let ti = tensor_info_offset(&good);
    // tensor info: name len 8, "t" 1, n_dims 4, dims 2x8, type 4, offset 8
    let n_dims_at = ti + 9;
    let dims_at = ti + 13;
    let type_at = ti + 29;
    let offset_at = ti + 33;
    let u64le = |v: u64| v.to_le_bytes().to_vec();
    let u32le = |v: u32| v.to_le_bytes().to_vec();

    let mut nested = good[..24].to_vec();
    // kv count 1: key "k", type array of arrays of arrays... deeper than the limit.
    nested[8..16].copy_from_slice(&0u64.to_le_bytes());
    nested[16..24].copy_from_slice(&1u64.to_le_bytes());
    nested.extend(u64le(1));
    nested.push(b'k');
    nested.extend(u32le(9));
    for _ in 0..10 {
        nested.extend(u32le(9));
        nested.extend(u64le(1));
    }
    nested.extend(vec![0u8; 64]);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty file", vec![], "not a GGUF file"),
        ("two bytes", b"GG".to_vec(), "not a GGUF file"),
        (
            "wrong magic",
            patch(good.clone(), 0, b"GGUX"),
            "not a GGUF file",
        ),
        (
            "png",
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec(),
            "not a GGUF file",
        ),
        ("all zeros", vec![0u8; 4096], "not a GGUF file"),
        (
            "version 1",
            patch(good.clone(), 4, &u32le(1)),
            "unsupported GGUF version 1",
        ),
        (
            "version max",
            patch(good.clone(), 4, &u32le(u32::MAX)),
            "unsupported GGUF version",
        ),
        (
            "tensor count max",
            patch(good.clone(), 8, &u64le(u64::MAX)),
            "tensor count",
        ),
        (
            "tensor count big",
            patch(good.clone(), 8, &u64le(1 << 19)),
            "tensor count",
        ),
        (
            "kv count max",
            patch(good.clone(), 16, &u64le(u64::MAX)),
            "key/value count",
        ),
        (
            "kv count big",
            patch(good.clone(), 16, &u64le(1000)),
            "key/value count",
        ),
        (
            "key length max",
            patch(good.clone(), FIRST_KEY_LEN, &u64le(u64::MAX)),
            "metadata key",
        ),
        (
            "key length past end",
            patch(good.clone(), FIRST_KEY_LEN, &u64le(1 << 20)),
            "truncated",
        ),
        (
            "key not utf-8",
            patch(good.clone(), 32, &[0xff, 0xfe]),
            "not valid UTF-8",
        ),
        (
            "value type 13",
            patch(good.clone(), FIRST_VALUE_TYPE, &u32le(13)),
            "unknown value type 13",
        ),
        (
            "value type max",
            patch(good.clone(), FIRST_VALUE_TYPE, &u32le(u32::MAX)),
            "unknown value type",
        ),
        (
            "string length max",
            patch(good.clone(), 56, &u64le(u64::MAX)),
            "more than the limit",
        ),
        (
            "array element type 99",
            patch(good.clone(), ARRAY_ELEM_TYPE, &u32le(99)),
            "unknown value type 99",
        ),
        (
            "array length max",
            patch(good.clone(), ARRAY_LEN, &u64le(u64::MAX)),
            "more than the limit",
        ),
        (
            "array length past end",
            patch(good.clone(), ARRAY_LEN, &u64le(1 << 22)),
            "truncated",
        ),
        (
            "array element length max",
            patch(good.clone(), 114, &u64le(u64::MAX)),
            "more than the limit",
        ),
        ("arrays nested too deep", nested, "nested deeper"),
        (
            "zero dimensions",
            patch(good.clone(), n_dims_at, &u32le(0)),
            "0 dimensions",
        ),
        (
            "five dimensions",
            patch(good.clone(), n_dims_at, &u32le(5)),
            "5 dimensions",
        ),
        (
            "shape overflows",
            patch(
                patch(good.clone(), dims_at, &u64le(1 << 40)),
                dims_at + 8,
                &u64le(1 << 40),
            ),
            "too many elements",
        ),
        (
            "unknown ggml type",
            patch(good.clone(), type_at, &u32le(4)),
            "unknown ggml type 4",
        ),
        (
            "ggml type max",
            patch(good.clone(), type_at, &u32le(u32::MAX)),
            "unknown ggml type",
        ),
        (
            "row not whole blocks",
            patch(good.clone(), type_at, &u32le(8)),
            "block size",
        ),
        (
            "offset unaligned",
            patch(good.clone(), offset_at, &u64le(3)),
            "not a multiple of the alignment",
        ),
        (
            "offset past end",
            patch(good.clone(), offset_at, &u64le(1 << 30)),
            "truncated",
        ),
        (
            "offset max",
            patch(good.clone(), offset_at, &u64le(u64::MAX - 31)),
            "truncated",
        ),
    ];
    for (name, bytes, expected) in &cases {
        let err = match read(bytes) {
            Ok(h) => panic!("{name}: read succeeded: {h:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            expected.split('|').any(|x| err.contains(x)),
            "{name}: error {err:?} does not mention {expected:?}"
        );
    }
}

#[test]
fn bad_alignment_is_refused() {
    let key = "general.alignment";
    let good = GgufWriter::new(Vec::new(), &[(key.to_string(), GgufValue::U32(64))], &[])
        .unwrap()
        .finish()
        .unwrap();
    // The value follows the key and its 4-byte type tag.
    let at = good
        .windows(key.len())
        .position(|w| w == key.as_bytes())
        .unwrap()
        + key.len()
        + 4;
    for (align, ok) in [
        (0u32, false),
        (3, false),
        (48, false),
        (64, true),
        (8, true),
    ] {
        let bytes = patch(good.clone(), at, &align.to_le_bytes());
        let r = read(&bytes);
        assert_eq!(r.is_ok(), ok, "alignment {align}: {r:?}");
        if !ok {
            assert!(r.unwrap_err().to_string().contains("power of two"));
        }
    }
}

#[test]
fn duplicate_keys_and_tensors_are_refused() {
    let kv = ("a".to_string(), GgufValue::U8(1));
    let bytes = GgufWriter::new(Vec::new(), &[kv.clone(), kv], &[])
        .unwrap()
        .finish()
        .unwrap();
    assert!(matches!(read(&bytes), Err(GgufError::DuplicateKey { .. })));
    let t = TensorSpec::new("w", &[1], GgmlType::F32);
    let mut w = GgufWriter::new(Vec::new(), &[], &[t.clone(), t]).unwrap();
    w.write_tensor_data(&[0; 4]).unwrap();
    w.write_tensor_data(&[0; 4]).unwrap();
    let bytes = w.finish().unwrap();
    assert!(matches!(
        read(&bytes),
        Err(GgufError::DuplicateTensor { .. })
    ));
}

#[test]
fn a_real_model_truncated_anywhere_is_a_clean_error() {
    let model = write_to(Vec::new(), &TestModelConfig::tiny()).unwrap();
    let header_end = read(&model).unwrap().data_offset as usize;
    // Every offset inside the header, then a spread through the tensor data.
    let cuts = (0..header_end).chain((header_end..model.len()).step_by(4099));
    let mut n = 0;
    for cut in cuts {
        let err = read(&model[..cut]).expect_err("a truncated model must not read");
        let msg = err.to_string();
        assert!(
            msg.contains("truncated") || msg.contains("not a GGUF file"),
            "cut at {cut}: {msg}"
        );
        n += 1;
    }
    assert!(n > header_end);
}

#[test]
fn random_corruption_never_panics() {
    let model = write_to(Vec::new(), &TestModelConfig::tiny()).unwrap();
    let header_end = read(&model).unwrap().data_offset as usize;
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut errors = 0;
    for _ in 0..3000 {
        let mut b = model[..header_end + 64].to_vec();
        for _ in 0..(1 + next() % 4) {
            let at = (next() as usize) % header_end;
            b[at] = next() as u8;
        }
        // Ok is possible (a changed score); what matters is no panic and bounded work.
        if read(&b).is_err() {
            errors += 1;
        }
    }
    assert!(errors > 0);
}

#[test]
fn read_header_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.gguf");
    std::fs::write(&path, b"GGUF\x03\0\0\0").unwrap();
    let err = read_header(&path).unwrap_err().to_string();
    assert!(
        err.contains("broken.gguf") && err.contains("truncated"),
        "{err}"
    );
    let missing = read_header(&dir.path().join("nope.gguf"))
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("cannot open") && missing.contains("nope.gguf"),
        "{missing}"
    );
}
