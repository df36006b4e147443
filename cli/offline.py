"""The `audio-grpo` subcommands that need no cluster or engine of the policy: building tiny models
and synthetic data, checking data, rewards and metrics from the command line, and retrieval
evaluation of a reward model. Heavy imports happen inside each one, so `--help` is instant."""

from __future__ import annotations

import argparse
import json
import sys


def make_tiny(args: argparse.Namespace) -> int:
    from assets.tiny_model import SIZES, make_tiny

    if args.family == "clap":
        from assets.tiny_clap import make_tiny_clap

        out = make_tiny_clap(args.out_dir, seed=args.seed, data=args.data)
        print(f"wrote the tiny CLAP (trained contrastively, seed {args.seed}) to {out}")
        return 0
    if args.data:
        raise SystemExit("--data is for --family clap (the policy families are built untrained)")

    out = make_tiny(args.out_dir, size=args.size, seed=args.seed, family=args.family)
    print(
        f"wrote a {args.size} {args.family} ({SIZES[args.size]['text']['num_hidden_layers']} decoder layers, "
        f"random weights, seed {args.seed}) to {out}"
    )
    return 0


def make_data(args: argparse.Namespace) -> int:
    from assets.synthetic import make_dataset
    from assets.synthetic_captions import make_caption_dataset

    if args.task == "caption":
        if args.tasks or args.ood:
            raise SystemExit("--tasks and --ood are for --task choice (the caption set has one kind of clip)")
        paths = make_caption_dataset(args.out_dir, n=args.n, seed=args.seed, test_fraction=args.test_fraction)
    else:
        tasks = args.tasks.split(",") if args.tasks else None
        paths = make_dataset(
            args.out_dir,
            n=args.n,
            seed=args.seed,
            tasks=tasks,
            test_fraction=args.test_fraction,
            ood=args.ood,
        )
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def check_data(args: argparse.Namespace) -> int:
    from rollout.datasets import DataValidationError, load_questions

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


def caption_corpus(path: str, audio_root: str | None = None):
    """CIDEr-D's document frequencies from a caption data file (any supported form; audio unread)."""
    from reward.captions import CiderD
    from rollout.datasets import load_questions

    items, _ = load_questions(path, audio_root, check_audio=False)
    captioned = [q.references for q in items if q.task == "caption"]
    if not captioned:
        raise SystemExit(f"{path}: no caption rows (a corpus needs each clip's references)")
    return CiderD(captioned)


def _reward_row(row, caption: bool) -> tuple[str, str | list[str]]:
    """(response, target) of one stdin row, or ValueError saying what was expected."""
    key, kind = ("references", list) if caption else ("answer", str)
    if (
        not isinstance(row, dict)
        or not isinstance(row.get("response"), str)
        or not isinstance(row.get(key), kind)
    ):
        raise ValueError(f'expected {{"response": str, "{key}": {kind.__name__}}}')
    return row["response"], row[key]


def reward(args: argparse.Namespace) -> int:
    from reward.rewards import score_response

    caption = args.task == "caption"
    if caption and not args.corpus:
        raise SystemExit(
            "--task caption needs --corpus FILE (its references make CIDEr-D's document frequency)"
        )
    cider = caption_corpus(args.corpus) if caption else None
    for number, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            response, target = _reward_row(json.loads(line), caption)
            score = score_response(response, target, thinking=args.thinking, rule=args.rule, cider=cider)
            out = {"cider_d": score.cider_d} if caption else {"accuracy": score.accuracy}
            out["format"] = score.format
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            out = {"error": f"line {number}: {err}"}
        print(json.dumps(out), flush=True)
    return 0


def retrieval_eval(args: argparse.Namespace) -> int:
    from reward.retrieval import chance_level
    from reward_models.clap import ClapReward
    from rollout.audio import load_audio
    from rollout.datasets import load_questions

    items, report = load_questions(args.data, args.audio_root)
    if report.skipped:
        print(report.summary(max_listed=10), file=sys.stderr)
    items = [q for q in items if q.references][: args.max_items or None]
    if len(items) < 2:
        raise SystemExit(f"{args.data}: retrieval needs at least 2 captioned clips, found {len(items)}")
    model = ClapReward(args.model, device=args.device)
    metrics = model.retrieval([load_audio(q.audio_path) for q in items], [q.references for q in items])
    per_clip = sum(len(q.references) for q in items) / len(items)
    chance = chance_level(len(items), per_clip)
    if args.json:
        print(json.dumps({"clips": len(items), "captions": round(per_clip * len(items)), **metrics,
                          "chance": chance}))  # fmt: skip
        return 0
    print(f"{len(items)} clips, {per_clip:.1f} captions each; percent (chance in brackets)")
    for direction, name in (("t2a", "text to audio"), ("a2t", "audio to text")):
        cells = [
            f"R@{k} {metrics[f'{direction}_R{k}']:5.1f} ({chance[f'{direction}_R{k}']:.1f})"
            for k in (1, 5, 10)
        ]
        print(f"{name:<14} " + "  ".join(cells) + f"  mAP@10 {metrics[f'{direction}_mAP10']:5.1f}")
    return 0


def score(args: argparse.Namespace) -> int:
    from reward.held_out import held_out_scores

    with open(args.predictions, encoding="utf-8") as handle:
        items = json.load(handle)
    if not isinstance(items, list):
        raise ValueError(f"{args.predictions}: expected a JSON list of MMAU items (or caption items)")
    scores = held_out_scores(items)
    print(scores_text(scores, args.json))
    if scores["missing_predictions"]:
        print(
            f"{scores['missing_predictions']} items have no model_output/model_prediction "
            f"(first: {scores['missing_ids'][:5]}); counted as wrong",
            file=sys.stderr,
        )
    return 0


def scores_text(scores: dict, as_json: bool) -> str:
    from reward.held_out import format_held_out

    return (
        json.dumps({k: v for k, v in scores.items() if k != "missing_ids"})
        if as_json
        else format_held_out(scores)
    )
