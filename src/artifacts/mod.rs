//! Artifacts: model blobs, GGUF metadata and the module catalog.

pub mod catalog;
pub mod estimate;
pub mod gguf;
pub mod models;
pub mod testmodel;
