"""Checkpoints: a Hugging Face folder plus the full training state, written atomically.

Layout of `.../checkpoints/step-N/`:
    model.safetensors, config.json, generation_config.json, tokenizer/processor files  (HF, vLLM)
    training_state/   DeepSpeed's engine state (module, optimizer, scheduler) and per-rank RNG
    checkpoint.json   step, the caller's state (data position, ...), the reference model's path

Every rank writes into `step-N.partial/`; once all are done, rank 0 renames it to `step-N/`. A
crash at any point leaves at most a `.partial` folder, which `latest_checkpoint` ignores and the
next save replaces: a folder named `step-N` is always complete.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learner.hf_format import save_hf_folder

STATE_DIR, TAG, MANIFEST = "training_state", "state", "checkpoint.json"


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(learner, directory: str | Path, state: dict[str, Any] | None = None) -> Path:
    """Collective: every rank calls it. Returns the final folder."""
    final = Path(directory)
    partial = final.with_name(final.name + ".partial")
    if learner.rank == 0:
        shutil.rmtree(partial, ignore_errors=True)  # a crashed earlier attempt
        partial.mkdir(parents=True)
    _barrier()
    # The HF folder once, by rank 0; under ZeRO-3 every rank takes part in gathering one group of
    # weights at a time (never the whole model at once).
    weights = learner.gathered_weights()
    if learner.rank == 0:
        save_hf_folder(learner.model, learner.processor, partial, weights)
    else:
        for _ in weights:
            pass
    learner.engine.save_checkpoint(str(partial / STATE_DIR), tag=TAG, save_latest=False)
    torch.save(_rng_state(), partial / STATE_DIR / f"rng_rank{learner.rank}.pt")
    _barrier()
    if learner.rank == 0:
        manifest = {
            "step": learner.step,
            "reference_model": learner.model_path,
            "world_size": learner.world_size,
            "learner": asdict(learner.config),
            "state": state or {},
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
    _barrier()
    return final


def load_checkpoint(learner, directory: str | Path) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler, step and RNG; return the caller's saved state."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest["world_size"] != learner.world_size:
        raise ValueError(
            f"{directory} was written by {manifest['world_size']} learner ranks, "
            f"this run has {learner.world_size}"
        )
    _check_schedule(manifest, learner, directory)
    path, _ = learner.engine.load_checkpoint(
        str(directory / STATE_DIR), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise FileNotFoundError(f"{directory / STATE_DIR}: no DeepSpeed state to resume from")
    _set_rng_state(torch.load(directory / STATE_DIR / f"rng_rank{learner.rank}.pt", weights_only=False))
    learner.step = manifest["step"]
    return manifest["state"]


def _check_schedule(manifest: dict[str, Any], learner, directory: Path) -> None:
    """The scheduler's state is a step count: resuming it on a schedule of another length would jump
    the learning rate, so a decaying schedule must keep its length (e.g. when max_steps grows)."""
    saved = manifest.get("learner", {}).get("optimizer", {}).get("schedule_steps")
    optimizer = learner.config.optimizer
    if optimizer.lr_schedule != "constant" and saved is not None and saved != optimizer.schedule_steps:
        raise ValueError(
            f"{directory} was trained on a {saved}-step {optimizer.lr_schedule} schedule, this run's has "
            f"{optimizer.schedule_steps} steps: resume with --set learner.optimizer.schedule_steps={saved}"
        )


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a complete checkpoint (no {MANIFEST})")
    return json.loads(path.read_text())


def complete_checkpoints(root: str | Path) -> list[Path]:
    """The complete `step-N` folders under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    done = [
        p
        for p in root.glob("step-*")
        if p.is_dir()
        and not p.name.endswith(".partial")
        and (p / MANIFEST).is_file()
        and p.name[5:].isdigit()
    ]
    return sorted(done, key=lambda p: int(p.name[5:]))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete `step-N` folder with the highest N under `root`, or None."""
    done = complete_checkpoints(root)
    return done[-1] if done else None


def prune_checkpoints(root: str | Path, keep: int, scores: dict[int, float] | None = None) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints (0 keeps all) and the best one by
    held-out `scores` ({step: accuracy}; the later step on a tie); returns what went. Only after a
    newer one is complete, so a resumable checkpoint always remains."""
    done = complete_checkpoints(root)
    scored = [
        (scores[int(p.name[5:])], int(p.name[5:]), p) for p in done if int(p.name[5:]) in (scores or {})
    ]
    best = max(scored)[2] if scored else None
    gone = [p for p in done[:-keep] if p != best] if keep > 0 else []
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
    return gone
