//! The control layer: state, hardware, policy, resolution, planning and the controllers.

pub mod admission;
pub mod apply;
pub mod controllers;
pub mod cycles;
pub mod hardware;
pub mod history;
pub mod model_gc;
pub mod plan;
pub mod plugins;
pub mod policy;
pub mod resolver;
pub mod retention;
pub mod sources;
pub mod store;
pub mod workflows;
