"""Tokenizer: open_clip's ids (the Rust path of plain captions included), SOT/EOT placement, truncation keeps EOT
last, zero padding, context 77."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch

import data.tokenizer as tokenizer_module
from benchmarks.photo_shards import caption
from data.fast_bpe import plain_clean, rust_bpe
from data.tokenizer import CONTEXT_LENGTH, EOT_TOKEN, SOT_TOKEN, _simple_tokenizer, bound_caption, get_tokenizer


def test_sot_eot_and_padding() -> None:
    tokens = get_tokenizer()(["a photo of a cat", "dog"])
    assert tokens.shape == (2, CONTEXT_LENGTH)
    assert tokens.dtype.is_floating_point is False
    for row in tokens:
        assert row[0] == SOT_TOKEN
        eot = int((row == EOT_TOKEN).nonzero()[0])
        assert (row[eot + 1 :] == 0).all() and (row[1:eot] > 0).all()
        assert (row[1:eot] < SOT_TOKEN).all()
    assert int((tokens[0] == EOT_TOKEN).nonzero()[0]) == 6  # sot + 5 words (a, photo, of, a, cat) -> eot at 6


def test_truncation_keeps_eot_last() -> None:
    tokens = get_tokenizer()(["word " * 200])
    assert tokens[0, 0] == SOT_TOKEN
    assert tokens[0, -1] == EOT_TOKEN
    assert (tokens[0, 1:-1] != 0).all()


def test_eot_is_argmax_for_pooling() -> None:
    tokens = get_tokenizer()(["an ankle boot", "a black and white picture of a pullover"])
    assert (tokens.argmax(dim=-1) == (tokens == EOT_TOKEN).int().argmax(dim=-1)).all()


def test_repeated_captions_come_from_the_cache_with_the_same_ids() -> None:
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = get_tokenizer(16)
    texts = ["a photo of a bag", "A photo of a BAG!", "a photo of a bag", "", "long " * 40]
    reference = SimpleTokenizer()(texts, context_length=16)
    assert torch.equal(tokenizer(texts), reference)
    assert set(texts) <= set(tokenizer._cache)  # the second call is served from the cache ...
    assert torch.equal(tokenizer(texts), reference)  # ... with the same ids


def test_long_captions_are_bounded_before_bpe_and_keep_what_the_context_holds() -> None:
    tok = get_tokenizer()
    words = "a photo of the quick brown fox jumping over three lazy dogs near a river at sunset".split()
    long_text = "   ".join(words * 40)  # 680 words: far past 77 tokens, with whitespace runs to collapse
    exact = _simple_tokenizer()([long_text], context_length=77)
    assert torch.equal(tok([long_text]), exact)  # the tokens a context can hold are unchanged
    assert len(bound_caption(long_text, 77)) <= 77 * 33
    started = time.perf_counter()
    ids = tok(["x" * 100_000 + " cat"])  # one 100,000-letter word: 55 s of BPE before the bound
    assert time.perf_counter() - started < 2.0
    assert ids[0, 0] == SOT_TOKEN and (ids[0] == EOT_TOKEN).sum() == 1


PIECES = [
    "a",
    "photo",
    "of",
    "the",
    "dog's",
    "it'll",
    "we've",
    "I'm",
    "3",
    "2024",
    "x86-64",
    "...",
    "!!",
    "(c)",
    "--",
    "A&B",
    "&amp;",
    "&lt;b&gt;",
    "<start_of_text>",
    "<END_OF_TEXT>",
    "\t",
    "\n",
    "\r\n",
    "\x00",
    "\x1b[31m",
    "\x7f",
    "café",
    "naïve",
    "Ã©",
    "straße",
    "東京",
    "😀",
    "ﬁne",
    "“quoted”",
    "ｆｕｌｌ",
    "\u00a0",
    "Ωmega",
    "٣",
    "𝔘nicode",
    "don't",
    "'s",
    "''",
    "#hashtag",
    "@user",
    "http://x.org/a?b=1",
    "50%",
    "$9.99",
    "e-mail",
    "UPPER",
    "MiXeD",
]


def corpus() -> list[str]:
    """Web-like captions (the photo shards' generator), fuzzed ASCII and non-ASCII pieces, long and empty texts."""
    rng, np_rng = random.Random(0), np.random.default_rng(0)
    texts = [caption(np_rng, subject) for subject in ("dog", "mountain lake", "red bicycle") for _ in range(300)]
    texts += [" ".join(rng.choices(PIECES, k=rng.randint(1, 12))) for _ in range(1500)]
    texts += ["".join(chr(rng.randint(32, 126)) for _ in range(rng.randint(0, 60))) for _ in range(1500)]
    texts += ["", " ", "word " * 200, "x" * 300, "a" * 5 + "'s" * 40]
    return texts


def open_clips(texts: list[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """open_clip's ids of the texts as bounded (a letter run past 64 is cut: see test_long_captions...)."""
    return _simple_tokenizer()([bound_caption(t, context_length) for t in texts], context_length=context_length)


def test_ids_equal_open_clips_on_plain_and_other_captions() -> None:
    texts = corpus()
    expected = open_clips(texts)
    plain = sum(plain_clean(t) is not None for t in texts)
    assert rust_bpe(_simple_tokenizer()) is not None and 0.5 * len(texts) < plain < len(texts)  # both paths run
    assert torch.equal(get_tokenizer()(texts), expected)


def test_plain_cleaning_is_open_clips_cleaning() -> None:
    """The claim data.fast_bpe rests on: for plain text, ftfy + html.unescape + whitespace + lower is what
    plain_clean does; texts that are not plain are refused (and take open_clip's path)."""
    clean = _simple_tokenizer().clean_fn
    texts = corpus()
    for text in texts:
        cleaned = plain_clean(text)
        if cleaned is not None:
            assert cleaned == clean(text), text
    for refused in ("A&B", "café", "tab\rreturn", "<start_of_text>", "esc\x1b[0m", "nbsp\u00a0"):
        assert plain_clean(refused) is None


def test_without_tokenizers_every_caption_takes_open_clips_path(monkeypatch) -> None:
    texts = corpus()[:400]
    monkeypatch.setattr(tokenizer_module, "rust_bpe", lambda simple: None)
    assert torch.equal(get_tokenizer()(texts), open_clips(texts))


@pytest.mark.parametrize("context_length", [8, 77])
def test_the_rust_path_truncates_as_open_clip(context_length) -> None:
    texts = ["a photo of a " + "very " * n + "big dog" for n in range(0, 80, 7)]
    assert all(plain_clean(t) is not None for t in texts)
    assert torch.equal(get_tokenizer(context_length)(texts), open_clips(texts, context_length))
