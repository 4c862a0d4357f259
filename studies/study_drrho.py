#!/usr/bin/env python
"""Train with a reference model at our scale: does DRRho-CLIP steering beat the same loss without a reference,
and does the target beat its reference (weak to strong)?

  python studies/study_drrho.py --dry-run      # the arms, in run order
  python studies/study_drrho.py --jobs 2       # build the data, run (or resume) every arm, write the report

Same tiny CLIP, data, budget (2500 training mosaics, batch 64, 20 epochs) and protocol as `studies/study.py`, except
that the candidate settings train on 2 seeds (CHOICE_SEEDS, as the main study) and are scored on the 500 validation
mosaics only; the chosen setting then trains on 5 seeds and is evaluated on the test mosaics once.

- The reference: OpenCLIP on the same tiny architecture, trained on 2500 OTHER mosaics, built from the Fashion-MNIST
  train images that neither the target's training mosaics nor its validation mosaics use (so it never saw an
  image the target's choice or test is scored on). Its own test scores are reported.
- Arms: DRRho (FastCLIP-v3 with `loss.reference` = that model) with the authors' settings (fixed tau 0.01, rho 11,
  eps 1e-4, the 2025 gamma rule) or with the study's validation-chosen FastCLIP-v3 settings, chosen on
  validation; FastCLIP-v3 with the 2025 gamma rule (min(1, 4.177 * 20^-0.7265) = 0.474 over 20 epochs). OpenCLIP
  and the validation-chosen FastCLIP-v3 (gamma 1) are the main study's 5-seed test arms (studies/results/study.json,
  same settings, data seed and code path), read from there rather than rerun.
- The cheaper path: the chosen DRRho setting with precomputed reference features (centre crops), on 5 seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from studies.study import LOSSES, Arm, Settings, Study, build_data, pending, run_all  # noqa: E402

logger = logging.getLogger("study_drrho")

V3_CHOSEN = LOSSES["fastclip-v3"] | {"gamma_schedule": "constant", "gamma_min": 1.0, "lr_tau": 1e-3}  # study.py's
AUTHORS = {
    "name": "fastclip",
    "version": "v3",
    "tau_grad": "reference",
    "tau_init": 0.01,
    "tau_min": 0.01,
    "lr_tau": 0.0,
    "lr_tau_schedule": "const",
    "rho": 11.0,
    "eps": 1e-4,
    "gamma_schedule": "epochs_rule",
}
STEERING = {
    "reference_model": "tiny",
    "reference_overrides": {"vision_image_size": 56, "vision_patch_size": 14, "text_context_length": 40},
}
# (for a dry run before the reference exists; the study's arms name its fastflip: checkpoint instead)
DRRHO_LOSSES = {
    "reference-openclip": LOSSES["openclip"],
    "fastclip-v3-rule": LOSSES["fastclip-v3"] | {"gamma_schedule": "epochs_rule", "lr_tau": 1e-3},
    "drrho-authors": AUTHORS | STEERING,
    "drrho-v3": V3_CHOSEN | STEERING,
}
CANDIDATES = ("drrho-authors", "drrho-v3")
REFERENCE_SEED = 100
CHOICE_SEEDS = 2  # validation seeds per candidate, as the main study (studies/study.py: choice_seeds)
STALE_S = 600  # an arm directory whose train.log has not moved for this long was interrupted: it runs again
RESULTS = "study_drrho.json"


def reference_arm(s: Settings) -> Arm:
    return Arm(
        "reference-openclip",
        s.batch,
        s.epochs,
        REFERENCE_SEED,
        "reference",
        note="OpenCLIP on 2500 mosaics of images the target's train and val mosaics never use",
    )


def plan(s: Settings) -> list[Arm]:
    """The reference and the loss-choice candidates (validation) first, then the 5-seed gamma-rule arm."""
    arms = [reference_arm(s)]
    arms += [
        Arm(key, s.batch, s.epochs, seed, "choice", split="val", note="DRRho candidate")
        for seed in range(CHOICE_SEEDS)
        for key in CANDIDATES
    ]
    arms += [
        Arm("fastclip-v3-rule", s.batch, s.epochs, seed, "final", note="2025 gamma rule") for seed in range(s.seeds)
    ]
    return arms


def final_arms(s: Settings, chosen: str) -> list[Arm]:
    arms = [Arm(chosen, s.batch, s.epochs, seed, "final", note="chosen on validation") for seed in range(s.seeds)]
    return arms + [
        Arm(
            chosen + "-precomputed",
            s.batch,
            s.epochs,
            seed,
            "precomputed",
            note="reference features precomputed on centre crops",
        )
        for seed in range(s.seeds)
    ]


def choose(runs: dict[str, dict], s: Settings) -> str:
    scores = {}
    for key in CANDIDATES:
        ids = [Arm(key, s.batch, s.epochs, seed, "choice", split="val").id for seed in range(CHOICE_SEEDS)]
        if any(runs.get(i, {}).get("status") != "done" for i in ids):
            raise ValueError(f"candidate {key} has not finished on every choice seed ({ids})")
        scores[key] = sum(runs[i]["final"]["text_to_image_R@1"] for i in ids) / len(ids)
    return max(CANDIDATES, key=lambda k: scores[k])


def build_reference_data(s: Settings, data: Path) -> None:
    """`ref_train/`: 2500 random mosaics from the train images that the target's train and val mosaics leave out."""
    out = data / "ref_train"
    if (out / "manifest.json").exists():
        return
    import random
    from collections import Counter

    import numpy as np

    from tools.make_shards import FASHION_MNIST_DIR, ShardWriter, _finish, _png, _read_fashion
    from tools.mosaic import CELLS, Mosaic, _caption, compose, distinct_mosaics, random_mosaics

    images, labels = _read_fashion(FASHION_MNIST_DIR, "train")
    used = {i for m in random_mosaics(images, labels, s.train_size, f"{s.data_seed}/train") for i in m.sources}
    val = distinct_mosaics(images, labels, s.val_size, f"{s.data_seed}/val", exclude=frozenset(used))
    used |= {i for m in val for i in m.sources}
    free = np.array(sorted(set(range(len(images))) - used))
    rng = random.Random(f"{s.data_seed}/reference")
    with ShardWriter(str(out), 1000) as w:
        for key in range(s.train_size):
            picks = [int(free[rng.randrange(len(free))]) for _ in range(CELLS)]
            cells = tuple(int(labels[i]) for i in picks)
            m = Mosaic(compose([images[i] for i in picks]), _caption(cells, rng), cells, tuple(picks))
            w.write(key, _png(m.pixels), "png", m.caption, cells=list(m.labels))
    _finish(str(out), w.paths, {"description": "reference mosaics: images the target's train/val never use"}, Counter())


def reference_checkpoint(work: Path, s: Settings) -> Path:
    return max((work / reference_arm(s).id / "checkpoints").glob("step_*"))


def patch_configs(s: Settings, work: Path) -> None:
    """Point the study's arm configs at the reference data / the reference checkpoint (study.arm_config reads
    LOSSES and the data path; these arms differ only there)."""
    import studies.study as base

    original = base.arm_config

    def arm_config(arm: Arm, settings: Settings, data: Path, out: Path, flip_steps=None) -> dict:
        key = arm.loss.removesuffix("-precomputed")
        LOSSES[arm.loss] = dict(DRRHO_LOSSES[key])
        config = original(arm, settings, data, out, flip_steps)
        if arm.group == "reference":
            config["data"]["path"] = str(data / "ref_train")
            config["checkpoint"] = {
                "every_steps": settings.epochs * -(-settings.train_size // arm.batch),
                "keep_last": 1,
            }
        if key.startswith("drrho"):  # a fastflip: checkpoint names its own architecture
            for field in STEERING:
                config["loss"].pop(field)
            config["loss"]["reference"] = f"fastflip:{reference_checkpoint(work, s)}"
            if arm.loss.endswith("-precomputed"):
                config["loss"]["reference_features"] = "precomputed"  # read from data.path (the index directory)
        return config

    base.arm_config = arm_config


def precompute(s: Settings, work: Path) -> None:
    """Reference features of every training mosaic (centre crop) into data/train, for the precomputed arms."""
    import subprocess

    if (work / "data" / "train" / "reference_features.npy").exists():
        return
    cmd = [
        sys.executable,
        str(REPO / "tools/reference_features.py"),
        "--reference",
        f"fastflip:{reference_checkpoint(work, s)}",
        "--data",
        str(work / "data" / "train"),
        "--image-size",
        "56",
    ]
    subprocess.run(cmd, check=True, env=os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})


def run_choice_then_final(
    s: Settings, study: Study, work: Path, out: Path, timeout: float, jobs: int, skip: frozenset[str] = frozenset()
) -> str:
    """One pool of `jobs` workers: the candidates (validation) and the remaining gamma-rule seeds; as soon as every
    candidate has finished, the chosen setting's test arms join the queue (then its precomputed-features arms)."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from studies.study import run_arm

    todo = [a for a in pending(plan(s)[1:], study) if a.id not in skip]
    elsewhere = [a for a in todo if running_elsewhere(work / a.id)]  # e.g. left running by an interrupted study
    todo = [a for a in todo if a not in elsewhere]
    choice_ids = {a.id for a in plan(s) if a.group == "choice"}
    chosen = None
    with ThreadPoolExecutor(max(1, jobs)) as pool:

        def submit(arms: list[Arm]) -> dict:
            return {pool.submit(run_arm, arm, s, study, work, sys.executable, timeout): arm for arm in arms}

        def choose_once() -> None:
            nonlocal chosen
            if chosen is None and all(study.runs.get(i, {}).get("status") == "done" for i in choice_ids):
                chosen = choose(study.runs, s)
                logger.info("DRRho setting chosen on validation: %s", chosen)
                tests, precomputed = final_arms(s, chosen)[: s.seeds], final_arms(s, chosen)[s.seeds :]
                futures.update(submit([a for a in pending(tests, study) if a.id not in skip]))
                if todo_precomputed := [a for a in pending(precomputed, study) if a.id not in skip]:
                    precompute(s, work)
                    futures.update(submit(todo_precomputed))

        futures = submit(todo)
        choose_once()
        while futures or elsewhere:
            if futures:
                done, _ = wait(futures, timeout=30, return_when=FIRST_COMPLETED)
            else:
                done = set()
                time.sleep(30)
            for arm in list(elsewhere):
                if finished(work / arm.id, s, arm):
                    study.runs[arm.id] = adopt(arm, s, work)
                    elsewhere.remove(arm)
                    study.save(out / RESULTS)
                elif not running_elsewhere(work / arm.id):
                    elsewhere.remove(arm)
                    futures.update(submit([arm]))
            for future in done:
                arm = futures.pop(future)
                study.runs[arm.id] = rec = future.result()
                logger.info(
                    "%s: %s, %.0f s, final text->image R@1 %s",
                    arm.id,
                    rec["status"],
                    rec["process_seconds"],
                    rec.get("final", {}).get("text_to_image_R@1"),
                )
                study.save(out / RESULTS)
            choose_once()
    if chosen is None:
        raise SystemExit("the DRRho candidates did not all finish on validation; see study_drrho.json")
    return chosen


def running_elsewhere(run: Path) -> bool:
    """An arm directory whose training log moved within STALE_S seconds and has no final evaluation yet."""
    log = run / "train.log"
    return log.is_file() and time.time() - log.stat().st_mtime < STALE_S and not (run / "adopt.done").exists()


def finished(run: Path, s: Settings, arm: Arm) -> bool:
    """Whether the arm's run logged its final evaluation (at the last step) and wrote its last line."""
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return False
    total = s.epochs * -(-s.train_size // arm.batch)
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return any(r.get("step") == total and any(k.startswith("eval/") for k in r) for r in rows) and (
        time.time() - (run / "train.log").stat().st_mtime > 20
    )


def adopt(arm: Arm, s: Settings, work: Path) -> dict:
    """The record `study.run_arm` would have written for an arm another study process trained."""
    from studies.study import steps_per_epoch
    from studies.study_diagnostics import parse_metrics

    run = work / arm.id
    (run / "adopt.done").write_text("adopted\n")
    config = yaml.safe_load((run / "recipe.yaml").read_text())
    record = {
        "arm": asdict(arm),
        "id": arm.id,
        "label": arm.label,
        "status": "done",
        "config": config,
        "process_seconds": None,
        "note": "trained by an earlier study process, adopted from its run directory",
    }
    return record | parse_metrics(run / "metrics.jsonl", arm.batch, steps_per_epoch(s, arm.batch))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/study_drrho")
    p.add_argument("--out", default="studies/results")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--timeout", type=float, default=3000)
    p.add_argument("--skip", nargs="*", default=[], help="arm ids to leave out (reported as not run)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    s = Settings()
    if args.dry_run:
        for i, arm in enumerate(plan(s)):
            print(f"{i + 1:2d}. {arm.id:40s} group {arm.group:10s} {arm.note}")
        print(
            f"then the DRRho candidate chosen on validation ({', '.join(CANDIDATES)}) on {s.seeds} seeds "
            f"(test), and with precomputed features"
        )
        return 0
    work, out = Path(args.work).resolve(), Path(args.out)
    build_data(s, work / "data", sys.executable)
    build_reference_data(s, work / "data")
    study = Study.load(out / RESULTS, s)
    patch_configs(s, work)
    ref, rest = plan(s)[:1], plan(s)[1:]
    fastclip_rule = [a for a in rest if a.loss == "fastclip-v3-rule"]
    # the reference first (beside the first gamma-rule arm), then everything that needs it; retrained from its seed
    # when steered arms remain but its checkpoint is not in this work directory (a fresh clone of the results)
    steered = pending([a for a in rest if a.loss.startswith("drrho")], study)
    if steered and not (work / ref[0].id / "checkpoints").is_dir() and ref[0].id in study.runs:
        previous = study.runs.pop(ref[0].id)
        logger.info("reference checkpoint missing from %s: retraining it (was %s)", work, previous.get("final"))
    else:
        previous = None
    if pending(ref, study):
        run_all(
            pending(ref, study) + pending(fastclip_rule, study)[:1],
            s,
            study,
            work,
            out,
            args.timeout,
            args.jobs,
            RESULTS,
        )
        if previous is not None:  # the same seed and code: the retrained reference should score what it did
            study.runs[ref[0].id]["previous_final"] = previous.get("final")
            study.save(out / RESULTS)
    chosen = run_choice_then_final(s, study, work, out, args.timeout, args.jobs, frozenset(args.skip))
    (out / "study_drrho_chosen.json").write_text(json.dumps({"chosen": chosen, "settings": asdict(s)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
