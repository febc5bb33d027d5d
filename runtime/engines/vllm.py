"""The vLLM engine: an in-process `vllm.LLM` with prefix caching, for GPU users.

`vllm:ORG/NAME` specs are served here (and `--engine vllm` serves `hf:ORG/NAME`
and local model directories too). vLLM is an optional extra
(`pip install "ttsc[vllm]"`, Linux with a CUDA GPU), imported only when a
vLLM engine is made; where it or CUDA is missing that is a UserError.

The engine is a thin loop: prompts are rendered and tokenized here with
vLLM's own tokenizer (the same code as the torch engines,
runtime/engines/prompting.py), requests become vLLM requests and outputs
become ours through runtime/engines/vllm_translate.py, and concurrent callers'
requests go to `LLM.generate` together (runtime/engines/coalesce.py), since
`LLM` serves one batch at a time and is not thread-safe.

- sampling: one vLLM request per sample, seed s + i for sample i (our
  contract), `logprobs=0` for each sampled token's log-probability;
- `score_next`: the top log-probabilities of one step; a choice outside them
  is scored exactly with `prompt_logprobs` over prompt + that token;
- `score_continuations`: `prompt_logprobs` over prompt + continuation;
- usage per request from its own outputs: prompt tokens, those vLLM's prefix
  cache served (`num_cached_tokens`), generated tokens.

Differences from the torch engines, stated: with a top-k or top-p cut, a
sampled token's logprob is vLLM's "processed" one (after temperature and the
cut); and vLLM does not promise bit-identical samples when batch mates change
(its kernels may reduce in another order), which the torch engines do.
"""

from __future__ import annotations

import dataclasses
import random
import warnings
from typing import Any, Callable, Sequence

from ttsc.common.errors import UserError
from ttsc.common.specs import parse_spec
from ttsc.runtime.engines import prompting
from ttsc.runtime.engines.base import (Capabilities, Completion, ContinuationOutput,
                                       ContinuationRequest, Engine, NextTokenRequest, Prompt,
                                       SampleOutput, SampleRequest, ScoreOutput, Usage,
                                       check_sampling)
from ttsc.runtime.engines.coalesce import Coalescer
from ttsc.runtime.engines.vllm_translate import (TOP_LOGPROBS, VllmRequest, engine_arguments,
                                                 next_token_request, prompt_logprob_request,
                                                 prompt_usage, read_next_token,
                                                 read_prompt_logprobs, read_samples,
                                                 sample_requests)
from ttsc.runtime.models import CHATML_TEMPLATE

INSTALL_HINT = 'pip install "ttsc[vllm]" on Linux with a CUDA GPU'


class VllmEngine(Engine):
    """Our contract over a `vllm.LLM` (or anything with its `generate`,
    `get_tokenizer` and model config)."""

    name = "vllm"

    def __init__(self, llm: Any, spec: str, *, make_params: Callable[..., Any], seed: int = 0,
                 top_logprobs: int = TOP_LOGPROBS, notes: Sequence[str] = ()):
        self.llm = llm
        self.spec = spec
        self._make_params = make_params  # vllm.SamplingParams
        self.top_logprobs = top_logprobs
        self.notes = list(notes)  # what this vLLM release does differently
        self.tokenizer = llm.get_tokenizer()
        if not getattr(self.tokenizer, "chat_template", None):
            self.tokenizer.chat_template = CHATML_TEMPLATE  # as the torch engines do
        config = _model_config(llm)
        self.max_length = int(config.max_model_len)
        self.dtype = str(getattr(config, "dtype", "")).replace("torch.", "")
        self._eos_ids = _eos_ids(self.tokenizer, config)
        self._seeds = random.Random(seed)  # seeds for requests that give none
        self._batcher: Coalescer[VllmRequest, Any] = Coalescer(self._generate)
        self.capabilities = Capabilities(max_concurrency=_max_num_seqs(llm), prefix_cache=True)

    @classmethod
    def load(cls, model: str, spec: str, *, seed: int = 0, dtype: str = "auto",
             **options: Any) -> "VllmEngine":
        """Start vLLM on `model` (a Hugging Face name or a directory);
        `options` are further `vllm.LLM` / `vllm.EngineArgs` arguments."""
        vllm = import_vllm()
        supported = {f.name for f in dataclasses.fields(vllm.EngineArgs)}
        try:
            args, notes = engine_arguments(model, supported, seed=seed, dtype=dtype,
                                           options=options)
        except KeyError as e:
            raise UserError(f"engine `vllm` has no option `{e.args[0]}`",
                            hint="options are vllm.EngineArgs fields, e.g. gpu_memory_utilization, "
                                 "max_model_len, tensor_parallel_size") from None
        for note in notes:
            warnings.warn(f"vLLM engine: {note}", stacklevel=2)
        return cls(vllm.LLM(**args), spec, make_params=vllm.SamplingParams, seed=seed,
                   notes=notes)

    # ------------------------------------------------------------ prompts

    def prompt_text(self, prompt: Prompt) -> str:
        return prompting.prompt_text(self.tokenizer, self.spec, prompt)

    def _encode(self, prompt: Prompt, text: str) -> list[int]:
        return prompting.encode(self.tokenizer, prompt, text)

    def tokenize(self, prompt: Prompt) -> list[int]:
        return self._encode(prompt, self.prompt_text(prompt))

    def _check_length(self, ids: list[int], what: str = "prompt") -> None:
        if len(ids) >= self.max_length:
            raise UserError(f"{what} is {len(ids)} tokens; model `{self.spec}` accepts at most "
                            f"{self.max_length} in all (vLLM's max_model_len)")

    # ------------------------------------------------------------ contract

    def sample(self, requests: Sequence[SampleRequest]) -> list[SampleOutput]:
        plans = []  # per request: its prompt ids and its vLLM requests
        for req in requests:
            check_sampling(req.params)
            ids = self.tokenize(req.prompt)
            self._check_length(ids)
            base = req.params.seed if req.params.seed is not None else self._seeds.getrandbits(62)
            max_new = min(req.params.max_tokens, self.max_length - len(ids))
            # vLLM refuses max_tokens=0: such a request asks for nothing and gets nothing.
            rows = sample_requests(ids, req.params, base & prompting.SEED_MASK, max_new) if max_new else []
            plans.append((ids, rows))
        outputs = self._batcher.submit([row for _, rows in plans for row in rows])
        results, start = [], 0
        for req, (ids, rows) in zip(requests, plans):
            if not rows:
                results.append(SampleOutput([Completion("", [], [], "length")
                                             for _ in range(req.params.n)], Usage(calls=1)))
                continue
            context = ids[-prompting.DECODE_CONTEXT:]
            completions, usage = read_samples(
                outputs[start:start + len(rows)], eos_ids=self._eos_ids, stop=req.params.stop,
                decode=lambda tokens, context=context: prompting.decode_completion(
                    self.tokenizer, context, tokens))
            start += len(rows)
            results.append(SampleOutput(completions, usage))
        return results

    def score_next(self, requests: Sequence[NextTokenRequest]) -> list[ScoreOutput]:
        prompts, choices = [], []
        for req in requests:
            if not req.choices or any(not c for c in req.choices):
                raise UserError("score_next needs at least one non-empty choice")
            text = self.prompt_text(req.prompt)
            ids = self._encode(req.prompt, text)
            self._check_length(ids, "prompt")
            prompts.append(ids)
            choices.append([prompting.first_token(self.tokenizer, req.prompt, text, ids, c)
                            for c in req.choices])
        outputs = self._batcher.submit([next_token_request(ids, self.top_logprobs) for ids in prompts])
        scores = [read_next_token(out, cids) for out, cids in zip(outputs, choices)]
        usages = [Usage(calls=1) + prompt_usage(out) for out in outputs]
        # Choices outside the top log-probabilities: score prompt + that token exactly.
        missing = [(r, c) for r, row in enumerate(scores) for c, s in enumerate(row) if s is None]
        if missing:
            exact = self._batcher.submit([prompt_logprob_request(prompts[r] + [choices[r][c]])
                                          for r, c in missing])
            for (r, c), out in zip(missing, exact):
                scores[r][c] = read_prompt_logprobs(out, start=len(prompts[r]))
                usages[r] = usages[r] + prompt_usage(out)
        return [ScoreOutput([float(s) for s in row], usage)  # type: ignore[arg-type]
                for row, usage in zip(scores, usages)]

    def score_continuations(self, requests: Sequence[ContinuationRequest]) -> list[ContinuationOutput]:
        splits = []
        for req in requests:
            text = self.prompt_text(req.prompt)
            full, start = prompting.continuation_split(
                self.tokenizer, req.prompt, text, self._encode(req.prompt, text), req.continuation)
            self._check_length(full, "prompt + continuation")
            splits.append((full, start))
        scored = [i for i, (full, start) in enumerate(splits) if start < len(full)]
        outputs = self._batcher.submit([prompt_logprob_request(splits[i][0]) for i in scored])
        results = [ContinuationOutput(0.0, Usage(calls=1)) for _ in requests]  # empty: nothing to score
        for i, out in zip(scored, outputs):
            results[i] = ContinuationOutput(read_prompt_logprobs(out, start=splits[i][1]),
                                            Usage(calls=1) + prompt_usage(out))
        return results

    def close(self) -> None:
        # vLLM frees its GPU memory when the LLM object goes; drop our reference.
        self.llm = None

    # ------------------------------------------------------------ helpers

    def _generate(self, batch: list[VllmRequest]) -> list[Any]:
        if self.llm is None:
            raise RuntimeError("the vLLM engine was closed")
        params = [self._make_params(**r.settings) for r in batch]
        return list(self.llm.generate([r.prompt for r in batch], params, use_tqdm=False))


# ---------------------------------------------------------------- loading


def import_vllm() -> Any:
    """The vllm module, or a UserError saying how to get it and that it needs CUDA."""
    try:
        import vllm  # noqa: PLC0415 - optional, heavy: imported only when asked for
    except ImportError as e:
        raise UserError(f"the vLLM engine needs the `vllm` package, which is not installed ({e})",
                        hint=INSTALL_HINT + "; or use the built-in torch engines "
                             "(`--engine paged`, with an hf:ORG/NAME spec)") from None
    import torch

    if not torch.cuda.is_available():
        raise UserError("the vLLM engine needs a CUDA GPU, and torch sees none here",
                        hint="use the built-in torch engines on this machine (`--engine paged`, "
                             "with an hf:ORG/NAME spec)")
    return vllm


def vllm_model_name(spec: str) -> str:
    """What `vllm.LLM(model=...)` is given for a spec: a Hugging Face name or a directory."""
    parsed = parse_spec(spec)
    if parsed.kind in ("vllm", "hf"):
        return parsed.canonical.partition(":")[2]
    if parsed.kind == "local":
        return parsed.canonical
    raise UserError(f"the vLLM engine cannot serve `{spec}`",
                    hint="give it vllm:ORG/NAME, hf:ORG/NAME or a model directory "
                         "(Hugging Face layout)")


def make_vllm_engine(spec: str, *, device: str | None = None, **options: Any) -> VllmEngine:
    """The registry's factory for `vllm` engines."""
    if device not in (None, "cuda") and not str(device).startswith("cuda:"):
        raise UserError(f"the vLLM engine runs on CUDA GPUs, not `{device}`",
                        hint="drop --device, or use the torch engines for CPU")
    return VllmEngine.load(vllm_model_name(spec), spec, **options)


def _model_config(llm: Any) -> Any:
    config = getattr(llm, "model_config", None)
    if config is None:
        config = llm.llm_engine.model_config
    return config


def _max_num_seqs(llm: Any) -> int:
    """Sequences vLLM runs at once (its scheduler's max_num_seqs; 256 if unknown)."""
    config = getattr(getattr(llm, "llm_engine", None), "vllm_config", None)
    return int(getattr(getattr(config, "scheduler_config", None), "max_num_seqs", None) or 256)


def _eos_ids(tokenizer: Any, config: Any) -> frozenset[int]:
    """Tokens that end a generation: the tokenizer's EOS and the generation config's."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    try:
        generation = config.try_get_generation_config() or {}
    except Exception:  # a model without generation_config.json
        generation = {}
    eos = generation.get("eos_token_id")
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(i) for i in eos)
    return frozenset(ids)
