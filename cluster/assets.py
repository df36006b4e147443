"""Build what a preset asks for and does not find: the tiny model (with its format warm start) and
the synthetic data set. Built once under the cache folder, then reused by every run."""

from __future__ import annotations

import fcntl
import shutil
from contextlib import contextmanager
from pathlib import Path

from cluster.config import RunConfig, expand_path


@contextmanager
def _lock(path: Path):
    """One builder at a time (two jobs started together would otherwise race on the same folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure_data(config: RunConfig, log=print) -> None:
    from cluster.synthetic import make_dataset

    train, evaluation = expand_path(config.data.train), expand_path(config.data.eval)
    if train.exists() and evaluation.exists():
        return
    if not config.data.synthetic_items:
        missing = [str(p) for p in (train, evaluation) if not p.exists()]
        raise FileNotFoundError(f"data file(s) not found: {', '.join(missing)}")
    with _lock(train.parent.parent / ".data.lock"):
        if train.exists() and evaluation.exists():
            return
        log(f"building {config.data.synthetic_items} synthetic audio questions in {train.parent} ...")
        tasks = [t for t in config.data.synthetic_tasks.split(",") if t] or None
        make_dataset(train.parent, n=config.data.synthetic_items, seed=0, tasks=tasks)


def ensure_model(config: RunConfig, log=print) -> None:
    """Build the tiny model and give it the format warm start, if the configured path is missing."""
    from cluster.datasets import load_questions
    from cluster.tiny_model import make_tiny
    from learner.warm_start import format_warm_start
    from rollout.audio import load_audio

    target = expand_path(config.model.path)
    if (target / "config.json").exists():
        return
    if not config.model.build_if_missing:
        raise FileNotFoundError(f"model folder not found: {target} (no hub here: give a folder on disk)")
    with _lock(target.parent / ".model.lock"):
        if (target / "config.json").exists():
            return
        random_init = target.parent / (target.name + ".random-init")
        shutil.rmtree(random_init, ignore_errors=True)
        log(f"building a {config.model.build_if_missing} Qwen2-Audio in {target} ...")
        make_tiny(random_init, size=config.model.build_if_missing, seed=config.train.seed)
        if config.model.warm_start_steps <= 0:
            random_init.rename(target)
            return
        questions, _ = load_questions(expand_path(config.data.train), config.data.audio_root or None)
        waves = {q.id: load_audio(q.audio_path) for q in questions}
        log(
            f"format warm start: {config.model.warm_start_steps} steps "
            "(teaches <answer>..</answer>, not the answer)"
        )
        staging = target.parent / (target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        format_warm_start(
            random_init,
            questions,
            waves,
            staging,
            steps=config.model.warm_start_steps,
            seed=config.train.seed,
        )
        staging.rename(target)
        shutil.rmtree(random_init, ignore_errors=True)


def ensure_assets(config: RunConfig, log=print) -> None:
    ensure_data(config, log)
    ensure_model(config, log)
