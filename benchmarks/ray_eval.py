"""Ray benchmark: the same evaluation without Ray, on 1 local actor, on 2, and
on 2 with one killed mid-run.

    python -P benchmarks/ray_eval.py [--items 16] [--batch-size 4]

Work: self-consistency (n=4, temperature 0.7, 24 tokens) on the embedded
model over the first ITEMS questions of examples/data/addition.jsonl, no call
cache, seed 0, the paged engine. Every arm uses the whole machine: without
Ray the engine's torch threads take every core; the 1-actor arm gives its
actor every CPU; the 2-actor arms give each actor half.

Figures, per arm: wall seconds from the call to the summary (model loads and
actor start included; the Ray instance itself is started once, before, and
timed apart), and the seconds until the first result. The overhead that
matters is Ray with 1 actor against no Ray, same work. The kill arm kills -9
the first actor once a quarter of the items are done, then checks the
results file: every item exactly once (none lost, none repeated) and every
prediction equal to the run without Ray.

Progress goes to stderr; the last line is one JSON object of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data" / "addition.jsonl"
STRATEGY = '''model policy = "smollm2-135m"
prompt solve = "{question} Give the final answer as 'Answer: <number>'."
strategy sc(question) {
    return vote(extract(generate(policy, solve, n=4, temperature=0.7, max_tokens=24), number))
}
'''


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Clock:
    """Wall time of one arm, and when its first result came."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None

    def on_item(self, done: int, total: int) -> None:
        if done and self.first is None:
            self.first = time.perf_counter() - self.start

    def figures(self) -> dict[str, float]:
        return {"seconds": round(time.perf_counter() - self.start, 2),
                "first_result_s": round(self.first or 0.0, 2)}


def read_results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    from ttsc.compiler.pipeline import compile_source
    from ttsc.runtime.distributed.cluster import connect
    from ttsc.runtime.distributed.evaluate import RayOptions, evaluate_on_ray
    from ttsc.runtime.engines.setup import make_engines
    from ttsc.runtime.eval import evaluate, load_dataset

    import ray

    plan = compile_source(STRATEGY, "ray_eval.tts").plan
    rows = load_dataset(DATA, plan.params, limit=args.items)
    cpus = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="ttsc-ray-bench-"))
    figures: dict[str, Any] = {"items": len(rows), "batch_size": args.batch_size, "cpus": cpus}

    log(f"no Ray: {len(rows)} items ...")
    clock = Clock()
    base = evaluate(plan, make_engines(plan), rows, seed=0, batch_size=args.batch_size,
                    out=tmp / "base.jsonl", on_item=clock.on_item)
    figures["no_ray"] = clock.figures()
    expected = {r["id"]: r["prediction"] for r in base.per_item}
    log(f"  {figures['no_ray']}")

    t0 = time.perf_counter()
    info = connect(None)
    figures["ray_start_s"] = round(time.perf_counter() - t0, 2)
    log(info.describe())

    def ray_arm(name: str, options: Any, on_item: Callable[[int, int], None] | None = None,
                on_event: Callable[[Any], None] | None = None) -> dict[str, Any]:
        log(f"{name} ...")
        clock = Clock()
        out = tmp / f"{name}.jsonl"

        def item(done: int, total: int) -> None:
            clock.on_item(done, total)
            if on_item:
                on_item(done, total)

        evaluate_on_ray(plan, rows, options=options, seed=0, batch_size=args.batch_size, out=out,
                        on_item=item, on_event=on_event)
        arm = clock.figures()
        counts = Counter(r["id"] for r in read_results(out))
        got = {r["id"]: r["prediction"] for r in read_results(out)}
        arm["lost_items"] = sum(1 for k in expected if k not in counts)
        arm["repeated_items"] = sum(c - 1 for c in counts.values() if c > 1)
        arm["predictions_match"] = got == expected
        log(f"  {arm}")
        return arm

    figures["ray_1_actor"] = ray_arm("ray_1_actor", RayOptions(actors=1, cpus_per_actor=cpus))
    figures["ray_2_actors"] = ray_arm("ray_2_actors", RayOptions(actors=2, cpus_per_actor=cpus / 2))

    ready: list[int] = []
    killed: list[int] = []
    events: list[Any] = []

    def on_event(e: Any) -> None:
        events.append(e)
        log("  " + e.describe())
        if e.kind == "ready":
            ready.append(e.pid)

    def kill_once(done: int, total: int) -> None:
        if not killed and ready and done >= max(1, total // 4):
            killed.append(ready[0])
            os.kill(ready[0], signal.SIGKILL)

    kill = ray_arm("ray_2_actors_kill", RayOptions(actors=2, cpus_per_actor=cpus / 2),
                   on_item=kill_once, on_event=on_event)
    lost = [e for e in events if e.kind == "lost"]
    kill["killed"] = len(killed)
    kill["workers_lost"] = len(lost)
    kill["inputs_rerun"] = sum(e.requeued for e in lost)
    figures["ray_2_actors_kill"] = kill
    ray.shutdown()

    base_s = figures["no_ray"]["seconds"]
    figures["overhead_1_actor"] = round(figures["ray_1_actor"]["seconds"] / base_s, 3)
    figures["speedup_2_vs_1_actor"] = round(
        figures["ray_1_actor"]["seconds"] / figures["ray_2_actors"]["seconds"], 3)
    log(f"Ray with 1 actor takes {figures['overhead_1_actor']:.2f}x the time of no Ray "
        f"(same work); 2 actors run {figures['speedup_2_vs_1_actor']:.2f}x as fast as 1; "
        f"under a kill: {kill['lost_items']} lost, {kill['repeated_items']} repeated, "
        f"{kill['inputs_rerun']} inputs re-run elsewhere")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
