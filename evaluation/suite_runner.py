"""Run a suite on one model: each task once (or from the cache), the table, and the averages as DataComp takes them.

DataComp's average is the mean of each task's main metric over the tasks that have one. Here a task whose data
is missing is listed as such and left out of the average; the average says over how many of the suite's tasks it
ran.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import torch

from evaluation.benchmark import CLIP_BENCHMARK_VERSION, resolve_prompts, run_task
from evaluation.cache import ResultCache, cache_key
from evaluation.models import Evaluable
from evaluation.suite import Suite, Task, fingerprint, layout, resolve

logger = logging.getLogger(__name__)


def _task_definition(task: Task, path: Any, found: str, prompts: dict | None, amp: bool) -> dict[str, Any]:
    return {
        "task": task.definition(),
        "path": str(path),
        "layout": found,
        "data": fingerprint(path),
        "prompts": prompts,
        "amp": amp,
        "clip_benchmark": CLIP_BENCHMARK_VERSION,
    }


def evaluate_task(
    task: Task,
    data_root: str,
    evaluable: Evaluable,
    device: torch.device,
    cache: ResultCache | None,
    batch_size: int = 256,
    workers: int = 0,
    amp: bool = False,
) -> dict[str, Any]:
    """One task's record: status ok / missing, metrics, main metric, the prompts used."""
    path = resolve(task, data_root)
    record: dict[str, Any] = {
        "task": task.name,
        "title": task.title,
        "kind": task.kind,
        "path": str(path),
        "main_metric": task.main_metric,
    }
    found = layout(path, task.kind)
    if found is None:
        hf = "a Hugging Face cache's <name>-test*.arrow"
        expected = (
            hf
            if task.kind == "winogavil"
            else (
                "clip_benchmark webdataset layout, class folders, a csv"
                + (f" or {hf}" if task.kind == "retrieval" else "")
            )
        )
        return record | {"status": "missing", "reason": f"no data at {path} ({expected})"}
    prompts = resolve_prompts(task, path, found, _folder_classes(path, found)) if task.kind == "zeroshot" else None
    described = prompts.describe() if prompts else None
    per_class = prompts.per_class() if prompts else None
    key = cache_key(evaluable.identity, _task_definition(task, path, found, per_class, amp))
    if cache is not None and (hit := cache.get(evaluable.identity, task.name, key)) is not None:
        logger.info("%s: cached result", task.name)
        return hit | {"cached": True}
    started = time.perf_counter()
    metrics = run_task(
        task,
        path,
        found,
        evaluable.model,
        evaluable.tokenizer,
        evaluable.transform,
        device,
        batch_size,
        workers,
        amp,
        prompts,
    )
    if task.main_metric not in metrics:
        raise ValueError(f"task {task.name}: main metric {task.main_metric!r} is not among {sorted(metrics)}")
    result = record | {
        "status": "ok",
        "layout": found,
        "main": metrics[task.main_metric],
        "metrics": metrics,
        "prompts": described,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if cache is not None:
        cache.put(evaluable.identity, task.name, key, result)
    return result | {"cached": False}


def _folder_classes(path: Any, found: str) -> list[str] | None:
    if found != "imagefolder":
        return None
    return sorted(p.name for p in path.iterdir() if p.is_dir())


def summarize(suite: Suite, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The average of main metrics over the tasks that ran, and which ones did not."""
    ran = [r for r in records if r["status"] == "ok" and r["main"] is not None]
    return {
        "suite": suite.name,
        "average": statistics.fmean(r["main"] for r in ran) if ran else None,
        "tasks_averaged": len(ran),
        "tasks_in_suite": suite.expected or len(suite.tasks),
        "missing": [r["task"] for r in records if r["status"] == "missing"],
    }


def run_suite(
    suite: Suite,
    data_root: str,
    evaluable: Evaluable,
    device: torch.device,
    cache: ResultCache | None = None,
    batch_size: int = 256,
    workers: int = 0,
    amp: bool = False,
) -> dict[str, Any]:
    """Every task of `suite` in order; {"model", "step", "tasks": [records], "summary"}."""
    evaluable.model.to(device).eval()
    records = []
    for task in suite.tasks:
        records.append(evaluate_task(task, data_root, evaluable, device, cache, batch_size, workers, amp))
        logger.info("%s: %s", task.name, _short(records[-1]))
    return {
        "model": evaluable.description,
        "step": evaluable.step,
        "tasks": records,
        "summary": summarize(suite, records),
    }


def _short(record: dict[str, Any]) -> str:
    if record["status"] != "ok":
        return record["status"]
    return f"{record['main_metric']} {record['main']:.4f}"


def format_suite(results: dict[str, Any]) -> str:
    """The table on stdout: one row per task, then the prompts each zero-shot task used, then the average."""
    rows = [("task", "kind", "metric", "value", "n", "status")]
    for r in results["tasks"]:
        value = "" if r["status"] != "ok" or r["main"] is None else f"{100 * r['main']:.2f}"
        n = r.get("metrics", {}).get("n", r.get("metrics", {}).get("n_images", ""))
        status = r["status"] + (" (cached)" if r.get("cached") else "")
        rows.append((r["title"], r["kind"], r["main_metric"], value, str(n), status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            f"{c:<{w}}" if i not in (3, 4) else f"{c:>{w}}" for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    s = results["summary"]
    average = "n/a" if s["average"] is None else f"{100 * s['average']:.2f}"
    lines.append(
        f"average of main metrics: {average} over {s['tasks_averaged']} of {s['tasks_in_suite']} tasks"
        + (f"; missing data: {len(s['missing'])}" if s["missing"] else "")
    )
    for r in results["tasks"]:
        if r["status"] == "ok" and r.get("prompts"):
            p = r["prompts"]
            names = ", ".join(p["classnames"][:6]) + (", ..." if len(p["classnames"]) > 6 else "")
            templates = " | ".join(p["templates"][:3]) + (" | ..." if len(p["templates"]) > 3 else "")
            lines.append(
                f"{r['task']}: {len(p['classnames'])} class names from {p['classnames_source']} ({names}); "
                f"{len(p['templates'])} templates from {p['templates_source']} ({templates})"
            )
    return "\n".join(lines)


def flat_scalars(results: dict[str, Any]) -> dict[str, float]:
    """{"<task>/<metric>": value} of the tasks that ran, plus "average" (what the watcher logs per step)."""
    out: dict[str, float] = {}
    for r in results["tasks"]:
        if r["status"] == "ok":
            out |= {f"{r['task']}/{k}": float(v) for k, v in r["metrics"].items() if v is not None}
    if results["summary"]["average"] is not None:
        out["average"] = results["summary"]["average"]
        out["tasks_averaged"] = float(results["summary"]["tasks_averaged"])
    return out
