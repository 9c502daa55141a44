//! The control layer: state, hardware, policy, resolution and planning (controllers come later).

pub mod hardware;
pub mod plan;
pub mod policy;
pub mod resolver;
pub mod store;
