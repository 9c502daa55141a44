//! The control layer: state, and (in later modules) hardware, policy, resolution and controllers.

pub mod apply;
pub mod controllers;
pub mod sources;
pub mod store;
