"""Prompt -> text -> token ids, the same way for every local torch engine, so
their token ids (and greedy outputs) agree."""

from __future__ import annotations

from typing import Any

from ttsc.dsl.errors import UserError
from ttsc.runtime.engines.base import Prompt


def prompt_text(tokenizer: Any, spec: str, prompt: Prompt) -> str:
    """The prompt as text: chat template applied, assistant prefix appended."""
    if prompt.raw is not None:
        if prompt.messages:
            raise UserError("a prompt has both raw text and chat messages; give one")
        return prompt.raw + prompt.assistant_prefix
    messages = [{"role": role, "content": content} for role, content in prompt.messages]
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # jinja raises its own errors for role-order rules
        raise UserError(f"the chat template of model `{spec}` rejected the prompt: {e}") from e
    return text + prompt.assistant_prefix


def encode(tokenizer: Any, prompt: Prompt, text: str) -> list[int]:
    # Raw text gets the tokenizer's own special tokens (e.g. BOS); a rendered
    # chat template already holds them.
    ids = tokenizer(text, add_special_tokens=prompt.raw is not None)["input_ids"]
    if not ids and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id]
    return list(ids)
