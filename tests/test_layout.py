"""The house rules: each folder depends only downward, no import circle, every package says what it
holds and may import, no source file over 400 lines, the learner's path imports without the optional
libraries, and no build output is in git."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

PROJECT = {"reward", "families", "rollout", "reward_models", "learner", "cluster", "deploy", "assets", "cli"}
# folder -> the project folders it may import (besides itself). reward has no heavy deps at all.
ALLOWED = {
    "reward": set(),
    "families": set(),
    "rollout": {"reward", "families"},
    "reward_models": {"rollout", "reward"},
    "learner": {"rollout", "reward", "families"},
    "cluster": {"learner", "rollout", "reward_models", "reward", "families"},
    "deploy": {"cluster", "learner", "rollout", "reward_models", "reward", "families"},
    "assets": {"learner", "rollout", "reward_models", "reward", "families"},
    "cli": PROJECT - {"cli"},
}
HEAVY = {"torch", "numpy", "transformers", "vllm", "ray", "deepspeed", "fastapi", "soundfile", "soxr"}


def imported_top_levels(folder: str) -> dict[str, set[str]]:
    """file -> top-level names it imports (module level and inside functions alike)."""
    found = {}
    for path in sorted((ROOT / folder).glob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_folders_import_only_downward(folder):
    for path, names in imported_top_levels(folder).items():
        wrong = (names & PROJECT) - ALLOWED[folder] - {folder}
        assert not wrong, f"{path} imports {sorted(wrong)}"
        if folder == "reward":
            assert not names & HEAVY, f"{path} imports {sorted(names & HEAVY)}"


def _module_names() -> dict[str, Path]:
    """Dotted module name -> file, for every project package and bench/ script."""
    names = {}
    for folder in sorted(PROJECT | {"bench"}):
        for path in sorted((ROOT / folder).glob("*.py")):
            names[folder if path.stem == "__init__" else f"{folder}.{path.stem}"] = path
    return names


def _imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules a file imports, anywhere in it (a function-level import is still an edge):
    `from a import b` counts as a.b when that is a module, else as a."""

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {known(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else known(node.module))
    return found - {None}


def import_circles() -> list[list[str]]:
    """Strongly connected groups of more than one module in the import graph (Tarjan)."""
    modules = _module_names()
    graph = {name: _imported_modules(path, modules) - {name} for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                circles.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def test_no_import_circle():
    assert not import_circles(), import_circles()


def test_import_circles_are_found(tmp_path, monkeypatch):
    """The check itself: two modules importing each other are one circle."""
    (tmp_path / "learner").mkdir()
    (tmp_path / "learner" / "a.py").write_text("from learner.b import x\n")
    (tmp_path / "learner" / "b.py").write_text("def f():\n    from learner import a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert import_circles() == [["learner.a", "learner.b"]]


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_package_docstring_says_what_it_holds_and_may_import(folder):
    """One or two sentences: what the package holds, then "May import ..." naming exactly the
    folders the Layout table allows (or "nothing")."""
    doc = ast.get_docstring(ast.parse((ROOT / folder / "__init__.py").read_text())) or ""
    assert len(doc) > 60 and "package." not in doc, f"{folder}/__init__.py: {doc!r}"
    assert "May import " in doc, f"{folder}/__init__.py does not say what it may import: {doc!r}"
    allowed = doc.split("May import ", 1)[1]
    named = {name for name in PROJECT if re.search(rf"\b{name}\b", allowed)}
    expected = ALLOWED[folder] - {folder}
    assert named == expected, f"{folder}: its docstring names {sorted(named)}, the layout {sorted(expected)}"


def test_no_source_file_over_400_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for folder in sorted(PROJECT | {"bench", "tests"})
        for path in (ROOT / folder).glob("*.py")
        if (n := len(path.read_text().splitlines())) > 400
    }
    assert not long, long


HIDDEN_BY_THE_GPU_IMAGE = ("soundfile", "soxr", "vllm", "ray")


def test_learner_planner_and_tiny_builders_import_without_optional_libraries(tmp_path):
    """The GPU machine has torch and transformers (DeepSpeed travels as a wheel) but no soundfile,
    soxr, vLLM or Ray: the learner, the planner and the tiny builders import there, and a tiny
    model builds and is sized by the planner."""
    script = f"""
import sys
for name in {HIDDEN_BY_THE_GPU_IMAGE!r}:
    sys.modules[name] = None  # import fails, importlib.util.find_spec says absent
import learner.learner, learner.grpo_update, learner.sft, cluster.plan, assets.tiny_model
from assets.tiny_model import make_tiny
from cluster.plan_units import model_shape
folder = make_tiny({str(tmp_path / "tiny")!r}, family="qwen2-audio")
print("params", model_shape(str(folder)).params)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split("params")[-1]) > 0


def test_the_command_line_and_the_planner_start_without_torch():
    """Help, data checks, reward scoring and planning load no model code: the command line and
    the run's config import without torch (the family adapters load on first use)."""
    script = """
import sys
sys.modules["torch"] = None  # an import of torch fails
import cli.main, cluster.config, cluster.plan, cluster.report, reward.rewards, rollout.datasets
from families import FAMILY_NAMES, family_named
print(sorted(FAMILY_NAMES))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "qwen2-audio" in proc.stdout


def test_no_script_shadows_a_package():
    """bench/ scripts run as files, with bench/ first on sys.path: a bench/rollout.py would hide the
    rollout package from everything they import."""
    scripts = {path.stem for path in (ROOT / "bench").glob("*.py")}
    assert not scripts & PROJECT, sorted(scripts & PROJECT)


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_no_build_output_is_tracked():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    built = [f for f in tracked.splitlines() if f.endswith((".so", ".o", ".ninja", ".pyc")) or "/build/" in f]
    assert not built, built
