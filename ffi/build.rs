//! Generates the C header from `src/lib.rs` with cbindgen into `$OUT_DIR/localaistack.h`. The
//! committed `include/localaistack.h` must equal it: `tests/c_abi.rs` fails when it is stale and
//! rewrites it with `LAS_UPDATE_HEADER=1`.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    println!("cargo:rerun-if-changed=src/lib.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let config =
        cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).expect("ffi/cbindgen.toml");
    cbindgen::Builder::new()
        .with_config(config)
        // One file, no `cargo metadata`: every exported item is in src/lib.rs.
        .with_src(format!("{dir}/src/lib.rs"))
        .generate()
        .expect("cbindgen could not generate the header")
        .write_to_file(format!("{out}/localaistack.h"));
}
