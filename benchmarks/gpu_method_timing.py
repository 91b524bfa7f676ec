"""Do measured times follow the analytic FLOP ratios? AC, NL and NLD end to end at the paper's scale.

Random-weight LLaMA-3.2-3B (A) and LLaMA-3.1-8B (B) shapes in bf16 on a GPU
(weights do not change the cost). Each method runs as commlib runs it, with
fixed lengths (no stopping at EOS): prompts of ``--prompt`` tokens, messages
and debate answers of ``--message`` tokens, final answers of ``--answer``
tokens. Prints the median wall time of each method over ``--repeats`` runs
(after one warm-up each; the repeats interleave the methods), its ratio to AC, and the analytic FLOP ratios of
:mod:`commlib.compute` (with the KV cache, and as the paper counts), all from
one run, and writes them as JSON.

    python benchmarks/gpu_method_timing.py --prompt 256 --message 256 --answer 256 --out timing.json

On the device machine (no registries): carry the wheels commlib needs there
and put them on PYTHONPATH first (see README, "GPU timing").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from commlib.backends import Decoding, get_backend
from commlib.backends.base import Backend
from commlib.compute import Shape, method_flops
from commlib.graft import GraftConfig, communicate
from commlib.models import Model, load_model
from commlib.prompts import Batch


def prompt_text(n: int, seed: int) -> str:
    """``n`` tokens of the byte tokenizer (one per character)."""
    g = torch.Generator().manual_seed(seed)
    return "".join(chr(97 + int(i)) for i in torch.randint(0, 26, (n,), generator=g))


def ids_batch(ids: torch.Tensor) -> Batch:
    return Batch(ids, torch.ones_like(ids))


def generate(backend: Backend, ids: torch.Tensor, new: int) -> torch.Tensor:
    """``new`` greedy tokens after ``ids`` (no stop at EOS), returned as ids."""
    return backend.generate(ids_batch(ids), None, Decoding(max_new_tokens=new, stop_at_eos=False)).token_ids


def methods(
    a: Model, b: Model, args: argparse.Namespace
) -> tuple[dict[str, Callable[[], None]], dict[str, int]]:
    sa, sb = get_backend(a, args.backend), get_backend(b, args.backend)
    pa_text, pb_text = prompt_text(args.prompt, 0), prompt_text(args.prompt, 1)
    pa = a.tokenizer(pa_text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(a.device)
    pb = b.tokenizer(pb_text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(b.device)
    dec = Decoding(max_new_tokens=args.answer, stop_at_eos=False)

    def single_b() -> None:
        generate(sb, pb, args.answer)

    def ac() -> None:
        cfg = GraftConfig(k=args.k, j=args.j, f="replace", raw=True)
        communicate(a, b, [pa_text], [pb_text], cfg, backend=args.backend, decoding=dec)

    def nl() -> None:
        message = generate(sa, pa, args.message)
        generate(sb, torch.cat([pb, message.to(pb.device)], dim=1), args.answer)

    def nld() -> None:
        answers: list[torch.Tensor] = []
        for r in range(args.rounds):
            last = r == args.rounds - 1
            context_a = [x.to(pa.device) for x in answers]  # A and B may sit on different devices
            context_b = [x.to(pb.device) for x in answers]
            new_a = generate(sa, torch.cat([pa, *context_a], dim=1), args.message)
            new_b = generate(sb, torch.cat([pb, *context_b], dim=1), args.answer if last else args.message)
            answers += [new_a, new_b]

    lengths = {"prompt_a": pa.shape[1], "prompt_b": pb.shape[1]}
    lengths |= {"message": args.message, "answer": args.answer}
    return {"single-b": single_b, "ac": ac, "nl": nl, "nld": nld}, lengths


def timed(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds per method: one warm-up each, then ``repeats`` rounds interleaving the methods."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sender", default="llama-3.2-3b-random")
    parser.add_argument("--receiver", default="llama-3.1-8b-random")
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--message", type=int, default=256)
    parser.add_argument("--answer", type=int, default=256)
    parser.add_argument("--k", type=int, default=26, help="A's block (the paper: k = j = 26)")
    parser.add_argument("--j", type=int, default=26)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="nnsight")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (the models are 3B and 8B parameters in bf16)")
    a = load_model(args.sender, dtype=torch.bfloat16, device="cuda")
    b = load_model(args.receiver, dtype=torch.bfloat16, device="cuda")
    shape_a, shape_b = Shape.from_config(a.hf.config), Shape.from_config(b.hf.config)
    fns, lengths = methods(a, b, args)
    rows = []
    with torch.no_grad():
        median = timed(fns, args.repeats)
    for name, seconds in median.items():
        split = method_flops(name, shape_a, shape_b, k=args.k, rounds=args.rounds, **lengths)
        paper = method_flops(
            name, shape_a, shape_b, k=args.k, rounds=args.rounds, accounting="paper", **lengths
        )["total"]
        rows.append(
            {
                "method": name,
                "seconds": seconds,
                "tflops": split["total"] / 1e12,
                "paper_tflops": paper / 1e12,
                "flops_by_model": split,
            }
        )
    ac = next(r for r in rows if r["method"] == "ac")
    print(
        f"{torch.cuda.get_device_name(0)}, bf16, {args.sender} -> {args.receiver}, {lengths}, "
        f"rounds={args.rounds}, median of {args.repeats}"
    )
    print(f"{'method':<9}{'seconds':>9}{'time/AC':>9}{'FLOPs/AC':>10}{'paper/AC':>10}{'TFLOP/s':>9}")
    for r in rows:
        r |= {
            "time_vs_ac": r["seconds"] / ac["seconds"],
            "flops_vs_ac": r["tflops"] / ac["tflops"],
            "paper_flops_vs_ac": r["paper_tflops"] / ac["paper_tflops"],
            "achieved_tflops_per_s": r["tflops"] / r["seconds"],
        }
        print(
            f"{r['method']:<9}{r['seconds']:>9.2f}{r['time_vs_ac']:>9.2f}{r['flops_vs_ac']:>10.2f}"
            f"{r['paper_flops_vs_ac']:>10.2f}{r['achieved_tflops_per_s']:>9.1f}"
        )
    if args.out:
        payload = {"device": torch.cuda.get_device_name(0), "args": vars(args), "lengths": lengths}
        payload["rows"] = rows
        with open(args.out, "w") as fh:
            json.dump(payload, fh, indent=2)


if __name__ == "__main__":
    main()
