"""Engine benchmark: the paged torch engine vs llama.cpp's own server (and transformers).

The same work, side by side in one run on the embedded model
(SmolLM2-135M-Instruct), sampling at temperature 1 with a forced length
(`ignore_eos`), prompts given to every engine as the same token ids:

- work A: 8 chat prompts x 16 samples x 64 new tokens;
- work B: one ~1,000-token few-shot prompt x 16 samples x 64 new tokens;

run by (a) PagedEngine, one engine per work as a server would hold it (one
untimed run of the work first; its prefix cache emptied before every run,
`reset_prefix_cache`, so each run computes its prompts afresh) and
(b) the peer, llama.cpp's `llama-server` (benchmarks/llama_peer.py) on the
same weight values (the shipped Q4_1 GGUF converted to BF16 by llama.cpp's
`llama-quantize`), one slot per sequence with continuous batching, in the
best of its configurations for that work (unified KV or not; one request per
prompt with `n_cmpl` samples, or one request per sample): every configuration
runs once, then the best runs `--runs` times, alternating with the paged
engine. Medians, min-max and the paired per-run ratios are reported, with the
load average at each run. (c) transformers `generate` (num_return_sequences,
left padding, the engine's dtype) runs once per work, unless --no-hf.

In the same run it measures the machine's bare rates on the model's shapes:
every linear layer of one decode step at batch 64 timed back to back with
torch matmuls, in bf16 and fp32 (plain `F.linear` and the engine's prepacked
oneDNN weights, the faster counts), against the engine's pure-decode rate at
batch 64; and prefill: `llama-bench` pp512 against the engine prefilling a
512-token prompt.

    python -P benchmarks/engine.py [--quick] [--runs N] [--no-peer] [--no-hf] [--threads N]
                                   [--peer-configs no-kvu+n_cmpl,kvu+n_cmpl]

Progress goes to stdout; the last line is one JSON object of figures. Run it
under `flock /tmp/ttsc-heavy.lock` where others share the machine.

CPU timings need a quiet machine. When other processes compete for the cores,
spinning threads that lose their core stall every parallel region for
milliseconds. So when other processes keep a quarter of a core or more busy
(read from /proc/stat over two seconds before anything starts; the load
average is no guide here: this VM's sits near 1 with its cores idle) and
OMP_WAIT_POLICY is unset, the benchmark restarts itself with
OMP_WAIT_POLICY=PASSIVE and runs llama-server with `--poll 0` (its threads
sleep instead of spinning). On a quiet machine both keep their defaults:
OpenMP's threads spin a little before sleeping, llama-server polls at 50.
The policy, the busy cores and the load average are recorded. (An earlier
version ran llama.cpp through llama-cpp-python one request at a time, 86 and
54 tok/s: not a fair peer for parallel sampling, and dropped.)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ttsc.runtime import torch_thread
from ttsc.runtime.engines.base import Prompt, SampleRequest, SamplingParams
from ttsc.runtime.engines.paged.engine import PagedEngine
from ttsc.runtime.engines.paged.sampler import RowSettings
from ttsc.runtime.engines.paged.sampler import sample as torch_sample
from ttsc.runtime.models import SMOLLM2, load_model

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
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each engine per work (default 5)")
    parser.add_argument("--no-peer", action="store_true", help="skip llama-server and llama-bench")
    parser.add_argument("--no-hf", action="store_true", help="skip transformers generate")
    parser.add_argument("--peer-configs", default="",
                        help="comma-separated llama-server configurations to try (e.g. "
                             "no-kvu+n_cmpl,kvu+n_cmpl); default: all four")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch and llama.cpp threads (default 2)")
    args = parser.parse_args()
    busy = sleep_threads_if_busy(__file__)
    torch.set_num_threads(args.threads)
    passive = os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
    poll = 0 if passive else 50  # llama.cpp's threads wait the way OpenMP's do
    new_tokens = 16 if args.quick else NEW_TOKENS
    questions = QUESTIONS[:2] if args.quick else QUESTIONS

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'default')}, llama-server --poll {poll}, "
          f"other processes busy on {'?' if busy is None else f'{busy:.2f}'} cores, "
          f"load average {_load():.2f} "
          f"(other processes skew CPU timings)", flush=True)
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
                    "llama_server_poll": poll, "busy_cores_start": busy, "load_average_start": _load()}

    peer = None if args.no_peer else _peer_module()
    gguf = None
    if peer is not None:
        gguf = peer.bf16_gguf()
        print(f"peer: llama-server on {gguf.name} (llama-quantize BF16 of the shipped Q4_1), "
              f"{args.threads} threads, one slot per sequence, continuous batching", flush=True)

    for name, prompts in work.items():
        figures: dict = {"prompts": len(prompts), "samples": SAMPLES, "new_tokens": new_tokens}
        best = None
        if peer is not None:
            trials = {}
            wanted = [c for c in args.peer_configs.split(",") if c]
            configs = [c for c in peer.CONFIGS if not wanted or c.name in wanted]
            if not configs:
                parser.error(f"--peer-configs: none of {wanted} is one of "
                             f"{', '.join(c.name for c in peer.CONFIGS)}")
            for config in configs:
                got = peer.run_peer(gguf, ids[name], SAMPLES, new_tokens, config,
                                    threads=args.threads, poll=poll)
                trials[config.name] = {**got, "load_average": _load()}
                print(f"{name} llama-server {config.name}: {got['tok_s']:.0f} tok/s "
                      f"({got['seconds']:.2f}s, prompt tokens evaluated {got['prompt_tokens_evaluated']}, "
                      f"load {_load():.2f})", flush=True)
            best = max(configs, key=lambda c: trials[c.name]["tok_s"])
            figures["peer_configs"] = trials
            figures["peer_config"] = best.name
        engine_runs, peer_runs = [], []
        served = served_engine(loaded, dtype, prompts, new_tokens)
        for run in range(args.runs):
            got = run_engine(served, prompts, new_tokens)
            engine_runs.append({**got, "load_average": _load()})
            line = (f"{name} run {run + 1}: paged {got['engine_tok_s']:.0f} tok/s "
                    f"(prefill computed {got['prefill_tokens_computed']} of "
                    f"{got['prefill_tokens_requested']} requested tokens)")
            if best is not None:
                theirs = peer.run_peer(gguf, ids[name], SAMPLES, new_tokens, best,
                                       threads=args.threads, poll=poll, seed=1000 * (run + 1))
                peer_runs.append({**theirs, "load_average": _load()})
                line += (f", llama-server {best.name} {theirs['tok_s']:.0f} tok/s, "
                         f"ratio {got['engine_tok_s'] / theirs['tok_s']:.2f}x")
            print(f"{line}, load {_load():.2f}", flush=True)
        served.close()
        figures["engine_runs"] = engine_runs
        figures["engine_tok_s"] = _spread([r["engine_tok_s"] for r in engine_runs])
        for key in ("prefill_tokens_requested", "prefill_tokens_computed", "radix_hits_tokens"):
            figures[key] = engine_runs[-1][key]
        if peer_runs:
            figures["peer_runs"] = peer_runs
            figures["peer_tok_s"] = _spread([r["tok_s"] for r in peer_runs])
            figures["ratio_of_medians"] = figures["engine_tok_s"]["median"] / figures["peer_tok_s"]["median"]
            figures["paired_ratios"] = _spread([e["engine_tok_s"] / p["tok_s"]
                                                for e, p in zip(engine_runs, peer_runs)])
            print(f"{name}: paged median {figures['engine_tok_s']['median']:.0f} tok/s "
                  f"[{figures['engine_tok_s']['min']:.0f}-{figures['engine_tok_s']['max']:.0f}], "
                  f"llama-server ({best.name}) median {figures['peer_tok_s']['median']:.0f} tok/s "
                  f"[{figures['peer_tok_s']['min']:.0f}-{figures['peer_tok_s']['max']:.0f}]; "
                  f"paged / llama-server = {figures['ratio_of_medians']:.2f}x (paired runs "
                  f"{figures['paired_ratios']['min']:.2f}-{figures['paired_ratios']['max']:.2f}x)",
                  flush=True)
        result[name] = figures

    if not args.no_hf:
        hf_model = loaded.model.to(dtype)  # in place: the engines hold their own copies of the weights
        for name in work:
            seconds, tokens = run_hf(hf_model, loaded.tokenizer, ids[name], new_tokens)
            figures = result[name]
            figures.update(hf_s=seconds, hf_tok_s=tokens / seconds,
                           ratio_vs_hf=figures["engine_tok_s"]["median"] * seconds / tokens)
            print(f"{name} transformers generate: {figures['hf_tok_s']:.0f} tok/s ({seconds:.2f}s); "
                  f"paged median / hf = {figures['ratio_vs_hf']:.2f}x, load {_load():.2f}", flush=True)

    roof = roofline(loaded, dtype, batch=64, new_tokens=new_tokens)
    result["roofline"] = roof
    print(f"bare GEMMs at batch {roof['batch']} on the model's shapes: bf16 "
          f"{roof['matmul_gflops']['bfloat16']:.0f} GFLOP/s, fp32 {roof['matmul_gflops']['float32']:.0f}; "
          f"engine decode ({result['dtype']}) {roof['engine_decode_tok_s']:.0f} tok/s = "
          f"{roof['engine_gflops']:.0f} GFLOP/s = {roof['roofline_fraction']:.2f} of its dtype's bare rate, "
          f"{roof['fraction_of_engine_products']:.2f} of its own products' bare rate "
          f"({roof['engine_products_gflops'][result['dtype']]:.0f} GFLOP/s) (load {_load():.2f})", flush=True)

    prefill = engine_prefill(loaded, dtype, prompt_tokens=512)
    result["prefill"] = prefill
    line = f"prefill of a {prefill['prompt_tokens']}-token prompt: paged {prefill['tok_s']['median']:.0f} tok/s"
    if peer is not None:
        pp = peer.llama_bench_pp(gguf, args.threads, prompt=512)
        prefill["llama_bench_pp512"] = pp
        prefill["ratio_vs_pp512"] = prefill["tok_s"]["median"] / pp["tok_s"]
        line += (f", llama-bench pp512 {pp['tok_s']:.0f} +- {pp['stddev_tok_s']:.0f} tok/s: "
                 f"{prefill['ratio_vs_pp512']:.2f}x")
    print(f"{line} (load {_load():.2f})", flush=True)
    result["sampling"] = sampling_costs(engine)
    for key, row in result["sampling"].items():
        print(f"sampling {key}: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in row.items()), flush=True)
    result["load_average_end"] = _load()
    print(json.dumps(_rounded(result)))


def _load() -> float:
    return os.getloadavg()[0]


BUSY_CORES_FOR_PASSIVE = 0.25


def busy_cores(seconds: float = 2.0) -> float:
    """Cores that other processes kept busy (user, system, steal) over the
    next `seconds`, from /proc/stat; 0.0 where there is none."""

    def times() -> list[int] | None:
        try:
            with open("/proc/stat") as f:
                return [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None

    before = times()
    time.sleep(seconds)
    after = times()
    if before is None or after is None:
        return 0.0
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta[:8])  # user nice system idle iowait irq softirq steal
    idle = delta[3] + delta[4]
    return (total - idle) / total * (os.cpu_count() or 1) if total else 0.0


def sleep_threads_if_busy(script: str) -> float | None:
    """Restart `script` with OMP_WAIT_POLICY=PASSIVE when other processes
    keep BUSY_CORES_FOR_PASSIVE cores or more busy (OpenMP reads the policy
    when the process starts); returns the cores found busy, None where the
    policy was set before the script started."""
    if "OMP_WAIT_POLICY" in os.environ:
        found = os.environ.get("TTSC_BENCH_BUSY_CORES")
        return None if found is None else float(found)
    busy = busy_cores()
    os.environ["TTSC_BENCH_BUSY_CORES"] = f"{busy:.3f}"
    if busy >= BUSY_CORES_FOR_PASSIVE:
        print(f"other processes busy on {busy:.2f} cores: restarting with OMP_WAIT_POLICY=PASSIVE",
              flush=True)
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, "-P", os.path.abspath(script), *sys.argv[1:]])
    return busy


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _peer_module():
    """benchmarks/llama_peer.py, loaded by path (the script runs with -P, and the
    folder holds a `kernels.py` that must not shadow anything on sys.path)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llama_peer.py")
    spec = importlib.util.spec_from_file_location("ttsc_bench_llama_peer", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


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


def served_engine(loaded, dtype: torch.dtype, prompts: list[Prompt], new_tokens: int) -> PagedEngine:
    """An engine that has run the work once, untimed, as a running server has
    (llama-server clears its whole KV buffer when it starts; this engine's
    pool is mapped page by page as it is first written)."""
    engine = PagedEngine(loaded, dtype=dtype)
    run_engine(engine, prompts, new_tokens)
    return engine


# ------------------------------------------------------------------ runs

def run_engine(engine: PagedEngine, prompts: list[Prompt], new_tokens: int) -> dict:
    """One timed run of the work, from a cold prefix cache."""
    params = SamplingParams(n=SAMPLES, temperature=1.0, max_tokens=new_tokens, ignore_eos=True, seed=0)
    engine.reset_prefix_cache()
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

    return best_seconds(step, reps)


def roofline(loaded, dtype: torch.dtype, batch: int, new_tokens: int) -> dict:
    """Engine pure-decode GFLOP/s at `batch` rows vs the bare GEMMs of the same step.

    The bare rate is measured in bf16 and fp32 (the engine runs either); the
    fraction compares the engine with its own dtype's."""
    prompts = [Prompt.user(q) for q in QUESTIONS[: batch // SAMPLES]]
    engine = served_engine(loaded, dtype, prompts, new_tokens)
    layers = linear_layers(engine)
    flops_per_token = 2 * sum(lin.numel for lin in layers)  # matmul FLOPs of one decode token
    # The machine's matmul rate on these shapes: the faster of plain and prepacked GEMMs.
    # The engine's own products (`packed`) may be slower than that where batch
    # invariance costs speed (slices of 32 rows on AMX, model.Linear).
    matmul, packed = {}, {}
    for kind in (torch.bfloat16, torch.float32):
        own = layers if kind == dtype else linear_layers_in(loaded, kind)
        plain_s = gemm_seconds(own, batch, kind, packed=False)
        packed_s = gemm_seconds(own, batch, kind, packed=True)
        name = str(kind).replace("torch.", "")
        matmul[name] = flops_per_token * batch / min(plain_s, packed_s) / 1e9
        packed[name] = flops_per_token * batch / packed_s / 1e9
    engine.reset_prefix_cache()
    before = engine.stats()
    engine.sample([SampleRequest(p, SamplingParams(n=SAMPLES, temperature=1.0, max_tokens=new_tokens,
                                                   ignore_eos=True, seed=1)) for p in prompts])
    after = engine.stats()
    engine.close()
    steps_s = after["decode_only_seconds"] - before["decode_only_seconds"]
    steps_tokens = after["decode_only_tokens"] - before["decode_only_tokens"]
    engine_gflops = flops_per_token * steps_tokens / steps_s / 1e9
    own_rate = matmul[str(dtype).replace("torch.", "")]
    own_packed = packed[str(dtype).replace("torch.", "")]
    return {"batch": batch, "matmul_gflops": matmul, "engine_products_gflops": packed,
            "engine_decode_tok_s": steps_tokens / steps_s, "engine_gflops": engine_gflops,
            "roofline_fraction": engine_gflops / own_rate,
            "fraction_of_engine_products": engine_gflops / own_packed, "load_average": _load()}


def linear_layers_in(loaded, dtype: torch.dtype) -> list:
    engine = PagedEngine(loaded, dtype=dtype, kv_memory_bytes=8 << 20)
    layers = linear_layers(engine)
    engine.close()
    return layers


def engine_prefill(loaded, dtype: torch.dtype, prompt_tokens: int, runs: int = 3) -> dict:
    """The engine's prefill rate on one fresh prompt of about `prompt_tokens`
    tokens (prefill plus one sampled token, a cold prefix cache each run)."""
    rates = []
    for run in range(runs):
        engine = PagedEngine(loaded, dtype=dtype)
        warm_up(engine)
        prompt = few_shot_prompt(engine, target_tokens=prompt_tokens)
        count = len(engine.tokenize(prompt))
        t0 = time.perf_counter()
        engine.sample([SampleRequest(prompt, SamplingParams(n=1, max_tokens=1, seed=run))])
        rates.append(count / (time.perf_counter() - t0))
        engine.close()
    return {"prompt_tokens": count, "tok_s": _spread(rates), "load_average": _load()}


def sampling_costs(engine: PagedEngine, rows: int = 64) -> dict:
    """Milliseconds to sample `rows` rows of random bf16 logits (best of 5),
    at the model's vocabulary and a quarter of it: the C++ samplers the
    engine runs (plain; top-k/top-p) and the torch sampler it used before
    for top-k/top-p rows."""
    ops = engine.model.cpu_ops
    out: dict = {}
    full = engine.model.cfg.vocab_size
    for v in (full // 4, full):
        logits = torch.randn(rows, v, generator=torch.Generator().manual_seed(0)).mul_(3).bfloat16()
        for name, top_k, top_p in (("plain", 0, 1.0), ("top_k=50", 50, 1.0), ("top_p=0.9", 0, 0.9)):
            settings = [RowSettings(1.0, top_k, top_p, seed=i, counter=0) for i in range(rows)]
            row = {"torch": 1e3 * best_seconds(lambda: torch_sample(logits, settings))}
            if ops is not None:
                row["cpp"] = 1e3 * best_seconds(lambda: engine._sample_rows(logits, settings))
            out[f"{name} V={v}"] = row
    return out


def best_seconds(fn, reps: int = 5) -> float:
    """The best of `reps` timed calls of `fn`, after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _rounded(x):
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    return x


if __name__ == "__main__":
    # All of it on the torch thread, where the engines step inline: one OpenMP
    # pool in the process, as in `ttsc run` (runtime/torch_thread.py).
    torch_thread.call(main)
