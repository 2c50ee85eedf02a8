//! Small numeric building blocks shared by the AsymmDiT layers: a dtype-aware linear
//! layer and the weightless / weighted RMS norms, all computed in f32.

use candle_core::{D, DType, Result, Tensor};

/// A linear layer whose weight may be stored in bf16; input and output are f32.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`, in the model's storage dtype.
    weight: Tensor,
    /// `[out]`, always f32.
    bias: Option<Tensor>,
}

impl Linear {
    /// Wraps a `[out, in]` weight and an optional `[out]` bias (converted to f32).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let bias = match bias {
            Some(bias) => Some(bias.to_dtype(DType::F32)?),
            None => None,
        };
        Ok(Self { weight, bias })
    }

    /// Output features.
    pub fn out_dim(&self) -> Result<usize> {
        self.weight.dim(0)
    }

    /// The stored weight, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `x · Wᵀ + b` for an f32 input of shape `(.., in)`; the matmul runs in the weight's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x_cast = x.to_dtype(self.weight.dtype())?;
        let dims = x_cast.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let flat = x_cast.reshape((rows, in_dim))?;
        let out = flat.matmul(&self.weight.t()?)?.to_dtype(DType::F32)?;
        let out = match &self.bias {
            Some(bias) => out.broadcast_add(bias)?,
            None => out,
        };
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = self.weight.dim(0)?;
        out.reshape(out_dims)
    }
}

/// `x / sqrt(mean(x²) + eps)` over the last dimension, in f32 (no learned weight).
pub fn rms_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let width = x.dim(D::Minus1)?;
    let ones = Tensor::ones(width, DType::F32, x.device())?;
    candle_nn::ops::rms_norm(&x, &ones, eps as f32)
}

/// `w ⊙ x / sqrt(mean(x²) + eps)` over the last dimension, in f32.
pub fn rms_norm_weighted(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    candle_nn::ops::rms_norm(&x, &weight.to_dtype(DType::F32)?, eps as f32)
}

/// LayerNorm without affine parameters over the last dimension, in f32.
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let width = x.dim(D::Minus1)?;
    let ones = Tensor::ones(width, DType::F32, x.device())?;
    let zeros = Tensor::zeros(width, DType::F32, x.device())?;
    candle_nn::ops::layer_norm(&x, &ones, &zeros, eps as f32)
}

/// Multiplies tokens `(B, N, D)` by a per-sample vector `(B, D)` broadcast over tokens.
pub fn scale_tokens(x: &Tensor, per_sample: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(&per_sample.unsqueeze(1)?)
}
