//! The control layer: state, and (in later modules) hardware, policy, resolution and controllers.

pub mod model_gc;
pub mod store;
