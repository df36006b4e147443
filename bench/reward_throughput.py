"""Reward scoring throughput: responses per second for the `exact` and `r1aqa` accuracy rules.

    python bench/reward_throughput.py [--responses 4096] [--out bench/results/reward_throughput.json]

One process, as the reward actor runs (`RewardScorer.score` on the main thread), on random
responses to multiple-choice questions (words, numbers, time ranges; right and wrong answers,
tag case, quotes, missing tags). `distinct`: every response new (the cache never hits); `grouped`:
8 completions per question drawn from 3 distinct texts, as a policy that has settled on its
answers writes them. One 7B step scores 16 x 8 = 128 responses.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reward.rewards import RewardScorer, symbolic_match  # noqa: E402

POOLS = [
    ["Man", "Woman", "Child", "Nobody"],
    ["6.40 - 8.00", "4.80 - 7.20", "0.00 - 1.60", "14.40 - 16.00"],
    ["2", "3", "4", "5"],
    ["Major 7th chord", "minor chord", "Dominant 7th chord", "diminished"],
]


def response(rng: random.Random, choices: list[str], answer: str, salt: int) -> str:
    said = rng.choice([answer, answer, rng.choice(choices), answer.lower()])
    tag = rng.choice(["<answer>{}</answer>", "<ANSWER>{}</ANSWER>", "<answer>'{}'</answer>", "<answer>{}"])
    # A salt in letters (digits would give math-verify another number to read).
    return tag.format(said) + " <!-- " + "".join(chr(97 + int(d)) for d in str(salt)) + " -->"


def batch(n: int, grouped: bool, seed: int) -> tuple[list[str], list[str]]:
    rng, responses, answers = random.Random(seed), [], []
    while len(responses) < n:
        choices = rng.choice(POOLS)
        answer = rng.choice(choices)
        texts = [response(rng, choices, answer, len(responses)) for _ in range(3)]  # this question's
        for _ in range(8):
            responses.append(
                texts[rng.randrange(3)] if grouped else response(rng, choices, answer, len(responses))
            )
            answers.append(answer)
    return responses[:n], answers[:n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--responses", type=int, default=4096)
    parser.add_argument("--out", default="bench/results/reward_throughput.json")
    args = parser.parse_args(argv)
    RewardScorer().score(*batch(64, False, 99))  # import math-verify and sympy before timing
    rows = []
    print(f"{'rule':6} {'batch':9} {'responses/s':>12} {'ms per 128':>11}")
    for rule in ("exact", "r1aqa"):
        for grouped in (False, True):
            symbolic_match.cache_clear()
            responses, answers = batch(args.responses, grouped, seed=1)
            started = time.perf_counter()
            RewardScorer(rule=rule).score(responses, answers)
            rate = len(responses) / (time.perf_counter() - started)
            kind = "grouped" if grouped else "distinct"
            print(f"{rule:6} {kind:9} {rate:12.0f} {128 / rate * 1000:11.1f}")
            rows.append({"rule": rule, "batch": kind, "responses_per_s": rate})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
