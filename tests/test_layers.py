"""The layering of the tree, checked on every module's `ttsc.` imports.

    common <- dsl <- kernels <- compiler <- runtime <- ttsc (API and CLI)

A module imports only from its own layer and the layers left of it, with
these narrower rules:
- the DSL imports nothing of ours but the ground (`common`);
- kernels import only the ground; engines do not import the DSL either;
- the runtime reaches into the compiler only through the interfaces below;
- commands (argparse) live in the CLI, not in the layers under it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"common": 0, "dsl": 1, "kernels": 2, "compiler": 3, "runtime": 4, "ttsc": 5}
# What the runtime may use of the compiler, and why.
RUNTIME_USES_OF_COMPILER = {
    "ttsc.compiler.plan": "the Plan the runtime executes",
    "ttsc.compiler.ops": "the op table",
    "ttsc.compiler.pipeline": "compiling a strategy (calibrate, search)",
    "ttsc.compiler.utility": "the calibration file format calibrate writes and the allocator reads",
    "ttsc.compiler.allocator": "CP-SAT across the inputs of a data set",
    "ttsc.compiler.cost": "model facts and engine profiles the runtime measures for the compiler",
    "ttsc.compiler.model_facts": "model facts the runtime caches for the compiler",
    "ttsc.compiler.profiles": "engine profiles `ttsc profile` stores for the compiler",
    "ttsc.compiler.space": "the search seam: a space's knobs, and the concrete program of an "
                           "assignment (search writes its winners with it)",
}


# Modules run as developer tools (`python -P -m ...`), not user commands.
TOOLS = {"ttsc.kernels.compile_check": "compiles the Triton kernels to cubins without a GPU"}


def layer_of(module: str) -> str:
    """`ttsc.runtime.eval` -> runtime; `ttsc.api` -> ttsc."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "ttsc"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["ttsc", *parts] if parts[0] != "ttsc" else parts)


def imports_of(source: str) -> list[str]:
    """Every module a source imports (function-level imports included)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names]
    return found


def violations(module: str, source: str) -> list[str]:
    """Why each forbidden import of `module` is forbidden."""
    here = layer_of(module)
    out = []
    for imported in imports_of(source):
        if imported == "argparse" and here != "ttsc" and module not in TOOLS:
            out.append(f"{module} imports argparse: commands belong to the CLI (ttsc/cli.py)")
        if not imported.startswith("ttsc.") or imported.count(".") < 1:
            continue
        there = layer_of(imported)
        if there == "ttsc" and not imported.startswith("ttsc.common"):
            if here != "ttsc" and imported.split(".")[1] not in LAYERS:
                out.append(f"{module} imports {imported}: the API/CLI is the top layer")
            continue
        if LAYERS[there] > LAYERS[here]:
            out.append(f"{module} imports {imported}: {there} is above {here}")
        elif here == "dsl" and there not in ("dsl", "common"):
            out.append(f"{module} imports {imported}: the DSL imports only the ground")
        elif here == "kernels" and there not in ("kernels", "common"):
            out.append(f"{module} imports {imported}: kernels import only the ground")
        elif module.startswith("ttsc.runtime.engines") and there == "dsl":
            out.append(f"{module} imports {imported}: engines do not import the DSL")
        elif here == "runtime" and there == "compiler":
            allowed = [m for m in RUNTIME_USES_OF_COMPILER
                       if imported == m or imported.startswith(m + ".")]
            if not allowed and imported not in ("ttsc.compiler",):
                out.append(f"{module} imports {imported}: the runtime uses the compiler only "
                           f"through {', '.join(sorted(RUNTIME_USES_OF_COMPILER))}")
    return sorted(set(out))


def our_modules() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))


def test_no_module_imports_a_higher_layer():
    found = [v for p in our_modules() for v in violations(module_name(p), p.read_text())]
    assert found == [], "\n".join(found)


@pytest.mark.parametrize("module, source, why", [
    # The breaks this test was written against (each was in the tree once).
    ("ttsc.compiler.passes.prefix_sharing",
     "from ttsc.runtime.default_prompts import DEFAULT_PROMPTS", "runtime is above compiler"),
    ("ttsc.runtime.engines.paged.engine", "from ttsc.dsl.errors import UserError",
     "engines do not import the DSL"),
    ("ttsc.kernels.cpu_ops", "from ttsc.dsl.errors import UserError", "kernels import only the ground"),
    ("ttsc.runtime.calibrate", "def f():\n    from ttsc.compiler.passes.inline import inline\n",
     "the runtime uses the compiler only through"),
    ("ttsc.runtime.calibrate", "from ttsc.compiler.build import build", "the runtime uses the compiler"),
    ("ttsc.runtime.profile", "import argparse", "commands belong to the CLI"),
    ("ttsc.dsl.parser", "from ttsc.compiler.ops import SIGNATURES", "compiler is above dsl"),
    ("ttsc.common.errors", "from ttsc.dsl.ast import Span", "dsl is above common"),
])
def test_the_checker_catches_each_kind_of_break(module, source, why):
    assert any(why in v for v in violations(module, source))


def test_allowed_imports_pass():
    assert violations("ttsc.runtime.eval", "from ttsc.compiler.plan import Plan") == []
    assert violations("ttsc.compiler.passes.kernels",
                      "from ttsc.kernels.aggregate_codegen import write_source") == []
    assert violations("ttsc.cli", "import argparse\nfrom ttsc.runtime.eval import evaluate") == []
    assert violations("ttsc.dsl.parser", "from ttsc.common.errors import UserError") == []
