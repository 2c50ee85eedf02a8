//! Model directories in the release's diffusers layout: what each component must hold
//! (every tensor name and shape, derived from its `config.json`), the check behind
//! `mochi model check`, and the embedded tiny model that `mochi up` creates on first start.
//!
//! Layout (`genmo/mochi-1-preview`, diffusers): `transformer/` (config + sharded
//! safetensors with an index, optionally a `bf16` variant), `text_encoder/` (T5 config +
//! safetensors), `tokenizer/spiece.model`, `vae/` (config + safetensors; the decoder's keys
//! are prefixed `decoder.`), `scheduler/`, `model_index.json`.

pub mod check;
pub mod reduced;
pub mod safetensors_header;
pub mod tiny;

use candle_transformers::models::t5;

use crate::model::Config as DitConfig;
use crate::model::vae::{VaeConfig, keys};

/// A tensor a component must hold: its key in the files and its shape.
pub type ExpectedTensor = (String, Vec<usize>);

/// The transformer's tensors (diffusers names, no prefix).
pub fn dit_tensors(config: &DitConfig) -> Vec<ExpectedTensor> {
    crate::model::random::checkpoint_shapes(config)
}

/// genmo's SwiGLU hidden width for a stream of width `dim`: `FeedForward` in
/// `asymm_models_joint.py` takes `int(2 · 4·dim / 3)` rounded up to a multiple of 256
/// (8192 and 4096 for the release, as diffusers' rule gives; at reduced widths they differ).
pub fn genmo_ffn_hidden(dim: usize) -> usize {
    const MULTIPLE_OF: usize = 256;
    (2 * 4 * dim / 3).div_ceil(MULTIPLE_OF) * MULTIPLE_OF
}

/// The transformer's tensors in genmo's `dit.safetensors` (`AsymmDiTJoint` names, no
/// prefix), written from genmo's module tree (`docs/mochi-model-spec.md` §2.6) rather than
/// derived from the loader's mapping, so that the two can be checked against each other.
pub fn genmo_dit_tensors(config: &DitConfig) -> Vec<ExpectedTensor> {
    let dx = config.hidden_size_x();
    let dy = config.hidden_size_y;
    let dt = config.text_embed_dim;
    let p = config.patch_size;
    let (fx, fy) = (genmo_ffn_hidden(dx), genmo_ffn_hidden(dy));
    let mut out: Vec<ExpectedTensor> = Vec::new();
    let mut push = |name: String, shape: Vec<usize>| out.push((name, shape));
    push(
        "x_embedder.proj.weight".into(),
        vec![dx, config.in_channels, p, p],
    );
    push("x_embedder.proj.bias".into(), vec![dx]);
    for (name, rows, cols) in [
        ("t_embedder.mlp.0", dx, config.time_embed_dim),
        ("t_embedder.mlp.2", dx, dx),
        ("t5_y_embedder.to_kv", 2 * dt, dt),
        ("t5_y_embedder.to_q", dt, dt),
        ("t5_y_embedder.to_out", dx, dt),
        ("t5_yproj", dy, dt),
        ("final_layer.mod", 2 * dx, dx),
        ("final_layer.linear", p * p * config.out_channels, dx),
    ] {
        push(format!("{name}.weight"), vec![rows, cols]);
        push(format!("{name}.bias"), vec![rows]);
    }
    push(
        "pos_frequencies".into(),
        vec![3, config.num_heads, config.head_dim / 2],
    );
    for i in 0..config.num_layers {
        let b = format!("blocks.{i}");
        let last = i + 1 == config.num_layers;
        push(format!("{b}.mod_x.weight"), vec![4 * dx, dx]);
        push(format!("{b}.mod_x.bias"), vec![4 * dx]);
        let mod_y = if last { dy } else { 4 * dy };
        push(format!("{b}.mod_y.weight"), vec![mod_y, dx]);
        push(format!("{b}.mod_y.bias"), vec![mod_y]);
        push(format!("{b}.attn.qkv_x.weight"), vec![3 * dx, dx]);
        push(format!("{b}.attn.qkv_y.weight"), vec![3 * dx, dy]);
        for norm in ["q_norm_x", "k_norm_x", "q_norm_y", "k_norm_y"] {
            push(format!("{b}.attn.{norm}.weight"), vec![config.head_dim]);
        }
        push(format!("{b}.attn.proj_x.weight"), vec![dx, dx]);
        push(format!("{b}.attn.proj_x.bias"), vec![dx]);
        push(format!("{b}.mlp_x.w1.weight"), vec![2 * fx, dx]);
        push(format!("{b}.mlp_x.w2.weight"), vec![dx, fx]);
        if !last {
            push(format!("{b}.attn.proj_y.weight"), vec![dy, dx]);
            push(format!("{b}.attn.proj_y.bias"), vec![dy]);
            push(format!("{b}.mlp_y.w1.weight"), vec![2 * fy, dy]);
            push(format!("{b}.mlp_y.w2.weight"), vec![dy, fy]);
        }
    }
    out
}

/// Key prefix of the decoder in diffusers' `vae/` files.
pub const VAE_DECODER_PREFIX: &str = "decoder.";

/// The VAE decoder's tensors (diffusers names with the `decoder.` prefix), in the order
/// [`crate::model::vae::VaeDecoder::load`] reads them.
pub fn vae_decoder_tensors(config: &VaeConfig) -> Vec<ExpectedTensor> {
    let ch = &config.block_out_channels;
    let n_up = ch.len().saturating_sub(1);
    let Some(&top) = ch.get(n_up) else {
        return Vec::new();
    };
    let mut out: Vec<ExpectedTensor> = Vec::new();
    let mut push = |name: String, shape: Vec<usize>| {
        out.push((format!("{VAE_DECODER_PREFIX}{name}"), shape));
    };
    let resnets = |push: &mut dyn FnMut(String, Vec<usize>), stage: &str, n: usize, c: usize| {
        for i in 0..n {
            let p = keys::resnet(stage, i);
            for norm in [keys::NORM1, keys::NORM2] {
                push(format!("{p}.{}.weight", norm.diffusers), vec![c]);
                push(format!("{p}.{}.bias", norm.diffusers), vec![c]);
            }
            for conv in [keys::CONV1, keys::CONV2] {
                push(
                    format!("{p}.{}.weight", conv.diffusers),
                    vec![c, c, 3, 3, 3],
                );
                push(format!("{p}.{}.bias", conv.diffusers), vec![c]);
            }
        }
    };
    let layers = |i: usize| config.layers_per_block.get(i).copied().unwrap_or(0);
    push(
        format!("{}.weight", keys::CONV_IN),
        vec![top, config.latent_channels, 1, 1, 1],
    );
    push(format!("{}.bias", keys::CONV_IN), vec![top]);
    resnets(&mut push, keys::BLOCK_IN, layers(n_up + 1), top);
    for i in 0..n_up {
        let (c_in, c_out) = (ch[n_up - i], ch[n_up - i - 1]);
        let st = config
            .temporal_expansions
            .get(n_up - i - 1)
            .copied()
            .unwrap_or(1);
        let ss = config
            .spatial_expansions
            .get(n_up - i - 1)
            .copied()
            .unwrap_or(1);
        let up = keys::up_block(i);
        resnets(&mut push, &up, layers(n_up - i), c_in);
        let rows = c_out * st * ss * ss;
        push(format!("{up}.{}.weight", keys::PROJ), vec![rows, c_in]);
        push(format!("{up}.{}.bias", keys::PROJ), vec![rows]);
    }
    resnets(&mut push, keys::BLOCK_OUT, layers(0), ch[0]);
    push(
        format!("{}.weight", keys::PROJ_OUT),
        vec![config.out_channels, ch[0]],
    );
    push(
        format!("{}.bias", keys::PROJ_OUT),
        vec![config.out_channels],
    );
    out
}

/// The VAE decoder's tensors in genmo's `decoder.safetensors` (no prefix): the names of
/// [`vae_decoder_tensors`] renamed as `docs/mochi-model-spec.md` §3.5 tabulates (genmo's
/// `Decoder` numbers its stages `blocks.0 ..= blocks.{n_up + 1}`), same shapes.
pub fn genmo_vae_decoder_tensors(config: &VaeConfig) -> Vec<ExpectedTensor> {
    let n_up = config.block_out_channels.len().saturating_sub(1);
    vae_decoder_tensors(config)
        .into_iter()
        .filter_map(|(name, shape)| {
            let bare = name.strip_prefix(VAE_DECODER_PREFIX)?;
            crate::model::vae::keys::genmo_key(bare, n_up).map(|key| (key, shape))
        })
        .collect()
}

/// The T5 encoder's tensors (transformers names) for `config`; the token embedding is
/// `shared.weight` (what the release ships; `encoder.embed_tokens.weight` also loads).
pub fn t5_encoder_tensors(config: &t5::Config) -> Vec<ExpectedTensor> {
    let d = config.d_model;
    let inner = config.num_heads * config.d_kv;
    let mut out: Vec<ExpectedTensor> = vec![("shared.weight".into(), vec![config.vocab_size, d])];
    for i in 0..config.num_layers {
        let b = format!("encoder.block.{i}.layer");
        for n in ["q", "k", "v"] {
            out.push((format!("{b}.0.SelfAttention.{n}.weight"), vec![inner, d]));
        }
        out.push((format!("{b}.0.SelfAttention.o.weight"), vec![d, inner]));
        if i == 0 {
            out.push((
                format!("{b}.0.SelfAttention.relative_attention_bias.weight"),
                vec![config.relative_attention_num_buckets, config.num_heads],
            ));
        }
        out.push((format!("{b}.0.layer_norm.weight"), vec![d]));
        if config.feed_forward_proj.gated {
            for n in ["wi_0", "wi_1"] {
                out.push((
                    format!("{b}.1.DenseReluDense.{n}.weight"),
                    vec![config.d_ff, d],
                ));
            }
        } else {
            out.push((
                format!("{b}.1.DenseReluDense.wi.weight"),
                vec![config.d_ff, d],
            ));
        }
        out.push((
            format!("{b}.1.DenseReluDense.wo.weight"),
            vec![d, config.d_ff],
        ));
        out.push((format!("{b}.1.layer_norm.weight"), vec![d]));
    }
    out.push(("encoder.final_layer_norm.weight".into(), vec![d]));
    out
}

/// Parses the decoder structure from a diffusers `vae/config.json` text (see
/// [`VaeConfig::from_diffusers_json`]).
pub fn vae_config_from_json(text: &str) -> Result<VaeConfig, String> {
    VaeConfig::from_diffusers_json(text)
}

/// Parses a transformers T5 `config.json` text.
pub fn t5_config_from_json(text: &str) -> Result<t5::Config, String> {
    serde_json::from_str(text).map_err(|e| format!("invalid T5 config: {e}"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn fixtures() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
    }

    #[test]
    fn vae_decoder_tensors_match_the_reference_fixture() {
        let vae = fixtures().join("vae/model/vae");
        let text = std::fs::read_to_string(vae.join("config.json")).expect("config");
        let config = vae_config_from_json(&text).expect("parse");
        assert_eq!(config, VaeConfig::tiny());
        let header = safetensors_header::read(&vae.join("diffusion_pytorch_model.safetensors"))
            .expect("header");
        let expected = vae_decoder_tensors(&config);
        assert!(expected.len() > 20);
        for (name, shape) in &expected {
            let info = header
                .tensors
                .get(name)
                .unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(&info.shape, shape, "{name}");
        }
        // Every decoder tensor of the reference is expected (nothing unaccounted for).
        let decoder_keys = header
            .tensors
            .keys()
            .filter(|k| k.starts_with(VAE_DECODER_PREFIX))
            .count();
        assert_eq!(decoder_keys, expected.len());
    }

    #[test]
    fn t5_tensors_match_the_reference_fixture() {
        let dir = fixtures().join("t5/text_encoder");
        let text = std::fs::read_to_string(dir.join("config.json")).expect("config");
        let config = t5_config_from_json(&text).expect("parse");
        let header = safetensors_header::read(&dir.join("model.safetensors")).expect("header");
        let expected = t5_encoder_tensors(&config);
        assert_eq!(expected.len(), header.tensors.len());
        for (name, shape) in &expected {
            let info = header
                .tensors
                .get(name)
                .unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(&info.shape, shape, "{name}");
        }
    }

    #[test]
    fn released_vae_config_defaults_to_the_release() {
        assert_eq!(
            vae_config_from_json("{}").expect("parse"),
            VaeConfig::mochi_1_preview()
        );
        assert!(vae_config_from_json(r#"{"layers_per_block": [1]}"#).is_err());
    }
}
