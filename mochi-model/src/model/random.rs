//! Random AsymmDiT checkpoints in diffusers naming, built directly on the target device,
//! for benchmarks at sizes whose weights cannot be shipped (the 10B model is 20 GB in
//! bf16). Values are N(0, 0.02²) (norm weights 1, `pos_frequencies` N(0, 0.1²)); they
//! make no sense as a model, only as a workload.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};

use super::{Config, keys};

/// SwiGLU hidden width for a stream of width `dim` (diffusers' `(4·dim·2)/3`; equals
/// genmo's rounded width for the released model: 8192 and 4096).
pub fn ffn_hidden(dim: usize) -> usize {
    4 * dim * 2 / 3
}

/// Every tensor name and shape of a diffusers checkpoint for `config` (the [`keys`]).
pub fn checkpoint_shapes(config: &Config) -> Vec<(String, Vec<usize>)> {
    use keys::{block, top};
    let dx = config.hidden_size_x();
    let dy = config.hidden_size_y;
    let dt = config.text_embed_dim;
    let hd = config.head_dim;
    let p = config.patch_size;
    let (fx, fy) = (ffn_hidden(dx), ffn_hidden(dy));
    let mut shapes: Vec<(String, Vec<usize>)> = Vec::new();
    // A linear layer at `path`: `[out, in]` weight (`[out]` for `input == 0`: the q/k
    // norms' per-feature weights), optionally an `[out]` bias.
    let mut linear = |path: String, out: usize, input: usize, bias: bool| {
        let weight = if input == 0 {
            vec![out]
        } else {
            vec![out, input]
        };
        shapes.push((format!("{path}.weight"), weight));
        if bias {
            shapes.push((format!("{path}.bias"), vec![out]));
        }
    };
    let top_level = [
        (top::TIME_LINEAR_1, dx, config.time_embed_dim),
        (top::TIME_LINEAR_2, dx, dx),
        (top::POOL_TO_KV, 2 * dt, dt),
        (top::POOL_TO_Q, dt, dt),
        (top::POOL_TO_OUT, dx, dt),
        (top::CAPTION_PROJ, dy, dt),
        (top::NORM_OUT, 2 * dx, dx),
        (top::PROJ_OUT, p * p * config.out_channels, dx),
    ];
    for (key, out, input) in top_level {
        linear(key.diffusers.to_owned(), out, input, true);
    }
    for i in 0..config.num_layers {
        let last = i + 1 == config.num_layers;
        linear(block::MOD_X.at(i), 4 * dx, dx, true);
        if last {
            linear(block::MOD_Y_LAST.at(i), dy, dx, true);
        } else {
            linear(block::MOD_Y.at(i), 4 * dy, dx, true);
            linear(block::PROJ_Y.at(i), dy, dx, true);
            linear(block::MLP_Y_W1.at(i), 2 * fy, dy, false);
            linear(block::MLP_Y_W2.at(i), dy, fy, false);
        }
        for key in [block::TO_Q, block::TO_K, block::TO_V] {
            linear(key.at(i), dx, dx, false);
        }
        for key in [block::ADD_Q_PROJ, block::ADD_K_PROJ, block::ADD_V_PROJ] {
            linear(key.at(i), dx, dy, false);
        }
        linear(block::PROJ_X.at(i), dx, dx, true);
        linear(block::MLP_X_W1.at(i), 2 * fx, dx, false);
        linear(block::MLP_X_W2.at(i), dx, fx, false);
        for key in [
            block::NORM_Q,
            block::NORM_K,
            block::NORM_ADDED_Q,
            block::NORM_ADDED_K,
        ] {
            linear(key.at(i), hd, 0, false);
        }
    }
    shapes.push((
        top::PATCH_EMBED.tensor("weight"),
        vec![dx, config.in_channels, p, p],
    ));
    shapes.push((top::PATCH_EMBED.tensor("bias"), vec![dx]));
    shapes.push((
        keys::POS_FREQUENCIES.to_owned(),
        vec![3, config.num_heads, hd / 2],
    ));
    shapes
}

/// A random checkpoint for `config` on `device`, matmul weights stored in `dtype`
/// (norm weights and `pos_frequencies` in f32, as the loader keeps them).
pub fn random_checkpoint(
    config: &Config,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    for (name, shape) in checkpoint_shapes(config) {
        let tensor = if name.contains(".norm_") {
            Tensor::ones(shape, DType::F32, device)?
        } else if name == "pos_frequencies" {
            Tensor::randn(0f32, 0.1, shape, device)?
        } else {
            Tensor::randn(0f32, 0.02, shape, device)?.to_dtype(dtype)?
        };
        tensors.insert(name, tensor);
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AsymmDiT;
    use crate::model::weights::Weights;

    #[test]
    fn released_config_has_ten_billion_parameters() {
        let params: usize = checkpoint_shapes(&Config::mochi_1_preview())
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum();
        // Spec §2.1: ≈ 10.0 B, ≈ 207.6 M per block.
        assert!((9.9e9..10.1e9).contains(&(params as f64)), "{params}");
        assert_eq!(ffn_hidden(3072), 8192);
        assert_eq!(ffn_hidden(1536), 4096);
    }

    #[test]
    fn random_tiny_checkpoint_loads_and_runs() {
        let config = Config::tiny();
        let device = Device::Cpu;
        let tensors = random_checkpoint(&config, DType::F32, &device).expect("random");
        let weights = Weights::from_tensors(tensors, DType::F32, &device);
        assert_eq!(
            Config::from_weights(&weights).expect("derived").num_layers,
            2
        );
        let model = AsymmDiT::load(&weights, &config).expect("model");
        let latents = Tensor::zeros((1, 12, 1, 4, 6), DType::F32, &device).expect("latents");
        let text = Tensor::ones((1, 5, 32), DType::F32, &device).expect("text");
        let mask = Tensor::ones((1, 5), DType::F32, &device).expect("mask");
        let t = Tensor::new(&[500f32], &device).expect("t");
        let out = model.forward(&latents, &t, &text, &mask).expect("forward");
        assert_eq!(out.dims(), &[1, 12, 1, 4, 6]);
        let sum = out
            .abs()
            .expect("abs")
            .sum_all()
            .expect("sum")
            .to_scalar::<f32>()
            .expect("scalar");
        assert!(sum.is_finite() && sum > 0.0, "{sum}");
    }
}
