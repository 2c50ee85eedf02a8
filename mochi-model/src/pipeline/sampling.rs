//! Euler flow-matching sampler with classifier-free guidance, and the latent
//! normalisation between DiT space and VAE space (`docs/mochi-model-spec.md` §1.3, §1.5).

use std::ops::ControlFlow;

use candle_core::{DType, Result, Tensor};

use crate::model::AsymmDiT;

/// Per-channel latent means (genmo `vae_stats.py`, diffusers `latents_mean`).
pub const LATENTS_MEAN: [f64; 12] = [
    -0.06730895953510081,
    -0.038011381506090416,
    -0.07477820912866141,
    -0.05565264470995561,
    0.012767231469026969,
    -0.04703542746246419,
    0.043896967884726704,
    -0.09346305707025976,
    -0.09918314763016893,
    -0.008729793427399178,
    -0.011931556316503654,
    -0.0321993391887285,
];

/// Per-channel latent standard deviations (genmo `vae_stats.py`, diffusers `latents_std`).
pub const LATENTS_STD: [f64; 12] = [
    0.9263795028493863,
    0.9248894543193766,
    0.9393059390890617,
    0.959253732819592,
    0.8244560132752793,
    0.917259975397747,
    0.9294154431013696,
    1.3720942357788521,
    0.881393668867029,
    0.9168315692124348,
    0.9185249279345552,
    0.9274757570805041,
];

fn channel_vector(values: &[f64; 12], like: &Tensor) -> Result<Tensor> {
    let data: Vec<f32> = values.iter().map(|v| *v as f32).collect();
    Tensor::from_vec(data, (1, 12, 1, 1, 1), like.device())
}

/// DiT latents `(B, 12, T, H, W)` → VAE latents: `z·std + mean`.
pub fn dit_to_vae(latents: &Tensor) -> Result<Tensor> {
    let z = latents.to_dtype(DType::F32)?;
    z.broadcast_mul(&channel_vector(&LATENTS_STD, &z)?)?
        .broadcast_add(&channel_vector(&LATENTS_MEAN, &z)?)
}

/// VAE latents → DiT latents: `(z − mean)/std`.
pub fn vae_to_dit(latents: &Tensor) -> Result<Tensor> {
    let z = latents.to_dtype(DType::F32)?;
    z.broadcast_sub(&channel_vector(&LATENTS_MEAN, &z)?)?
        .broadcast_div(&channel_vector(&LATENTS_STD, &z)?)
}

/// Latent channels of Mochi's VAE.
pub const LATENT_CHANNELS: usize = 12;

/// Seeded standard-normal initial latents `(1, 12, frames, height, width)` in f32.
///
/// Deterministic for a seed on every device (SplitMix64 + Box–Muller on the host, then
/// copied): candle's CPU RNG cannot be seeded. Not bit-equal to torch's generator.
pub fn initial_latents(
    seed: u64,
    latent_frames: usize,
    latent_height: usize,
    latent_width: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let shape = (
        1,
        LATENT_CHANNELS,
        latent_frames,
        latent_height,
        latent_width,
    );
    let count = LATENT_CHANNELS * latent_frames * latent_height * latent_width;
    let mut rng = mochi_rng::SplitMix64::new(seed);
    // Top 53 bits → (0, 1] (never 0: its logarithm follows).
    let mut uniform = move || ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let mut values = Vec::with_capacity(count + 1);
    while values.len() < count {
        let radius = (-2.0 * uniform().ln()).sqrt();
        let angle = std::f64::consts::TAU * uniform();
        values.push((radius * angle.cos()) as f32);
        values.push((radius * angle.sin()) as f32);
    }
    values.truncate(count);
    Tensor::from_vec(values, shape, device)
}

/// Classifier-free guidance: `v_u + scale·(v_c − v_u)`, in f32.
pub fn cfg_combine(uncond: &Tensor, cond: &Tensor, scale: f64) -> Result<Tensor> {
    let uncond = uncond.to_dtype(DType::F32)?;
    let cond = cond.to_dtype(DType::F32)?;
    &uncond + ((cond - &uncond)? * scale)?
}

/// One Euler step of the flow ODE: `z + (σ − σ_next)·v` (σ decreasing).
pub fn euler_step(
    latents: &Tensor,
    velocity: &Tensor,
    sigma: f64,
    sigma_next: f64,
) -> Result<Tensor> {
    latents.to_dtype(DType::F32)? + (velocity.to_dtype(DType::F32)? * (sigma - sigma_next))?
}

/// Text conditioning for one branch: T5 features `(1, L, Dt)` and mask `(1, L)`.
#[derive(Debug, Clone)]
pub struct TextConditioning {
    /// T5 `last_hidden_state`, f32.
    pub features: Tensor,
    /// 1 for valid tokens, 0 for padding (f32 or u8).
    pub mask: Tensor,
}

/// What the sampler reports after each step.
#[derive(Debug)]
pub struct StepInfo<'a> {
    /// Zero-based step index.
    pub step: usize,
    /// Total steps.
    pub num_steps: usize,
    /// σ before this step.
    pub sigma: f64,
    /// Latents after this step (DiT space, f32).
    pub latents: &'a Tensor,
}

/// Runs the denoising loop: with `uncond`, both CFG branches in one batch of two (uncond
/// first); without (no guidance), the conditional branch alone. Euler updates on f32
/// latents. `guidance` holds one scale per step (or a single value; unused without CFG).
/// The callback may stop the loop early with `ControlFlow::Break` (cancellation); the
/// latents reached so far are returned.
pub fn denoise<F>(
    model: &AsymmDiT,
    initial_latents: &Tensor,
    cond: &TextConditioning,
    uncond: Option<&TextConditioning>,
    sigmas: &[f64],
    guidance: &[f64],
    mut on_step: F,
) -> Result<Tensor>
where
    F: FnMut(StepInfo<'_>) -> ControlFlow<()>,
{
    if guidance.is_empty() {
        candle_core::bail!("guidance schedule is empty");
    }
    let (text, mask) = match uncond {
        Some(uncond) => batch_conditioning(uncond, cond)?,
        None => (cond.features.clone(), cond.mask.clone()),
    };
    let num_steps = sigmas.len().saturating_sub(1);
    let mut latents = initial_latents.to_dtype(DType::F32)?;
    for step in 0..num_steps {
        let (sigma, sigma_next) = (sigmas[step], sigmas[step + 1]);
        let t = super::scheduler::timestep_from_sigma(sigma) as f32;
        let velocity = if uncond.is_some() {
            let scale = guidance[step.min(guidance.len() - 1)];
            let batch = Tensor::cat(&[&latents, &latents], 0)?;
            let timesteps = Tensor::from_vec(vec![t, t], 2, latents.device())?;
            let velocity = model.forward(&batch, &timesteps, &text, &mask)?;
            cfg_combine(
                &velocity.get(0)?.unsqueeze(0)?,
                &velocity.get(1)?.unsqueeze(0)?,
                scale,
            )?
        } else {
            let timesteps = Tensor::from_vec(vec![t], 1, latents.device())?;
            model.forward(&latents, &timesteps, &text, &mask)?
        };
        latents = euler_step(&latents, &velocity, sigma, sigma_next)?;
        let info = StepInfo {
            step,
            num_steps,
            sigma,
            latents: &latents,
        };
        if on_step(info).is_break() {
            break;
        }
    }
    Ok(latents)
}

/// Pads both branches' text to a common length and stacks them `[uncond, cond]`.
pub fn batch_conditioning(
    uncond: &TextConditioning,
    cond: &TextConditioning,
) -> Result<(Tensor, Tensor)> {
    let length = uncond.features.dim(1)?.max(cond.features.dim(1)?);
    let pad = |c: &TextConditioning| -> Result<(Tensor, Tensor)> {
        let extra = length - c.features.dim(1)?;
        let features = c
            .features
            .to_dtype(DType::F32)?
            .pad_with_zeros(1, 0, extra)?;
        let mask = c.mask.to_dtype(DType::F32)?.pad_with_zeros(1, 0, extra)?;
        Ok((features, mask))
    };
    let (fu, mu) = pad(uncond)?;
    let (fc, mc) = pad(cond)?;
    Ok((Tensor::cat(&[fu, fc], 0)?, Tensor::cat(&[mu, mc], 0)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn scalar(t: &Tensor) -> f32 {
        t.flatten_all()
            .expect("flat")
            .to_vec1::<f32>()
            .expect("vec")[0]
    }

    #[test]
    fn normalisation_round_trips_and_uses_channel_stats() {
        let z = Tensor::zeros((1, 12, 1, 1, 1), DType::F32, &Device::Cpu).expect("zeros");
        let vae = dit_to_vae(&z).expect("to vae");
        let values = vae
            .flatten_all()
            .expect("flat")
            .to_vec1::<f32>()
            .expect("vec");
        assert!((values[7] as f64 - LATENTS_MEAN[7]).abs() < 1e-7);
        let ones = Tensor::ones((1, 12, 1, 1, 1), DType::F32, &Device::Cpu).expect("ones");
        let back = vae_to_dit(&dit_to_vae(&ones).expect("to vae")).expect("to dit");
        let diff = (back - ones)
            .expect("sub")
            .abs()
            .expect("abs")
            .max_all()
            .expect("max");
        assert!(diff.to_scalar::<f32>().expect("scalar") < 1e-6);
    }

    #[test]
    fn initial_latents_are_seeded_and_standard_normal() {
        let dev = Device::Cpu;
        let a = initial_latents(7, 2, 8, 10, &dev).expect("noise");
        let b = initial_latents(7, 2, 8, 10, &dev).expect("noise");
        let c = initial_latents(8, 2, 8, 10, &dev).expect("noise");
        assert_eq!(a.dims(), &[1, 12, 2, 8, 10]);
        let values = a
            .flatten_all()
            .expect("flat")
            .to_vec1::<f32>()
            .expect("vec");
        assert_eq!(
            values,
            b.flatten_all()
                .expect("flat")
                .to_vec1::<f32>()
                .expect("vec")
        );
        assert_ne!(
            values,
            c.flatten_all()
                .expect("flat")
                .to_vec1::<f32>()
                .expect("vec")
        );
        let n = values.len() as f64;
        let mean = values.iter().map(|v| f64::from(*v)).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|v| (f64::from(*v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.1, "mean {mean}");
        assert!((var - 1.0).abs() < 0.1, "variance {var}");
    }

    #[test]
    fn cfg_and_euler_follow_the_formulas() {
        let dev = Device::Cpu;
        let u = Tensor::new(&[1.0f32], &dev).expect("u");
        let c = Tensor::new(&[3.0f32], &dev).expect("c");
        let v = cfg_combine(&u, &c, 4.5).expect("cfg");
        assert_eq!(scalar(&v), 10.0);
        let z = Tensor::new(&[0.5f32], &dev).expect("z");
        let next = euler_step(&z, &v, 1.0, 0.75).expect("step");
        assert_eq!(scalar(&next), 3.0);
    }
}
