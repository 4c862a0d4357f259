"""CLIP BPE tokenizer (open_clip's SimpleTokenizer's ids; its vocab ships inside the wheel; data.fast_bpe's Rust BPE
for plain captions).

transformers' `CLIPTokenizer.from_pretrained` offline silently returns a broken tokenizer,
so it is never used here. open_clip's tokenizer module is loaded on its own: `import open_clip`
would also import its models and their dependencies (1.5 s more to start every training rank),
none of which tokenizing needs.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from functools import lru_cache
from types import ModuleType

import numpy as np
import torch

from data.fast_bpe import plain_clean, rust_bpe

CONTEXT_LENGTH = 77
SOT_TOKEN = 49406
EOT_TOKEN = 49407


CACHED_CAPTIONS = 65_536  # distinct captions whose ids a tokenizer keeps (about 40 MB at context 77)
# BPE is quadratic in a word's length (a 100,000-letter word took 55 s, 2,500 random letters 2.4 s), so text is
# bounded before it: runs of letters are cut to MAX_LETTERS (no real word is longer; the vocabulary's longest
# token has 32), then the text to context x CHARS_PER_TOKEN characters after whitespace is collapsed. A token
# spans at most 32 characters and one separator, so the tokens a context can hold are unchanged.
MAX_LETTERS = 64
CHARS_PER_TOKEN = 33
_LETTER_RUN = re.compile(rf"[^\W\d_]{{{MAX_LETTERS + 1},}}")


def bound_caption(text: str, context_length: int) -> str:
    """`text` cut to what a `context_length`-token context can use (see MAX_LETTERS), in linear time."""
    text = " ".join(text.split())[: context_length * CHARS_PER_TOKEN]
    return _LETTER_RUN.sub(lambda run: run.group(0)[:MAX_LETTERS], text)


class Tokenizer:
    """Texts -> int64 [N, context_length]: SOT, BPE ids, EOT (kept last on truncation), zero padding: open_clip's
    ids. Plain captions (data.fast_bpe) are encoded by a Rust BPE, the rest by open_clip's SimpleTokenizer.

    Pickles without the BPE tables (a loader worker started by spawn or forkserver loads its own). The
    ids of the first CACHED_CAPTIONS distinct captions are kept: a caption seen again (a template
    dataset, the next epoch of a small one) costs a lookup instead of cleaning and BPE.
    """

    def __init__(self, context_length: int = CONTEXT_LENGTH) -> None:
        self.context_length = context_length
        self._cache: dict[str, np.ndarray] = {}
        rust_bpe(_simple_tokenizer())  # parse the BPE merges now, not in the first batch

    @property
    def vocab_size(self) -> int:
        return _simple_tokenizer().vocab_size

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        found = {t: self._cache[t] for t in texts if t in self._cache}
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            new = dict(
                zip(missing, self._encode([bound_caption(t, self.context_length) for t in missing]), strict=True)
            )
            found |= new
            room = CACHED_CAPTIONS - len(self._cache)
            self._cache.update(list(new.items())[: max(room, 0)])
        if not texts:
            return torch.zeros(0, self.context_length, dtype=torch.long)
        return torch.from_numpy(np.stack([found[t] for t in texts]))

    def _encode(self, texts: list[str]) -> np.ndarray:
        """int64 [N, context_length] of bounded texts."""
        simple, out = _simple_tokenizer(), np.zeros((len(texts), self.context_length), dtype=np.int64)
        fast, cleaned = rust_bpe(simple), [plain_clean(t) for t in texts]
        plain = [i for i, c in enumerate(cleaned) if c is not None and fast is not None]
        encoded = fast.encode_batch_fast([cleaned[i] for i in plain]) if plain else []
        ids = dict(zip(plain, (e.ids for e in encoded), strict=True))
        keep = self.context_length - 2
        for i, text in enumerate(texts):
            row = ids[i] if i in ids else simple.encode(text)
            n = min(len(row), keep)
            out[i, 0], out[i, 1 : n + 1], out[i, n + 1] = SOT_TOKEN, row[:n], EOT_TOKEN
        return out


def _open_clip_tokenizer_module() -> ModuleType:
    """open_clip/tokenizer.py (which has no relative imports) without running open_clip/__init__.py."""
    loaded = sys.modules.get("open_clip.tokenizer")
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip_torch is not installed: run `make setup` (it provides the CLIP BPE vocabulary)")
    path = f"{spec.submodule_search_locations[0]}/tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("_open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=1)
def _simple_tokenizer():  # noqa: ANN202 - open_clip's SimpleTokenizer
    return _open_clip_tokenizer_module().SimpleTokenizer(context_length=CONTEXT_LENGTH)


def get_tokenizer(context_length: int = CONTEXT_LENGTH) -> Tokenizer:
    """The project's tokenizer; building it parses the BPE merges once per process."""
    return Tokenizer(context_length)
