//! The Mochi-1 inference pipeline around the AsymmDiT: sigma schedule, sampler with
//! classifier-free guidance, latent normalisation.

pub mod sampling;
pub mod scheduler;
