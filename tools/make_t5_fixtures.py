#!/usr/bin/env python3
"""Writes the text-path golden fixtures under mochi-model/tests/fixtures/t5/ (spec §6.3).

Regenerate with (from the repository root):
    .venv-ref/bin/python tools/make_t5_fixtures.py

* a tiny SentencePiece unigram model trained here (stand-in for the release's
  `tokenizer/spiece.model`, read directly by the Rust SentencePiece reader), also
  converted to `tokenizer.json` by tools/convert_tokenizer.py's route (the optional
  fallback path), plus the reference ids of a set of prompts (padded to 256):
  SentencePiece's own `encode` + `</s>` (what genmo's slow `T5Tokenizer(legacy=False)`
  produces), checked here against transformers' `T5Tokenizer.from_pretrained`;
* a tiny random T5 v1.1-style encoder (gated-gelu) in the HF layout, and its
  `last_hidden_state` for padded ids with an attention mask, plus the whole text path
  (transformers tokenizer → 256 padded ids + mask → encoder) for one prompt.

Run by `tools/make_fixtures.py` (or alone, from anywhere).
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import T5Config, T5EncoderModel, T5Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_tokenizer import convert  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "mochi-model" / "tests" / "fixtures" / "t5"
PROMPTS = [
    "A red fox runs through fresh snow at dawn.",
    "  Two   cats, one dog; 42 birds!  ",
    "Ünïcödé café – naïve ＦＵＬＬ width",
    "",
    "a\nb  c",
    "\ttab\tsep ",
    " leading space",
    "trailing space ",
    "x  \n  y",
    "emoji 🦊 fox",
    "a\u3000b",
    "▁fox",
    "fox.  Snow",
    "a\r\nb",
]
# A literal special token inside the text: SentencePiece spells it out, the HF tokenizers
# match it as one token and disagree among themselves on what follows; not compared.
CORPUS = """A red fox runs through fresh snow at dawn. The camera slowly pans across a
mountain lake. Two cats play with one dog in a sunny garden. A close-up of coffee being
poured into a white cup. Waves crash on a rocky shore under a stormy sky. A city street at
night with neon lights and rain. Birds fly over a golden wheat field at sunset.
"""


def build_tokenizer(tdir):
    corpus = OUT / "corpus.txt"
    corpus.write_text(CORPUS * 20)
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tdir / "spiece"), vocab_size=80,
        model_type="unigram", normalization_rule_name="nmt_nfkc", pad_id=0, eos_id=1,
        unk_id=2, bos_id=-1, character_coverage=1.0)
    corpus.unlink()
    (tdir / "spiece.vocab").unlink()
    convert(tdir, extra_ids=0)
    # Reference ids straight from SentencePiece (what the slow legacy=False T5 tokenizer
    # produces for plain text): pieces + </s>, truncated to 256, right-padded with 0.
    sp = spm.SentencePieceProcessor(model_file=str(tdir / "spiece.model"))
    with tempfile.TemporaryDirectory() as only_spiece:
        shutil.copy(tdir / "spiece.model", only_spiece)
        hf = T5Tokenizer.from_pretrained(only_spiece, legacy=False, extra_ids=0)
    expected = []
    for prompt in PROMPTS + [" ".join(["fox"] * 300)]:
        ids = sp.encode(prompt, out_type=int)[:255] + [1]
        mask = [1] * len(ids) + [0] * (256 - len(ids))
        padded = ids + [0] * (256 - len(ids))
        hf_enc = hf(prompt, padding="max_length", max_length=256, truncation=True)
        assert hf_enc["input_ids"] == padded, f"transformers disagrees with SentencePiece on {prompt!r}"
        assert hf_enc["attention_mask"] == mask
        expected.append({"prompt": prompt, "input_ids": padded, "attention_mask": mask})
    (OUT / "tokens.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")


def build_encoder():
    torch.manual_seed(3)
    config = T5Config(vocab_size=80, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                      relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
                      is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False)
    model = T5EncoderModel(config).eval()
    edir = OUT / "text_encoder"
    model.save_pretrained(str(edir), safe_serialization=True)
    ids = torch.tensor([[5, 17, 42, 8, 79, 1, 0, 0, 0, 0, 0, 0]])
    mask = (torch.arange(12) < 6).long()[None]
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    # The whole text path for one prompt, as diffusers' `_get_t5_prompt_embeds` runs it.
    with tempfile.TemporaryDirectory() as only_spiece:
        shutil.copy(OUT / "tokenizer" / "spiece.model", only_spiece)
        tok = T5Tokenizer.from_pretrained(only_spiece, legacy=False, extra_ids=0)
    enc = tok(PROMPTS[0], padding="max_length", max_length=256, truncation=True,
              return_tensors="pt")
    with torch.no_grad():
        prompt_hidden = model(input_ids=enc.input_ids,
                              attention_mask=enc.attention_mask).last_hidden_state
    from safetensors.torch import save_file
    save_file({"input_ids": ids.to(torch.int64), "attention_mask": mask.float(),
               "last_hidden_state": hidden.contiguous(),
               "prompt_input_ids": enc.input_ids.to(torch.int64),
               "prompt_attention_mask": enc.attention_mask.float(),
               "prompt_last_hidden_state": prompt_hidden.contiguous()},
              str(OUT / "encoder_case.safetensors"))


def main():
    tdir = OUT / "tokenizer"
    tdir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(tdir)
    build_encoder()
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
