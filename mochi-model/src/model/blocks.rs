//! The modulated joint (visual + text) transformer block and the final layer.

use candle_core::{D, Result, Tensor};

use super::attention::{Qkv, TextLayout, apply_rope, joint_attention};
use super::config::Config;
use super::embeddings::load_linear;
use super::ops::{Linear, layer_norm, rms_norm, rms_norm_weighted, scale_tokens};
use super::weights::Weights;

/// Epsilon of the weightless modulation / residual RMS norms.
pub const MOD_NORM_EPS: f64 = 1e-6;
/// Epsilon of the learned q/k RMS norms.
pub const QK_NORM_EPS: f64 = 1e-5;

/// SwiGLU feed-forward with diffusers' half order: `W2(h_a ⊙ SiLU(h_b))`.
#[derive(Debug, Clone)]
pub struct FeedForward {
    w1: Linear,
    w2: Linear,
    hidden: usize,
}

impl FeedForward {
    /// Loads `{prefix}.net.0.proj` / `{prefix}.net.2`; the hidden width comes from the weights.
    pub fn load(weights: &Weights, prefix: &str, dim: usize) -> Result<Self> {
        let w1_name = format!("{prefix}.net.0.proj.weight");
        let w1 = weights.get(&w1_name, &[0, dim])?;
        let rows = w1.dim(0)?;
        if rows % 2 != 0 {
            candle_core::bail!(
                "tensor `{w1_name}` has shape {:?}, expected an even row count",
                w1.dims()
            );
        }
        let hidden = rows / 2;
        let w2 = weights.get(&format!("{prefix}.net.2.weight"), &[dim, hidden])?;
        Ok(Self {
            w1: Linear::new(w1, None)?,
            w2: Linear::new(w2, None)?,
            hidden,
        })
    }

    /// `(.., dim)` → `(.., dim)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.w1.forward(x)?;
        let value = h.narrow(D::Minus1, 0, self.hidden)?;
        let gate = h.narrow(D::Minus1, self.hidden, self.hidden)?;
        self.w2.forward(&(value * gate.silu()?)?)
    }
}

/// Per-head learned RMS norm weights of q and k for one stream.
#[derive(Debug, Clone)]
struct QkNorm {
    q: Tensor,
    k: Tensor,
}

/// One AsymmDiT block; the last block updates only the visual stream.
#[derive(Debug, Clone)]
pub struct JointBlock {
    num_heads: usize,
    head_dim: usize,
    last: bool,
    mod_x: Linear,
    mod_y: Linear,
    qkv_x: Linear,
    qkv_y: Linear,
    norm_x: QkNorm,
    norm_y: QkNorm,
    proj_x: Linear,
    proj_y: Option<Linear>,
    ff_x: FeedForward,
    ff_y: Option<FeedForward>,
}

impl JointBlock {
    /// Loads `transformer_blocks.{index}.*`.
    pub fn load(weights: &Weights, config: &Config, index: usize) -> Result<Self> {
        let p = format!("transformer_blocks.{index}");
        let dx = config.hidden_size_x();
        let dy = config.hidden_size_y;
        let hd = config.head_dim;
        let last = index + 1 == config.num_layers;
        let mod_y = if last {
            load_linear(
                weights,
                &format!("{p}.norm1_context.linear_1"),
                dy,
                dx,
                true,
            )?
        } else {
            load_linear(
                weights,
                &format!("{p}.norm1_context.linear"),
                4 * dy,
                dx,
                true,
            )?
        };
        let fused = |names: [&str; 3], in_dim: usize| -> Result<Linear> {
            let parts = names
                .iter()
                .map(|n| weights.get(&format!("{p}.attn1.{n}.weight"), &[dx, in_dim]))
                .collect::<Result<Vec<_>>>()?;
            Linear::new(Tensor::cat(&parts, 0)?, None)
        };
        let norm = |name: &str| weights.get_f32(&format!("{p}.attn1.{name}.weight"), &[hd]);
        Ok(Self {
            num_heads: config.num_heads,
            head_dim: hd,
            last,
            mod_x: load_linear(weights, &format!("{p}.norm1.linear"), 4 * dx, dx, true)?,
            mod_y,
            qkv_x: fused(["to_q", "to_k", "to_v"], dx)?,
            qkv_y: fused(["add_q_proj", "add_k_proj", "add_v_proj"], dy)?,
            norm_x: QkNorm {
                q: norm("norm_q")?,
                k: norm("norm_k")?,
            },
            norm_y: QkNorm {
                q: norm("norm_added_q")?,
                k: norm("norm_added_k")?,
            },
            proj_x: load_linear(weights, &format!("{p}.attn1.to_out.0"), dx, dx, true)?,
            proj_y: if last {
                None
            } else {
                Some(load_linear(
                    weights,
                    &format!("{p}.attn1.to_add_out"),
                    dy,
                    dx,
                    true,
                )?)
            },
            ff_x: FeedForward::load(weights, &format!("{p}.ff"), dx)?,
            ff_y: if last {
                None
            } else {
                Some(FeedForward::load(weights, &format!("{p}.ff_context"), dy)?)
            },
        })
    }

    /// Whether this is the last block (text stream not updated).
    pub fn is_last(&self) -> bool {
        self.last
    }

    fn qkv(&self, proj: &Linear, norm: &QkNorm, tokens: &Tensor) -> Result<Qkv> {
        let (batch, count, _) = tokens.dims3()?;
        let width = self.num_heads * self.head_dim;
        let qkv = proj.forward(tokens)?;
        let split = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i * width, width)?
                .reshape((batch, count, self.num_heads, self.head_dim))
        };
        Ok(Qkv {
            q: rms_norm_weighted(&split(0)?, &norm.q, QK_NORM_EPS)?,
            k: rms_norm_weighted(&split(1)?, &norm.k, QK_NORM_EPS)?,
            v: split(2)?,
        })
    }

    /// Runs the block on `x (B, N, Dx)`, `y (B, L, Dy)` with conditioning `c (B, Dx)`; the
    /// text tokens' attention outputs are placed by `layout`.
    pub fn forward(
        &self,
        x: &Tensor,
        y: &Tensor,
        c: &Tensor,
        rope: &(Tensor, Tensor),
        mask: &Tensor,
        layout: TextLayout,
    ) -> Result<(Tensor, Tensor)> {
        let activated = c.silu()?;
        let mx = self.mod_x.forward(&activated)?.chunk(4, 1)?;
        let my = self.mod_y.forward(&activated)?;
        let my = if self.last { vec![my] } else { my.chunk(4, 1)? };

        let xn = scale_tokens(&rms_norm(x, MOD_NORM_EPS)?, &(&mx[0] + 1.0)?)?;
        let yn = scale_tokens(&rms_norm(y, MOD_NORM_EPS)?, &(&my[0] + 1.0)?)?;
        let mut qkv_x = self.qkv(&self.qkv_x, &self.norm_x, &xn)?;
        qkv_x.q = apply_rope(&qkv_x.q, &rope.0, &rope.1)?;
        qkv_x.k = apply_rope(&qkv_x.k, &rope.0, &rope.1)?;
        let qkv_y = self.qkv(&self.qkv_y, &self.norm_y, &yn)?;
        let (attn_x, attn_y) =
            joint_attention(&qkv_x, &qkv_y, mask, self.qkv_x.weight().dtype(), layout)?;

        let x = gated_residual(x, &self.proj_x.forward(&attn_x)?, &mx[1])?;
        let xn2 = scale_tokens(&rms_norm(&x, MOD_NORM_EPS)?, &(&mx[2] + 1.0)?)?;
        let x = gated_residual(&x, &self.ff_x.forward(&xn2)?, &mx[3])?;

        let y = match (&self.proj_y, &self.ff_y) {
            (Some(proj_y), Some(ff_y)) => {
                let y = gated_residual(y, &proj_y.forward(&attn_y)?, &my[1])?;
                let yn2 = scale_tokens(&rms_norm(&y, MOD_NORM_EPS)?, &(&my[2] + 1.0)?)?;
                gated_residual(&y, &ff_y.forward(&yn2)?, &my[3])?
            }
            _ => y.clone(),
        };
        Ok((x, y))
    }
}

/// `x + tanh(gate)·rms(branch)`.
fn gated_residual(x: &Tensor, branch: &Tensor, gate: &Tensor) -> Result<Tensor> {
    x + scale_tokens(&rms_norm(branch, MOD_NORM_EPS)?, &gate.tanh()?)?
}

/// Final adaptive LayerNorm and projection to patch pixels.
#[derive(Debug, Clone)]
pub struct FinalLayer {
    modulation: Linear,
    proj: Linear,
}

impl FinalLayer {
    /// Loads `norm_out.linear` (diffusers order `[scale; shift]`) and `proj_out`.
    pub fn load(weights: &Weights, config: &Config) -> Result<Self> {
        let dx = config.hidden_size_x();
        let out = config.patch_size * config.patch_size * config.out_channels;
        Ok(Self {
            modulation: load_linear(weights, "norm_out.linear", 2 * dx, dx, true)?,
            proj: load_linear(weights, "proj_out", out, dx, true)?,
        })
    }

    /// The modulated LayerNorm output `(B, N, Dx)` (a golden tap).
    pub fn norm(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        let params = self.modulation.forward(&c.silu()?)?.chunk(2, 1)?;
        let normed = scale_tokens(&layer_norm(x, 1e-6)?, &(&params[0] + 1.0)?)?;
        normed.broadcast_add(&params[1].unsqueeze(1)?)
    }

    /// Projects normalized tokens to `(B, N, p·p·C)`.
    pub fn project(&self, normed: &Tensor) -> Result<Tensor> {
        self.proj.forward(normed)
    }
}
