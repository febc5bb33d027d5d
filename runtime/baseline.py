"""Greedy decoding: the baseline every accuracy table starts with (`ttsc
search`'s table, `ttsc eval --greedy`).

It is what a user has without any strategy: the space's first generator
(model, prompt, token limit and stop strings as the space's default compiles
them) asked once at temperature 0, its answer read by the space's own
extractor. It is written as .tts source (search keeps it beside its
results), so it can be rerun with `ttsc eval`.
"""

from __future__ import annotations

from typing import Any, Iterator

from ttsc.common.errors import UserError
from ttsc.compiler.plan import Plan, PlanNode, Region
from ttsc.dsl import ast
from ttsc.dsl.parser import parse
from ttsc.dsl.strings import quote
from ttsc.dsl.unparse import number, unparse

# The extractor when the space has none: what the scorer reads.
SCORER_EXTRACTORS = {"number": "number", "choice": "choice", "unit_tests": "code"}
WHOLE_TEXT = "regex(" + quote(r"(?s)^\s*(.*?)\s*$") + ")"


def nodes_in_order(region: Region) -> Iterator[PlanNode]:
    """A plan's nodes in the order its stages run (loop bodies included)."""
    for stage in region.stages:
        for nid in stage.nodes:
            yield region.nodes[nid]
        for sub in (stage.cond, stage.body):
            if sub is not None:
                yield from nodes_in_order(sub)


def greedy_source(source: str, file: str, plan: Plan, scorer: str) -> str:
    """A .tts file: the models and prompts of `source`, and one strategy that
    decodes the plan's first generator greedily."""
    nodes = list(nodes_in_order(plan.region))
    generate = next((n for n in nodes if n.op == "generate"), None)
    if generate is None:
        raise UserError(f"{file}: strategy `{plan.strategy}` has no `generate`, so there is no "
                        "greedy decoding to compare it with")
    a = generate.attrs
    module = parse(source, file)
    kept = tuple(d for d in module.definitions if isinstance(d, (ast.ModelDef, ast.PromptDef)))
    taken = {d.name for d in kept}
    name = next(n for n in ("greedy", "greedy_decoding", "greedy_baseline", "greedy_") if n not in taken)
    settings = ["n=1", "temperature=0", f"max_tokens={number(a['max_tokens'])}"]
    if a.get("stop"):
        stops = [quote(s) for s in a["stop"]]
        settings.append(f"stop={stops[0] if len(stops) == 1 else '[' + ', '.join(stops) + ']'}")
    extract = next((n for n in nodes if n.op == "extract"), None)
    how = _extractor(extract.attrs["how"]) if extract is not None else (
        SCORER_EXTRACTORS.get(scorer, WHOLE_TEXT))
    body = (f"strategy {name}({', '.join(plan.params)}) {{\n"
            f"    sample = generate({a['model']}, {a['prompt']}, {', '.join(settings)})\n"
            f"    return vote(extract(sample, {how}))\n}}\n")
    header = (f"# Greedy decoding: the first generator of `{plan.strategy}` ({file}), one sample\n"
              "# at temperature 0: what `ttsc search` and `ttsc eval --greedy` compare with.\n")
    return header + unparse(ast.Module(file, source, kept)) + "\n" + body


def _extractor(how: dict[str, Any]) -> str:
    if how["how"] == "regex":
        return f"regex({quote(how['pattern'])})"
    return how["how"]
