//! HTTP routes.

pub mod admin;
pub mod backends;
pub mod content;
pub mod health;
pub mod keys;
pub mod request;
pub mod videos;
