"""Compressing a trained Interlat message to K latents: accuracy against K."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from commlib.channels.interlat import load_adapter, load_compressor, train_compressor
from commlib.errors import CommlibError
from commlib.experiments.distance import run_latent_distance
from commlib.experiments.games import run_games
from commlib.models import Model
from commlib.protocols.games import interlat_compressed, interlat_trained, register_method
from commlib.results import Run, correct_by_item, paired_difference

WHOLE = "interlat-trained"
"""The method that reads the whole adapted trajectory, which each K is compared with."""


def run_compression(
    game: str,
    sender: Model,
    receiver: Model,
    adapter_dir: str | Path,
    ks: Sequence[int],
    *,
    out_dir: str | Path,
    n: int | None = 40,
    seed: int = 1,
    steps: int = 300,
    lr: float = 1e-3,
    ce_weight: float = 0.0,
    max_new_tokens: int = 12,
    n_reference: int = 3072,
    progress: bool = True,
) -> pd.DataFrame:
    """Interlat compressed to K latent vectors, for each K, against the whole adapted trajectory; resumable.

    For each K a :class:`commlib.channels.interlat.LatentCompressor` is
    trained on top of the adapter in ``adapter_dir`` (B and the adapter
    frozen, the adapter's own training items; :func:`train_compressor`, in
    ``out_dir/compressor_k<K>``). Then B answers the game's items reading the
    K vectors (``interlat-compressed-k<K>``) and reading the whole adapted
    trajectory (``interlat-trained``), as :func:`run_games` does (in
    ``out_dir/eval``), and what B reads is measured against B's input
    embeddings (:func:`run_latent_distance`, in ``out_dir/distance``). Every
    step resumes, so K can be added later.

    Returns:
        One row per method: method, K (vectors between the boundaries; the
        trajectory's mean length for ``interlat-trained``), accuracy, ci_low,
        ci_high, gain over the whole trajectory on the same items with
        gain_ci_low and gain_ci_high (:func:`commlib.results.paired_difference`),
        the median Mahalanobis percentile and norm ratio of the vectors, and
        the compressor's training loss (mean of its first and last 30 steps).

    Raises:
        CommlibError: K < 1, or no adapter in ``adapter_dir``.
    """
    if not ks or min(ks) < 1:
        raise CommlibError(f"compress to at least one vector: got K = {list(ks)}")
    _, base = load_adapter(adapter_dir)
    out = Path(out_dir)
    register_method(WHOLE, interlat_trained(str(adapter_dir)))
    names: dict[int | None, str] = {None: WHOLE}
    losses: dict[int | None, tuple[float, ...]] = {None: ()}  # the whole trajectory trains no compressor
    for size in ks:
        where = out / f"compressor_k{size}"
        train_compressor(
            sender,
            receiver,
            adapter_dir,
            where,
            k=size,
            steps=steps,
            lr=lr,
            ce_weight=ce_weight,
            progress=progress,
        )
        names[size] = f"interlat-compressed-k{size}"
        register_method(names[size], interlat_compressed(str(where)))
        losses[size] = load_compressor(where)[2].losses
    methods = list(names.values())
    evaluated = run_games(
        game,
        sender,
        receiver,
        methods,
        k=None,
        j=None,
        out_dir=out / "eval",
        n=n,
        seed=seed,
        max_new_tokens=max_new_tokens,
        progress=progress,
    )["methods"]
    distances = run_latent_distance(
        game,
        sender,
        receiver,
        methods,
        out_dir=out / "distance",
        n=n,
        seed=seed,
        n_reference=n_reference,
        message_tokens=base.message_tokens,
        progress=progress,
    )
    rows = Run(out / "eval", None).frame(dtype={"item_id": str})  # run_games's rows, read back
    correct = {name: correct_by_item(rows[rows["method"] == name]) for name in methods}
    table = []
    for k, name in names.items():
        gain, lo, hi = paired_difference(correct[name], correct[WHOLE], seed=seed)
        dist = distances[distances["method"] == name]
        table.append(
            {
                "method": name,
                "K": float(k) if k is not None else float(dist["length"].mean() - 2),
                **{key: evaluated[name][key] for key in ("accuracy", "ci_low", "ci_high", "n")},
                "gain": gain,
                "gain_ci_low": lo,
                "gain_ci_high": hi,
                "median_mahalanobis_pct": float(dist["mahalanobis_pct"].median()),
                "median_norm_ratio": float(dist["norm_ratio"].median()),
                **_loss_ends(losses[k]),
            }
        )
    return pd.DataFrame(table)


def _loss_ends(losses: Sequence[float]) -> dict[str, float]:
    """A compressor's training loss at its start and end: the mean of its first and last 30 steps.

    Example:
        >>> _loss_ends([3.0] * 30 + [1.0] * 30), _loss_ends([])["loss_first"]
        ({'loss_first': 3.0, 'loss_last': 1.0}, nan)
    """
    return {
        "loss_first": float(np.mean(losses[:30])) if losses else float("nan"),
        "loss_last": float(np.mean(losses[-30:])) if losses else float("nan"),
    }
