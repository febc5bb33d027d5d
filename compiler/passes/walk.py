"""Helpers shared by passes: visiting every graph, nested regions included."""

from __future__ import annotations

from typing import Iterator

from ttsc.compiler.ir import Graph


def graphs(graph: Graph) -> Iterator[Graph]:
    """`graph` and every graph nested in it (loop regions, strategy bodies)."""
    yield graph
    for node in list(graph.nodes()):
        for key in ("cond", "body"):
            sub = node.attrs.get(key)
            if isinstance(sub, Graph):
                yield from graphs(sub)
