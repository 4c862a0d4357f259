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


CACHED_CAPTIONS = 65_536  # distinct captions whose ids a tokenizer keeps (about 40 MB at context 77)


class Tokenizer:
    """Texts -> int64 [N, context_length]: SOT, BPE ids, EOT (kept last on truncation), zero padding.

    The ids of the first CACHED_CAPTIONS distinct captions are kept: a caption seen again (a template
    dataset, the next epoch of a small one) costs a lookup instead of ftfy + regex + BPE, which is most of
    a loader worker's time on small images.
    """

    def __init__(self, context_length: int = CONTEXT_LENGTH) -> None:
        self.context_length = context_length
        self._bpe = _simple_tokenizer()
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def vocab_size(self) -> int:
        return self._bpe.vocab_size

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        found = {t: self._cache[t] for t in texts if t in self._cache}
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            new = dict(zip(missing, self._bpe(missing, context_length=self.context_length), strict=True))
            found |= new
            room = CACHED_CAPTIONS - len(self._cache)
            self._cache.update(list(new.items())[: max(room, 0)])
        if not texts:
            return torch.zeros(0, self.context_length, dtype=torch.long)
        return torch.stack([found[t] for t in texts])


@lru_cache(maxsize=1)
def _simple_tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer(context_length=CONTEXT_LENGTH)


def get_tokenizer(context_length: int = CONTEXT_LENGTH) -> Tokenizer:
    """The project's tokenizer; building it parses the BPE merges once per process."""
    return Tokenizer(context_length)
