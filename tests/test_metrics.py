"""Accuracy intervals and coverage: the bootstrap and the pass@k estimator."""

from __future__ import annotations

import itertools

import pytest

from ttsc.cli import main
from ttsc.runtime.metrics import bootstrap_ci, coverage, ks_for, pass_at_k


@pytest.mark.parametrize("n, c, k", [(5, 2, 1), (5, 2, 2), (6, 0, 3), (6, 6, 1), (8, 3, 4), (7, 1, 7)])
def test_pass_at_k_is_the_share_of_k_subsets_holding_a_right_sample(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    exact = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(exact)


def test_pass_at_k_checks_its_arguments():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_coverage_reports_powers_of_two_up_to_the_fewest_samples():
    assert ks_for(16) == [1, 2, 4, 8, 16] and ks_for(6) == [1, 2, 4, 6] and ks_for(1) == [1]
    cov = coverage([(4, 1), (8, 0), (4, 4)])
    assert list(cov) == [1, 2, 4]
    assert cov[1] == pytest.approx((0.25 + 0 + 1) / 3)
    assert cov[4] == pytest.approx((1 + pass_at_k(8, 0, 4) + 1) / 3)


def test_the_bootstrap_interval_holds_the_mean_and_narrows_with_more_items():
    few = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1]
    many = few * 20
    lo, hi = bootstrap_ci(few)
    assert 0 <= lo < 0.7 < hi <= 1
    lo2, hi2 = bootstrap_ci(many)
    assert lo < lo2 < 0.7 < hi2 < hi
    assert bootstrap_ci(few) == (lo, hi)  # seeded: a rerun prints the same interval
    assert bootstrap_ci([1, 1, 1]) == (1.0, 1.0) and bootstrap_ci([]) == (0.0, 0.0)


def test_eval_prints_the_interval_and_coverage(tmp_path, capsys):
    space = tmp_path / "sc.tts"
    space.write_text('model m = "tiny-random"\nprompt p = "{question}"\nstrategy s(question) {\n'
                     '    return vote(extract(generate(m, p, n=4, max_tokens=4), number))\n}\n')
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"id": "{i}", "question": "{i}", "answer": "{i}"}}\n' for i in range(6)))
    assert main(["eval", str(space), "--data", str(data), "--quiet", "--json"]) == 0
    out = capsys.readouterr().out
    assert "95% CI" in out and "coverage       pass@1" in out and "pass@4" in out
    import json

    summary = json.loads(out.strip().splitlines()[-1])
    lo, hi = summary["accuracy_ci"]
    assert lo <= summary["accuracy"] <= hi
    assert set(summary["pass_at_k"]) == {"1", "2", "4"}
    assert summary["pass_at_k"]["1"] == pytest.approx(summary["sample_accuracy"])
