"""Scoring a reasoning run: an output as its ``items.csv`` row, stored rows scored again, the summary.

Every row is scored from its output as the current answer extraction does
(:func:`commlib.tasks.reasoning.is_correct`); FLOPs are analytic
(:func:`commlib.compute.method_flops`); the summary compares each method
with B alone on the same items.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

from commlib.compute import Shape, forward_flops, method_flops
from commlib.models import Model
from commlib.protocols.debate import debate_rounds
from commlib.protocols.questions import ReasoningConfig, ReasoningOutput
from commlib.registry import flops_kind
from commlib.results import Run, bootstrap_ci, paired_difference
from commlib.tasks.reasoning import ReasoningItem, extract_answer, is_correct

REASONING_FIELDS = (
    "item_id",
    "method",
    "answer",
    "extracted",
    "correct",
    "output",
    "transcript",
    "seconds",
    "prompt_a",
    "prompt_b",
    "message_tokens",
    "answer_tokens",
    "flops",
    "batch",
)
"""The columns of a reasoning run's ``items.csv``, one row per (item, method)."""


def reasoning_row(
    item: ReasoningItem,
    method: str,
    output: ReasoningOutput,
    sender: Model,
    receiver: Model,
    cfg: ReasoningConfig,
    *,
    judged: bool = False,
) -> dict[str, Any]:
    """The ``items.csv`` row of ``output``: scored (unless ``judged``: a judge scores it later), with FLOPs.

    FLOPs are analytic, with a KV cache (:func:`commlib.compute.method_flops`).

    Example:
        >>> from commlib.models import load_model
        >>> from commlib.protocols.reasoning import single_output
        >>> m = load_model("tiny-llama-random")
        >>> item, out = ReasoningItem("What is 2 + 2?", "4"), single_output("single-b", "So 4.", 30, 4, 0.5)
        >>> row = reasoning_row(item, "single-b", out, m, m, ReasoningConfig())
        >>> row["extracted"], row["correct"], row["flops"] > 0
        ('4', True, True)
    """
    shape_a, shape_b = model_shapes(sender, receiver)
    flops = method_flops(
        flops_kind(method),
        shape_a,
        shape_b,
        prompt_a=output.prompt_a,
        prompt_b=output.prompt_b,
        message=output.message,
        answer=output.answer,
        k=cfg.k,
        rounds=debate_rounds(method, cfg) or cfg.rounds,
    )["total"]
    return {
        "item_id": item.id,
        "method": method,
        "answer": item.answer,
        "extracted": extract_answer(item, output.text) or "",
        "correct": "" if judged else is_correct(item, output.text),
        "output": output.text,
        "transcript": json.dumps(output.transcript),
        "seconds": output.seconds,
        "prompt_a": output.prompt_a,
        "prompt_b": output.prompt_b,
        "message_tokens": output.message,
        "answer_tokens": output.answer,
        "flops": flops,
        "batch": output.batch,
    }


def score_stored_rows(run: Run, items: Sequence[ReasoningItem], *, judged: bool = False) -> None:
    """Score a resumed run's rows again from their outputs, as the current answer extraction does.

    Rows written before batching get ``batch`` 1; a Biographies run
    (``judged``) is scored by its judge instead. The table is rewritten only
    when a row changes; rows of items not in ``items`` keep their scores.
    """
    by_id = {item.id: item for item in items}
    scored = [{} if judged else _scored(by_id.get(r["item_id"]), r) for r in run.rows]
    updated = [{"batch": "1", **r, **s} for r, s in zip(run.rows, scored, strict=True)]
    if any({k: str(v) for k, v in u.items()} != r for u, r in zip(updated, run.rows, strict=True)):
        run.rewrite(updated)


def _scored(item: ReasoningItem | None, row: dict[str, str]) -> dict[str, Any]:
    """A stored row's ``extracted`` and ``correct``, from its output (as stored when the item is unknown)."""
    if item is None:
        return {}
    return {
        "extracted": extract_answer(item, row["output"]) or "",
        "correct": is_correct(item, row["output"]),
    }


def reasoning_summary(
    table: pd.DataFrame, methods: Sequence[str], *, unit: float, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """``results.json``'s ``methods``: per method its score with a 95% bootstrap CI, compute and ``vs_b``.

    ``table`` has a run's rows with their ``score`` (NaN: not scored);
    ``unit`` is the FLOPs of ``flops_vs_one_pass``. With ``single-b`` among
    the methods, every other one has ``vs_b``: the paired difference with B
    alone over the items both score, and the items above and below it; with
    a control of :data:`CONTROLS`, the method it controls has ``vs_control``,
    per control, the same against the control.

    Example:
        >>> rows = [("a", "single-b", 1.0), ("b", "single-b", 0.0), ("a", "ac", 1.0), ("b", "ac", 1.0)]
        >>> table = pd.DataFrame(rows, columns=["item_id", "method", "score"])
        >>> table[["flops", "seconds", "batch", "message_tokens", "answer_tokens"]] = [10.0, 0.5, 1, 0, 3]
        >>> s = reasoning_summary(table, ["single-b", "ac"], unit=5.0)
        >>> s["ac"]["accuracy"], s["ac"]["flops_vs_one_pass"], s["ac"]["vs_b"]["better"]
        (1.0, 2.0, 1)
        >>> "vs_b" in s["single-b"]
        False
    """
    summary: dict[str, dict[str, Any]] = {}
    for method in methods:
        sub = table[table["method"] == method]
        scored = sub["score"].dropna()
        lo, hi = bootstrap_ci(scored.tolist(), seed=seed)
        summary[method] = {
            "accuracy": float(scored.mean()) if len(scored) else float("nan"),
            "ci_low": lo,
            "ci_high": hi,
            "n": len(sub),
            "n_scored": len(scored),
            "flops": float(sub["flops"].mean()),
            "flops_vs_one_pass": float(sub["flops"].mean()) / unit,
            "seconds": float(sub["seconds"].mean()),
            "batch_sizes": sorted({int(b) for b in sub["batch"]}),
            "generated_tokens": float((sub["message_tokens"] + sub["answer_tokens"]).mean()),
        }
    by_item = table.pivot(index="item_id", columns="method", values="score")
    if "single-b" in methods:
        for method in methods:
            if method != "single-b":
                summary[method]["vs_b"] = _paired_with(by_item[method], by_item["single-b"], seed=seed)
    for control, method in CONTROLS.items():
        if control in methods and method in methods:
            paired = _paired_with(by_item[method], by_item[control], seed=seed)
            summary[method].setdefault("vs_control", {})[control] = paired
    return summary


CONTROLS = {"ac-replace-unrelated": "ac-replace", "ac-replace-donor": "ac-replace"}
"""Each reasoning control and the method it controls: that method's ``vs_control`` holds the paired gain."""


def _paired_with(scores: pd.Series, baseline: pd.Series, *, seed: int) -> dict[str, float | int]:
    """``scores`` against ``baseline`` on the items both score: paired difference, items above and below."""
    both = pd.concat([scores, baseline], axis=1, keys=["method", "baseline"]).dropna()
    difference, lo, hi = paired_difference(both["method"], both["baseline"], seed=seed)
    return {
        "difference": difference,
        "ci_low": lo,
        "ci_high": hi,
        "n": len(both),
        "better": int((both["method"] > both["baseline"]).sum()),
        "worse": int((both["method"] < both["baseline"]).sum()),
    }


def model_shapes(sender: Model, receiver: Model) -> tuple[Shape, Shape]:
    return Shape.from_config(sender.hf.config), Shape.from_config(receiver.hf.config)


def one_pass_flops(table: pd.DataFrame, sender: Model, receiver: Model) -> float:
    """FLOPs of one pass of the smaller model over the mean prompt: the unit of ``flops_vs_one_pass``."""
    smaller = min(model_shapes(sender, receiver), key=lambda s: forward_flops(s, 1))
    return forward_flops(smaller, max(1, round(float(table[["prompt_a", "prompt_b"]].max(axis=1).mean()))))
