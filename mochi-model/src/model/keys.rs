//! The AsymmDiT's checkpoint keys: one constant per module that holds weights, with its
//! path in both released key schemes and how genmo's tensor becomes diffusers'.
//!
//! The names are those of the upstream files at the revisions `docs/mochi-model-spec.md`
//! was written from:
//! - diffusers `MochiTransformer3DModel` at 58eb52c0:
//!   <https://github.com/huggingface/diffusers/blob/58eb52c0/src/diffusers/models/transformers/transformer_mochi.py>
//! - genmo `AsymmDiTJoint` at 0c86aebf:
//!   <https://github.com/genmoai/mochi/blob/0c86aebf/src/genmo/mochi_preview/dit/joint_model/asymm_models_joint.py>
//!
//! The loaders ask for tensors by diffusers name (`Key::diffusers` plus `.weight` or
//! `.bias`); [`super::weights`] reads a genmo checkpoint through the same table. Struct
//! fields holding a module are named after genmo's key (`mod_x`, `qkv_x`, `proj_x`,
//! `mlp_x`, ...) and document the constant they load. `docs/mochi-model-spec.md` §2.6 has
//! the table with shapes; `model_dir::genmo_dit_tensors` writes genmo's tree apart from
//! this one, and a test checks that the two agree.

/// How a tensor read from genmo's checkpoint becomes diffusers' tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromGenmo {
    /// The same tensor.
    Same,
    /// Row block `index` of `parts` equal blocks (genmo fuses q, k and v).
    Rows {
        /// Which block (0-based).
        index: usize,
        /// How many blocks the genmo tensor holds.
        parts: usize,
    },
    /// The two row halves swapped (SwiGLU's value/gate order, the final layer's
    /// shift/scale order).
    SwapHalves,
}

/// A module's path in each checkpoint (without `.weight` / `.bias`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// diffusers' path.
    pub diffusers: &'static str,
    /// genmo's path.
    pub genmo: &'static str,
    /// How genmo's tensor is turned into diffusers'.
    pub from_genmo: FromGenmo,
}

const fn same(diffusers: &'static str, genmo: &'static str) -> Key {
    Key {
        diffusers,
        genmo,
        from_genmo: FromGenmo::Same,
    }
}

const fn rows(diffusers: &'static str, genmo: &'static str, index: usize) -> Key {
    Key {
        diffusers,
        genmo,
        from_genmo: FromGenmo::Rows { index, parts: 3 },
    }
}

const fn swapped(diffusers: &'static str, genmo: &'static str) -> Key {
    Key {
        diffusers,
        genmo,
        from_genmo: FromGenmo::SwapHalves,
    }
}

impl Key {
    /// The diffusers name of this module's `param` (`weight` or `bias`) outside the blocks.
    pub fn tensor(&self, param: &str) -> String {
        format!("{}.{param}", self.diffusers)
    }

    /// The diffusers path of this module in block `index`.
    pub fn at(&self, index: usize) -> String {
        format!("{}.{index}.{}", BLOCKS.diffusers, self.diffusers)
    }

    /// The diffusers name of this module's `param` in block `index`.
    pub fn in_block(&self, index: usize, param: &str) -> String {
        format!("{}.{param}", self.at(index))
    }
}

/// Modules outside the blocks.
pub mod top {
    use crate::model::keys::{Key, same, swapped};

    /// Patch embedding (a 2×2 convolution read as a matmul).
    pub const PATCH_EMBED: Key = same("patch_embed.proj", "x_embedder.proj");
    /// Timestep MLP, first layer.
    pub const TIME_LINEAR_1: Key =
        same("time_embed.timestep_embedder.linear_1", "t_embedder.mlp.0");
    /// Timestep MLP, second layer.
    pub const TIME_LINEAR_2: Key =
        same("time_embed.timestep_embedder.linear_2", "t_embedder.mlp.2");
    /// Caption attention pool: keys and values.
    pub const POOL_TO_KV: Key = same("time_embed.pooler.to_kv", "t5_y_embedder.to_kv");
    /// Caption attention pool: the query.
    pub const POOL_TO_Q: Key = same("time_embed.pooler.to_q", "t5_y_embedder.to_q");
    /// Caption attention pool: the output.
    pub const POOL_TO_OUT: Key = same("time_embed.pooler.to_out", "t5_y_embedder.to_out");
    /// Caption projection to the text stream.
    pub const CAPTION_PROJ: Key = same("time_embed.caption_proj", "t5_yproj");
    /// Final layer's modulation (diffusers `[scale; shift]`, genmo `[shift; scale]`).
    pub const NORM_OUT: Key = swapped("norm_out.linear", "final_layer.mod");
    /// Final layer's projection to patch pixels.
    pub const PROJ_OUT: Key = same("proj_out", "final_layer.linear");
    /// Every module outside the blocks.
    pub const ALL: [Key; 9] = [
        PATCH_EMBED,
        TIME_LINEAR_1,
        TIME_LINEAR_2,
        POOL_TO_KV,
        POOL_TO_Q,
        POOL_TO_OUT,
        CAPTION_PROJ,
        NORM_OUT,
        PROJ_OUT,
    ];
}

/// The learned RoPE frequencies, a bare tensor `[3, heads, head_dim / 2]` (same name in
/// both schemes, kept in f32).
pub const POS_FREQUENCIES: &str = "pos_frequencies";

/// The block list: `transformer_blocks.{i}` in diffusers, `blocks.{i}` in genmo.
pub const BLOCKS: Key = same("transformer_blocks", "blocks");

/// Modules inside each block.
pub mod block {
    use crate::model::keys::{Key, rows, same, swapped};

    /// Visual stream modulation (4 × width).
    pub const MOD_X: Key = same("norm1.linear", "mod_x");
    /// Text stream modulation (4 × width), every block but the last.
    pub const MOD_Y: Key = same("norm1_context.linear", "mod_y");
    /// Text stream modulation of the last block (its scale only).
    pub const MOD_Y_LAST: Key = same("norm1_context.linear_1", "mod_y");
    /// Visual query, key and value (genmo's fused `qkv_x`).
    pub const TO_Q: Key = rows("attn1.to_q", "attn.qkv_x", 0);
    /// Visual key.
    pub const TO_K: Key = rows("attn1.to_k", "attn.qkv_x", 1);
    /// Visual value.
    pub const TO_V: Key = rows("attn1.to_v", "attn.qkv_x", 2);
    /// Text query, key and value (genmo's fused `qkv_y`).
    pub const ADD_Q_PROJ: Key = rows("attn1.add_q_proj", "attn.qkv_y", 0);
    /// Text key.
    pub const ADD_K_PROJ: Key = rows("attn1.add_k_proj", "attn.qkv_y", 1);
    /// Text value.
    pub const ADD_V_PROJ: Key = rows("attn1.add_v_proj", "attn.qkv_y", 2);
    /// Visual query RMS norm weight.
    pub const NORM_Q: Key = same("attn1.norm_q", "attn.q_norm_x");
    /// Visual key RMS norm weight.
    pub const NORM_K: Key = same("attn1.norm_k", "attn.k_norm_x");
    /// Text query RMS norm weight.
    pub const NORM_ADDED_Q: Key = same("attn1.norm_added_q", "attn.q_norm_y");
    /// Text key RMS norm weight.
    pub const NORM_ADDED_K: Key = same("attn1.norm_added_k", "attn.k_norm_y");
    /// Visual attention output projection.
    pub const PROJ_X: Key = same("attn1.to_out.0", "attn.proj_x");
    /// Text attention output projection, every block but the last.
    pub const PROJ_Y: Key = same("attn1.to_add_out", "attn.proj_y");
    /// Visual SwiGLU input (value and gate halves swapped between the schemes).
    pub const MLP_X_W1: Key = swapped("ff.net.0.proj", "mlp_x.w1");
    /// Visual SwiGLU output.
    pub const MLP_X_W2: Key = same("ff.net.2", "mlp_x.w2");
    /// Text SwiGLU input, every block but the last.
    pub const MLP_Y_W1: Key = swapped("ff_context.net.0.proj", "mlp_y.w1");
    /// Text SwiGLU output, every block but the last.
    pub const MLP_Y_W2: Key = same("ff_context.net.2", "mlp_y.w2");
    /// Every module of a block.
    pub const ALL: [Key; 19] = [
        MOD_X,
        MOD_Y,
        MOD_Y_LAST,
        TO_Q,
        TO_K,
        TO_V,
        ADD_Q_PROJ,
        ADD_K_PROJ,
        ADD_V_PROJ,
        NORM_Q,
        NORM_K,
        NORM_ADDED_Q,
        NORM_ADDED_K,
        PROJ_X,
        PROJ_Y,
        MLP_X_W1,
        MLP_X_W2,
        MLP_Y_W1,
        MLP_Y_W2,
    ];
}

/// Where a diffusers tensor name comes from in genmo's checkpoint: genmo's name and the
/// transform; `None` for a name neither scheme has.
pub fn genmo_source(name: &str) -> Option<(String, FromGenmo)> {
    if name == POS_FREQUENCIES {
        return Some((POS_FREQUENCIES.to_owned(), FromGenmo::Same));
    }
    let (module, param) = name.rsplit_once('.')?;
    if let Some(key) = top::ALL.iter().find(|k| k.diffusers == module) {
        return Some((format!("{}.{param}", key.genmo), key.from_genmo));
    }
    let rest = module.strip_prefix(BLOCKS.diffusers)?.strip_prefix('.')?;
    let (index, inner) = rest.split_once('.')?;
    index.parse::<usize>().ok()?;
    let key = block::ALL.iter().find(|k| k.diffusers == inner)?;
    Some((
        format!("{}.{index}.{}.{param}", BLOCKS.genmo, key.genmo),
        key.from_genmo,
    ))
}
