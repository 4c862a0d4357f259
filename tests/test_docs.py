"""The docs cannot drift: benchmark tables are generated from benchmarks/results/*.json, and the docs link to files."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import typing
from pathlib import Path

import pytest

from benchmarks import doc_tables
from tests.ranks import REPO
from train.config import TrainConfig

DOCS = doc_tables.docs(REPO)


def test_the_committed_tables_equal_what_the_results_generate() -> None:
    stale = {p.name: changed for p in DOCS if (changed := doc_tables.refresh(p.read_text())[1])}
    assert stale == {}, "stale benchmark tables: run python benchmarks/doc_tables.py"
    assert doc_tables.main(["--check"]) == 0


def test_every_table_is_in_a_doc_and_every_result_has_a_table() -> None:
    used = {m["name"] for path in DOCS for m in doc_tables.MARKER.finditer(path.read_text())}
    assert used == set(doc_tables.TABLES)
    sources = {src for table in doc_tables.TABLES.values() for src in table.sources}
    assert sources == {p.name for p in doc_tables.RESULTS.glob("*.json")}


def _scale_numbers(value: object) -> object:
    if isinstance(value, dict):
        return {k: _scale_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scale_numbers(v) for v in value]
    if isinstance(value, float):
        return value * 1.37 + 0.11
    return value


@pytest.mark.parametrize("name", sorted(doc_tables.TABLES))
def test_each_table_follows_its_results(name: str, tmp_path: Path) -> None:
    """Changing the numbers of the run changes the table: nothing in it is written by hand."""
    for src in doc_tables.TABLES[name].sources:
        shutil.copy(doc_tables.RESULTS / src, tmp_path / src)
    before = doc_tables.render(name, tmp_path)
    for src in doc_tables.TABLES[name].sources:
        data = json.loads((tmp_path / src).read_text())
        (tmp_path / src).write_text(json.dumps(_scale_numbers(data)))
    after = doc_tables.render(name, tmp_path)
    changed_rows = [a for a, b in zip(after.splitlines(), before.splitlines(), strict=True) if a != b]
    table_rows = [line for line in before.splitlines() if line.startswith("|")][2:]
    assert len(changed_rows) == len(table_rows), "a table row did not change with its results"


def test_a_stale_table_is_found_and_rewritten() -> None:
    fresh = doc_tables.render("train")
    text = f"intro\n<!-- bench:train -->\n{fresh.replace('**0.', '**9.')}<!-- /bench:train -->\nend\n"
    rewritten, changed = doc_tables.refresh(text)
    assert changed == ["train"]
    assert rewritten == f"intro\n<!-- bench:train -->\n{fresh}<!-- /bench:train -->\nend\n"
    assert doc_tables.refresh(rewritten) == (rewritten, [])
    with pytest.raises(SystemExit, match="unknown benchmark table 'nope'"):
        doc_tables.refresh("<!-- bench:nope -->\n<!-- /bench:nope -->\n")


def test_benchmark_tables_are_only_generated_ones() -> None:
    """docs/benchmarks.md holds no hand-written table: every table line lies between bench markers."""
    text = (REPO / "docs" / "benchmarks.md").read_text()
    outside = doc_tables.MARKER.sub("", text)
    assert [line for line in outside.splitlines() if line.startswith("|")] == []


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_relative_links_and_anchors_in_the_docs_resolve() -> None:
    broken = []
    for path in [*DOCS, REPO / "data" / "README.md", REPO / "studies" / "README.md"]:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", path.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            file = (path.parent / target) if target else path
            if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
                broken.append(f"{path.relative_to(REPO)}: {target}#{anchor}")
    assert broken == []


def test_no_code_cites_a_design_note_outside_the_repository() -> None:
    cites = [
        str(p.relative_to(REPO))
        for pkg in (
            "fastflip",
            "model",
            "data",
            "train",
            "evaluation",
            "tools",
            "benchmarks",
            "studies",
            "recipes",
            "tests",
        )
        for p in (REPO / pkg).rglob("*.py")
        if "DESIGN.md" in p.read_text() and p.name != "test_docs.py"
    ]
    assert cites == []


def test_check_exits_1_on_a_stale_doc_and_the_script_fixes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = tmp_path / "docs" / "page.md"
    doc.parent.mkdir()
    doc.write_text("<!-- bench:watch -->\n| hand | written |\n<!-- /bench:watch -->\n")
    monkeypatch.setattr(doc_tables, "REPO", tmp_path)
    monkeypatch.setattr(doc_tables, "docs", lambda repo=tmp_path: [doc])
    assert doc_tables.main(["--check"]) == 1
    assert doc_tables.main([]) == 0 and doc_tables.main(["--check"]) == 0
    assert "| hand |" not in doc.read_text() and doc_tables.render("watch") in doc.read_text()


FILE_SUFFIXES = {"pt", "lock", "json", "jsonl", "yaml", "py", "md", "txt", "db"}


def _is_option(key: str) -> bool:
    """Does a dotted key name a field of TrainConfig (any key below a dict-typed field, e.g. backend options)?"""
    section: typing.Any = TrainConfig
    for part in key.split("."):
        if not dataclasses.is_dataclass(section):
            return typing.get_origin(section) is dict or section is dict or section is typing.Any
        hints = typing.get_type_hints(section)
        if part not in hints:
            return False
        section = hints[part]
    return True


def doc_option_keys(text: str) -> set[str]:
    """The recipe keys a doc writes in backticks (`loss.version`, `data.resize: auto`), not modules or file names."""
    sections = {f.name for f in dataclasses.fields(TrainConfig)}
    keys = set()
    for code in re.findall(r"`([^`\n]+)`", text):
        if not (m := re.match(r"[a-z_]+(?:\.[a-z0-9_]+)+", code)) or m[0].split(".")[0] not in sections:
            continue
        parts = m[0].split(".")
        if (
            parts[-1] in FILE_SUFFIXES
            or (REPO / parts[0] / parts[1]).is_dir()
            or (REPO / parts[0] / f"{parts[1]}.py").exists()
        ):
            continue  # model.pt, run.lock; data.transforms.normalize_pixels is a module
        keys.add(m[0])
    return keys


def test_the_option_keys_the_docs_name_exist() -> None:
    keys = {key for path in DOCS for key in doc_option_keys(path.read_text())}
    assert len(keys) > 40 and {"loss.name", "data.resize", "checkpoint.resume"} <= keys
    assert {key for key in keys if not _is_option(key)} == set()


def test_a_mistyped_option_key_is_found() -> None:
    keys = doc_option_keys("set `loss.versoin: v3`, `model.pt`, `data.transforms.normalize_pixels` and `optim.lr`")
    assert keys == {"loss.versoin", "optim.lr"}
    assert not _is_option("loss.versoin") and _is_option("optim.lr") and _is_option("data.sources")
