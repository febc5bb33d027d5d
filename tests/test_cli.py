"""The `ttsc` command line: exit codes, error formats, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ttsc.cli import main
from ttsc.compiler.plan import Plan

ROOT = Path(__file__).resolve().parent.parent
TINY = '''model policy = "tiny-random"
prompt solve = """{question}"""
strategy sc(question) {
    return vote(extract(generate(policy, solve, n=3, max_tokens=4), number))
}
'''


@pytest.fixture
def tiny_file(tmp_path):
    path = tmp_path / "tiny.tts"
    path.write_text(TINY)
    return path


def test_check_reports_all_files_and_exit_status(tmp_path, capsys):
    bad = tmp_path / "bad.tts"
    bad.write_text('model m = "smollm2-135m"\nprompt p = "{question}"\nstrategy s(question) {\n'
                   '    return vote(extract(generat(m, p), number))\n}\n')
    code = main(["check", str(ROOT / "examples/self_consistency.tts"), str(bad)])
    out, err = capsys.readouterr()
    assert code == 2
    assert "self_consistency.tts: ok" in out
    assert f"{bad}:4:25: error: unknown operation `generat`" in err
    assert "2 file(s) checked: 1 error(s)" in out


def test_check_all_examples_pass(capsys):
    files = sorted(str(p) for p in (ROOT / "examples").glob("*.tts"))
    assert main(["check", *files]) == 0


def test_compile_emit_json_round_trips(capsys):
    assert main(["compile", str(ROOT / "examples/best_of_n.tts"), "--emit", "json"]) == 0
    out = capsys.readouterr().out
    plan = Plan.from_json(out)
    assert plan.strategy == "best_of_n" and plan.params == ["question"]


def test_compile_explain_lists_passes_and_stages(capsys):
    assert main(["compile", str(ROOT / "examples/composed.tts"), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "inline" in out and "inlined strategy `refined`" in out
    assert "merge_samples" in out and "into one with n=16" in out
    assert "s0 llm   model=policy" in out


def test_compile_dot(tmp_path, capsys):
    dot = tmp_path / "ir.dot"
    assert main(["compile", str(ROOT / "examples/beam_search.tts"), "--dot", str(dot)]) == 0
    text = dot.read_text()
    assert text.startswith("digraph ttsc {") and "cluster_" in text and "extend" in text


def test_compile_for_other_models_and_an_engine(tiny_file, capsys):
    remote = "openai:http://127.0.0.1:9/v1#m"
    assert main(["compile", str(tiny_file), "--model", f"policy={remote}", "--emit", "json"]) == 0
    assert Plan.from_json(capsys.readouterr().out).models["policy"] == remote
    # Checked against the engine's declared capabilities, before anything loads.
    assert main(["compile", str(tiny_file), "--model", f"policy={remote}", "--engine", "hf"]) == 2
    assert f"engine `hf` cannot serve `{remote}`" in capsys.readouterr().err
    assert main(["run", str(tiny_file), "--input", "question=x", "--model", f"policy={remote}",
                 "--engine", "paged"]) == 2
    assert f"engine `paged` cannot serve `{remote}`" in capsys.readouterr().err


def test_paged_engine_with_gemma_is_exit_2_saying_why(tiny_file, capsys):
    """The paged forward is Llama-shaped: asked for Gemma 3 it refuses before
    anything loads, naming what Gemma needs and the engine that serves it."""
    assert main(["run", str(tiny_file), "--input", "question=x", "--model", "policy=gemma3-270m",
                 "--engine", "paged"]) == 2
    err = capsys.readouterr().err
    assert "engine `paged` cannot serve `gemma3-270m`: Gemma 3 interleaves sliding-window" in err
    assert "engines for this model: hf" in err and "Traceback" not in err
    assert main(["compile", str(tiny_file), "--model", "policy=gemma3-270m", "--emit", "json"]) == 0


def test_unknown_strategy_is_exit_2(capsys):
    assert main(["compile", str(ROOT / "examples/best_of_n.tts"), "--strategy", "best_of"]) == 2
    err = capsys.readouterr().err
    assert "error: no strategy `best_of`" in err and "did you mean `best_of_n`?" in err


def test_missing_file_is_exit_2(capsys):
    assert main(["compile", "nope.tts"]) == 2
    assert "nope.tts: no such file" in capsys.readouterr().err


def test_run_prints_answer_and_cost(tiny_file, capsys):
    assert main(["run", str(tiny_file), "--input", "question=What is 1+1?", "--trace"]) == 0
    out, err = capsys.readouterr()
    assert out.endswith("\n")
    assert "[sc] " in err and "calls" in err and "generated tokens" in err
    assert "generate" in err  # the trace table


def test_run_missing_input_and_bad_model(tiny_file, capsys):
    assert main(["run", str(tiny_file)]) == 2
    assert "missing input `question`" in capsys.readouterr().err
    assert main(["run", str(tiny_file), "--input", "question=x", "--model", "policy=nonsense"]) == 2
    assert "--model policy=nonsense" in capsys.readouterr().err
    assert main(["run", str(tiny_file), "--input", "question=x", "--model", "judge=tiny-random"]) == 2
    assert "defines no model `judge`" in capsys.readouterr().err


def test_eval_writes_results_and_resumes(tiny_file, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": i, "question": f"What is {i} + 1?", "answer": str(i + 1)})
                            + "\n" for i in range(5)))
    out = tmp_path / "r.jsonl"
    assert main(["eval", str(tiny_file), "--data", str(data), "--out", str(out), "--quiet",
                 "--limit", "3"]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "single sample" in text
    assert len(out.read_text().splitlines()) == 3
    assert main(["eval", str(tiny_file), "--data", str(data), "--out", str(out), "--quiet"]) == 0
    assert "3 resumed" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # Lines are written as items finish (inputs run at their own pace): any order, each once.
    assert sorted(r["id"] for r in rows) == ["0", "1", "2", "3", "4"]


def test_eval_greedy_baseline_beside_the_strategy(tiny_file, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": i, "question": f"What is {i} + 1?", "answer": str(i % 3)})
                            + "\n" for i in range(6)))
    assert main(["eval", str(tiny_file), "--data", str(data), "--quiet", "--greedy", "--json",
                 "--no-cache"]) == 0
    text = capsys.readouterr().out
    both = json.loads(text.strip().splitlines()[-1])
    assert "greedy " in text and "vs greedy" in text
    # The baseline is exactly the file's first generator decoded greedily.
    greedy = tmp_path / "greedy.tts"
    greedy.write_text(TINY.replace("n=3", "n=1, temperature=0"))
    assert main(["eval", str(greedy), "--data", str(data), "--quiet", "--json", "--no-cache"]) == 0
    alone = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert both["greedy"]["accuracy"] == alone["accuracy"]
    assert both["greedy"]["tokens_per_input"] == alone["tokens_per_input"]
    assert both["items"] == both["greedy"]["items"] == 6


def test_eval_greedy_of_a_strategy_without_an_extractor(tmp_path, capsys):
    """No extract in the strategy: greedy decoding reads the whole text (a
    regex with backslashes, written as a valid .tts string)."""
    path = tmp_path / "best.tts"
    path.write_text('model policy = "tiny-random"\nprompt solve = """{question}"""\n'
                    'strategy s(question) {\n    c = generate(policy, solve, n=2, max_tokens=4)\n'
                    '    return best(c, by=verify(policy, c))\n}\n')
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "a", "answer": "1"}\n')
    assert main(["eval", str(path), "--data", str(data), "--greedy", "--scorer", "exact", "--quiet",
                 "--no-cache", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["greedy"]["items"] == 1


def test_eval_greedy_needs_a_generate_checked_before_loading(tmp_path, capsys):
    path = tmp_path / "tests_only.tts"
    path.write_text('model m = "smollm2-135m"\nprompt p = "{question}"\nstrategy s(question) {\n'
                    '    tests = unit_tests(m, p, n=2)\n    return best(tests, by=run_tests(tests, tests))\n}\n')
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "a", "answer": "1"}\n')
    assert main(["eval", str(path), "--data", str(data), "--greedy"]) == 2
    assert "has no `generate`, so there is no greedy decoding" in capsys.readouterr().err


def test_eval_malformed_line_names_line(tiny_file, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "a", "answer": "1"}\n{"question": oops}\n')
    assert main(["eval", str(tiny_file), "--data", str(data)]) == 2
    assert f"{data}:2" in capsys.readouterr().err


def test_help_teaches():
    out = subprocess.run([sys.executable, "-P", "-m", "ttsc.cli", "--help"], capture_output=True,
                         text=True, cwd=ROOT).stdout
    for word in ("check", "compile", "run", "eval", "examples:"):
        assert word in out
