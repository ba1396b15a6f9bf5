//! The HTTP edge: listeners, admission, routes and the one error type.

pub mod gate;
pub mod listener;
pub mod openapi;
pub mod problem;
pub mod routes;
