"""The CLIP BPE of plain captions in Rust (Hugging Face `tokenizers`), giving open_clip's ids at a fifth of the cost.

A caption is *plain* when it is printable ASCII (tabs and newlines allowed) with no `&` and no special-token name.
For such text open_clip's cleaning is provably simple: ftfy and `html.unescape` change nothing (no entity, control
character, mojibake or non-ASCII letter), so cleaning is whitespace collapsing and lower-casing; and every regex
engine agrees on open_clip's word pattern over ASCII (`\\p{L}` = a-z, `\\p{N}` = 0-9, the same leftmost-first
alternation). The Rust BPE is built from open_clip's own vocabulary, merges and pattern. Any other caption goes
through open_clip's tokenizer unchanged (tests/test_tokenizer.py checks both against it).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

_NOT_PLAIN = re.compile(r"[^\t\n\x20-\x7e]|&|<start_of_text>|<end_of_text>", re.IGNORECASE)


def plain_clean(text: str) -> str | None:
    """open_clip's cleaned, lower-cased form of a plain `text`; None when the text is not plain."""
    if _NOT_PLAIN.search(text):
        return None
    return " ".join(text.split()).lower()


@lru_cache(maxsize=1)
def rust_bpe(simple: Any) -> Any:
    """A `tokenizers.Tokenizer` equal to open_clip's `simple` SimpleTokenizer on cleaned plain text (no special
    tokens added), or None when `tokenizers` is not installed (every caption then takes open_clip's path)."""
    try:
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    except ImportError:
        return None
    merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)
    tokenizer = Tokenizer(models.BPE(vocab=simple.encoder, merges=merges, end_of_word_suffix="</w>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(simple.pat.pattern), behavior="removed", invert=True),  # keep the matches
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),  # GPT-2's byte table, as open_clip
        ]
    )
    return tokenizer
