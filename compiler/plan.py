"""The Plan: what the runtime executes, as plain JSON-serializable data.

A Plan is a region: nodes (ops with inputs, constant attributes and the facts
passes learned) and stages that group them for execution. A stage is an LLM
batch (every LLM node of one model that can run together, for all inputs), a
kernel, a host step, or a loop region holding its own `cond` and `body`
regions. `Plan.from_json(plan.to_json()) == plan` holds exactly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

StageKind = Literal["llm", "kernel", "host", "loop"]
PLAN_VERSION = 1


@dataclass
class PlanNode:
    id: str
    op: str
    type: str | None
    inputs: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    span: str | None = None  # "file:line:col"
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Stage:
    id: str
    kind: StageKind
    nodes: list[str]
    deps: list[str] = field(default_factory=list)
    model: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    # Loop stages only:
    count: int | None = None
    carried: list[str] = field(default_factory=list)
    cond: "Region | None" = None
    body: "Region | None" = None


@dataclass
class Region:
    nodes: dict[str, PlanNode]
    stages: list[Stage]
    output: str

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Region":
        return Region(
            nodes={k: PlanNode(**v) for k, v in d["nodes"].items()},
            stages=[_stage_from_dict(s) for s in d["stages"]],
            output=d["output"],
        )

    def walk_stages(self):
        for stage in self.stages:
            yield stage
            for sub in (stage.cond, stage.body):
                if sub is not None:
                    yield from sub.walk_stages()

    def all_nodes(self) -> dict[str, PlanNode]:
        """Nodes of this region and nested ones (ids are unique per region only)."""
        out = dict(self.nodes)
        for stage in self.stages:
            for sub in (stage.cond, stage.body):
                if sub is not None:
                    out.update({f"{stage.id}/{k}": v for k, v in sub.all_nodes().items()})
        return out


def _stage_from_dict(d: dict[str, Any]) -> Stage:
    d = dict(d)
    for key in ("cond", "body"):
        if d.get(key) is not None:
            d[key] = Region.from_dict(d[key])
    return Stage(**d)


@dataclass
class Plan:
    file: str
    strategy: str
    params: list[str]
    models: dict[str, str]
    prompts: dict[str, dict[str, Any]]
    region: Region
    budget: dict[str, Any] | None = None
    allocation: dict[str, Any] = field(default_factory=dict)
    kernels: list[dict[str, Any]] = field(default_factory=list)
    passes: list[dict[str, Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Plan":
        d = dict(d)
        if d.get("version") != PLAN_VERSION:
            raise ValueError(f"plan version {d.get('version')} is not {PLAN_VERSION}")
        d["region"] = Region.from_dict(d["region"])
        return Plan(**d)

    @staticmethod
    def from_json(text: str) -> "Plan":
        return Plan.from_dict(json.loads(text))

    def llm_stages(self) -> list[Stage]:
        return [s for s in self.region.walk_stages() if s.kind == "llm"]
