"""`audio-grpo` command line: one entry point, one subcommand per job.

Heavy imports (torch, transformers, vLLM) happen inside each subcommand, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _make_tiny(args: argparse.Namespace) -> int:
    from cluster.tiny_model import SIZES, make_tiny

    out = make_tiny(args.out_dir, size=args.size, seed=args.seed)
    print(
        f"wrote a {args.size} Qwen2-Audio ({SIZES[args.size]['text']['num_hidden_layers']} decoder layers, "
        f"random weights, seed {args.seed}) to {out}"
    )
    return 0


def _make_data(args: argparse.Namespace) -> int:
    from cluster.synthetic import make_dataset

    tasks = args.tasks.split(",") if args.tasks else None
    paths = make_dataset(
        args.out_dir, n=args.n, seed=args.seed, tasks=tasks, test_fraction=args.test_fraction
    )
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from cluster.datasets import DataValidationError, load_questions

    def progress(done: int, total: int) -> None:
        if done == total or done % 200 == 0:
            print(f"\rchecking audio {done}/{total}", end="\n" if done == total else "", file=sys.stderr)

    try:
        questions, report = load_questions(args.data, args.audio_root, strict=args.strict, progress=progress)
    except DataValidationError as err:
        print(err.report.summary(), file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.summary())
    return 0


def _reward(args: argparse.Namespace) -> int:
    from reward.rewards import RewardWeights, score_response

    weights = RewardWeights(thinking=args.thinking)
    for number, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if (
                not isinstance(row, dict)
                or not isinstance(row.get("response"), str)
                or not isinstance(row.get("answer"), str)
            ):
                raise ValueError('expected {"response": str, "answer": str}')
            score = score_response(row["response"], row["answer"], weights)
            out = {"accuracy": score.accuracy, "format": score.format}
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            out = {"error": f"line {number}: {err}"}
        print(json.dumps(out), flush=True)
    return 0


def _score(args: argparse.Namespace) -> int:
    from reward.mmau import format_scores, mmau_scores

    with open(args.predictions, encoding="utf-8") as handle:
        items = json.load(handle)
    if not isinstance(items, list):
        raise ValueError(f"{args.predictions}: expected a JSON list of MMAU items")
    scores = mmau_scores(items)
    if args.json:
        print(json.dumps({k: v for k, v in scores.items() if k != "missing_ids"}))
    else:
        print(format_scores(scores))
    if scores["missing_predictions"]:
        print(
            f"{scores['missing_predictions']} items have no model_output/model_prediction "
            f"(first: {scores['missing_ids'][:5]}); counted as wrong",
            file=sys.stderr,
        )
    return 0


def _train(args: argparse.Namespace) -> int:
    import logging
    import time

    import yaml

    from cluster.config import config_from_dict, load_config
    from cluster.driver import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = list(args.set or [])
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.resume:
        run_dir = Path(args.resume)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"{saved}: not a run directory")
        config = config_from_dict(yaml.safe_load(saved.read_text()))
        if overrides:
            import tempfile

            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tmp:
                tmp.write(saved.read_text())
            config = load_config(tmp.name, overrides)
    else:
        config = load_config(args.config, overrides)
        run_dir = Path(args.run_dir or f"runs/{config.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    train(config, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    summary = json.loads((run_dir / "summary.json").read_text())
    print(
        f"run directory: {summary['run_dir']}\ncheckpoint:    {summary['checkpoint']}\n"
        f"metrics:       {summary['metrics']}\n"
        f"rollout workers' policy versions: {summary['rollout_policy_versions']}"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from cluster.config import RunConfig
    from cluster.datasets import load_questions
    from cluster.driver import evaluate
    from reward.mmau import format_scores
    from rollout.sampling import SamplingConfig
    from rollout.vllm_engine import EngineConfig, RolloutWorker

    questions, report = load_questions(
        args.data, args.audio_root, strict=args.strict, allow_duplicate_choices=True
    )
    if report.skipped:
        print(report.summary(max_listed=10), file=sys.stderr)
    questions = questions[: args.max_items or None]
    worker = RolloutWorker(
        args.model, EngineConfig(dtype=args.dtype, max_model_len=args.max_model_len), thinking=args.thinking
    )
    config = RunConfig()
    config.rollout.sampling = replace(SamplingConfig(), max_tokens=args.max_tokens)
    scores = evaluate(worker, questions, config, Path(args.out))
    print(
        json.dumps({k: v for k, v in scores.items() if k != "missing_ids"})
        if args.json
        else format_scores(scores)
    )
    print(f"predictions: {args.out}", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import logging
    import os

    import uvicorn

    from deploy.policy import PolicyEngine
    from deploy.server import ServeLimits, create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if (args.model is None) == (args.run_dir is None):
        raise ValueError("give exactly one of --model DIR or --run-dir RUN_DIR")
    token = args.token or os.environ.get("AUDIO_GRPO_TOKEN") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        print(
            "warning: serving beyond loopback without --token: anyone who can reach the port can use it",
            file=sys.stderr,
        )
    limits = ServeLimits(
        max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_audio_seconds=args.max_audio_seconds
    )
    app = create_app(
        lambda: PolicyEngine(
            args.model, args.run_dir, dtype=args.dtype, max_model_len=args.max_model_len, poll_s=args.poll_s
        ),
        limits,
        token,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _commands() -> list[Command]:
    def make_tiny(p: argparse.ArgumentParser) -> None:
        p.add_argument("out_dir", help="folder to create (must not exist or be empty)")
        p.add_argument(
            "--size",
            choices=["tiny", "small"],
            default="tiny",
            help="tiny: ~0.6M parameters (tests); small: ~33M (benchmarks)",
        )
        p.add_argument("--seed", type=int, default=0, help="same seed, same files")

    def make_data(p: argparse.ArgumentParser) -> None:
        p.add_argument("out_dir", help="folder for train.jsonl, test.jsonl, test-mmau.json, audio/")
        p.add_argument("--n", type=int, required=True, help="number of items, train and test together")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument(
            "--tasks", default="", help="comma-separated subset of pitch,compare,count,timbre,loudness"
        )
        p.add_argument("--test-fraction", type=float, default=0.125)

    def check_data(p: argparse.ArgumentParser) -> None:
        p.add_argument("data", help="AVQA JSON lines (.jsonl) or MMAU JSON (.json)")
        p.add_argument(
            "--audio-root", default=None, help="where audio paths resolve (default: the file's folder)"
        )
        p.add_argument("--strict", action="store_true", help="exit 2 if any row is invalid")
        p.add_argument("--json", action="store_true", help="print the report as JSON")

    def reward(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--thinking", action="store_true", help="format = <think>..</think><answer>..</answer>"
        )

    def score(p: argparse.ArgumentParser) -> None:
        p.add_argument("predictions", help="MMAU-format JSON list whose items carry model_output")
        p.add_argument("--json", action="store_true", help="print one JSON object")

    def train(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default="tiny-cpu", help="preset name (tiny-cpu, r1-aqa) or a YAML file")
        p.add_argument("--max-steps", type=int, default=None, help="shorthand for --set train.max_steps=N")
        p.add_argument("--run-dir", default=None, help="default: runs/<name>-<time>")
        p.add_argument(
            "--resume", default=None, metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint"
        )
        p.add_argument(
            "--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)"
        )
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    def evaluation(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, help="an HF-format Qwen2-Audio folder")
        p.add_argument("--data", required=True, help="MMAU-format JSON (or AVQA JSON lines)")
        p.add_argument("--audio-root", default=None, help="where audio_id paths resolve")
        p.add_argument("--out", required=True, help="predictions, MMAU format with model_output")
        p.add_argument("--max-items", type=int, default=0)
        p.add_argument("--max-tokens", type=int, default=256)
        p.add_argument("--max-model-len", type=int, default=4096)
        p.add_argument("--dtype", default="bfloat16")
        p.add_argument("--thinking", action="store_true")
        p.add_argument("--strict", action="store_true")
        p.add_argument("--json", action="store_true")

    def serve(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default=None, help="serve this HF checkpoint folder")
        p.add_argument("--run-dir", default=None, help="follow a training run: serve its newest checkpoint")
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
        p.add_argument(
            "--token", default=None, help="bearer token for every route but /healthz (or $AUDIO_GRPO_TOKEN)"
        )
        p.add_argument("--dtype", default="bfloat16")
        p.add_argument("--max-model-len", type=int, default=4096)
        p.add_argument("--max-body-mb", type=float, default=5.0, help="request body limit")
        p.add_argument("--max-audio-seconds", type=float, default=30.0, help="longer clips get a 413")
        p.add_argument("--poll-s", type=float, default=2.0, help="checkpoint polling interval with --run-dir")

    return [
        ("serve", "answer audio questions over HTTP with the current policy", serve, _serve),
        ("train", "run GRPO training (Ray + vLLM + DeepSpeed)", train, _train),
        ("eval", "evaluate a checkpoint on MMAU-format data with vLLM", evaluation, _eval),
        ("reward", "score JSON lines {response, answer} from stdin with R1-AQA's rewards", reward, _reward),
        ("score", "MMAU's official metric over a predictions file", score, _score),
        ("make-tiny", "build a Qwen2-Audio checkpoint with random weights, offline", make_tiny, _make_tiny),
        ("make-data", "write a synthetic audio QA set (AVQA JSON lines + WAVs)", make_data, _make_data),
        (
            "check-data",
            "validate a data set and report the rows that would be skipped",
            check_data,
            _check_data,
        ),
    ]


def train_command(
    run_dir: str | Path,
    *,
    config: str = "tiny-cpu",
    max_steps: int | None = None,
    overrides: dict[str, Any] | None = None,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The `audio-grpo train` command line, for benchmarks and tests that run it as a process."""
    command = [sys.executable, "-m", "cluster.cli", "train", "--config", config, "--run-dir", str(run_dir)]
    if max_steps is not None:
        command += ["--max-steps", str(max_steps)]
    for key, value in (overrides or {}).items():
        command += ["--set", f"{key}={json.dumps(value) if isinstance(value, bool) else value}"]
    return command + list(extra)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audio-grpo", description="GRPO post-training for Qwen2-Audio.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, add_arguments, run in _commands():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (OSError, ValueError) as err:
        print(f"audio-grpo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
