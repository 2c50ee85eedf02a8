//! One component of a model directory run on tensors named as the reference's `forward`
//! takes them, so that anyone can check a checkpoint or a build (CPU or CUDA, f32 or bf16)
//! against the Python reference without writing Rust (`mochi model run`).
//!
//! | component | inputs (reference argument names) | outputs |
//! |---|---|---|
//! | `transformer` | `hidden_states` `(B, 12, T, H, W)`, `encoder_hidden_states` `(B, L, 4096)`, `timestep` `(B,)`, `encoder_attention_mask` `(B, L)` (diffusers' `MochiTransformer3DModel.forward`) | `sample` `(B, 12, T, H, W)` |
//! | `vae` | `z` `(B, 12, T, H, W)` (diffusers' `AutoencoderKLMochi.decode`) | `sample` `(B, 3, 6T − 5, 8H, 8W)` |
//! | `text` | `input_ids` `(B, L)`, `attention_mask` `(B, L)`, optional (transformers' `T5EncoderModel.forward`) | `last_hidden_state` `(B, L, D)` |
//!
//! Inputs of any float or integer dtype are converted (masks and ids as the component needs
//! them); outputs are f32. The text encoder runs each row on its valid tokens, so a row's
//! mask must be a prefix (ones, then zeros), and positions past it are zeros: the reference
//! fills them with values no consumer reads (Mochi masks them out).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Error, IndexOp, Result, Tensor};

use crate::model::vae::{FrameDrop, VaeDecoder};
use crate::model::{AsymmDiT, TextLayout};
use crate::pipeline::text_encoder::TextEncoder;

/// A component of a model directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The AsymmDiT denoiser (`transformer/`).
    Transformer,
    /// The VAE decoder (`vae/`).
    Vae,
    /// The T5 encoder (`text_encoder/`, with `tokenizer/`).
    Text,
}

impl Component {
    /// Every component, as the command line names them.
    pub const ALL: [Self; 3] = [Self::Transformer, Self::Vae, Self::Text];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Transformer => "transformer",
            Self::Vae => "vae",
            Self::Text => "text",
        }
    }

    /// The component a name means.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The inputs it takes (required first; the text encoder's mask is optional).
    pub fn inputs(self) -> &'static [&'static str] {
        match self {
            Self::Transformer => &[
                "hidden_states",
                "encoder_hidden_states",
                "timestep",
                "encoder_attention_mask",
            ],
            Self::Vae => &["z"],
            Self::Text => &["input_ids", "attention_mask"],
        }
    }
}

/// How to run it.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Storage dtype of the weights (`F32` or `BF16`); activations follow the model's rules.
    pub dtype: DType,
    /// Where to run.
    pub device: Device,
    /// Which implementation to follow where genmo's and diffusers' differ.
    pub reference: Reference,
}

/// The reference implementation to follow where the two differ: the VAE's frame dropping
/// (genmo drops `st − 1` frames in every up block, diffusers `Π st − 1` once at the end) and
/// the DiT's text stream under a mask that is not a prefix (genmo in place, diffusers
/// packed to the front).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// diffusers' `MochiTransformer3DModel` and `AutoencoderKLMochi.decode`.
    Diffusers,
    /// genmo's `AsymmDiTJoint` and decoder.
    Genmo,
}

impl Reference {
    /// The VAE frame dropping it follows.
    pub fn frame_drop(self) -> FrameDrop {
        match self {
            Self::Diffusers => FrameDrop::Diffusers,
            Self::Genmo => FrameDrop::Genmo,
        }
    }

    /// The DiT text layout it follows.
    pub fn text_layout(self) -> TextLayout {
        match self {
            Self::Diffusers => TextLayout::Packed,
            Self::Genmo => TextLayout::InPlace,
        }
    }
}

/// Runs `component` of `model_dir` on `inputs`; returns its outputs by name.
pub fn run(
    model_dir: &Path,
    component: Component,
    inputs: &HashMap<String, Tensor>,
    options: &RunOptions,
) -> Result<HashMap<String, Tensor>> {
    let device = &options.device;
    let missing = |name: &str| {
        Error::Msg(format!(
            "missing input `{name}`: the {} takes {}",
            component.name(),
            component.inputs().join(", ")
        ))
    };
    // Named before any weight is read: a wrong file fails at once.
    let optional = usize::from(component == Component::Text);
    let required = &component.inputs()[..component.inputs().len() - optional];
    if let Some(name) = required.iter().find(|name| !inputs.contains_key(**name)) {
        return Err(missing(name));
    }
    let input = |name: &str| -> Result<Tensor> {
        inputs
            .get(name)
            .ok_or_else(|| missing(name))?
            .to_device(device)
    };
    let output = match component {
        Component::Transformer => {
            let model = AsymmDiT::from_model_dir(model_dir, options.dtype, device)?
                .with_text_layout(options.reference.text_layout());
            let sample = model.forward(
                &input("hidden_states")?.to_dtype(DType::F32)?,
                &input("timestep")?.to_dtype(DType::F32)?,
                &input("encoder_hidden_states")?.to_dtype(DType::F32)?,
                &input("encoder_attention_mask")?.to_dtype(DType::F32)?,
            )?;
            ("sample", sample)
        }
        Component::Vae => {
            let decoder = VaeDecoder::from_model_dir(model_dir, options.dtype, device)?
                .with_frame_drop(options.reference.frame_drop());
            (
                "sample",
                decoder.decode(&input("z")?.to_dtype(DType::F32)?)?,
            )
        }
        Component::Text => {
            let mut encoder = TextEncoder::from_model_dir(model_dir, device)?;
            let ids = input("input_ids")?;
            let mask = match inputs.get("attention_mask") {
                Some(mask) => Some(mask.to_device(device)?),
                None => None,
            };
            (
                "last_hidden_state",
                encode_rows(&mut encoder, &ids, mask.as_ref(), device)?,
            )
        }
    };
    Ok(HashMap::from([(
        output.0.to_owned(),
        output.1.to_dtype(DType::F32)?,
    )]))
}

/// Encodes each row of `ids` `(B, L)` on its valid prefix and pads it to `L` with zeros.
fn encode_rows(
    encoder: &mut TextEncoder,
    ids: &Tensor,
    mask: Option<&Tensor>,
    device: &Device,
) -> Result<Tensor> {
    let (batch, length) = ids.dims2()?;
    let ids: Vec<Vec<u32>> = ids.to_dtype(DType::U32)?.to_vec2()?;
    let mask: Option<Vec<Vec<f32>>> = match mask {
        Some(mask) => {
            if mask.dims() != [batch, length] {
                candle_core::bail!(
                    "attention_mask has shape {:?}; input_ids has [{batch}, {length}]",
                    mask.dims()
                );
            }
            Some(mask.to_dtype(DType::F32)?.to_vec2()?)
        }
        None => None,
    };
    let mut rows = Vec::with_capacity(batch);
    for (row, ids) in ids.iter().enumerate() {
        let valid = match &mask {
            Some(mask) => prefix_length(&mask[row]).ok_or_else(|| {
                Error::Msg(format!(
                    "attention_mask row {row} is not a prefix of ones then zeros; the text encoder runs each row on its leading valid tokens"
                ))
            })?,
            None => length,
        };
        let hidden = if valid == 0 {
            None
        } else {
            Some(encoder.encode_ids(&ids[..valid])?)
        };
        rows.push((hidden, valid));
    }
    let width = encoder.hidden_size();
    let padded = rows
        .into_iter()
        .map(|(hidden, valid)| match hidden {
            Some(hidden) => hidden.i(0)?.pad_with_zeros(0, 0, length - valid),
            None => Tensor::zeros((length, width), DType::F32, device),
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&padded, 0)
}

/// The length of a mask's leading run of ones, if the rest is zeros.
fn prefix_length(mask: &[f32]) -> Option<usize> {
    let valid = mask.iter().take_while(|m| **m > 0.5).count();
    mask[valid..].iter().all(|m| *m <= 0.5).then_some(valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_prefix_masks_are_accepted_by_the_text_encoder() {
        assert_eq!(prefix_length(&[1.0, 1.0, 0.0]), Some(2));
        assert_eq!(prefix_length(&[0.0, 0.0]), Some(0));
        assert_eq!(prefix_length(&[1.0, 0.0, 1.0]), None);
        assert_eq!(Component::parse("vae"), Some(Component::Vae));
        assert_eq!(Component::parse("unet"), None);
    }
}
