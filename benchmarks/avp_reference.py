"""Peer reference: AVP 0.6.2's same-model KV transfer next to commlib's ``kv`` channel (issue 26).

On the Countries test items of the controlled experiment
(``make_pools("countries", n_test=N, seed=S)``), A reads its message prompt
(:func:`commlib.channels.slot.message_prompt`) and B answers the item's
question after reading A's KV cache, three ways, all on one loaded HF model
and tokenizer (``load_model(MODEL)``):

* ``avp``: AVP's HuggingFace connector in its same-model KV mode:
  ``think(A's prompt, steps=0, output=KV_CACHE)`` (A's prompt cache, no latent
  steps), then ``generate(B's question, context=..., do_sample=False)``. The
  connector renders B's question through the chat template with the
  generation prompt and nothing after it. B's first-token logits are taken
  by a logits processor passed through ``generate``'s keyword arguments
  (AVP forwards them to HF ``generate``); bytes sent are ``len(to_bytes())``,
  AVP's wire format (not used in its same-process mode; timed apart).
* ``commlib``: :func:`commlib.channels.kv.read_kv` as the controlled
  experiment reads ``kv``: B's prompt ends with the item's reply ("<Name> is
  located in"), batched (``--batch-size``, left-padded).
* ``commlib-avp-prompt``: the same channel with B's prompt as AVP renders it
  (no reply), one item at a time as AVP runs: the aligned variant. Its
  texts and first-token logits are compared with AVP's.

Also checked per item: A's token ids and cache (keys and values) from AVP and
from commlib, whether AVP's context grows when B reads it (HF ``generate``
appends to the cache it is given) and whether a second reading of the same
context gives the same answer, for both libraries.

AVP stays out of commlib's dependencies: it is put on ``sys.path`` from a
separate directory (``--avp-path``, default ``$AVP_PATH`` or ``/tmp/avp``);
numpy, protobuf and zstandard, which it imports, come with commlib's venv.
Without it the script prints how to install it and exits 2.

Run (from the repository root)::

    .venv/bin/pip install --no-deps --target /tmp/avp avp==0.6.2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/avp_reference.py --n 50 --seed 0 \\
        --out benchmarks/results/avp_reference_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

AVP_VERSION = "0.6.2"
INSTALL = f".venv/bin/pip install --no-deps --target /tmp/avp avp=={AVP_VERSION}"


def import_avp(path: str) -> Any:
    """AVP's package, from ``path`` when it exists, else from the environment; exits 2 without it."""
    if Path(path).is_dir():
        sys.path.insert(0, str(Path(path).resolve()))
    try:
        import avp
        from avp.connectors.huggingface import HuggingFaceConnector  # noqa: F401
    except ImportError as err:
        print(f"avp_reference: AVP {AVP_VERSION} is not importable ({err}); install it with: {INSTALL}")
        raise SystemExit(2) from err
    return avp


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=50, help="Countries test items")
    p.add_argument("--seed", type=int, default=0, help="the pools' seed")
    p.add_argument("--max-new-tokens", type=int, default=16, help="B's greedy answer tokens, every run")
    p.add_argument("--batch-size", type=int, default=16, help="commlib's batch (the controlled experiment's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--avp-path", default=os.environ.get("AVP_PATH", "/tmp/avp"))
    p.add_argument("--out", type=Path, default=None, help="a JSON file, e.g. benchmarks/results/...")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    avp = import_avp(args.avp_path)
    if avp.__version__ != AVP_VERSION:
        print(f"avp_reference: AVP {avp.__version__} found, the reference is {AVP_VERSION}; running anyway")

    import torch
    import transformers
    from avp.connectors.huggingface import HuggingFaceConnector
    from avp.types import OutputType
    from transformers import LogitsProcessor, LogitsProcessorList
    from transformers.utils import logging as hf_logging

    from commlib.channels.kv import kv_messages, read_kv
    from commlib.channels.slot import message_prompt
    from commlib.compute import Shape, kv_bytes
    from commlib.models import load_model
    from commlib.prompts import encode
    from commlib.results import contains_answer
    from commlib.tasks.pools import make_pools

    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    model = load_model(args.model)
    items = make_pools("countries", n_test=args.n, seed=args.seed).test
    prompts_a = [message_prompt(it) for it in items]
    conn = HuggingFaceConnector(model=model.hf, tokenizer=model.tokenizer)
    shape = Shape.from_config(model.hf.config.get_text_config())
    element = model.hf.get_input_embeddings().weight.element_size()

    class FirstLogits(LogitsProcessor):
        """Keeps the scores of the first generated token (raw logits: greedy adds no processor)."""

        def __init__(self) -> None:
            self.first: torch.Tensor | None = None

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if self.first is None:
                self.first = scores[0].detach().float().clone()
            return scores

    def avp_read(ctx: Any, question: str) -> tuple[str, torch.Tensor]:
        grab = FirstLogits()
        text = conn.generate(
            question, context=ctx, max_new_tokens=args.max_new_tokens, do_sample=False,
            logits_processor=LogitsProcessorList([grab]),
        )  # fmt: skip
        assert grab.first is not None
        return str(text), grab.first

    # (a) AVP, one item at a time, as its API runs.
    avp_rows: list[dict[str, Any]] = []
    avp_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
    avp_logits: list[torch.Tensor] = []
    t_avp = t_bytes = 0.0
    for it, prompt in zip(items, prompts_a, strict=True):
        t0 = time.perf_counter()
        ctx = conn.think(prompt, steps=0, output=OutputType.KV_CACHE)
        t_avp += time.perf_counter() - t0
        seq_len = int(ctx.seq_len)
        layers = ctx.past_key_values.layers
        avp_caches.append(
            (
                torch.stack([x.keys[0].clone() for x in layers]),
                torch.stack([x.values[0].clone() for x in layers]),
            )
        )
        t0 = time.perf_counter()
        wire = len(ctx.to_bytes())  # AVP's wire format (its cross-process path; same-process skips it)
        t_bytes += time.perf_counter() - t0
        t0 = time.perf_counter()
        text, first = avp_read(ctx, it.receiver)
        t_avp += time.perf_counter() - t0
        grown = int(ctx.past_key_values.get_seq_length()) - seq_len
        again, _ = avp_read(ctx, it.receiver)  # the same context, read a second time
        avp_logits.append(first)
        avp_rows.append(
            {"text": text, "tokens_a": seq_len, "wire_bytes": wire, "cache_grew_by": grown,
             "second_reading_same": again == text}
        )  # fmt: skip

    # (b) commlib's kv channel as the controlled experiment reads it (B's prompt ends with the reply).
    t0 = time.perf_counter()
    messages = kv_messages(model, prompts_a, batch_size=args.batch_size)
    ours = []
    for start in range(0, len(items), args.batch_size):
        chunk = items[start : start + args.batch_size]
        batch = encode(model, [it.receiver for it in chunk], replies=[it.reply for it in chunk])
        ours += read_kv(
            model, messages[start : start + len(chunk)], batch, max_new_tokens=args.max_new_tokens
        )
    t_ours = time.perf_counter() - t0
    first = items[: args.batch_size]  # the first batch, read a second time from the same messages
    again_batch = encode(model, [it.receiver for it in first], replies=[it.reply for it in first])
    again_ours = read_kv(model, messages[: len(first)], again_batch, max_new_tokens=args.max_new_tokens)

    # (c) commlib's kv with B's prompt as AVP renders it (no reply), one item at a time.
    t0 = time.perf_counter()
    aligned = []
    for it, prompt in zip(items, prompts_a, strict=True):
        msg = kv_messages(model, [prompt], batch_size=1)
        aligned += read_kv(model, msg, encode(model, [it.receiver]), max_new_tokens=args.max_new_tokens)
    t_aligned = time.perf_counter() - t0

    rows = []
    for i, it in enumerate(items):
        a, b, c, msg = avp_rows[i], ours[i], aligned[i], messages[i]
        keys, values = avp_caches[i]
        same_shape = keys.shape == msg.keys.shape
        cache_diff = (
            max(float((keys - msg.keys).abs().max()), float((values - msg.values).abs().max()))
            if same_shape
            else None
        )
        logit_diff = float((avp_logits[i] - c.first_logits.float().cpu()).abs().max())
        ours_bytes = kv_bytes(shape, msg.tokens, bytes_per_element=element)
        with_reply = f"{it.reply}{b.text}".strip()  # B's whole answer under commlib's prompt
        rows.append(
            {
                "item_id": it.id,
                "answer": it.answer,
                "avp_text": a["text"],
                "commlib_text": b.text,
                "commlib_avp_prompt_text": c.text,
                "avp_correct": contains_answer(a["text"], it.answer, it.choices),
                "commlib_correct": contains_answer(b.text, it.answer, it.choices),
                "commlib_avp_prompt_correct": contains_answer(c.text, it.answer, it.choices),
                "avp_eq_commlib_avp_prompt_text": a["text"] == c.text.strip(),
                "reply": it.reply,
                "avp_starts_with_reply": a["text"].startswith(it.reply),
                "avp_eq_reply_plus_commlib_text": a["text"] == with_reply,
                "avp_prefix_consistent_with_reply_plus_commlib": with_reply.startswith(a["text"])
                or a["text"].startswith(with_reply),
                "first_logits_max_abs_diff": logit_diff,
                "first_token_same": int(avp_logits[i].argmax()) == int(c.first_logits.argmax()),
                "tokens_a_avp": a["tokens_a"],
                "tokens_a_commlib": msg.tokens,
                "cache_max_abs_diff": cache_diff,
                "avp_wire_bytes": a["wire_bytes"],
                "commlib_kv_bytes": ours_bytes,
                "avp_cache_grew_by": a["cache_grew_by"],
                "avp_second_reading_same": a["second_reading_same"],
            }
        )
    summary = summarise(rows, len(again_ours), again_ours, ours)
    summary["wall_s"] = {
        "avp_think_generate_item_by_item": round(t_avp, 3),
        "avp_to_bytes": round(t_bytes, 3),
        "commlib_batched": round(t_ours, 3),
        "commlib_avp_prompt_item_by_item": round(t_aligned, 3),
    }
    out = {
        "command": "benchmarks/avp_reference.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model,
        "game": "countries (make_pools test pool)",
        "n": args.n,
        "seed": args.seed,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "dtype": str(model.hf.dtype).removeprefix("torch."),
        "attention": model.hf.config._attn_implementation,
        "versions": {
            "avp": avp.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "summary": summary,
        "items": rows,
    }
    report(out)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


def summarise(rows: list[dict[str, Any]], n_again: int, again: list[Any], first: list[Any]) -> dict[str, Any]:
    """Counts over items: agreement, accuracy, cache and byte checks."""

    def count(key: str) -> int:
        return sum(bool(r[key]) for r in rows)

    n = len(rows)
    diffs = [r["first_logits_max_abs_diff"] for r in rows]
    caches = [r["cache_max_abs_diff"] for r in rows if r["cache_max_abs_diff"] is not None]
    overhead = [r["avp_wire_bytes"] - r["commlib_kv_bytes"] for r in rows]
    return {
        "n": n,
        "accuracy": {k: count(f"{k}_correct") / n for k in ("avp", "commlib", "commlib_avp_prompt")},
        "avp_vs_commlib_avp_prompt": {
            "text_equal": count("avp_eq_commlib_avp_prompt_text"),
            "correct_equal": sum(r["avp_correct"] == r["commlib_avp_prompt_correct"] for r in rows),
            "first_token_equal": count("first_token_same"),
            "first_logits_max_abs_diff_max": max(diffs),
            "first_logits_max_abs_diff_median": statistics.median(diffs),
        },
        "avp_vs_commlib": {
            "correct_equal": sum(r["avp_correct"] == r["commlib_correct"] for r in rows),
            "both_correct": sum(r["avp_correct"] and r["commlib_correct"] for r in rows),
            "only_avp": sum(r["avp_correct"] and not r["commlib_correct"] for r in rows),
            "only_commlib": sum(r["commlib_correct"] and not r["avp_correct"] for r in rows),
            "avp_starts_with_reply": count("avp_starts_with_reply"),
            "text_equal_reply_plus_commlib": count("avp_eq_reply_plus_commlib_text"),
            "prefix_consistent_reply_plus_commlib": count("avp_prefix_consistent_with_reply_plus_commlib"),
        },
        "sender": {
            "tokens_equal": sum(r["tokens_a_avp"] == r["tokens_a_commlib"] for r in rows),
            "cache_max_abs_diff_max": max(caches) if caches else None,
            "tokens_a_median": statistics.median(r["tokens_a_commlib"] for r in rows),
        },
        "bytes": {
            "avp_wire_median": statistics.median(r["avp_wire_bytes"] for r in rows),
            "commlib_kv_bytes_median": statistics.median(r["commlib_kv_bytes"] for r in rows),
            "avp_overhead_min": min(overhead),
            "avp_overhead_max": max(overhead),
        },
        "reading_twice": {
            "avp_context_grew": sum(r["avp_cache_grew_by"] > 0 for r in rows),
            "avp_cache_grew_by_median": statistics.median(r["avp_cache_grew_by"] for r in rows),
            "avp_second_reading_same": count("avp_second_reading_same"),
            "commlib_second_reading_same": sum(x.text == y.text for x, y in zip(again, first, strict=False)),
            "commlib_second_reading_n": n_again,
        },
    }


def report(out: dict[str, Any]) -> None:
    s = out["summary"]
    n = s["n"]
    acc, al, vs = s["accuracy"], s["avp_vs_commlib_avp_prompt"], s["avp_vs_commlib"]
    snd, by, tw = s["sender"], s["bytes"], s["reading_twice"]
    lines = [
        f"{out['model']}, Countries test pool, n = {n}, seed = {out['seed']}, {out['max_new_tokens']} tokens",
        f"accuracy: avp {acc['avp']:.2f}, commlib kv (reply) {acc['commlib']:.2f}, "
        f"commlib kv with AVP's B prompt {acc['commlib_avp_prompt']:.2f}",
        f"avp vs commlib (AVP's B prompt): text {al['text_equal']}/{n}, "
        f"correct flag {al['correct_equal']}/{n}, first token {al['first_token_equal']}/{n}, "
        f"first-token logits max |diff| {al['first_logits_max_abs_diff_max']:.3g} "
        f"(median {al['first_logits_max_abs_diff_median']:.3g})",
        f"avp vs commlib (reply): correct flag {vs['correct_equal']}/{n} (both {vs['both_correct']}, "
        f"only avp {vs['only_avp']}, only commlib {vs['only_commlib']}); avp text opens with the reply "
        f"{vs['avp_starts_with_reply']}/{n}, "
        f"= reply + commlib text {vs['text_equal_reply_plus_commlib']}/{n}, "
        f"one a prefix of the other {vs['prefix_consistent_reply_plus_commlib']}/{n}",
        f"A's side: same tokens {snd['tokens_equal']}/{n} (median {snd['tokens_a_median']}), "
        f"cache max |diff| {snd['cache_max_abs_diff_max']}",
        f"bytes per message: avp wire {by['avp_wire_median']}, "
        f"commlib kv_bytes {by['commlib_kv_bytes_median']} "
        f"(AVP's overhead {by['avp_overhead_min']}..{by['avp_overhead_max']})",
        f"reading twice: avp context grew on {tw['avp_context_grew']}/{n} "
        f"(median +{tw['avp_cache_grew_by_median']} positions), "
        f"second answer same {tw['avp_second_reading_same']}/{n}; "
        f"commlib same {tw['commlib_second_reading_same']}/{tw['commlib_second_reading_n']}",
        "wall s: " + ", ".join(f"{k} {v}" for k, v in s["wall_s"].items()),
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
