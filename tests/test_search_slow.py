"""A search on the embedded model finds a configuration that beats greedy
decoding on a held-out split (slow: it samples about 1,000 completions).

The data are the easy and medium tiers of tiers_dev.jsonl ("What is the
number 42?", "What is 5 + 8?"), split in half by `--holdout`: the search
sees one half, the winner and greedy decoding are scored on the other. On
these, greedy decoding miscopies numbers that a vote over a few samples at
a low temperature gets right.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ttsc.cli import main

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data"
PER_TIER = 40

SPACE = '''model policy = "smollm2-135m"
prompt solve = "{question} Give the final answer as 'Answer: <number>'."

strategy sampled_vote(question) {
    samples = generate(policy, solve, n=choice(4, 8), temperature=choice(0.3, 0.5), max_tokens=40)
    return vote(extract(samples, number))
}
'''


def tiers(path: Path, out: Path) -> Path:
    """The first PER_TIER easy and PER_TIER medium items of `path`, as a data file."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for tier in ("easy", "medium") for r in [x for x in rows if x["difficulty"] == tier][:PER_TIER]]
    out.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return out


@pytest.mark.slow
def test_a_search_on_the_embedded_model_beats_greedy_on_held_out_data(tmp_path, capsys):
    space = tmp_path / "vote.tts"
    space.write_text(SPACE)
    data = tiers(DATA / "tiers_dev.jsonl", tmp_path / "easy_medium.jsonl")
    code = main(["search", str(space), "--data", str(data), "--holdout", "0.5", "--trials", "3",
                 "--out", str(tmp_path / "run"), "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    held = summary["test"]
    print(f"\nheld-out ({held['greedy']['items']} items): greedy {held['greedy']['accuracy']:.1%}, "
          f"best {held['best']['accuracy']:.1%} ({summary['best']['knobs']}); "
          f"dev: greedy {summary['greedy']['accuracy']:.1%}, best {summary['best']['accuracy']:.1%}")
    assert summary["best"]["accuracy"] > summary["greedy"]["accuracy"]
    assert held["best"]["accuracy"] > held["greedy"]["accuracy"] and held["best_beats_greedy"]
