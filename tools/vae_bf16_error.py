#!/usr/bin/env python3
"""How far PyTorch's own bf16 decodes of the tiny VAE decoder fixtures land from the f32
`out_genmo` reference, to set the Rust bf16 VAE decode error in context. For each case
(t1, t2, t3) it decodes `in_latents` with genmo semantics (`genmo_decode` from
make_vae_fixtures.py, frames dropped inside every up block) three ways: f32 (sanity check,
should match `out_genmo` to 1e-6 or better), autocast to bf16 with f32 weights, and the whole
model cast to bf16. It prints max|Δ| against `out_genmo` and rel = max|Δ| / max|out_genmo|.
CPU, 2 threads.

    .venv-ref/bin/python tools/vae_bf16_error.py
"""
from pathlib import Path

import torch
from diffusers import AutoencoderKLMochi
from diffusers.utils import logging
from safetensors.torch import load_file

from make_vae_fixtures import genmo_decode

FIXTURES = Path(__file__).resolve().parent.parent / "mochi-model" / "tests" / "fixtures" / "vae"


def main():
    torch.set_num_threads(2)
    logging.set_verbosity_error()  # the fixture has no encoder weights; skip that warning
    model_dir = str(FIXTURES / "model")
    f32 = AutoencoderKLMochi.from_pretrained(model_dir, subfolder="vae").eval()
    bf16 = AutoencoderKLMochi.from_pretrained(model_dir, subfolder="vae",
                                              torch_dtype=torch.bfloat16).eval()
    for case in ["t1", "t2", "t3"]:
        data = load_file(str(FIXTURES / f"case_{case}.safetensors"))
        z, ref = data["in_latents"], data["out_genmo"]
        with torch.no_grad():
            plain = genmo_decode(f32.decoder, z)[0]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                autocast = genmo_decode(f32.decoder, z)[0].float()
            cast = genmo_decode(bf16.decoder, z.bfloat16())[0].float()
        scale = ref.abs().max().item()
        for name, out in [("f32", plain), ("bf16-autocast", autocast), ("bf16-model", cast)]:
            diff = (out - ref).abs().max().item()
            print(f"{name} {case} max|Δ| {diff:.1e} rel {diff / scale:.1e}")


if __name__ == "__main__":
    main()
