"""Benchmark: a reasoning run's answers decoded in batches against item by item.

``single-b`` (B alone) or ``ac`` (A = B, replace at ``--k``/``--j``) on the first
``--n`` GSM8k test items of seed 0, greedy, ``--max-new-tokens`` each: once
through :func:`commlib.protocols.reasoning.run_reasoning_method` item by item,
once through :func:`commlib.protocols.reasoning.run_reasoning_batch` in batches
of ``--batch-size``. Printed: wall time of each, their ratio, generated tokens
per second, and how many answers are the same text (greedy decoding of a
left-padded batch equals item by item up to float rounding, which can flip a
near-tie late in a long answer).

Run (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reasoning_batch.py --model qwen2.5-coder-1.5b --n 8
"""

from __future__ import annotations

import argparse
import time

import torch

from commlib.models import load_model
from commlib.protocols.questions import ReasoningConfig
from commlib.protocols.reasoning import run_reasoning_batch, run_reasoning_method
from commlib.tasks.reasoning import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--method", choices=("single-b", "ac"), default="single-b")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=0)
    parser.add_argument("--j", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    items = load_task("gsm8k", args.n, 0)
    cfg = ReasoningConfig(k=args.k, j=args.j, max_new_tokens=args.max_new_tokens)

    start = time.perf_counter()
    one = [run_reasoning_method(args.method, item, model, model, cfg) for item in items]
    t_one = time.perf_counter() - start
    start = time.perf_counter()
    batched = [
        o
        for i in range(0, len(items), args.batch_size)
        for o in run_reasoning_batch(args.method, items[i : i + args.batch_size], model, model, cfg)
    ]
    t_batched = time.perf_counter() - start

    tokens = sum(o.answer for o in one)
    same = sum(a.text == b.text for a, b in zip(one, batched, strict=True))
    print(
        f"{args.model}, {args.method}, n = {args.n}, {args.max_new_tokens} new tokens, "
        f"{args.threads} thread(s), {tokens} tokens generated"
    )
    print(f"item by item : {t_one:8.1f} s  {tokens / t_one:6.2f} tok/s")
    print(f"batch of {args.batch_size:<4}: {t_batched:8.1f} s  {tokens / t_batched:6.2f} tok/s")
    print(f"speed-up     : {t_one / t_batched:.2f}x; same answer text on {same} of {len(items)} items")


if __name__ == "__main__":
    main()
