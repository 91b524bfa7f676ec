"""Benchmark: what grafting through a backend costs over plain HuggingFace.

One activation-communication exchange (sender capture at block ``k``, receiver
prefill with the residual after block ``j`` replaced at the last position,
greedy decoding with the KV cache) is timed three ways, each on its own copy
of the model:

* ``hf + torch hook`` (the baseline): a plain HF forward for the sender's
  ``hidden_states[k + 1]`` (a forward hook on block ``k`` takes it and stops
  the pass, as both backends do), the receiver's prefill with a torch forward
  hook on ``model.model.layers[j]``, then the same greedy decode steps by hand
  with the KV cache; logits of the last position only (``logits_to_keep=1``,
  as HF ``generate`` and the backends' decoding do);
* ``nnsight`` and ``transformer-lens``: :func:`commlib.graft.communicate` with
  ``Decoding(max_new_tokens=N, stop_at_eos=False)``.

Both sides tokenise the prompts and decode the generated ids, so the
difference is the backends' machinery. Each path gets its own freshly
loaded model, so no path can slow another. (Booting a backend patches HF
modules in place: nnsight replaces every module's ``forward``, TransformerLens
swaps in bridge components. commlib's backends therefore wrap a copy of the
module tree that shares the weights, and decode steps after the edited
prefill run on the untouched HF model.)

Printed: the median exchange time per path and its ratio to the baseline
(target: overhead <= 15%), the same for the prefill only (capture plus one
edited forward, ``max_new_tokens=1``), the derived cost per decode step, the
one-time backend construction, load time from cache of the cached offline
models (never fetched here) and of the first forward after a load (the weights
are memory-mapped and page in then), parameter memory and the process peak RSS.
Repeats of the three paths are interleaved to reduce drift. The line on CPU
contention (Linux pressure stall information) says whether something else ran
meanwhile; on a shared machine ``--threads 1`` keeps the times steady, since
two torch threads stall badly when another process holds one of two cores.

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_graft.py
    .venv/bin/python benchmarks/bench_graft.py --threads 1 --max-new-tokens 32 --json runs/bench.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers.utils import logging as hf_logging

from commlib.backends import Decoding, get_backend
from commlib.graft import GraftConfig, communicate
from commlib.models import OFFLINE_MODELS, Model, is_cached, load_model
from commlib.prompts import Batch, encode

torch.set_grad_enabled(False)
hf_logging.disable_progress_bar()

BACKENDS = ("nnsight", "transformer-lens")
BASELINE = "hf + torch hook"
TARGET = 1.15
"""Backend time over baseline time must stay at or below this."""

PAIRS = [
    ("The secret code is 4217. Keep it in mind.", "What is the secret code?"),
    ("Alice moved to Paris last spring and loves the museums there.", "Where does Alice live now?"),
    ("Our meeting is on Thursday at 3 pm in room B.", "When is the meeting?"),
    ("The recipe needs two eggs, flour and a cup of milk.", "What does the recipe need?"),
]
"""(sender, receiver) prompt pairs, cycled to the batch size; lengths differ so batches pad."""

Exchange = Callable[[Model, list[str], list[str], int], Tensor]
"""Runs one exchange with ``n`` new tokens and returns the generated ids."""


# --------------------------------------------------------------------------- #
# The three paths
# --------------------------------------------------------------------------- #


class _Stop(Exception):
    """Raised by the capture hook to end the sender's pass after block ``k``."""


def hf_capture(hf: torch.nn.Module, batch: Batch, k: int) -> Tensor:
    """Sender's ``hidden_states[k + 1]`` at the last position, stopping after block ``k``.

    Both backends stop there too (nnsight after the last saved module,
    TransformerLens through ``stop_at_layer``), so the baseline does not pay
    for the later blocks and the unembedding either.
    """
    saved: list[Tensor] = []

    def grab(module: torch.nn.Module, args: Any, hidden: Tensor) -> None:
        saved.append(hidden[:, -1])
        raise _Stop

    handle = hf.model.layers[k].register_forward_hook(grab)
    try:
        hf(batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    except _Stop:
        pass
    finally:
        handle.remove()
    return saved[0]


def hf_exchange(k: int, j: int) -> Exchange:
    """The baseline: plain HF forwards, torch forward hooks, a hand-written greedy loop."""

    def run(model: Model, senders: list[str], receivers: list[str], n: int) -> Tensor:
        hf = model.hf
        a = hf_capture(hf, encode(model, senders), k)

        def replace_last(module: torch.nn.Module, args: Any, hidden: Tensor) -> Tensor:
            hidden = hidden.clone()
            hidden[:, -1] = a
            return hidden

        rb = encode(model, receivers)
        handle = hf.model.layers[j].register_forward_hook(replace_last)
        try:
            out = hf(
                rb.input_ids,
                attention_mask=rb.attention_mask,
                position_ids=rb.position_ids,
                use_cache=True,
                logits_to_keep=1,
            )
        finally:
            handle.remove()
        past, mask = out.past_key_values, rb.attention_mask
        tokens = [out.logits[:, -1].float().argmax(-1)]
        for _ in range(n - 1):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step = Batch(tokens[-1][:, None], mask)
            out = hf(
                step.input_ids,
                attention_mask=mask,
                position_ids=step.position_ids[:, -1:],
                past_key_values=past,
                use_cache=True,
                logits_to_keep=1,
            )
            past = out.past_key_values
            tokens.append(out.logits[:, -1].float().argmax(-1))
        ids = torch.stack(tokens, dim=1)
        model.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return ids

    return run


def backend_exchange(backend: str, k: int, j: int) -> Exchange:
    """The same exchange through :func:`commlib.graft.communicate`."""
    config = GraftConfig(k=k, j=j, f="replace")

    def run(model: Model, senders: list[str], receivers: list[str], n: int) -> Tensor:
        decoding = Decoding(max_new_tokens=n, stop_at_eos=False)
        return communicate(
            model, model, senders, receivers, config, backend=backend, decoding=decoding
        ).token_ids

    return run


# --------------------------------------------------------------------------- #
# Measuring
# --------------------------------------------------------------------------- #


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def rss_now() -> int | None:
    """Current resident set size in bytes (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cpu_stall_us() -> int | None:
    """Microseconds some task waited for a CPU since boot (Linux PSI), else None.

    Over the timed runs it shows whether something else competed for the CPUs.
    """
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return int(some.rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        return None


def peak_rss() -> int:
    """Process peak RSS in bytes (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024


def param_bytes(model: Model) -> tuple[int, int]:
    """(parameter count, bytes) of the HF model; tied weights count once."""
    params = list(model.hf.parameters())
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def time_load(name: str, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of each ``load_model`` call and of the first forward after it.

    The weights are memory-mapped, so a load returns before they are resident;
    the first forward pays for paging them in.
    """
    loads, firsts = [], []
    for _ in range(repeats):
        seconds, model = timed(lambda: load_model(name, fetch_if_missing=False))
        loads.append(seconds)
        ids = encode(model, ["Hello"]).input_ids
        firsts.append(timed(lambda m=model, x=ids: m.hf(x))[0])
        del model
        gc.collect()
    return loads, firsts


def verdict_of(ratio: float) -> str:
    return "PASS" if ratio <= TARGET else "FAIL"


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="commlib model name (default: smollm2-135m)")
    p.add_argument("--k", type=int, default=None, help="sender block (default: about 2/3 depth)")
    p.add_argument("--j", type=int, default=None, help="receiver block (default: about 2/3 depth)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="greedy tokens per exchange (default: 16)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per path (default: 5)")
    p.add_argument("--batch", type=int, default=1, help="prompt pairs per exchange (default: 1)")
    p.add_argument("--load-repeats", type=int, default=3, help="loads per model for load time (default: 3)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = p.parse_args()
    if args.max_new_tokens < 2 or args.repeats < 1 or args.batch < 1 or args.load_repeats < 1:
        p.error("need --max-new-tokens >= 2 and --repeats, --batch, --load-repeats >= 1")
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.max_new_tokens
    senders = [PAIRS[i % len(PAIRS)][0] for i in range(args.batch)]
    receivers = [PAIRS[i % len(PAIRS)][1] for i in range(args.batch)]

    # One model per path, so that no path can slow another.
    loads, models = [], {}
    for path in (BASELINE, *BACKENDS):
        seconds, models[path] = timed(lambda: load_model(args.model, fetch_if_missing=False))
        loads.append(seconds)
    rss_loaded = rss_now()
    build = {b: timed(lambda b=b: get_backend(models[b], b))[0] for b in BACKENDS}
    rss_built = rss_now()

    info = models[BASELINE].info
    depth = round(2 * info.n_layers / 3)
    k = min(depth, info.n_layers - 1) if args.k is None else args.k
    j = min(depth, info.n_layers - 1) if args.j is None else args.j
    runs: dict[str, Exchange] = {BASELINE: hf_exchange(k, j)}
    runs.update({b: backend_exchange(b, k, j) for b in BACKENDS})
    s_len, r_len = encode(models[BASELINE], senders).length, encode(models[BASELINE], receivers).length

    print(
        f"machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} CPUs | model {args.model} ({info.architecture}, {info.n_layers} layers, "
        f"d={info.d_model}, {info.dtype}) | k={k} j={j} | n={n} new tokens, batch {args.batch}, "
        f"{args.repeats} repeats | load average {os.getloadavg()[0]:.2f}"
    )
    print(f"prompt tokens (padded): sender {s_len}, receiver {r_len}; f=replace at the last position")

    # Warm up every path once in both modes, then interleave timed repeats,
    # rotating the order so no path always runs first.
    modes = {"exchange": n, "prefill": 1}
    times: dict[str, dict[str, list[float]]] = {m: {p: [] for p in runs} for m in modes}
    ids: dict[str, Tensor] = {}
    for path, run in runs.items():
        for new in modes.values():
            run(models[path], senders, receivers, new)
    order = list(runs)
    stall0, wall0 = cpu_stall_us(), time.perf_counter()
    for r in range(args.repeats):
        rotated = order[r % len(order) :] + order[: r % len(order)]
        for mode, new in modes.items():
            for path in rotated:
                seconds, out = timed(lambda p=path, x=new: runs[p](models[p], senders, receivers, x))
                times[mode][path].append(seconds)
                if mode == "exchange":
                    ids[path] = out
    stall1, wall = cpu_stall_us(), time.perf_counter() - wall0
    stall = None if stall0 is None or stall1 is None else (stall1 - stall0) / 1e6 / wall
    rss_ran, peak = rss_now(), peak_rss()

    med = {m: {p: statistics.median(t) for p, t in by_path.items()} for m, by_path in times.items()}
    ratio = {m: {p: med[m][p] / med[m][BASELINE] for p in runs} for m in modes}
    step = {p: (med["exchange"][p] - med["prefill"][p]) / (n - 1) for p in runs}

    def table(title: str, mode: str, verdict: bool) -> None:
        print(f"\n{title}")
        head = f"  {'path':<18}{'median ms':>10}{'min ms':>9}{'max ms':>9}{'ratio':>8}"
        print(head + (f"   overhead <= {TARGET - 1:.0%}" if verdict else ""))
        for p in runs:
            row = (
                f"  {p:<18}{med[mode][p] * 1e3:>10.1f}{min(times[mode][p]) * 1e3:>9.1f}"
                f"{max(times[mode][p]) * 1e3:>9.1f}{ratio[mode][p]:>8.3f}"
            )
            if verdict:
                row += "   baseline" if p == BASELINE else f"   {verdict_of(ratio[mode][p])}"
            print(row)

    table(f"exchange: capture + edited prefill + {n - 1} decode steps ({n} tokens)", "exchange", True)
    table("prefill only: capture + one edited forward (max_new_tokens=1)", "prefill", False)
    print(f"\nper decode step (derived: (exchange - prefill) / {n - 1})")
    for p in runs:
        print(f"  {p:<18}{step[p] * 1e3:>10.2f} ms{step[p] / step[BASELINE]:>8.3f}")
    same = all(torch.equal(ids[p], ids[BASELINE]) for p in BACKENDS)
    print(f"generated tokens identical across paths: {'yes' if same else 'NO'}")
    if stall is not None:
        print(f"CPU contention during the timed runs: a task waited for a CPU {stall:.0%} of the time")
        if stall > 0.1:
            print("  (contended CPUs inflate the times: run again when idle, or with --threads 1)")
    print("backend construction (one time): " + ", ".join(f"{b} {s:.2f} s" for b, s in build.items()))

    n_params, p_bytes = param_bytes(models[BASELINE])
    print("\nmemory")
    print(f"  parameters: {n_params / 1e6:.1f}M, {mib(p_bytes)} per model copy; {len(models)} copies loaded")
    print(
        f"  RSS: {mib(rss_loaded)} after loading, {mib(rss_built)} after building the backends, "
        f"{mib(rss_ran)} after the runs"
    )
    print(f"  peak RSS after the runs: {mib(peak)}")

    # Load times last, after the peak RSS is read: they load and drop more models.
    models.clear()
    gc.collect()
    print(f"\nload from cache (median of {args.load_repeats}; models not cached are skipped, never fetched)")
    print(f"  {'model':<20}{'load s':>8}{'first fwd s':>13}   each load")
    load_times: dict[str, dict[str, list[float]] | None] = {}
    names = [args.model, *(m for m in OFFLINE_MODELS if m != args.model)]
    for name in names:
        if name in OFFLINE_MODELS and not is_cached(name):
            load_times[name] = None
            print(f"  {name:<20}not cached, skipped")
            continue
        load_s, first_s = time_load(name, args.load_repeats)
        load_times[name] = {"load": load_s, "first_forward": first_s}
        each = ", ".join(f"{s:.2f}" for s in load_s)
        print(f"  {name:<20}{statistics.median(load_s):>8.2f}{statistics.median(first_s):>13.2f}   [{each}]")
    print(
        f"  ({args.model} loads for the runs above, first one cold: "
        + ", ".join(f"{s:.2f}" for s in loads)
        + " s)"
    )

    if args.json:
        result = {
            "machine": {
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
            },
            "model": info.to_dict(),
            "k": k,
            "j": j,
            "max_new_tokens": n,
            "batch": args.batch,
            "repeats": args.repeats,
            "prompt_tokens": {"sender": s_len, "receiver": r_len},
            "target_ratio": TARGET,
            "times_s": times,
            "median_s": med,
            "ratio": ratio,
            "decode_step_s": step,
            "tokens_identical": same,
            "backend_build_s": build,
            "param_count": n_params,
            "param_bytes": p_bytes,
            "model_copies": len(BACKENDS) + 1,
            "rss_bytes": {"loaded": rss_loaded, "built": rss_built, "ran": rss_ran},
            "peak_rss_bytes": peak,
            "cpu_stall_fraction": stall,
            "load_s": load_times,
            "run_loads_s": loads,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
