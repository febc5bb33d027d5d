"""`ttsc eval` with `n=auto` under a total token budget: compiled, calibrated,
spent in rounds, resumed; and every way it can be asked for wrongly."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ttsc.cli import main
from ttsc.common.errors import TTSError
from ttsc.compiler.pipeline import compile_source

SOURCE = '''model policy = "tiny-random"
prompt solve = """{question} Answer with a number."""
strategy s(question) {
    return vote(extract(generate(policy, solve, n=auto, temperature=0.9, max_tokens=4), number))
}
budget { tokens <= 1000 total }
'''
UNLOADABLE = ["--model", "policy=hf:nobody/no-such-model"]


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("TTSC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TTSC_CPU_KERNELS", "0")  # no C++ build in a fresh cache dir
    strategy = tmp_path / "s.tts"
    strategy.write_text(SOURCE)
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1),
                                       "difficulty": "easy" if i % 2 else "hard"}) + "\n"
                           for i in range(8)))
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i} + 2?",
                                       "answer": str(i + 2)}) + "\n" for i in range(10)))
    return strategy, dev, data


def run(capsys, *args):
    code = main([*map(str, args), "--quiet"] if args[0] == "eval" else list(map(str, args)))
    out, err = capsys.readouterr()
    return code, out, err


def test_total_budget_leaves_n_to_the_runtime():
    plan = compile_source(SOURCE.replace("1000 total", "5000 total"), "s.tts").plan
    gen = next(n for n in plan.region.nodes.values() if n.op == "generate")
    assert gen.attrs["n"] == 1 and gen.facts["adaptive"] == {"knob": "n", "budget_tokens": 5000.0}
    assert plan.budget is None  # the total is not a per-input budget
    same = compile_source(SOURCE, "s.tts", budget_tokens=5000).plan
    assert [n.facts.get("adaptive") for n in same.region.nodes.values()] == \
        [n.facts.get("adaptive") for n in plan.region.nodes.values()]


@pytest.mark.parametrize("source, message", [
    ('model p = "tiny-random"\nprompt q = "{question}"\nstrategy s(question) {\n'
     '    c = generate(p, q, n=auto)\n    return best(c, by=verify(p, c))\n}\n'
     'budget { tokens <= 900 total }\n', "this generate's samples are not voted"),
    ('model p = "tiny-random"\nprompt q = "{question}"\nstrategy s(question) {\n'
     '    return vote(extract(generate(p, q, n=4), number))\n}\nbudget { tokens <= 900 total }\n',
     "a total token budget needs a `generate(..., n=auto)`"),
    ('model p = "tiny-random"\nprompt q = "{question}"\nstrategy s(question) {\n'
     '    return vote(extract(generate(p, q, n=auto), number))\n}\n'
     'budget { tokens <= 900 total per input }\n', "either `total` or `per input`"),
])
def test_total_budget_mistakes_are_compile_errors(source, message):
    with pytest.raises(TTSError) as err:
        compile_source(source, "s.tts")
    assert message in err.value.render()


def test_no_calibration_says_which_command_makes_one(setup, capsys):
    strategy, _, data = setup
    code, _, err = run(capsys, "eval", strategy, "--data", data, "--budget-tokens", "900", *UNLOADABLE)
    assert code == 2 and "no calibration for" in err and "ttsc calibrate" in err


def test_calibrated_rounds_spend_the_budget_and_resume(setup, tmp_path, capsys):
    strategy, dev, data = setup
    code, out, err = run(capsys, "calibrate", strategy, "--data", dev, "--samples", "8",
                         "--pilot", "2", "--no-cache")
    assert code == 0 and "rounds table" in out, err
    # A budget too small for one sample each is refused (before any model loads).
    code, _, err = run(capsys, "eval", strategy, "--data", data, "--budget-tokens", "50")
    assert code == 2 and "cannot pay for one sample of each of 10 inputs" in err
    out_file = tmp_path / "r.jsonl"
    code, text, err = run(capsys, "eval", strategy, "--data", data, "--budget-tokens", "1500",
                          "--out", out_file, "--json")
    assert code == 0, err
    summary = json.loads(text.strip().splitlines()[-1])
    items = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(items) == 10 and summary["budget_tokens"] == 1500
    # Within the budget, up to what one round's planned and drawn lengths differ.
    assert summary["tokens"] == sum(i["tokens"]["computed"] for i in items) <= 1500 * 1.1
    assert all(1 <= i["n"] <= 8 and len(i["samples"]) == i["n"] for i in items)
    assert "budget" in text and "of 1,500 tokens" in text
    # Cut the results file to 6 items: the rerun computes only the other 4.
    out_file.write_text("".join(line + "\n" for line in out_file.read_text().splitlines()[:6]))
    code, text, _ = run(capsys, "eval", strategy, "--data", data, "--budget-tokens", "1500",
                        "--out", out_file)
    assert code == 0 and "6 resumed" in text
    again = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert sorted(i["id"] for i in again) == sorted(i["id"] for i in items)
    assert again[:6] == items[:6]


def test_a_calibration_for_another_prompt_is_refused(setup, tmp_path, capsys):
    strategy, dev, data = setup
    assert run(capsys, "calibrate", strategy, "--data", dev, "--samples", "4", "--pilot", "2",
               "--no-cache")[0] == 0
    other = tmp_path / "other.tts"
    other.write_text(SOURCE.replace("Answer with a number.", "Reply with digits."))
    cal = next((tmp_path / "cache" / "calibrations").glob("s-*.json"))
    code, _, err = run(capsys, "eval", other, "--data", data, "--budget-tokens", "900",
                       "--calibration", cal)
    assert code == 2 and "was fitted for prompt" in err and "Reply with digits" in err


def test_rounds_give_more_samples_where_the_vote_is_open():
    """With a table fitted on a dev pool where agreeing votes are right and
    split ones only get right with more samples, split inputs draw more."""
    from scripted_engine import ScriptedEngine

    from ttsc.runtime.allocation.adaptive import adaptive_target, evaluate_adaptive
    from ttsc.runtime.allocation.rounds import Sample, fit_vote_values

    easy = [Sample("7", 3.0, -0.1)] * 16
    split = [Sample(a, 3.0, -0.1) for a in ["1", "2", "7", "3", "7", "4", "7", "5"] * 2]
    values = fit_vote_values([easy] * 6 + [split] * 6,
                             [[True] * 16] * 6 + [[s.answer == "7" for s in split]] * 6,
                             checkpoints=(1, 2, 4, 8, 16))
    plan = compile_source(SOURCE, "s.tts").plan
    engine = ScriptedEngine({"easy": ["Answer: 7"], "split": ["1", "2", "7", "3", "7", "4", "7", "5"]})
    rows = [{"id": f"e{i}", "question": f"easy {i}", "answer": "7"} for i in range(4)] + \
           [{"id": f"s{i}", "question": f"split {i}", "answer": "7"} for i in range(4)]
    # Every input at 16 samples would cost 240 tokens (words, for this engine).
    target = dataclasses.replace(adaptive_target(plan), budget=120)
    summary = evaluate_adaptive(plan, {"policy": engine}, rows, target, values, batch_size=4)
    n = {r["id"]: r["n"] for r in summary.per_item}
    assert max(n[f"e{i}"] for i in range(4)) < min(n[f"s{i}"] for i in range(4))
    assert summary.tokens <= target.budget * 1.1
