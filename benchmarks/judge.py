"""Judge benchmark: does a model's P(Yes) tell right candidates from wrong ones?

    python -P benchmarks/judge.py [--data examples/data/tiers.jsonl] [--limit N]
        [--policy smollm2-135m] [--judges smollm2-135m,gemma3-270m] [--n 4]
        [--temperature 0.8] [--max-tokens 96] [--seed 0]

1. candidates: the policy samples --n answers per question with the `solve`
   prompt of examples/best_of_n.tts, at its temperature and max_tokens by
   default; each is right when its extracted number equals the answer
   (runtime/scorers.py, as `ttsc eval` scores it).
2. each judge reads every candidate with four prompts: `chat`, the `check`
   prompt of examples/best_of_n.tts through the judge's chat template (what
   `verify` does there); `raw`, the same text as plain text ending in
   "\nAnswer:" (a `raw prompt`, for a pretrained model without chat
   training); `raw_line`, the same ending in a new line instead, so that
   "Yes" is scored where a line starts (after "Answer:" the model expects
   " Yes", with a space, and the op scores "Yes"); `fewshot`, four worked judgements (two right, two wrong) then the
   question and only the candidate's extracted number ("none" without one),
   as plain text. P(Yes) is the verify op's: softmax over the next-token
   log-probabilities of "Yes" and "No".
3. per judge and prompt: mean P(Yes) of right and of wrong candidates, the
   AUC (the chance that a random right candidate outscores a random wrong
   one, ties counting half; 0.5 is no signal), the number of distinct
   scores, and best-of-n accuracy (the top-scored candidate of each
   question, ties to the first) beside the first sample's accuracy and the
   oracle (any candidate right).

Each model is served by the engine `auto` picks for it. Progress goes to
stderr; the last line is one JSON object of figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from statistics import mean
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# A pretrained model answers Yes or No best at the start of a line: "Yes"
# after "Answer:" would be scored without the space the model expects.
FEW_SHOT = ("Question: What is 3 + 4?\nProposed answer: 7\nIs the proposed answer correct?\nYes\n\n"
            "Question: What is 9 - 5?\nProposed answer: 3\nIs the proposed answer correct?\nNo\n\n"
            "Question: What is 6 + 6?\nProposed answer: 12\nIs the proposed answer correct?\nYes\n\n"
            "Question: What is 15 - 8?\nProposed answer: 9\nIs the proposed answer correct?\nNo\n\n")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def auc(right: list[float], wrong: list[float]) -> float | None:
    """P(a right candidate's score > a wrong one's), ties half (Mann-Whitney)."""
    if not right or not wrong:
        return None
    wins = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong)
    return wins / (len(right) * len(wrong))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT / "examples/data/tiers.jsonl"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--policy", default="smollm2-135m")
    ap.add_argument("--judges", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.8)  # best_of_n.tts's generate
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from ttsc.common.prompts import PromptDef, render_prompt
    from ttsc.compiler.pipeline import compile_file
    from ttsc.runtime.engines.base import NextTokenRequest, Prompt, SampleRequest, SamplingParams
    from ttsc.runtime.engines.registry import engine_kind, make_engine
    from ttsc.runtime.extract import extract
    from ttsc.runtime.ops import YES_NO, _p_yes
    from ttsc.runtime.scorers import score_number

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    rows = rows[:args.limit] if args.limit else rows
    plan = compile_file(ROOT / "examples/best_of_n.tts").plan
    solve, check = PromptDef.from_dict(plan.prompts["solve"]), PromptDef.from_dict(plan.prompts["check"])
    temperature, max_tokens = args.temperature, args.max_tokens

    t0 = time.perf_counter()
    policy = make_engine(args.policy, device="cpu")
    requests = [SampleRequest(render_prompt(solve, {"question": r["question"]}),
                              SamplingParams(n=args.n, temperature=temperature, max_tokens=max_tokens,
                                             seed=args.seed + i))
                for i, r in enumerate(rows)]
    outputs = policy.sample(requests)
    del policy
    cands = [(i, c.text, score_number(extract(c.text, "number"), str(r["answer"])))
             for i, (r, out) in enumerate(zip(rows, outputs)) for c in out.completions]
    right = sum(ok for _, _, ok in cands)
    log(f"{len(cands)} candidates from {args.policy} ({len(rows)} questions x {args.n}, "
        f"temperature {temperature}, {max_tokens} tokens): {right} right, "
        f"{time.perf_counter() - t0:.0f} s")

    first = [ok for j, (_, _, ok) in enumerate(cands) if j % args.n == 0]
    oracle = [any(ok for i2, _, ok in cands if i2 == i) for i in range(len(rows))]
    results: dict[str, Any] = {
        "data": args.data, "questions": len(rows), "policy": args.policy, "n": args.n,
        "temperature": temperature, "max_tokens": max_tokens, "candidates": len(cands),
        "right": right, "first_sample_accuracy": mean(first), "oracle_accuracy": mean(oracle),
        "judges": {}}
    for judge in [j.strip() for j in args.judges.split(",") if j.strip()]:
        t1 = time.perf_counter()
        engine = make_engine(judge, device="cpu")
        for style in ("chat", "raw", "raw_line", "fewshot"):
            prompts = []
            for i, text, _ in cands:
                p = render_prompt(check, {"question": rows[i]["question"], "candidate": text})
                if style == "raw":
                    p = Prompt(raw=p.messages[-1][1].rstrip() + "\nAnswer:")
                elif style == "raw_line":
                    p = Prompt(raw=p.messages[-1][1].rstrip() + "\n")
                elif style == "fewshot":
                    p = Prompt(raw=f"{FEW_SHOT}Question: {rows[i]['question']}\nProposed answer: "
                                   f"{extract(text, 'number') or 'none'}\n"
                                   "Is the proposed answer correct?\n")
                prompts.append(NextTokenRequest(p, YES_NO))
            scores = [_p_yes(o.logprobs) for o in engine.score_next(prompts)]
            yes_right = [s for s, (_, _, ok) in zip(scores, cands) if ok]
            yes_wrong = [s for s, (_, _, ok) in zip(scores, cands) if not ok]
            picked = []
            for i in range(len(rows)):
                group = [(s, ok) for s, (i2, _, ok) in zip(scores, cands) if i2 == i]
                picked.append(max(group, key=lambda g: g[0])[1])  # max keeps the first of ties
            figures = {"engine": engine_kind(judge), "auc": auc(yes_right, yes_wrong),
                       "p_yes_right": mean(yes_right) if yes_right else None,
                       "p_yes_wrong": mean(yes_wrong) if yes_wrong else None,
                       "distinct_scores": len(set(scores)), "best_of_n_accuracy": mean(picked)}
            results["judges"][f"{judge}/{style}"] = figures
            log(f"{judge} ({style}): {json.dumps(figures)}")
        log(f"{judge}: {time.perf_counter() - t1:.0f} s")
        del engine
    print(json.dumps(results))


if __name__ == "__main__":
    main()
