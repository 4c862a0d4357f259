"""The docs cannot drift: benchmark tables are generated from benchmarks/results/*.json, and the docs link to files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from benchmarks import doc_tables
from tests.ranks import REPO

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
    cites = [str(p.relative_to(REPO)) for pkg in ("fastflip", "model", "data", "train", "evaluation", "tools",
                                                 "benchmarks", "studies", "recipes", "tests")
             for p in (REPO / pkg).rglob("*.py") if "DESIGN.md" in p.read_text() and p.name != "test_docs.py"]
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
