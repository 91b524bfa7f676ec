"""How much state must be sent? Accuracy, distance and compute against the number of positions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    pass

from commlib.errors import CommlibError
from commlib.experiments.distance import REFERENCES, _layer_manifold
from commlib.models import Model
from commlib.prompts import Position, format_prompt
from commlib.protocols.games import MethodConfig
from commlib.results import (
    append_rows,
    bootstrap_ci,
    claim_run_dir,
    contains_answer,
    exact_match,
    package_versions,
    paired_difference,
    write_json,
)
from commlib.tasks.games import load_game

N_SWEEP_DISTANCES = (
    "norm_ratio",
    "log_norm_ratio",
    "mahalanobis",
    "mahalanobis_pca",
    "pca_residual",
    "knn_euclidean",
    "knn_cosine",
    "displacement",
    "log_norm_ratio_pct",
    "mahalanobis_pct",
    "mahalanobis_pca_pct",
    "pca_residual_pct",
    "knn_euclidean_pct",
    "knn_cosine_pct",
)
"""Distance columns of the sweep over n (:meth:`commlib.distance.Manifold.table`; mean over the injected)."""


N_SWEEP_FIELDS = (
    "item_id",
    "method",
    "n",
    "n_sent",
    "answer",
    "output",
    "message",
    "correct",
    "exact",
    *N_SWEEP_DISTANCES,
    "flops",
    "seconds",
    "sender_seconds",
)


def run_n_sweep(
    game: str,
    sender: Model,
    receiver: Model,
    methods: Sequence[str],
    ns: Sequence[int | str],
    *,
    out_dir: str | Path,
    k: int | None = None,
    j: int | None = None,
    n: int | None = None,
    seed: int = 0,
    position: Position = "last",
    adapter: str | Path | None = None,
    message_tokens: int = 48,
    max_new_tokens: int = 24,
    n_reference: int = 3072,
    reference: str = "task",
    backend: str = "nnsight",
    progress: bool = True,
) -> dict[str, Any]:
    """The sweep over n: per method, B's answers as more of A's state goes uncollapsed; resumable.

    Each method is a series of :mod:`commlib.protocols.series` (its docstring
    says what n is for each: AC's grafted positions, CIPHER's soft steps,
    Interlat's latent steps; ``"all"`` sends everything). For every item,
    method and n: B's answer (scored as in the games), the distance of what
    B receives from its own states (the states the graft writes against B's
    residuals after block ``j``, ``reference`` as in :func:`run_distance`:
    by default B's states at the message position on the game's own
    prompts, :func:`commlib.distance.manifold_for`; the latent vectors against B's
    input embeddings, :func:`commlib.distance.input_reference`; each metric
    the mean over the item's injected states, empty when n = 0 injects
    nothing), the analytic FLOPs, and the wall time of B's answer and of A's
    message. A's message is computed once per item and method and reused
    for every n.

    Rows go to ``out_dir/items.csv`` as each is done (columns
    :data:`N_SWEEP_FIELDS`); a re-run skips the (item, method, n) there, so
    methods and n can be added later. ``out_dir/run.json`` holds the
    settings, and a resumed run with other settings is refused.

    Args:
        game: ``countries``, ``tipsheets`` or a JSONL path.
        sender: A.
        receiver: B.
        methods: Series names (``ac-replace``, ``cipher``, ``cipher-t<T>``,
            ``interlat``, ``interlat-norm``, ``interlat-trained``).
        ns: The n to sweep, e.g. ``[0, 1, 2, 4, 8, "all"]``.
        out_dir: Where the rows and the summary go.
        k: A's block (AC).
        j: B's block (AC).
        n: Items (default: the game's).
        seed: Items' seed (and the references' sampling).
        position: AC's message position.
        adapter: ``interlat-trained``'s directory (from :func:`commlib.channels.interlat.train_adapter`).
        message_tokens: The longest message A writes (the adapter's own for ``interlat-trained``).
        max_new_tokens: B's answer length.
        n_reference: Sentences or prompts (AC) and token occurrences (latent) in B's references.
        reference: AC's reference: ``task``, ``corpus`` or ``prompt`` (see :func:`run_distance`).
        backend: For AC.
        progress: Show a progress bar.

    Returns:
        The content of ``out_dir/results.json``: per method its series (what
        n is, unit, trained, distance reference) and per n accuracy with a 95%
        bootstrap CI, exact match, n_items, mean n_sent, median distances,
        mean FLOPs and wall times, and the paired gain over the first n
        (``gain``, ``gain_ci_low``, ``gain_ci_high``: per-item differences on
        the same items); and the configuration.

    Raises:
        CommlibError: an unknown method, a bad n or one larger than a message
            (before any work), a pair a method refuses, or ``out_dir`` holding
            a run with other settings.
    """
    import time as _time

    import torch
    from tqdm.auto import tqdm

    from commlib.distance import Manifold, input_reference
    from commlib.protocols.series import ALL, adapter_identity, parse_ns, series_for
    from commlib.registry import check_methods

    if reference not in REFERENCES:
        raise CommlibError(f"unknown reference {reference!r}; use {', '.join(REFERENCES)}")
    labels = parse_ns(ns)
    cfg = MethodConfig(
        k=k,
        j=j,
        position=position,
        max_new_tokens=max_new_tokens,
        message_tokens=message_tokens,
        backend=backend,
    )
    names = check_methods(methods, "sweep-n")  # canonical names (ac: ac-replace), each once
    series = {m: series_for(m, sender, receiver, cfg, adapter=adapter) for m in names}
    items = load_game(game, n=n, seed=seed)
    for s in series.values():
        s.check(items, [v for _, v in labels if v is not None])
    identity = adapter_identity(adapter) if adapter is not None else None
    out = Path(out_dir)
    claim_run_dir(
        out,
        {
            "game": game,
            "seed": seed,
            "n": len(items),
            "sender": sender.name,
            "receiver": receiver.name,
            **asdict(cfg),
            "n_reference": n_reference,
            "reference": reference,
            "adapter": identity,
        },
    )
    path = out / "items.csv"
    done: set[tuple[str, str, str]] = set()
    if path.exists():
        finished = pd.read_csv(path, dtype={"item_id": str, "n": str})
        done = set(zip(finished["item_id"], finished["method"], finished["n"], strict=True))
    manifolds: dict[str, Any] = {}

    def manifold(kind: str) -> Any:  # fitted on first use only: a finished run needs neither
        if kind == "layer" and kind not in manifolds:
            assert j is not None  # the AC series refuse a run without j
            manifolds[kind] = _layer_manifold(
                receiver,
                j,
                items,
                game,
                reference,
                n_reference=n_reference,
                seed=seed,
                position=position,
                backend=backend,
            )
        elif kind not in manifolds:
            manifolds[kind] = Manifold.fit(input_reference(receiver, n=n_reference, seed=seed))
        return manifolds[kind]

    started = _time.perf_counter()
    for item in tqdm(items, desc="sweep over n", disable=not progress):
        for name, s in series.items():
            todo = [(label, v) for label, v in labels if (item.id, name, label) not in done]
            if not todo:
                continue
            prepared = s.prepare(item)
            for label, v in todo:
                p = s.point(item, prepared, v)
                distances: dict[str, float] = {}
                if len(p.injected):
                    own = None if p.own is None else p.own.detach().float().cpu()
                    table = manifold(s.reference).table(p.injected.detach().float().cpu(), own)
                    distances = {c: float(x) for c, x in table.mean().items()}
                append_rows(
                    path,
                    N_SWEEP_FIELDS,
                    [
                        {
                            "item_id": item.id,
                            "method": name,
                            "n": label,
                            "n_sent": p.n_sent,
                            "answer": item.answer,
                            "output": p.text,
                            "message": p.message,
                            "exact": exact_match(p.text, item.answer),
                            "correct": contains_answer(p.text, item.answer, item.choices),
                            **distances,
                            "flops": p.flops,
                            "seconds": p.seconds,
                            "sender_seconds": p.sender_seconds,
                        }
                    ],
                )
    df = pd.read_csv(path, dtype={"item_id": str, "n": str})
    ids = {it.id for it in items}
    df = df[df["item_id"].isin(ids)]
    summary = {}
    for name, s in series.items():
        points = {}
        first = _correct_by_item(df[(df["method"] == name) & (df["n"] == labels[0][0])])
        for label, _ in labels:
            sub = df[(df["method"] == name) & (df["n"] == label)]
            correct = _correct_by_item(sub)
            lo, hi = bootstrap_ci(correct.tolist(), seed=seed)
            gain, gain_lo, gain_hi = paired_difference(correct, first, seed=seed)
            points[label] = _finite(
                {
                    "accuracy": float(correct.mean()),
                    "ci_low": lo,
                    "ci_high": hi,  # NaN when no rows
                    "exact_match": float(sub["exact"].astype(str).isin(["True", "1"]).mean()),
                    "n_items": len(sub),
                    "n_sent": float(sub["n_sent"].mean()),
                    **{f"median_{c}": float(sub[c].median()) for c in N_SWEEP_DISTANCES},
                    "flops": float(sub["flops"].mean()),
                    "seconds": float(sub["seconds"].mean()),
                    "sender_seconds": float(sub["sender_seconds"].mean()),
                    "gain": gain,
                    "gain_ci_low": gain_lo,
                    "gain_ci_high": gain_hi,
                }
            )
        summary[name] = {
            "what_n_is": s.description,
            "unit": s.unit,
            "trained": s.trained,
            "distance_reference": s.reference,
            **s.identity(),
            "points": points,
        }
    example = items[0]
    result = {
        "game": game,
        "methods": summary,
        "config": {
            "sender": sender.info.to_dict(),
            "receiver": receiver.info.to_dict(),
            **asdict(cfg),
            "n": len(items),
            "seed": seed,
            "ns": [label for label, _ in labels],
            "all": ALL,
            "adapter": None if adapter is None else {"dir": str(adapter), **(identity or {})},
            "n_reference": n_reference,
            "reference": reference,
            "distance_references": {
                "layer": f"B's residuals after block {j}, {reference} reference ({n_reference}; "
                "a quarter held out for the percentiles; see run_distance)",
                "input": f"B's input embeddings of {n_reference} LAMBADA token occurrences "
                "(a quarter held out)",
            },
            "distances": "per item the mean over its injected states; per point the median over items; "
            "percentiles against B's held-out own states (50 typical, 100 beyond all)",
            "example_prompts": {
                "sender": format_prompt(sender, example.sender),
                "receiver": format_prompt(receiver, example.receiver, reply=example.reply),
            },
            "decoding": "greedy",
            "scoring": "answer in the first answer line, case-insensitive",
            "ci": "95% percentile bootstrap, 1000 resamples",
            "gain": f"paired over items: accuracy at this n minus at n = {labels[0][0]} (the first swept), "
            "95% percentile bootstrap of the per-item differences",
            "flops": "analytic, KV cache: compute.method_flops (AC; B alone at n = 0) and compute.slot_flops "
            "(latent); B's answer length re-tokenised from its text",
            "seconds": "wall time of B's answer; sender_seconds of A's message (shared across n, except "
            "CIPHER's steps after n; ~0 where another series of the call made the same message, "
            "as the Interlat variants share A's trajectory)",
            "device": str(receiver.device),
            "torch_threads": torch.get_num_threads(),
            "wall_seconds_this_call": _time.perf_counter() - started,
            "versions": package_versions(),
        },
    }
    write_json(out / "results.json", result)
    return result


def _correct_by_item(rows: pd.DataFrame) -> pd.Series:
    """Whether each item was answered correctly (1.0 / 0.0), indexed by item id."""
    return rows.set_index("item_id")["correct"].astype(str).isin(["True", "1"]).astype(float)


def _finite(d: dict[str, float]) -> dict[str, float | None]:
    """NaN (no rows, or nothing injected) as ``None``, so the JSON stays standard."""
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in d.items()}


def n_sweep_table(result: dict[str, Any]) -> pd.DataFrame:
    """The summary of :func:`run_n_sweep` as a tidy table: one row per method and n, in the swept order.

    Columns: method, n (label), x (its index among the swept n), unit,
    trained, distance_reference, and each point's values (accuracy, ci_low,
    ci_high, ..., ``median_<distance>``); accuracies as fractions.
    """
    order = {label: i for i, label in enumerate(result["config"]["ns"])}
    rows = [
        {
            "method": name,
            "n": label,
            "x": order[label],
            "unit": m["unit"],
            "trained": m["trained"],
            "distance_reference": m["distance_reference"],
            **point,
        }
        for name, m in result["methods"].items()
        for label, point in m["points"].items()
    ]
    return pd.DataFrame(rows).astype({"x": int})
