"""Regenerate the example data sets in this folder (deterministic, seeded).

    python -P examples/data/make_data.py

addition.jsonl      60 single-digit additions (the embedded model's home turf)
addition_dev.jsonl  20 other single-digit additions, for calibration
two_digit.jsonl     40 two-digit additions and subtractions (harder)
mixed.jsonl         40 items, half easy and half hard, with a "difficulty" field
mcq.jsonl           30 multiple-choice questions with letter answers
tiers.jsonl         90 held-out items in three tiers of 30, with a "difficulty" field:
                    easy (copy a number: "What is the number 42?"), medium
                    (single-digit additions) and hard (two-digit additions and
                    subtractions); for per-input allocation
tiers_dev.jsonl     120 other items of the same three tiers (40 each), for
                    calibrating a difficulty predictor; disjoint from tiers.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20240611
TIERS_SEED = SEED + 1  # its own generator: the older sets stay as they were
LETTERS = "ABCD"


def single_digit_pairs(rng: random.Random) -> list[tuple[int, int]]:
    pairs = [(a, b) for a in range(10) for b in range(10)]
    rng.shuffle(pairs)
    return pairs


def addition_item(id_: str, a: int, b: int) -> dict:
    return {"id": id_, "question": f"What is {a} + {b}?", "answer": str(a + b)}


def two_digit_items(prefix: str, count: int, rng: random.Random, seen: set[str]) -> list[dict]:
    """`count` two-digit problems whose questions are not in `seen` (which grows)."""
    items: list[dict] = []
    while len(items) < count:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if rng.random() < 0.5:
            question, answer = f"What is {a} + {b}?", a + b
        else:
            a, b = max(a, b), min(a, b)  # keep answers non-negative
            question, answer = f"What is {a} - {b}?", a - b
        if question not in seen:
            seen.add(question)
            items.append({"id": f"{prefix}{len(items):02d}", "question": question,
                          "answer": str(answer)})
    return items


def mcq_item(id_: str, rng: random.Random, index: int) -> dict:
    numbers = rng.sample(range(1, 20), len(LETTERS))
    kind = ("largest", "smallest")[index % 2]
    target = max(numbers) if kind == "largest" else min(numbers)
    # Put the right answer at a balanced position, so "always A" scores 25%.
    answer = LETTERS[index % len(LETTERS)]
    numbers.remove(target)
    numbers.insert(LETTERS.index(answer), target)
    options = " ".join(f"{letter}) {n}" for letter, n in zip(LETTERS, numbers))
    return {"id": id_, "question": f"Which number is {kind}? {options}", "answer": answer}


def copy_item(id_: str, n: int) -> dict:
    return {"id": id_, "question": f"What is the number {n}?", "answer": str(n)}


def tier_sets(seen: set[str]) -> tuple[list[dict], list[dict]]:
    """(held-out, dev): three difficulty tiers each, no question in both (nor
    in `seen`, the older two-digit sets)."""
    rng = random.Random(TIERS_SEED)
    numbers = list(range(1, 100))
    rng.shuffle(numbers)
    pairs = single_digit_pairs(rng)
    hard = two_digit_items("tier-h", 70, rng, seen)
    sets = []
    for name, lo, hi in (("tier", 0, 30), ("tdev", 30, 70)):
        rows = ([dict(copy_item(f"{name}-e{i:02d}", n), difficulty="easy")
                 for i, n in enumerate(numbers[lo:hi])]
                + [dict(addition_item(f"{name}-m{i:02d}", a, b), difficulty="medium")
                   for i, (a, b) in enumerate(pairs[lo:hi])]
                + [dict(item, id=f"{name}-h{i:02d}", difficulty="hard")
                   for i, item in enumerate(hard[lo:hi])])
        rng.shuffle(rows)
        sets.append(rows)
    return sets[0], sets[1]


def make_all() -> dict[str, list[dict]]:
    rng = random.Random(SEED)
    pairs = single_digit_pairs(rng)
    addition = [addition_item(f"add-{i:03d}", a, b) for i, (a, b) in enumerate(pairs[:60])]
    dev = [addition_item(f"dev-{i:03d}", a, b) for i, (a, b) in enumerate(pairs[60:80])]
    seen: set[str] = set()
    two_digit = two_digit_items("two-0", 40, rng, seen)

    easy = [addition_item(f"mix-e{i:02d}", a, b) for i, (a, b) in enumerate(pairs[80:100])]
    hard = two_digit_items("mix-h", 20, rng, seen)
    mixed = [dict(item, difficulty="easy") for item in easy] + \
            [dict(item, difficulty="hard") for item in hard]
    rng.shuffle(mixed)

    mcq = [mcq_item(f"mcq-{i:03d}", rng, i) for i in range(30)]
    rng.shuffle(mcq)
    tiers, tiers_dev = tier_sets(seen)
    return {"addition.jsonl": addition, "addition_dev.jsonl": dev,
            "two_digit.jsonl": two_digit, "mixed.jsonl": mixed, "mcq.jsonl": mcq,
            "tiers.jsonl": tiers, "tiers_dev.jsonl": tiers_dev}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    for name, rows in make_all().items():
        write_jsonl(HERE / name, rows)
        print(f"wrote {len(rows):3d} rows to {HERE / name}")


if __name__ == "__main__":
    main()
