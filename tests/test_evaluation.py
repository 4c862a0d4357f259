"""Evaluation on tiny synthetic sets with answers worked out by hand, plus 2-rank sharded == single-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from evaluation import (
    build_zeroshot_classifier,
    encode_retrieval_set,
    evaluate_retrieval,
    evaluate_zeroshot,
    flatten_results,
    format_table,
    get_classnames,
    get_templates,
    render,
    retrieval_metrics,
    write_json,
    zeroshot_accuracy,
)
from tests.ranks import run_on_ranks


class LookupModel(nn.Module):
    """Stands in for CLIP with chosen features: an "image" is its feature vector, a token picks a table row."""

    def __init__(self, text_table: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("text_table", text_table if text_table is not None else torch.zeros(1, 1))
        self.image_rows = 0

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        self.image_rows += images.shape[0]
        return F.normalize(images, dim=-1) if normalize else images

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.text_table[tokens[:, 0]]
        return F.normalize(features, dim=-1) if normalize else features


def batched(batch_size: int, **columns: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    n = next(iter(columns.values())).shape[0]
    return [{k: v[i : i + batch_size] for k, v in columns.items()} for i in range(0, n, batch_size)]


def query_with_rank(target: int, rank: int, n: int) -> torch.Tensor:
    """A query over n one-hot candidates whose `target` is beaten by exactly `rank` others."""
    query = torch.zeros(n)
    query[target] = 1.0
    others = [c for c in range(n) if c != target][:rank]
    query[others] = 2.0 + torch.arange(len(others), dtype=torch.float32)
    return query


# ---------------------------------------------------------------- zero-shot accuracy


def test_zeroshot_identical_features_give_100_percent() -> None:
    classifier = F.normalize(torch.randn(10, 16, generator=torch.Generator().manual_seed(0)), dim=-1)  # [C, d]
    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5])
    result = zeroshot_accuracy(LookupModel(), classifier.T, batched(4, images=classifier[labels], label=labels), "cpu")
    assert result == {"top1": 1.0, "top5": 1.0, "n": 11}


def test_zeroshot_permutation_known_value_and_top5_with_four_classes() -> None:
    # 4 orthonormal classes; the last 4 images show the class of a swapped pair. Their true class scores 0,
    # tied with two other classes and below one: rank 3, so top-1 = 4/8. With C = 4 < 5, top-5 is top-4 = 1.
    classes = torch.eye(4)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    shown = torch.tensor([0, 1, 2, 3, 1, 0, 3, 2])
    result = zeroshot_accuracy(LookupModel(), classes.T, batched(3, images=classes[shown], label=labels), "cpu")
    assert result == {"top1": 0.5, "top5": 1.0, "n": 8}


def test_zeroshot_top5_boundary() -> None:
    # Per-image rank of the true class among 12: top-1 counts rank 0 (2 of 8), top-5 ranks 0..4 (5 of 8).
    ranks, labels = [0, 0, 1, 4, 5, 6, 11, 3], [7, 2, 0, 11, 5, 3, 8, 1]
    images = torch.stack([query_with_rank(y, r, 12) for y, r in zip(labels, ranks, strict=True)])
    result = zeroshot_accuracy(
        LookupModel(), torch.eye(12), batched(5, images=images, label=torch.tensor(labels)), "cpu"
    )
    assert result == {"top1": 2 / 8, "top5": 5 / 8, "n": 8}


def test_zeroshot_collapsed_features_score_zero_and_nan_features_are_refused() -> None:
    classifier = F.normalize(torch.ones(8, 6), dim=0)  # every class the same vector: all scores tie
    labels = torch.arange(6)
    constant = zeroshot_accuracy(LookupModel(), classifier, batched(6, images=torch.ones(6, 8), label=labels), "cpu")
    assert constant["top1"] == constant["top5"] == 0.0
    images = torch.ones(6, 8)
    images[2, 0] = torch.nan  # one diverged row is enough: a diverged checkpoint must not report a score
    with pytest.raises(ValueError, match="NaN / inf features for 1 of 6 inputs"):
        zeroshot_accuracy(LookupModel(), classifier, batched(6, images=images, label=labels), "cpu")


def test_zeroshot_index_drops_duplicates_and_rejects_bad_labels() -> None:
    classes = torch.eye(3)
    # Sample 2 is wrong; the padded copy of sample 0 (index 0 again) must not count twice (3/4).
    batches = [
        {"images": classes[[0, 1]], "label": torch.tensor([0, 1]), "index": torch.tensor([0, 1])},
        {"images": classes[[2, 0]], "label": torch.tensor([0, 0]), "index": torch.tensor([2, 0])},
    ]
    assert zeroshot_accuracy(LookupModel(), classes.T, batches, "cpu") == {"top1": 2 / 3, "top5": 1.0, "n": 3}
    with pytest.raises(ValueError, match="labels"):
        zeroshot_accuracy(LookupModel(), classes.T, [{"images": classes, "label": torch.tensor([0, 1, 3])}], "cpu")


# ---------------------------------------------------------------- zero-shot classifier


def test_classifier_averages_normalised_prompt_embeddings() -> None:
    # Class "x": prompts embed to (3,4,0) and (0,0,2) -> normalised (.6,.8,0), (0,0,1) -> mean (.3,.4,.5)
    # -> renormalised (.3,.4,.5)/sqrt(.5). Class "y": (0,5,0) twice -> (0,1,0).
    prompts = {"a x": [3.0, 4.0, 0.0], "b x": [0.0, 0.0, 2.0], "a y": [0.0, 5.0, 0.0], "b y": [0.0, 5.0, 0.0]}
    ids = {text: i for i, text in enumerate(prompts)}
    model = LookupModel(torch.tensor(list(prompts.values())))

    def tokenizer(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[ids[t]] for t in texts])

    expected = torch.tensor([[0.3, 0.4, 0.5], [0.0, 1.0, 0.0]]) / torch.tensor([[0.5**0.5], [1.0]])
    for templates in (["a {}", "b {}"], [lambda c: f"a {c}", lambda c: f"b {c}"]):
        for batch_size in (1, 3, 256):
            weights = build_zeroshot_classifier(model, tokenizer, ["x", "y"], templates, "cpu", batch_size=batch_size)
            torch.testing.assert_close(weights, expected.T, atol=1e-6, rtol=0)


def test_classifier_on_tiny_model_matches_manual_recipe() -> None:
    from data.tokenizer import get_tokenizer
    from model import create_model

    torch.manual_seed(0)
    model, tokenizer = create_model("tiny"), get_tokenizer()
    classnames, templates = get_classnames("fashion-mnist"), get_templates("fashion-mnist")
    weights = build_zeroshot_classifier(model, tokenizer, classnames, templates, "cpu", batch_size=7)
    assert weights.shape == (64, 10)
    torch.testing.assert_close(weights.norm(dim=0), torch.ones(10), atol=1e-6, rtol=0)
    with torch.no_grad():
        prompts = model.encode_text(tokenizer([render(t, classnames[3]) for t in templates]), normalize=True)
    torch.testing.assert_close(weights[:, 3], F.normalize(prompts.mean(0), dim=0), atol=1e-5, rtol=0)


def test_eval_mode_is_restored_and_masking_off() -> None:
    from data.tokenizer import get_tokenizer
    from model import create_model

    torch.manual_seed(0)
    model = create_model("tiny")
    model.set_mask_ratio(0.75)
    model.train()
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batches = batched(3, images=images, label=torch.arange(6) % 2)
    runs = [evaluate_zeroshot(model, get_tokenizer(), ["cat", "dog"], ["a {}."], batches, "cpu") for _ in range(2)]
    assert runs[0] == runs[1]  # FLIP masking would make repeated evaluations differ
    assert model.training


def test_registry() -> None:
    assert len(get_classnames("imagenet")) == 1000 and get_classnames("imagenet")[0] == "tench"
    assert len(get_templates("imagenet")) == 80
    assert render(get_templates("imagenet")[0], "dog") == "a bad photo of a dog."
    assert get_classnames("Fashion_MNIST")[9] == "ankle boot"
    assert all("{}" in t for t in get_templates("fashion-mnist") + get_templates("generic"))
    with pytest.raises(KeyError, match="known"):
        get_classnames("cifar-10")
    with pytest.raises(ValueError, match="placeholder"):
        render("a photo", "dog")


# ---------------------------------------------------------------- retrieval


def test_retrieval_identical_features_give_100_percent() -> None:
    features = F.normalize(torch.randn(6, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    result = retrieval_metrics(features, features, torch.arange(6))
    assert all(result[f"{way}_R@{k}"] == 1.0 for way in ("image_to_text", "text_to_image") for k in (1, 5, 10))
    assert (result["n_images"], result["n_texts"]) == (6, 6)


def test_retrieval_permutation_known_value() -> None:
    # Captions 2 and 3 are swapped: each scores 0 on its own image, tied with two and below one -> rank 3.
    images = torch.eye(4)
    result = retrieval_metrics(images, images[[0, 1, 3, 2]], torch.arange(4), ks=(1, 3, 4))
    assert result["image_to_text_R@1"] == result["text_to_image_R@1"] == 0.5
    assert result["image_to_text_R@3"] == result["text_to_image_R@3"] == 0.5
    assert result["image_to_text_R@4"] == result["text_to_image_R@4"] == 1.0


def test_retrieval_recall_at_5_and_10_boundaries() -> None:
    ranks, targets = [0, 4, 5, 9, 10, 11, 1, 3, 6, 8, 2, 7], list(range(12))
    queries = torch.stack([query_with_rank(t, r, 12) for t, r in zip(targets, ranks, strict=True)])
    # ranks < 1: 1 of 12; < 5: {0,4,1,3,2} 5 of 12; < 10: all but {10, 11}, 10 of 12.
    text_side = retrieval_metrics(torch.eye(12), F.normalize(queries, dim=-1), torch.tensor(targets))
    assert [text_side[f"text_to_image_R@{k}"] for k in (1, 5, 10)] == [1 / 12, 5 / 12, 10 / 12]
    image_side = retrieval_metrics(F.normalize(queries, dim=-1), torch.eye(12), torch.tensor(targets))
    assert [image_side[f"image_to_text_R@{k}"] for k in (1, 5, 10)] == [1 / 12, 5 / 12, 10 / 12]


def test_retrieval_several_captions_per_image() -> None:
    e = torch.eye(3)
    # captions: c0 = e2 -> img0 (wrong), c1 = e0 -> img0, c2 = e1 -> img1, c3 = e1 -> img2 (wrong), c4 = e2 -> img2
    texts, owner = e[[2, 0, 1, 1, 2]], torch.tensor([0, 0, 1, 2, 2])
    result = retrieval_metrics(e, texts, owner, chunk_size=2)
    # image->text: img0 hits through its second caption; img1's caption ties with c3 (img2's); img2's best
    # caption c4 ties with c0 (img0's): 1 of 3. text->image: c1, c2, c4 rank 0; c0, c3 rank 2: 3 of 5.
    assert result["image_to_text_R@1"] == 1 / 3
    assert result["text_to_image_R@1"] == 3 / 5
    assert result["image_to_text_R@5"] == result["text_to_image_R@5"] == 1.0
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_metrics(e, texts[:2], owner[:2])


def test_encode_retrieval_set_dedupes_images_and_orders_by_index() -> None:
    image_of = {10: torch.tensor([1.0, 0, 0]), 20: torch.tensor([0, 1.0, 0]), 30: torch.tensor([0, 0, 1.0])}
    text_table = torch.tensor([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0], [0, 0.6, 0.8]])
    # caption index -> (image id, token row); two batches, unordered, image 30 in both.
    captions = {3: (30, 0), 0: (10, 1), 2: (30, 3), 1: (20, 2)}
    batches = []
    for keys in ([3, 0, 2], [1, 2]):  # caption 2 appears twice, as a padded duplicate would
        ids = torch.tensor([captions[k][0] for k in keys])
        batches.append(
            {
                "images": torch.stack([image_of[int(i)] for i in ids]),
                "image_id": ids,
                "tokens": torch.tensor([[captions[k][1]] for k in keys]),
                "index": torch.tensor(keys),
            }
        )
    model = LookupModel(text_table)
    features = encode_retrieval_set(model, batches, "cpu")
    assert model.image_rows == 2 + 2  # batch 1 holds images {30, 10}, batch 2 {20, 30}: one forward row each
    assert features.image_ids.tolist() == [10, 20, 30]
    assert features.text_to_image.tolist() == [0, 1, 2, 2]
    torch.testing.assert_close(features.text_features, text_table[[1, 2, 3, 0]])
    result = evaluate_retrieval(LookupModel(text_table), batches, "cpu")
    assert result == retrieval_metrics(features.image_features, features.text_features, features.text_to_image)
    assert result["n_texts"] == 4 and result["image_to_text_R@1"] == 1.0


# ---------------------------------------------------------------- report


def test_report_table_and_json(tmp_path: Path) -> None:
    results = {"fashion-mnist": {"top1": 0.8612, "top5": 0.99, "n": 10000}, "coco": {"text_to_image_R@1": 0.25}}
    table = format_table(results)
    assert "86.12%" in table and "10000" in table and "text_to_image_R@1" in table
    assert flatten_results(results)["fashion-mnist/top1"] == 0.8612
    path = write_json(results, tmp_path / "out" / "eval.json")
    assert json.loads(path.read_text()) == results
    with pytest.raises(TypeError):
        flatten_results({"bad": "text"})


# ---------------------------------------------------------------- 2 gloo ranks == one process


def _sharded_worker(rank: int, world_size: int) -> dict:
    """This rank's sharded results, and on rank 0 also the rank-0-only (single-process) results."""
    from data.tokenizer import get_tokenizer
    from model import create_model

    torch.manual_seed(0)
    model, tokenizer = create_model("tiny"), get_tokenizer()
    gen = torch.Generator().manual_seed(1)
    classnames, templates = get_classnames("fashion-mnist"), get_templates("fashion-mnist")
    images, labels = torch.randn(10, 3, 32, 32, generator=gen), torch.randint(0, 10, (10,), generator=gen)
    # Retrieval: 6 images with 2 captions each, one row per caption.
    caption_image = torch.arange(12) // 2
    tokens = tokenizer([f"a photo of thing {i // 2} in style {i % 2}" for i in range(12)])
    retrieval_images = torch.randn(6, 3, 32, 32, generator=gen)[caption_image]

    def zeroshot_batches(order: list[int]) -> list[dict[str, torch.Tensor]]:
        return batched(4, images=images[order], label=labels[order], index=torch.tensor(order))

    def retrieval_batches(rows: slice) -> list[dict[str, torch.Tensor]]:
        return batched(3, images=retrieval_images[rows], tokens=tokens[rows], image_id=caption_image[rows])

    # DistributedSampler-style padding (index 0 and 1 twice) for zero-shot; uneven, disjoint caption
    # blocks without an index for retrieval (image 3's captions straddle the ranks).
    padded = list(range(10)) + [0, 1]
    part = slice(0, 7) if rank == 0 else slice(7, 12)
    sharded = {
        "classifier": build_zeroshot_classifier(model, tokenizer, classnames, templates, "cpu", batch_size=5),
        "one_class": build_zeroshot_classifier(model, tokenizer, ["bag"], templates, "cpu"),
        "zeroshot": evaluate_zeroshot(
            model, tokenizer, classnames, templates, zeroshot_batches(padded[rank::2]), "cpu"
        ),
        "retrieval": evaluate_retrieval(model, retrieval_batches(part), "cpu"),
        "features": encode_retrieval_set(model, retrieval_batches(part), "cpu"),
    }
    result = {"sharded": sharded}
    if rank == 0:  # rank-0-only evaluation inside the same process group: no collectives
        result["single"] = {
            "classifier": build_zeroshot_classifier(model, tokenizer, classnames, templates, "cpu", distributed=False),
            "one_class": build_zeroshot_classifier(model, tokenizer, ["bag"], templates, "cpu", distributed=False),
            "zeroshot": evaluate_zeroshot(
                model, tokenizer, classnames, templates, zeroshot_batches(list(range(10))), "cpu", distributed=False
            ),
            "retrieval": evaluate_retrieval(model, retrieval_batches(slice(0, 12)), "cpu", distributed=False),
            "features": encode_retrieval_set(model, retrieval_batches(slice(0, 12)), "cpu", distributed=False),
        }
    # A data-parallel group of its own (as under model parallelism): rank 0 evaluates sharded over it
    # while rank 1 issues nothing; a collective on the default group would wait for rank 1 and time out.
    own, _ = dist.new_subgroups(group_size=1)
    if rank == 0:
        result["own_group"] = {
            "zeroshot": evaluate_zeroshot(
                model,
                tokenizer,
                classnames,
                templates,
                zeroshot_batches(list(range(10))),
                "cpu",
                distributed=True,
                group=own,
            ),
            "retrieval": evaluate_retrieval(model, retrieval_batches(slice(0, 12)), "cpu", distributed=True, group=own),
        }
    return result


@pytest.mark.slow
def test_sharded_evaluation_on_two_gloo_ranks_equals_single_process() -> None:
    ranks = run_on_ranks(_sharded_worker, 2, init_group=True)
    single = ranks[0]["single"]
    assert single["zeroshot"]["n"] == 10 and single["retrieval"]["n_texts"] == 12
    assert ranks[0]["own_group"] == {"zeroshot": single["zeroshot"], "retrieval": single["retrieval"]}
    for rank in range(2):
        sharded = ranks[rank]["sharded"]
        assert sharded["zeroshot"] == single["zeroshot"]
        assert sharded["retrieval"] == single["retrieval"]
        # Same per-row computations in float32; 1e-6 allows for different batch compositions.
        torch.testing.assert_close(sharded["classifier"], single["classifier"], atol=1e-6, rtol=0)
        torch.testing.assert_close(sharded["one_class"], single["one_class"], atol=1e-6, rtol=0)
        for name in ("image_features", "text_features"):
            torch.testing.assert_close(
                getattr(sharded["features"], name), getattr(single["features"], name), atol=1e-6, rtol=0
            )
        assert torch.equal(sharded["features"].text_to_image, single["features"].text_to_image)
        assert torch.equal(sharded["features"].image_ids, single["features"].image_ids)
