"""Benchmark: the fast (k, j) sweep against recomputing every cell, in one run.

Times :func:`commlib.sweep.sweep_item` on a grid and
:func:`commlib.sweep.naive_cell` on a seeded sample of the same cells (the
naive path costs the same for every cell, and a full naive grid takes hours),
checks they agree on the sampled cells, and prints the time per (k, j, item)
cell of each and the speed-up (target >= 20x). ``--repeats N`` alternates the
two N times and prints medians (the ratio is the median of each repeat's).
``--dtype bfloat16`` (with ``--attention eager`` or the default ``sdpa``) shows
the engine's agreement with the naive path in half precision; ``--against-float32``
then recomputes the sampled cells naively with the same weights in float32 and
prints how far each path's half precision lands from it (median and max), next
to their distance from each other.
``--json PATH`` writes the settings and numbers.

``--max-new-tokens 0`` (what the selection sweeps use) still scores
accuracy: ``greedy_answer`` says exactly whether greedy decoding starts with
the answer, read off the teacher-forced pass.

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_sweep.py
    .venv/bin/python benchmarks/bench_sweep.py --model qwen2.5-coder-0.5b --grid 4 --items 2
    .venv/bin/python benchmarks/bench_sweep.py --grid 30 --items 1 --max-new-tokens 0 --position content
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sweep.py --grid 30 --items 1 --threads 1 --repeats 3
    .venv/bin/python benchmarks/bench_sweep.py --dtype bfloat16 --attention eager --against-float32
    python3 benchmarks/bench_sweep.py --model llama-3.2-3b-random --grid 28 --items 1 --device cuda \
        --dtype bfloat16 --against-float32 --json sweep_gpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import time

import torch

from commlib.models import load_model
from commlib.sweep import naive_cell, sweep_item
from commlib.tasks.games import countries

torch.set_grad_enabled(False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--grid", type=int, default=4, help="layers per axis (evenly spaced)")
    p.add_argument("--items", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--backend", default="nnsight")
    p.add_argument("--position", choices=("last", "content"), default="last")
    p.add_argument("--naive-cells", type=int, default=12, help="cells sampled for the naive timing")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 is steadier on a busy host)")
    p.add_argument("--repeats", type=int, default=1, help="alternate fast and naive this many times")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--attention", default="sdpa", help="sdpa (the default) or eager")
    p.add_argument("--device", default="cpu")
    p.add_argument("--against-float32", action="store_true", help="half precision's own error on the sample")
    p.add_argument("--json", default=None, metavar="PATH", help="write settings and results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(
        args.model, fetch_if_missing=False, dtype=args.dtype, attention=args.attention, device=args.device
    )
    n = model.info.n_layers
    layers = sorted({round(i * (n - 1) / max(1, args.grid - 1)) for i in range(args.grid)})
    items = countries(args.items, seed=0)
    kw = dict(backend=args.backend, max_new_tokens=args.max_new_tokens, position=args.position)
    sweep_item(model, model, items[0], layers[:1], layers[:1], **kw)  # warm-up

    fast_times, naive_times = [], []
    for _ in range(args.repeats):  # interleaved: a busy host slows both sides alike
        start = time.perf_counter()
        fast, fast_items = [], []
        for it in items:
            cells = sweep_item(model, model, it, layers, layers, **kw)
            fast += cells
            fast_items += [it] * len(cells)
        fast_times.append(time.perf_counter() - start)
        rng = random.Random(0)
        sample = rng.sample(range(len(fast)), min(args.naive_cells, len(fast)))
        start = time.perf_counter()
        naive = [naive_cell(model, model, fast_items[i], fast[i]["k"], fast[i]["j"], **kw) for i in sample]
        naive_times.append((time.perf_counter() - start) / len(sample) * len(fast))
    t_fast, t_naive = statistics.median(fast_times), statistics.median(naive_times)
    ratios = [n / f for n, f in zip(naive_times, fast_times, strict=True)]
    fast = [fast[i] for i in sample]

    worst = max(abs(a["answer_logprob"] - b["answer_logprob"]) for a, b in zip(fast, naive, strict=True))
    same = sum(
        a["token_ids"] == b["token_ids"] and a["greedy_answer"] == b["greedy_answer"]
        for a, b in zip(fast, naive, strict=True)
    )
    cells = len(fast_items)
    print(
        f"model {args.model} ({n} layers), backend {args.backend}, grid {layers} x {layers}, "
        f"{args.items} items, {cells} cells, position {args.position}, {args.max_new_tokens} greedy tokens, "
        f"{torch.get_num_threads()} torch threads, {args.dtype}, {args.attention} attention, {args.device}, "
        f"{args.repeats} interleaved repeats (medians)"
    )
    print(
        f"naive: {t_naive:8.1f} s  ({1000 * t_naive / cells:8.1f} ms per cell, "
        f"extrapolated from {len(sample)} sampled cells)"
    )
    print(f"fast:  {t_fast:8.1f} s  ({1000 * t_fast / cells:8.1f} ms per cell)")
    speedup = statistics.median(ratios)
    spread = f" (repeats {min(ratios):.1f}x to {max(ratios):.1f}x)" if len(ratios) > 1 else ""
    print(f"speed-up: {speedup:.1f}x{spread} (target >= 20x: {'PASS' if speedup >= 20 else 'FAIL'})")
    print(
        f"agreement on the sampled cells: max |answer log-prob diff| {worst:.2e}; "
        f"greedy answers and greedy_answer flags identical on {same} of {len(fast)}"
    )
    result = {
        "settings": vars(args) | {"layers": layers, "cells": cells, "threads": torch.get_num_threads()},
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "seconds": {"fast": fast_times, "naive": naive_times},
        "speedup": {"median": speedup, "repeats": ratios},
        "sampled_cells": [[c["k"], c["j"]] for c in fast],
        "max_abs_logprob_diff": worst,
        "identical_cells": same,
    }
    if args.against_float32 and args.dtype != "float32":
        # The same weights (upcast: exact) in float32 arithmetic: how far each path's half precision lands
        # from it, the engine's next to the naive path's.
        model.hf.float()
        model.info = dataclasses.replace(model.info, dtype="float32")
        ref = [
            naive_cell(model, model, fast_items[i], c["k"], c["j"], **kw)
            for i, c in zip(sample, fast, strict=True)
        ]
        errors = {
            path: [abs(a["answer_logprob"] - r["answer_logprob"]) for a, r in zip(cells_, ref, strict=True)]
            for path, cells_ in (("naive", naive), ("engine", fast))
        }
        flips = {
            path: sum(a["greedy_answer"] != r["greedy_answer"] for a, r in zip(cells_, ref, strict=True))
            for path, cells_ in (("naive", naive), ("engine", fast))
        }
        texts = {
            path: sum(a["token_ids"] != r["token_ids"] for a, r in zip(cells_, ref, strict=True))
            for path, cells_ in (("naive", naive), ("engine", fast))
        }
        gaps = [abs(a["answer_logprob"] - b["answer_logprob"]) for a, b in zip(fast, naive, strict=True)]
        for path, errs in errors.items():
            print(
                f"{path} {args.dtype} vs float32 (same weights, {len(ref)} cells): |answer log-prob diff| "
                f"median {statistics.median(errs):.2e}, max {max(errs):.2e}; greedy_answer flags differ on "
                f"{flips[path]}, greedy texts on {texts[path]}"
            )
        print(
            f"engine vs naive, both {args.dtype}: median {statistics.median(gaps):.2e}, max {max(gaps):.2e}; "
            f"within the naive path's own error: {worst <= max(errors['naive'])}"
        )
        result |= {"float32_error": errors, "float32_flag_flips": flips, "float32_text_differs": texts}
        result["engine_vs_naive"] = gaps
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
