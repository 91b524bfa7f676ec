"""The sweep over n's figures: accuracy against distance and n, compression over K.

Example:
    >>> import pandas as pd
    >>> t = pd.DataFrame({"method": ["cipher"] * 2, "n": [1, 4], "accuracy": [0.2, 0.5],
    ...                   "ci_low": [0.1, 0.4], "ci_high": [0.3, 0.6],
    ...                   "median_mahalanobis_pct": [50.0, 90.0], "trained": [False] * 2})
    >>> len(accuracy_vs_distance(t).axes)
    1
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from commlib.plots import COLUMN_WIDTH, MARKERS, method_colour, set_style


def accuracy_vs_distance(
    table: pd.DataFrame, *, distance: str = "mahalanobis_pct", title: str = ""
) -> Figure:
    """Accuracy against distance from B's manifold: one point per method and n, n written beside it.

    ``table`` is :func:`commlib.experiments.n_sweep_table`; rows without a
    distance (n = 0, nothing injected) are left out. Colour is the method
    family, the marker the method, as in :func:`accuracy_distance_vs_n`; the
    dotted line is B's own typical state (50th percentile).
    """
    set_style()
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH * 1.5, COLUMN_WIDTH * 0.95))
    column = f"median_{distance}"
    for i, (method, grp) in enumerate(table.groupby("method", sort=False)):
        grp = grp.dropna(subset=[column])
        if grp.empty:
            continue
        x, acc = grp[column].astype(float), 100 * grp["accuracy"].astype(float)
        err = [acc - 100 * grp["ci_low"].astype(float), 100 * grp["ci_high"].astype(float) - acc]
        ax.errorbar(
            x,
            acc,
            yerr=err,
            fmt=MARKERS[i % len(MARKERS)],
            color=method_colour(str(method)),
            ms=4,
            lw=0.8,
            capsize=1.5,
            label=str(method),
            mfc="none" if bool(grp["trained"].iloc[0]) else None,
        )
        for xi, yi, n in zip(x, acc, grp["n"].astype(str), strict=True):
            ax.annotate(
                n,
                (xi, yi),
                xytext=(3, 2),
                textcoords="offset points",
                fontsize="xx-small",
                color=method_colour(str(method)),
            )
    ax.axvline(50, ls=":", lw=0.8, color="0.4")
    ax.set_xlim(-2, 104)
    ax.set_ylim(-2, 102)
    ax.set_xlabel(f"{distance.removesuffix('_pct')} percentile, median (B's own: 50)")
    ax.set_ylabel("accuracy (%), 95% bootstrap CI")
    ax.legend(fontsize="x-small", title="open: trained", title_fontsize="x-small", loc="best")
    if title:
        ax.set_title(title, fontsize="small")
    fig.tight_layout()
    return fig


def accuracy_distance_vs_n(
    table: pd.DataFrame, *, distance: str = "mahalanobis_pct", title: str = ""
) -> Figure:
    """The sweep over n: accuracy (95% CI) and distance percentile against n, one line per method.

    ``table`` is :func:`commlib.experiments.n_sweep_table` (columns method,
    n, x, trained, accuracy, ci_low, ci_high, ``median_<distance>``). The
    x axis lists the swept n in order (``all`` last), evenly spaced; colour
    is the method family (:func:`method_colour`), the marker the method,
    and trained methods are solid lines, zero-shot ones dashed. Points
    where nothing was injected (n = 0) have no distance.
    """
    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(COLUMN_WIDTH * 2.2, COLUMN_WIDTH * 0.85))
    groups = list(table.groupby("method", sort=False))
    for i, (method, grp) in enumerate(groups):
        grp = grp.sort_values("x")
        style = {
            "color": method_colour(str(method)),
            "marker": MARKERS[i % len(MARKERS)],
            "lw": 1.0,
            "ls": "-" if bool(grp["trained"].iloc[0]) else "--",
            "label": str(method),
        }
        acc = 100 * grp["accuracy"].astype(float)
        err = [acc - 100 * grp["ci_low"].astype(float), 100 * grp["ci_high"].astype(float) - acc]
        axes[0].errorbar(grp["x"], acc, yerr=err, capsize=1.5, ms=4, **style)
        # distances often coincide (100th percentile): earlier methods get larger markers, so all stay visible
        axes[1].plot(
            grp["x"],
            grp[f"median_{distance}"].astype(float),
            ms=4 + 2 * (len(groups) - 1 - i),
            mfc="none",
            **style,
        )
    labels = table.drop_duplicates("x").sort_values("x")
    for ax in axes:
        ax.set_xticks(labels["x"], labels["n"].astype(str))
    fig.supxlabel("n sent uncollapsed (AC: positions; latent: message steps)", fontsize="small")
    axes[0].set_ylim(-2, 102)
    axes[0].set_ylabel("accuracy (%), 95% bootstrap CI")
    axes[1].set_ylim(0, 101)
    axes[1].axhline(50, ls=":", lw=0.8, color="0.4")
    axes[1].set_ylabel(f"{distance.removesuffix('_pct')} percentile, median\n(vs B's held-out own states)")
    axes[1].legend(
        fontsize="x-small",
        title="solid: trained; dashed: zero-shot",
        title_fontsize="x-small",
        bbox_to_anchor=(1.02, 1),
        loc="upper left",
    )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def compression_vs_k(table: pd.DataFrame, *, title: str = "") -> Figure:
    """Interlat compressed to K vectors: accuracy (95% CI) and distance percentile against K.

    ``table`` is :func:`commlib.experiments.run_compression`'s: the rows with
    a compressor are points at their K (log scale), and the whole adapted
    trajectory (``interlat-trained``) is a horizontal line with its interval
    as a band, labelled with its mean length.
    """
    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(COLUMN_WIDTH * 2.0, COLUMN_WIDTH * 0.8))
    whole = table[table["method"] == "interlat-trained"].iloc[0]
    points = table[table["method"] != "interlat-trained"].sort_values("K")
    colour = method_colour("interlat-trained")
    acc = 100 * points["accuracy"].astype(float)
    err = [acc - 100 * points["ci_low"].astype(float), 100 * points["ci_high"].astype(float) - acc]
    axes[0].errorbar(
        points["K"],
        acc,
        yerr=err,
        capsize=1.5,
        ms=4,
        marker="o",
        color=colour,
        lw=1.0,
        label="K compressed vectors",
    )
    axes[0].axhline(
        100 * whole["accuracy"],
        color="0.3",
        lw=0.9,
        ls="--",
        label=f"whole trajectory (mean {whole['K']:.0f} steps)",
    )
    axes[0].axhspan(100 * whole["ci_low"], 100 * whole["ci_high"], color="0.3", alpha=0.12, lw=0)
    axes[0].set_ylim(-2, 102)
    axes[0].set_ylabel("accuracy (%), 95% bootstrap CI")
    axes[1].plot(points["K"], points["median_mahalanobis_pct"], marker="o", color=colour, lw=1.0, ms=4)
    axes[1].axhline(whole["median_mahalanobis_pct"], color="0.3", lw=0.9, ls="--")
    axes[1].axhline(50, ls=":", lw=0.8, color="0.4")
    axes[1].set_ylim(0, 101)
    axes[1].set_ylabel("Mahalanobis percentile, median\n(vs B's input embeddings)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(points["K"], [str(int(k)) for k in points["K"]])
        ax.set_xlabel("K (vectors B reads between <bop> and <eop>)")
    axes[0].legend(fontsize="x-small", loc="upper right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
