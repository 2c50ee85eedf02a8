//! HTTP routes.

pub mod health;
pub mod videos;
