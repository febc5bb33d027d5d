"""Prefix sharing at compile time: prompt layouts, their rewrite, and what a
prefix cache is predicted to save.

- `layout`: a node's prompt as the engine sees it (chat frame, system, user),
  as token ids of its text and typed holes.
- `rewrite`: shared-part-first layout of per-candidate prompts.
- `trie`: the token-level prefix trie and longest-prefix-first order.
- `predict`: the per-input trie of every LLM call the plan makes, stage by
  stage, and the prefill, generated tokens, KV and seconds it implies.

The pass that uses them is `ttsc.compiler.passes.prefix_sharing`.
"""
