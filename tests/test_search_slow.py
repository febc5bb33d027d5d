"""A search on the embedded model finds a configuration that beats greedy
decoding on a held-out split (slow: it samples about 2,000 short completions).

The data are tiers_dev.jsonl (easy, medium and hard arithmetic), split in
half by `--holdout`: the search sees one half, the winner and greedy
decoding are scored on the other. On these, greedy decoding miscopies and
miscounts where a vote over 8-16 samples at a low temperature gets more
right (66.7 % against 76.7 % held out, measured on this machine).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ttsc.cli import main

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data"

SPACE = '''model policy = "smollm2-135m"
prompt solve = """
{question}
Answer with the number only.
"""

strategy sampled_vote(question) {
    samples = generate(policy, solve, n=choice(8, 16), temperature=choice(0.3, 0.5), max_tokens=16)
    return vote(extract(samples, number))
}
'''


@pytest.mark.slow
def test_a_search_on_the_embedded_model_beats_greedy_on_held_out_data(tmp_path, capsys):
    space = tmp_path / "vote.tts"
    space.write_text(SPACE)
    code = main(["search", str(space), "--data", str(DATA / "tiers_dev.jsonl"), "--holdout", "0.5",
                 "--trials", "3", "--out", str(tmp_path / "run"), "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    held = summary["test"]
    print(f"\nheld-out ({held['greedy']['items']} items): greedy {held['greedy']['accuracy']:.1%}, "
          f"best {held['best']['accuracy']:.1%} ({summary['best']['knobs']}); "
          f"dev: greedy {summary['greedy']['accuracy']:.1%}, best {summary['best']['accuracy']:.1%}")
    assert summary["best"]["accuracy"] > summary["greedy"]["accuracy"]
    assert held["best"]["accuracy"] > held["greedy"]["accuracy"] and held["best_beats_greedy"]
