"""What indexing tells the user besides the sample count: the checks that ran on the shards (duplicate source keys,
truncated or unreadable tars, samples the loader will skip), and, where img2dataset's `X_stats.json` / `X.parquet`
lie beside shard `X.tar`, the downloads that failed, by shard: the holes in the source key space (the index's rows
stay dense)."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from dataclasses import dataclass, field

from data import remote

log = logging.getLogger(__name__)
MAX_SHARD_LINES = 20  # shards with holes listed one per line; the rest are counted
MAX_KEYS = 8  # failed keys named per shard (from img2dataset's parquet)


def checks_line(manifest: dict) -> str:
    """'checks: 0 duplicate source keys, 0 truncated or unreadable shards, 0 samples the loader will skip'."""
    problems = manifest.get("problems", {})
    duplicates = problems.get("duplicate_source_keys", {}).get("samples", 0)
    truncated = len(problems.get("truncated_or_unreadable", {}))
    invalid = manifest.get("invalid_at_index_time", {})
    skipped = sum(invalid.values())
    reasons = f" ({', '.join(f'{k} {v}' for k, v in invalid.items())})" if invalid else ""
    return (
        f"checks: {duplicates} duplicate source keys, {truncated} truncated or unreadable shards, "
        f"{skipped} samples the loader will skip{reasons}"
    )


@dataclass
class ShardHoles:
    """img2dataset's record of one shard: URLs tried, downloaded, failed (by error) and the failed keys."""

    shard: str
    count: int
    successes: int
    errors: Counter = field(default_factory=Counter)
    keys: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.count - self.successes

    def line(self) -> str:
        errors = "; ".join(f"{e}: {n}" for e, n in self.errors.most_common())
        keys = ", ".join(self.keys[:MAX_KEYS]) + (" ..." if len(self.keys) > MAX_KEYS else "")
        return f"  {remote.basename(self.shard)}: {self.failed} of {self.count} failed ({errors})" + (
            f", keys {keys}" if keys else ""
        )


def download_holes(shards: list[str]) -> list[ShardHoles]:
    """The shards whose img2dataset `X_stats.json` beside `X.tar` records failed downloads; with `X.parquet`
    there, the failed keys too. Shards without a stats file (not img2dataset's) are left out."""
    stats_of = {u: u[: -len(".tar")] + "_stats.json" for u in shards if u.endswith(".tar")}
    present = remote.sizes(list(stats_of.values()))
    holes = []
    for shard, stats_url in stats_of.items():
        if present.get(stats_url) is None:
            continue
        try:
            stats = json.loads(remote.read_bytes(stats_url))
            record = ShardHoles(shard, int(stats.get("count", 0)), int(stats.get("successes", 0)))
            record.errors.update({k: int(v) for k, v in stats.get("status_dict", {}).items() if k != "success"})
        except (ValueError, TypeError, AttributeError) as err:  # a report, not the index: never abort indexing
            log.warning(
                "%s is not img2dataset's stats (%s: %s); its shard's download holes are not reported",
                stats_url,
                type(err).__name__,
                err,
            )
            continue
        if record.failed <= 0:
            continue
        record.keys = _failed_keys(shard[: -len(".tar")] + ".parquet")
        holes.append(record)
    return holes


def _failed_keys(parquet_url: str) -> list[str]:
    """Keys of the rows img2dataset's parquet marks as not downloaded ([] without a readable parquet)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(remote.read_bytes(parquet_url)), columns=["key", "status"]).to_pydict()
    except (OSError, KeyError, ValueError):
        return []
    return sorted(k for k, s in zip(table["key"], table["status"], strict=True) if s != "success")


def holes_lines(holes: list[ShardHoles]) -> list[str]:
    """The report: a total, then one line per shard with holes."""
    if not holes:
        return []
    failed, tried = sum(h.failed for h in holes), sum(h.count for h in holes)
    lines = [
        f"download holes (img2dataset's *_stats.json): {failed} failed downloads in {len(holes)} shard(s) "
        f"(of {tried} URLs in those shards); their keys have no sample, the index's rows stay dense"
    ]
    lines += [h.line() for h in holes[:MAX_SHARD_LINES]]
    if len(holes) > MAX_SHARD_LINES:
        lines.append(f"  ... and {len(holes) - MAX_SHARD_LINES} more shard(s) (manifest.json: download_holes)")
    return lines


def holes_record(holes: list[ShardHoles]) -> dict:
    """The holes as manifest.json keeps them: shard name -> failed, tried, errors, keys."""
    return {
        remote.basename(h.shard): {"failed": h.failed, "count": h.count, "errors": dict(h.errors), "keys": h.keys}
        for h in holes
    }
