//! The modulated joint (visual + text) transformer block and the final layer.

use candle_core::{Result, Tensor};

use super::attention::{Qkv, TextLayout, apply_rope, joint_attention};
use super::config::Config;
use super::embeddings::load_linear;
use super::fused::{gated_rms_residual, modulated_rms_norm, swiglu_packed};
use super::keys::{Key, block, top};
use super::ops::{Linear, layer_norm, rms_norm_weighted, scale_tokens};
use super::weights::Weights;

/// Epsilon of the weightless modulation / residual RMS norms.
pub const MOD_NORM_EPS: f64 = 1e-6;
/// Epsilon of the learned q/k RMS norms.
pub const QK_NORM_EPS: f64 = 1e-5;

/// SwiGLU feed-forward with diffusers' half order: `W2(h_a ⊙ SiLU(h_b))` (the product in
/// one pass on the CPU, [`swiglu_packed`]).
#[derive(Debug, Clone)]
pub struct FeedForward {
    /// [`block::MLP_X_W1`] / [`block::MLP_Y_W1`].
    w1: Linear,
    /// [`block::MLP_X_W2`] / [`block::MLP_Y_W2`].
    w2: Linear,
}

impl FeedForward {
    /// Loads the pair `(w1, w2)` of block `index`; the hidden width comes from the weights.
    pub fn load(weights: &Weights, (w1, w2): (Key, Key), index: usize, dim: usize) -> Result<Self> {
        let w1_name = w1.in_block(index, "weight");
        let w2_name = w2.in_block(index, "weight");
        let w1 = weights.get(&w1_name, &[0, dim])?;
        let rows = w1.dim(0)?;
        if rows % 2 != 0 {
            candle_core::bail!(
                "tensor `{w1_name}` has shape {:?}, expected an even row count",
                w1.dims()
            );
        }
        let hidden = rows / 2;
        let w2 = weights.get(&w2_name, &[dim, hidden])?;
        Ok(Self {
            w1: Linear::new(w1, None)?,
            w2: Linear::new(w2, None)?,
        })
    }

    /// `(.., dim)` → `(.., dim)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.w1.forward(x)?;
        self.w2.forward(&swiglu_packed(&h)?)
    }
}

/// Per-head learned RMS norm weights of q and k for one stream.
#[derive(Debug, Clone)]
struct QkNorm {
    /// [`block::NORM_Q`] / [`block::NORM_ADDED_Q`] (genmo `q_norm_x` / `q_norm_y`).
    q: Tensor,
    /// [`block::NORM_K`] / [`block::NORM_ADDED_K`] (genmo `k_norm_x` / `k_norm_y`).
    k: Tensor,
}

/// One AsymmDiT block; the last block updates only the visual stream.
#[derive(Debug, Clone)]
pub struct JointBlock {
    num_heads: usize,
    head_dim: usize,
    last: bool,
    /// [`block::MOD_X`].
    mod_x: Linear,
    /// [`block::MOD_Y`], or [`block::MOD_Y_LAST`] in the last block.
    mod_y: Linear,
    /// [`block::TO_Q`], [`block::TO_K`], [`block::TO_V`] fused as genmo's `attn.qkv_x`.
    qkv_x: Linear,
    /// [`block::ADD_Q_PROJ`], [`block::ADD_K_PROJ`], [`block::ADD_V_PROJ`] fused as
    /// genmo's `attn.qkv_y`.
    qkv_y: Linear,
    /// The visual stream's q/k norms.
    norm_x: QkNorm,
    /// The text stream's q/k norms.
    norm_y: QkNorm,
    /// [`block::PROJ_X`].
    proj_x: Linear,
    /// [`block::PROJ_Y`] (none in the last block).
    proj_y: Option<Linear>,
    /// [`block::MLP_X_W1`] and [`block::MLP_X_W2`].
    mlp_x: FeedForward,
    /// [`block::MLP_Y_W1`] and [`block::MLP_Y_W2`] (none in the last block).
    mlp_y: Option<FeedForward>,
}

impl JointBlock {
    /// Loads block `index` (`transformer_blocks.{index}.*`, the [`block`] keys).
    pub fn load(weights: &Weights, config: &Config, index: usize) -> Result<Self> {
        let dx = config.hidden_size_x();
        let dy = config.hidden_size_y;
        let hd = config.head_dim;
        let last = index + 1 == config.num_layers;
        let linear = |key: Key, out: usize, input: usize| -> Result<Linear> {
            load_linear(weights, &key.at(index), out, input, true)
        };
        let mod_y = if last {
            linear(block::MOD_Y_LAST, dy, dx)?
        } else {
            linear(block::MOD_Y, 4 * dy, dx)?
        };
        let fused = |keys: [Key; 3], in_dim: usize| -> Result<Linear> {
            let parts = keys
                .iter()
                .map(|key| weights.get(&key.in_block(index, "weight"), &[dx, in_dim]))
                .collect::<Result<Vec<_>>>()?;
            Linear::new(Tensor::cat(&parts, 0)?, None)
        };
        let norm = |key: Key| weights.get_f32(&key.in_block(index, "weight"), &[hd]);
        Ok(Self {
            num_heads: config.num_heads,
            head_dim: hd,
            last,
            mod_x: linear(block::MOD_X, 4 * dx, dx)?,
            mod_y,
            qkv_x: fused([block::TO_Q, block::TO_K, block::TO_V], dx)?,
            qkv_y: fused(
                [block::ADD_Q_PROJ, block::ADD_K_PROJ, block::ADD_V_PROJ],
                dy,
            )?,
            norm_x: QkNorm {
                q: norm(block::NORM_Q)?,
                k: norm(block::NORM_K)?,
            },
            norm_y: QkNorm {
                q: norm(block::NORM_ADDED_Q)?,
                k: norm(block::NORM_ADDED_K)?,
            },
            proj_x: linear(block::PROJ_X, dx, dx)?,
            proj_y: if last {
                None
            } else {
                Some(linear(block::PROJ_Y, dy, dx)?)
            },
            mlp_x: FeedForward::load(weights, (block::MLP_X_W1, block::MLP_X_W2), index, dx)?,
            mlp_y: if last {
                None
            } else {
                Some(FeedForward::load(
                    weights,
                    (block::MLP_Y_W1, block::MLP_Y_W2),
                    index,
                    dy,
                )?)
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

        let xn = modulated_rms_norm(x, &mx[0], MOD_NORM_EPS)?;
        let yn = modulated_rms_norm(y, &my[0], MOD_NORM_EPS)?;
        let mut qkv_x = self.qkv(&self.qkv_x, &self.norm_x, &xn)?;
        qkv_x.q = apply_rope(&qkv_x.q, &rope.0, &rope.1)?;
        qkv_x.k = apply_rope(&qkv_x.k, &rope.0, &rope.1)?;
        let qkv_y = self.qkv(&self.qkv_y, &self.norm_y, &yn)?;
        let (attn_x, attn_y) = joint_attention(&qkv_x, &qkv_y, mask, self.qkv_x.dtype(), layout)?;

        let x = gated_residual(x, &self.proj_x.forward(&attn_x)?, &mx[1])?;
        let xn2 = modulated_rms_norm(&x, &mx[2], MOD_NORM_EPS)?;
        let x = gated_residual(&x, &self.mlp_x.forward(&xn2)?, &mx[3])?;

        let y = match (&self.proj_y, &self.mlp_y) {
            (Some(proj_y), Some(mlp_y)) => {
                let y = gated_residual(y, &proj_y.forward(&attn_y)?, &my[1])?;
                let yn2 = modulated_rms_norm(&y, &my[2], MOD_NORM_EPS)?;
                gated_residual(&y, &mlp_y.forward(&yn2)?, &my[3])?
            }
            _ => y.clone(),
        };
        Ok((x, y))
    }
}

/// `x + tanh(gate)·rms(branch)`.
fn gated_residual(x: &Tensor, branch: &Tensor, gate: &Tensor) -> Result<Tensor> {
    gated_rms_residual(x, branch, gate, MOD_NORM_EPS)
}

/// Final adaptive LayerNorm and projection to patch pixels.
#[derive(Debug, Clone)]
pub struct FinalLayer {
    /// [`top::NORM_OUT`] (genmo `final_layer.mod`).
    modulation: Linear,
    /// [`top::PROJ_OUT`] (genmo `final_layer.linear`).
    linear: Linear,
}

impl FinalLayer {
    /// Loads [`top::NORM_OUT`] (diffusers order `[scale; shift]`) and [`top::PROJ_OUT`].
    pub fn load(weights: &Weights, config: &Config) -> Result<Self> {
        let dx = config.hidden_size_x();
        let out = config.patch_size * config.patch_size * config.out_channels;
        Ok(Self {
            modulation: load_linear(weights, top::NORM_OUT.diffusers, 2 * dx, dx, true)?,
            linear: load_linear(weights, top::PROJ_OUT.diffusers, out, dx, true)?,
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
        self.linear.forward(normed)
    }
}
