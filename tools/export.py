"""Export a checkpoint to open_clip or Hugging Face `CLIPModel` format, or describe a checkpoint.

  python tools/export.py --checkpoint runs/X/checkpoints/latest --to open_clip --out exported/open_clip
  python tools/export.py --checkpoint runs/X/checkpoints/step_00010000 --to hf --out exported/hf
  python tools/export.py --info runs/X/checkpoints/latest

Any backend's checkpoint works (ddp model.pt, fsdp2 DCP, DeepSpeed ZeRO-1/2/3): it is consolidated on the
CPU in this process (train/checkpoint/consolidate.py). --info reads only metadata and the per-sample state's headers,
and imports neither the model code nor the exporters (torch alone, for those headers).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from model import get_model_config
from model.param_count import parameter_counts
from train.checkpoint.files import damage, read_meta, resolve_checkpoint
from train.checkpoint.resolved import checkpoint_model_config

logger = logging.getLogger("export")

# Each format's writer, imported when exporting (transformers and open_clip take seconds to import; --info needs
# neither, nor the backends that consolidation imports).
FORMATS = {"open_clip": "model.convert_open_clip:save_open_clip", "hf": "model.convert_hf:save_hf"}


def export(checkpoint: str | Path, to: str, out: str | Path) -> Path:
    """Consolidate `checkpoint` and write it in format `to` (open_clip | hf) into the empty folder `out`."""
    if to not in FORMATS:
        raise ValueError(f"--to must be one of {sorted(FORMATS)}, got {to!r}")
    folder = Path(out)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"--out {folder} is not empty; choose a new folder (an export never mixes files)")
    from train.checkpoint.consolidate import consolidated_state_dict

    path = resolve_checkpoint(checkpoint)
    state, meta = consolidated_state_dict(path)
    module, name = FORMATS[to].split(":")
    getattr(importlib.import_module(module), name)(state, checkpoint_model_config(meta), folder)
    logger.info(
        "exported %s (step %d, model %s) to %s format in %s",
        path,
        meta["step"],
        meta["config"]["model"]["name"],
        to,
        folder,
    )
    return folder


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _human(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GB"


def _describe(obj: Any, prefix: str = "") -> Iterator[str]:
    """`key=value` for scalars, `key=dtype[shape] (bytes)` for tensors, nested keys dotted."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _describe(value, f"{prefix}{key}.")
    elif isinstance(obj, torch.Tensor):
        shape = ", ".join(map(str, obj.shape))
        yield f"{prefix[:-1]}={str(obj.dtype).removeprefix('torch.')}[{shape}] ({_human(obj.nbytes)})"
    else:
        yield f"{prefix[:-1]}={obj}"


def _model_line(section: dict[str, Any]) -> str:
    counts = parameter_counts(get_model_config(section["name"], **section.get("overrides", {})))  # no model built
    visual, text = counts["visual"] / 1e6, counts["text"] / 1e6
    line = (
        f"model {section['name']} overrides {section.get('overrides', {})}: {visual + text:.2f}M parameters "
        f"(visual {visual:.2f}M, text {text:.2f}M)"
    )
    return line + (f", init_from {section['init_from']}" if section.get("init_from") else "")


def info(checkpoint: str | Path) -> list[str]:
    """Lines describing a checkpoint: step, epoch, ranks, backend, model, files, per-sample state layout."""
    path = resolve_checkpoint(checkpoint)
    meta = read_meta(path)
    cfg = meta["config"]
    backend, loss = cfg.get("backend", {}), cfg.get("loss", {})
    ds_config = backend.get("options", {}).get("ds_config")
    ds_config = f" ({ds_config})" if ds_config else ""
    files = (f"{p.name}{'/' if p.is_dir() else ''} {_human(_size(p))}" for p in sorted(path.iterdir()))
    shards = sorted(path.glob("loss_rank*.pt"), key=lambda p: int(p.stem.removeprefix("loss_rank")))
    lines = [
        f"checkpoint {path}",
        f"step {meta['step']}, epoch {meta['epoch']}, world size {meta['world_size']}, backend {meta['backend']}"
        f"{ds_config}, precision {backend.get('precision', '?')}",
        _model_line(cfg["model"]),
        f"loss {loss.get('name', '?')} {loss.get('version') or ''}".rstrip(),
        "files: " + ", ".join(files),
        _verification(path, meta),
        _health(meta),
        f"per-sample state: {len(shards)} shards",
    ]
    total = 0
    for shard in shards:  # mmap: tensors are described from their headers, their data is not read
        try:
            state = torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, OSError, EOFError) as err:  # a damaged shard is described, not fatal
            lines.append(f"  {shard.name}: unreadable ({type(err).__name__})")
            continue
        total += sum(t.nbytes for t in _tensors(state))
        lines.append(f"  {shard.name}: " + " ".join(_describe(state)))
    lines.append(f"per-sample state total: {_human(total)}")
    return lines


def _verification(path: Path, meta: dict[str, Any]) -> str:
    """Every file against the size and checksum meta.json recorded when the checkpoint was written."""
    if "files" not in meta:
        return "verification: not recorded (written before checksums were kept)"
    problem = damage(path)
    return f"verification: DAMAGED: {problem}" if problem else f"verification: {len(meta['files'])} files intact"


def _health(meta: dict[str, Any]) -> str:
    health = meta.get("health")
    if health is None:
        return "health: not recorded"
    return "health: healthy" if health["healthy"] else f"health: unhealthy ({health['reason']})"


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, torch.Tensor):
        yield obj


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a step_* directory, a run's checkpoints/ dir or its 'latest' pointer")
    parser.add_argument("--to", choices=sorted(FORMATS), help="open_clip hub folder or Hugging Face CLIPModel folder")
    parser.add_argument("--out", help="new (or empty) folder to write")
    parser.add_argument("--info", metavar="CHECKPOINT", help="describe a checkpoint instead of exporting it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # transformers imports accelerate, which imports DeepSpeed, whose accelerator probe warns that it found no GPU:
    # exports are consolidated on the CPU on purpose (the filter outlives DeepSpeed's own logger setup).
    logging.getLogger("DeepSpeed").addFilter(lambda record: "Setting accelerator to CPU" not in record.getMessage())
    if args.info:
        print("\n".join(info(args.info)))
        return 0
    if not (args.checkpoint and args.to and args.out):
        parser.error("give --checkpoint, --to and --out (or --info CHECKPOINT)")
    export(args.checkpoint, args.to, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
