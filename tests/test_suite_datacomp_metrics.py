"""DataComp's metadata-grouped metrics (iWildCam, FMoW, Dollar Street, GeoDE) and WinoGAViL: each number equals a
brute-force count written here, and `--suite datacomp` scores the five from data in DataComp's download layout
(tests/datacomp_fixtures.py) with a tiny model."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clip_benchmark.metrics import zeroshot_classification

from data.tokenizer import get_tokenizer
from data.transforms import eval_transform
from evaluation.grouped_metrics import GROUPINGS
from evaluation.hf_arrow import ArrowSplit, arrow_files
from evaluation.models import Evaluable
from evaluation.suite import Suite, Task, datacomp_suite
from evaluation.suite_runner import format_suite, run_suite
from evaluation.winogavil import COLUMNS, Instance, read_instances, scores, summarize
from model import create_model
from tests.datacomp_fixtures import (
    DIGIT_NAMES,
    digits,
    grouped_sets,
    grouped_wds,
    retrieval_cache,
    winogavil_cache,
    winogavil_instances,
)

CPU = torch.device("cpu")
GROUPED_TASKS = ("wilds/iwildcam", "wilds/fmow", "fairness/dollar_street", "fairness/geode")


def _by_group(hits: list[bool], groups: np.ndarray) -> dict[int, float]:
    """Mean of `hits` per group value, counted one sample at a time."""
    total: dict[int, int] = defaultdict(int)
    right: dict[int, int] = defaultdict(int)
    for hit, g in zip(hits, groups.tolist(), strict=True):
        total[g] += 1
        right[g] += int(hit)
    return {g: right[g] / total[g] for g in total}


def _ranked(row: list[float]) -> list[int]:
    return sorted(range(len(row)), key=lambda c: -row[c])


def _macro(pred: list[int], truth: list[int]) -> tuple[float, float]:
    """Macro recall and F1 over the classes present in `truth` (an unpredicted class scores 0)."""
    recalls, f1s = [], []
    for c in sorted(set(truth)):
        tp = sum(p == c and t == c for p, t in zip(pred, truth, strict=True))
        fp = sum(p == c and t != c for p, t in zip(pred, truth, strict=True))
        fn = sum(p != c and t == c for p, t in zip(pred, truth, strict=True))
        recalls.append(tp / (tp + fn))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(recalls) / len(recalls), sum(f1s) / len(f1s)


def brute_force(task: str, logits: torch.Tensor, target: np.ndarray, metadata: np.ndarray) -> dict[str, float]:
    """The main metric (and its siblings) of a grouped task from per-sample logits, one sample at a time."""
    rows, truth = logits.tolist(), target.tolist()
    top1 = [_ranked(r)[0] for r in rows]
    hit1 = [p == t for p, t in zip(top1, truth, strict=True)]
    if task == "wilds/iwildcam":
        recall, f1 = _macro(top1, truth)
        return {"acc_avg": sum(hit1) / len(hit1), "recall-macro_all": recall, "F1-macro_all": f1}
    if task == "wilds/fmow":
        return {
            "acc_avg": sum(hit1) / len(hit1),
            "acc_worst_region": min(_by_group(hit1, metadata[:, 0]).values()),
            "acc_worst_year": min(_by_group(hit1, metadata[:, 1]).values()),
        }
    if task == "fairness/dollar_street":
        hit5 = [t in _ranked(r)[:5] for r, t in zip(rows, truth, strict=True)]
        return {"acc_top5_avg": sum(hit5) / len(hit5), "acc_top5_wg": min(_by_group(hit5, metadata[:, 0]).values())}
    groups = _by_group(hit1, metadata[:, 0])
    return {"acc_avg": sum(hit1) / len(hit1), "acc_wg": min(groups.values())} | {
        f"acc_region:{g}": v for g, v in groups.items()
    }


@pytest.mark.parametrize("task", GROUPED_TASKS)
def test_grouped_metrics_equal_a_brute_force_count(task: str) -> None:
    """Random logits (no ties), labels and metadata; the FMoW years start above 0, so some groups are empty."""
    rng = np.random.default_rng(1)
    n, classes = 300, 9
    logits = torch.from_numpy(rng.normal(size=(n, classes)))
    target = rng.integers(0, classes, n)
    fields = len(GROUPINGS[task.split("/")[1]].fields)
    metadata = rng.integers(0, 4, (n, max(fields, 1))) + (np.array([0, 3, 0]) if task == "wilds/fmow" else 0)
    got = GROUPINGS[task.split("/")[1]].compute(logits, torch.from_numpy(target), metadata)
    want = brute_force(task, logits, target, metadata)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    if task == "wilds/fmow":  # groups without samples are not reported (and cannot be the worst)
        assert "acc_year:0" not in got and got["count_year:3"] == int((metadata[:, 1] == 3).sum())
    if task == "fairness/dollar_street":
        assert got["acc_top5_avg"] > got["acc_top5_wg"] > 0


def _wino_brute_force(instances: list[Instance], image_features: torch.Tensor, text_features: torch.Tensor) -> list:
    out, start = [], 0
    for i, inst in enumerate(instances):
        n = len(inst.candidates)
        sims = [float(text_features[i] @ image_features[start + j]) for j in range(n)]
        start += n
        k = len(inst.associations)
        picked = {inst.candidates[j] for j in _ranked(sims)[:k]}
        truth = set(inst.associations)
        out.append(len(picked & truth) / len(picked | truth))
    return out


def test_winogavil_jaccard_equals_a_brute_force_count() -> None:
    rng = np.random.default_rng(2)
    instances, sizes = [], [5, 6, 10, 12, 10, 6, 12, 5]
    for n in sizes:
        names = [f"c{j}" for j in range(n)]
        instances.append(Instance("cue", names, list(rng.choice(names, rng.integers(1, 4), replace=False))))
    image_features = F.normalize(torch.from_numpy(rng.normal(size=(sum(sizes), 16))), dim=-1)
    text_features = F.normalize(torch.from_numpy(rng.normal(size=(len(sizes), 16))), dim=-1)
    per_instance = scores(instances, image_features, text_features)
    want = _wino_brute_force(instances, image_features, text_features)
    assert per_instance.tolist() == pytest.approx(want, abs=1e-12)
    assert max(want) > 0  # not all zero: the brute force sees real overlaps
    got = summarize(per_instance, np.asarray(sizes))
    big = [s for s, n in zip(want, sizes, strict=True) if n >= 10]
    assert got["jaccard_score_10-12"] == pytest.approx(sum(big) / len(big), abs=1e-12)
    assert got["avg_jaccard_score"] == pytest.approx(sum(want) / len(want), abs=1e-12)
    assert summarize(per_instance[:2], np.asarray(sizes[:2]))["jaccard_score_10-12"] is None  # none with 10-12


def _evaluable() -> Evaluable:
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    return Evaluable(
        model,
        get_tokenizer(model.config.text.context_length),
        eval_transform(model.config.vision.image_size),
        "tiny".ljust(64, "0"),
        "tiny",
    )


@torch.no_grad()
def _wino_by_hand(evaluable: Evaluable, path: Path) -> list[float]:
    """DataComp's loop: one instance at a time, "A <cue>" / "An <cue>", the k most similar candidates."""
    out = []
    for inst, raw in zip(winogavil_instances(), read_instances(ArrowSplit(path.parent, COLUMNS)), strict=True):
        assert raw.candidates == inst.candidates  # the reader yields the file's rows in order
        cue = inst.cue.lower()
        text = ("An " if cue[0] in "aeiou" else "A ") + cue
        t = F.normalize(evaluable.model.encode_text(evaluable.tokenizer([text])), dim=-1)[0]
        images = torch.stack([evaluable.transform(im.convert("RGB")) for im in inst.images])
        v = F.normalize(evaluable.model.encode_image(images), dim=-1)
        picked = {inst.candidates[j] for j in _ranked((v @ t).tolist())[: len(inst.associations)]}
        out.append(len(picked & set(inst.associations)) / len(picked | set(inst.associations)))
    return out


def test_datacomp_suite_scores_the_six_from_local_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sets = grouped_sets(tmp_path)
    arrow = winogavil_cache(tmp_path, winogavil_instances())
    retrieval_cache(tmp_path, "flickr_1k_test_image_text_retrieval", *_digit_captions(16))
    seen = []  # the logits clip_benchmark's pass returns, per zero-shot task in suite order
    run = zeroshot_classification.run_classification
    monkeypatch.setattr(
        zeroshot_classification, "run_classification", lambda *a, **k: seen.append(run(*a, **k)) or seen[-1]
    )
    evaluable = _evaluable()
    results = run_suite(datacomp_suite(), str(tmp_path), evaluable, CPU, None, batch_size=32)
    by_task = {r["task"]: r for r in results["tasks"]}
    ran = (*GROUPED_TASKS, "misc/winogavil", "retrieval/flickr_1k_test_image_text_retrieval")
    assert {t for t, r in by_task.items() if r["status"] == "ok"} == set(ran)
    summary = results["summary"]
    assert summary["tasks_averaged"] == 6 and len(summary["missing"]) == 32 and summary["tasks_in_suite"] == 38
    assert summary["average"] == pytest.approx(np.mean([by_task[t]["main"] for t in ran]))
    assert "over 6 of 38 tasks; missing data: 32" in format_suite(results)
    assert by_task[ran[-1]]["metrics"]["n_texts"] == 32

    for task, (logits, target) in zip(GROUPED_TASKS, seen, strict=True):
        assert target.tolist() == sets[task].labels.tolist()  # the fixture's order: metadata rows line up
        want = brute_force(task, logits, sets[task].labels, sets[task].metadata)
        for key, value in want.items():
            assert by_task[task]["metrics"][key] == pytest.approx(value, abs=1e-12), (task, key)
        assert by_task[task]["main"] == by_task[task]["metrics"][by_task[task]["main_metric"]]
    assert "acc_region:1" not in by_task["fairness/geode"]["metrics"]  # GeoDE's empty regions 1 and 4

    wino = by_task["misc/winogavil"]
    assert wino["layout"] == "hf-arrow" and wino["metrics"]["n"] == 10
    by_hand = _wino_by_hand(evaluable, arrow)
    sizes = [len(inst.candidates) for inst in winogavil_instances()]
    big = [s for s, n in zip(by_hand, sizes, strict=True) if n >= 10]
    assert wino["main"] == pytest.approx(sum(big) / len(big), abs=1e-6)
    assert wino["metrics"]["avg_jaccard_score"] == pytest.approx(np.mean(by_hand), abs=1e-6)


@pytest.mark.slow  # two loader worker processes
def test_metadata_lines_up_with_images_over_workers_and_shards(tmp_path: Path) -> None:
    """Three shards read by two loader workers: the metadata pass follows the images' interleaved order."""
    sets = grouped_sets(tmp_path)
    suite = Suite(
        "geode", [Task("fairness/geode", "zeroshot", "wds_geode_test", main_metric="acc_wg", grouped="geode")]
    )
    evaluable = _evaluable()
    one = run_suite(suite, str(tmp_path), evaluable, CPU, None, batch_size=8)["tasks"][0]
    two = run_suite(suite, str(tmp_path), evaluable, CPU, None, batch_size=8, workers=2)["tasks"][0]
    assert sets["fairness/geode"].path.name == "wds_geode_test"
    assert one["status"] == two["status"] == "ok"
    assert two["metrics"] == one["metrics"]


def test_a_bad_metadata_file_is_named(tmp_path: Path) -> None:
    images, labels = digits(12, 3)
    grouped_wds(tmp_path / "wds_geode_test", images, labels, np.zeros((12, 3), dtype=np.int64))  # 3 fields, not 2
    suite = Suite("geode", [Task("geode", "zeroshot", "wds_geode_test", main_metric="acc_wg", grouped="geode")])
    with pytest.raises(ValueError, match=r"wds_geode_test/test: each <key>.npy must hold the 2 fields"):
        run_suite(suite, str(tmp_path), _evaluable(), CPU, None, batch_size=8)
    with pytest.raises(ValueError, match="grouped 'nope' needs kind zeroshot"):
        Task("x", "zeroshot", "p", grouped="nope")


def test_winogavil_cached_twice_is_refused_and_absent_is_missing(tmp_path: Path) -> None:
    suite = Suite("w", [Task("misc/winogavil", "winogavil", "hf_cache/nlphuji___winogavil")])
    record = run_suite(suite, str(tmp_path), _evaluable(), CPU, None, batch_size=8)["tasks"][0]
    assert record["status"] == "missing" and "<name>-test*.arrow" in record["reason"]
    first = winogavil_cache(tmp_path, winogavil_instances()[:2])
    second = first.parent.parent / "89ef" / first.name
    second.parent.mkdir()
    second.write_bytes(first.read_bytes())
    assert len(arrow_files(tmp_path / "hf_cache" / "nlphuji___winogavil")) == 2
    with pytest.raises(ValueError, match="must be cached in one folder, found 2"):
        run_suite(suite, str(tmp_path), _evaluable(), CPU, None, batch_size=8)


def _digit_captions(n: int) -> tuple[list, list[list[str]]]:
    images, labels = digits(n, 10)
    return images, [[f"a drawing of the digit {DIGIT_NAMES[y]}", f"the number {y}"] for y in labels.tolist()]


def test_retrieval_from_the_hugging_face_cache_equals_the_csv(tmp_path: Path) -> None:
    """DataComp's Flickr layout (hf_cache Arrow, a caption list per image) gives the csv's numbers on the same data."""
    images, captions = _digit_captions(24)
    retrieval_cache(tmp_path, "flickr_1k_test_image_text_retrieval", images, captions)
    (tmp_path / "png").mkdir()
    lines = ["filepath,title,image_id"]
    for i, (image, caps) in enumerate(zip(images, captions, strict=True)):
        image.save(tmp_path / "png" / f"{i}.png")
        lines += [f"png/{i}.png,{c},{i}" for c in caps]
    (tmp_path / "captions.csv").write_text("\n".join(lines) + "\n")
    flickr = next(t for t in datacomp_suite().tasks if t.name == "retrieval/flickr_1k_test_image_text_retrieval")
    suite = Suite("two", [flickr, Task("csv", "retrieval", "captions.csv")])
    arrow, csv = run_suite(suite, str(tmp_path), _evaluable(), CPU, None, batch_size=8)["tasks"]
    assert (arrow["layout"], csv["layout"]) == ("hf-arrow", "csv")
    assert arrow["metrics"] == csv["metrics"] and arrow["metrics"]["n_texts"] == 48
