"""Prompts: templates with `{name}` holes, which op fills which hole, the
shipped default prompts, and how a template becomes the structured `Prompt`
an engine receives.

One rule for every template, the user's and the shipped ones: `{name}` is a
hole, `{{` and `}}` are literal braces, and holes are filled in one pass
(inserted text is never read again). A prompt renders through the model's
chat template unless it is marked raw, in which case its system part (if
any) and user part are joined by a newline and used verbatim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

HOLE = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Shipped prompts call the task input `question`; a strategy whose first
# parameter has another name fills it from that parameter.
TASK_HOLE = "question"


def hole_names(text: str) -> tuple[str, ...]:
    """Hole names of a template in order of first appearance."""
    return tuple(dict.fromkeys(m.group(1) for m in HOLE.finditer(text) if m.group(1)))


@dataclass(frozen=True)
class Prompt:
    """What the model is conditioned on.

    Either chat `messages` (rendered through the model's chat template with the
    generation prompt appended) or `raw` text used verbatim. `assistant_prefix`
    is text the assistant has already written: `extend` continues from it.
    """

    messages: tuple[tuple[str, str], ...] = ()  # (role, content)
    raw: str | None = None
    assistant_prefix: str = ""

    @staticmethod
    def user(content: str, system: str | None = None) -> "Prompt":
        msgs = ((("system", system),) if system else ()) + (("user", content),)
        return Prompt(messages=msgs)

    def continued(self, text: str) -> "Prompt":
        """The same prompt with `text` appended to what the assistant wrote."""
        return Prompt(self.messages, self.raw, self.assistant_prefix + text)


@dataclass(frozen=True)
class PromptDef:
    """A prompt template: a user part, an optional system part, raw or chat."""

    user: str
    system: str | None = None
    raw: bool = False

    @property
    def holes(self) -> tuple[str, ...]:
        """Hole names in order of first appearance (system part first)."""
        return hole_names((self.system or "") + "\n" + self.user)

    def render(self, **values: Any) -> tuple[str | None, str]:
        """(system, user) with every hole filled."""
        missing = [h for h in self.holes if h not in values]
        if missing:
            raise KeyError(f"no value for hole(s) {', '.join(missing)}")
        return (fill(self.system, values) if self.system is not None else None,
                fill(self.user, values))

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "system": self.system, "raw": self.raw,
                "holes": list(self.holes)}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "PromptDef":
        return PromptDef(d["user"], d.get("system"), bool(d.get("raw", False)))


def format_candidates(texts: list[str]) -> str:
    """Numbered blocks "[1] first\\n\\n[2] second", numbered from 1: how a
    list-valued hole reads, and the numbering `rank` asks the model to use."""
    return "\n\n".join(f"[{i}] {text.strip()}" for i, text in enumerate(texts, start=1))


def hole_text(value: Any) -> str:
    """How a value reads inside a prompt."""
    if isinstance(value, list):
        return format_candidates([hole_text(v) if v is not None else "(none)" for v in value])
    if hasattr(value, "text"):  # a generated candidate
        return value.text
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


def fill(template: str, values: Mapping[str, Any]) -> str:
    """Replace `{name}` holes in one pass; `{{` and `}}` are literal braces."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return m.group(0)[0]
        return hole_text(values[m.group(1)])

    return HOLE.sub(sub, template)


def render_prompt(pdef: PromptDef | Mapping[str, Any], values: Mapping[str, Any]) -> Prompt:
    """The Prompt a template makes with these hole values (the raw/chat rule)."""
    if not isinstance(pdef, PromptDef):
        pdef = PromptDef.from_dict(pdef)
    user = fill(pdef.user, values)
    system = fill(pdef.system, values) if pdef.system else None
    if pdef.raw:
        return Prompt(raw=(system + "\n" if system else "") + user)
    return Prompt.user(user, system)


# -------------------------------------------------------- which op fills what

# Holes each LLM op fills itself, and how: "call" holes take one value per
# call (one call per candidate), "list" holes all candidates, numbered. Any
# other hole of an op's prompt names a variable of the strategy.
OP_HOLES: dict[str, dict[str, str]] = {
    "generate": {}, "extend": {}, "unit_tests": {},
    "verify": {"candidate": "call"}, "score": {"candidate": "call"},
    "critique": {"candidate": "call"},
    "refine": {"candidate": "call", "critique": "call"},
    "fuse": {"candidates": "list", "critiques": "list"},
    "rank": {"candidates": "list"},
    # A knockout match shows two candidates; a debate agent sees its own
    # answer and, numbered, the other agents' answers.
    "knockout": {"candidate_a": "call", "candidate_b": "call"},
    "debate": {"candidate": "call", "others": "call"},
}


# ------------------------------------------------------- the shipped prompts

VERIFY = PromptDef(
    system=None,
    user=("Problem: {question}\n\n"
          "Proposed solution: {candidate}\n\n"
          "Is the proposed solution correct? Answer Yes or No."),
)

CRITIQUE = PromptDef(
    system="You are a careful reviewer. Be brief and specific.",
    user=("Problem: {question}\n\n"
          "Proposed answer:\n{candidate}\n\n"
          "List the strengths and weaknesses of this answer in a few short bullet points. "
          "Point out any mistake. Do not write a new answer."),
)

RANK = PromptDef(
    system="You are a careful judge of answers.",
    user=("Problem: {question}\n\n"
          "Candidate answers:\n{candidates}\n\n"
          "Rank the candidate answers from best to worst by correctness and quality. "
          "Reply with the ranking only, using the candidates' numbers, like: [2] > [1] > [3]."),
)

# After Archon's fuser (itself after Mixture-of-Agents' aggregate-and-synthesize prompt).
FUSE = PromptDef(
    system=("You have been given several candidate answers to a problem, with critiques of each. "
            "Your task is to synthesize them into a single, high-quality answer. Some candidates "
            "may be wrong or biased: weigh them critically, keep what is correct, fix what the "
            "critiques point out, and do not simply copy one candidate."),
    user=("Problem: {question}\n\n"
          "Candidate answers:\n{candidates}\n\n"
          "Critiques:\n{critiques}\n\n"
          "Write one better answer to the problem, in the answer format the problem asks for."),
)

REFINE = PromptDef(
    system=None,
    user=("Problem: {question}\n\n"
          "Previous answer:\n{candidate}\n\n"
          "Feedback on the previous answer:\n{critique}\n\n"
          "Write an improved answer that fixes the problems the feedback names. "
          "Keep the answer format the problem asks for."),
)

UNIT_TESTS = PromptDef(
    system="You write unit tests for Python functions.",
    user=("Write Python assert statements that test a correct solution to this problem:\n\n"
          "{question}\n\n"
          "Write only assert statements, one per line, each calling the function on a concrete "
          "input and comparing with the expected output. Do not write the function itself."),
)

# A pairwise judge (J1 / V_1-style), read as P(A) against P(B) of its next token.
KNOCKOUT = PromptDef(
    system="You are a careful judge of answers.",
    user=("Problem: {question}\n\n"
          "Answer A:\n{candidate_a}\n\n"
          "Answer B:\n{candidate_b}\n\n"
          "Which answer is correct? Reply with the letter only: A or B."),
)

# After the debate prompt of Du et al. (2023).
DEBATE = PromptDef(
    system=None,
    user=("{question}\n\n"
          "Your previous answer:\n{candidate}\n\n"
          "These are the answers to the problem from other agents:\n{others}\n\n"
          "Using the reasoning from other agents as additional advice, can you give an updated "
          "answer? Examine your answer and that of the other agents step by step, and keep the "
          "answer format the problem asks for."),
)

# The shipped prompt of each op that has one; a .tts file can pass its own.
DEFAULT_PROMPTS: dict[str, PromptDef] = {
    "verify": VERIFY,
    "score": VERIFY,
    "critique": CRITIQUE,
    "rank": RANK,
    "fuse": FUSE,
    "refine": REFINE,
    "unit_tests": UNIT_TESTS,
    "knockout": KNOCKOUT,
    "debate": DEBATE,
}


def default_prompt(op: str) -> PromptDef | None:
    """The prompt an op renders when the strategy names none (None: the op needs one)."""
    return DEFAULT_PROMPTS.get(op)
