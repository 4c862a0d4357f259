"""The house rules that a refactor could break: no import circle, one resolve step, the demo goes through train.cli."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ranks import REPO
from train.backends import backend_class
from train.setup import load_setup

PACKAGES = ("fastflip", "model", "data", "train", "evaluation", "tools", "benchmarks", "studies")
DEMO = REPO / "recipes" / "configs" / "demo_fashion_mnist.yaml"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports at module level or in functions (TYPE_CHECKING blocks excluded)."""
    modules = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        skipped = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        targets = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        # importing a submodule runs its package's __init__ too
        graph[name] = {t for t in targets if t in modules and t != name}
        graph[name] |= {".".join(t.split(".")[:i]) for t in graph[name] for i in range(1, t.count(".") + 1)} & set(
            modules
        ) - {name} - {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_circle() -> None:
    graph = import_graph()
    assert "train.setup" in graph and "train.backends" in graph["train.setup"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_config_dataclasses_import_no_backend() -> None:
    graph = import_graph()
    assert not {m for m in graph["train.config"] if m.startswith(("train.backends", "train.setup", "train.checkpoint"))}


def test_a_recipe_is_read_and_checked_before_torch_loads() -> None:
    """train.cli reads and checks the config torch-free, so each launched rank reports a bad value at once."""
    script = (
        "import sys; from train.cli import main; code = main(['--config', sys.argv[1], 'optim.lr=-1']); "
        "print(code, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'numpy')))"
    )
    out = subprocess.run([sys.executable, "-c", script, str(DEMO)], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.split() == ["2", "[]"] and "optim needs 0 <= lr_min <= lr" in out.stderr, out.stderr


def test_setup_resolves_everything_once() -> None:
    setup = load_setup(DEMO, ["backend.name=deepspeed", "backend.options.ds_config=ds_configs/zero2.json"])
    assert setup.loss.is_resolved and setup.loss.version == "v3"
    assert setup.model_config.vision.image_size == setup.cfg.data.image_size
    assert setup.backend_cls.name == "deepspeed"
    assert setup.backend_options["ds_config"]["train_micro_batch_size_per_gpu"] == setup.cfg.data.batch_size


def test_accelerate_config_conflicts_name_the_key() -> None:
    cfg = load_setup(DEMO).cfg  # fp32, ddp
    launcher_conflicts = backend_class(cfg.backend.name).launcher_conflicts
    assert launcher_conflicts(cfg, {"ACCELERATE_MIXED_PRECISION": "no"}) == []
    lines = launcher_conflicts(
        cfg, {"ACCELERATE_MIXED_PRECISION": "bf16", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_USE_FSDP": "true"}
    )
    assert len(lines) == 3
    assert lines[0].startswith("mixed_precision: 'bf16' is ignored") and "backend.precision 'fp32'" in lines[0]
    assert "DEEPSPEED" in lines[1] and "FSDP" in lines[2]
    ds = load_setup(DEMO, ["backend.name=deepspeed", "backend.options.ds_config=ds_configs/zero2.json"]).cfg
    env = {"ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds_configs/zero3.json"}
    (line,) = backend_class("deepspeed").launcher_conflicts(ds, env)
    assert "deepspeed_config_file 'ds_configs/zero3.json' is ignored" in line


@pytest.mark.slow
def test_demo_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "fastclip_demo.py"), "--dry-run", f"run.output_dir={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "global batch" in done.stdout and "memory per GPU" in done.stdout
    assert not out.exists()
    bad = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "fastclip_demo.py"), "optim.lr=-1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "config error" in bad.stderr and "optim" in bad.stderr


# Layer rules: a package never imports the packages listed for it (train sits above data and model; model below data).
FORBIDDEN_LAYERS = {"data": ("train",), "model": ("train", "data")}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every `module -> import` arrow that crosses a forbidden layer boundary."""
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if target.split(".")[0] in FORBIDDEN_LAYERS.get(module.split(".")[0], ())
    )


def test_data_and_model_never_import_train_and_model_never_imports_data() -> None:
    assert layer_violations(import_graph()) == []


def test_the_layer_rule_sees_an_upward_import() -> None:
    graph = {"model.clip": {"data.transforms"}, "data.loader": {"train.config", "model"}, "train.setup": {"data"}}
    assert layer_violations(graph) == ["data.loader -> train.config", "model.clip -> data.transforms"]


def readme_layout_block(text: str) -> list[tuple[str, str]]:
    """(path, description) of each entry of the fenced block under the README's `## Layout`.

    An entry starts at column 0 (a top-level path) or column 2 (a path inside the entry above); deeper-indented
    lines continue a description.
    """
    section = text.split("\n## Layout\n", 1)[1]
    block = section.split("```", 2)[1]
    entries: list[tuple[str, str]] = []
    parent = ""
    for line in block.splitlines()[1:]:
        if line[:1].strip():
            parent, _, description = line.partition(" ")
            entries.append((parent, description))
        elif line[:2] == "  " and line[2:3].strip():
            name, _, description = line.strip().partition(" ")
            entries.append((parent + name, description))
        elif line.strip() and entries:
            entries[-1] = (entries[-1][0], entries[-1][1] + " " + line.strip())
    return entries


def test_the_readme_layout_block_matches_the_tree() -> None:
    entries = readme_layout_block((REPO / "README.md").read_text())
    assert entries, "README.md has no layout block under '## Layout'"
    assert [p for p, _ in entries if not (REPO / p).exists()] == [], "the layout block names paths that do not exist"
    # files a description names (`cli.py`, `recipes/make_recipes.py`): in the entry's folder, or from the root
    files = [(path, f) for path, text in entries for f in re.findall(r"[\w./-]*\w\.(?:py|sh|sbatch)\b", text)]
    assert [f for path, f in files if not (REPO / (f if "/" in f else path + f)).exists()] == []
    named = {p.rstrip("/") for p, _ in entries if "/" not in p.rstrip("/")}
    code_dirs = {p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".") and any(p.glob("*.py"))}
    assert set(PACKAGES) <= code_dirs
    assert code_dirs - named == set(), "top-level code folders missing from the README's layout block"
