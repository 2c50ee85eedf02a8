#!/usr/bin/env python3
"""How far PyTorch's own bf16 runs of the tiny DiT fixture land from its f32 output, to
set the Rust bf16 error (`cargo test -p mochi-model --test model_dit bf16 -- --nocapture`)
in context. Two reference modes: genmo-style autocast (f32 weights, bf16 matmuls) and
diffusers with the whole model cast to bf16.

    .venv-ref/bin/python tools/bf16_reference.py
"""
from pathlib import Path

import torch
from diffusers import MochiTransformer3DModel
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parent.parent / "mochi-model" / "tests" / "fixtures" / "dit"


def main():
    model_dir = str(FIXTURES / "model" / "transformer")
    f32 = MochiTransformer3DModel.from_pretrained(model_dir).eval()
    bf16 = MochiTransformer3DModel.from_pretrained(model_dir, torch_dtype=torch.bfloat16).eval()
    for case in ["prefix", "nonsquare", "batch2"]:
        data = load_file(str(FIXTURES / f"case_{case}.safetensors"))
        ref = data["tap_output"]
        args = dict(hidden_states=data["in_latents"], encoder_hidden_states=data["in_text"],
                    timestep=data["in_timestep"], encoder_attention_mask=data["in_mask"].long(),
                    return_dict=False)
        with torch.no_grad():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                autocast = f32(**args)[0].float()
            cast = bf16(**{**args, "hidden_states": args["hidden_states"].bfloat16(),
                           "encoder_hidden_states": args["encoder_hidden_states"].bfloat16()})[0].float()
        scale = ref.abs().max().item()
        for name, out in [("autocast", autocast), ("bf16 model", cast)]:
            diff = (out - ref).abs().max().item()
            print(f"{case:<10} {name:<10} max|Δ| {diff:.3e}  rel {diff / scale:.3e}")


if __name__ == "__main__":
    main()
