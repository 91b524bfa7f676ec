"""AC into a receiver sharded over GPUs: LLaMA-3.1-8B (A) -> LLaMA-3.1-70B (B) shapes, random weights, bf16.

B (about 141 GB in bf16) is loaded onto an explicit accelerate device map: its blocks split evenly over
``--gpus`` GPUs, the embedding with the first group, the final norm and the unembedding with the last
(``load_model(..., device_map=...)``: built on ``meta``, each group's weights drawn on its own GPU,
accelerate's hooks). A sits on ``--sender-device``, so its state crosses devices to meet B's block j. AC at
the paper's relative depth (0.8 of both models: k = 25 of 32, j = 63 of 80, on the second GPU of two).
Measured, with the helpers of ``bench_gpu.py``:

1. **placement**: B's weight bytes per device, which device holds block j, whether the fast decode path
   (static cache, CUDA graph) applies (not on a model split over several devices: those decode eagerly);
2. **decode tokens/s** of B at batch 1 (commlib's eager and default paths, plain HF ``generate``) against the
   **memory floor of the sharded model**: the blocks run one device after another, so a step costs the sum
   over devices of (bytes there / that device's copy bandwidth);
3. **graft overhead** against plain HF with torch hooks on the same sharding (the same eager decode loop, and
   commlib's default against hooks plus ``hf.generate``), with a check that both give the same tokens;
4. **B alone, AC, NL, NLD wall times** (the methods of ``gpu_method_timing.py``);
5. peak GPU memory per device.

Each part is written to ``--out`` as it finishes (a part that fails is recorded, the others still run).

    python benchmarks/bench_sharded.py --out benchmarks/results/bench_sharded_h200x2.json

Needs two GPUs of at least ~90 GB (H200: B's half plus A on the first); on four H100s use ``--gpus 4``. A
dry run on the CPU (tiny shapes with d_A < d_B as 4096 -> 8192, two groups both on ``cpu``, accelerate's
hooks still dispatching), so the script is known to work before the GPUs are there:

    .venv/bin/python benchmarks/bench_sharded.py --dry-run
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import (
    add_timing_options,
    copy_bandwidth,
    decode_paths,
    decode_rates,
    graft_times,
    hf_ac,
    interleaved,
    method_times,
    section,
    token_ids,
)
from gpu_method_timing import prompt_text

from commlib.backends import Decoding
from commlib.backends import decoding as fast_decoding
from commlib.experiments.selection import PAPER_DEPTH, paper_layers
from commlib.graft import GraftConfig, communicate
from commlib.models import RANDOM_MODELS, Model, load_model

torch.set_grad_enabled(False)

DRY_RUN = {
    "sender": "tiny-llama-random",
    "receiver": "tiny-llama-wide-random",
    "gpus": 2,
    "devices": "cpu,cpu",
    "sender_device": "cpu",
    "prompt": 16,
    "new_tokens": 8,
    "graft_answer": 8,
    "prompt_m": 16,
    "message": 8,
    "answer": 8,
    "repeats": 2,
    "method_repeats": 1,
    "copy_gib": 0.01,
}
"""The settings ``--dry-run`` sets: tiny random models on the CPU, two groups of B's blocks, short lengths."""


def even_map(name: str, devices: list[str]) -> dict[str, str]:
    """B's blocks in ``len(devices)`` equal groups; the embedding with the first, the head with the last."""
    n = RANDOM_MODELS[name].config().num_hidden_layers
    groups = len(devices)
    blocks = {f"model.layers.{i}": devices[i * groups // n] for i in range(n)}
    head = {"model.norm": devices[-1], "lm_head": devices[-1]}
    return {"model.embed_tokens": devices[0], "model.rotary_emb": devices[0], **blocks, **head}


def bytes_by_device(model: Model) -> dict[str, int]:
    """Parameter bytes on each device (a tied weight once)."""
    out: dict[str, int] = {}
    for p in model.hf.parameters():  # parameters() yields a shared tensor once
        out[str(p.device)] = out.get(str(p.device), 0) + p.numel() * p.element_size()
    return out


def placement(a: Model, b: Model, args: argparse.Namespace, device_map: dict[str, str]) -> dict[str, Any]:
    where_j = device_map[f"model.layers.{args.j}"]
    return {
        "receiver_map": device_map,
        "receiver_bytes_by_device": bytes_by_device(b),
        "sender_device": str(a.device),
        "sender_bytes": sum(bytes_by_device(a).values()),
        "k": args.k,
        "j": args.j,
        "paper_depth": PAPER_DEPTH,
        "block_j_device": where_j,
        "a_crosses_devices": where_j != str(a.device),
        "fast_path_applies": len(set(device_map.values())) == 1,
    }


def decode(b: Model, args: argparse.Namespace, bandwidth: dict[str, float], device: torch.device) -> Any:
    """B's tokens/s at batch 1 on each path, against the sharded floor."""
    on = bytes_by_device(b)
    floor = 1 / sum(n / bandwidth[d] for d, n in on.items()) if all(d in bandwidth for d in on) else None
    ids = token_ids(b, args.prompt, seed=2)
    fns = decode_paths(b, ids, args.backend, args.new_tokens)
    fast_decoding.clear(b)
    samples, warmup = interleaved(fns, args.repeats, device)
    rates = decode_rates(samples, args.new_tokens)
    for r in rates.values():
        r["vs_floor"] = r["tokens_per_s"]["median"] / floor if floor else None
    static = bool(fast_decoding._DECODERS.get(b.hf))
    return {"floor_steps_per_s": floor, "bytes_by_device": on, "paths": rates, "warmup_s": warmup} | {
        "static_path_taken": static
    }


def graft(a: Model, b: Model, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """``bench_gpu``'s graft timing, and whether commlib and plain HF hooks give the same tokens."""
    out = graft_times(a, b, args, device)
    texts = (prompt_text(args.prompt_m, 0), prompt_text(args.prompt_m, 1))
    cfg = GraftConfig(k=args.k, j=args.j, f="replace", raw=True)
    dec = Decoding(max_new_tokens=args.graft_answer, stop_at_eos=False)
    ours = communicate(a, b, [texts[0]], [texts[1]], cfg, backend=args.backend, decoding=dec)
    hooks = hf_ac(a, b, args.k, args.j, texts, args.graft_answer, False)
    none = GraftConfig(k=args.k, j=args.j, f="none", raw=True)
    alone = communicate(a, b, [texts[0]], [texts[1]], none, backend=args.backend, decoding=dec)
    out["same_tokens_as_hf_hooks"] = bool(torch.equal(ours.token_ids.cpu(), hooks.cpu()))
    out["graft_changed_first_token_logits"] = not torch.equal(ours.first_logits, alone.first_logits)
    return out


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sender", default="llama-3.1-8b-random")
    parser.add_argument("--receiver", default="llama-3.1-70b-random")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs B is split over (default: all visible)")
    parser.add_argument("--devices", default=None, help="B's groups, e.g. cuda:0,cuda:1 (default: --gpus)")
    parser.add_argument("--sender-device", default="cuda:0")
    add_timing_options(
        parser,
        new_tokens=64,
        graft_answer=32,
        prompt_m=128,
        message=128,
        answer=128,
        repeats=3,
        method_repeats=2,
    )
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: decode,graft,methods")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (see the docstring)")
    args = parser.parse_args()
    if args.dry_run:
        for key, value in DRY_RUN.items():
            setattr(args, key, value)
    if args.devices is None:
        count = args.gpus or torch.cuda.device_count()
        if count < 1:
            raise SystemExit("no GPU: run where there are several, or try --dry-run on the CPU")
        args.devices = ",".join(f"cuda:{i}" for i in range(count))
    args.devices = args.devices.split(",")
    n_a = RANDOM_MODELS[args.sender].config().num_hidden_layers
    n_b = RANDOM_MODELS[args.receiver].config().num_hidden_layers
    args.k, args.j = paper_layers(n_a, n_b)
    return args


def main() -> None:
    args = parse()
    device = torch.device(args.devices[0])
    dtype = getattr(torch, args.dtype)
    skip = set(filter(None, args.skip.split(",")))
    names = sorted({torch.cuda.get_device_name(d) for d in args.devices if d.startswith("cuda")}) or ["cpu"]
    results: dict[str, Any] = {
        "devices": names,
        "n_devices": len(set(args.devices)),
        "dry_run": args.dry_run,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "commit": os.environ.get("COMMLIB_COMMIT"),
        "settings": vars(args),
    }
    print(f"{names} x {len(args.devices)} groups, torch {torch.__version__}", flush=True)
    section(
        results,
        "copy_bandwidth",
        lambda: {d: copy_bandwidth(torch.device(d), args.copy_gib) for d in sorted(set(args.devices))},
        args.out,
    )
    bandwidth = {d: r["bytes_per_s"] for d, r in results["copy_bandwidth"].items() if "bytes_per_s" in r}
    device_map = even_map(args.receiver, args.devices)
    b = load_model(args.receiver, dtype=dtype, device_map=device_map)
    a = load_model(args.sender, dtype=dtype, device=args.sender_device)
    section(results, "placement", lambda: placement(a, b, args, device_map), args.out)
    if "decode" not in skip:
        section(results, "decode", lambda: decode(b, args, bandwidth, device), args.out)
    if "graft" not in skip:
        section(results, "graft", lambda: graft(a, b, args, device), args.out)
    if "methods" not in skip:
        section(results, "methods", lambda: method_times(a, b, args, device), args.out)
    if device.type == "cuda":
        peak = {d: torch.cuda.max_memory_allocated(d) for d in sorted(set(args.devices))}
        section(results, "peak_memory_bytes", lambda: peak, args.out)
    report(results, args)


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    """The short table, last in the output."""
    print(
        f"\n=== {args.sender} -> {args.receiver}, {args.dtype}, {results['devices']}, groups {args.devices}"
    )
    p = results.get("placement", {})
    if "block_j_device" in p:
        gb = {d: round(n / 1e9, 2) for d, n in p["receiver_bytes_by_device"].items()}
        print(
            f"B's weights (GB) by device {gb}; A ({p['sender_bytes'] / 1e9:.2f} GB) on {p['sender_device']}"
        )
        print(
            f"k={p['k']}, j={p['j']} (depth {p['paper_depth']}): block j on {p['block_j_device']}, "
            f"A's state crosses devices: {p['a_crosses_devices']}; "
            f"fast path applies: {p['fast_path_applies']}"
        )
    d = results.get("decode", {})
    if "paths" in d:
        floor = d["floor_steps_per_s"]
        print(f"decode, batch 1, {args.prompt}-token prompt; sharded floor {floor:.1f} steps/s")
        for path, r in d["paths"].items():
            t = r["tokens_per_s"]
            print(
                f"  {path:<15}{t['median']:9.1f} tok/s {r['vs_floor']:7.1%} of floor  "
                f"spread {t['spread']:.0%}"
            )
        print(f"  static path taken: {d['static_path_taken']}")
    g = results.get("graft", {})
    if "overhead_eager" in g:
        print(f"graft (AC replace, {args.prompt_m}-token prompts, {args.graft_answer} answer tokens):")
        for path in ("commlib-eager", "hf-hooks-eager", "commlib-fast", "hf-hooks-generate"):
            print(f"  {path:<18}{g[path]['median']:8.3f} s  spread {g[path]['spread']:.0%}")
        print(f"  overhead, same eager decode: {g['overhead_eager']:.3f}x")
        print(f"  commlib default vs hooks + hf.generate: {g['commlib_fast_vs_hf_generate']:.3f}x")
        print(
            f"  same tokens as plain HF hooks: {g['same_tokens_as_hf_hooks']}; "
            f"graft changed B's logits: {g['graft_changed_first_token_logits']}"
        )
    m = results.get("methods", {})
    if "vs_ac" in m:
        print(f"methods at {args.prompt_m}/{args.message}/{args.answer}, time / AC:")
        for n, r in m["vs_ac"].items():
            s = m["seconds"][n]
            print(f"  {n:<9}{s['median']:8.2f} s {r:6.2f}  spread {s['spread']:.0%}")
        print(f"  AC / NLD = {m['ac_over_nld']:.3f}")
    for dev, n in results.get("peak_memory_bytes", {}).items():
        if isinstance(n, int):
            print(f"peak memory {dev}: {n / 2**30:.1f} GiB")
    for part, r in results.items():
        if isinstance(r, dict) and "error" in r:
            print(f"FAILED: {part}: {r['error'].strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
