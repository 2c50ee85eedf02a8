//! Small numeric building blocks shared by the AsymmDiT layers: a dtype-aware linear
//! layer and the weightless / weighted RMS norms, all computed in f32.

use candle_core::{D, DType, Result, Tensor};

/// A linear layer whose weight may be stored in bf16; input and output are f32.
///
/// The weight is kept transposed, `[in, out]` and contiguous, as the matmul reads it:
/// candle's CPU matmul (the `gemm` crate) packs a contiguous right-hand side much faster
/// than the strided view `Wᵀ` of a `[out, in]` weight. On the mid-size benchmark this is
/// 13 % of the whole forward (`docs/benchmarks.md`). It costs one copy per weight at load.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `Wᵀ`, `[in, out]`, contiguous, in the model's storage dtype.
    weight_t: Tensor,
    /// `[out]`, always f32.
    bias: Option<Tensor>,
}

impl Linear {
    /// Wraps a `[out, in]` weight (checkpoint layout) and an optional `[out]` bias
    /// (converted to f32).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let bias = match bias {
            Some(bias) => Some(bias.to_dtype(DType::F32)?),
            None => None,
        };
        let weight_t = weight.t()?.contiguous()?;
        Ok(Self { weight_t, bias })
    }

    /// Output features.
    pub fn out_dim(&self) -> Result<usize> {
        self.weight_t.dim(1)
    }

    /// The storage dtype of the weight (what the matmul runs in).
    pub fn dtype(&self) -> DType {
        self.weight_t.dtype()
    }

    /// `x · Wᵀ + b` for an f32 input of shape `(.., in)`; the matmul runs in the weight's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x_cast = x.to_dtype(self.weight_t.dtype())?;
        let dims = x_cast.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let flat = x_cast.reshape((rows, in_dim))?;
        let out = flat.matmul(&self.weight_t)?.to_dtype(DType::F32)?;
        let out = match &self.bias {
            Some(bias) => out.broadcast_add(bias)?,
            None => out,
        };
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = self.weight_t.dim(1)?;
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
