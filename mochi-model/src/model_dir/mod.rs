//! Model directories in the release's diffusers layout: what each component must hold
//! (every tensor name and shape, derived from its `config.json`), the check behind
//! `mochi model check`, and the embedded tiny model that `mochi up` creates on first start.
//!
//! Layout (`genmo/mochi-1-preview`, diffusers): `transformer/` (config + sharded
//! safetensors with an index, optionally a `bf16` variant), `text_encoder/` (T5 config +
//! safetensors), `tokenizer/spiece.model`, `vae/` (config + safetensors; the decoder's keys
//! are prefixed `decoder.`), `scheduler/`, `model_index.json`.

pub mod check;
pub mod safetensors_header;
pub mod tiny;

use candle_transformers::models::t5;

use crate::model::Config as DitConfig;
use crate::model::vae::VaeConfig;

/// A tensor a component must hold: its key in the files and its shape.
pub type ExpectedTensor = (String, Vec<usize>);

/// The transformer's tensors (diffusers names, no prefix).
pub fn dit_tensors(config: &DitConfig) -> Vec<ExpectedTensor> {
    crate::model::random::checkpoint_shapes(config)
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
            let p = format!("{stage}.resnets.{i}");
            for norm in ["norm1", "norm2"] {
                push(format!("{p}.{norm}.norm_layer.weight"), vec![c]);
                push(format!("{p}.{norm}.norm_layer.bias"), vec![c]);
            }
            for conv in ["conv1", "conv2"] {
                push(format!("{p}.{conv}.conv.weight"), vec![c, c, 3, 3, 3]);
                push(format!("{p}.{conv}.conv.bias"), vec![c]);
            }
        }
    };
    let layers = |i: usize| config.layers_per_block.get(i).copied().unwrap_or(0);
    push(
        "conv_in.weight".into(),
        vec![top, config.latent_channels, 1, 1, 1],
    );
    push("conv_in.bias".into(), vec![top]);
    resnets(&mut push, "block_in", layers(n_up + 1), top);
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
        resnets(&mut push, &format!("up_blocks.{i}"), layers(n_up - i), c_in);
        let rows = c_out * st * ss * ss;
        push(format!("up_blocks.{i}.proj.weight"), vec![rows, c_in]);
        push(format!("up_blocks.{i}.proj.bias"), vec![rows]);
    }
    resnets(&mut push, "block_out", layers(0), ch[0]);
    push("proj_out.weight".into(), vec![config.out_channels, ch[0]]);
    push("proj_out.bias".into(), vec![config.out_channels]);
    out
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
