#!/usr/bin/env python3
"""Writes the AsymmDiT golden fixtures under mochi-model/tests/fixtures/ (spec §6.1, §6.3).

Regenerate the DiT, sampler and text-path fixtures with one command (from anywhere):
    .venv-ref/bin/python tools/make_fixtures.py               # dit/ and t5/
    .venv-ref/bin/python tools/make_fixtures.py --dit-only    # dit/ only
    .venv-ref/bin/python tools/make_fixtures.py --mask-cases  # only the text-mask cases,
                                                              # on the committed weights
(the T5 part is tools/make_t5_fixtures.py; the VAE has its own make_vae_fixtures.py).

Builds the tiny diffusers `MochiTransformer3DModel` with fixed seeds, saves its weights
in the diffusers layout (two shards + index + config.json) and in genmo's
`dit.safetensors` key scheme, then runs the reference forward on several cases and
saves inputs, output and intermediate taps (f32). Also writes the sigma lists and a
two-step CFG sampling run. Everything runs on the CPU in float32.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, MochiTransformer3DModel
from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "mochi-model" / "tests" / "fixtures" / "dit"

TINY = dict(
    patch_size=2,
    num_attention_heads=2,
    attention_head_dim=8,
    num_layers=2,
    pooled_projection_dim=24,
    in_channels=12,
    out_channels=None,
    qk_norm="rms_norm",
    text_embed_dim=32,
    time_embed_dim=8,
    activation_fn="swiglu",
    max_sequence_length=16,
)

LATENTS_MEAN = [-0.06730895953510081, -0.038011381506090416, -0.07477820912866141,
                -0.05565264470995561, 0.012767231469026969, -0.04703542746246419,
                0.043896967884726704, -0.09346305707025976, -0.09918314763016893,
                -0.008729793427399178, -0.011931556316503654, -0.0321993391887285]
LATENTS_STD = [0.9263795028493863, 0.9248894543193766, 0.9393059390890617,
               0.959253732819592, 0.8244560132752793, 0.917259975397747,
               0.9294154431013696, 1.3720942357788521, 0.881393668867029,
               0.9168315692124348, 0.9185249279345552, 0.9274757570805041]


def build_model():
    torch.manual_seed(0)
    model = MochiTransformer3DModel(**TINY).eval()
    with torch.no_grad():
        # diffusers initialises pos_frequencies to zeros (RoPE = identity) and the qk-norm
        # weights to ones: randomise them so both are exercised.
        model.pos_frequencies.normal_(0.0, 0.3)
        for name, param in model.named_parameters():
            if ".norm_" in name and name.endswith(".weight"):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
    return model


def to_genmo(state):
    """Inverse of spec §2.6: diffusers names → genmo `dit.safetensors` names."""
    out = {}
    fixed = {
        "patch_embed.proj.": "x_embedder.proj.",
        "time_embed.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
        "time_embed.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
        "time_embed.pooler.": "t5_y_embedder.",
        "time_embed.caption_proj.": "t5_yproj.",
        "proj_out.": "final_layer.linear.",
    }
    swap = lambda t: torch.cat([t.chunk(2, 0)[1], t.chunk(2, 0)[0]], 0)
    layers = max(int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks.")) + 1
    for key, value in state.items():
        if key == "pos_frequencies":
            out[key] = value
        elif key.startswith("norm_out.linear."):
            out["final_layer.mod." + key.split(".")[-1]] = swap(value)
        elif any(key.startswith(p) for p in fixed):
            prefix = next(p for p in fixed if key.startswith(p))
            out[fixed[prefix] + key[len(prefix):]] = value
    for i in range(layers):
        d = f"transformer_blocks.{i}."
        g = f"blocks.{i}."
        rename = {
            "norm1.linear.weight": "mod_x.weight", "norm1.linear.bias": "mod_x.bias",
            "norm1_context.linear.weight": "mod_y.weight", "norm1_context.linear.bias": "mod_y.bias",
            "norm1_context.linear_1.weight": "mod_y.weight", "norm1_context.linear_1.bias": "mod_y.bias",
            "attn1.norm_q.weight": "attn.q_norm_x.weight", "attn1.norm_k.weight": "attn.k_norm_x.weight",
            "attn1.norm_added_q.weight": "attn.q_norm_y.weight",
            "attn1.norm_added_k.weight": "attn.k_norm_y.weight",
            "attn1.to_out.0.weight": "attn.proj_x.weight", "attn1.to_out.0.bias": "attn.proj_x.bias",
            "attn1.to_add_out.weight": "attn.proj_y.weight", "attn1.to_add_out.bias": "attn.proj_y.bias",
            "ff.net.2.weight": "mlp_x.w2.weight", "ff_context.net.2.weight": "mlp_y.w2.weight",
        }
        for src, dst in rename.items():
            if d + src in state:
                out[g + dst] = state[d + src]
        out[g + "attn.qkv_x.weight"] = torch.cat(
            [state[d + f"attn1.to_{n}.weight"] for n in "qkv"], 0)
        out[g + "attn.qkv_y.weight"] = torch.cat(
            [state[d + f"attn1.add_{n}_proj.weight"] for n in "qkv"], 0)
        out[g + "mlp_x.w1.weight"] = swap(state[d + "ff.net.0.proj.weight"])
        if d + "ff_context.net.0.proj.weight" in state:
            out[g + "mlp_y.w1.weight"] = swap(state[d + "ff_context.net.0.proj.weight"])
    return {k: v.contiguous() for k, v in out.items()}


def save_weights(model):
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    # diffusers layout, deliberately sharded in two with an index.
    tdir = OUT / "model" / "transformer"
    tdir.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    shards = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, shard_keys in enumerate(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: state[k] for k in shard_keys}, str(tdir / name))
        weight_map.update({k: name for k in shard_keys})
    (tdir / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1, sort_keys=True) + "\n")
    config = dict(model.config)
    config = {k: v for k, v in config.items() if not k.startswith("_use")}
    config["_class_name"] = "MochiTransformer3DModel"
    (tdir / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True, default=str) + "\n")
    gdir = OUT / "genmo"
    gdir.mkdir(parents=True, exist_ok=True)
    save_file(to_genmo(state), str(gdir / "dit.safetensors"))


def forward_with_taps(model, latents, timestep, text, mask):
    taps = {}
    hooks = []

    def hook(name, fn=lambda o: o):
        def inner(_module, _inputs, output):
            taps[name] = fn(output).detach().clone()
        return inner

    te = model.time_embed
    hooks.append(te.timestep_embedder.register_forward_hook(hook("temb")))
    hooks.append(te.pooler.register_forward_hook(hook("pooled")))
    hooks.append(te.caption_proj.register_forward_hook(hook("caption")))
    batch, _, frames = latents.shape[:3]
    hooks.append(model.patch_embed.register_forward_hook(
        hook("patch", lambda o: o.reshape(batch, -1, o.shape[-1]))))
    hooks.append(model.rope.register_forward_hook(hook("rope_cos", lambda o: o[0])))
    hooks.append(model.rope.register_forward_hook(hook("rope_sin", lambda o: o[1])))
    for i, block in enumerate(model.transformer_blocks):
        hooks.append(block.register_forward_hook(hook(f"block{i}_x", lambda o: o[0])))
        hooks.append(block.register_forward_hook(hook(f"block{i}_y", lambda o: o[1])))
    hooks.append(model.norm_out.register_forward_hook(hook("norm_out")))
    with torch.no_grad():
        out = model(hidden_states=latents, encoder_hidden_states=text, timestep=timestep,
                    encoder_attention_mask=mask, return_dict=False)[0]
    for h in hooks:
        h.remove()
    taps["conditioning"] = taps["temb"] + taps["pooled"]
    taps["output"] = out.detach().clone()
    return taps


def make_cases(model):
    g = torch.Generator().manual_seed(1)
    text_len = TINY["max_sequence_length"]
    prefix_mask = torch.tensor([[1] * 10 + [0] * 6])
    empty_mask = torch.zeros(1, text_len, dtype=torch.long)
    text = torch.randn(1, text_len, 32, generator=g)
    cases = {
        "prefix": (torch.randn(1, 12, 3, 8, 8, generator=g), torch.tensor([437.5]), text, prefix_mask),
        "empty": (torch.randn(1, 12, 3, 8, 8, generator=g), torch.tensor([975.0]),
                  torch.zeros(1, text_len, 32), empty_mask),
        "nonsquare": (torch.randn(1, 12, 2, 8, 12, generator=g), torch.tensor([20.0]),
                      torch.randn(1, text_len, 32, generator=g), torch.tensor([[1] * 5 + [0] * 11])),
    }
    both_text = torch.cat([torch.zeros(1, text_len, 32), text], 0)
    cases["batch2"] = (torch.randn(2, 12, 3, 8, 8, generator=g), torch.tensor([0.0, 600.0]),
                       both_text, torch.cat([empty_mask, prefix_mask], 0))
    for name, (latents, timestep, text_in, mask) in cases.items():
        taps = forward_with_taps(model, latents, timestep, text_in, mask)
        tensors = {"in_latents": latents, "in_timestep": timestep.float(), "in_text": text_in,
                   "in_mask": mask.float()}
        tensors.update({f"tap_{k}": v.float() for k, v in taps.items()})
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / f"case_{name}.safetensors"))


def load_committed_model():
    """The tiny model with the weights already in the fixtures (not rebuilt), so new cases
    are computed on exactly the weights every other golden uses."""
    from safetensors.torch import load_file
    model = MochiTransformer3DModel(**TINY).eval()
    tdir = OUT / "model" / "transformer"
    state = {}
    for shard in sorted(tdir.glob("diffusion_pytorch_model-*.safetensors")):
        state.update(load_file(str(shard)))
    model.load_state_dict(state)
    return model


def make_mask_cases(model):
    """Text masks other than a prefix (spec §2.6): every valid, a single valid token, and
    valid tokens with gaps (0, 2, 3, 7). diffusers packs the valid text tokens' attention
    outputs to the front and pads after them; these goldens hold what it computes."""
    g = torch.Generator().manual_seed(2)
    text_len = TINY["max_sequence_length"]
    gapped = torch.zeros(1, text_len, dtype=torch.long)
    gapped[0, [0, 2, 3, 7]] = 1
    single = torch.zeros(1, text_len, dtype=torch.long)
    single[0, 5] = 1
    cases = {
        "allvalid": torch.ones(1, text_len, dtype=torch.long),
        "single": single,
        "gapped": gapped,
    }
    for name, mask in cases.items():
        latents = torch.randn(1, 12, 3, 8, 8, generator=g)
        text = torch.randn(1, text_len, 32, generator=g)
        timestep = torch.tensor([612.5])
        taps = forward_with_taps(model, latents, timestep, text, mask)
        tensors = {"in_latents": latents, "in_timestep": timestep.float(), "in_text": text,
                   "in_mask": mask.float()}
        tensors.update({f"tap_{k}": v.float() for k, v in taps.items()})
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / f"case_{name}.safetensors"))


def sigma_lists():
    def genmo(n, tau, m=None):
        return [float(s) for s in linear_quadratic_schedule(n, tau, m)] + [0.0]
    lists = {"n8_t0.025": genmo(8, 0.025), "n64_t0.025": genmo(64, 0.025),
             "n8_t0.1_m6": genmo(8, 0.1, 6), "n2_t0.025": genmo(2, 0.025)}
    (OUT / "sigmas.json").write_text(json.dumps(lists, indent=1) + "\n")
    return lists


def sampling_run(model, sigmas):
    """Two denoising steps exactly as diffusers' `MochiPipeline.__call__` runs them: the
    released scheduler config (`FlowMatchEulerDiscreteScheduler`, invert_sigmas, shift 1)
    fed with the linear-quadratic sigmas, CFG 4.5 on the batch [uncond, cond], the
    scheduler's own Euler `step` on f32 latents. The uncond branch has no valid text
    (genmo's empty negative prompt)."""
    g = torch.Generator().manual_seed(2)
    text_len = TINY["max_sequence_length"]
    z = torch.randn(1, 12, 2, 8, 8, generator=g)
    cond_text = torch.randn(1, text_len, 32, generator=g)
    cond_mask = torch.tensor([[1] * 7 + [0] * 9])
    uncond_text = torch.zeros(1, text_len, 32)
    uncond_mask = torch.zeros(1, text_len, dtype=torch.long)
    scale = 4.5
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, invert_sigmas=True)
    scheduler.set_timesteps(sigmas=np.array(sigmas[:-1]))
    scheduler.set_begin_index(0)
    tensors = {"in_latents": z.clone(), "cond_text": cond_text, "cond_mask": cond_mask.float(),
               "uncond_text": uncond_text, "uncond_mask": uncond_mask.float(),
               "sigmas": torch.tensor(sigmas, dtype=torch.float64),
               "guidance": torch.tensor([scale], dtype=torch.float64),
               "timesteps": scheduler.timesteps.clone().float()}
    text = torch.cat([uncond_text, cond_text], 0)
    mask = torch.cat([uncond_mask, cond_mask], 0)
    for i, t in enumerate(scheduler.timesteps):
        with torch.no_grad():
            v = model(hidden_states=torch.cat([z, z], 0), encoder_hidden_states=text,
                      timestep=t.expand(2).to(z.dtype), encoder_attention_mask=mask,
                      return_dict=False)[0].float()
        v_u, v_c = v.chunk(2)
        guided = v_u + scale * (v_c - v_u)
        z = scheduler.step(guided, t, z.to(torch.float32), return_dict=False)[0]
        tensors[f"step{i}_latents"] = z.clone()
    mean = torch.tensor(LATENTS_MEAN).view(1, 12, 1, 1, 1)
    std = torch.tensor(LATENTS_STD).view(1, 12, 1, 1, 1)
    tensors["vae_latents"] = z * std + mean
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / "sampling.safetensors"))


def main():
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    if "--mask-cases" in sys.argv:
        make_mask_cases(load_committed_model())
        print(f"wrote the text-mask cases under {OUT}")
        return
    model = build_model()
    save_weights(model)
    make_cases(model)
    make_mask_cases(model)
    lists = sigma_lists()
    sampling_run(model, lists["n2_t0.025"])
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB)")
    if "--dit-only" not in sys.argv:
        import make_t5_fixtures
        make_t5_fixtures.main()


if __name__ == "__main__":
    main()
