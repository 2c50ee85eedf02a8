//! Times candle's f32 CPU matmul on the mid-size DiT's shapes, `[M, K] · [K, N]`
//! with a contiguous right-hand side (how `ops::Linear` multiplies), to separate GEMM speed
//! from the rest of the forward. `tools/bench_gemm_vs_torch.sh` runs it beside PyTorch.
//!
//! ```text
//! RAYON_NUM_THREADS=2 target/release/examples/gemm_bench [REPS]
//! ```

use std::time::Instant;

use candle_core::{Device, Tensor};

/// `(M, K, N)` of the mid-size forward (`tools/bench_dit_vs_torch.sh`): the caption pool's
/// keys and values (2 × 65 tokens, 4096 → 8192), the text stream's q/k/v (2 × 64 tokens),
/// a modulation (2 rows), then the visual stream's q/k/v, SwiGLU in and out, and attention
/// output (CFG batch × 256 tokens, 1536 wide).
const SHAPES: [(usize, usize, usize); 7] = [
    (130, 4096, 8192),
    (128, 768, 4608),
    (2, 1536, 6144),
    (512, 1536, 4608),
    (512, 1536, 8192),
    (512, 4096, 1536),
    (512, 1536, 1536),
];

fn main() -> candle_core::Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let device = Device::Cpu;
    let mut total = 0.0;
    for (m, k, n) in SHAPES {
        let a = Tensor::randn(0f32, 1.0, (m, k), &device)?;
        let b = Tensor::randn(0f32, 1.0, (k, n), &device)?;
        drop(a.matmul(&b)?);
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let start = Instant::now();
            drop(a.matmul(&b)?);
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        let median = times[reps / 2];
        total += median;
        println!("candle {m}x{k}x{n} median {median:.2} ms");
    }
    println!("candle total median {total:.2} ms");
    Ok(())
}
