"""The per-input prefix trie of a whole plan, and what it predicts.

Every LLM call the plan makes for one input is rendered, stage by stage in
execution order (a stage: the LLM nodes of one model at one dependency
level), into the trie of `trie.PrefixTrie`. A task input counts
`input_tokens` tokens (DEFAULT_INPUT_TOKENS or the calibrated mean); a
sample, and a candidate in a later prompt, counts what `made` says: by
default the max_tokens it was generated with (an upper bound), or its
expected length (`expected_lengths`: calibrated, or the prior). Within a
stage, requests are sorted longest-prefix-first (a DFS of the trie, as
SGLang's scheduler orders its queue); each node's rank in that order is
recorded as its `prefix_rank`, which lowering follows when it lists a
stage's nodes. Per stage: prefill tokens with and without a prefix cache,
generated tokens, KV held, and seconds from the cost model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ttsc.compiler import ir_analysis
from ttsc.compiler import cost, model_facts, profiles
from ttsc.compiler.ir import Graph, Node, Op, Program
from ttsc.compiler.prefix.layout import (DEFAULT_INPUT_TOKENS, LIST_ITEM_TOKENS, Hole, node_layout,
                                         op_holes, tokenizer_for)
from ttsc.compiler.prefix.trie import PrefixTrie, StandInIds, longest_prefix_first
from ttsc.compiler.utility import (PRIOR_MEAN_COMPLETION_TOKENS, Calibration, expected_completion_tokens,
                                   load_calibration)


@dataclass
class Request:
    node: str
    tokens: list[int]
    rows: int  # samples decoded from this prompt
    gen_tokens: int  # per row (at most, or as expected: what the analysis was given)
    shared_prefix: int = 0  # tokens before the first per-call hole (computed once per input)
    new: int = 0  # prompt tokens not found in the prefix cache (set when inserted)


@dataclass
class StageReport:
    name: str
    model: str
    nodes: list[str]
    rounds: int
    prefill_without: int = 0  # per input, all rounds
    prefill_with: int = 0
    generated: int = 0
    kv_without: int = 0  # tokens held at once, one input, one round
    kv_with: int = 0
    cross_input_tokens: int = 0  # prompt tokens identical for every input
    seconds: float = 0.0
    order: list[str] = field(default_factory=list)


@dataclass
class Analysis:
    stages: list[StageReport]
    exact: bool
    how: list[str]

    def totals(self) -> dict[str, Any]:
        s = self.stages
        without = sum(x.prefill_without for x in s)
        with_ = sum(x.prefill_with for x in s)
        return {"without": without, "with": with_, "generated": sum(x.generated for x in s),
                "cross_input": sum(x.cross_input_tokens for x in s),
                "seconds": sum(x.seconds for x in s)}


class _Analyzer:
    def __init__(self, program: Program, input_tokens: int, made: ir_analysis.Made, rank: bool):
        self.program = program
        self.input_tokens = input_tokens
        self.made = made
        self.rank = rank
        self.trie = PrefixTrie()
        self.cross = PrefixTrie()
        self.ids = StandInIds()
        self.stages: list[StageReport] = []
        self.specs: set[str] = set()

    def spec(self, node: Node) -> str:
        model = node.attrs.get("model")
        return self.program.models.get(model, model) if isinstance(model, str) else "?"

    def run(self) -> Analysis:
        self.graph(self.program.graph, "s", {}, {}, {}, rounds=1, path="")
        tokenizers = {s: tokenizer_for(self.program, s) for s in sorted(self.specs)}
        for tok in tokenizers.values():
            tok.save()
        return Analysis(self.stages, all(t.exact for t in tokenizers.values()),
                        [f"{s}: {t.how}" for s, t in tokenizers.items()])

    # -- one graph (a loop body recurses with its round count)
    def graph(self, graph: Graph, prefix: str, outer_counts: dict[str, int | None],
              outer_lengths: dict[str, int], sources: dict[str, Node], rounds: int,
              path: str) -> None:
        counts = ir_analysis.candidate_counts(graph, outer_counts)
        lengths = ir_analysis.candidate_lengths(graph, outer_lengths, self.made)
        for lv, level in ir_analysis.by_level(graph, lambda n: n.is_llm or n.op is Op.LOOP):
            groups: dict[str, list[Node]] = {}
            for node in level:
                if node.op is Op.LOOP:
                    self.loop(graph, node, counts, lengths, sources, rounds, path)
                else:
                    groups.setdefault(self.spec(node), []).append(node)
            for spec, members in groups.items():
                self.stage(graph, f"{path}{prefix}{lv}:{spec}", spec, members, counts, lengths,
                           sources, rounds)

    def loop(self, graph: Graph, node: Node, counts: dict, lengths: dict,
             sources: dict[str, Node], rounds: int, path: str) -> None:
        count = ir_analysis.loop_rounds(node)
        inner, lens = ir_analysis.loop_inputs(node, counts, lengths, self.made)
        srcs = {r.split(":", 1)[1]: found for r, s in node.inputs.items()
                if (found := ir_analysis.source_prompt(graph, s, sources)) is not None}
        sub = f"{path}{node.id}/"
        if node.attrs.get("cond") is not None:
            self.graph(node.attrs["cond"], "c", inner, lens, srcs, rounds * count, sub)
        self.graph(node.attrs["body"], "b", inner, lens, srcs, rounds * count, sub)

    def stage(self, graph: Graph, name: str, spec: str, members: list[Node],
              counts: dict, lengths: dict, sources: dict[str, Node], rounds: int) -> None:
        self.specs.add(spec)
        report = StageReport(name, spec, [m.id for m in members], rounds)
        requests: list[Request] = []
        for node in members:
            requests += self.requests(graph, node, spec, counts, lengths, sources)
        seqs = [r.tokens for r in requests]
        order = longest_prefix_first(seqs)
        report.order = list(dict.fromkeys(requests[i].node for i in order))
        # Lowering lists a stage's nodes in this order, so the executor sends
        # their requests to the engine longest-prefix-first.
        for rank, nid in enumerate(report.order if self.rank else ()):
            graph[nid].meta["prefix_rank"] = rank
        kv_paths = PrefixTrie()
        for i in order:
            r = requests[i]
            r.new = new = self.trie.insert(r.tokens)
            report.prefill_with += new
            report.prefill_without += r.rows * len(r.tokens)
            report.generated += r.rows * r.gen_tokens
            report.kv_with += kv_paths.insert(r.tokens) + r.rows * r.gen_tokens
            report.kv_without += r.rows * (len(r.tokens) + r.gen_tokens)
            report.cross_input_tokens += self.cross.insert(self._input_free_prefix(r.tokens))
        # Later rounds repeat the same templates with fresh candidates: only the
        # part before each call's first per-call hole is found in the cache again.
        if rounds > 1:
            again = sum(len(r.tokens) - r.shared_prefix for r in requests)
            report.prefill_with += (rounds - 1) * again
            report.prefill_without *= rounds
            report.generated *= rounds
        report.seconds = rounds * self._seconds(spec, requests, report)
        self.stages.append(report)

    def _input_free_prefix(self, seq: list[int]) -> list[int]:
        out = []
        for t in seq:
            if t < 0:
                break
            out.append(t)
        return out

    def _seconds(self, spec: str, requests: list[Request], report: StageReport) -> float:
        shape = model_facts.model_shape(spec)
        profile = profiles.load_profile(spec)
        rows = sum(r.rows for r in requests)
        steps = max((r.gen_tokens for r in requests if r.rows), default=0)
        shared = min((r.shared_prefix for r in requests), default=0)
        own = max(0, (report.kv_with - sum(r.rows * r.gen_tokens for r in requests) - shared)
                  // max(rows, 1))
        prefills = [(r.new, len(r.tokens) - r.new) for r in requests]
        return cost.stage_seconds(shape, profile, prefills=prefills, rows=rows, steps=steps,
                                  shared_context=shared, row_context=own)

    # -- the requests one node makes for one input
    def requests(self, graph: Graph, node: Node, spec: str, counts: dict,
                 lengths: dict, sources: dict[str, Node]) -> list[Request]:
        a = node.attrs
        m = counts.get(node.inputs.get("candidates", "")) or 0
        cand_len = lengths.get(node.inputs.get("candidates", ""), 0)
        n = ir_analysis.fixed_int(a, "n") or 1
        mt = self.made(node)
        op = node.op.value
        if node.op is Op.EXTEND:
            src = ir_analysis.source_prompt(graph, node.inputs["candidates"], sources)
            base = self.sequence(src, spec, call=None, node_key=src.id, lens={}) if src else []
            return [Request(node.id, base + self.ids.run(("cand", node.id, i), cand_len), n, mt,
                            len(base)) for i in range(m)]
        layout_lens = {"candidate": cand_len,
                       "critique": lengths.get(node.inputs.get("critiques", ""), 0)}
        calls = m
        if node.op in (Op.KNOCKOUT, Op.DEBATE):  # the strategy library's ops
            layout_lens.update(candidate_a=cand_len, candidate_b=cand_len,
                               others=max(m - 1, 0) * (cand_len + LIST_ITEM_TOKENS))
            # A knockout: m - 1 matches, each read in both orders.
            calls = 2 * max(m - 1, 0) if node.op is Op.KNOCKOUT else m
        if op_holes(op, "call"):
            out = []
            gen = mt if node.op in (Op.CRITIQUE, Op.REFINE, Op.DEBATE) else 0
            for i in range(calls):
                seq = self.sequence(node, spec, call=i, node_key=node.id, lens=layout_lens)
                out.append(Request(node.id, seq, 1, gen, self._shared(node, spec, layout_lens)))
            return out
        list_lens = {"candidates": m * (cand_len + LIST_ITEM_TOKENS),
                     "critiques": (counts.get(node.inputs.get("critiques", "")) or 0)
                     * (lengths.get(node.inputs.get("critiques", ""), 0) + LIST_ITEM_TOKENS)}
        seq = self.sequence(node, spec, call=None, node_key=node.id, lens=list_lens)
        if node.op is Op.RANK:
            return [Request(node.id, seq, 1, mt, len(seq))]
        ffs = ir_analysis.first_finish(node, self.made)
        if ffs is not None:  # first-finish search: the n rows stop once k finished
            return [Request(node.id, seq, n, round(ffs.generated / n), len(seq))]
        return [Request(node.id, seq, n, mt, len(seq))]

    def _shared(self, node: Node, spec: str, lens: dict) -> int:
        layout = node_layout(self.program, node, spec)
        return layout.counts(self._hole_tokens(lens))[1] if layout else 0

    def _hole_tokens(self, lens: dict) -> Callable[[Hole], int]:
        return lambda h: lens.get(h.name, self.input_tokens) if h.kind != "input" else self.input_tokens

    def sequence(self, node: Node, spec: str, call: int | None, node_key: str,
                 lens: dict) -> list[int]:
        """Token ids of one call's prompt; hole text as stand-in ids."""
        layout = node_layout(self.program, node, spec)
        if layout is None:
            return []
        seq: list[int] = []
        for p in layout.pieces:
            if isinstance(p, Hole):
                if p.kind == "input":
                    seq += self.ids.run(("input", p.name), self.input_tokens)
                elif p.kind == "call":
                    seq += self.ids.run(("call", node_key, p.name, call), lens.get(p.name, 0))
                else:
                    seq += self.ids.run(("list", node_key, p.name), lens.get(p.name, 0))
            else:
                seq += p
        return seq


def analyze(program: Program, input_tokens: int | None = None, made: ir_analysis.Made | None = None
            ) -> Analysis:
    """The per-input prefix trie of the whole plan, stage by stage: samples at
    their max_tokens (an upper bound), or as long as `made` says (then the
    nodes' `prefix_rank` is left as the upper-bound analysis set it)."""
    if input_tokens is None:
        cal = calibration_of(program)
        input_tokens = round(cal.input_tokens) if cal and cal.input_tokens else DEFAULT_INPUT_TOKENS
    return _Analyzer(program, input_tokens, made or ir_analysis.max_tokens, rank=made is None).run()


def calibration_of(program: Program) -> Calibration | None:
    """The calibration `ttsc calibrate` stored for the program's file, if any."""
    return load_calibration(program.file) if program.file and not program.file.startswith("<") else None


def expected_lengths(program: Program) -> tuple[ir_analysis.Made, str]:
    """How long a sample of each generating node is expected to be, and on
    what basis: a `generate` of a calibrated model as the pilot measured,
    anything else by the prior length model (`utility.expected_completion_tokens`)."""
    cal = calibration_of(program)

    def made(node: Node) -> int:
        model = cal.models.get(node.attrs.get("model")) if cal and node.op is Op.GENERATE else None
        return round(expected_completion_tokens(ir_analysis.max_tokens(node), model))

    input_basis = (f"inputs {round(cal.input_tokens)} tokens" if cal and cal.input_tokens
                   else f"inputs assumed {DEFAULT_INPUT_TOKENS} tokens")
    if cal and cal.models:
        return made, (f"calibrated on {cal.data} ({input_basis}, `generate` completions as its "
                      f"pilot measured for {', '.join(sorted(cal.models))}; other ops by the prior)")
    return made, (f"priors: {input_basis}, completions exponential with mean "
                  f"{PRIOR_MEAN_COMPLETION_TOKENS:g} tokens cut at max_tokens; a run on real data "
                  "can differ by far more than 15% (`ttsc calibrate FILE --data DEV` measures both)")


def kv_peak(analysis: Analysis) -> int:
    peak = 0
    for s in analysis.stages:
        shape = model_facts.model_shape(s.model)
        profile = profiles.load_profile(s.model)
        peak = max(peak, int(s.kv_with * shape.kv_bytes_per_token(profile.dtype_bytes)))
    return peak
