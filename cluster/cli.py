"""`audio-grpo` command line: one entry point, one subcommand per job.

Heavy imports (torch, transformers, vLLM) happen inside each subcommand, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable


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

    return [
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
