"""A small tokenizer for warm starts: the `tokenizers` library plus jinja2.

Building a transformers tokenizer means importing transformers (seconds on a
small machine). The engines use a tokenizer for four things only: rendering the
chat template, encoding text, decoding ids, and the BOS id. `LightTokenizer`
does those four with the model's own `tokenizer.json` and chat template, the
way transformers does them (its jinja environment and template variables; the
backend tokenizer's encode and decode, which transformers' fast tokenizers call).

It is used only where `agrees_with` has checked it against the transformers
tokenizer it replaces, on probe conversations and texts, when the weight cache
stored it (runtime/engines/paged/weight_cache.py); a model whose template or
tokenizer it does not reproduce keeps the transformers tokenizer.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from tokenizers import Tokenizer

# What probes `agrees_with`: chat shapes, whitespace, unicode, special-token text.
PROBE_CHATS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("user", "What is 2 + 3?"),),
    (("system", "Answer briefly."), ("user", "Name a color.")),
    (("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Add 4 and 5.")),
    (("user", "  leading and trailing spaces  \n\nand blank lines\n"),),
    (("user", "café — naïve 日本語 🙂 \t tab"),),
    (("user", "Literal markup: <|im_start|> <|im_end|> </s> <s> {{ not a hole }} {% raw %}"),),
    (("user", ""),),
)
PROBE_TEXTS: tuple[str, ...] = (
    "", " ", "Yes", " Yes", "No", "Answer: 42\n\n", "x" * 40, "The quick brown fox.\n\tdef f(a, b):",
    "café — naïve 日本語 🙂", "<|im_start|>user\nhi<|im_end|>", "  two  spaces  ", "1234567890 3.14159",
)


class LightTokenizer:
    """The calls the engines make of a transformers tokenizer, without transformers."""

    def __init__(self, backend: Tokenizer, chat_template: str, special_tokens: dict[str, Any],
                 bos_token_id: int | None, eos_token_id: int | None, pad_token_id: int | None):
        self.backend = backend
        self.chat_template = chat_template
        self.special_tokens_map = special_tokens  # the template sees these (bos_token, eos_token, ...)
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self._template = _compile(chat_template)

    # The four calls ------------------------------------------------------

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = False,
                            tokenize: bool = False) -> str:
        if tokenize:
            raise NotImplementedError("LightTokenizer renders text only (tokenize=False)")
        return self._template.render(messages=[dict(m) for m in messages], tools=None, documents=None,
                                     add_generation_prompt=add_generation_prompt, **self.special_tokens_map)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.backend.encode(text, add_special_tokens=add_special_tokens).ids}

    def decode(self, ids: list[int], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool = False) -> str:
        if clean_up_tokenization_spaces:
            raise NotImplementedError("LightTokenizer decodes without clean-up only")
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    # Saving and checking ---------------------------------------------------

    @staticmethod
    def facts_of(hf_tokenizer: Any) -> dict[str, Any]:
        """What `from_facts` needs besides tokenizer.json, as JSON-able values."""
        return {"chat_template": hf_tokenizer.chat_template,
                "special_tokens": _plain(hf_tokenizer.special_tokens_map),
                "bos_token_id": hf_tokenizer.bos_token_id, "eos_token_id": hf_tokenizer.eos_token_id,
                "pad_token_id": hf_tokenizer.pad_token_id}

    @staticmethod
    def from_hf(hf_tokenizer: Any) -> "LightTokenizer":
        backend = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
        return LightTokenizer.from_facts(backend, LightTokenizer.facts_of(hf_tokenizer))

    @staticmethod
    def from_facts(backend: Tokenizer, facts: dict[str, Any]) -> "LightTokenizer":
        return LightTokenizer(backend, facts["chat_template"], facts["special_tokens"],
                              facts["bos_token_id"], facts["eos_token_id"], facts["pad_token_id"])

    def agrees_with(self, hf_tokenizer: Any) -> str | None:
        """None when this tokenizer gives the transformers one's results on every
        probe; else the first probe where they differ."""
        rendered = []
        for chat in PROBE_CHATS:
            messages = [{"role": r, "content": c} for r, c in chat]
            try:
                want = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except Exception:
                continue  # a template that rejects this shape (e.g. no system role)
            try:
                got = self.apply_chat_template(messages, add_generation_prompt=True)
            except Exception as exc:
                return f"chat {chat!r}: {exc.__class__.__name__}"
            if got != want:
                return f"chat {chat!r} renders differently"
            rendered.append(want)
        for text in (*PROBE_TEXTS, *rendered):
            for special in (False, True):
                want_ids = hf_tokenizer(text, add_special_tokens=special)["input_ids"]
                if self(text, add_special_tokens=special)["input_ids"] != want_ids:
                    return f"text {text!r} encodes differently"
                for ids in (want_ids, want_ids[:-1], want_ids[1:]):  # byte-split tails included
                    want_text = hf_tokenizer.decode(ids, skip_special_tokens=False,
                                                    clean_up_tokenization_spaces=False)
                    if self.decode(ids) != want_text:
                        return f"ids {ids!r} decode differently"
        return None


def _plain(value: Any) -> Any:
    """Special tokens as plain strings (transformers 5 may hold AddedToken objects)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def _compile(chat_template: str) -> Any:
    """The template in the environment transformers renders chat templates in."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["dict"] = dict
    return env.from_string(chat_template)
