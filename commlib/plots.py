"""Figure functions with one shared style, and :func:`save_figure`.

Every function returns a matplotlib figure; :func:`save_figure` writes PNG and
PDF into ``figures/`` with a JSON sidecar saying what made it.

Example:
    >>> import pandas as pd
    >>> df = pd.DataFrame({"k": [0, 0, 1, 1], "j": [0, 1, 0, 1], "correct": [0, 1, 1, 1]})
    >>> fig = sweep_heatmap(df, n_layers_sender=2, n_layers_receiver=2, title="toy")
    >>> len(fig.axes)
    2
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from commlib.registry import canonical

FIGURES_DIR = Path(__file__).resolve().parents[1] / "figures"
FAST_FIGURES_DIR = Path(tempfile.gettempdir()) / "commlib-fast-figures"
"""Where fast-mode notebook runs put figures aimed at ``figures/`` (see :func:`begin_notebook`)."""
FAST_NOTICE = "FAST mode: tiny random models; every number below is smoke only and means nothing"
COLUMN_WIDTH = 3.4  # inches, one paper column
MARKERS = "osD^vP*Xh<>p8"  # one per method or style, in order


def begin_notebook(fast: bool, figures_dir: str | Path | None = None) -> Path | None:
    """A notebook's first call: say whether its numbers mean anything; return where its figures go.

    In fast mode it prints :data:`FAST_NOTICE` and keeps figures out of the
    repository's ``figures/``: a ``figures_dir`` in it becomes :data:`FAST_FIGURES_DIR`.

    Example:
        >>> begin_notebook(False, "my_figures")
        PosixPath('my_figures')
        >>> begin_notebook(True, FIGURES_DIR) == FAST_FIGURES_DIR  # doctest: +ELLIPSIS
        FAST mode: ...
        True
    """
    out = None if figures_dir is None else Path(figures_dir)
    if fast:
        if out is not None and out.resolve().is_relative_to(FIGURES_DIR):
            out = FAST_FIGURES_DIR
        print(FAST_NOTICE + (f" (figures go to {out})" if out is not None else ""))
    return out


def set_style() -> None:
    """The shared seaborn style: readable at column width, colour-blind safe palette."""
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=0.9)


_PALETTE = sns.color_palette("colorblind", 10)
METHOD_COLOURS: dict[str, tuple[float, float, float]] = {
    "skyline": _PALETTE[0],
    "nl": _PALETTE[1],
    "ac-sum": _PALETTE[2],
    "ac-mean": _PALETTE[3],
    "ac-replace": _PALETTE[4],
    "ac-w": _PALETTE[5],
    "cipher": _PALETTE[6],
    "silent": _PALETTE[7],
    "interlat": _PALETTE[8],
    "nld": _PALETTE[9],
    "single-a": (0.25, 0.25, 0.25),
    "kv": (0.45, 0.1, 0.55),
    "latent-steps": (0.55, 0.75, 0.2),
    "rosetta": (0.6, 0.6, 0.6),
}
"""One colour per method in every figure (colour-blind palette); f names map to their AC method."""
ALIASES = {"single-b": "silent"}
"""Reasoning methods that are a games method under another name (B alone is silent)."""


def method_colour(name: str) -> tuple[float, float, float]:
    """The colour of a method (``"ac-sum"``) or of an f (``"sum"``: the same), fixed across figures.

    ``ac-w-*`` share one colour, as do the variants of a latent method
    (``interlat-trained``) or of debate (``nld-r3``); an old name is its
    method's (``ac`` is ``ac-replace``) and ``single-b`` is ``silent``; an
    unknown name gets a stable colour from its hash.
    """
    name = canonical(name)  # an old name (ac) is its method's (ac-replace)
    key = f"ac-{name}" if name in ("sum", "mean", "replace") else ALIASES.get(name, name)
    key = "ac-w" if key.startswith("ac-w") or key == "W" else key
    for method in METHOD_COLOURS:
        if key == method or key.startswith(f"{method}-"):
            return METHOD_COLOURS[method]
    import zlib

    return _PALETTE[zlib.crc32(key.encode()) % len(_PALETTE)]


HEATMAP_LABELS = {
    "correct": "accuracy (answer in first line)",
    "greedy_answer": "accuracy (greedy starts with answer)",
    "logprob_gain": "answer log-prob gain over B alone",
    "answer_logprob": "answer log-prob",
}


def sweep_heatmap(
    df: pd.DataFrame,
    *,
    n_layers_sender: int,
    n_layers_receiver: int,
    value: str = "correct",
    title: str = "",
    ax: Axes | None = None,
) -> Figure:
    """Mean ``value`` over items for each (k, j), axes in relative depth (paper Figure 2).

    Draws into ``ax`` when given (returning its figure), else into a new figure.
    """
    set_style()
    grid = df.groupby(["j", "k"])[value].mean().unstack("k").sort_index()
    if ax is None:
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, COLUMN_WIDTH * 0.85))
    else:
        fig = ax.get_figure()  # type: ignore[assignment]
    step_k = (grid.columns[1] - grid.columns[0]) if len(grid.columns) > 1 else 1
    step_j = (grid.index[1] - grid.index[0]) if len(grid.index) > 1 else 1
    extent = (
        (grid.columns.min() - step_k / 2) / n_layers_sender,
        (grid.columns.max() + step_k / 2) / n_layers_sender,
        (grid.index.min() - step_j / 2) / n_layers_receiver,
        (grid.index.max() + step_j / 2) / n_layers_receiver,
    )
    values = grid.to_numpy()
    if value in ("correct", "greedy_answer"):  # accuracies: one fixed scale, so 0 everywhere reads as 0
        style: dict[str, Any] = {"cmap": "viridis", "vmin": 0.0, "vmax": 1.0}
    elif value.endswith("gain"):  # diverging around "no change"
        low, high = min(float(np.nanmin(values)), -1e-6), max(float(np.nanmax(values)), 1e-6)
        style = {"cmap": "RdBu", "norm": TwoSlopeNorm(vcenter=0.0, vmin=low, vmax=high)}
    else:
        style = {"cmap": "viridis"}
    img = ax.imshow(values, origin="lower", aspect="auto", extent=extent, **style)
    fig.colorbar(img, ax=ax, label=HEATMAP_LABELS.get(value, value))
    ax.set_xlabel("sender layer k / depth")
    ax.set_ylabel("receiver layer j / depth")
    ax.set_title(title)
    ax.grid(False)
    fig.tight_layout()
    return fig


def sweep_panels(
    tables: Mapping[tuple[str, str], pd.DataFrame],
    *,
    n_layers: int,
    values: Sequence[str] = ("logprob_gain", "greedy_answer"),
    title: str = "",
) -> Figure:
    """One model's sweeps (A = B) in one figure: a row per game, a column per position and value.

    ``tables`` maps ``(game, position)`` to :func:`commlib.experiments.run_sweep`'s
    table; each panel is a :func:`sweep_heatmap`.
    """
    set_style()
    games = list(dict.fromkeys(game for game, _ in tables))
    positions = list(dict.fromkeys(pos for _, pos in tables))
    fig, axes = plt.subplots(
        len(games),
        len(positions) * len(values),
        squeeze=False,
        figsize=(COLUMN_WIDTH * len(positions) * len(values), COLUMN_WIDTH * 0.8 * len(games)),
    )
    for r, game in enumerate(games):
        for c, (pos, value) in enumerate((p, v) for p in positions for v in values):
            sweep_heatmap(
                tables[game, pos],
                n_layers_sender=n_layers,
                n_layers_receiver=n_layers,
                value=value,
                title=f"{game}, {pos}",
                ax=axes[r][c],
            )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def method_bars(table: pd.DataFrame, *, panel: str = "game") -> Figure:
    """Accuracy per model and method with bootstrap intervals, one panel per ``panel`` value.

    ``table`` needs columns method, model, accuracy, ci_low, ci_high (percent)
    and ``panel``. Bars are grouped by model and coloured by method
    (:func:`method_colour`).
    """
    set_style()
    panels = list(dict.fromkeys(table[panel]))
    methods = list(dict.fromkeys(table["method"]))
    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(COLUMN_WIDTH * len(panels), COLUMN_WIDTH * 0.8), squeeze=False, sharey=True
    )
    width = 0.8 / len(methods)
    for ax, value in zip(axes[0], panels, strict=True):
        sub = table[table[panel] == value].set_index(["model", "method"])
        for m_i, method in enumerate(methods):
            xs, ys, lo, hi = [], [], [], []
            for x, model in enumerate(models):
                if (model, method) in sub.index:
                    r = sub.loc[(model, method)]
                    xs.append(x + (m_i - (len(methods) - 1) / 2) * width)
                    ys.append(r["accuracy"])
                    lo.append(r["accuracy"] - r["ci_low"])
                    hi.append(r["ci_high"] - r["accuracy"])
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=1.5, color=method_colour(method), label=method)
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
        ax.set_title(str(value))
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("accuracy (%), 95% bootstrap CI")
    axes[0][-1].legend(fontsize="x-small", bbox_to_anchor=(1.02, 1), loc="upper left")  # beside the bars
    fig.tight_layout()
    return fig


def save_figure(
    fig: Figure, name: str, *, config: dict[str, Any] | None = None, directory: str | Path | None = None
) -> list[Path]:
    """Write ``name.png`` and ``name.pdf`` plus ``name.json`` (the command and configuration)."""
    out = Path(directory) if directory is not None else FIGURES_DIR
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=200, bbox_inches="tight", metadata=None)
    config = config or {}
    made_by = " ".join(sys.argv)
    if "ipykernel" in sys.argv[0]:  # a notebook: the kernel's command line says nothing
        made_by = f"notebooks/{config.get('notebook', '(unnamed notebook)')}"
    (out / f"{name}.json").write_text(
        json.dumps({"made_by": made_by, "config": config}, indent=2, default=str)
    )
    return paths


def percentile_boxes(
    df: pd.DataFrame, *, y: str, x: str = "source", hue: str | None = "f", title: str = ""
) -> Figure:
    """Distribution of a distance percentile per ``x`` (and ``hue``); dashed line at B's own median (50)."""
    set_style()
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH * 1.4, COLUMN_WIDTH * 0.8))
    palette = {v: method_colour(str(v)) for v in df[hue].unique()} if hue == "f" else None
    sns.boxplot(data=df, x=x, y=y, hue=hue, ax=ax, fliersize=1.5, linewidth=0.8, palette=palette)
    ax.axhline(50, ls="--", lw=0.8, color="0.4")
    ax.set_ylim(-4, 104)  # boxes collapsed at 0 or 100 stay visible
    metric = y.removesuffix("_pct").removesuffix("percentile").strip("_")
    ax.set_ylabel(f"{metric + ' ' if metric else ''}percentile\n(vs B's held-out own activations)")
    ax.set_title(title)
    if hue is not None:
        ax.legend(fontsize="x-small", title=hue, title_fontsize="x-small")
    fig.tight_layout()
    return fig


def pair_heatmap(table: pd.DataFrame, *, value: str, title: str = "") -> Figure:
    """One value per ordered model pair (``a`` rows, ``b`` columns), annotated."""
    set_style()
    grid = table.pivot(index="a", columns="b", values=value)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH * 1.2, COLUMN_WIDTH))
    sns.heatmap(grid, annot=True, fmt=".2f", cmap="viridis", vmin=0, vmax=1, ax=ax, cbar_kws={"label": value})
    ax.set_xlabel("B")
    ax.set_ylabel("A")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def gain_vs_distance(
    points: pd.DataFrame,
    *,
    x: str,
    y: str = "logprob_gain",
    panel: str = "pair",
    marker: str = "source",
    title: str = "",
) -> Figure:
    """The headline figure: effect on the answer against distance from B's manifold.

    ``points`` has one row per configuration: ``x`` (e.g. median distance
    percentile), ``mean``, ``ci_low``, ``ci_high`` of ``y``, and columns
    ``f``, ``panel`` and ``marker`` (default ``source``; e.g. ``n_positions``).
    Colour is f (:func:`method_colour`), the marker shape the ``marker`` column.
    """
    panels, fig, axes = panel_axes(points[panel])
    colours = {f: method_colour(f) for f in dict.fromkeys(points["f"])}
    shapes = "osD^vP*Xh<>p8"
    markers = {m: shapes[i % len(shapes)] for i, m in enumerate(dict.fromkeys(points[marker]))}
    for ax, value in zip(axes[0], panels, strict=True):
        sub = points[points[panel] == value]
        for (f, kind), grp in sub.groupby(["f", marker], sort=False):
            label = f"{kind}, {f}" if marker == "source" else f"{marker}={kind}, {f}"
            ax.errorbar(
                grp[x],
                grp["mean"],
                yerr=[grp["mean"] - grp["ci_low"], grp["ci_high"] - grp["mean"]],
                fmt=markers[kind],
                color=colours[f],
                ms=4,
                lw=0.8,
                capsize=1.5,
                label=label,
            )
        ax.axhline(0, ls="--", lw=0.8, color="0.4")
        ax.set_xlabel(f"{x} (B's own: 50)")
        ax.set_title(str(value))
    return finish_panels(fig, axes, f"{y} (mean, 95% CI)", title, fontsize="xx-small", ncol=2)


def panel_axes(values: pd.Series) -> tuple[list[Any], Figure, Any]:
    """One panel per distinct value (in order of appearance), side by side, sharing y."""
    set_style()
    panels = list(dict.fromkeys(values))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(COLUMN_WIDTH * len(panels), COLUMN_WIDTH * 0.85), squeeze=False, sharey=True
    )
    return panels, fig, axes


def finish_panels(fig: Figure, axes: Any, ylabel: str, title: str, **legend: Any) -> Figure:
    """The y label on the first panel, one legend of every panel's labels right of the last, the title."""
    axes[0][0].set_ylabel(ylabel)
    entries: dict[str, Any] = {}  # label -> handle, first panel first: a label only one panel has is kept
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    axes[0][-1].legend(
        list(entries.values()), list(entries), bbox_to_anchor=(1.02, 1), loc="upper left", **legend
    )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def compute_accuracy(
    table: pd.DataFrame,
    *,
    x: str = "flops_vs_one_pass",
    panel: str = "task",
    arrows: tuple[str, ...] = ("nld", "ac-replace"),
    title: str = "",
) -> Figure:
    """Accuracy against compute, arrows from each model alone to the methods (paper Figure 3).

    ``table`` has one row per method and ``panel`` value: columns method,
    accuracy, ci_low, ci_high (percent) and ``x`` (compute, by default FLOPs
    over one forward pass of the smaller model, as ``run_reasoning`` reports
    it). In each panel an arrow runs from ``single-a`` and from ``single-b``
    to each of ``arrows`` present. The x axis is logarithmic.
    """
    panels, fig, axes = panel_axes(table[panel])
    for ax, value in zip(axes[0], panels, strict=True):
        sub = table[table[panel] == value].set_index("method")
        for method, r in sub.iterrows():
            ax.errorbar(
                [r[x]],
                [r["accuracy"]],
                yerr=[[r["accuracy"] - r["ci_low"]], [r["ci_high"] - r["accuracy"]]],
                fmt="o",
                color=method_colour(str(method)),
                ms=5,
                lw=0.8,
                capsize=1.5,
                label=str(method),
            )
        for start in ("single-a", "single-b"):
            for end in arrows:
                if start in sub.index and end in sub.index:
                    ax.annotate(
                        "",
                        xy=(sub.loc[end, x], sub.loc[end, "accuracy"]),
                        xytext=(sub.loc[start, x], sub.loc[start, "accuracy"]),
                        arrowprops={"arrowstyle": "->", "color": method_colour(end), "lw": 0.8, "alpha": 0.7},
                    )
        ax.set_xscale("log")
        # a span under a decade gets labelled minor ticks that overprint each other: plain numbers at 1-2-5
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("compute (forward passes of the smaller model)")
        ax.set_title(str(value))
    return finish_panels(fig, axes, "accuracy (%), 95% bootstrap CI", title, fontsize="x-small")


GAIN_AXIS_LABELS = {
    "paper_similarity": "similarity of A's and B's states (paper App. B.4)",
    "next_token_kl": "KL the graft causes in B's first answer token (nats)",
    "mahalanobis_pct": "Mahalanobis percentile among B's states",
    "norm_ratio": "norm of the grafted state / B's",
}


def gain_vs_similarity(
    table: pd.DataFrame,
    *,
    x: str = "paper_similarity",
    y: str = "gain",
    label: str = "pair",
    hue: str = "task",
    style: str | None = None,
    title: str = "",
) -> Figure:
    """AC's gain over A and B alone against the similarity of their activation spaces (paper Figure 11).

    The gain is over the mean of A's and B's scores alone. ``table`` has one
    row per pair and ``hue`` value with columns ``x`` (e.g.
    :func:`commlib.distance.paper_similarity`), ``y`` (percentage points) and
    ``label`` (written next to each point). Each ``hue`` value is one series,
    with its least-squares line and Pearson r in the legend when it has three
    points or more. ``style`` names a column whose values get one marker
    each (e.g. the receiver), listed in the legend too. Rows without a gain
    (NaN, e.g. nothing judged) are left out.
    """
    from matplotlib.lines import Line2D

    set_style()
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH * (1.8 if style else 1.2), COLUMN_WIDTH * 0.9))
    colours = sns.color_palette("colorblind", 10)
    rows = table.dropna(subset=[x, y])
    markers = (
        {v: MARKERS[i % len(MARKERS)] for i, v in enumerate(dict.fromkeys(rows[style]))} if style else {}
    )
    for i, (value, grp) in enumerate(rows.groupby(hue, sort=False)):
        xs, ys = grp[x].to_numpy(dtype=float), grp[y].to_numpy(dtype=float)
        name = str(value)
        if len(grp) >= 3 and np.ptp(xs) > 0:
            slope, intercept = np.polyfit(xs, ys, 1)
            grid = np.linspace(xs.min(), xs.max(), 2)
            ax.plot(grid, slope * grid + intercept, color=colours[i % 10], lw=0.8, ls="--")
            name += f" (r = {np.corrcoef(xs, ys)[0, 1]:.2f})"
        shapes = grp[style].map(markers) if style else pd.Series("o", index=grp.index)
        for shape in dict.fromkeys(shapes):
            at = (shapes == shape).to_numpy()
            ax.scatter(
                xs[at],
                ys[at],
                color=colours[i % 10],
                marker=shape,
                s=18,
                zorder=3,
                label=name if shape == shapes.iloc[0] else None,
            )
        for px, py, text in zip(xs, ys, grp[label], strict=True):
            ax.annotate(str(text), (px, py), fontsize="xx-small", xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, ls="--", lw=0.8, color="0.4")
    ax.set_xlabel(GAIN_AXIS_LABELS.get(x, x.replace("_", " ")))
    ax.set_ylabel("AC gain over mean of A and B alone (points)")
    handles, names = ax.get_legend_handles_labels()
    for value, shape in markers.items():
        handles.append(Line2D([], [], ls="", marker=shape, color="0.4", markersize=4))
        names.append(f"{style} {value}")
    if style:  # beside the axes: the points fill them
        ax.legend(handles, names, fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1))
    else:
        ax.legend(handles, names, fontsize="x-small")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def accuracy_vs_depth(table: pd.DataFrame, *, title: str = "") -> Figure:
    """AC and its control against the depth they graft at, with the models alone (the layer choice).

    ``table`` is :func:`commlib.experiments.run_reasoning_depths`. Left:
    accuracy (95% CI) per method against B's relative depth, the models
    alone as flat lines. Middle: AC minus the control ``ac-replace-unrelated``,
    paired over items: above 0 only where what A read reaches B. Right
    (when the table has it): the median KL divergence AC's graft causes in
    B's first answer token.
    """
    set_style()
    with_kl = "next_token_kl" in table
    fig, axes = plt.subplots(
        1, 3 if with_kl else 2, figsize=(COLUMN_WIDTH * (2.7 if with_kl else 2), COLUMN_WIDTH * 0.8)
    )
    # AC solid, its control the same colour open and dashed, the models alone flat and grey
    ac_colour = method_colour("ac-replace")
    looks: dict[str, dict[str, Any]] = {
        "ac-replace": {"color": ac_colour, "marker": "o", "ls": "-"},
        "ac-replace-unrelated": {"color": ac_colour, "marker": "o", "ls": "--", "mfc": "none"},
        "single-b": {"color": "0.2", "marker": None, "ls": ":"},
        "single-a": {"color": "0.6", "marker": None, "ls": "-."},
    }
    for method, grp in table.groupby("method", sort=False):
        grp = grp.sort_values("depth")
        acc = 100 * grp["accuracy"].astype(float)
        err = [acc - 100 * grp["ci_low"].astype(float), 100 * grp["ci_high"].astype(float) - acc]
        look = looks.get(str(method), {"color": method_colour(str(method)), "marker": "s", "ls": "-"})
        alone = str(method).startswith("single")
        axes[0].errorbar(
            grp["depth"],
            acc,
            yerr=None if alone else err,
            ms=4,
            lw=1.0,
            capsize=1.5,
            label=str(method),
            **look,
        )
    axes[0].set_ylim(-2, 102)
    axes[0].set_ylabel("accuracy (%), 95% bootstrap CI")
    axes[0].legend(fontsize="x-small")
    ac = table[table["method"] == "ac-replace"].sort_values("depth")
    gap = 100 * ac["vs_control"].astype(float)
    gap_err = [gap - 100 * ac["vs_control_low"], 100 * ac["vs_control_high"] - gap]
    axes[1].errorbar(ac["depth"], gap, yerr=gap_err, color=ac_colour, marker="o", ms=4, lw=1.0, capsize=1.5)
    axes[1].axhline(0, ls="--", lw=0.8, color="0.4")
    axes[1].set_ylabel("AC − control, paired (points)")
    if with_kl:
        axes[2].plot(ac["depth"], ac["next_token_kl"].astype(float), color=ac_colour, marker="o", ms=4)
        axes[2].set_ylabel("KL in B's first answer token\n(nats, median over items)")
        if (ac["next_token_kl"] > 0).all():
            axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlim(-0.03, 1.03)
    fig.supxlabel("relative depth of the graft (k = j; B's block / (blocks - 1))", fontsize="small")
    if title:
        fig.suptitle(title, fontsize="small")
    fig.tight_layout()
    return fig
