"""The house rules: each folder depends only downward, and no build output is in git."""

from __future__ import annotations

import ast
import shutil
import subprocess

import pytest
from helpers import ROOT

PROJECT = {"reward", "families", "rollout", "learner", "cluster", "deploy", "assets", "cli"}
# folder -> the project folders it may import (besides itself). reward has no heavy deps at all.
ALLOWED = {
    "reward": set(),
    "families": set(),
    "rollout": {"reward", "families"},
    "learner": {"rollout", "reward", "families"},
    "cluster": {"learner", "rollout", "reward", "families"},
    "deploy": {"cluster", "learner", "rollout", "reward", "families"},
    "assets": {"learner", "rollout", "reward", "families"},
    "cli": PROJECT,
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
