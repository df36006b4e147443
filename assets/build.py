"""Build what a configuration asks for and does not find: the synthetic data set and the tiny model
(with its format warm start). Built once under the given paths, then reused by every run; a lock
keeps two jobs started together from building the same folder twice. The CLI calls these before a
run starts (`audio-grpo prepare`, and `train` itself): the service never builds anything."""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

Log = Callable[[str], None]


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure_data(
    train: Path, evaluation: Path, items: int, tasks: list[str] | None, seed: int, log: Log = print
) -> None:
    """Write a synthetic set of `items` questions next to `train` unless both files exist (`tasks`
    ["caption"]: the caption set of `assets/synthetic_captions.py`)."""
    from assets.synthetic import make_dataset
    from assets.synthetic_captions import make_caption_dataset

    if train.exists() and evaluation.exists():
        return
    if not items:
        missing = [str(p) for p in (train, evaluation) if not p.exists()]
        raise FileNotFoundError(f"data file(s) not found: {', '.join(missing)}")
    with _lock(train.parent.parent / ".data.lock"):
        if train.exists() and evaluation.exists():
            return
        if tasks == ["caption"]:
            log(f"building {items} synthetic captioned clips in {train.parent} ...")
            make_caption_dataset(train.parent, n=items, seed=seed)
            return
        log(f"building {items} synthetic audio questions in {train.parent} ...")
        make_dataset(train.parent, n=items, seed=seed, tasks=tasks)


def ensure_model(
    target: Path,
    size: str,
    *,
    warm_start_steps: int,
    train_data: Path,
    audio_root: str | None,
    seed: int,
    thinking: bool = False,
    family: str = "",
    log: Log = print,
) -> None:
    """Build a `size` model of `family` (qwen2-audio if "") at `target` (random weights, then
    `warm_start_steps` of format warm start on `train_data`, in the thinking format with `thinking`)
    unless a model is there already, which must then be of `family` if one is named. `size` ""
    means: never build."""
    if (target / "config.json").exists():
        return _check_family(target, family)
    if not size:
        raise FileNotFoundError(f"model folder not found: {target} (no hub here: give a folder on disk)")
    # Imported only to build: the builders load transformers' model classes (seconds on every run).
    from assets.tiny_model import make_tiny
    from assets.warm_start import format_warm_start
    from rollout.audio import load_audio
    from rollout.datasets import load_questions

    with _lock(target.parent / ".model.lock"):
        if (target / "config.json").exists():
            return
        random_init = target.parent / (target.name + ".random-init")
        shutil.rmtree(random_init, ignore_errors=True)
        family = family or "qwen2-audio"
        log(f"building a {size} {family} in {target} ...")
        make_tiny(random_init, size=size, seed=seed, family=family)
        if warm_start_steps <= 0:
            random_init.rename(target)
            return
        questions, _ = load_questions(train_data, audio_root)
        waves = {q.id: load_audio(q.audio_path) for q in questions}
        form = "<think>..</think> <answer>..</answer>" if thinking else "<answer>..</answer>"
        log(f"format warm start: {warm_start_steps} steps (teaches {form}, not the answer)")
        staging = target.parent / (target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        format_warm_start(
            random_init, questions, waves, staging, steps=warm_start_steps, seed=seed, thinking=thinking
        )
        staging.rename(target)
        shutil.rmtree(random_init, ignore_errors=True)


def ensure_reward_model(target: Path, build: str, train_data: Path, seed: int, log: Log = print) -> None:
    """The tiny CLAP at `target` (`build` "tiny"), trained on `train_data`'s captions, unless a
    model is there already; `build` "": it must exist."""
    if (target / "config.json").exists():
        return
    if build != "tiny":
        raise FileNotFoundError(f"reward model folder not found: {target} (reward.models path; no hub here)")
    from assets.tiny_clap import make_tiny_clap

    with _lock(target.parent / ".model.lock"):
        if not (target / "config.json").exists():
            log(f"building the tiny CLAP in {target}, trained on the captions of {train_data} ...")
            make_tiny_clap(target, seed=seed, data=train_data)


def _check_family(target: Path, family: str) -> None:
    """A named family must be the one the folder's config.json says (its weights decide the class)."""
    from families import adapter_for

    found = adapter_for(target).family
    if family and found != family:
        raise ValueError(
            f"model.family is {family!r} but {target} holds a {found} checkpoint (config.json): "
            f"drop model.family (the checkpoint decides) or point model.path at a {family} model"
        )
