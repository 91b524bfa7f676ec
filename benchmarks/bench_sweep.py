"""Benchmark: the fast (k, j) sweep against recomputing every cell, in one run.

Times :func:`commlib.sweep.sweep_item` and :func:`commlib.sweep.naive_cell`
on the same small grid and items, checks they agree, and prints the speed-up
(target >= 20x) and the time per (k, j, item) cell.

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_sweep.py
    .venv/bin/python benchmarks/bench_sweep.py --model qwen2.5-coder-0.5b --grid 4 --items 2
"""

from __future__ import annotations

import argparse
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
    args = p.parse_args()

    model = load_model(args.model, fetch_if_missing=False)
    n = model.info.n_layers
    layers = sorted({round(i * (n - 1) / max(1, args.grid - 1)) for i in range(args.grid)})
    items = countries(args.items, seed=0)
    kw = dict(backend=args.backend, max_new_tokens=args.max_new_tokens)
    sweep_item(model, model, items[0], layers[:1], layers[:1], **kw)  # warm-up

    start = time.perf_counter()
    fast = [c for it in items for c in sweep_item(model, model, it, layers, layers, **kw)]
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    naive = [
        naive_cell(model, model, it, c["k"], c["j"], **kw)
        for it in items
        for c in ({"k": k, "j": j} for j in layers for k in layers)
    ]
    t_naive = time.perf_counter() - start

    worst = max(abs(a["answer_logprob"] - b["answer_logprob"]) for a, b in zip(fast, naive, strict=True))
    same = all(a["token_ids"] == b["token_ids"] for a, b in zip(fast, naive, strict=True))
    cells = len(fast)
    print(
        f"model {args.model} ({n} layers), backend {args.backend}, grid {layers} x {layers}, "
        f"{args.items} items, {cells} cells, {args.max_new_tokens} greedy tokens, "
        f"{torch.get_num_threads()} torch threads"
    )
    print(f"naive: {t_naive:8.1f} s  ({1000 * t_naive / cells:8.1f} ms per cell)")
    print(f"fast:  {t_fast:8.1f} s  ({1000 * t_fast / cells:8.1f} ms per cell)")
    speedup = t_naive / t_fast
    print(f"speed-up: {speedup:.1f}x (target >= 20x: {'PASS' if speedup >= 20 else 'FAIL'})")
    print(f"agreement: max |answer log-prob diff| {worst:.2e}; greedy answers identical: {same}")


if __name__ == "__main__":
    main()
