//! The control layer: state, hardware, policy, resolution, planning and the controllers.

pub mod admission;
pub mod apply;
pub mod controllers;
pub mod cycles;
pub mod eventbus;
pub mod hardware;
pub mod history;
pub mod legacy_plugins;
pub mod model_gc;
pub mod plan;
pub mod plugins;
pub mod policy;
pub mod probes;
pub mod resolver;
pub mod retention;
pub mod sources;
pub mod store;
pub mod workflows;
