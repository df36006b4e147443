"""`audio-grpo` command line: one entry point, one subcommand per job (`cli.commands` runs them).

The command line sits above every other folder: it reads the run's config, builds what the
embedded default needs (`assets/`), and starts training (`cluster/`) or serving (`deploy/`).
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cli import commands, offline
from families import FAMILY_NAMES
from rollout.vllm_engine import Dtype

DTYPES = list(typing.get_args(Dtype))

Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtype", default=None, choices=DTYPES, help="vLLM dtype (default: the run's, else EngineConfig's)"
    )
    p.add_argument("--max-model-len", type=int, default=None, help="default: the run's, else EngineConfig's")


def _make_tiny_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", help="folder to create (must not exist or be empty)")
    p.add_argument(
        "--size",
        choices=["tiny", "small", "medium"],
        default="tiny",
        help="tiny: ~0.6M parameters (tests); small: ~33M, medium: ~100M (benchmarks)",
    )
    p.add_argument("--seed", type=int, default=0, help="same seed, same files")
    p.add_argument(
        "--family",
        choices=[*FAMILY_NAMES, "clap"],
        default="qwen2-audio",
        help="the model family's architecture, processor and chat template; clap: the tiny reward "
        "model, trained briefly on synthetic captions (--data: on a caption file instead)",
    )
    p.add_argument("--data", default=None, help="clap only: caption data to train it on")


def _retrieval_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a CLAP folder (transformers' ClapModel)")
    p.add_argument("--data", required=True, help="caption data: Clotho CSV, AudioCaps CSV or JSON lines")
    p.add_argument(
        "--audio-root", default=None, help="where audio paths resolve (default: the file's folder)"
    )
    p.add_argument("--max-items", type=int, default=0, help="the first N clips only (0 = all)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _task_arg(p: argparse.ArgumentParser, help_text: str) -> None:
    """`--task`: the kinds of item `rollout.question.Task` names, multiple choice by default."""
    from rollout.question import Task

    p.add_argument("--task", choices=list(typing.get_args(Task)), default="choice", help=help_text)


def _make_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", help="folder for train.jsonl, test.jsonl, test-mmau.json, audio/")
    p.add_argument("--n", type=int, required=True, help="number of items, train and test together")
    p.add_argument("--seed", type=int, default=0)
    _task_arg(p, "multiple-choice questions, or clips with reference captions (caption JSON lines)")
    p.add_argument(
        "--tasks", default="", help="comma-separated subset of pitch,compare,count,timbre,loudness"
    )
    p.add_argument("--test-fraction", type=float, default=0.125)
    p.add_argument(
        "--ood",
        action="store_true",
        help="also an out-of-distribution test split (other wordings and sound ranges): test-ood*.json",
    )


def _check_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="AVQA JSON lines or an MMAU JSON list (told apart by content)")
    p.add_argument(
        "--audio-root", default=None, help="where audio paths resolve (default: the file's folder)"
    )
    p.add_argument("--strict", action="store_true", help="exit 2 if any row is invalid")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _reward_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--thinking", action="store_true", help="format = <think>..</think><answer>..</answer>")
    p.add_argument(
        "--rule",
        choices=["r1aqa", "exact"],
        default="r1aqa",
        help="accuracy: R1-AQA's (math-verify's symbolic check, then the tag match) or the tag match alone",
    )
    _task_arg(p, 'choice: rows {"response", "answer"}; caption: {"response", "references"} (CIDEr-D)')
    p.add_argument(
        "--corpus", default="", help="caption data file whose references make CIDEr-D's statistics"
    )


def _score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("predictions", help="MMAU-format JSON list whose items carry model_output")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="tiny-cpu", help="preset name (tiny-cpu, r1-aqa) or a YAML file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")


def _run_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--max-steps", type=int, default=None, help="shorthand for --set train.max_steps=N")
    p.add_argument("--run-dir", default=None, help="default: runs/<name>-<time>")
    p.add_argument(
        "--resume", default=None, metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _train_args(p: argparse.ArgumentParser) -> None:
    _run_args(p)
    p.add_argument(
        "--serve",
        action="store_true",
        help="serve the current policy over HTTP while training (a Ray actor, one more receiver of "
        "each weight update); its address is printed and written to RUN_DIR/endpoint.json",
    )
    p.add_argument("--serve-host", default=None, help="default: serve.host (127.0.0.1)")
    p.add_argument(
        "--serve-port",
        type=int,
        default=None,
        help="default: serve.port (8000); 0: any free port (see RUN_DIR/endpoint.json)",
    )
    p.add_argument("--token", default=None, help="bearer token for the endpoint (or $AUDIO_GRPO_TOKEN)")


def _plan_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--nodes", type=int, default=None, help="default: hardware.nodes")
    p.add_argument("--gpus-per-node", type=int, default=None, help="default: hardware.gpus_per_node")
    p.add_argument("--gpu-gib", type=float, default=None, help="GPU memory; default: hardware.gpu_gib")
    p.add_argument(
        "--host-gib", type=float, default=None, help="host memory per node; default: hardware.host_gib"
    )


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories of train or sft")
    p.add_argument("--out", default="report", help="where report.md and report.png go")


def _evaluation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="an HF-format Qwen2-Audio folder")
    p.add_argument(
        "--data",
        required=True,
        help="MMAU JSON, AVQA JSON lines, or caption data (Clotho/AudioCaps CSV, JSON lines)",
    )
    p.add_argument("--audio-root", default=None, help="where audio_id paths resolve")
    p.add_argument("--out", required=True, help="predictions, MMAU format with model_output")
    p.add_argument("--max-items", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=None, help="default: sampling.max_tokens's default")
    _engine_args(p)
    p.add_argument("--thinking", action="store_true", help="ask for <think>..</think> first")
    p.add_argument("--strict", action="store_true")
    p.add_argument("--json", action="store_true")


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="serve this HF checkpoint folder")
    p.add_argument(
        "--run-dir",
        default=None,
        help="follow a training run: serve its newest checkpoint (version 0: its starting model)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--token", default=None, help="bearer token for every route but /healthz (or $AUDIO_GRPO_TOKEN)"
    )
    _engine_args(p)
    p.add_argument("--thinking", action="store_true", help="with --model: ask for <think>..</think> first")
    p.add_argument("--max-body-mb", type=float, default=5.0, help="request body limit")
    p.add_argument("--max-audio-seconds", type=float, default=30.0, help="longer clips get a 413")
    p.add_argument("--poll-s", type=float, default=2.0, help="checkpoint polling interval with --run-dir")


def subcommands() -> list[Command]:
    """(name, help, argument builder, handler) for every subcommand."""
    return [
        ("serve", "answer audio questions over HTTP with the current policy", _serve_args, commands.serve),
        ("train", "run GRPO training (Ray + vLLM + DeepSpeed)", _train_args, commands.train),
        (
            "sft",
            "supervised fine-tuning baseline on the same data, prompt and evaluation (Ray + DeepSpeed)",
            _run_args,
            commands.sft,
        ),
        (
            "prepare",
            "build the tiny model and synthetic data a config asks for (train does this first)",
            _config_args,
            commands.prepare,
        ),
        (
            "plan",
            "each actor's memory against the hardware, and whether the config fits (train checks it too)",
            _plan_args,
            commands.plan,
        ),
        ("report", "runs side by side: one Markdown table and one picture", _report_args, commands.report),
        (
            "eval",
            "evaluate a checkpoint on held-out data with vLLM (MMAU metric or captions)",
            _evaluation_args,
            commands.evaluate,
        ),
        (
            "reward",
            "score JSON lines {response, answer} (or, --task caption, {response, references}) from stdin",
            _reward_args,
            offline.reward,
        ),
        ("score", "MMAU's official metric over a predictions file", _score_args, offline.score),
        (
            "retrieval-eval",
            "text-to-audio and audio-to-text R@1/5/10 and mAP@10 of a reward model on caption data",
            _retrieval_eval_args,
            offline.retrieval_eval,
        ),
        (
            "make-tiny",
            "build a tiny checkpoint of a family (or the tiny CLAP) offline, random weights",
            _make_tiny_args,
            offline.make_tiny,
        ),
        (
            "make-data",
            "write a synthetic audio QA set (AVQA JSON lines + WAVs)",
            _make_data_args,
            offline.make_data,
        ),
        (
            "check-data",
            "validate a data set and report the rows that would be skipped",
            _check_data_args,
            offline.check_data,
        ),
    ]


def cli_command(*args: str) -> list[str]:
    """`audio-grpo ARGS` as a process command line (this interpreter, `python -m cli`)."""
    return [sys.executable, "-m", "cli", *args]


def train_command(
    run_dir: str | Path,
    *,
    config: str = "tiny-cpu",
    max_steps: int | None = None,
    overrides: dict[str, Any] | None = None,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The `audio-grpo train` command line, for benchmarks and tests that run it as a process."""
    command = cli_command("train", "--config", config, "--run-dir", str(run_dir))
    if max_steps is not None:
        command += ["--max-steps", str(max_steps)]
    for key, value in (overrides or {}).items():
        command += ["--set", f"{key}={json.dumps(value) if isinstance(value, bool) else value}"]
    return command + list(extra)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audio-grpo", description="GRPO post-training for Qwen2-Audio.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, add_arguments, run in subcommands():
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
