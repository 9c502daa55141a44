//! Artifacts: model blobs, GGUF metadata and the module catalog.

pub mod estimate;
pub mod gguf;
pub mod testmodel;
