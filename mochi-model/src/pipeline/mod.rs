//! The Mochi-1 inference pipeline around the AsymmDiT: sigma schedule, sampler with
//! classifier-free guidance, latent normalisation, and the T5 text path.

pub mod sampling;
pub mod scheduler;
pub mod spiece;
pub mod text_encoder;
pub mod vae;
