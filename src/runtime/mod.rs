//! The runtime layer: executes workloads (containers, native processes, the engine); decides nothing.

pub mod engine;
