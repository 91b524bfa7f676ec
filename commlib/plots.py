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
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

FIGURES_DIR = Path(__file__).resolve().parents[1] / "figures"
COLUMN_WIDTH = 3.4  # inches, one paper column


def set_style() -> None:
    """The shared seaborn style: readable at column width, colour-blind safe palette."""
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=0.9)


def sweep_heatmap(
    df: pd.DataFrame,
    *,
    n_layers_sender: int,
    n_layers_receiver: int,
    value: str = "correct",
    title: str = "",
) -> Figure:
    """Mean ``value`` over items for each (k, j), axes in relative depth (paper Figure 2)."""
    set_style()
    grid = df.groupby(["j", "k"])[value].mean().unstack("k").sort_index()
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, COLUMN_WIDTH * 0.85))
    extent = (
        -0.5 / n_layers_sender,
        (grid.columns.max() + 0.5) / n_layers_sender,
        -0.5 / n_layers_receiver,
        (grid.index.max() + 0.5) / n_layers_receiver,
    )
    img = ax.imshow(grid.to_numpy(), origin="lower", aspect="auto", cmap="viridis", extent=extent)
    fig.colorbar(img, ax=ax, label="accuracy" if value == "correct" else value)
    ax.set_xlabel("sender layer k / depth")
    ax.set_ylabel("receiver layer j / depth")
    ax.set_title(title)
    ax.grid(False)
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
    (out / f"{name}.json").write_text(
        json.dumps({"made_by": " ".join(sys.argv), "config": config or {}}, indent=2, default=str)
    )
    return paths
