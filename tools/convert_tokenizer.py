#!/usr/bin/env python3
"""One-time conversion of the release's `tokenizer/spiece.model` to `tokenizer.json`.

The Mochi release ships a SentencePiece model, not a fast-tokenizer file; the Rust text
path reads `tokenizer.json`. Run once per model directory, offline:
    .venv-ref/bin/python tools/convert_tokenizer.py /models/mochi-1-preview/tokenizer
"""
import sys
from pathlib import Path

from types import SimpleNamespace

import sentencepiece as spm
from transformers.convert_slow_tokenizer import T5Converter


def convert(tokenizer_dir, extra_ids=100):
    """transformers' own slow→fast T5 conversion (legacy=False, as genmo/diffusers use)."""
    tokenizer_dir = Path(tokenizer_dir)
    vocab_file = str(tokenizer_dir / "spiece.model")
    sp = spm.SentencePieceProcessor(model_file=vocab_file)
    original = SimpleNamespace(vocab_file=vocab_file, _extra_ids=extra_ids, legacy=False,
                               add_prefix_space=True,
                               convert_tokens_to_ids=lambda token: sp.piece_to_id(token))
    tokenizer = T5Converter(original).converted()
    tokenizer.save(str(tokenizer_dir / "tokenizer.json"))
    return tokenizer_dir / "tokenizer.json"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: convert_tokenizer.py TOKENIZER_DIR (holding spiece.model)")
    print(convert(sys.argv[1]))
