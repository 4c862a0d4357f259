"""CLIP BPE tokenizer (open_clip's SimpleTokenizer; its vocab ships inside the wheel).

transformers' `CLIPTokenizer.from_pretrained` offline silently returns a broken tokenizer,
so it is never used here.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from open_clip.tokenizer import SimpleTokenizer

CONTEXT_LENGTH = 77
SOT_TOKEN = 49406
EOT_TOKEN = 49407


class Tokenizer:
    """Texts -> int64 [N, context_length]: SOT, BPE ids, EOT (kept last on truncation), zero padding."""

    def __init__(self, context_length: int = CONTEXT_LENGTH) -> None:
        self.context_length = context_length
        self._bpe = _simple_tokenizer()

    @property
    def vocab_size(self) -> int:
        return self._bpe.vocab_size

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        return self._bpe(texts, context_length=self.context_length)


@lru_cache(maxsize=1)
def _simple_tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer(context_length=CONTEXT_LENGTH)


def get_tokenizer(context_length: int = CONTEXT_LENGTH) -> Tokenizer:
    """The project's tokenizer; building it parses the BPE merges once per process."""
    return Tokenizer(context_length)
