//! Input embeddings of the AsymmDiT: sinusoidal timestep MLP, attention pooling of the
//! caption, caption projection, patch embedding and the learned mixed 3D RoPE.

use candle_core::{D, DType, Device, Result, Tensor};

use super::config::Config;
use super::keys::top;
use super::ops::Linear;
use super::weights::Weights;

/// Sinusoidal features of the timesteps `t = 1000·(1−σ)`: `[cos(t·f), sin(t·f)]`,
/// `f_k = exp(−ln(10000)·k/half)`, shape `(B, dim)`, f32.
pub fn timestep_sinusoid(timesteps: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let log_period = -(10000f64.ln() as f32);
    let freqs: Vec<f32> = (0..half)
        .map(|k| ((log_period * k as f32) / half as f32).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), timesteps.device())?;
    let args = timesteps
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    Tensor::cat(&[args.cos()?, args.sin()?], D::Minus1)
}

/// Timestep MLP: sinusoid → Linear → SiLU → Linear.
#[derive(Debug, Clone)]
pub struct TimestepEmbedder {
    sinusoid_dim: usize,
    /// [`top::TIME_LINEAR_1`] (genmo `t_embedder.mlp.0`).
    linear_1: Linear,
    /// [`top::TIME_LINEAR_2`] (genmo `t_embedder.mlp.2`).
    linear_2: Linear,
}

impl TimestepEmbedder {
    /// Loads [`top::TIME_LINEAR_1`] and [`top::TIME_LINEAR_2`].
    pub fn load(weights: &Weights, config: &Config) -> Result<Self> {
        let hidden = config.hidden_size_x();
        let time = config.time_embed_dim;
        Ok(Self {
            sinusoid_dim: time,
            linear_1: load_linear(weights, top::TIME_LINEAR_1.diffusers, hidden, time, true)?,
            linear_2: load_linear(weights, top::TIME_LINEAR_2.diffusers, hidden, hidden, true)?,
        })
    }

    /// `(B,)` timesteps → `(B, hidden)`.
    pub fn forward(&self, timesteps: &Tensor) -> Result<Tensor> {
        let features = timestep_sinusoid(timesteps, self.sinusoid_dim)?;
        self.linear_2
            .forward(&self.linear_1.forward(&features)?.silu()?)
    }
}

/// Single-query attention pooling of the T5 features (masked mean as the query).
#[derive(Debug, Clone)]
pub struct AttentionPool {
    num_heads: usize,
    /// [`top::POOL_TO_KV`].
    to_kv: Linear,
    /// [`top::POOL_TO_Q`].
    to_q: Linear,
    /// [`top::POOL_TO_OUT`].
    to_out: Linear,
}

impl AttentionPool {
    /// Loads [`top::POOL_TO_KV`], [`top::POOL_TO_Q`] and [`top::POOL_TO_OUT`].
    pub fn load(weights: &Weights, config: &Config) -> Result<Self> {
        let text = config.text_embed_dim;
        let hidden = config.hidden_size_x();
        Ok(Self {
            num_heads: config.pool_heads,
            to_kv: load_linear(weights, top::POOL_TO_KV.diffusers, 2 * text, text, true)?,
            to_q: load_linear(weights, top::POOL_TO_Q.diffusers, text, text, true)?,
            to_out: load_linear(weights, top::POOL_TO_OUT.diffusers, hidden, text, true)?,
        })
    }

    /// `text (B, L, Dt)` with `mask (B, L)` (1 = valid) → `(B, hidden)`.
    pub fn forward(&self, text: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (batch, length, width) = text.dims3()?;
        let mask_f = mask.to_dtype(DType::F32)?;
        let counts = mask_f.sum_keepdim(1)?.clamp(1f32, f32::MAX)?;
        let weights = mask_f.broadcast_div(&counts)?.unsqueeze(2)?;
        let pooled = text.broadcast_mul(&weights)?.sum_keepdim(1)?; // (B,1,Dt)
        let sequence = Tensor::cat(&[&pooled, text], 1)?;
        let kv = self.to_kv.forward(&sequence)?;
        let head_dim = width / self.num_heads;
        let split_heads = |t: Tensor, len: usize| -> Result<Tensor> {
            t.reshape((batch, len, self.num_heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let keys = split_heads(kv.narrow(2, 0, width)?, length + 1)?;
        let values = split_heads(kv.narrow(2, width, width)?, length + 1)?;
        let query = split_heads(self.to_q.forward(&pooled)?, 1)?;
        let scores = (query.matmul(&keys.t()?)? / (head_dim as f64).sqrt())?;
        let bias = key_mask_bias(&mask_f)?.reshape((batch, 1, 1, length + 1))?;
        let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&bias)?)?;
        let out = probs.matmul(&values)?.reshape((batch, width))?;
        self.to_out.forward(&out)
    }
}

/// `(B, L)` 0/1 mask → `(B, L+1)` additive bias: 0 for the pooled token and valid keys,
/// −∞ for padded keys.
fn key_mask_bias(mask: &Tensor) -> Result<Tensor> {
    let rows = mask.to_vec2::<f32>()?;
    let batch = rows.len();
    let mut bias = Vec::new();
    for row in &rows {
        bias.push(0f32);
        bias.extend(
            row.iter()
                .map(|m| if *m > 0.5 { 0f32 } else { f32::NEG_INFINITY }),
        );
    }
    let width = bias.len() / batch.max(1);
    Tensor::from_vec(bias, (batch, width), mask.device())
}

/// Patch embedding: a stride-`p` conv over each frame, done as reshape + linear.
#[derive(Debug, Clone)]
pub struct PatchEmbed {
    patch_size: usize,
    proj: Linear,
}

impl PatchEmbed {
    /// Loads [`top::PATCH_EMBED`] (conv weight `[D, C, p, p]`).
    pub fn load(weights: &Weights, config: &Config) -> Result<Self> {
        let p = config.patch_size;
        let hidden = config.hidden_size_x();
        let channels = config.in_channels;
        let weight = weights.get(
            &top::PATCH_EMBED.tensor("weight"),
            &[hidden, channels, p, p],
        )?;
        let bias = weights.get_f32(&top::PATCH_EMBED.tensor("bias"), &[hidden])?;
        Ok(Self {
            patch_size: p,
            proj: Linear::new(weight.reshape((hidden, channels * p * p))?, Some(bias))?,
        })
    }

    /// `(B, C, T, H, W)` latents → `(B, T·(H/p)·(W/p), D)` tokens (t-major, then row, column).
    pub fn forward(&self, latents: &Tensor) -> Result<Tensor> {
        let (batch, channels, frames, height, width) = latents.dims5()?;
        let p = self.patch_size;
        let (ph, pw) = (height / p, width / p);
        let patches = latents
            .to_dtype(DType::F32)?
            .permute((0, 2, 1, 3, 4))?
            .reshape((batch * frames, channels, ph, p, pw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((batch, frames * ph * pw, channels * p * p))?;
        self.proj.forward(&patches)
    }
}

/// `cos`/`sin` of the learned mixed 3D RoPE, each `(N, heads, head_dim/2)`, f32.
pub fn mixed_rope(
    pos_frequencies: &Tensor,
    frames: usize,
    patch_rows: usize,
    patch_cols: usize,
) -> Result<(Tensor, Tensor)> {
    let (three, heads, half) = pos_frequencies.dims3()?;
    if three != 3 {
        candle_core::bail!(
            "pos_frequencies has shape {:?}, expected [3, heads, head_dim/2]",
            pos_frequencies.dims()
        );
    }
    let device = pos_frequencies.device();
    let positions = rope_positions(frames, patch_rows, patch_cols, device)?;
    let freqs = pos_frequencies
        .to_dtype(DType::F32)?
        .reshape((3, heads * half))?;
    let angles =
        positions
            .matmul(&freqs)?
            .reshape((frames * patch_rows * patch_cols, heads, half))?;
    Ok((angles.cos()?, angles.sin()?))
}

/// Bin centres of a symmetric linspace, computed in f32 like torch's `linspace`.
fn centres(count: usize, scale: f64) -> Vec<f32> {
    let start = (-(count as f64) * scale / 2.0) as f32;
    let end = ((count as f64) * scale / 2.0) as f32;
    let steps = count + 1;
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    let edges: Vec<f32> = (0..steps)
        .map(|i| {
            if i < halfway {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect();
    edges.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect()
}

/// Token positions `(N, 3)` = (frame, scaled row centre, scaled column centre).
fn rope_positions(frames: usize, rows: usize, cols: usize, device: &Device) -> Result<Tensor> {
    const TARGET_AREA: f64 = 192.0 * 192.0;
    let scale = (TARGET_AREA / (rows * cols) as f64).sqrt();
    let row_pos = centres(rows, scale);
    let col_pos = centres(cols, scale);
    let mut data = Vec::with_capacity(frames * rows * cols * 3);
    for t in 0..frames {
        for r in &row_pos {
            for c in &col_pos {
                data.extend([t as f32, *r, *c]);
            }
        }
    }
    Tensor::from_vec(data, (frames * rows * cols, 3), device)
}

/// Loads a linear layer `{prefix}.weight` `[out, in]` (+ `{prefix}.bias`).
pub fn load_linear(
    weights: &Weights,
    prefix: &str,
    out_dim: usize,
    in_dim: usize,
    bias: bool,
) -> Result<Linear> {
    let weight = weights.get(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
    let bias = if bias {
        Some(weights.get_f32(&format!("{prefix}.bias"), &[out_dim])?)
    } else {
        None
    };
    Linear::new(weight, bias)
}
