//! Artifacts: model blobs, native programs of catalog modules, GGUF metadata and the module catalog.

pub mod binaries;
pub mod catalog;
pub mod estimate;
pub mod gguf;
pub mod models;
pub mod testmodel;
