"""The first torch engine: a batched decode loop over a transformers causal LM.

It owns its loop (not `model.generate`): requests expand to rows (one per
sample), rows are sorted by prompt length and cut into chunks, each chunk is
left-padded and prefilled once, then decoded one token per step with a
DynamicCache, dropping finished rows as it goes. Sampling is per row: sample i
of a request with seed s draws its uniforms from a CPU `torch.Generator` seeded
s + i, so which rows share its batch does not change a row's random draws. Its
numbers do change (rows are left-padded to a common length, and the products
round by batch shape), so, unlike the paged engine on its CPU kernels, a row's
tokens can depend on its batch mates.

No prefix cache: every prompt token of every row is computed. The paged engine
(runtime/engines/paged) is the high-throughput one.

Threads: any number may call at once; calls take turns on the torch thread
(runtime/torch_thread.py: one call, batched over its own rows, at a time:
`capabilities.max_concurrency` is 1), and each gets exactly its own results
and usage.

Conventions shared with the contract suite (tests/engine_contract.py):
- `Completion.token_ids` exclude the EOS token; they include the tokens that
  completed a stop string, while `text` is cut before the stop string.
- `Usage.prompt_tokens` counts the prompt once per sample row (n rows of a
  prompt are n prefills), and `generated_tokens` is the sum of completion lengths.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Sequence

import torch
from transformers import DynamicCache

from ttsc.common.errors import UserError
from ttsc.runtime.engines import prompting
from ttsc.runtime.engines.base import (
    check_sampling,
    Completion,
    ContinuationOutput,
    ContinuationRequest,
    Engine,
    FinishReason,
    find_stop,
    matched_stop,
    NextTokenRequest,
    Prompt,
    SampleOutput,
    SampleRequest,
    SamplingParams,
    ScoreOutput,
    Usage,
)
from ttsc.runtime.engines.registry import HF_CAPABILITIES
from ttsc.runtime.models import LoadedModel
from ttsc.runtime.torch_thread import on_torch_thread

# Pruning copies the whole KV cache, so finished rows ride along (their outputs
# ignored) until this fraction of the batch is done.
_PRUNE_FRACTION = 0.25
# Scoring keeps the logits of every continuation position; at most this many floats.
_MAX_KEPT_LOGITS = 1 << 27


@dataclass
class _Row:
    """One sample being generated: a request's prompt plus its own RNG and output."""

    request_index: int
    prompt_ids: list[int]
    params: SamplingParams
    seed: int
    max_new_tokens: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    text: str = ""
    generator: torch.Generator | None = None
    searched_chars: int = 0  # stop strings were searched in text[:searched_chars]
    context_text: str | None = None
    stop: str | None = None  # the stop string that ended it

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def is_greedy(self) -> bool:
        return self.params.temperature == 0

    @property
    def is_truncated(self) -> bool:
        return self.params.top_k > 0 or self.params.top_p < 1.0

    def next_uniform(self) -> float:
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self.seed)
        return float(torch.rand((), generator=self.generator, dtype=torch.float64))


class HFEngine(Engine):
    """Torch engine over a transformers causal LM (CPU or CUDA)."""

    name = "hf"
    # No prefix cache, and one call at a time: concurrent callers take turns.
    capabilities = HF_CAPABILITIES

    def __init__(self, loaded: LoadedModel, max_batch_size: int = 64,
                 max_batch_tokens: int = 16384, seed: int = 0):
        if max_batch_size < 1 or max_batch_tokens < 1:
            raise UserError("max_batch_size and max_batch_tokens must be at least 1")
        self.loaded = loaded
        self.model = loaded.model
        self._head_fp32: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens  # bounds prefill activations
        self.max_length = loaded.max_length
        self._eos_ids = loaded.eos_token_ids
        pad = self.tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else next(iter(self._eos_ids), 0))
        self._seeds = random.Random(seed)  # seeds for requests that give none
        self._tokenizer_lock = threading.RLock()  # tokenize() is called off the torch thread too

    # ------------------------------------------------------------ prompts

    def prompt_text(self, prompt: Prompt) -> str:
        """The prompt as text: chat template applied, assistant prefix appended."""
        with self._tokenizer_lock:
            return prompting.prompt_text(self.tokenizer, self.loaded.spec, prompt)

    def _encode(self, prompt: Prompt, text: str) -> list[int]:
        with self._tokenizer_lock:
            return prompting.encode(self.tokenizer, prompt, text)

    def tokenize(self, prompt: Prompt) -> list[int]:
        with self._tokenizer_lock:
            return self._encode(prompt, self.prompt_text(prompt))

    def _check_length(self, ids: list[int], what: str = "prompt") -> None:
        if len(ids) >= self.max_length:
            raise UserError(f"{what} is {len(ids)} tokens; model `{self.loaded.spec}` "
                            f"accepts at most {self.max_length} in all")

    def _continuation_split(self, prompt: Prompt, continuation: str) -> tuple[list[int], int]:
        """Token ids of prompt+continuation and where the continuation's tokens start."""
        with self._tokenizer_lock:
            text = self.prompt_text(prompt)
            return prompting.continuation_split(self.tokenizer, prompt, text,
                                                self._encode(prompt, text), continuation)

    # ------------------------------------------------------------ contract

    @on_torch_thread
    def sample(self, requests: Sequence[SampleRequest]) -> list[SampleOutput]:
        rows = self._expand(requests)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i].prompt_ids))
        for chunk in self._chunks([rows[i] for i in order]):
            self._generate(chunk)
        results = [SampleOutput([], Usage(calls=1)) for _ in requests]
        for row in rows:
            out = results[row.request_index]
            out.completions.append(Completion(
                row.text, row.token_ids, row.logprobs, row.finish_reason or "length", row.stop))
            # Every row prefills its own prompt: nothing is reused.
            out.usage += Usage(prompt_tokens=len(row.prompt_ids),
                               prompt_tokens_computed=len(row.prompt_ids),
                               generated_tokens=len(row.token_ids))
        return results

    @on_torch_thread
    def score_next(self, requests: Sequence[NextTokenRequest]) -> list[ScoreOutput]:
        ids_list, choice_ids = [], []
        for req in requests:
            if not req.choices or any(not c for c in req.choices):
                raise UserError("score_next needs at least one non-empty choice")
            ids_list.append(self.tokenize(req.prompt))
            self._check_length(ids_list[-1])
            choice_ids.append([self._first_token(req.prompt, c) for c in req.choices])
        results = [ScoreOutput([], _prompt_usage(len(ids))) for ids in ids_list]
        order = sorted(range(len(ids_list)), key=lambda i: -len(ids_list[i]))
        for chunk in self._index_chunks([len(ids_list[i]) for i in order]):
            idx = [order[k] for k in chunk]
            logits = self._forward_last([ids_list[i] for i in idx], keep=1)[:, -1]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for row, i in enumerate(idx):
                results[i].logprobs = logprobs[row, choice_ids[i]].tolist()
        return results

    @on_torch_thread
    def score_continuations(self, requests: Sequence[ContinuationRequest]) -> list[ContinuationOutput]:
        splits = [self._continuation_split(r.prompt, r.continuation) for r in requests]
        for full_ids, _ in splits:
            self._check_length(full_ids, "prompt + continuation")
        results = [ContinuationOutput(0.0, _prompt_usage(len(full))) for full, _ in splits]
        order = sorted(range(len(splits)), key=lambda i: -len(splits[i][0]))
        for chunk in self._index_chunks(
                [len(splits[i][0]) for i in order],
                kept=[len(splits[i][0]) - splits[i][1] + 1 for i in order]):
            idx = [order[k] for k in chunk]
            num_cont = [len(splits[i][0]) - splits[i][1] for i in idx]
            keep = max(num_cont) + 1
            logits = self._forward_last([splits[i][0] for i in idx], keep=keep)
            for row, i in enumerate(idx):
                n = num_cont[row]
                if n == 0:
                    continue
                targets = torch.tensor(splits[i][0][-n:], device=logits.device)
                lp = torch.log_softmax(logits[row, keep - 1 - n: keep - 1].float(), dim=-1)
                results[i].logprob = float(lp.gather(-1, targets[:, None]).sum())
        return results

    def close(self) -> None:
        # The model itself belongs to the load_model cache; only free what batches left.
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------ helpers

    def _first_token(self, prompt: Prompt, choice: str) -> int:
        """The first token of `choice` as this engine tokenizes it after the prompt."""
        with self._tokenizer_lock:
            text = self.prompt_text(prompt)
            return prompting.first_token(self.tokenizer, prompt, text, self._encode(prompt, text), choice)

    def _expand(self, requests: Sequence[SampleRequest]) -> list[_Row]:
        rows: list[_Row] = []
        for index, req in enumerate(requests):
            params = req.params
            check_sampling(params)
            ids = self.tokenize(req.prompt)
            self._check_length(ids)
            base = params.seed if params.seed is not None else self._seeds.getrandbits(62)
            max_new = min(params.max_tokens, self.max_length - len(ids))
            for i in range(params.n):
                rows.append(_Row(index, ids, params, (base + i) & prompting.SEED_MASK, max_new))
        return rows

    def _chunks(self, rows: list[_Row]) -> list[list[_Row]]:
        lengths = [len(r.prompt_ids) for r in rows]
        return [[rows[i] for i in chunk] for chunk in self._index_chunks(lengths)]

    def _index_chunks(self, lengths: list[int],
                      kept: list[int] | None = None) -> list[list[int]]:
        """Consecutive index groups within the batch-size and token limits.

        `lengths` (sorted descending, so a chunk's first row is its longest) bound
        prefill tokens; `kept`, when given, is the logit positions each row keeps,
        bounded by `_MAX_KEPT_LOGITS`.
        """
        vocab = int(self.model.config.vocab_size)
        chunks: list[list[int]] = []
        current: list[int] = []
        longest = most_kept = 0
        for i, length in enumerate(lengths):
            new_longest = max(longest, length)
            new_kept = max(most_kept, kept[i]) if kept else 0
            count = len(current) + 1
            if current and (count > self.max_batch_size
                            or count * new_longest > self.max_batch_tokens
                            or count * new_kept * vocab > _MAX_KEPT_LOGITS):
                chunks.append(current)
                current, new_longest, new_kept = [], length, kept[i] if kept else 0
            current.append(i)
            longest, most_kept = new_longest, new_kept
        if current:
            chunks.append(current)
        return chunks

    def _left_pad(self, ids_list: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(ids) for ids in ids_list)
        input_ids = torch.full((len(ids_list), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids_list), width), dtype=torch.long)
        for b, ids in enumerate(ids_list):
            input_ids[b, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[b, width - len(ids):] = 1
        return input_ids.to(self.device), mask.to(self.device)

    @torch.inference_mode()
    def _forward_last(self, ids_list: list[list[int]], keep: int) -> torch.Tensor:
        """Logits of the last `keep` positions of each (left-padded) row: [B, keep, V],
        for scores: in fp32 even when the model is not (see `_fp32_head`)."""
        input_ids, mask = self._left_pad(ids_list)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        head = self._fp32_head()
        if head is not None:
            hidden = self.model.get_decoder()(input_ids=input_ids, attention_mask=mask,
                                              position_ids=positions, use_cache=False).last_hidden_state
            weight, bias = head
            return torch.nn.functional.linear(hidden[:, -keep:].float(), weight, bias)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                         use_cache=False, logits_to_keep=_last(input_ids, keep))
        return out.logits

    def _fp32_head(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The output head in fp32, for a half-precision model, or None. In
        bf16 a logit near 10 moves in steps of 1/16, so a verifier's P(Yes)
        over hundreds of candidates took a few dozen values; scores read fp32
        logits from the model's last hidden state instead. Models whose logits
        are more than a linear head of it (a final soft cap) keep their own."""
        if self.model.dtype == torch.float32 or getattr(self.model.config, "final_logit_softcapping", None):
            return None
        if self._head_fp32 is None:
            head = self.model.get_output_embeddings()
            bias = getattr(head, "bias", None)
            self._head_fp32 = (head.weight.float(), None if bias is None else bias.float())
        return self._head_fp32

    @torch.inference_mode()
    def _generate(self, rows: list[_Row]) -> None:
        """Decode every row of one chunk to completion, in place."""
        for row in rows:
            if row.max_new_tokens <= 0:
                row.finish_reason = "length"
        live = [r for r in rows if not r.is_finished]
        if not live:
            return
        input_ids, mask = self._left_pad([r.prompt_ids for r in live])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, L]
        cache = DynamicCache(config=self.model.config)
        logits = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                            past_key_values=cache, use_cache=True,
                            logits_to_keep=_last(input_ids, 1)).logits[:, -1]
        next_pos = positions[:, -1:] + 1  # [B, 1]
        batch = live  # batch[b] is the row in position b of the cache
        while True:
            active = [b for b, r in enumerate(batch) if not r.is_finished]
            tokens = torch.full((len(batch),), self._pad_id, dtype=torch.long)
            picked, logprobs = self._pick(logits[active], [batch[b] for b in active])
            for b, token, logprob in zip(active, picked, logprobs):
                self._append(batch[b], token, logprob)
                tokens[b] = token
            still = [b for b, r in enumerate(batch) if not r.is_finished]
            if not still:
                return
            if len(batch) - len(still) >= _PRUNE_FRACTION * len(batch):
                keep = torch.tensor(still, device=self.device)
                cache.batch_select_indices(keep)
                mask, next_pos, tokens = mask[keep], next_pos[keep], tokens[still]
                batch = [batch[b] for b in still]
            mask = torch.cat([mask, mask.new_ones((len(batch), 1))], dim=1)
            logits = self.model(input_ids=tokens[:, None].to(self.device), attention_mask=mask,
                                position_ids=next_pos, past_key_values=cache,
                                use_cache=True).logits[:, -1]
            next_pos = next_pos + 1

    def _append(self, row: _Row, token: int, logprob: float) -> None:
        """Record one generated token and decide whether the row is finished."""
        if token in self._eos_ids and not row.params.ignore_eos:
            row.finish_reason = "eos"
            row.text = self._decode(row)
            return
        row.token_ids.append(token)
        row.logprobs.append(logprob)
        if row.params.stop:
            text = self._decode(row)
            cut = find_stop(text, row.params.stop, row.searched_chars)
            row.searched_chars = len(text)
            if cut is not None:
                row.text = text[:cut]
                row.stop = matched_stop(text, cut, row.params.stop)
                row.finish_reason = "stop"
                return
        if len(row.token_ids) >= row.max_new_tokens:
            row.finish_reason = "length"
            row.text = self._decode(row)

    def _decode(self, row: _Row) -> str:
        context = row.prompt_ids[-prompting.DECODE_CONTEXT:]
        with self._tokenizer_lock:
            if row.context_text is None:
                row.context_text = prompting.detok(self.tokenizer, context)
            return prompting.decode_completion(self.tokenizer, context, row.token_ids, row.context_text)

    def _pick(self, logits: torch.Tensor, rows: list[_Row]) -> tuple[list[int], list[float]]:
        """Next token and its log-probability for each row (logits: [A, V])."""
        logits = logits.float()
        tokens = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        logprobs = torch.empty(len(rows), dtype=torch.float32, device=logits.device)
        greedy = [i for i, r in enumerate(rows) if r.is_greedy]
        if greedy:
            lg = logits[greedy]
            best = lg.argmax(dim=-1)
            tokens[greedy] = best
            logprobs[greedy] = torch.log_softmax(lg, dim=-1).gather(-1, best[:, None])[:, 0]
        # Which sampling path a row takes depends only on its own params, so its
        # draw is the same whatever else is in the batch.
        for subset in ([i for i, r in enumerate(rows) if not r.is_greedy and not r.is_truncated],
                       [i for i, r in enumerate(rows) if not r.is_greedy and r.is_truncated]):
            if not subset:
                continue
            sub = [rows[i] for i in subset]
            temps = torch.tensor([r.params.temperature for r in sub], device=logits.device)
            logp = torch.log_softmax(logits[subset] / temps[:, None], dim=-1)
            uniforms = torch.tensor([r.next_uniform() for r in sub], dtype=torch.float64,
                                    device=logits.device)
            if sub[0].is_truncated:
                picked = _sample_truncated(logp, uniforms, sub)
            else:
                picked = _sample_inverse_cdf(logp.exp().double(), uniforms)
            tokens[subset] = picked
            logprobs[subset] = logp.gather(-1, picked[:, None])[:, 0]
        return tokens.tolist(), logprobs.tolist()


def _prompt_usage(tokens: int) -> Usage:
    return Usage(calls=1, prompt_tokens=tokens, prompt_tokens_computed=tokens)


def _last(input_ids: torch.Tensor, keep: int) -> torch.Tensor:
    """Positions of the last `keep` tokens, as an index tensor for `logits_to_keep`.

    An int would slice the hidden states to a strided view, and with bf16 weights
    CPU matmul then broadcasts the whole LM head per row (8x slower prefill);
    indexing copies the few kept rows instead.
    """
    length = input_ids.shape[1]
    return torch.arange(max(length - keep, 0), length, device=input_ids.device)


def _sample_inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Index i with cdf[i-1] <= u * total < cdf[i], per row (probs: [A, V] float64)."""
    cdf = probs.cumsum(dim=-1)
    target = uniforms * cdf[:, -1]
    picked = torch.searchsorted(cdf, target[:, None], right=True)[:, 0]
    return picked.clamp(max=probs.shape[-1] - 1)


def _sample_truncated(logp: torch.Tensor, uniforms: torch.Tensor,
                      rows: list[_Row]) -> torch.Tensor:
    """Sample after per-row top-k and top-p (nucleus) cuts."""
    sorted_logp, order = logp.sort(dim=-1, descending=True)
    probs = sorted_logp.exp().double()
    vocab = probs.shape[-1]
    rank = torch.arange(vocab, device=logp.device)
    top_k = torch.tensor([r.params.top_k if r.params.top_k > 0 else vocab for r in rows],
                         device=logp.device)
    top_p = torch.tensor([r.params.top_p for r in rows], dtype=torch.float64,
                         device=logp.device)
    before = probs.cumsum(dim=-1) - probs  # mass strictly above each token
    # top_k >= 1 and top_p > 0, so the most likely token always survives.
    cut = (rank[None, :] >= top_k[:, None]) | (before >= top_p[:, None])
    probs = probs.masked_fill(cut, 0.0)
    return order.gather(-1, _sample_inverse_cdf(probs, uniforms)[:, None])[:, 0]

