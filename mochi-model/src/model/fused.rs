//! Fused CPU kernels for the elementwise steps of a block that candle would run as several
//! allocating passes: the interleaved RoPE rotation (five passes and a concatenation in
//! candle ops), SwiGLU's `value ⊙ SiLU(gate)` on the packed `[value; gate]` projection (a
//! strided copy, an activation and a product), the modulated RMS norm `rms(x)·(1 + scale)`
//! and the gated residual `x + tanh(gate)·rms(branch)` (two and three passes). Each runs in
//! one pass, rows in parallel on rayon's pool (the one candle's CPU ops use). Other
//! devices, other dtypes and non-contiguous inputs take the candle-op form, which is the
//! reference the unit tests compare with.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

use super::ops::{rms_norm, scale_tokens};

/// Whether every tensor can take a fused CPU kernel.
fn fusable(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
}

/// `rms(x)·(1 + scale)` for tokens `x (B, N, D)` and a per-sample `scale (B, D)`; f32.
pub fn modulated_rms_norm(x: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    let scale = scale.contiguous()?;
    if fusable(&[x, &scale]) {
        x.apply_op2_no_bwd(&scale, &ModulatedRms { eps: eps as f32 })
    } else {
        scale_tokens(&rms_norm(x, eps)?, &(scale + 1.0)?)
    }
}

/// `x + tanh(gate)·rms(branch)` for tokens `x`, `branch (B, N, D)` and a per-sample
/// `gate (B, D)`; f32.
pub fn gated_rms_residual(x: &Tensor, branch: &Tensor, gate: &Tensor, eps: f64) -> Result<Tensor> {
    let gate = gate.contiguous()?;
    if fusable(&[x, branch, &gate]) {
        x.apply_op3_no_bwd(branch, &gate, &GatedResidual { eps: eps as f32 })
    } else {
        x + scale_tokens(&rms_norm(branch, eps)?, &gate.tanh()?)?
    }
}

/// `1 / sqrt(mean(row²) + eps)`.
fn inverse_rms(row: &[f32], eps: f32) -> f32 {
    let sum: f32 = row.iter().map(|v| v * v).sum();
    1.0 / (sum / row.len().max(1) as f32 + eps).sqrt()
}

/// `(B, N, D)` and `(B, D)` shapes, or an error naming both.
fn tokens_and_vector(tokens: &Layout, vector: &Layout) -> Result<(usize, usize, usize)> {
    let (batch, count, width) = tokens.shape().dims3()?;
    if vector.shape().dims() != [batch, width] {
        candle_core::bail!(
            "per-sample vector {:?} does not fit tokens {:?}",
            vector.shape(),
            tokens.shape()
        );
    }
    Ok((batch, count, width))
}

struct ModulatedRms {
    eps: f32,
}

impl CustomOp2 for ModulatedRms {
    fn name(&self) -> &'static str {
        "mochi-modulated-rms"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, count, width) = tokens_and_vector(l1, l2)?;
        let (x, scale) = (slice(s1, l1)?, slice(s2, l2)?);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(width)
            .zip(x.par_chunks(width))
            .enumerate()
            .for_each(|(i, (out, x))| {
                let scale = &scale[(i / count) * width..(i / count + 1) * width];
                let inv = inverse_rms(x, self.eps);
                for ((out, x), s) in out.iter_mut().zip(x).zip(scale) {
                    *out = x * inv * (1.0 + s);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct GatedResidual {
    eps: f32,
}

impl CustomOp3 for GatedResidual {
    fn name(&self) -> &'static str {
        "mochi-gated-rms-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, count, width) = tokens_and_vector(l1, l3)?;
        if l2.shape() != l1.shape() {
            candle_core::bail!(
                "branch {:?} is not shaped as x {:?}",
                l2.shape(),
                l1.shape()
            );
        }
        let (x, branch, gate) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(width)
            .zip(x.par_chunks(width).zip(branch.par_chunks(width)))
            .enumerate()
            .for_each(|(i, (out, (x, branch)))| {
                let gate = &gate[(i / count) * width..(i / count + 1) * width];
                let inv = inverse_rms(branch, self.eps);
                for (((out, x), b), g) in out.iter_mut().zip(x).zip(branch).zip(gate) {
                    *out = x + g.tanh() * (b * inv);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `x (B, N, H, hd)` rotated pairwise by `cos`/`sin` `(N, H, hd/2)`:
/// `(x₀, x₁) → (x₀·cos − x₁·sin, x₀·sin + x₁·cos)`; f32 out.
pub fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fusable(&[x, cos, sin]) {
        x.apply_op3_no_bwd(cos, sin, &Rope)
    } else {
        rope_reference(x, cos, sin)
    }
}

/// [`rope_interleaved`] in candle ops.
pub fn rope_reference(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (batch, tokens, heads, head_dim) = x.dims4()?;
    let pairs = x
        .to_dtype(DType::F32)?
        .reshape((batch, tokens, heads, head_dim / 2, 2))?;
    let even = pairs.narrow(4, 0, 1)?;
    let odd = pairs.narrow(4, 1, 1)?;
    let cos = cos.unsqueeze(0)?.unsqueeze(4)?;
    let sin = sin.unsqueeze(0)?.unsqueeze(4)?;
    let rotated_even = (even.broadcast_mul(&cos)? - odd.broadcast_mul(&sin)?)?;
    let rotated_odd = (even.broadcast_mul(&sin)? + odd.broadcast_mul(&cos)?)?;
    Tensor::cat(&[rotated_even, rotated_odd], 4)?.reshape((batch, tokens, heads, head_dim))
}

/// `h (.., 2·hidden)` = `[value; gate]` → `value ⊙ SiLU(gate)` `(.., hidden)`, in h's dtype.
pub fn swiglu_packed(h: &Tensor) -> Result<Tensor> {
    if fusable(&[h]) {
        h.apply_op1_no_bwd(&SwiGlu)
    } else {
        swiglu_reference(h)
    }
}

/// [`swiglu_packed`] in candle ops.
pub fn swiglu_reference(h: &Tensor) -> Result<Tensor> {
    let hidden = h.dim(candle_core::D::Minus1)? / 2;
    let value = h.narrow(candle_core::D::Minus1, 0, hidden)?;
    let gate = h.narrow(candle_core::D::Minus1, hidden, hidden)?;
    value * gate.silu()?
}

/// The contiguous f32 data a layout covers.
fn slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused op: input not contiguous".into()))?;
    Ok(&storage.as_slice::<f32>()?[start..end])
}

struct Rope;

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "mochi-rope-interleaved"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, tokens, heads, head_dim) = l1.shape().dims4()?;
        let half = head_dim / 2;
        if head_dim % 2 != 0
            || l2.shape().dims() != [tokens, heads, half]
            || l3.shape().dims() != [tokens, heads, half]
        {
            candle_core::bail!(
                "rope: x {:?} needs cos/sin of [{tokens}, {heads}, {half}], got {:?} / {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let (x, cos, sin) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let row = heads * head_dim;
        let mut out = vec![0f32; batch * tokens * row];
        out.par_chunks_mut(row)
            .zip(x.par_chunks(row))
            .enumerate()
            .for_each(|(i, (out, x))| {
                let n = i % tokens;
                let angles = n * heads * half..(n + 1) * heads * half;
                let (cos, sin) = (&cos[angles.clone()], &sin[angles]);
                for ((out, x), (c, s)) in out
                    .chunks_exact_mut(2)
                    .zip(x.chunks_exact(2))
                    .zip(cos.iter().zip(sin))
                {
                    out[0] = x[0] * c - x[1] * s;
                    out[1] = x[0] * s + x[1] * c;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct SwiGlu;

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "mochi-swiglu-packed"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        let Some((&width, outer)) = dims.split_last() else {
            candle_core::bail!("swiglu: a scalar has no features");
        };
        if width % 2 != 0 {
            candle_core::bail!("swiglu: {width} features are not [value; gate] halves");
        }
        let hidden = width / 2;
        let h = slice(storage, layout)?;
        let rows: usize = outer.iter().product();
        let mut out = vec![0f32; rows * hidden];
        out.par_chunks_mut(hidden)
            .zip(h.par_chunks(width))
            .for_each(|(out, h)| {
                let (value, gate) = h.split_at(hidden);
                for ((out, v), g) in out.iter_mut().zip(value).zip(gate) {
                    *out = v * (g / (1.0 + (-g).exp()));
                }
            });
        let mut shape = outer.to_vec();
        shape.push(hidden);
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .expect("diff")
    }

    #[test]
    fn the_fused_rope_equals_the_candle_op_form() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 3, 8), &dev).expect("x");
        let angles = Tensor::randn(0f32, 2.0, (5, 3, 4), &dev).expect("angles");
        let (cos, sin) = (angles.cos().expect("cos"), angles.sin().expect("sin"));
        let fused = rope_interleaved(&x, &cos, &sin).expect("fused");
        let reference = rope_reference(&x, &cos, &sin).expect("reference");
        assert_eq!(fused.dims(), reference.dims());
        assert!(max_diff(&fused, &reference) < 1e-6);
        // A strided input takes the candle-op form and agrees too.
        let strided = x.transpose(1, 2).expect("t").transpose(1, 2).expect("t");
        assert!(
            max_diff(
                &rope_interleaved(&strided, &cos, &sin).expect("s"),
                &reference
            ) < 1e-6
        );
        let wrong = Tensor::zeros((4, 3, 4), DType::F32, &dev).expect("wrong");
        assert!(rope_interleaved(&x, &wrong, &wrong).is_err());
    }

    #[test]
    fn the_fused_norms_equal_the_candle_op_form() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 9, 16), &dev).expect("x");
        let branch = Tensor::randn(0f32, 3.0, (2, 9, 16), &dev).expect("branch");
        // Per-sample vectors as the model has them: a chunk of a wider projection.
        let wide = Tensor::randn(0f32, 1.0, (2, 32), &dev).expect("wide");
        let vector = wide.narrow(1, 16, 16).expect("chunk");
        let fused = modulated_rms_norm(&x, &vector, 1e-6).expect("fused");
        let reference = scale_tokens(
            &rms_norm(&x, 1e-6).expect("rms"),
            &(&vector + 1.0).expect("+1"),
        )
        .expect("reference");
        assert!(max_diff(&fused, &reference) < 1e-5);
        let fused = gated_rms_residual(&x, &branch, &vector, 1e-6).expect("fused");
        let reference = (&x
            + scale_tokens(
                &rms_norm(&branch, 1e-6).expect("rms"),
                &vector.tanh().expect("tanh"),
            )
            .expect("scale"))
        .expect("reference");
        assert!(max_diff(&fused, &reference) < 1e-5);
        let short = Tensor::zeros((2, 8), DType::F32, &dev).expect("short");
        assert!(modulated_rms_norm(&x, &short, 1e-6).is_err());
    }

    #[test]
    fn the_fused_swiglu_equals_the_candle_op_form() {
        let h = Tensor::randn(0f32, 2.0, (2, 7, 12), &Device::Cpu).expect("h");
        let fused = swiglu_packed(&h).expect("fused");
        let reference = swiglu_reference(&h).expect("reference");
        assert_eq!(fused.dims(), &[2, 7, 6]);
        assert!(max_diff(&fused, &reference) < 1e-5);
        let odd = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).expect("odd");
        assert!(swiglu_packed(&odd).is_err());
    }
}
