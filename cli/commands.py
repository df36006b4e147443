"""What each `audio-grpo` subcommand that runs the service does (training, SFT, planning, reports,
evaluation, serving; the offline ones are in `cli/offline.py`). Heavy imports (torch, transformers,
vLLM) happen inside each one, so `--help` is instant."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from cli import offline

log = logging.getLogger("audio_grpo")


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")


def _config(args: argparse.Namespace):
    """The run's config: a preset or YAML with --set overrides (train, prepare), or the config.yaml
    a resumed run was started with, plus any overrides."""
    from cluster.config import load_config

    overrides = list(getattr(args, "set", None) or [])
    if getattr(args, "max_steps", None) is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if getattr(args, "serve", False):
        overrides.append("serve.enabled=true")
    for key in ("host", "port"):
        if getattr(args, f"serve_{key}", None) is not None:
            overrides.append(f"serve.{key}={getattr(args, f'serve_{key}')}")
    for key in ("nodes", "gpus_per_node", "gpu_gib", "host_gib"):
        if getattr(args, key, None) is not None:
            overrides.append(f"hardware.{key}={getattr(args, key)}")
    if getattr(args, "resume", None):
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"{saved}: not a run directory")
        return load_config(str(saved), overrides)
    return load_config(args.config, overrides)


def prepare_assets(config) -> None:
    """Build the synthetic data and the tiny model a config asks for and does not find (once)."""
    from assets.build import ensure_data, ensure_model, ensure_reward_model
    from cluster.config import expand_path, sub_seed

    data, model, seed = config.data, config.model, config.train.seed
    train_path = expand_path(data.train)
    tasks = [t for t in data.synthetic_tasks.split(",") if t] or None
    ensure_data(
        train_path,
        expand_path(data.eval),
        data.synthetic_items,
        tasks,
        sub_seed(seed, "data-build"),
        log.info,
    )
    ensure_model(
        expand_path(model.path),
        model.build_if_missing,
        warm_start_steps=model.warm_start_steps,
        train_data=train_path,
        audio_root=data.audio_root or None,
        seed=sub_seed(seed, "model-build"),
        thinking=config.prompt.thinking,
        family=model.family,
        log=log.info,
    )
    for spec in config.reward.models:  # reward models a config asks to build (the tiny CLAP)
        ensure_reward_model(
            expand_path(spec.path), spec.build_if_missing, train_path, sub_seed(seed, "clap"), log.info
        )


def prepare(args: argparse.Namespace) -> int:
    _logging()
    prepare_assets(_config(args))
    print("assets ready")
    return 0


def plan(args: argparse.Namespace) -> int:
    """Print the memory plan; exit status 1 when the config does not fit."""
    from cluster.plan import detect_hardware, make_plan

    config = _config(args)
    result = make_plan(config, detect_hardware(config))
    print(f"config: {args.config}  model: {config.model.path}\n{result.render()}")
    return 0 if result.fits else 1


def report(args: argparse.Namespace) -> int:
    from cluster.report import write_report

    table, picture = write_report(args.run_dirs, args.out)
    print(table.read_text() + f"\nwrote {table} and {picture}")
    return 0


def _token(args: argparse.Namespace, host: str) -> str | None:
    """The endpoint's bearer token (--token, else $AUDIO_GRPO_TOKEN); warns when none guards a
    port beyond loopback."""
    token = getattr(args, "token", None) or os.environ.get("AUDIO_GRPO_TOKEN") or None
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        print(
            "warning: serving beyond loopback without --token: anyone who can reach the port can use it",
            file=sys.stderr,
        )
    return token


def _run_dir(args: argparse.Namespace, config) -> Path:
    return Path(args.resume or args.run_dir or f"runs/{config.name}-{time.strftime('%Y%m%d-%H%M%S')}")


def sft(args: argparse.Namespace) -> int:
    from cluster.sft_driver import train_sft

    _logging()
    config = _config(args)
    run_dir = _run_dir(args, config)
    prepare_assets(config)
    train_sft(config, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"run directory: {summary['run_dir']}\ncheckpoint:    {summary['checkpoint']}")
    return 0


def train(args: argparse.Namespace) -> int:
    from cluster.driver import train as run_training

    _logging()
    config = _config(args)
    run_dir = _run_dir(args, config)
    prepare_assets(config)
    start_endpoint = None
    if config.serve.enabled:
        from cluster.config import expand_path, weight_transfer_backend
        from deploy.live import endpoint_starter

        token = _token(args, config.serve.host)
        run_dir.mkdir(parents=True, exist_ok=True)
        model = str(expand_path(config.model.path))
        start_endpoint = endpoint_starter(config, model, run_dir, token, weight_transfer_backend(config))
    progress = not args.no_progress
    run_training(config, run_dir, resume=bool(args.resume), progress=progress, start_endpoint=start_endpoint)
    summary = json.loads((run_dir / "summary.json").read_text())
    print(
        f"run directory: {summary['run_dir']}\ncheckpoint:    {summary['checkpoint']}\n"
        f"metrics:       {summary['metrics']}\n"
        f"policy versions held (rollout workers{', live endpoint' if config.serve.enabled else ''}): "
        f"{summary['rollout_policy_versions']}"
    )
    return 0


def _engine(args: argparse.Namespace, engine):
    """The engine settings with the command line's --dtype / --max-model-len applied."""
    changes = {
        k: v for k, v in (("dtype", args.dtype), ("max_model_len", args.max_model_len)) if v is not None
    }
    return replace(engine, **changes)


def evaluate(args: argparse.Namespace) -> int:
    from cluster.evaluation import evaluate as run_evaluation
    from rollout.datasets import load_questions
    from rollout.prompt import PromptConfig
    from rollout.sampling import SamplingConfig
    from rollout.vllm_engine import EngineConfig, RolloutWorker

    questions, report = load_questions(
        args.data, args.audio_root, strict=args.strict, allow_duplicate_choices=True
    )
    if report.skipped:
        print(report.summary(max_listed=10), file=sys.stderr)
    questions = questions[: args.max_items or None]
    worker = RolloutWorker(args.model, _engine(args, EngineConfig()), PromptConfig(thinking=args.thinking))
    sampling = SamplingConfig(max_tokens=args.max_tokens) if args.max_tokens else SamplingConfig()
    scores = run_evaluation(worker, questions, sampling, Path(args.out))
    print(offline.scores_text(scores, args.json))
    print(f"predictions: {args.out}", file=sys.stderr)
    return 0


def _run_config(run_dir: Path, timeout_s: float = 3600.0):
    """The config.yaml a training run wrote first (waited for: the server may start before the run)."""
    from cluster.config import load_config

    path, deadline = run_dir / "config.yaml", time.time() + timeout_s
    while not path.is_file():
        if (run_dir / "checkpoints").is_dir():
            raise FileNotFoundError(
                f"{run_dir} has checkpoints but no config.yaml: not a training run folder"
            )
        if time.time() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s:.0f} s: is a run writing there?")
        log.info("waiting for %s ...", path)
        time.sleep(2)
    return load_config(str(path))


def serve(args: argparse.Namespace) -> int:

    import uvicorn

    from deploy.policy import PolicyEngine
    from deploy.server import ServeLimits, create_app
    from rollout.prompt import PromptConfig
    from rollout.sampling import SamplingConfig
    from rollout.vllm_engine import EngineConfig

    _logging()
    if (args.model is None) == (args.run_dir is None):
        raise ValueError("give exactly one of --model DIR or --run-dir RUN_DIR")
    token = _token(args, args.host)
    if args.run_dir:  # answer exactly as the run trains: its engine, prompt style and sampling
        if args.thinking:
            raise ValueError("--thinking is for --model: with --run-dir the run's prompt.thinking applies")
        from cluster.config import expand_path

        run = _run_config(Path(args.run_dir))
        engine, prompt, sampling = run.rollout.engine, run.prompt, run.sampling
        run_start_model = str(expand_path(run.model.path))
    else:
        engine, prompt, sampling = EngineConfig(), PromptConfig(thinking=args.thinking), SamplingConfig()
        run_start_model = None
    limits = ServeLimits(
        max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_audio_seconds=args.max_audio_seconds
    )
    app = create_app(
        lambda: PolicyEngine(
            args.model,
            args.run_dir,
            engine=_engine(args, engine),
            prompt=prompt,
            sampling=sampling,
            poll_s=args.poll_s,
            run_start_model=run_start_model,
        ),
        limits,
        token,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
