//! HTTP routes.

pub mod admin;
pub mod backends;
pub mod content;
pub mod create;
pub mod estimate;
pub mod events;
pub mod health;
pub mod hooks;
pub mod keys;
pub mod models;
pub mod request;
pub mod seed;
pub mod variant;
pub mod videos;
pub mod web;
