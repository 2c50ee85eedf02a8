#!/usr/bin/env python3
"""Writes the VAE decoder golden fixtures under mochi-model/tests/fixtures/vae/ (spec §6.2).

Regenerate with (from the repository root):
    .venv-ref/bin/python tools/make_vae_fixtures.py

Builds the tiny diffusers `AutoencoderKLMochi` (decoder channels 32 x 4, one res block per
stage, temporal expansions 1,2,3, spatial 2,2,2, in_channels 15) with fixed seeds and
randomised GroupNorm affine parameters, and saves the decoder weights in the diffusers
`vae/` layout (prefix `decoder.`; encoder weights left out to keep fixtures small) and in
genmo's `decoder.safetensors` key scheme (spec §3.5). For each case it saves the latent
input, the genmo-semantics decode (frames dropped inside every up block, §3.4) with a tap
after every stage, and diffusers' own `vae.decode` (all 6T frames, first 5 dropped at the
end). A single causal conv is also dumped for the conv3d unit tests. f32, CPU.

`case_tiled.safetensors` is diffusers' own tiled decode (`vae.enable_tiling` with tiles
of 32x48 px every 24x32 px, i.e. 4x6 latents every 3x4, blends of 8 and 16 px) of a
(1, 12, 2, 5, 9) latent, whose grid has 2 x 3 tiles including cut edge tiles (the last
column is one latent wide). The untiled decode is not stored (fixture size): the tests
decode it in Rust, which matches diffusers' `vae.decode` to about 1e-6.
"""
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLMochi
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "mochi-model" / "tests" / "fixtures" / "vae"

TINY = dict(
    in_channels=15,
    out_channels=3,
    latent_channels=12,
    encoder_block_out_channels=(32, 32, 32, 32),
    decoder_block_out_channels=(32, 32, 32, 32),
    layers_per_block=(1, 1, 1, 1, 1),
    temporal_expansions=(1, 2, 3),
    spatial_expansions=(2, 2, 2),
)

# Output pixels (diffusers `enable_tiling` arguments); multiples of 8.
TILES = dict(
    tile_sample_min_height=32,
    tile_sample_min_width=48,
    tile_sample_stride_height=24,
    tile_sample_stride_width=32,
)


def build_model():
    torch.manual_seed(0)
    vae = AutoencoderKLMochi(**TINY).eval()
    with torch.no_grad():
        for name, param in vae.decoder.named_parameters():
            if ".norm_layer." in name:
                if name.endswith(".weight"):
                    param.copy_(1.0 + 0.2 * torch.randn_like(param))
                else:
                    param.copy_(0.2 * torch.randn_like(param))
    return vae


def to_genmo(state):
    """Inverse of spec §3.5: diffusers `decoder.*` names → genmo `decoder.safetensors`."""
    res = {"norm1.norm_layer": "stack.0", "conv1.conv": "stack.2",
           "norm2.norm_layer": "stack.3", "conv2.conv": "stack.5"}
    n_up = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("decoder.up_blocks."))
    out = {}
    for key, value in state.items():
        k = key[len("decoder."):]
        parts = k.split(".")
        if parts[0] == "conv_in":
            new = "blocks.0.0." + parts[1]
        elif parts[0] == "proj_out":
            new = "output_proj." + parts[1]
        elif parts[0] == "block_in":
            i = int(parts[2])
            new = f"blocks.0.{i + 1}." + res[".".join(parts[3:5])] + "." + parts[5]
        elif parts[0] == "block_out":
            i = int(parts[2])
            new = f"blocks.{n_up + 1}.{i}." + res[".".join(parts[3:5])] + "." + parts[5]
        elif parts[0] == "up_blocks":
            b = int(parts[1])
            if parts[2] == "proj":
                new = f"blocks.{b + 1}.proj." + parts[3]
            else:
                i = int(parts[3])
                new = f"blocks.{b + 1}.blocks.{i}." + res[".".join(parts[4:6])] + "." + parts[6]
        else:
            raise KeyError(key)
        out[new] = value.contiguous()
    return out


def genmo_decode(dec, z):
    """diffusers sub-modules in order, dropping st-1 leading frames after each up block."""
    taps = {}
    h = dec.conv_in(z)
    taps["conv_in"] = h
    h, _ = dec.block_in(h)
    taps["block_in"] = h
    for i, up in enumerate(dec.up_blocks):
        h, _ = up(h)
        h = h[:, :, up.temporal_expansion - 1:]
        taps[f"up_block_{i}"] = h
    h, _ = dec.block_out(h)
    taps["block_out"] = h
    h = F.silu(h)
    h = dec.proj_out(h.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
    return h, taps


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    vae = build_model()
    state = {k: v.detach().contiguous() for k, v in vae.state_dict().items()
             if k.startswith("decoder.")}
    vdir = OUT / "model" / "vae"
    vdir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(vdir / "diffusion_pytorch_model.safetensors"))
    config = dict(vae.config)
    # diffusers keeps this list in set order, which varies between runs.
    config["_use_default_values"] = sorted(config.get("_use_default_values", []))
    (vdir / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True, default=str) + "\n")
    gdir = OUT / "genmo"
    gdir.mkdir(parents=True, exist_ok=True)
    save_file(to_genmo(state), str(gdir / "decoder.safetensors"))

    cases = {"t1": (1, 2, 3), "t2": (2, 2, 3), "t3": (3, 3, 4)}
    # Large late-stage taps are only kept for the small cases (fixture size).
    big_taps = {"up_block_2", "block_out"}
    with torch.no_grad():
        for i, (name, (t, h, w)) in enumerate(cases.items()):
            g = torch.Generator().manual_seed(100 + i)
            z = torch.randn(1, 12, t, h, w, generator=g)
            out, taps = genmo_decode(vae.decoder, z)
            tensors = {"in_latents": z, "out_genmo": out,
                       "out_diffusers": vae.decode(z).sample}
            tensors.update({f"tap_{k}": v for k, v in taps.items()
                            if name != "t3" or k not in big_taps})
            save_file({k: v.contiguous() for k, v in tensors.items()},
                      str(OUT / f"case_{name}.safetensors"))
            print(name, {k: tuple(v.shape) for k, v in tensors.items()})

        # diffusers' tiled decode on small tiles (docs/model.md § tiling).
        g = torch.Generator().manual_seed(200)
        z = torch.randn(1, 12, 2, 5, 9, generator=g)
        whole = vae.decode(z).sample
        vae.enable_tiling(tile_sample_min_height=TILES["tile_sample_min_height"],
                          tile_sample_min_width=TILES["tile_sample_min_width"],
                          tile_sample_stride_height=TILES["tile_sample_stride_height"],
                          tile_sample_stride_width=TILES["tile_sample_stride_width"])
        tiled = vae.decode(z).sample
        vae.disable_tiling()
        tensors = {"in_latents": z, "out_tiled_diffusers": tiled.contiguous(),
                   "tiles": torch.tensor([TILES[k] for k in sorted(TILES)], dtype=torch.int64)}
        save_file(tensors, str(OUT / "case_tiled.safetensors"))
        print("tiled", {k: tuple(v.shape) for k, v in tensors.items()},
              "max |tiled - whole|", (tiled - whole).abs().max().item())

        # One causal conv (replicate padding in time and space), for the conv3d tests.
        conv = vae.decoder.block_in.resnets[0].conv1
        x = torch.randn(1, 32, 3, 5, 7, generator=torch.Generator().manual_seed(7))
        y, _ = conv(x)
        save_file({"x": x, "y": y.contiguous(), "weight": conv.conv.weight.detach().contiguous(),
                   "bias": conv.conv.bias.detach().contiguous()},
                  str(OUT / "conv3d.safetensors"))


if __name__ == "__main__":
    main()
