#!/usr/bin/env python
"""FastCLIP vs OpenCLIP at small batch on Fashion-MNIST mosaics: one command runs every arm of the study.

  python studies/study.py --dry-run                 # list the arms in run order
  python studies/study.py --work runs/study         # run (or resume) them all, then write the report
  python studies/study.py --report-only   # rewrite studies/results/study.{md,png} from its study.json

Every arm trains the same tiny CLIP (56 px mosaics, patch 14) from scratch in its own single-process
subprocess (OMP_NUM_THREADS=1) and evaluates text<->image retrieval on 1000 test mosaics with distinct
captions plus zero-shot on single test items, in the loop and at the end. Arms differ only in the loss,
the batch, the epochs (a sweep) and the seed; FLIP arms train masked at twice the batch for the wall-clock
budget of their unmasked twin (from a side-by-side step-time calibration), then tune unmasked.

The loss choice (the `choice` and `final` groups): each loss's tuned settings (FastCLIP-v3's gamma_min and lr_tau,
SigLIP's bias init) train on `choice_seeds` seeds and are compared on the 500 validation mosaics only; the setting
with the best mean validation text->image R@1 then trains on every seed and is evaluated on the test mosaics once.

The study resumes: finished arms are read back from study.json and skipped; an interrupted arm restarts
from scratch (its wall-clock time would be meaningless otherwise).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from studies.study_diagnostics import false_negative_rates, parse_metrics, u_staleness
from studies.study_report import write_report

logger = logging.getLogger("study")
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    """What every arm shares. Defaults fit one arm in about 5 minutes on one busy CPU core."""

    train_size: int = 2500  # training mosaics
    zeroshot_size: int = 1000  # single test items for zero-shot
    batch: int = 64  # b
    epochs: int = 20  # epochs per sample of the main comparison (the longest sweep point)
    sweep: tuple[int, ...] = (4, 10, 20)  # epochs per sample, OpenCLIP@b and FastCLIP-v3@b, seed 0
    long_sweep: tuple[int, ...] = (40,)  # sweep points past `epochs`, run after everything else
    scale_epochs: int = 10  # OpenCLIP@4b runs as many steps as the b arm at this many epochs
    seeds: int = 5  # of OpenCLIP@b and FastCLIP-v3@b at `epochs`
    evals_per_run: int = 6
    lr: float = 1e-3
    warmup_steps: int = 100
    flip_tuning_epochs: int = 1  # unmasked tuning after FLIP's masked phase
    data_seed: int = 0
    val_size: int = 500  # validation mosaics (from train images no training mosaic uses), for choosing settings
    choice_seeds: int = 2  # seeds of every candidate setting on the validation mosaics


# The losses, as the `loss:` section of a recipe. FastCLIP-v3's gamma decay is scaled to the run (see
# `loss_section`); its tau learns at the model lr (as OpenCLIP's logit_scale does) because our runs are
# ~100x shorter than the paper's; rho 6.5 and gamma_min 0.2 are the paper's CC3M values.
_V3 = {
    "name": "fastclip",
    "version": "v3",
    "tau_grad": "reference",
    "tau_init": 0.07,
    "rho": 6.5,
    "gamma_schedule": "cosine",
    "gamma_min": 0.2,
    "lr_tau_schedule": "step_thresh",
}
LOSSES: dict[str, dict] = {
    "openclip": {"name": "openclip", "tau_init": 0.07},
    "fastclip-v3": _V3,
    # Paper-tuned knobs, one at a time (1 seed each; declared before their results were seen):
    "fastclip-v3-gmin0.8": _V3 | {"gamma_min": 0.8},
    "fastclip-v3-lrtau2e-4": _V3 | {"lr_tau": 2.0e-4},
    "fastclip-v3-rho8.5": _V3 | {"rho": 8.5},
    "fastclip-v3-gamma1": _V3 | {"gamma_schedule": "constant", "gamma_min": 1.0},
    "fastclip-v1": {
        "name": "fastclip",
        "version": "v1",
        "tau_init": 0.07,
        "gamma_schedule": "cosine",
        "gamma_min": 0.2,
    },
    "fastclip-v0": {
        "name": "fastclip",
        "version": "v0",
        "tau_grad": "reference",
        "tau_init": 0.07,
        "gamma_schedule": "cosine",
        "gamma_min": 0.2,
    },
    "fastclip-v2": {
        "name": "fastclip",
        "version": "v2",
        "tau_init": 0.03,
        "rho": 7.0,
        "lr_tau": 0.0133,
        "gamma_schedule": "cosine",
        "gamma_min": 0.2,
    },
}


# The loss choice: every setting a loss may take (key -> its `loss:` section), compared on the validation mosaics.
# FastCLIP-v3: gamma_min from the paper's 0.2 to 1 (no moving average) x lr_tau at the model lr or the CC3M recipe's
# 2e-4; SigLIP: the paper's bias init -10 (about -ln of its 32k batch), -4 (about -ln 64) and 0. OpenCLIP has no knob.
CHOICES: dict[str, dict[str, dict]] = {
    "openclip": {"openclip": LOSSES["openclip"]},
    "fastclip-v3": {
        f"fastclip-v3-g{g:g}-lt{lt:g}": LOSSES["fastclip-v3"] | {"gamma_min": g, "lr_tau": lt}
        for g in (0.2, 0.5, 0.8, 1.0)
        for lt in (1e-3, 2e-4)
    },
    "siglip": {f"siglip-bias{b:g}": {"name": "siglip", "tau_init": 0.1, "bias_init": b} for b in (-10.0, -4.0, 0.0)},
}
LOSSES |= {key: loss for candidates in CHOICES.values() for key, loss in candidates.items()}


@dataclass(frozen=True)
class Arm:
    """One training run of the study."""

    loss: str  # key of LOSSES
    batch: int
    epochs: int
    seed: int
    group: str  # main | versions | flip | scale | sweep | ablation | tuning | choice | final
    mask_ratio: float = 0.0
    diagnose: bool = False  # keep per-epoch checkpoints and measure u staleness
    note: str = ""
    split: str = "test"  # the retrieval mosaics it is evaluated on: test, or val (choice arms: no test, no zero-shot)

    @property
    def id(self) -> str:
        mask = f"-mask{self.mask_ratio:g}" if self.mask_ratio else ""
        val = "-val" if self.split == "val" else ""
        return f"{self.loss}-b{self.batch}{mask}-e{self.epochs}{val}-s{self.seed}"

    @property
    def label(self) -> str:
        """The arm's name in plots and tables (seeds pooled)."""
        mask = f" FLIP{self.mask_ratio:g}" if self.mask_ratio else ""
        return f"{self.loss}@{self.batch}{mask}"


def plan_arms(s: Settings, confirm: tuple[str, ...] = ()) -> list[Arm]:
    """Every arm, most important first: the 5-seed comparison, then versions, FLIP, scale, sweep, ablation,
    one-at-a-time changes of what the paper tunes, `confirm` (losses re-run on every seed), the long sweep."""
    b, e = s.batch, s.epochs
    arms = []
    for seed in range(s.seeds):
        arms += [Arm("openclip", b, e, seed, "main"), Arm("fastclip-v3", b, e, seed, "main", diagnose=seed == 0)]
    arms += [Arm(v, b, e, 0, "versions") for v in ("fastclip-v1", "fastclip-v0", "fastclip-v2")]
    arms += [
        Arm(
            loss,
            2 * b,
            e,
            0,
            "flip",
            mask_ratio=0.5,
            note=f"masked at 2b for the wall clock of the twin at b and {e} epochs, then unmasked tuning",
        )
        for loss in ("openclip", "fastclip-v3")
    ]
    arms.append(
        Arm(
            "openclip",
            4 * b,
            4 * s.scale_epochs,
            0,
            "scale",
            note=f"same steps as openclip@{b} at {s.scale_epochs} epochs",
        )
    )
    arms += [Arm(loss, b, ep, 0, "sweep") for ep in s.sweep if ep != e for loss in ("openclip", "fastclip-v3")]
    arms.append(Arm("fastclip-v3-gamma1", b, e, 0, "ablation", note="gamma = 1: u is the last batch's g"))
    notes = {
        "fastclip-v3-gmin0.8": "gamma_min 0.8 (LAION recipe): fresher u",
        "fastclip-v3-lrtau2e-4": "lr_tau 2e-4 (CC3M recipe)",
        "fastclip-v3-rho8.5": "rho 8.5 (CC12M recipe)",
    }
    arms += [Arm(loss, b, e, 0, "tuning", note=note) for loss, note in notes.items()]
    for loss in confirm:
        if loss not in LOSSES:
            raise SystemExit(f"--confirm {loss}: unknown loss; choose from {sorted(LOSSES)}")
        group = next(a.group for a in arms if a.loss == loss and a.batch == b and a.epochs == e)
        arms += [Arm(loss, b, e, seed, group, note="more seeds") for seed in range(1, s.seeds)]
    arms += [Arm(loss, b, ep, 0, "sweep") for ep in s.long_sweep for loss in ("openclip", "fastclip-v3")]
    arms += choice_arms(s)
    return [a for i, a in enumerate(arms) if a.id not in {x.id for x in arms[:i]}]


def choice_arms(s: Settings) -> list[Arm]:
    """Every candidate setting of every loss on `choice_seeds` seeds, evaluated on the validation mosaics."""
    return [
        Arm(key, s.batch, s.epochs, seed, "choice", split="val", note=f"candidate {loss} setting")
        for seed in range(s.choice_seeds)
        for loss, keys in CHOICES.items()
        for key in keys
    ]


def choose(runs: dict[str, dict], s: Settings) -> dict[str, str]:
    """Each loss's setting with the best mean final text->image R@1 on the validation mosaics (every candidate
    must have finished on every choice seed; ties go to the one listed first)."""
    chosen = {}
    for loss, candidates in CHOICES.items():
        keys, scores = list(candidates), []
        for key in keys:
            ids = [Arm(key, s.batch, s.epochs, seed, "choice", split="val").id for seed in range(s.choice_seeds)]
            if any(runs.get(i, {}).get("status") != "done" for i in ids):
                raise ValueError(f"{loss}: candidate {key} has not finished on every choice seed ({ids})")
            scores.append(sum(runs[i]["final"]["text_to_image_R@1"] for i in ids) / len(ids))
        chosen[loss] = keys[scores.index(max(scores))]
    return chosen


def final_arms(s: Settings, chosen: dict[str, str]) -> list[Arm]:
    """The chosen setting of each loss on every seed, evaluated once on the test mosaics (OpenCLIP's are the
    main comparison's own arms)."""
    return [
        Arm(key, s.batch, s.epochs, seed, "main" if key == "openclip" else "final", note="chosen on validation")
        for seed in range(s.seeds)
        for key in chosen.values()
    ]


def steps_per_epoch(s: Settings, batch: int) -> int:
    return -(-s.train_size // batch)  # drop_last false: the last batch wraps around


def loss_section(arm: Arm, s: Settings, epochs: int) -> dict:
    loss = dict(LOSSES[arm.loss])
    if loss["name"] == "fastclip":
        loss["gamma_decay_epochs"] = max(1, epochs // 2)  # FastCLIP: decay over about half the run
        if loss["version"] in ("v0", "v3"):
            loss.setdefault("lr_tau", s.lr)
    return loss


def arm_config(arm: Arm, s: Settings, data: Path, out: Path, flip_steps: tuple[int, int] | None = None) -> dict:
    """The exact recipe of one arm (saved with its results). A FLIP arm's `epochs` are its twin's; it runs
    `flip_steps` = (masked steps, tuning steps) instead."""
    spe = steps_per_epoch(s, arm.batch)
    epochs, total = arm.epochs, arm.epochs * spe
    flip: dict = {"mask_ratio": arm.mask_ratio}
    max_steps = 0
    if arm.mask_ratio:
        if flip_steps is None:
            raise ValueError(f"{arm.id}: a FLIP arm needs the calibrated (masked, tuning) steps")
        max_steps, tuning_steps = flip_steps
        epochs, total = -(-max_steps // spe), max_steps + tuning_steps
        flip |= {
            "tuning_samples": tuning_steps * arm.batch,
            "tuning_lr": s.lr / 10,
            "tuning_lr_min": s.lr / 100,
            "tuning_warmup_steps": 10,
        }
    every = max(1, total // s.evals_per_run)
    return {
        "run": {"name": arm.id, "output_dir": str(out), "seed": arm.seed, "world_size": 1},
        "model": {
            "name": "tiny",
            "overrides": {"vision_image_size": 56, "vision_patch_size": 14, "text_context_length": 40},
        },
        "data": {
            "source": "webdataset",
            "path": str(data / "train"),
            "batch_size": arm.batch,
            "workers": 1,
            "image_size": 56,
            "seed": arm.seed,
        },
        "loss": loss_section(arm, s, epochs),
        "optim": {
            "name": "adamw",
            "lr": s.lr,
            "lr_min": s.lr / 100,
            "warmup_steps": s.warmup_steps,
            "weight_decay": 0.1,
            "betas": [0.9, 0.98],
            "eps": 1.0e-6,
        },
        "flip": flip,
        "backend": {"name": "ddp", "precision": "fp32"},
        "checkpoint": {"every_steps": spe if arm.diagnose else 0, "keep_last": arm.epochs + 2},
        "logging": {"every_steps": 1, "tensorboard": False},  # every step: per-epoch trajectories
        "eval": {
            "retrieval": str(data / arm.split),
            "zeroshot": "" if arm.split == "val" else str(data / "zeroshot"),
            "templates": "fashion-mosaic",
            "batch_size": 500,
            "every_steps": every,
        },
        "epochs": epochs,
        "max_steps": max_steps,
    }


@dataclass
class Study:
    """The results file: settings, calibration, data facts and one record per finished arm."""

    settings: Settings
    calibration: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, settings: Settings) -> Study:
        if not path.exists():
            return cls(settings)
        raw = json.loads(path.read_text())
        saved = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw["settings"].items()})
        if saved != settings:
            raise SystemExit(f"{path} was written with other settings ({saved}); use another --out to start over")
        return cls(saved, raw.get("calibration", {}), raw.get("data", {}), raw.get("runs", {}))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(
            json.dumps(
                {
                    "settings": asdict(self.settings),
                    "calibration": self.calibration,
                    "data": self.data,
                    "runs": self.runs,
                },
                indent=1,
            )
        )
        os.replace(tmp, path)


def pending(arms: list[Arm], study: Study) -> list[Arm]:
    """Arms without a finished record (an interrupted or failed arm runs again)."""
    return [a for a in arms if study.runs.get(a.id, {}).get("status") != "done"]


def build_data(s: Settings, data: Path, python: str) -> None:
    if (data / "zeroshot" / "manifest.json").exists() and (data / "val" / "manifest.json").exists():
        return
    cmd = [
        python,
        str(REPO / "tools/make_shards.py"),
        "fashion-mosaic",
        "--out",
        str(data),
        "--seed",
        str(s.data_seed),
        "--train-size",
        str(s.train_size),
        "--zeroshot-size",
        str(s.zeroshot_size),
        "--val-size",
        str(s.val_size),
    ]
    subprocess.run(cmd, check=True, env=_env(), stdout=subprocess.DEVNULL)


def _env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def flip_steps(arm: Arm, s: Settings, cal: dict) -> tuple[int, int]:
    """(masked steps, tuning steps) at 2b that take the unmasked b twin's time by the calibrated step times."""
    twin_seconds = s.epochs * steps_per_epoch(s, s.batch) * cal["step_s"]["b"]
    tuning = s.flip_tuning_epochs * steps_per_epoch(s, arm.batch)
    masked = int((twin_seconds - tuning * cal["step_s"]["2b"]) / cal["step_s"]["2b_mask0.5"])
    return masked, tuning


def run_arm(arm: Arm, s: Settings, study: Study, work: Path, python: str, timeout: float) -> dict:
    """Train one arm in a subprocess and return its record (config, eval points, wall time, trajectories)."""
    out = work / arm.id
    shutil.rmtree(out, ignore_errors=True)  # an interrupted attempt restarts cleanly
    out.mkdir(parents=True)
    steps = flip_steps(arm, s, study.calibration) if arm.mask_ratio else None
    config = arm_config(arm, s, work / "data", out, steps)
    (out / "recipe.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [python, str(REPO / "recipes/run_recipe.py"), "--config", str(out / "recipe.yaml")]
    started = time.perf_counter()
    with (out / "train.log").open("w") as log:
        try:
            proc = subprocess.run(cmd, env=_env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            status = "done" if proc.returncode == 0 else f"failed (exit {proc.returncode}, see {out}/train.log)"
        except subprocess.TimeoutExpired:
            status = f"failed (over the {timeout:.0f} s limit)"
    record = {
        "arm": asdict(arm),
        "id": arm.id,
        "label": arm.label,
        "status": status,
        "config": config,
        "process_seconds": time.perf_counter() - started,
    }
    if status == "done":
        record |= parse_metrics(out / "metrics.jsonl", arm.batch, steps_per_epoch(s, arm.batch))
        if arm.diagnose:
            record["u_staleness"] = u_staleness(out / "checkpoints", work / "data" / "train", s.batch, arm.seed)
            shutil.rmtree(out / "checkpoints")
    return record


def run_all(
    todo: list[Arm],
    s: Settings,
    study: Study,
    work: Path,
    out: Path,
    timeout: float,
    jobs: int,
    name: str = "study.json",
) -> None:
    """Train `todo`, `jobs` arms at a time, saving `out`/`name` after each."""
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = {pool.submit(run_arm, arm, s, study, work, sys.executable, timeout): arm for arm in todo}
        for i, future in enumerate(as_completed(futures)):
            arm = futures[future]
            study.runs[arm.id] = rec = future.result()
            logger.info(
                "[%d/%d] %s: %s, %.0f s, final text->image R@1 %s",
                i + 1,
                len(todo),
                arm.id,
                rec["status"],
                rec["process_seconds"],
                rec.get("final", {}).get("text_to_image_R@1"),
            )
            study.save(out / name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/study", help="data and run directories")
    p.add_argument("--out", default="results", help="study.json, study.md and study.png go here")
    p.add_argument("--dry-run", action="store_true", help="list the arms and exit")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from study.json")
    p.add_argument("--timeout", type=float, default=900, help="seconds before an arm is stopped and marked failed")
    p.add_argument("--seeds", type=int, default=Settings.seeds)
    p.add_argument("--epochs", type=int, default=Settings.epochs)
    p.add_argument("--sweep", default=",".join(map(str, Settings.sweep)), help="epochs per sample, comma separated")
    p.add_argument("--scale-epochs", type=int, default=Settings.scale_epochs)
    p.add_argument("--train-size", type=int, default=Settings.train_size)
    p.add_argument("--zeroshot-size", type=int, default=Settings.zeroshot_size)
    p.add_argument("--jobs", type=int, default=1, help="arms trained at once (one process, one thread each)")
    p.add_argument("--confirm", nargs="*", default=[], help="losses (LOSSES keys) to run on every seed as well")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    s = Settings(
        seeds=args.seeds,
        epochs=args.epochs,
        sweep=tuple(int(x) for x in args.sweep.split(",")),
        scale_epochs=args.scale_epochs,
        train_size=args.train_size,
        zeroshot_size=args.zeroshot_size,
    )
    arms = plan_arms(s, tuple(args.confirm))
    if args.dry_run:
        for i, arm in enumerate(arms):
            print(f"{i + 1:2d}. {arm.id:40s} group {arm.group:9s} {arm.note}")
        print(
            f"{len(arms)} arms; each {s.train_size} mosaics, batch {s.batch} unless named; then the setting of "
            f"{', '.join(CHOICES)} chosen on validation, on {s.seeds} seeds against the test mosaics"
        )
        return 0
    out, work = Path(args.out), Path(args.work).resolve()
    study = Study.load(out / "study.json", s)
    if not args.report_only:
        python = sys.executable
        build_data(s, work / "data", python)
        if not study.data:
            study.data = false_negative_rates(work / "data" / "train", s.batch)
        if not study.calibration:
            from studies.study_calibrate import calibrate  # noqa: PLC0415 (imports torch; not needed to report)

            study.calibration = calibrate(s.batch)
        study.save(out / "study.json")
        run_all(pending(arms, study), s, study, work, out, args.timeout, args.jobs)
        chosen = choose(study.runs, s)
        logger.info("chosen on validation: %s", chosen)
        run_all(pending(final_arms(s, chosen), study), s, study, work, out, args.timeout, args.jobs)
    try:
        chosen = choose(study.runs, s)
    except ValueError as e:  # --report-only before the choice arms have run
        logger.info("no loss choice yet: %s", e)
        chosen = {}
    write_report(study.runs, asdict(study.settings), study.calibration, study.data, out, chosen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
