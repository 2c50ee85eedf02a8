#!/usr/bin/env python3
"""Writes the full tiny pipeline golden, mochi-model/tests/fixtures/pipeline/run.safetensors
(spec §6.3: two steps, CFG, decode).

Regenerate with (from the repository root, after make_fixtures.py and make_vae_fixtures.py):
    .venv-ref/bin/python tools/make_pipeline_fixtures.py

Runs diffusers' own `MochiPipeline.__call__` on the tiny transformer of
`mochi-model/tests/fixtures/dit/model` and the tiny VAE of `mochi-model/tests/fixtures/vae/model`
(weights read from those fixtures, not duplicated), with fixed initial latents and fixed
text embeddings instead of T5 (no tokenizer or text encoder is loaded): 2 steps of the
linear-quadratic schedule through the released scheduler config
(`FlowMatchEulerDiscreteScheduler`, invert_sigmas, shift 1), guidance 4.5 on the batch
[uncond, cond], denormalisation with the VAE's latents_mean/std, `vae.decode` (diffusers
frame dropping) and `postprocess_video(output_type="pt")`. Saved: the inputs, the latents
after each step (via `callback_on_step_end`), the VAE-scale latents and raw video that
`vae.decode` saw and returned, the pipeline's frames, and the genmo-semantics decode of the
same latents (make_vae_fixtures.genmo_decode). f32, CPU, bit-identical across runs.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import (AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline,
                       MochiTransformer3DModel)
from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_vae_fixtures import genmo_decode  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "mochi-model" / "tests" / "fixtures"
OUT = FIXTURES / "pipeline"

STEPS = 2
GUIDANCE = 4.5
LATENT_SHAPE = (1, 12, 2, 4, 6)  # → 7 frames of 32x48
TEXT_LEN = 16  # the tiny DiT's max_sequence_length
TEXT_DIM = 32


def load_vae():
    vdir = FIXTURES / "vae" / "model" / "vae"
    config = json.loads((vdir / "config.json").read_text())
    vae = AutoencoderKLMochi.from_config(config).eval()
    state = load_file(str(vdir / "diffusion_pytorch_model.safetensors"))
    missing, unexpected = vae.load_state_dict(state, strict=False)
    # The fixture keeps only the decoder; the encoder is unused here.
    assert not unexpected, unexpected
    assert all(k.startswith("encoder.") for k in missing), missing
    return vae


def main():
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    transformer = MochiTransformer3DModel.from_pretrained(
        str(FIXTURES / "dit" / "model"), subfolder="transformer").eval()
    vae = load_vae()
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, invert_sigmas=True)
    pipe = MochiPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None,
                         transformer=transformer)
    pipe.set_progress_bar_config(disable=True)

    g = torch.Generator().manual_seed(3)
    latents = torch.randn(*LATENT_SHAPE, generator=g)
    cond_text = torch.randn(1, TEXT_LEN, TEXT_DIM, generator=g)
    cond_mask = torch.tensor([[1] * 9 + [0] * (TEXT_LEN - 9)])
    # A non-empty negative prompt (the all-masked one is covered by dit/sampling).
    uncond_text = torch.randn(1, TEXT_LEN, TEXT_DIM, generator=g)
    uncond_mask = torch.tensor([[1] * 3 + [0] * (TEXT_LEN - 3)])

    steps = {}

    def on_step(_pipe, i, _t, kwargs):
        steps[f"step{i}_latents"] = kwargs["latents"].clone()
        return {}

    seen = {}
    decode = vae.decode

    def recording_decode(z, *args, **kwargs):
        seen["vae_latents"] = z.clone()
        out = decode(z, *args, **kwargs)
        seen["out_video_diffusers"] = out[0].clone()
        return out

    vae.decode = recording_decode
    _, _, t, h, w = LATENT_SHAPE
    with torch.no_grad():
        frames = pipe(
            prompt_embeds=cond_text, prompt_attention_mask=cond_mask,
            negative_prompt_embeds=uncond_text, negative_prompt_attention_mask=uncond_mask,
            latents=latents.clone(), num_inference_steps=STEPS, guidance_scale=GUIDANCE,
            height=8 * h, width=8 * w, num_frames=6 * (t - 1) + 1,
            output_type="pt", return_dict=False, callback_on_step_end=on_step,
            callback_on_step_end_tensor_inputs=["latents"],
        )[0]
        genmo, _ = genmo_decode(vae.decoder, seen["vae_latents"])
    vae.decode = decode

    sigmas = [float(s) for s in linear_quadratic_schedule(STEPS, 0.025)] + [0.0]
    tensors = {
        "in_latents": latents, "cond_text": cond_text, "cond_mask": cond_mask.float(),
        "uncond_text": uncond_text, "uncond_mask": uncond_mask.float(),
        "sigmas": torch.tensor(sigmas, dtype=torch.float64),
        "guidance": torch.tensor([GUIDANCE], dtype=torch.float64),
        "timesteps": scheduler.timesteps.clone().float(),
        "out_frames": frames,  # (1, F, 3, H, W) in [0, 1]
        "out_video_genmo": genmo,
        **steps, **seen,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / "run.safetensors"))
    print({k: tuple(v.shape) for k, v in tensors.items()})
    print(f"wrote {OUT / 'run.safetensors'} "
          f"({(OUT / 'run.safetensors').stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
