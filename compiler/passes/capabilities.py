"""Capabilities: can each model's engine serve the ops sent to it?

`compile_program(..., capabilities=...)` says what the engine behind each
model can do: a mapping by model name, or a function of a model's spec (the
CLI's: the registry's declaration for `--engine`, asked only for the models
the plan uses). No mapping, or a model missing from it: everything is assumed. An LLM op whose engine lacks what the op needs
(`common.capabilities.OP_NEEDS`: `verify` needs next-token scores, `extend`
an assistant prefix, ...) is an error at the op, naming the op, the model and
what is missing. A capability that only sharpens a prediction is not an
error: without a tokenizer, prefix sharing counts prompt tokens with its
documented estimate, and says why in its notes.
"""

from __future__ import annotations

from ttsc.common.capabilities import MEANING, Capabilities, op_needs
from ttsc.common.errors import TTSError, error
from ttsc.compiler.ir import Program
from ttsc.compiler.passes.manager import PassResult
from ttsc.compiler.passes.walk import graphs


def check_capabilities(program: Program) -> PassResult:
    known: dict[str, Capabilities | None] = {}
    problems = []
    for graph in graphs(program.graph):
        for node in graph.nodes():
            model = node.attrs.get("model") if node.is_llm else None
            if not isinstance(model, str):
                continue
            caps = known[model] = program.capabilities(model)
            missing = caps.missing(op_needs(node.op.value, node.attrs)) if caps else []
            if missing:
                needs = "; ".join(f"{m} ({MEANING[m]})" for m in missing)
                problems.append(error(
                    f"`{node.op.value}` cannot run on model `{model}` "
                    f"({program.models.get(model, model)}): its engine does not provide {needs}",
                    node.span, f"give `{node.op.value}` a model whose engine provides "
                               f"{' and '.join(missing)}"))
    if problems:
        raise TTSError(problems, {program.file: program.source})
    notes = [f"model `{name}`: its engine has no tokenizer, so prompt tokens are estimated"
             for name, caps in known.items() if caps is not None and not caps.tokenizer]
    return PassResult(False, notes)
