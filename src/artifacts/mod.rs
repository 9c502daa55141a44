//! Artifacts: model blobs, GGUF metadata and the module catalog.

pub mod models;
