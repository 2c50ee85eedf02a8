//! Causal 3×3×3 convolution (candle has no conv3d), on frame-major tensors `(T, C, H, W)`.
//!
//! Time is padded causally (two frames in front: copies of frame 0, or the two frames
//! cached from the previous chunk), H and W are replicate-padded by one, then a valid
//! 3×3×3 convolution runs (`docs/mochi-model-spec.md` §3.2). Two strategies compute it:
//! a sum of three per-temporal-tap `conv2d`s, or im2col + one matmul.

use candle_core::{DType, Result, Tensor};

/// How a [`CausalConv3d`] computes its convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Conv3dStrategy {
    /// `Σ_k conv2d(x[k..k+T], W[:, :, k])`: three 2D convolutions over all frames.
    #[default]
    TapConv2d,
    /// Gathers the 27 shifted views into `(T, C·27, H·W)` columns and multiplies by
    /// the `[C', C·27]` weight (27× the input in memory).
    Im2col,
}

/// Temporal kernel size of the decoder's convolutions.
pub const KERNEL_T: usize = 3;
/// Frames of input context a causal conv carries between chunks.
pub const CONTEXT: usize = KERNEL_T - 1;

/// A causal 3×3×3 convolution with replicate padding, stride 1.
#[derive(Debug, Clone)]
pub struct CausalConv3d {
    /// `[C', C, 3, 3, 3]`.
    weight: Tensor,
    /// `[1, C', 1, 1]`, f32.
    bias: Tensor,
}

impl CausalConv3d {
    /// Wraps a `[C', C, 3, 3, 3]` weight and a `[C']` bias.
    pub fn new(weight: Tensor, bias: Tensor) -> Result<Self> {
        let (out_ch, _, kt, kh, kw) = weight.dims5()?;
        if (kt, kh, kw) != (KERNEL_T, 3, 3) {
            candle_core::bail!("causal conv kernel {:?} is not 3x3x3", weight.dims());
        }
        let bias = bias.to_dtype(DType::F32)?.reshape((1, out_ch, 1, 1))?;
        Ok(Self { weight, bias })
    }

    /// Output channels.
    pub fn out_channels(&self) -> Result<usize> {
        self.weight.dim(0)
    }

    /// Convolves `x` `(T, C, H, W)` (f32) given the previous chunk's context (`None`:
    /// replicate frame 0). Returns `(T, C', H, W)` and the context for the next chunk
    /// (the last two time-padded input frames, an owned copy).
    pub fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        strategy: Conv3dStrategy,
    ) -> Result<(Tensor, Tensor)> {
        let t = x.dim(0)?;
        let x = x.to_dtype(self.weight.dtype())?;
        let padded_t = match context {
            Some(ctx) => Tensor::cat(&[&ctx.to_dtype(x.dtype())?, &x], 0)?,
            None => {
                let first = x.narrow(0, 0, 1)?;
                let mut parts = vec![first; CONTEXT];
                parts.push(x.clone());
                Tensor::cat(&parts, 0)?
            }
        };
        let next_context = padded_t.narrow(0, t, CONTEXT)?.copy()?;
        let padded = padded_t.pad_with_same(2, 1, 1)?.pad_with_same(3, 1, 1)?;
        drop(padded_t);
        let out = match strategy {
            Conv3dStrategy::TapConv2d => self.taps(&padded, t)?,
            Conv3dStrategy::Im2col => self.im2col(&padded, t)?,
        };
        let out = out.to_dtype(DType::F32)?.broadcast_add(&self.bias)?;
        Ok((out, next_context))
    }

    fn taps(&self, padded: &Tensor, t: usize) -> Result<Tensor> {
        // candle's CPU conv2d has no bf16 kernel. There each tap runs in f32 on the bf16
        // values (exact products, f32 sums: what a GPU's bf16 convolution accumulates in)
        // and is rounded back to bf16, so a CPU run shows the error a GPU run has.
        let dtype = padded.dtype();
        let widen = padded.device().is_cpu() && dtype == DType::BF16;
        let mut acc: Option<Tensor> = None;
        for k in 0..KERNEL_T {
            let kernel = self.weight.narrow(2, k, 1)?.squeeze(2)?.contiguous()?;
            let frames = padded.narrow(0, k, t)?;
            let y = if widen {
                frames
                    .to_dtype(DType::F32)?
                    .conv2d(&kernel.to_dtype(DType::F32)?, 0, 1, 1, 1)?
                    .to_dtype(dtype)?
            } else {
                frames.conv2d(&kernel, 0, 1, 1, 1)?
            };
            acc = Some(match acc {
                None => y,
                Some(a) => (a + y)?,
            });
        }
        acc.ok_or_else(|| candle_core::Error::Msg("empty temporal kernel".into()))
    }

    fn im2col(&self, padded: &Tensor, t: usize) -> Result<Tensor> {
        let (_, c, hp, wp) = padded.dims4()?;
        let (h, w) = (hp - 2, wp - 2);
        let out_ch = self.weight.dim(0)?;
        let mut views = Vec::with_capacity(27);
        for kt in 0..KERNEL_T {
            let frames = padded.narrow(0, kt, t)?;
            for kh in 0..3 {
                let rows = frames.narrow(2, kh, h)?;
                for kw in 0..3 {
                    views.push(rows.narrow(3, kw, w)?);
                }
            }
        }
        // (T, C, 27, H, W): column index c·27 + kt·9 + kh·3 + kw matches the weight layout.
        let cols = Tensor::stack(&views, 2)?.reshape((t, c * 27, h * w))?;
        drop(views);
        let kernel = self.weight.reshape((out_ch, c * 27))?;
        kernel.broadcast_matmul(&cols)?.reshape((t, out_ch, h, w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn conv() -> CausalConv3d {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.2, (5, 4, 3, 3, 3), &dev).expect("w");
        let b = Tensor::randn(0f32, 0.2, 5, &dev).expect("b");
        CausalConv3d::new(w, b).expect("conv")
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .expect("sub")
            .abs()
            .expect("abs")
            .max_all()
            .expect("max")
            .to_scalar::<f32>()
            .expect("scalar")
    }

    #[test]
    fn strategies_agree() {
        let c = conv();
        let x = Tensor::randn(0f32, 1.0, (4, 4, 5, 6), &Device::Cpu).expect("x");
        let (a, ca) = c
            .forward(&x, None, Conv3dStrategy::TapConv2d)
            .expect("taps");
        let (b, cb) = c.forward(&x, None, Conv3dStrategy::Im2col).expect("im2col");
        assert_eq!(a.dims(), &[4, 5, 5, 6]);
        assert!(
            max_diff(&a, &b) < 1e-5,
            "strategies differ: {}",
            max_diff(&a, &b)
        );
        assert_eq!(max_diff(&ca, &cb), 0.0);
    }

    #[test]
    fn context_chunks_equal_whole() {
        let c = conv();
        let x = Tensor::randn(0f32, 1.0, (5, 4, 3, 4), &Device::Cpu).expect("x");
        let (whole, _) = c
            .forward(&x, None, Conv3dStrategy::TapConv2d)
            .expect("whole");
        let (a, ctx) = c
            .forward(
                &x.narrow(0, 0, 2).expect("n"),
                None,
                Conv3dStrategy::TapConv2d,
            )
            .expect("a");
        let (b, _) = c
            .forward(
                &x.narrow(0, 2, 3).expect("n"),
                Some(&ctx),
                Conv3dStrategy::TapConv2d,
            )
            .expect("b");
        let joined = Tensor::cat(&[a, b], 0).expect("cat");
        assert_eq!(max_diff(&whole, &joined), 0.0);
    }
}
