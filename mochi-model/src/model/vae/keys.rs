//! The VAE decoder's checkpoint keys, in diffusers' `vae/` files (under `decoder.`) and
//! genmo's `decoder.safetensors`; every mapping is a pure rename (`docs/mochi-model-spec.md`
//! §3.5).
//!
//! Upstream, at the revisions the spec was written from:
//! - diffusers `MochiDecoder3D` at 58eb52c0:
//!   <https://github.com/huggingface/diffusers/blob/58eb52c0/src/diffusers/models/autoencoders/autoencoder_kl_mochi.py>
//! - genmo `Decoder` at 0c86aebf:
//!   <https://github.com/genmoai/mochi/blob/0c86aebf/src/genmo/mochi_preview/vae/models.py>
//!
//! genmo numbers the stages `blocks.0` (input conv and the first res blocks, numbered from
//! 1), `blocks.1 ..= blocks.{n_up}` (the up blocks, their res blocks under `.blocks.`) and
//! `blocks.{n_up + 1}` (the last res blocks).

/// The input 1×1×1 convolution: diffusers' path.
pub const CONV_IN: &str = "conv_in";
/// genmo's path of [`CONV_IN`].
pub const GENMO_CONV_IN: &str = "blocks.0.0";
/// The res blocks at the lowest resolution.
pub const BLOCK_IN: &str = "block_in";
/// The up blocks (`up_blocks.{i}`, high resolution last).
pub const UP_BLOCKS: &str = "up_blocks";
/// The res blocks at full resolution.
pub const BLOCK_OUT: &str = "block_out";
/// The res blocks of a stage (`{stage}.resnets.{i}`).
pub const RESNETS: &str = "resnets";
/// An up block's depth-to-space projection (same name in genmo, under `blocks.{i + 1}`).
pub const PROJ: &str = "proj";
/// The output projection to RGB: diffusers' path.
pub const PROJ_OUT: &str = "proj_out";
/// genmo's path of [`PROJ_OUT`].
pub const GENMO_PROJ_OUT: &str = "output_proj";

/// One module of a res block: its path in each scheme (genmo's `stack` is a
/// `Sequential` whose SiLUs are `stack.1` and `stack.4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResPart {
    /// diffusers' path inside the res block.
    pub diffusers: &'static str,
    /// genmo's path inside the res block.
    pub genmo: &'static str,
}

/// The first GroupNorm.
pub const NORM1: ResPart = ResPart {
    diffusers: "norm1.norm_layer",
    genmo: "stack.0",
};
/// The first causal 3×3×3 convolution.
pub const CONV1: ResPart = ResPart {
    diffusers: "conv1.conv",
    genmo: "stack.2",
};
/// The second GroupNorm.
pub const NORM2: ResPart = ResPart {
    diffusers: "norm2.norm_layer",
    genmo: "stack.3",
};
/// The second causal 3×3×3 convolution.
pub const CONV2: ResPart = ResPart {
    diffusers: "conv2.conv",
    genmo: "stack.5",
};
/// Every module of a res block, in order.
pub const RES_PARTS: [ResPart; 4] = [NORM1, CONV1, NORM2, CONV2];

/// The diffusers path of res block `index` of `stage` (e.g. `up_blocks.0`).
pub fn resnet(stage: &str, index: usize) -> String {
    format!("{stage}.{RESNETS}.{index}")
}

/// The diffusers path of up block `index`.
pub fn up_block(index: usize) -> String {
    format!("{UP_BLOCKS}.{index}")
}

/// Maps a diffusers decoder name (no `decoder.` prefix) to genmo's, given the number of
/// up blocks (genmo's last stage is `blocks.{n_up + 1}`); `None` for a name neither has.
pub fn genmo_key(name: &str, n_up: usize) -> Option<String> {
    let res_part = |rest: &str| -> Option<String> {
        let (index, inner) = rest.split_once('.')?;
        let (module, param) = inner.rsplit_once('.')?;
        let part = RES_PARTS.iter().find(|p| p.diffusers == module)?;
        Some(format!("{index}.{}.{param}", part.genmo))
    };
    let (module, param) = name.rsplit_once('.')?;
    if module == CONV_IN {
        return Some(format!("{GENMO_CONV_IN}.{param}"));
    }
    if module == PROJ_OUT {
        return Some(format!("{GENMO_PROJ_OUT}.{param}"));
    }
    if let Some(rest) = name.strip_prefix(&format!("{BLOCK_IN}.{RESNETS}.")) {
        let mapped = res_part(rest)?;
        let (index, tail) = mapped.split_once('.')?;
        let index: usize = index.parse().ok()?;
        return Some(format!("blocks.0.{}.{tail}", index + 1));
    }
    if let Some(rest) = name.strip_prefix(&format!("{BLOCK_OUT}.{RESNETS}.")) {
        return Some(format!("blocks.{}.{}", n_up + 1, res_part(rest)?));
    }
    let rest = name.strip_prefix(&format!("{UP_BLOCKS}."))?;
    let (block, inner) = rest.split_once('.')?;
    let block: usize = block.parse().ok()?;
    if let Some(param) = inner.strip_prefix(&format!("{PROJ}.")) {
        return Some(format!("blocks.{}.{PROJ}.{param}", block + 1));
    }
    let rest = inner.strip_prefix(&format!("{RESNETS}."))?;
    Some(format!("blocks.{}.blocks.{}", block + 1, res_part(rest)?))
}

#[cfg(test)]
mod tests {
    use super::genmo_key;

    #[test]
    fn genmo_names_follow_spec_table() {
        let cases = [
            ("conv_in.weight", "blocks.0.0.weight"),
            (
                "block_in.resnets.2.conv2.conv.bias",
                "blocks.0.3.stack.5.bias",
            ),
            (
                "up_blocks.0.resnets.5.norm1.norm_layer.weight",
                "blocks.1.blocks.5.stack.0.weight",
            ),
            ("up_blocks.2.proj.weight", "blocks.3.proj.weight"),
            (
                "block_out.resnets.1.norm2.norm_layer.bias",
                "blocks.4.1.stack.3.bias",
            ),
            ("proj_out.weight", "output_proj.weight"),
        ];
        for (diffusers, genmo) in cases {
            assert_eq!(
                genmo_key(diffusers, 3).as_deref(),
                Some(genmo),
                "{diffusers}"
            );
        }
        assert_eq!(genmo_key("block_in.resnets.0.conv3.conv.weight", 3), None);
    }
}
