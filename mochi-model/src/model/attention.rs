//! Joint attention over `[visual tokens ; valid text tokens]` with the learned RoPE on
//! the visual queries and keys. Padded text tokens are removed (not zero-filled), and
//! their output rows are zero. Scores are computed in query chunks so that memory
//! grows linearly with the sequence length.

use candle_core::{D, DType, Result, Tensor};

/// Upper bound on one chunk's f32 score matrix, in bytes.
pub const SCORE_CHUNK_BYTES: usize = 256 << 20;

/// Applies the interleaved-pair rotation to `x (B, N, H, hd)` with `cos`/`sin` `(N, H, hd/2)`
/// (one fused pass on the CPU, [`super::fused::rope_interleaved`]); f32 out.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    super::fused::rope_interleaved(&x.to_dtype(DType::F32)?, cos, sin)
}

/// Softmax attention `softmax(q·kᵀ·scale)·v` for `(H, S, hd)` inputs, processed in query
/// chunks; matmuls run in `compute_dtype`, the softmax in f32. Returns f32 `(H, S, hd)`.
pub fn chunked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    compute_dtype: DType,
) -> Result<Tensor> {
    let (heads, _, _) = q.dims3()?;
    let keys = k.dim(1)?;
    let chunk_rows = SCORE_CHUNK_BYTES / (heads * keys.max(1) * 4);
    attention_in_chunks(q, k, v, compute_dtype, chunk_rows)
}

/// [`chunked_attention`] with an explicit number of query rows per chunk.
pub fn attention_in_chunks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    compute_dtype: DType,
    chunk_rows: usize,
) -> Result<Tensor> {
    let (_, queries, head_dim) = q.dims3()?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let q = q.to_dtype(compute_dtype)?;
    let k_t = k.to_dtype(compute_dtype)?.t()?.contiguous()?;
    let v = v.to_dtype(compute_dtype)?.contiguous()?;
    let chunk = chunk_rows.clamp(1, queries.max(1));
    let mut outputs = Vec::with_capacity(queries.div_ceil(chunk));
    let mut start = 0;
    while start < queries {
        let len = chunk.min(queries - start);
        let q_chunk = q.narrow(1, start, len)?.contiguous()?;
        let scores = (q_chunk.matmul(&k_t)?.to_dtype(DType::F32)? * scale)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(compute_dtype)?;
        outputs.push(probs.matmul(&v)?.to_dtype(DType::F32)?);
        start += len;
    }
    Tensor::cat(&outputs, 1)
}

/// Query/key/value of one stream, each `(B, tokens, H, hd)`.
#[derive(Debug)]
pub struct Qkv {
    /// Queries.
    pub q: Tensor,
    /// Keys.
    pub k: Tensor,
    /// Values.
    pub v: Tensor,
}

/// Where the attention outputs of the valid text tokens go when the mask is not a prefix.
/// With a prefix mask (what a tokenizer padding on the right makes, and all serving builds)
/// both are the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextLayout {
    /// Back to each token's own position, zeros at masked ones: genmo's `AsymmDiTJoint`
    /// (`pad_and_split_xy`), the code the released weights were trained with.
    #[default]
    InPlace,
    /// Packed to the front in order, zeros after: diffusers' `MochiAttnProcessor2_0`.
    Packed,
}

/// Joint attention of the visual stream `x` and text stream `y` with text `mask (B, L)`
/// (nonzero = valid); the valid text tokens' outputs are placed by `layout`. Returns
/// `(B, N, H·hd)` and `(B, L, H·hd)` in f32.
pub fn joint_attention(
    x: &Qkv,
    y: &Qkv,
    mask: &Tensor,
    compute_dtype: DType,
    layout: TextLayout,
) -> Result<(Tensor, Tensor)> {
    let (batch, visual, heads, head_dim) = x.q.dims4()?;
    let text = y.q.dim(1)?;
    let width = heads * head_dim;
    let mask_rows = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let device = x.q.device();
    let mut out_x = Vec::with_capacity(batch);
    let mut out_y = Vec::with_capacity(batch);
    for (b, row) in mask_rows.iter().enumerate() {
        let valid: Vec<u32> = row
            .iter()
            .enumerate()
            .filter(|(_, m)| **m != 0.0)
            .map(|(i, _)| i as u32)
            .collect();
        let index = Tensor::from_vec(valid.clone(), valid.len(), device)?;
        let gather = |visual_t: &Tensor, text_t: &Tensor| -> Result<Tensor> {
            let visual_b = visual_t.get(b)?;
            let joined = if valid.is_empty() {
                visual_b
            } else {
                let text_b = text_t.get(b)?.index_select(&index, 0)?;
                Tensor::cat(&[visual_b, text_b], 0)?
            };
            joined.transpose(0, 1)?.contiguous()
        };
        let q = gather(&x.q, &y.q)?;
        let k = gather(&x.k, &y.k)?;
        let v = gather(&x.v, &y.v)?;
        let out = chunked_attention(&q, &k, &v, compute_dtype)?
            .transpose(0, 1)?
            .reshape(((), width))?;
        out_x.push(out.narrow(0, 0, visual)?);
        let zeros = Tensor::zeros((text, width), DType::F32, device)?;
        let valid_out = out.narrow(0, visual, valid.len())?;
        let text_out = match layout {
            _ if valid.is_empty() => zeros,
            TextLayout::InPlace => zeros.index_add(&index, &valid_out, 0)?,
            TextLayout::Packed => Tensor::cat(
                &[valid_out, zeros.narrow(0, valid.len(), text - valid.len())?],
                0,
            )?,
        };
        out_y.push(text_out);
    }
    Ok((Tensor::stack(&out_x, 0)?, Tensor::stack(&out_y, 0)?))
}

/// Naive (unchunked) reference attention for `(H, S, hd)` f32 inputs, used to check
/// [`chunked_attention`].
pub fn naive_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let head_dim = q.dim(D::Minus1)?;
    let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
    candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn seeded(shape: (usize, usize, usize), seed: u64) -> Tensor {
        let count = shape.0 * shape.1 * shape.2;
        let mut state = seed;
        let data: Vec<f32> = (0..count)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).expect("tensor")
    }

    #[test]
    fn chunked_attention_matches_naive() {
        let q = seeded((2, 37, 8), 1);
        let k = seeded((2, 41, 8), 2);
        let v = seeded((2, 41, 8), 3);
        let chunked = attention_in_chunks(&q, &k, &v, DType::F32, 5).expect("chunked");
        let naive = naive_attention(&q, &k, &v).expect("naive");
        let diff = (chunked - naive)
            .expect("sub")
            .abs()
            .expect("abs")
            .max_all()
            .expect("max")
            .to_scalar::<f32>()
            .expect("scalar");
        assert!(diff < 1e-6, "max diff {diff}");
    }

    #[test]
    fn rope_with_zero_angles_is_identity() {
        let x = seeded((3, 2, 8), 4).reshape((1, 3, 2, 8)).expect("reshape");
        let cos = Tensor::ones((3, 2, 4), DType::F32, &Device::Cpu).expect("ones");
        let sin = Tensor::zeros((3, 2, 4), DType::F32, &Device::Cpu).expect("zeros");
        let rotated = apply_rope(&x, &cos, &sin).expect("rope");
        let diff = (rotated - &x)
            .expect("sub")
            .abs()
            .expect("abs")
            .max_all()
            .expect("max")
            .to_scalar::<f32>()
            .expect("scalar");
        assert_eq!(diff, 0.0);
    }
}
