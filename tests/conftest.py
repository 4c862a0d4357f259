"""Shared fixtures (helpers live in modules: tests/ranks.py runs ranks, tests/tiny_run.py builds tiny runs,
tests/checks.py holds comparisons, tests/data_fixtures.py writes shards)."""

from __future__ import annotations

import pytest

from tests.data_fixtures import write_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three real shards of 14, 9 and 17 pairs (40: 5 steps per epoch at 2 ranks x 4)."""
    directory = tmp_path_factory.mktemp("shards")
    write_shards(str(directory), [14, 9, 17])
    return str(directory)
