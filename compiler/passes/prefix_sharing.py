"""Prefix sharing: lay prompts out shared part first, and predict what a
prefix cache saves.

Three things, in order:

1. Layout. A per-candidate prompt (verify, score, critique, refine) whose
   labeled data blocks put the candidate before the question ("Proposed
   solution: {candidate}" then "Problem: {question}") is rewritten with the
   question block first. Labeled blocks ("Label: ...") are data the model reads
   as a set, so their order does not change the question asked; instruction
   text is never moved across. The calls for one input then share everything
   up to the candidate.
2. The token-level prefix trie of every LLM call the plan makes for one input,
   stage by stage in execution order, rendered through each model's tokenizer
   and chat template (see `model_facts.PromptTokenizer`: token-exact when the runtime
   has cached the tokenizer, else a stated characters-per-token estimate).
   A hole's text is unknown at compile time: a task input counts
   DEFAULT_INPUT_TOKENS tokens (or the calibrated mean), a candidate the
   max_tokens it was generated with (an upper bound).
3. Longest-prefix-first order: within a stage, requests sorted so those with
   the longest common prefixes are adjacent (a DFS of the trie, as SGLang's
   scheduler orders its queue); recorded per stage and as each node's
   `prefix_rank`, which lowering follows when it lists a stage's nodes.

The predicted prefill tokens with and without sharing, the KV peak and the
latency (from the cost model) go to the plan's facts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ttsc.common.prompts import HOLE, OP_HOLES, default_prompt, hole_names
from ttsc.compiler import cost, model_facts, profiles
from ttsc.compiler.ir import Graph, Node, Op, Program
from ttsc.compiler.lower import candidate_counts
from ttsc.compiler.passes.manager import PassResult
from ttsc.compiler.passes.walk import graphs

DEFAULT_INPUT_TOKENS = 32  # tokens a task input (question) is assumed to take
LIST_ITEM_TOKENS = 4  # "[i] " and the blank line around each listed candidate
RANK_MAX_TOKENS = 64  # what the runtime's `rank` generates (runtime/ops.py)


def _op_holes(op: str, kind: str) -> tuple[str, ...]:
    """Holes `op` fills once per call ("call") or with all candidates ("list")."""
    return tuple(h for h, k in OP_HOLES.get(op, {}).items() if k == kind)

_LABELED = re.compile(r"^[ \t]*[A-Z][A-Za-z0-9 _'()-]{0,40}:")


@dataclass(frozen=True)
class Hole:
    name: str
    kind: str  # "input": same for every call of an input; "call": one per call; "list": all candidates


Part = str | Hole


# ------------------------------------------------------------------ prompts


def prompt_def(program: Program, node: Node) -> dict[str, Any] | None:
    """The prompt definition an LLM node renders ({user, system, raw})."""
    name = node.attrs.get("prompt")
    if name:
        return program.prompts[name]
    d = default_prompt(node.op.value)
    return None if d is None else d.to_dict()


def template_parts(text: str, op: str) -> list[Part]:
    """A template as literal text and holes, `{{`/`}}` unescaped."""
    parts: list[Part] = []
    pos = 0
    for m in HOLE.finditer(text):
        parts.append(text[pos:m.start()])
        if m.group(1) is None:
            parts.append(m.group(0)[0])
        else:
            name = m.group(1)
            kind = OP_HOLES.get(op, {}).get(name, "input")
            parts.append(Hole(name, kind))
        pos = m.end()
    parts.append(text[pos:])
    return _merge(parts)


def _merge(parts: Sequence[Part]) -> list[Part]:
    out: list[Part] = []
    for p in parts:
        if isinstance(p, str):
            if not p:
                continue
            if out and isinstance(out[-1], str):
                out[-1] += p
                continue
        out.append(p)
    return out


def rendered_parts(pdef: dict[str, Any], op: str, tok: model_facts.PromptTokenizer) -> list[Part]:
    """The whole prompt as the engine sees it: chat frame, system, user."""
    user = template_parts(pdef["user"], op)
    system = template_parts(pdef["system"], op) if pdef.get("system") else None
    if pdef.get("raw"):
        return _merge((system + ["\n"] if system else []) + user)
    if system is not None:
        pre, mid, post = tok.frame(system=True)
        return _merge([pre, *system, mid, *user, post])
    pre, post = tok.frame(system=False)
    return _merge([pre, *user, post])


@dataclass
class Layout:
    """A node's prompt for one model: token ids of its text, and its holes."""

    pieces: list[tuple[int, ...] | Hole]

    @staticmethod
    def of(parts: Sequence[Part], tok: model_facts.PromptTokenizer) -> "Layout":
        return Layout([p if isinstance(p, Hole) else tuple(tok.encode(p)) for p in parts])

    def counts(self, hole_tokens: Callable[[Hole], int]) -> tuple[int, int]:
        """(tokens of one call with calls' own holes empty, tokens before the
        first per-call or list hole)."""
        total = shared = 0
        open_ = True
        for p in self.pieces:
            if isinstance(p, Hole):
                if p.kind != "input":
                    open_ = False
                    continue
                n = hole_tokens(p)
            else:
                n = len(p)
            total += n
            if open_:
                shared += n
        return total, shared

    def call_holes(self) -> list[Hole]:
        return [p for p in self.pieces if isinstance(p, Hole) and p.kind == "call"]

    def list_holes(self) -> list[Hole]:
        return [p for p in self.pieces if isinstance(p, Hole) and p.kind == "list"]


_layouts: dict[tuple, Layout] = {}


def node_layout(program: Program, node: Node, spec: str) -> Layout | None:
    pdef = prompt_def(program, node)
    if pdef is None:
        return None
    tok = model_facts.prompt_tokenizer(spec)
    key = (str(tok.dir), tok.exact, node.op.value, pdef["user"], pdef.get("system"), bool(pdef.get("raw")))
    if key not in _layouts:
        _layouts[key] = Layout.of(rendered_parts(pdef, node.op.value, tok), tok)
    return _layouts[key]


# ------------------------------------------------------------------ layout rewrite


def _blocks(text: str) -> tuple[list[str], str]:
    """Paragraphs when the text has blank lines, else lines; and the separator."""
    sep = "\n\n" if "\n\n" in text.strip("\n") else "\n"
    return text.split(sep), sep


def shared_first(user: str, op: str) -> str | None:
    """The template with labeled input blocks moved before the first labeled
    block holding a per-call hole, or None when nothing can move."""
    per_call = _op_holes(op, "call")
    if not per_call:
        return None
    blocks, sep = _blocks(user)

    def holes(b: str) -> set[str]:
        return set(hole_names(b))

    first = next((i for i, b in enumerate(blocks) if holes(b) & set(per_call)), None)
    if first is None or not _LABELED.match(blocks[first]):
        return None
    # The run of labeled data blocks starting at the first per-call block.
    end = first
    while end + 1 < len(blocks) and _LABELED.match(blocks[end + 1]):
        end += 1
    run = blocks[first:end + 1]
    movable = [b for b in run if holes(b) and not holes(b) & set(per_call)]
    if not movable:
        return None
    rest = [b for b in run if b not in movable]
    new = blocks[:first] + movable + rest + blocks[end + 1:]
    return sep.join(new)


def _rewrite_layouts(program: Program) -> list[str]:
    notes: list[str] = []
    for graph in list(graphs(program.graph)):
        for node in graph.nodes():
            if not _op_holes(node.op.value, "call") or not node.attrs.get("prompt"):
                continue
            name = node.attrs["prompt"]
            pdef = program.prompts[name]
            new_user = shared_first(pdef["user"], node.op.value)
            if new_user is None or new_user == pdef["user"]:
                continue
            new_name = f"{name}__shared_first"
            program.prompts.setdefault(new_name, dict(pdef, user=new_user))
            node.attrs["prompt"] = new_name
            where = f"line {node.span.line}" if node.span else node.id
            notes.append(f"{node.op.value} at {where}: prompt `{name}` laid out question-first "
                         f"(`{new_name}`), so its calls share the prefix up to the candidate")
    return notes


# ------------------------------------------------------------------ trie


class PrefixTrie:
    """Token-level trie: counts the tokens a radix prefix cache computes."""

    def __init__(self) -> None:
        self.root: dict[int, dict] = {}
        self.size = 0

    def insert(self, seq: Sequence[int]) -> int:
        """Insert one sequence; returns the tokens not already present."""
        node, new = self.root, 0
        for t in seq:
            child = node.get(t)
            if child is None:
                child = node[t] = {}
                new += 1
            node = child
        self.size += new
        return new

    def common(self, seq: Sequence[int]) -> int:
        node, depth = self.root, 0
        for t in seq:
            if t not in node:
                break
            node, depth = node[t], depth + 1
        return depth


def longest_prefix_first(seqs: Sequence[Sequence[int]]) -> list[int]:
    """Indices of `seqs` in trie DFS order: requests with the longest common
    prefix become adjacent (lexicographic order of token ids is exactly that)."""
    return sorted(range(len(seqs)), key=lambda i: tuple(seqs[i]))


class _Ids:
    """Stand-in token ids for hole text (negative, so never a real token)."""

    def __init__(self) -> None:
        self._ids: dict[tuple, int] = {}

    def run(self, key: tuple, length: int) -> list[int]:
        return [self._id(key + (j,)) for j in range(length)]

    def _id(self, key: tuple) -> int:
        if key not in self._ids:
            self._ids[key] = -1 - len(self._ids)
        return self._ids[key]


# ------------------------------------------------------------------ stages


@dataclass
class Request:
    node: str
    tokens: list[int]
    rows: int  # samples decoded from this prompt
    gen_tokens: int  # per row, at most
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
    def __init__(self, program: Program, input_tokens: int):
        self.program = program
        self.input_tokens = input_tokens
        self.trie = PrefixTrie()
        self.cross = PrefixTrie()
        self.ids = _Ids()
        self.stages: list[StageReport] = []
        self.specs: set[str] = set()

    def spec(self, node: Node) -> str:
        model = node.attrs.get("model")
        return self.program.models.get(model, model) if isinstance(model, str) else "?"

    def run(self) -> Analysis:
        self.graph(self.program.graph, "s", {}, {}, {}, rounds=1, path="")
        tokenizers = {s: model_facts.prompt_tokenizer(s) for s in sorted(self.specs)}
        for tok in tokenizers.values():
            tok.save()
        return Analysis(self.stages, all(t.exact for t in tokenizers.values()),
                        [f"{s}: {t.how}" for s, t in tokenizers.items()])

    # -- one graph (a loop body recurses with its round count)
    def graph(self, graph: Graph, prefix: str, outer_counts: dict[str, int | None],
              outer_lengths: dict[str, int], sources: dict[str, Node], rounds: int,
              path: str) -> None:
        counts = candidate_counts(graph, outer_counts)
        lengths = candidate_lengths(graph, outer_lengths)
        level: dict[str, int] = {}
        for node in graph.nodes():
            preds = [level[p] for p in graph.g.predecessors(node.id)]
            level[node.id] = 1 + max(preds) if preds else 0
        by_level: dict[int, list[Node]] = {}
        for node in graph.nodes():
            if node.is_llm or node.op is Op.LOOP:
                by_level.setdefault(level[node.id], []).append(node)
        for lv in sorted(by_level):
            groups: dict[str, list[Node]] = {}
            for node in by_level[lv]:
                if node.op is Op.LOOP:
                    self.loop(graph, node, counts, lengths, sources, rounds, path)
                else:
                    groups.setdefault(self.spec(node), []).append(node)
            for spec, members in groups.items():
                self.stage(graph, f"{path}{prefix}{lv}:{spec}", spec, members, counts, lengths,
                           sources, rounds)

    def loop(self, graph: Graph, node: Node, counts: dict, lengths: dict,
             sources: dict[str, Node], rounds: int, path: str) -> None:
        count = node.attrs["count"] if isinstance(node.attrs["count"], int) else 1
        carried = {v: counts.get(node.inputs[f"carry:{v}"]) for v in node.attrs["carried"]}
        captured = {r[8:]: counts.get(s) for r, s in node.inputs.items() if r.startswith("capture:")}
        growth = sum(int(n.attrs.get("max_tokens", 0)) for n in node.attrs["body"].nodes()
                     if n.op is Op.EXTEND and isinstance(n.attrs.get("max_tokens"), int))
        lens = {r.split(":", 1)[1]: lengths.get(s, 0) + (count * growth if r.startswith("carry:") else 0)
                for r, s in node.inputs.items()}
        inner = {**captured, **carried}
        srcs = {r.split(":", 1)[1]: found for r, s in node.inputs.items()
                if (found := source_prompt(graph, s, sources)) is not None}
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
        for rank, nid in enumerate(report.order):
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
        n = a.get("n") if isinstance(a.get("n"), int) else 1
        mt = a.get("max_tokens") if isinstance(a.get("max_tokens"), int) else 0
        op = node.op.value
        if node.op is Op.EXTEND:
            src = source_prompt(graph, node.inputs["candidates"], sources)
            base = self.sequence(src, spec, call=None, node_key=src.id, lens={}) if src else []
            return [Request(node.id, base + self.ids.run(("cand", node.id, i), cand_len), n, mt,
                            len(base)) for i in range(m)]
        layout_lens = {"candidate": cand_len,
                       "critique": lengths.get(node.inputs.get("critiques", ""), 0)}
        if _op_holes(op, "call"):
            out = []
            gen = mt if node.op in (Op.CRITIQUE, Op.REFINE) else 0
            for i in range(m):
                seq = self.sequence(node, spec, call=i, node_key=node.id, lens=layout_lens)
                out.append(Request(node.id, seq, 1, gen, self._shared(node, spec, layout_lens)))
            return out
        list_lens = {"candidates": m * (cand_len + LIST_ITEM_TOKENS),
                     "critiques": (counts.get(node.inputs.get("critiques", "")) or 0)
                     * (lengths.get(node.inputs.get("critiques", ""), 0) + LIST_ITEM_TOKENS)}
        seq = self.sequence(node, spec, call=None, node_key=node.id, lens=list_lens)
        if node.op is Op.RANK:
            return [Request(node.id, seq, 1, RANK_MAX_TOKENS, len(seq))]
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


def source_prompt(graph: Graph, nid: str, sources: dict[str, Node]) -> Node | None:
    """The generate-like node whose prompt the candidates `nid` continue
    (`sources` maps a loop region's INPUT names to nodes outside it)."""
    seen = set()
    cur: Node | None = graph[nid]
    while cur is not None and cur.id not in seen:
        seen.add(cur.id)
        if cur.op in (Op.GENERATE, Op.UNIT_TESTS, Op.FUSE, Op.REFINE, Op.CRITIQUE):
            return cur
        if cur.op is Op.INPUT:
            return sources.get(cur.attrs.get("name", ""))
        if cur.op is Op.LOOP_OUT:
            loop = graph[cur.inputs["loop"]]
            nxt = loop.inputs.get(f"carry:{cur.attrs['var']}")
        else:
            nxt = cur.inputs.get("candidates") or cur.inputs.get("item0") or cur.inputs.get("option0")
        cur = graph[nxt] if nxt else None
    return None


def candidate_lengths(graph: Graph, outer: dict[str, int]) -> dict[str, int]:
    """Tokens per candidate each node holds, at most (max_tokens of what made it)."""
    lengths: dict[str, int] = {}
    for node in graph.nodes():
        a = node.attrs
        mt = a.get("max_tokens") if isinstance(a.get("max_tokens"), int) else 0
        ins = [lengths.get(s, 0) for s in node.inputs.values()]
        if node.op is Op.INPUT:
            lengths[node.id] = outer.get(a.get("name", ""), 0)
        elif node.op in (Op.GENERATE, Op.FUSE, Op.UNIT_TESTS, Op.CRITIQUE, Op.REFINE):
            lengths[node.id] = mt
        elif node.op is Op.RANK:
            lengths[node.id] = lengths.get(node.inputs.get("candidates", ""), 0)
        elif node.op is Op.EXTEND:
            lengths[node.id] = lengths.get(node.inputs["candidates"], 0) + mt
        elif node.op is Op.LOOP_OUT:
            loop = graph[node.inputs["loop"]]
            body = loop.attrs["body"]
            growth = sum(int(n.attrs.get("max_tokens", 0)) for n in body.nodes()
                         if n.op is Op.EXTEND and isinstance(n.attrs.get("max_tokens"), int))
            count = loop.attrs["count"] if isinstance(loop.attrs["count"], int) else 1
            lengths[node.id] = lengths.get(loop.inputs[f"carry:{a['var']}"], 0) + count * growth
        else:
            lengths[node.id] = max(ins, default=0)
    return lengths


def analyze(program: Program, input_tokens: int | None = None) -> Analysis:
    """The per-input prefix trie of the whole plan, stage by stage."""
    if input_tokens is None:
        from ttsc.compiler.utility import load_calibration

        cal = load_calibration(program.file) if program.file and not program.file.startswith("<") else None
        input_tokens = round(cal.input_tokens) if cal and cal.input_tokens else DEFAULT_INPUT_TOKENS
    return _Analyzer(program, input_tokens).run()


# ------------------------------------------------------------------ the pass


def prefix_sharing(program: Program) -> PassResult:
    changed_notes = _rewrite_layouts(program)
    analysis = analyze(program)
    t = analysis.totals()
    notes = list(changed_notes)
    facts: dict[str, Any] = {}
    if analysis.stages:
        saved = t["without"] - t["with"]
        facts = {
            "prefill_tokens_per_input": {"with_sharing": t["with"], "without_sharing": t["without"]},
            "prefill_tokens_saved": saved,
            "prefill_shared_across_inputs": t["cross_input"],
            "predicted_tokens_per_input": t["with"] + t["generated"],
            "kv_peak_bytes": _kv_peak(analysis),
            "predicted_latency_s": round(t["seconds"], 3),
            "token_counts": "exact" if analysis.exact else "estimated",
        }
        ratio = t["without"] / t["with"] if t["with"] else 1.0
        analysis_notes = [f"prefill tokens per input: {t['with']} with a prefix cache, "
                          f"{t['without']} without ({ratio:.1f}x); {t['cross_input']} more "
                          "shared by every input of a batch"]
        for s in analysis.stages:
            if len(s.order) > 1:
                analysis_notes.append(f"{s.name}: longest-prefix-first order {', '.join(s.order)}")
        analysis_notes += [f"token counts {h}" for h in analysis.how]
        unknown = sorted({s.model for s in analysis.stages
                          if model_facts.model_shape(s.model).source == "default"})
        if unknown:
            analysis_notes.append("no config known for " + ", ".join(unknown) + ": KV bytes and "
                                  "latency assume a Llama-3-8B-shaped model")
        # The pass runs in a fixpoint loop: report the analysis once, not every round.
        if program.meta.get("prefix_notes") != analysis_notes:
            program.meta["prefix_notes"] = analysis_notes
            notes += analysis_notes
        # Per LLM batch, for `--emit json`: prefill with and without a prefix
        # cache, and the longest-prefix-first order of its nodes' requests.
        facts["prefix_stages"] = [
            {"stage": s.name, "model": s.model, "nodes": s.nodes, "rounds": s.rounds,
             "prefill_with_sharing": s.prefill_with, "prefill_without_sharing": s.prefill_without,
             "generated_at_most": s.generated, "order": s.order,
             "predicted_seconds": round(s.seconds, 4)} for s in analysis.stages]
    program.meta.setdefault("plan_facts", {}).update(facts)
    return PassResult(bool(changed_notes), notes)


def _kv_peak(analysis: Analysis) -> int:
    peak = 0
    for s in analysis.stages:
        shape = model_facts.model_shape(s.model)
        profile = profiles.load_profile(s.model)
        peak = max(peak, int(s.kv_with * shape.kv_bytes_per_token(profile.dtype_bytes)))
    return peak
