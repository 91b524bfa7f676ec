"""How much state must be sent? Accuracy, distance and compute against the number of positions."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from commlib.channels.vocab import vocabulary_settings
from commlib.config import ReferenceSpec
from commlib.distance import Manifold, input_reference
from commlib.experiments.distance import check_reference, layer_manifold
from commlib.experiments.games import example_prompts
from commlib.models import Model
from commlib.prompts import Position
from commlib.protocols.games import MethodConfig
from commlib.protocols.series import ALL, Point, Series, adapter_identity, parse_ns, series_for
from commlib.registry import check_methods
from commlib.results import (
    TRUE_TEXT,
    Run,
    bootstrap_ci,
    contains_answer,
    correct_by_item,
    exact_match,
    package_versions,
    paired_difference,
    placement,
)
from commlib.tasks.games import GameItem, load_game

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
    settings (with ``vocabulary`` when CIPHER goes across tokenizers:
    :func:`commlib.channels.vocab.vocabulary_settings`), and a resumed run
    with other settings is refused.

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
    check_reference(reference)
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
    settings = {
        "game": game,
        "seed": seed,
        "n": len(items),
        "sender": sender.name,
        "receiver": receiver.name,
        **asdict(cfg),
        "n_reference": n_reference,
        "reference": reference,
        "adapter": identity,
        **vocabulary_settings(names, sender, receiver),  # CIPHER across tokenizers (or refused above)
        "placement": placement(sender=sender, receiver=receiver),  # dtype, attention: compared on resume
    }
    run = Run(out_dir, settings, fields=N_SWEEP_FIELDS)
    finished = run.done("item_id", "method", "n")
    fit = partial(_fit_reference, receiver, j, items, game, reference, n_reference, seed, position, backend)
    manifold = cache(fit)  # fitted on first use only: a finished run needs neither
    started = time.perf_counter()
    for item in tqdm(items, desc="sweep over n", disable=not progress):
        for name, s in series.items():
            todo = [(label, v) for label, v in labels if (item.id, name, label) not in finished]
            if not todo:
                continue
            prepared = s.prepare(item)
            for label, v in todo:
                point = s.point(item, prepared, v)
                run.add([_point_row(item, name, label, point, partial(manifold, s.reference))])
    df = run.frame(dtype={"item_id": str, "n": str})
    df = df[df["item_id"].isin({it.id for it in items})]
    summary = {name: _series_summary(df, name, s, labels, seed=seed) for name, s in series.items()}
    config = _n_sweep_config(sender, receiver, cfg, items, settings, labels, adapter=adapter, started=started)
    return run.write({"game": game, "methods": summary, "config": config})


def _fit_reference(
    receiver: Model,
    j: int | None,
    items: Sequence[GameItem],
    game: str,
    reference: str,
    n_reference: int,
    seed: int,
    position: Position,
    backend: str,
    kind: str,
) -> Manifold:
    """B's states that a series' injected states are measured against (``kind``: ``layer`` or ``input``)."""
    if kind == "layer":
        assert j is not None  # the AC series refuse a run without j
        return layer_manifold(
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
    return Manifold.fit(input_reference(receiver, ReferenceSpec(n=n_reference, seed=seed)))


def _point_row(
    item: GameItem, method: str, label: str, point: Point, reference: Callable[[], Manifold]
) -> dict[str, Any]:
    """One row of ``items.csv``: B's answer at one n, scored, and how far what B received is.

    Each distance is the mean over the injected states against ``reference()``,
    fitted only when something was injected (none at n = 0).
    """
    distances: dict[str, float] = {}
    if len(point.injected):
        own = None if point.own is None else point.own.detach().float().cpu()
        table = reference().table(point.injected.detach().float().cpu(), own)
        distances = {c: float(x) for c, x in table.mean().items()}
    return {
        "item_id": item.id,
        "method": method,
        "n": label,
        "n_sent": point.n_sent,
        "answer": item.answer,
        "output": point.text,
        "message": point.message,
        "exact": exact_match(point.text, item.answer),
        "correct": contains_answer(point.text, item.answer, item.choices),
        **distances,
        "flops": point.flops,
        "seconds": point.seconds,
        "sender_seconds": point.sender_seconds,
    }


def _series_summary(
    df: pd.DataFrame, name: str, series: Series, labels: Sequence[tuple[str, int | None]], *, seed: int
) -> dict[str, Any]:
    """One method's entry of ``results.json``: what its n is, and per n the summary of its rows in ``df``.

    Each n's gain is paired over items against the first n swept.
    """
    rows = df[df["method"] == name]
    first = correct_by_item(rows[rows["n"] == labels[0][0]])
    points = {}
    for label, _ in labels:
        sub = rows[rows["n"] == label]
        correct = correct_by_item(sub)
        lo, hi = bootstrap_ci(correct.tolist(), seed=seed)
        gain, gain_lo, gain_hi = paired_difference(correct, first, seed=seed)
        points[label] = _finite(
            {
                "accuracy": float(correct.mean()),
                "ci_low": lo,
                "ci_high": hi,  # NaN when no rows
                "exact_match": float(sub["exact"].astype(str).isin(TRUE_TEXT).mean()),
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
    return {
        "what_n_is": series.description,
        "unit": series.unit,
        "trained": series.trained,
        "distance_reference": series.reference,
        **series.identity(),
        "points": points,
    }


def _finite(d: dict[str, float]) -> dict[str, float | None]:
    """NaN (no rows, or nothing injected) as ``None``, so the JSON stays standard."""
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in d.items()}


def _n_sweep_config(
    sender: Model,
    receiver: Model,
    cfg: MethodConfig,
    items: Sequence[GameItem],
    settings: dict[str, Any],
    labels: Sequence[tuple[str, int | None]],
    *,
    adapter: str | Path | None,
    started: float,
) -> dict[str, Any]:
    """The configuration in ``results.json``: ``settings`` in full, and how each number was made.

    ``started``: when the call began (``time.perf_counter()``), for its wall time.
    """
    ns = [label for label, _ in labels]
    reference, n_reference = settings["reference"], settings["n_reference"]
    return {
        "sender": sender.info.to_dict(),
        "receiver": receiver.info.to_dict(),
        **asdict(cfg),
        "n": len(items),
        "seed": settings["seed"],
        "ns": ns,
        "all": ALL,
        "adapter": None if adapter is None else {"dir": str(adapter), **settings["adapter"]},
        "n_reference": n_reference,
        "reference": reference,
        "distance_references": {
            "layer": f"B's residuals after block {cfg.j}, {reference} reference ({n_reference}; "
            "a quarter held out for the percentiles; see run_distance)",
            "input": f"B's input embeddings of {n_reference} LAMBADA token occurrences (a quarter held out)",
        },
        "distances": "per item the mean over its injected states; per point the median over items; "
        "percentiles against B's held-out own states (50 typical, 100 beyond all)",
        "example_prompts": example_prompts(sender, receiver, items[0]),
        "decoding": "greedy",
        "scoring": "answer in the first answer line, case-insensitive",
        "ci": "95% percentile bootstrap, 1000 resamples",
        "gain": f"paired over items: accuracy at this n minus at n = {ns[0]} (the first swept), "
        "95% percentile bootstrap of the per-item differences",
        "flops": "analytic, KV cache: compute.method_flops (AC; B alone at n = 0) and compute.slot_flops "
        "(latent); B's answer length re-tokenised from its text",
        "seconds": "wall time of B's answer; sender_seconds of A's message (shared across n, except "
        "CIPHER's steps after n; ~0 where another series of the call made the same message, "
        "as the Interlat variants share A's trajectory)",
        "device": str(receiver.device),
        "torch_threads": torch.get_num_threads(),
        "wall_seconds_this_call": time.perf_counter() - started,
        "versions": package_versions(),
        "placement": placement(sender=sender, receiver=receiver),
    }


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
