//! LocalAIStack: a declarative reconciler that turns one workstation into a reproducible local AI stack.
//!
//! Layers, top to bottom (arrows point down only): [`interfaces`] → [`control`] → [`runtime`] →
//! [`artifacts`]. [`api`] is the vocabulary every layer shares; [`sandbox`] runs WASM plugins as pure
//! compute for whichever layer hosts a seam. See ARCHITECTURE.md.

pub mod api;
pub mod artifacts;
pub mod control;
pub mod home;
pub mod interfaces;
pub mod runtime;
pub mod sandbox;
