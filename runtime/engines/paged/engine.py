"""PagedEngine: the high-throughput torch engine.

Own decode loop over the model's weights, a paged KV pool with a hard memory
cap, a radix tree that shares every computed prefix, copy-on-write forks for
the N samples of a prompt, and continuous batching of mixed requests. The loop
is nano-vllm's: schedule, run, commit, then sample and finish.

Conventions are the HF engine's (runtime/engines/hf.py), so the two agree
token for token: prompts render through the chat template (raw text verbatim)
with the assistant prefix appended; completions exclude EOS; a stop string cuts
the text, not the tokens; sample i of a request with seed s uses seed s + i.
Usage: `prompt_tokens` counts the prompt once per sample; what the engine did
not compute (radix hits, prompts shared by forked samples) is `prompt_tokens_reused`.

Concurrent callers. `sample`, `score_next` and `score_continuations` may be
called from many threads at once. A call queues its sequences and sleeps
until they are done; the engine steps on the torch thread (runtime/
torch_thread.py: all of a process's torch work runs on one thread, or OpenMP
puts its workers to sleep after every parallel region), one job per step,
each step serving every caller's queued and running sequences, so requests
from different callers share batches (continuous batching across callers).
The engine is built there too, and a call made on that thread steps it
inline. Each result carries only its own request's usage. The scheduler,
block manager and radix tree are touched only there; the tokenizer, the seed
stream of unseeded requests and the counters have their locks.

Batch invariance. On CPU with the C++ kernels (the default wherever they can
be built, in bf16 and fp32 alike) a request's tokens and log-probabilities
are the same bits whatever shares its steps: other requests and callers, how
its prompt is cut into prefill chunks, what the prefix cache holds, whether
its samples decode as a cascade group, preemption and recomputation. So a
resumed `ttsc eval` draws what an uninterrupted one draws. Why it holds:
- matrix products: oneDNN's prepacked GEMMs give a row the same bits for any
  row count from 2 up, and a lone row is computed as two (model.Linear); on
  CPUs with AMX only up to 32 bf16 rows, so there products run in slices of
  32; MKL, which served fp32 before, rounds by row count;
- attention: every token, in decode and prefill, reads its keys in chunks of
  16 from position 0, a cascade group handing its online-softmax state on to
  each member's own keys, groups rounded to whole chunks (attention.py);
- norms, RoPE and SiLU work row by row; a row's sampler is chosen by its own
  settings (C++ for all of them: one sampler for plain and greedy rows,
  one for top-k/top-p rows, each drawing a row alone).
Measured on smollm2-135m (8 questions x 4 samples x 40 tokens at temperature
0.7, each request alone vs all in one call; tests/test_batch_invariance.py):
before, 7 of the 32 bf16 samples drew other tokens and 20 had other
log-probabilities (fp32: same tokens, all 32 with log-probabilities off by
about 1e-5); now none differ, in either dtype.
Outputs may still differ
- on the torch path (no C++ compiler, `TTSC_CPU_KERNELS=0`, `cpu_kernels=
  False`) and on CUDA: batched SDPA over padded keys, cuBLAS GEMMs and the
  log-sum-exp cascade merge round differently for other batch shapes. On the
  torch path, in the measurement above, 11 of the 32 bf16 samples drew other
  tokens alone than together; in fp32 the tokens were the same but 29 of 32
  samples had other log-probabilities (about 1e-5 apart). CUDA: not measured;
- between machines, torch versions and thread counts: oneDNN picks its kernels
  by CPU and threads;
- for requests without a seed: their seeds come from the engine's own stream,
  in the order calls arrive;
- on the HF engine, which pads rows to a common length.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from typing import Any, Sequence as Seq

import torch

from ttsc.common.errors import UserError
from ttsc.runtime import torch_thread
from ttsc.runtime.engines import prompting
from ttsc.runtime.engines.base import (
    check_sampling,
    Completion,
    ContinuationOutput,
    ContinuationRequest,
    Engine,
    find_stop,
    first_finished,
    matched_stop,
    NextTokenRequest,
    Prompt,
    SampleOutput,
    SampleRequest,
    SamplingParams,
    ScoreOutput,
    Usage,
)
from ttsc.runtime.engines.paged.block_manager import BlockManager
from ttsc.runtime.engines.paged.hardware import default_kv_bytes, resolve_dtype
from ttsc.runtime.engines.paged.model import LlamaModel
from ttsc.runtime.engines.paged.radix import RadixCache
from ttsc.runtime.engines.paged.runner import ModelRunner, kv_block_bytes
from ttsc.runtime.engines.paged.sampler import RowSettings, sample, uniform
from ttsc.runtime.engines.paged.scheduler import Scheduler
from ttsc.runtime.engines.paged.sequence import Sequence, SequenceKind, SequenceStatus
from ttsc.runtime.engines.paged.weight_cache import PagedWeights
from ttsc.runtime.engines.registry import PAGED_CAPABILITIES
from ttsc.runtime.models import LoadedModel, resolve_device
from ttsc.runtime.torch_thread import on_torch_thread



class PagedEngine(Engine):
    name = "paged"

    @on_torch_thread  # converting and prepacking the weights is torch work too
    def __init__(self, loaded: LoadedModel | PagedWeights, *, kv_memory_bytes: int | None = None,
                 block_size: int = 16, max_batch_tokens: int = 2048, max_num_seqs: int = 256,
                 dtype: torch.dtype | str | None = None, seed: int = 0,
                 use_kernels: bool | None = None, cpu_kernels: bool | None = None,
                 prefix_cache: bool = True):
        if block_size < 1 or max_batch_tokens < 1 or max_num_seqs < 1:
            raise UserError("block_size, max_batch_tokens and max_num_seqs must be at least 1")
        if isinstance(loaded, PagedWeights):  # from the weight cache: already in its dtype
            weights = loaded
            if dtype is not None and resolve_dtype(dtype, weights.device) != weights.dtype:
                raise ValueError(f"these weights are {weights.dtype}, not {dtype}")
        else:
            weights = PagedWeights.from_loaded(loaded, resolve_dtype(dtype, loaded.device))
        self.spec = weights.spec
        self.tokenizer = weights.tokenizer
        self.device = weights.device
        self.dtype = weights.dtype
        self.model = LlamaModel.from_state(weights.config, weights.state)
        self.max_length = min(weights.max_length, self.model.cfg.max_position)
        self.block_size = block_size
        block_bytes = kv_block_bytes(self.model, block_size)
        cap = kv_memory_bytes if kv_memory_bytes is not None else default_kv_bytes(self.device)
        num_blocks = cap // block_bytes
        if num_blocks < 2:
            raise UserError(f"kv_memory_bytes={cap} holds fewer than 2 KV blocks of "
                            f"{block_bytes} bytes", hint="raise kv_memory_bytes")
        self.requested_kv_bytes = cap
        self.blocks = BlockManager(num_blocks, block_size, block_bytes)
        self.radix = RadixCache(self.blocks)
        # prefix_cache=False computes every prompt in full, samples of one prompt
        # included: the no-sharing baseline of the prefix-sharing benchmark.
        self.prefix_cache = prefix_cache
        self.scheduler = Scheduler(self.blocks, self.radix, max_batch_tokens, max_num_seqs, prefix_cache)
        if use_kernels is None:
            from ttsc.kernels.dispatch import triton_usable
            use_kernels = self.device.type == "cuda" and triton_usable(self.device)
        self.use_kernels = use_kernels
        self.cpu_kernels = self._cpu_kernels(cpu_kernels)
        self.runner = ModelRunner(self.model, num_blocks, block_size, use_kernel=use_kernels)
        self._eos_ids = weights.eos_token_ids
        self._seeds = random.Random(seed)
        self.capabilities = dataclasses.replace(PAGED_CAPABILITIES, max_concurrency=max_num_seqs,
                                                prefix_cache=prefix_cache)
        self._prompt_tokens_requested = 0
        self._fork_shared_tokens = 0
        self._busy_seconds = 0.0
        self._decode_only_seconds = 0.0  # steps without prefill rows, schedule to sample
        self._decode_only_tokens = 0
        # Callers on several threads add their sequences to `_pending` and
        # sleep on `_cond`; `_driving` says a step is queued on the torch
        # thread, which queues the next while there is work.
        self._cond = threading.Condition()  # guards _pending, _driving, _seeds, counters
        self._pending: list[Sequence] = []
        self._driving = False
        self._tokenizer_lock = threading.RLock()  # fast tokenizers refuse concurrent use
        self._first_groups: list[list[Sequence]] = []  # first-finish requests still running

    @classmethod
    @on_torch_thread
    def from_spec(cls, spec: str, *, device: str | None = None, dtype: torch.dtype | str | None = None,
                  **options: Any) -> "PagedEngine":
        """The engine for a model spec, its weights from the weight cache when they
        are there (weight_cache.py), else loaded through transformers and stored."""
        from ttsc.runtime.engines.paged import weight_cache
        from ttsc.runtime.models import load_model

        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        entry = weight_cache.entry_dir(spec, dt)
        weights = weight_cache.load(entry, spec, dev) if entry is not None else None
        if weights is None:
            weights = PagedWeights.from_loaded(load_model(spec, device=device), dt)
            if entry is not None:
                weight_cache.store(entry, weights)
        return cls(weights, **options)

    def _cpu_kernels(self, wanted: bool | None) -> bool:
        """The C++ kernels on CPU, in bf16 and fp32 alike: faster than the torch
        path, and batch-invariant (see the module docstring), which the torch
        path is not. Off where they cannot be built, or with cpu_kernels=False."""
        if wanted is False or self.device.type != "cpu":
            return False
        from ttsc.kernels import cpu_ops

        if self.dtype not in (torch.bfloat16, torch.float32) or self.model.cfg.head_dim not in cpu_ops.HEAD_DIMS:
            return False
        ops = cpu_ops.load()
        if ops is None:
            return False
        self.model.use_cpu_ops(ops)
        return True

    # ------------------------------------------------------------ prompts

    def prompt_text(self, prompt: Prompt) -> str:
        """The prompt as text: chat template applied, assistant prefix appended."""
        with self._tokenizer_lock:
            return prompting.prompt_text(self.tokenizer, self.spec, prompt)

    def _encode(self, prompt: Prompt, text: str) -> list[int]:
        with self._tokenizer_lock:
            return prompting.encode(self.tokenizer, prompt, text)

    def tokenize(self, prompt: Prompt) -> list[int]:
        with self._tokenizer_lock:
            return self._encode(prompt, self.prompt_text(prompt))

    # ------------------------------------------------------------ contract

    def sample(self, requests: Seq[SampleRequest]) -> list[SampleOutput]:
        groups = [self._sequences_for(req) for req in requests]  # every request checked first
        watched: list[Sequence] = []
        submitted: list[Sequence] = []
        for seqs in groups:
            if seqs and seqs[0].params.max_tokens > 0:
                watched.extend(seqs)
                # With the prefix cache, the others fork from the first once its
                # prompt is in; without it, each computes its own prompt.
                submitted.extend(seqs if not self.prefix_cache else seqs[:1])
        self._serve(submitted, watched)
        return [SampleOutput(self._kept(seqs), self._account(seqs)) for seqs in groups]

    def score_next(self, requests: Seq[NextTokenRequest]) -> list[ScoreOutput]:
        seqs = []
        for req in requests:
            if not req.choices or any(not c for c in req.choices):
                raise UserError("score_next needs at least one non-empty choice")
            ids = self.tokenize(req.prompt)
            targets = [self._first_token(req.prompt, c, ids) for c in req.choices]
            seqs.append(self._score_sequence(ids, len(ids) - 1, [targets]))
        self._serve(seqs, seqs)
        return [ScoreOutput(s.scores[0], self._account_score(s)) for s in seqs]

    def score_continuations(self, requests: Seq[ContinuationRequest]) -> list[ContinuationOutput]:
        seqs: list[Sequence | None] = []
        for req in requests:
            full, start = self._continuation_split(req.prompt, req.continuation)
            if start >= len(full):
                seqs.append(None)
                continue
            targets = [[t] for t in full[start:]]
            seqs.append(self._score_sequence(full, start - 1, targets))
        live = [s for s in seqs if s is not None]
        self._serve(live, live)
        return [ContinuationOutput(0.0, Usage(calls=1)) if s is None else
                ContinuationOutput(float(sum(row[0] for row in s.scores)), self._account_score(s))
                for s in seqs]

    @on_torch_thread
    def close(self) -> None:
        self.runner.kv_pool = torch.empty(0)
        self.runner.layers = []
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def reset_prefix_cache(self) -> int:
        """Forget every stored prefix no running sequence holds (vLLM's
        `reset_prefix_cache`): the next call computes its prompts afresh, as on
        a new engine, on pool pages already touched. Runs between two steps.
        Returns the blocks freed."""
        return torch_thread.call(self.radix.clear)

    def stats(self) -> dict:
        """Memory, prefix-cache and work counters since the engine was created."""
        s = self.scheduler.stats
        b = self.blocks
        return {
            "dtype": str(self.dtype).replace("torch.", ""),
            "block_size": self.block_size,
            "kv_block_bytes": b.block_bytes,
            "kv_num_blocks": b.num_blocks,
            "kv_cap_bytes": b.cap_bytes,
            "kv_requested_bytes": self.requested_kv_bytes,
            "kv_peak_bytes": b.peak_resident * b.block_bytes,
            "kv_peak_live_bytes": b.peak_live * b.block_bytes,
            "kv_live_bytes": b.live_bytes,
            "kv_resident_bytes": b.resident_bytes,
            "radix_hits_tokens": s.radix_hits_tokens,
            "radix_miss_tokens": s.radix_miss_tokens,
            "radix_nodes": self.radix.num_nodes,
            "radix_evictions": self.radix.num_evicted,
            "prefill_tokens_requested": self._prompt_tokens_requested,
            "prefill_tokens_computed": s.prefill_tokens_computed,
            "fork_shared_tokens": self._fork_shared_tokens,
            "decode_tokens": s.decode_tokens,
            "cow_copies": s.cow_copies,
            "dedup_blocks": s.dedup_blocks,
            "preemptions": s.preemptions,
            "steps": s.steps,
            "peak_decode_rows": s.peak_decode_rows,
            "busy_seconds": self._busy_seconds,
            "decode_only_seconds": self._decode_only_seconds,
            "decode_only_tokens": self._decode_only_tokens,
        }

    # ------------------------------------------------------------ requests

    def _sequences_for(self, req: SampleRequest) -> list[Sequence]:
        params = req.params
        check_sampling(params)
        if params.n == 0:
            return []
        ids = self.tokenize(req.prompt)
        if len(ids) >= self.max_length:
            raise UserError(f"prompt is {len(ids)} tokens; model `{self.spec}` "
                            f"accepts at most {self.max_length} in all")
        max_new = min(params.max_tokens, self.max_length - len(ids))
        self._check_fits(len(ids) + max_new)
        if params.seed is not None:
            base = params.seed
        else:
            with self._cond:
                base = self._seeds.getrandbits(62)
        if max_new != params.max_tokens:
            params = dataclasses.replace(params, max_tokens=max_new)
        seqs = [Sequence(ids, params, (base + i) & prompting.SEED_MASK) for i in range(params.n)]
        if params.first is not None and params.first < params.n and params.max_tokens > 0:
            self._group_first(seqs)
        if self.prefix_cache:  # samples 1.. fork from sample 0 once its prompt is in
            seqs[0].num_forks = params.n - 1
            seqs[0].siblings = seqs[1:]
        return seqs

    def _score_rows(self, picked: torch.Tensor, to_score: list) -> list[list[float]]:
        """Log-probabilities of each score row's target tokens, from the score
        rows' fp32 logits (`picked`, in the order of `to_score`). With kernels
        on, the fused verifier-scoring kernel reads them without a full softmax."""
        widths = {len(targets) for _, _, targets in to_score}
        if self.use_kernels and len(widths) == 1:
            from ttsc.kernels.verifier_scoring import choice_logprobs

            ids = torch.tensor([targets for _, _, targets in to_score], device=picked.device)
            return choice_logprobs(picked, ids).tolist()
        logp = torch.log_softmax(picked, dim=-1, dtype=torch.float32)
        return [logp[r, targets].tolist() for r, (_, _, targets) in enumerate(to_score)]

    def _sample_rows(self, logits: torch.Tensor, settings: list[RowSettings]) -> tuple[list[int], list[float]]:
        """One token per row. With kernels on, the fused sampling kernel draws
        it, fed this engine's own counter-based uniforms so seeds mean the same.
        On the CPU kernels path which sampler serves a row depends on the row's
        own settings only (truncating rows the C++ top-k/top-p sampler, the
        others the C++ plain one), never on its batch mates."""
        if self.cpu_kernels:
            v = logits.shape[1]
            is_cut = [s.temperature > 0 and (0 < s.top_k < v or s.top_p < 1.0) for s in settings]
            if not any(is_cut):
                return self._sample_rows_cpu(logits, settings)
            cut = [i for i, c in enumerate(is_cut) if c]
            plain = [i for i, c in enumerate(is_cut) if not c]
            tokens, logprobs = [0] * len(settings), [0.0] * len(settings)
            for rows, sampler in ((cut, self._sample_top_cpu), (plain, self._sample_rows_cpu)):
                if rows:
                    got = sampler(logits[rows], [settings[i] for i in rows])
                    for i, token, logprob in zip(rows, *got):
                        tokens[i], logprobs[i] = token, logprob
            return tokens, logprobs
        if not self.use_kernels:
            return sample(logits, settings)
        from ttsc.kernels.sampling import sample as fused_sample

        dev = logits.device
        tokens, logprobs = fused_sample(
            logits,
            torch.tensor([s.temperature for s in settings], dtype=torch.float32, device=dev),
            torch.tensor([s.top_k for s in settings], dtype=torch.int64, device=dev),
            torch.tensor([s.top_p for s in settings], dtype=torch.float32, device=dev),
            None,
            uniforms=torch.tensor([uniform(s.seed, s.counter) for s in settings],
                                  dtype=torch.float32, device=dev))
        return tokens.tolist(), logprobs.tolist()

    def _sample_rows_cpu(self, logits: torch.Tensor, settings: list[RowSettings]) -> tuple[list[int], list[float]]:
        """Rows without top-k/top-p through the C++ sampler: same uniforms, one pass per row."""
        ops = self.model.cpu_ops
        tokens, logprobs = ops.sample(
            logits,
            torch.tensor([1.0 / s.temperature if s.temperature > 0 else 1.0 for s in settings]),
            torch.tensor([uniform(s.seed, s.counter) for s in settings]),
            torch.tensor([s.temperature <= 0 for s in settings]))
        return tokens.tolist(), logprobs.tolist()

    def _sample_top_cpu(self, logits: torch.Tensor, settings: list[RowSettings]) -> tuple[list[int], list[float]]:
        """Top-k / top-p rows through the C++ sampler: it sorts only the row's
        likeliest tokens, where the torch sampler sorts or cumsums [R, V]."""
        ops = self.model.cpu_ops
        tokens, logprobs = ops.sample_top(
            logits,
            torch.tensor([1.0 / s.temperature for s in settings]),
            torch.tensor([s.top_k for s in settings], dtype=torch.long),
            torch.tensor([s.top_p for s in settings]),
            torch.tensor([uniform(s.seed, s.counter) for s in settings]))
        return tokens.tolist(), logprobs.tolist()

    def _score_sequence(self, ids: list[int], start: int, targets: list[list[int]]) -> Sequence:
        if len(ids) > self.max_length:
            raise UserError(f"scored text is {len(ids)} tokens; model `{self.spec}` "
                            f"accepts at most {self.max_length}")
        self._check_fits(len(ids))
        return Sequence(ids, SamplingParams(max_tokens=0), 0, kind=SequenceKind.SCORE,
                        score_targets=targets, score_start=start)

    def _check_fits(self, num_tokens: int) -> None:
        need = -(-num_tokens // self.block_size) + 1  # +1: a copy-on-write source held briefly
        if need > self.blocks.num_blocks:
            raise UserError(
                f"a request needs up to {need * self.blocks.block_bytes} bytes of KV cache "
                f"({num_tokens} tokens) but the cap holds {self.blocks.cap_bytes} bytes",
                hint="raise kv_memory_bytes or lower max_tokens")

    def _first_token(self, prompt: Prompt, choice: str, prompt_ids: list[int]) -> int:
        """The first token of `choice` as this engine tokenizes it after the prompt."""
        with self._tokenizer_lock:
            return prompting.first_token(self.tokenizer, prompt, self.prompt_text(prompt), prompt_ids,
                                         choice)

    def _continuation_split(self, prompt: Prompt, continuation: str) -> tuple[list[int], int]:
        """Token ids of prompt+continuation and where the continuation's tokens start."""
        with self._tokenizer_lock:
            text = self.prompt_text(prompt)
            return prompting.continuation_split(self.tokenizer, prompt, text,
                                                self._encode(prompt, text), continuation)

    # ---------------------------------------------------------------- loop

    def _serve(self, submitted: list[Sequence], watched: list[Sequence]) -> None:
        """Queue `submitted` and wait until every sequence in `watched`
        (`submitted` and the samples they fork) is done. A failed step fails
        every sequence in flight: each caller gets the error."""

        def done() -> bool:
            return all(s.is_finished for s in watched)

        with self._cond:
            self._pending.extend(submitted)
            if not torch_thread.is_current():
                if submitted and not self._driving:
                    self._driving = True
                    torch_thread.submit(self._drive)
                while not done():
                    self._cond.wait()
        while not done():  # called on the torch thread itself: step here
            self._advance()
        failed = next((s.error for s in watched if s.error is not None), None)
        if failed is not None:
            raise RuntimeError(f"the engine failed while serving this call: {failed!r}") from failed

    def _drive(self) -> None:
        """One step, as a job of the torch thread, queuing the next while there
        is work: jobs of other engines and loads take turns with the steps."""
        self._advance()
        with self._cond:
            self._driving = bool(self._pending) or self.scheduler.has_work()
        if self._driving:
            torch_thread.submit(self._drive)

    def _advance(self) -> None:
        """One step, then wake the callers if it finished some sequence (theirs
        may be among them); a failed step fails them all, and wakes them."""
        finished = self.scheduler.num_finished
        try:
            self._step()
        except BaseException as exc:
            self._abort(exc)
        if self.scheduler.num_finished != finished:
            with self._cond:
                self._cond.notify_all()

    def _abort(self, exc: BaseException) -> None:
        """After a failed step: every queued or running sequence ends with `exc`,
        its blocks released, so other callers return (with the error) and the
        engine stays usable."""
        with self._cond:
            seqs = self._pending + self.scheduler.abort_all()
            self._pending = []
            self._first_groups = []  # their sequences are all failed below
            for seq in seqs + [child for seq in seqs if seq.num_forks for child in seq.siblings]:
                seq.error = exc
                seq.status = SequenceStatus.FINISHED
            self._cond.notify_all()

    @torch.inference_mode()
    def _step(self) -> None:
        """One forward pass over whatever every caller has queued or running."""
        with self._cond:
            pending, self._pending = self._pending, []
        for seq in pending:
            self.scheduler.add(seq)
        if not self.scheduler.has_work():
            return
        t0 = time.perf_counter()
        batch = self.scheduler.schedule()
        logits, rows, score_logits = self.runner.run(batch)
        self.scheduler.commit(batch)
        to_sample: list[tuple[Sequence, int]] = []
        to_score: list[tuple[Sequence, int, list[int]]] = []
        for i, row in enumerate(rows):
            seq = row.seq
            if seq.kind == SequenceKind.SCORE:
                to_score.append((seq, i, seq.score_targets[row.position - seq.score_start]))
                continue
            to_sample.append((seq, i))
            if seq.num_forks:
                self.scheduler.fork(seq, seq.siblings)
                self._fork_shared_tokens += seq.num_tokens * seq.num_forks
                seq.num_forks = 0
                to_sample.extend((child, i) for child in seq.siblings)
        if to_score:
            for (seq, _, _), scores in zip(to_score, self._score_rows(score_logits, to_score)):
                seq.scores.append(scores)
        if to_sample:
            settings = [RowSettings(s.params.temperature, s.params.top_k, s.params.top_p,
                                    s.seed, s.num_completion_tokens) for s, _ in to_sample]
            picked = [i for _, i in to_sample]
            rows_logits = logits if picked == list(range(len(rows))) else logits[picked]
            tokens, logprobs = self._sample_rows(rows_logits, settings)
            for (seq, _), token, logprob in zip(to_sample, tokens, logprobs):
                if not seq.stopped:  # first-finish search stopped it earlier in this step
                    self._append(seq, token, logprob)
        if self._first_groups:
            self._stop_slower()
        for seq in batch.sequences:
            if seq.kind == SequenceKind.SCORE and seq.num_cached_tokens == seq.num_tokens:
                self.scheduler.finish(seq)
        elapsed = time.perf_counter() - t0
        self._busy_seconds += elapsed
        if not batch.prefill:  # pure decode steps: the figure a roofline compares against
            self._decode_only_seconds += elapsed
            self._decode_only_tokens += len(batch.decode)

    def _append(self, seq: Sequence, token: int, logprob: float) -> None:
        params = seq.params
        if token in self._eos_ids and not params.ignore_eos:
            seq.finish_reason = "eos"
        else:
            seq.token_ids.append(token)
            seq.logprobs.append(logprob)
            if params.stop and self._hit_stop(seq):
                seq.finish_reason = "stop"
            elif seq.num_completion_tokens >= params.max_tokens:
                seq.finish_reason = "length"
        if seq.finish_reason:
            self.scheduler.finish(seq)

    def _hit_stop(self, seq: Sequence) -> bool:
        text = self._decode(seq)
        cut = find_stop(text, seq.params.stop, seq.searched_chars)
        seq.searched_chars = len(text)
        if cut is None:
            return False
        seq.stop_text = text[:cut]
        seq.stop = matched_stop(text, cut, seq.params.stop)
        return True

    def _decode(self, seq: Sequence) -> str:
        start = max(0, seq.num_prompt_tokens - prompting.DECODE_CONTEXT)
        context = seq.token_ids[start:seq.num_prompt_tokens]
        with self._tokenizer_lock:
            return prompting.decode_completion(self.tokenizer, context, seq.completion_token_ids)

    def _completion(self, seq: Sequence) -> Completion:
        if seq.params.max_tokens == 0:
            return Completion("", [], [], "length")
        text = seq.stop_text if seq.finish_reason == "stop" else self._decode(seq)
        return Completion(text, seq.completion_token_ids, list(seq.logprobs),
                          seq.finish_reason or "length",
                          seq.stop if seq.finish_reason == "stop" else None)

    # ------------------------------------------------ first-finish search

    def _group_first(self, seqs: list[Sequence]) -> None:
        """Mark a request's samples as one first-finish group (params.first=k)."""
        for i, seq in enumerate(seqs):
            seq.first_group = seqs
            seq.group_index = i
        with self._cond:
            self._first_groups.append(seqs)

    def _stop_slower(self) -> None:
        """After a step: in each first-finish group where k samples have
        finished (end of sequence or stop string), stop every sample that can
        no longer finish among the first k, so its remaining tokens are never
        generated. A running sample holding c tokens can still finish with c
        (its next token may end it), so it is stopped only when (c, its
        position) comes after the k-th finished sample's (tokens, position);
        in lockstep decoding that is all of them, at once. A sample behind the
        others (preempted and recomputed) runs on until it is too long too,
        so the k kept are exactly the k shortest, as engines without stopping
        choose them (`first_finished`)."""
        for group in list(self._first_groups):
            k = group[0].params.first
            done = sorted((s.num_completion_tokens, s.group_index) for s in group
                          if s.is_finished and not s.stopped and s.finish_reason in ("eos", "stop"))
            if len(done) >= k:
                tokens, index = done[k - 1]
                for seq in group:
                    if not seq.is_finished and (seq.num_completion_tokens, seq.group_index) > (tokens, index):
                        seq.stopped = True
                        self.scheduler.cancel(seq)
            if all(s.is_finished for s in group):
                with self._cond:
                    self._first_groups.remove(group)

    def _kept(self, seqs: list[Sequence]) -> list[Completion]:
        """A request's completions: all n, or the first k to finish (params.first)."""
        if not seqs or seqs[0].first_group is None:
            return [self._completion(s) for s in seqs]
        return first_finished([self._completion(s) for s in seqs if not s.stopped], seqs[0].params.first)

    # ------------------------------------------------------------- usage

    def _account(self, seqs: list[Sequence]) -> Usage:
        """One sample request's usage, from its own sequences."""
        generated = sum(s.num_completion_tokens for s in seqs)
        if not seqs or seqs[0].params.max_tokens == 0:
            return Usage(calls=1)
        requested = seqs[0].num_prompt_tokens * len(seqs)
        computed = sum(s.num_prompt_computed for s in seqs)  # forked samples computed none
        with self._cond:
            self._prompt_tokens_requested += requested
        stopped = [s for s in seqs if s.stopped]
        return Usage(calls=1, prompt_tokens=requested, prompt_tokens_computed=computed,
                     prompt_tokens_reused=requested - computed, generated_tokens=generated,
                     samples_stopped=len(stopped),
                     tokens_saved=sum(s.params.max_tokens - s.num_completion_tokens for s in stopped))

    def _account_score(self, seq: Sequence) -> Usage:
        requested = seq.num_prompt_tokens
        with self._cond:
            self._prompt_tokens_requested += requested
        return Usage(calls=1, prompt_tokens=requested,
                     prompt_tokens_computed=seq.num_prompt_computed,
                     prompt_tokens_reused=requested - seq.num_prompt_computed)

