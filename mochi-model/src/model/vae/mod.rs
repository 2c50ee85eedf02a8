//! The Mochi-1 VAE decoder ("AsymmVAE") in candle.
//!
//! Mirrors diffusers' `MochiDecoder3D` (huggingface/diffusers@58eb52c0,
//! `src/diffusers/models/autoencoders/autoencoder_kl_mochi.py`; goldens from v0.42.1) and
//! genmo's `Decoder` (genmoai/mochi@0c86aebf `src/genmo/mochi_preview/vae/models.py`); see
//! `docs/model.md` and `docs/mochi-model-spec.md` §3. The checkpoint keys of both schemes
//! are the constants of [`keys`]. Internally every sample is frame-major `(T, C, H, W)`, so
//! per-frame GroupNorm is a plain GroupNorm and the causal convs slice frames cheaply.
//! Norms and activations run in f32; conv / projection weights may be stored in bf16.
//!
//! Frame dropping (§3.4): [`FrameDrop::Genmo`] (the default, reference behaviour) drops
//! `st − 1` leading frames inside every up block; [`FrameDrop::Diffusers`] decodes all
//! `6T` frames and drops the first five at the end. Both give `6T − 5` frames but
//! differ numerically in the early frames.
//!
//! Bounded memory: [`VaeDecoder::decode_chunked`] / [`DecodeStream`] stream over latent
//! frames (exactly equal to the whole decode); [`VaeDecoder::decode_tiled`]
//! (`tiling.rs`) splits the frame into overlapping, blended spatial tiles (diffusers'
//! rule, approximate), optionally streaming inside each tile.
//!
//! One file, past 500 lines: the decoder's block families (`ResBlock`, `CausalUpsample`,
//! the up blocks and the head) are read against one upstream file side by side, in its
//! order; tiling is apart (`tiling.rs`).

mod config;
pub mod conv3d;
pub mod keys;
pub mod tiling;
pub mod weights;

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};

pub use config::VaeConfig;
use conv3d::{CausalConv3d, Conv3dStrategy};
use weights::VaeWeights;

/// GroupNorm groups (fixed upstream).
pub const GROUPS: usize = 32;
/// GroupNorm epsilon (PyTorch default).
pub const GN_EPS: f64 = 1e-5;

/// Where leading frames are dropped (§3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrameDrop {
    /// genmo: `st − 1` frames after every up block (reference behaviour).
    #[default]
    Genmo,
    /// diffusers: `Π st − 1` frames once, after the last layer.
    Diffusers,
}

fn pointwise(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    // x (T, C, H, W); weight [C', C]; bias [1, C', 1].
    let (t, c, h, w) = x.dims4()?;
    let out_ch = weight.dim(0)?;
    let flat = x.to_dtype(weight.dtype())?.reshape((t, c, h * w))?;
    weight
        .broadcast_matmul(&flat)?
        .to_dtype(DType::F32)?
        .broadcast_add(bias)?
        .reshape((t, out_ch, h, w))
}

/// A per-pixel linear layer (1×1×1 conv) on `(T, C, H, W)`.
#[derive(Debug, Clone)]
struct Pointwise {
    weight: Tensor,
    bias: Tensor,
}

impl Pointwise {
    fn load(w: &VaeWeights, name: &str, out_ch: usize, in_ch: usize, conv: bool) -> Result<Self> {
        let weight = if conv {
            w.get(&format!("{name}.weight"), &[out_ch, in_ch, 1, 1, 1])?
                .reshape((out_ch, in_ch))?
        } else {
            w.get(&format!("{name}.weight"), &[out_ch, in_ch])?
        };
        let bias = w
            .get_f32(&format!("{name}.bias"), &[out_ch])?
            .reshape((1, out_ch, 1))?;
        Ok(Self { weight, bias })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        pointwise(x, &self.weight, &self.bias)
    }
}

/// Causal-conv contexts of one stream, indexed by conv number, plus whether the next
/// chunk is the first.
#[derive(Debug, Default)]
struct ConvContexts {
    slots: Vec<Option<Tensor>>,
}

struct Pass<'a> {
    contexts: &'a mut ConvContexts,
    first: bool,
    strategy: Conv3dStrategy,
    taps: Option<&'a mut Vec<(String, Tensor)>>,
}

impl Pass<'_> {
    fn tap(&mut self, name: &str, x: &Tensor) {
        if let Some(taps) = self.taps.as_deref_mut() {
            taps.push((name.to_string(), x.clone()));
        }
    }
}

#[derive(Debug, Clone)]
struct ResBlock {
    /// [`keys::NORM1`].
    norm1: candle_nn::GroupNorm,
    /// [`keys::CONV1`].
    conv1: CausalConv3d,
    /// [`keys::NORM2`].
    norm2: candle_nn::GroupNorm,
    /// [`keys::CONV2`].
    conv2: CausalConv3d,
    /// Index of `conv1` in the stream's context slots (`conv2` is the next one).
    slot: usize,
}

impl ResBlock {
    fn load(w: &VaeWeights, prefix: &str, ch: usize, slot: usize) -> Result<Self> {
        let norm = |part: keys::ResPart| -> Result<candle_nn::GroupNorm> {
            let path = format!("{prefix}.{}", part.diffusers);
            let weight = w.get_f32(&format!("{path}.weight"), &[ch])?;
            let bias = w.get_f32(&format!("{path}.bias"), &[ch])?;
            candle_nn::GroupNorm::new(weight, bias, ch, GROUPS, GN_EPS)
        };
        let conv = |part: keys::ResPart| -> Result<CausalConv3d> {
            let path = format!("{prefix}.{}", part.diffusers);
            let weight = w.get(&format!("{path}.weight"), &[ch, ch, 3, 3, 3])?;
            let bias = w.get_f32(&format!("{path}.bias"), &[ch])?;
            CausalConv3d::new(weight, bias)
        };
        Ok(Self {
            norm1: norm(keys::NORM1)?,
            conv1: conv(keys::CONV1)?,
            norm2: norm(keys::NORM2)?,
            conv2: conv(keys::CONV2)?,
            slot,
        })
    }

    fn forward(&self, x: &Tensor, pass: &mut Pass<'_>) -> Result<Tensor> {
        let h = candle_nn::ops::silu(&self.norm1.forward(x)?)?;
        let h = conv_step(&self.conv1, &h, self.slot, pass)?;
        let h = candle_nn::ops::silu(&self.norm2.forward(&h)?)?;
        let h = conv_step(&self.conv2, &h, self.slot + 1, pass)?;
        x + h
    }
}

fn conv_step(conv: &CausalConv3d, x: &Tensor, slot: usize, pass: &mut Pass<'_>) -> Result<Tensor> {
    let context = pass.contexts.slots.get_mut(slot).and_then(Option::take);
    let (out, next) = conv.forward(x, context.as_ref(), pass.strategy)?;
    if let Some(place) = pass.contexts.slots.get_mut(slot) {
        *place = Some(next);
    }
    Ok(out)
}

#[derive(Debug, Clone)]
struct UpBlock {
    resnets: Vec<ResBlock>,
    proj: Pointwise,
    out_channels: usize,
    temporal: usize,
    spatial: usize,
}

impl UpBlock {
    fn forward(&self, x: &Tensor, pass: &mut Pass<'_>, drop: FrameDrop) -> Result<Tensor> {
        let mut h = x.clone();
        for res in &self.resnets {
            h = res.forward(&h, pass)?;
        }
        let h = self.proj.forward(&h)?;
        let (t, _, height, width) = h.dims4()?;
        let (st, s) = (self.temporal, self.spatial);
        // Channel c·(st·s·s) + a·s·s + b·s + d → frame t·st + a, pixel (h·s + b, w·s + d).
        let h = h
            .reshape(vec![t, self.out_channels, st, s, s, height, width])?
            .permute(vec![0, 2, 1, 5, 3, 6, 4])?
            .reshape((t * st, self.out_channels, height * s, width * s))?;
        if drop == FrameDrop::Genmo && pass.first && st > 1 {
            h.narrow(0, st - 1, t * st - (st - 1))
        } else {
            Ok(h)
        }
    }
}

/// The Mochi VAE decoder: latents (VAE scale) → video in nominal [−1, 1].
#[derive(Debug, Clone)]
pub struct VaeDecoder {
    config: VaeConfig,
    conv_in: Pointwise,
    block_in: Vec<ResBlock>,
    up_blocks: Vec<UpBlock>,
    block_out: Vec<ResBlock>,
    proj_out: Pointwise,
    num_convs: usize,
    strategy: Conv3dStrategy,
    frame_drop: FrameDrop,
}

impl VaeDecoder {
    /// Loads the decoder of a model directory (diffusers `vae/` or genmo
    /// `decoder.safetensors`), reading the structure from the weights.
    pub fn from_model_dir(model_dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let w = VaeWeights::from_model_dir(model_dir, dtype, device)?;
        let config = VaeConfig::from_model_dir(model_dir, &w)?;
        Self::load(&w, &config)
    }

    /// Loads with an explicit configuration; every tensor's shape is checked against it.
    pub fn load(w: &VaeWeights, config: &VaeConfig) -> Result<Self> {
        let ch = &config.block_out_channels;
        let n_up = ch.len().saturating_sub(1);
        if n_up == 0
            || config.layers_per_block.len() != n_up + 2
            || config.temporal_expansions.len() != n_up
            || config.spatial_expansions.len() != n_up
        {
            candle_core::bail!("inconsistent VAE config {config:?}");
        }
        let top = ch[n_up];
        let mut slot = 0;
        let mut stage = |prefix: &str, n: usize, c: usize| -> Result<Vec<ResBlock>> {
            (0..n)
                .map(|i| {
                    let res = ResBlock::load(w, &keys::resnet(prefix, i), c, slot)?;
                    slot += 2;
                    Ok(res)
                })
                .collect()
        };
        let conv_in = Pointwise::load(w, keys::CONV_IN, top, config.latent_channels, true)?;
        let block_in = stage(keys::BLOCK_IN, config.layers_per_block[n_up + 1], top)?;
        let mut up_blocks = Vec::with_capacity(n_up);
        for i in 0..n_up {
            let (c_in, c_out) = (ch[n_up - i], ch[n_up - i - 1]);
            let st = config.temporal_expansions[n_up - i - 1];
            let ss = config.spatial_expansions[n_up - i - 1];
            let resnets = stage(&keys::up_block(i), config.layers_per_block[n_up - i], c_in)?;
            let proj = Pointwise::load(
                w,
                &format!("{}.{}", keys::up_block(i), keys::PROJ),
                c_out * st * ss * ss,
                c_in,
                false,
            )?;
            up_blocks.push(UpBlock {
                resnets,
                proj,
                out_channels: c_out,
                temporal: st,
                spatial: ss,
            });
        }
        let block_out = stage(keys::BLOCK_OUT, config.layers_per_block[0], ch[0])?;
        let proj_out = Pointwise::load(w, keys::PROJ_OUT, config.out_channels, ch[0], false)?;
        Ok(Self {
            config: config.clone(),
            conv_in,
            block_in,
            up_blocks,
            block_out,
            proj_out,
            num_convs: slot,
            strategy: Conv3dStrategy::default(),
            frame_drop: FrameDrop::default(),
        })
    }

    /// The structure.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Chooses the conv3d strategy (default: per-tap conv2d).
    pub fn with_strategy(mut self, strategy: Conv3dStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Chooses the frame-dropping semantics (default: genmo).
    pub fn with_frame_drop(mut self, frame_drop: FrameDrop) -> Self {
        self.frame_drop = frame_drop;
        self
    }

    fn forward_sample(&self, z: &Tensor, pass: &mut Pass<'_>) -> Result<Tensor> {
        // z: (T, C, H, W) f32.
        let mut h = self.conv_in.forward(z)?;
        pass.tap("conv_in", &h);
        for res in &self.block_in {
            h = res.forward(&h, pass)?;
        }
        pass.tap("block_in", &h);
        for (i, up) in self.up_blocks.iter().enumerate() {
            h = up.forward(&h, pass, self.frame_drop)?;
            pass.tap(&format!("up_block_{i}"), &h);
        }
        for res in &self.block_out {
            h = res.forward(&h, pass)?;
        }
        pass.tap("block_out", &h);
        let out = self.proj_out.forward(&candle_nn::ops::silu(&h)?)?;
        if self.frame_drop == FrameDrop::Diffusers && pass.first {
            let total: usize = self.config.temporal_expansions.iter().product();
            let frames = out.dim(0)?;
            if frames >= total {
                return out.narrow(0, total - 1, frames - (total - 1));
            }
        }
        Ok(out)
    }

    fn contexts(&self) -> ConvContexts {
        ConvContexts {
            slots: vec![None; self.num_convs],
        }
    }

    /// Decodes VAE-scale latents `(B, 12, T, H, W)` to video `(B, 3, 6T−5, 8H, 8W)` (f32,
    /// nominal range [−1, 1]).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        Ok(self.decode_with_taps(z, false)?.0)
    }

    /// [`VaeDecoder::decode`] plus, if `taps`, the output of every stage as
    /// `(B, C, T, H, W)` (`conv_in`, `block_in`, `up_block_N`, `block_out`).
    pub fn decode_with_taps(
        &self,
        z: &Tensor,
        taps: bool,
    ) -> Result<(Tensor, Vec<(String, Tensor)>)> {
        let batch = z.dim(0)?;
        let mut outputs = Vec::with_capacity(batch);
        let mut all_taps: Vec<(String, Vec<Tensor>)> = Vec::new();
        for b in 0..batch {
            let sample = frames_major(&z.get(b)?)?;
            let mut contexts = self.contexts();
            let mut sink = Vec::new();
            let mut pass = Pass {
                contexts: &mut contexts,
                first: true,
                strategy: self.strategy,
                taps: taps.then_some(&mut sink),
            };
            outputs.push(channels_major(&self.forward_sample(&sample, &mut pass)?)?);
            for (i, (name, t)) in sink.into_iter().enumerate() {
                if all_taps.len() <= i {
                    all_taps.push((name, Vec::new()));
                }
                all_taps[i].1.push(channels_major(&t)?);
            }
        }
        let taps = all_taps
            .into_iter()
            .map(|(name, ts)| Ok((name, Tensor::stack(&ts, 0)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok((Tensor::stack(&outputs, 0)?, taps))
    }

    /// Starts a streaming decode of one sample (see [`DecodeStream`]).
    pub fn stream(&self) -> DecodeStream<'_> {
        DecodeStream {
            decoder: self,
            contexts: self.contexts(),
            first: true,
        }
    }

    /// Decodes `(B, 12, T, H, W)` `chunk` latent frames at a time through
    /// [`DecodeStream`]; equal to [`VaeDecoder::decode`], with activations bounded by the
    /// chunk length.
    pub fn decode_chunked(&self, z: &Tensor, chunk: usize) -> Result<Tensor> {
        let (batch, _, t, _, _) = z.dims5()?;
        let chunk = chunk.max(1);
        let mut outputs = Vec::with_capacity(batch);
        for b in 0..batch {
            let sample = z.narrow(0, b, 1)?;
            let mut stream = self.stream();
            let mut parts = Vec::new();
            let mut start = 0;
            while start < t {
                let len = chunk.min(t - start);
                parts.push(stream.push(&sample.narrow(2, start, len)?)?);
                start += len;
            }
            outputs.push(Tensor::cat(&parts, 2)?);
        }
        Tensor::cat(&outputs, 0)
    }
}

/// Streaming decode over latent frames: each causal conv keeps its last two input frames
/// between chunks, and frames are dropped only in the first chunk, so the concatenated
/// chunks equal the whole decode (`docs/mochi-model-spec.md` §3.6 item 4).
#[derive(Debug)]
pub struct DecodeStream<'a> {
    decoder: &'a VaeDecoder,
    contexts: ConvContexts,
    first: bool,
}

impl DecodeStream<'_> {
    /// Decodes the next latent frames `(1, 12, t, H, W)` to `(1, 3, f, 8H, 8W)`.
    pub fn push(&mut self, z: &Tensor) -> Result<Tensor> {
        if z.dim(0)? != 1 {
            candle_core::bail!("a decode stream takes one sample, got shape {:?}", z.dims());
        }
        let sample = frames_major(&z.get(0)?)?;
        let mut pass = Pass {
            contexts: &mut self.contexts,
            first: self.first,
            strategy: self.decoder.strategy,
            taps: None,
        };
        let out = self.decoder.forward_sample(&sample, &mut pass)?;
        self.first = false;
        channels_major(&out)?.unsqueeze(0)
    }
}

/// `(C, T, H, W)` → contiguous f32 `(T, C, H, W)`.
fn frames_major(x: &Tensor) -> Result<Tensor> {
    x.to_dtype(DType::F32)?.permute((1, 0, 2, 3))?.contiguous()
}

/// `(T, C, H, W)` → contiguous `(C, T, H, W)`.
fn channels_major(x: &Tensor) -> Result<Tensor> {
    x.permute((1, 0, 2, 3))?.contiguous()
}
