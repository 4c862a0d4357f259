"""Launch open_clip_train as its users do (`torchrun ... -m open_clip_train.main ARGS`), from the peer's own
environment, for benchmarks/bench_e2e.py:

    torchrun --nproc_per_node K benchmarks/open_clip_peer.py MODEL_CONFIG.json ARGS...

Two launcher shims, nothing of the peer changed:
- the model: MODEL_CONFIG.json is registered with `open_clip.add_model_config` (open_clip's way to add a model;
  open_clip_train has no flag for it), so `--model <its stem>` trains the same architecture as ours;
- on CPU only: open_clip_train 3.3.0 passes `device_ids=[cpu]` to DistributedDataParallel, which DDP rejects for
  CPU modules; the wrapper drops them (CPU modules take none).
Imports nothing of this repository: it runs with only the peer's environment on PYTHONPATH.
"""

from __future__ import annotations

import sys

import torch


class CpuDistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    """DDP without device_ids, as a CPU module needs."""

    def __init__(self, module: torch.nn.Module, device_ids: list | None = None, **kwargs: object) -> None:
        super().__init__(module, **kwargs)


def main(argv: list[str]) -> None:
    import open_clip
    from open_clip_train.main import main as open_clip_train_main

    model_config, args = argv[0], argv[1:]
    open_clip.add_model_config(model_config)
    if not torch.cuda.is_available():
        torch.nn.parallel.DistributedDataParallel = CpuDistributedDataParallel
    open_clip_train_main(args)


if __name__ == "__main__":
    main(sys.argv[1:])
