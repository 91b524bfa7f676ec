"""The controlled experiment's figure: gain over the content control against distance on B.

Example:
    >>> import pandas as pd
    >>> s = pd.DataFrame({"pair": ["A -> B"] * 2, "channel": ["nl", "ac-sum@paper"],
    ...                   "method": ["nl", "ac-sum"], "depth": ["", "paper"], "vs_control": [0.5, 0.0],
    ...                   "vs_control_low": [0.4, -0.1], "vs_control_high": [0.6, 0.1],
    ...                   "kl_median": [2.0, 0.5], "kl_q1": [1.0, 0.2], "kl_q3": [3.0, 0.9]})
    >>> len(thesis_figure(s).axes)
    1
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from commlib.plots import finish_panels, method_colour, panel_axes

DEPTH_MARKERS = {"": "o", "selected": "s", "paper": "D", "all": "^"}
"""Marker per AC depth and kv layer set (``all``; any other set of layers: ``v``); no depth: a circle."""
DISTANCE_LABELS = {
    "kl": "KL(B with channel || B alone) at the answer\n(nats; median and quartiles over items)",
    "displacement": "B's final state's displacement at the answer\n(item-to-item spreads; median, quartiles)",
}


def thesis_figure(
    summary: pd.DataFrame, *, distance: str = "kl", panel: str = "pair", title: str = ""
) -> Figure:
    """Each channel's gain over its content control (95% CI) against how far it moves B.

    ``summary`` is :func:`commlib.experiments.thesis_results.summarise_thesis` rows
    with a ``panel`` column (one panel per model pair); channels without a
    control (B alone) are left out. ``distance`` is ``kl`` (log axis) or
    ``displacement``; the horizontal bars are its quartiles over items.
    """
    points = summary[summary["vs_control"].notna()]
    panels, fig, axes = panel_axes(points[panel])
    fig.set_size_inches(3.4 * len(panels) + 1.6, 3.4)
    mid, lo, hi = f"{distance}_median", f"{distance}_q1", f"{distance}_q3"
    for ax, value in zip(axes[0], panels, strict=True):
        for row in points[points[panel] == value].itertuples():
            x = getattr(row, mid)
            ax.errorbar(
                x,
                row.vs_control,
                xerr=[[x - getattr(row, lo)], [getattr(row, hi) - x]],
                yerr=[[row.vs_control - row.vs_control_low], [row.vs_control_high - row.vs_control]],
                fmt=DEPTH_MARKERS.get(str(row.depth), "v"),
                color=method_colour(str(row.method)),
                ms=4,
                lw=0.8,
                capsize=1.5,
                label=str(row.channel),
            )
        ax.axhline(0, ls="--", lw=0.8, color="0.4")
        if distance == "kl":
            positive = points[points[panel] == value][lo]
            ax.set_xscale(
                "symlog", linthresh=max(float(np.nanmin(positive[positive > 0], initial=1e-3)), 1e-4)
            )
            ax.set_xlim(left=0)  # a KL is never negative
        ax.set_xlabel(DISTANCE_LABELS.get(distance, distance))
        ax.set_title(str(value))
    return finish_panels(fig, axes, "own message - control\n(accuracy, 95% CI)", title, fontsize="xx-small")
