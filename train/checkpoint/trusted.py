"""Loading a checkpoint never runs code from it: every file is unpickled with a fixed list of allowed globals.

Checkpoints travel between labs, and the checksums in meta.json cannot vouch for a file (whoever wrote the
checkpoint wrote them too). So:
  our parts, optimizer.pt, model.pt      `torch.load(weights_only=True)` (tensors and plain containers; numpy
                                          arrays for older RNG files)
  FSDP2 (torch.distributed.checkpoint)   its `.metadata` pickle through an unpickler that knows DCP's own
                                          metadata classes only (DCP itself uses `pickle.load`), and the
                                          non-tensor items of its `.distcp` files (optimizer param_groups)
                                          with `weights_only=True` (DCP's planner passes False)
  DeepSpeed                              its checkpoint engine's `load` with `weights_only=True` plus the few
                                          DeepSpeed data classes its optimizer files hold; consolidation
                                          (zero_to_fp32) under `weights_only_torch_load` alike
A file that names any other global is refused with `pickle.UnpicklingError` naming it, which the checkpointer
turns into one line naming the checkpoint (train.checkpoint.checkpointer.Checkpointer.load).
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import StorageMeta

NUMPY_ARRAY_GLOBALS = [np.ndarray, np.dtype, np.dtype("uint32").__class__, np._core.multiarray._reconstruct]


def load_file(path: Path | str) -> Any:
    """A checkpoint file, unpickled with `weights_only=True`: tensors and plain containers only, so a file that
    names any other global (code to run on load) is refused. numpy arrays (data only) are allowed: older
    checkpoints saved numpy's RNG state so."""
    with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)


# What torch.distributed.checkpoint's .metadata pickles: its own metadata dataclasses, paths, sizes, dtypes.
_DCP_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("pathlib", "PosixPath"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) not in _DCP_GLOBALS and not dtype:
            raise pickle.UnpicklingError(f"weights_only: refusing global {module}.{name} in a checkpoint's .metadata")
        return super().find_class(module, name)


class TrustedDCPReader(FileSystemReader):
    """torch.distributed.checkpoint's file reader whose `.metadata` cannot run code (its tensor files are raw
    bytes read with `weights_only=True`; their non-tensor items go through `TrustedLoadPlanner`)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        """FileSystemReader.read_metadata with the restricted unpickler in place of `pickle.load`."""
        with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as file:
            metadata = _MetadataUnpickler(file).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class TrustedLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner whose non-tensor items (FSDP2's optimizer param_groups, or any key a
    `.metadata` declares as bytes) unpickle with `weights_only=True`."""

    def load_bytes(self, read_item: Any, value: Any) -> None:
        """DefaultLoadPlanner.load_bytes with `torch.load(weights_only=True)` in place of `weights_only=False`."""
        with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
            loaded = torch.load(value, map_location="cpu", weights_only=True)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element  # noqa: PLC0415

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def dcp_load(state: dict[str, Any], directory: Path | str) -> None:
    """`torch.distributed.checkpoint.load` of `directory` into `state` (in place) that runs no code from it."""
    dcp.load(state, storage_reader=TrustedDCPReader(directory), planner=TrustedLoadPlanner())


def deepspeed_globals() -> list[Any]:
    """The DeepSpeed data classes its ZeRO optimizer files pickle (enums, loss scalers, fragment addresses)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address, *NUMPY_ARRAY_GLOBALS]


@contextlib.contextmanager
def weights_only_torch_load(allowed: list[Any]) -> Iterator[None]:
    """For its duration, every `torch.load` is `weights_only=True` with `allowed` globals, whatever its caller
    passes: for library code that loads with `weights_only=False` and offers no hook (DeepSpeed's
    zero_to_fp32). Single-process tools only: it replaces `torch.load` process-wide."""
    original = torch.load

    def load(*args: Any, weights_only: Any = None, **kwargs: Any) -> Any:
        with torch.serialization.safe_globals(allowed):
            return original(*args, weights_only=True, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def weights_only_deepspeed(engine: Any) -> None:
    """Make a DeepSpeed engine read its checkpoints with `weights_only=True` (its engine passes False)."""
    allowed = deepspeed_globals()

    def load(path: str, map_location: Any = None) -> Any:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)

    engine.checkpoint_engine.load = load
