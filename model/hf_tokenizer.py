"""A Hugging Face `CLIPTokenizer` built from the BPE we tokenize with (open_clip's, shipped in its wheel).

Same vocabulary and merges, same ids: SOT 49406, EOT 49407 (kept last on truncation), padding with id 0
(the token "!", as open_clip pads). `split_special_tokens` keeps a literal "!" in a caption on its BPE id
(256) instead of matching the pad token. Texts differ only where open_clip's cleaning (ftfy, HTML
unescape) changes them, e.g. "&amp;".
"""

from __future__ import annotations

import json
from pathlib import Path

import transformers
from open_clip.tokenizer import SimpleTokenizer

from model.configs import TextConfig

# open_clip's names for the special tokens -> the names CLIP tokenizers on the Hugging Face hub use.
SPECIAL_NAMES = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
PAD_TOKEN = "!"  # id 0: what open_clip (and so our tokenizer) pads with
SPECIAL_TOKENS = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": PAD_TOKEN,
}


def bpe_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(token -> id, merges in rank order) of our tokenizer, special tokens under their hub names."""
    bpe = SimpleTokenizer()  # what data.tokenizer wraps: the default BPE file in the open_clip wheel
    vocab = {SPECIAL_NAMES.get(token, token): index for token, index in bpe.encoder.items()}
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.__getitem__)
    return vocab, merges


def build_hf_tokenizer(text: TextConfig) -> transformers.CLIPTokenizer:
    """A `CLIPTokenizer` giving our token ids; `model_max_length` is the model's context length."""
    vocab, merges = bpe_vocab()
    if len(vocab) != text.vocab_size:
        raise ValueError(f"the BPE has {len(vocab)} tokens but the text tower's vocab_size is {text.vocab_size}")
    return transformers.CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=text.context_length,
        split_special_tokens=True,
        **SPECIAL_TOKENS,
    )


def save_tokenizer_files(folder: str | Path) -> None:
    """vocab.json, merges.txt and special_tokens_map.json: the files BPE readers other than tokenizer.json need."""
    folder = Path(folder)
    vocab, merges = bpe_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2) + "\n")
