//! Genmo's Mochi-1 in candle, apart from the service that runs it: the AsymmDiT denoiser
//! ([`model`]), the VAE decoder ([`model::vae`]), the T5 text path with its tokenizer, the
//! sigma schedule and the Euler sampler with classifier-free guidance ([`pipeline`]), and
//! checkpoint loading with the model-directory checks and the embedded tiny model
//! ([`model_dir`]), and one component run on named tensors for checks against the
//! reference ([`run`]). Candle only: no async runtime, no NATS, no service types, so it can be
//! read and diffed against the upstream implementation on its own (`docs/model.md`).

pub mod model;
pub mod model_dir;
pub mod pipeline;
pub mod run;
