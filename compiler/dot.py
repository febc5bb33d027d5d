"""Graphviz DOT of the IR, loop regions drawn as clusters."""

from __future__ import annotations

from ttsc.compiler.ir import Graph, Op

_LLM_COLOR = "#cfe2ff"
_HOST_COLOR = "#eeeeee"


def to_dot(graph: Graph, title: str = "") -> str:
    lines = ["digraph ttsc {", "  rankdir=TB;", '  node [shape=box, style="rounded,filled", '
             'fontname="Helvetica", fontsize=10];']
    if title:
        lines.append(f'  label="{_esc(title)}"; labelloc=t;')
    _emit(graph, "", lines, "  ")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _emit(graph: Graph, prefix: str, lines: list[str], indent: str) -> None:
    for node in graph.nodes():
        nid = prefix + node.id
        attrs = {k: v for k, v in node.attrs.items() if k not in ("body", "cond", "carried")}
        label = f"{node.op.value}\\n" + "\\n".join(f"{k}={_esc(str(v))[:40]}" for k, v in attrs.items())
        color = _LLM_COLOR if node.is_llm else _HOST_COLOR
        lines.append(f'{indent}"{nid}" [label="{label}", fillcolor="{color}"];')
        for role, src in node.inputs.items():
            lines.append(f'{indent}"{prefix + src}" -> "{nid}" [label="{_esc(role)}", fontsize=8];')
        if node.op is Op.LOOP:
            for key in ("cond", "body"):
                sub = node.attrs.get(key)
                if sub is None:
                    continue
                lines.append(f'{indent}subgraph "cluster_{nid}_{key}" {{')
                lines.append(f'{indent}  label="{node.id} {"until" if key == "cond" else "body"}"; '
                             'style=dashed;')
                _emit(sub, f"{nid}.{key}.", lines, indent + "  ")
                lines.append(f"{indent}}}")
                lines.append(f'{indent}"{nid}.{key}.{sub.output}" -> "{nid}" [style=dotted];')


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
