//! Any bytes through the GGUF header reader: it may fail, it must not panic, and what it accepts
//! must be self-consistent.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use localaistack::artifacts::estimate::{ModelFacts, Placement, estimate};
use localaistack::artifacts::gguf::{Limits, read_from};

fuzz_target!(|data: &[u8]| {
    // Tighter limits keep each run fast; the bounds logic is the same.
    let limits = Limits {
        max_header_bytes: 1 << 20,
        ..Limits::default()
    };
    if let Ok(h) = read_from(&mut Cursor::new(data), &limits) {
        assert!(h.data_offset <= h.file_size.max(h.data_offset));
        for t in &h.tensors {
            assert!(h.data_offset + t.offset + t.size <= h.file_size);
        }
        let _ = h.info();
        if let Ok(facts) = ModelFacts::from_header(&h) {
            let _ = estimate(&facts, &Placement::cpu(4096));
        }
    }
});
