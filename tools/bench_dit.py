#!/usr/bin/env python3
"""CPU benchmark of one AsymmDiT forward (CFG batch of two) in PyTorch/diffusers.

Writes the random-weight model it times to OUT/transformer so that the candle side
(`cargo run -p mochi-model --example dit_bench -- OUT ...`) times the same weights:
    .venv-ref/bin/python tools/bench_dit.py OUT --layers 4 --heads 12 --text-dim 768 \
        --frames 1 --height 16 --width 32 --text-tokens 32 --threads 2
"""
import argparse
import statistics
import time
from pathlib import Path

import torch
from diffusers import MochiTransformer3DModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=8)
    ap.add_argument("--text-dim", type=int, default=24)
    ap.add_argument("--t5-dim", type=int, default=32)
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--height", type=int, default=8)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--text-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = MochiTransformer3DModel(
        num_attention_heads=args.heads, attention_head_dim=args.head_dim, num_layers=args.layers,
        pooled_projection_dim=args.text_dim, text_embed_dim=args.t5_dim,
        time_embed_dim=8 if args.heads * args.head_dim < 256 else 256,
        max_sequence_length=args.text_tokens).eval()
    with torch.no_grad():
        model.pos_frequencies.normal_(0.0, 0.3)
    out = Path(args.out) / "transformer"
    model.save_pretrained(str(out), safe_serialization=True)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 12, args.frames, args.height, args.width, generator=g)
    text = torch.randn(2, args.text_tokens, args.t5_dim, generator=g)
    mask = torch.ones(2, args.text_tokens, dtype=torch.long)
    mask[0] = 0
    timestep = torch.tensor([500.0, 500.0])
    times = []
    with torch.no_grad():
        for _ in range(args.reps + 1):
            start = time.perf_counter()
            model(hidden_states=latents, encoder_hidden_states=text, timestep=timestep,
                  encoder_attention_mask=mask, return_dict=False)
            times.append(time.perf_counter() - start)
    tokens = args.frames * (args.height // 2) * (args.width // 2)
    print(f"pytorch {torch.__version__} threads={args.threads} visual_tokens={tokens} "
          f"median {statistics.median(times[1:]) * 1e3:.1f} ms over {args.reps} (first {times[0] * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
