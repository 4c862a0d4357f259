"""Tokenizer: SOT/EOT placement, truncation keeps EOT last, zero padding, context 77."""

from __future__ import annotations

import torch

from data.tokenizer import CONTEXT_LENGTH, EOT_TOKEN, SOT_TOKEN, get_tokenizer


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
