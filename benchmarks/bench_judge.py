"""Benchmark: the Biographies judge with the biography prefilled once against once per fact.

The judge reads one biography against each of a person's facts (Du et al.'s
prompt: the biography comes first, the fact last). Both ways below decode the
same left-padded batch of those prompts greedily,
``JUDGE_MAX_NEW_TOKENS`` each: once with every prompt prefilled whole
(:meth:`commlib.backends.Backend.generate`, the judge before the shared prefix),
once with the shared prefix prefilled once and copied to every fact
(:meth:`commlib.backends.Backend.generate_shared_prefix`, what
:func:`commlib.tasks.biographies.judge_biography` does). The biographies are
the ground truth of the first ``--n`` people of seed 0 written as bullets.
Printed: wall time of each, their ratio, prompt tokens prefilled, and how many
verdicts agree.

Run (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_judge.py --judge qwen2.5-coder-1.5b --n 2
"""

from __future__ import annotations

import argparse
import time

import torch

from commlib.backends import Decoding, get_backend
from commlib.models import load_model
from commlib.prompts import encode, split_shared_prefix
from commlib.tasks.biographies import JUDGE_MAX_NEW_TOKENS, biographies, judge_prompts, parse_verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--judge", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    judge = load_model(args.judge)
    backend = get_backend(judge, "nnsight")
    decoding = Decoding(max_new_tokens=JUDGE_MAX_NEW_TOKENS)
    times = {"whole": 0.0, "shared": 0.0}
    verdicts: dict[str, list[str]] = {"whole": [], "shared": []}
    tokens = {"whole": 0, "shared": 0}
    for person in biographies(n=args.n, seed=0):
        facts = person.answer.split("\n")
        truth = "\n".join(f"- {fact}" for fact in facts)
        batch = encode(judge, judge_prompts(person.question, truth, facts))
        prefix, rest = split_shared_prefix(batch, judge.tokenizer.pad_token_id)
        tokens["whole"] += int(batch.attention_mask.sum())
        tokens["shared"] += prefix.shape[1] + int(rest.attention_mask[:, prefix.shape[1] :].sum())
        for way in ("whole", "shared"):
            start = time.perf_counter()
            if way == "whole":
                texts = backend.generate(batch, None, decoding).texts
            else:
                texts = backend.generate_shared_prefix(batch, decoding).texts
            times[way] += time.perf_counter() - start
            verdicts[way] += [parse_verdict(t) for t in texts]
    same = sum(a == b for a, b in zip(verdicts["whole"], verdicts["shared"], strict=True))
    print(
        f"judge {args.judge}, {args.n} biographies, {len(verdicts['whole'])} facts, {args.threads} thread(s)"
    )
    for way in ("whole", "shared"):
        print(f"{way:>6}: {times[way]:7.1f} s  {tokens[way]:6d} prompt tokens prefilled")
    print(
        f"ratio whole / shared: {times['whole'] / times['shared']:.2f}x; "
        f"same verdicts {same} of {len(verdicts['whole'])}"
    )


if __name__ == "__main__":
    main()
