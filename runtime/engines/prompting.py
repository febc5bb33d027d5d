"""Prompt -> text -> token ids, the same way for every local torch engine, so
their token ids (and greedy outputs) agree."""

from __future__ import annotations

from typing import Any

from ttsc.common.errors import UserError
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


# Seeds are masked to 63 bits so `seed + i` stays a valid torch generator seed.
SEED_MASK = (1 << 63) - 1
# Prompt tokens decoded before a completion: SentencePiece drops a leading
# space when a text is decoded on its own, so completions are decoded in context.
DECODE_CONTEXT = 4


def detok(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def decode_completion(tokenizer: Any, context: list[int], token_ids: list[int],
                      context_text: str | None = None) -> str:
    """The text of `token_ids` as written after `context` (the prompt's last tokens)."""
    if context_text is None:
        context_text = detok(tokenizer, context)
    full = detok(tokenizer, context + token_ids)
    if full.startswith(context_text):
        return full[len(context_text):]
    return detok(tokenizer, token_ids)


def first_token(tokenizer: Any, prompt: Prompt, text: str, prompt_ids: list[int], choice: str) -> int:
    """The first token of `choice` as the engine tokenizes it after the prompt
    (`text` is the prompt's rendered text, `prompt_ids` its tokens)."""
    full_ids = encode(tokenizer, prompt, text + choice)
    if len(full_ids) > len(prompt_ids) and full_ids[:len(prompt_ids)] == prompt_ids:
        return full_ids[len(prompt_ids)]
    # The choice merged with the prompt's last token: score it as written.
    return int(tokenizer(choice, add_special_tokens=False)["input_ids"][0])


def continuation_split(tokenizer: Any, prompt: Prompt, text: str, prompt_ids: list[int],
                       continuation: str) -> tuple[list[int], int]:
    """Token ids of prompt+continuation and where the continuation's tokens start."""
    full_ids = encode(tokenizer, prompt, text + continuation)
    start = 0
    while start < len(prompt_ids) and start < len(full_ids) and prompt_ids[start] == full_ids[start]:
        start += 1
    return full_ids, max(start, 1)  # the first token has no context to score it in
