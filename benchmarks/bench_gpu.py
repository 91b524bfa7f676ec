"""Decode speed, graft overhead and method ratios on one GPU, in one process.

Random-weight LLaMA-3.2-3B (A) and LLaMA-3.1-8B (B) shapes (weights do not
change the cost), in ``--dtype`` (bf16) with sdpa attention:

1. **copy bandwidth**: a device-to-device copy of ``--copy-gib`` timed with
   CUDA events (bytes read plus written); the **memory-bound floor** of a
   decode step is the model's weight bytes over it;
2. **decode tokens/s at batch 1** for each model: commlib's eager decode path
   (``generate(fast=False)``: a growing ``DynamicCache``), its fast path
   (``fast=True``: static cache, CUDA-graph-replayed steps) and plain HF
   ``generate``, each as ``T / (t(1 + T new tokens) - t(1 new token))`` after
   a ``--prompt``-token prompt, against the floor;
3. **graft overhead**: AC (A's residual after block k replaces B's after block
   j at the last position, then B decodes ``--graft-answer`` tokens) through
   :func:`commlib.graft.communicate` against plain HF doing the same with torch
   forward hooks: with the same eager decode loop (the graft machinery's
   cost), and commlib's default (fast) against hooks plus ``hf.generate``;
4. **AC / NL / NLD wall time** at ``--prompt-m/--message/--answer`` (default
   256/256/256), the methods of ``gpu_method_timing.py`` as commlib runs them
   (default decoding, i.e. the fast path on CUDA);
5. **checks** of the fast path against the eager reference on left-padded
   batches of random prompts with a graft in the prefill: greedy tokens in
   float32 (A's shape; expected identical) and the agreement in ``--dtype``.

Every timed callable runs once before timing (every sequence length is then
warm and the fast path's graphs are captured); repeats interleave the paths;
medians are printed with their spread ((max - min) / median). ``--out`` writes
everything as JSON with the device, versions and settings.

    python benchmarks/bench_gpu.py --out benchmarks/results/bench_gpu_h100.json

A dry run on the CPU (no graphs, tiny models):

    .venv/bin/python benchmarks/bench_gpu.py --device cpu --dtype float32 --sender tiny-llama-random \\
        --receiver tiny-llama-random --k 2 --j 2 --prompt 16 --new-tokens 8 --prompt-m 16 --message 8 \\
        --answer 8 --graft-answer 8 --check-prompts 8 --check-batch 4 --check-model tiny-llama-random \\
        --check-k 1 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_graft import hf_capture
from gpu_method_timing import methods as method_fns
from gpu_method_timing import prompt_text

from commlib.backends import Decoding, Edit, get_backend
from commlib.backends import decoding as fast_decoding
from commlib.combine import combine
from commlib.graft import GraftConfig, communicate
from commlib.models import Model, load_model
from commlib.prompts import Batch, encode

torch.set_grad_enabled(False)


# --------------------------------------------------------------------------- #
# Timing
# --------------------------------------------------------------------------- #


def sync(device: torch.device) -> None:
    """Wait for every visible GPU (a model split over several ends its work on any of them)."""
    if device.type == "cuda":
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds of each callable per repeat, and of its warm-up run (first, each once), then ``repeats``
    interleaved rounds."""
    warmup: dict[str, float] = {}
    for name, fn in fns.items():
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        warmup[name] = time.perf_counter() - start
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            samples[name].append(time.perf_counter() - start)
    return samples, warmup


def stats(xs: list[float]) -> dict[str, Any]:
    med = statistics.median(xs)
    return {
        "median": med,
        "min": min(xs),
        "max": max(xs),
        "spread": (max(xs) - min(xs)) / med if med else 0.0,
        "samples": xs,
    }


def copy_bandwidth(device: torch.device, gib: float, repeats: int = 20) -> dict[str, Any]:
    """Bytes read plus written per second by a device-to-device copy of ``gib`` GiB (median)."""
    n = int(gib * 2**30)
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    del src, dst
    return {"bytes_per_s": 2 * n / med, "gib": gib, "seconds": stats(times)}


def weight_bytes(model: Model) -> dict[str, int]:
    """Parameter bytes (tied weights once), and those a decode step reads (not an untied input embedding)."""
    total = sum(p.numel() * p.element_size() for p in model.hf.parameters())
    embed = model.hf.get_input_embeddings().weight
    tied = embed is model.hf.get_output_embeddings().weight
    read = total if tied else total - embed.numel() * embed.element_size()
    return {"all": total, "read_per_step": read}


# --------------------------------------------------------------------------- #
# The paths
# --------------------------------------------------------------------------- #


def load(name: str, dtype: torch.dtype, device: str) -> Model:
    """A model with sdpa attention (set before any backend copies the module tree)."""
    model = load_model(name, dtype=dtype, device=device)
    if model.hf.config._attn_implementation != "sdpa":
        model.hf.set_attn_implementation("sdpa")
    return model


def token_ids(model: Model, n: int, seed: int, batch: int = 1) -> Tensor:
    """``batch`` rows of ``n`` tokens of the byte tokenizer (one per character), no special tokens."""
    texts = [prompt_text(n, seed + row) for row in range(batch)]
    ids = model.tokenizer(texts, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return ids.to(model.device)


PATHS = ("commlib-eager", "commlib-fast", "hf-generate")


def decode_paths(
    model: Model, ids: Tensor, backend: str, new: int, paths: tuple[str, ...] = PATHS
) -> dict[str, Callable[[], Any]]:
    """Each of ``paths`` with 1 and ``1 + new`` new tokens: commlib's eager, fast or fast and
    compiled (``commlib-compiled``: :data:`commlib.backends.decoding.COMPILE`) path, or HF generate."""
    be = get_backend(model, backend)
    batch = Batch(ids, torch.ones_like(ids))

    def commlib(fast: bool, n: int, compiled: bool = False) -> Callable[[], Any]:
        def run() -> Any:
            fast_decoding.COMPILE = compiled
            try:
                return be.generate(batch, None, Decoding(max_new_tokens=n, stop_at_eos=False), fast=fast)
            finally:
                fast_decoding.COMPILE = False

        return run

    def hf(n: int) -> Callable[[], Any]:
        return lambda: model.hf.generate(
            ids, attention_mask=batch.attention_mask, max_new_tokens=n, min_new_tokens=n, do_sample=False
        )

    make = {
        "commlib-eager": lambda n: commlib(False, n),
        "commlib-fast": lambda n: commlib(True, n),
        "commlib-compiled": lambda n: commlib(True, n, compiled=True),
        "hf-generate": hf,
    }
    fns = {}
    for n, tag in ((1, "short"), (1 + new, "long")):
        for path in paths:
            fns[f"{path}:{tag}"] = make[path](n)
    return fns


def decode_rates(
    samples: dict[str, list[float]], new: int, paths: tuple[str, ...] = PATHS
) -> dict[str, dict[str, Any]]:
    """Tokens per second of each path, one per repeat from that repeat's long and short runs."""
    out = {}
    for path in paths:
        long, short = samples[f"{path}:long"], samples[f"{path}:short"]
        rates = [new / (lo - sh) for lo, sh in zip(long, short, strict=True)]
        out[path] = {"tokens_per_s": stats(rates), "long_s": stats(long), "short_s": stats(short)}
    return out


def hf_ac(a: Model, b: Model, k: int, j: int, texts: tuple[str, str], n: int, use_generate: bool) -> Tensor:
    """AC in plain HF: torch forward hooks capture A's block k and edit B's block j in the prefill.

    Then ``n`` greedy tokens: the same loop commlib's eager path runs, or ``hf.generate``
    (the hook edits only the prefill, the one pass with more than one position).
    """
    ba, bb = encode(a, [texts[0]], raw=True), encode(b, [texts[1]], raw=True)
    sent = hf_capture(a.hf, ba, k)

    def replace_last(module: torch.nn.Module, args: Any, hidden: Tensor) -> Tensor | None:
        if hidden.shape[1] == 1:
            return None
        hidden = hidden.clone()
        hidden[:, -1] = combine(sent, hidden[:, -1], "replace").to(hidden.dtype)
        return hidden

    handle = b.hf.model.layers[j].register_forward_hook(replace_last)
    try:
        if use_generate:
            ids = b.hf.generate(
                bb.input_ids,
                attention_mask=bb.attention_mask,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
            )[:, bb.length :]
        else:
            out = b.hf(bb.input_ids, attention_mask=bb.attention_mask, use_cache=True, logits_to_keep=1)
            past, mask = out.past_key_values, bb.attention_mask
            tokens = [out.logits[:, -1].float().argmax(-1)]
            for _ in range(n - 1):
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                out = b.hf(
                    tokens[-1][:, None],
                    attention_mask=mask,
                    position_ids=mask.sum(-1, keepdim=True) - 1,
                    past_key_values=past,
                    use_cache=True,
                    logits_to_keep=1,
                )
                past = out.past_key_values
                tokens.append(out.logits[:, -1].float().argmax(-1))
            ids = torch.stack(tokens, dim=1)
    finally:
        handle.remove()
    b.tokenizer.batch_decode(ids, skip_special_tokens=True)
    return ids


def graft_paths(a: Model, b: Model, args: argparse.Namespace) -> dict[str, Callable[[], Any]]:
    texts = (prompt_text(args.prompt_m, 0), prompt_text(args.prompt_m, 1))
    cfg = GraftConfig(k=args.k, j=args.j, f="replace", raw=True)
    dec = Decoding(max_new_tokens=args.graft_answer, stop_at_eos=False)

    def commlib(fast: bool) -> Callable[[], Any]:
        def run() -> Tensor:
            fast_decoding.FAST = fast
            try:
                return communicate(
                    a, b, [texts[0]], [texts[1]], cfg, backend=args.backend, decoding=dec
                ).token_ids
            finally:
                fast_decoding.FAST = None

        return run

    return {
        "commlib-eager": commlib(False),
        "hf-hooks-eager": lambda: hf_ac(a, b, args.k, args.j, texts, args.graft_answer, False),
        "commlib-fast": commlib(True),
        "hf-hooks-generate": lambda: hf_ac(a, b, args.k, args.j, texts, args.graft_answer, True),
    }


def graft_times(a: Model, b: Model, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """:func:`graft_paths` timed: medians; commlib over plain HF with the same and the default decoding."""
    samples, warmup = interleaved(graft_paths(a, b, args), args.repeats, device)
    out: dict[str, Any] = {name: stats(xs) for name, xs in samples.items()}
    med = {name: s["median"] for name, s in out.items()}
    out["warmup_s"] = warmup
    out["overhead_eager"] = med["commlib-eager"] / med["hf-hooks-eager"]
    out["commlib_fast_vs_hf_generate"] = med["commlib-fast"] / med["hf-hooks-generate"]
    return out


def method_times(a: Model, b: Model, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """B alone, AC, NL and NLD (``gpu_method_timing.methods``) timed, and each over AC."""
    ns = argparse.Namespace(
        prompt=args.prompt_m,
        message=args.message,
        answer=args.answer,
        k=args.k,
        j=args.j,
        rounds=args.rounds,
        backend=args.backend,
    )
    fns, lengths = method_fns(a, b, ns)
    samples, warmup = interleaved(fns, args.method_repeats, device)
    out: dict[str, Any] = {"lengths": lengths, "seconds": {n: stats(xs) for n, xs in samples.items()}}
    out["warmup_s"] = warmup
    med = {n: s["median"] for n, s in out["seconds"].items()}
    out["vs_ac"] = {n: t / med["ac"] for n, t in med.items()}
    out["ac_over_nld"] = med["ac"] / med["nld"]
    return out


# --------------------------------------------------------------------------- #
# Checks of the fast path against the eager reference
# --------------------------------------------------------------------------- #


def random_prompts(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, 160, (n,), generator=g)
    return [prompt_text(int(m), seed * 100003 + i) for i, m in enumerate(lengths)]


def agreement(model: Model, args: argparse.Namespace) -> dict[str, Any]:
    """Greedy tokens of the fast path against the eager path, a graft from another prompt in each prefill."""
    be = get_backend(model, args.backend)
    prompts = random_prompts(args.check_prompts, seed=7)
    dec = Decoding(max_new_tokens=args.check_tokens, stop_at_eos=False)
    same_tokens = same_rows = total_rows = 0
    first_diff: list[int] = []
    distinct: set[int] = set()
    logit_diff = 0.0
    for start in range(0, len(prompts), args.check_batch):
        batch = encode(model, prompts[start : start + args.check_batch])
        sent = be.capture(batch, args.check_k).roll(1, 0)  # each row gets the next row's state
        edit = Edit(args.check_k, torch.full((batch.size, 1), batch.length - 1), lambda h, s=sent: s[:, None])
        eager = be.generate(batch, edit, dec, fast=False)
        fast = be.generate(batch, edit, dec, fast=True)
        equal = eager.token_ids == fast.token_ids
        distinct |= set(eager.token_ids.flatten().tolist())
        same_tokens += int(equal.sum())
        same_rows += int(equal.all(-1).sum())
        total_rows += batch.size
        for row in equal:
            if not bool(row.all()):
                first_diff.append(int((~row).float().argmax()))
        logit_diff = max(logit_diff, float((eager.first_logits - fast.first_logits).abs().max()))
    kept = fast_decoding._DECODERS.get(model.hf, {})
    return {
        "model": model.name,
        "dtype": str(model.hf.dtype),
        "prompts": total_rows,
        "new_tokens": args.check_tokens,
        "identical_token_fraction": same_tokens / (total_rows * args.check_tokens),
        "identical_row_fraction": same_rows / total_rows,
        "first_difference_steps": first_diff,
        "distinct_tokens": len(distinct),
        "prefill_logits_max_abs_diff": logit_diff,
        "graphs_captured": sum(d.graph is not None for d in kept.values()),
    }


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #


def section(results: dict[str, Any], name: str, fn: Callable[[], Any], out: str | None = None) -> None:
    """Run one part; a failure is recorded and printed, and the other parts still run.

    The results so far are written to ``out`` after each part.
    """
    print(f"--- {name}", flush=True)
    start = time.perf_counter()
    try:
        results[name] = fn()
    except Exception:  # one failing part must not lose the others' numbers
        results[name] = {"error": traceback.format_exc()}
        print(results[name]["error"], flush=True)
    print(f"    ({time.perf_counter() - start:.1f} s)", flush=True)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2) + "\n")


TIMING_DEFAULTS = {
    "prompt": 128, "new_tokens": 128, "graft_answer": 64, "prompt_m": 256, "message": 256, "answer": 256,
    "repeats": 5, "method_repeats": 3,
}  # fmt: skip
"""The default lengths and repeats of this benchmark (``bench_sharded.py`` passes smaller ones)."""


def add_timing_options(parser: argparse.ArgumentParser, **defaults: int) -> None:
    """The options this benchmark shares with ``bench_sharded.py``: dtype, backend, lengths, repeats, --out.

    ``defaults`` overrides :data:`TIMING_DEFAULTS` by name (``new_tokens=64``).
    """
    d = TIMING_DEFAULTS | defaults
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--backend", default="nnsight")
    parser.add_argument("--prompt", type=int, default=d["prompt"], help="prompt tokens of the decode timing")
    parser.add_argument(
        "--new-tokens", type=int, default=d["new_tokens"], help="decode steps timed for tokens/s"
    )
    parser.add_argument(
        "--graft-answer", type=int, default=d["graft_answer"], help="B's tokens in the overhead timing"
    )
    parser.add_argument(
        "--prompt-m", type=int, default=d["prompt_m"], help="prompt tokens of the method timing"
    )
    parser.add_argument("--message", type=int, default=d["message"])
    parser.add_argument("--answer", type=int, default=d["answer"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=d["repeats"])
    parser.add_argument("--method-repeats", type=int, default=d["method_repeats"])
    parser.add_argument("--copy-gib", type=float, default=2.0)
    parser.add_argument("--out", default=None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sender", default="llama-3.2-3b-random")
    parser.add_argument("--receiver", default="llama-3.1-8b-random")
    parser.add_argument("--device", default="cuda")
    add_timing_options(parser)
    parser.add_argument("--batches", default="1", help="batch sizes of the decode timing, e.g. 1,8")
    parser.add_argument("--k", type=int, default=26)
    parser.add_argument("--j", type=int, default=26)
    parser.add_argument("--check-model", default="llama-3.2-3b-random")
    parser.add_argument("--check-k", type=int, default=14)
    parser.add_argument("--check-prompts", type=int, default=256)
    parser.add_argument("--check-batch", type=int, default=32)
    parser.add_argument("--check-tokens", type=int, default=32)
    parser.add_argument(
        "--skip", default="", help="comma-separated parts to skip: checks,decode,graft,methods"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time the fast path compiled (batch 1, last)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    skip = set(filter(None, args.skip.split(",")))
    args.batches = [int(x) for x in str(args.batches).split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results: dict[str, Any] = {
        "device": name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "commit": os.environ.get("COMMLIB_COMMIT"),  # the device machine's copy has no reliable git
        "settings": vars(args),
    }
    print(f"{name}, torch {torch.__version__}, transformers {transformers.__version__}", flush=True)

    if "checks" not in skip:

        def checks() -> dict[str, Any]:
            out = {}
            m32 = load(args.check_model, torch.float32, args.device)
            out["float32"] = agreement(m32, args)
            fast_decoding.clear(m32)
            del m32
            m = load(args.check_model, dtype, args.device)
            out[args.dtype] = agreement(m, args)
            fast_decoding.clear(m)
            del m
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return out

        section(results, "checks", checks, args.out)

    section(results, "copy_bandwidth", lambda: copy_bandwidth(device, args.copy_gib), args.out)
    bandwidth = results["copy_bandwidth"].get("bytes_per_s")
    a = load(args.sender, dtype, args.device)
    b = load(args.receiver, dtype, args.device) if args.receiver != args.sender else a

    def decode(paths: tuple[str, ...], sizes: list[int]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for model in [a] if b is a else [a, b]:
            wb = weight_bytes(model)
            floor = bandwidth / wb["all"] if bandwidth else None
            out[model.name] = {"weight_bytes": wb, "floor_steps_per_s": floor}
            if bandwidth:
                out[model.name]["floor_steps_per_s_read_bytes"] = bandwidth / wb["read_per_step"]
            for size in sizes:
                ids = token_ids(model, args.prompt, seed=2, batch=size)
                fns = decode_paths(model, ids, args.backend, args.new_tokens, paths)
                samples, warmup = interleaved(fns, args.repeats, device)
                rates = decode_rates(samples, args.new_tokens * size, paths)
                for r in rates.values():
                    r["vs_floor"] = r["tokens_per_s"]["median"] / (size * floor) if floor else None
                out[model.name][f"batch_{size}"] = {"paths": rates, "warmup_s": warmup}
        return out

    if "decode" not in skip:
        section(results, "decode", lambda: decode(PATHS, args.batches), args.out)

    if "graft" not in skip:
        section(results, "graft", lambda: graft_times(a, b, args, device), args.out)

    if "methods" not in skip:
        section(results, "methods", lambda: method_times(a, b, args, device), args.out)

    if args.compile:
        section(results, "decode_compiled", lambda: decode(("commlib-compiled",), [1]), args.out)
    report(results, args)


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    """The short table, last in the output."""
    print(
        f"\n=== {results['device']}, {args.dtype}, torch {results['torch']}, "
        f"transformers {results['transformers']}"
    )
    bw = results.get("copy_bandwidth", {})
    if "bytes_per_s" in bw:
        print(f"copy bandwidth {bw['bytes_per_s'] / 1e12:.2f} TB/s (spread {bw['seconds']['spread']:.0%})")
    decoded = [(m, d) for part in ("decode", "decode_compiled") for m, d in results.get(part, {}).items()]
    for model, d in decoded:
        if model == "error":
            continue
        floor, gb = d["floor_steps_per_s"], d["weight_bytes"]["all"] / 1e9
        print(f"{model}: {gb:.2f} GB of weights, floor {floor:.0f} steps/s; {args.prompt}-token prompts")
        for size in [int(k.removeprefix("batch_")) for k in d if k.startswith("batch_")]:
            for path, r in d[f"batch_{size}"]["paths"].items():
                t, warm = r["tokens_per_s"], d[f"batch_{size}"]["warmup_s"][f"{path}:long"]
                print(
                    f"  batch {size:<3}{path:<17}{t['median']:8.1f} tok/s {r['vs_floor']:6.1%} of floor  "
                    f"spread {t['spread']:.0%}  warm-up {warm:.1f} s"
                )
    g = results.get("graft", {})
    if "overhead_eager" in g:
        print(
            f"graft (AC, {args.prompt_m}-token prompts, {args.graft_answer} answer tokens, "
            f"k={args.k}, j={args.j}):"
        )
        for path in ("commlib-eager", "hf-hooks-eager", "commlib-fast", "hf-hooks-generate"):
            print(f"  {path:<18}{g[path]['median']:8.3f} s  spread {g[path]['spread']:.0%}")
        print(f"  overhead, same eager decode: {g['overhead_eager']:.3f}x (target <= 1.05)")
        print(f"  commlib default (fast) vs hooks + hf.generate: {g['commlib_fast_vs_hf_generate']:.3f}x")
    m = results.get("methods", {})
    if "vs_ac" in m:
        print(f"methods at {args.prompt_m}/{args.message}/{args.answer} (default decoding), time / AC:")
        for n, r in m["vs_ac"].items():
            s = m["seconds"][n]
            print(f"  {n:<9}{s['median']:8.2f} s {r:6.2f}  spread {s['spread']:.0%}")
        print(f"  AC / NLD = {m['ac_over_nld']:.3f} (target <= 0.25)")
    for dt, c in results.get("checks", {}).items():
        if dt == "error":
            continue
        print(
            f"check {c['model']} {dt}: identical tokens {c['identical_token_fraction']:.4f}, rows "
            f"{c['identical_row_fraction']:.4f} of {c['prompts']} x {c['new_tokens']}, "
            f"graphs {c['graphs_captured']}"
        )
    for part, d in results.items():
        if isinstance(d, dict) and "error" in d:
            print(f"FAILED: {part}: {d['error'].strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
