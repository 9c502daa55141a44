//! Interfaces: they record intent and show state; they never start a workload themselves.

pub mod cli;
pub mod http;
