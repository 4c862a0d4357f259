"""Tokenizer: SOT/EOT placement, truncation keeps EOT last, zero padding, context 77."""

from __future__ import annotations

import time

import torch

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
