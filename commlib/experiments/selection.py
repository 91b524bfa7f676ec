"""Choices the controlled experiment makes on its selection pool: AC's depth, and the paper's depth.

AC's blocks (k, j) are chosen by gain over the content control, never by a
"least harmful" rule: on each selection item a log-prob-only sweep over a
grid of (k, j) (:func:`commlib.sweep.sweep_item`) runs twice, with A reading
the item and with A reading another selection item's content
(:func:`commlib.tasks.pools.control_item`); the cell whose greedy answer is
right more often with the item's own message than with the other's wins
(ties: the larger answer log-prob gain). No test item is read.

Example:
    >>> depth_grid(28, 7)
    [0, 5, 9, 14, 18, 23, 27]
    >>> paper_layers(24, 28)
    (18, 22)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from commlib.graft import layer_at_depth
from commlib.models import Model
from commlib.results import TRUE_TEXT, Run
from commlib.sweep import sweep_item
from commlib.tasks.games import GameItem
from commlib.tasks.pools import control_item

PAPER_DEPTH = 0.8
"""The paper's relative depth for both models (k = j = 26 of LLaMA's 28 / 32 blocks)."""
SELECTION_FIELDS = ("item_id", "message", "k", "j", "answer_logprob", "greedy_answer")


def depth_grid(n_layers: int, size: int) -> list[int]:
    """``size`` blocks evenly spread from the first to the last (fewer for a shallow model)."""
    if size < 2 or n_layers < 2:
        return list(range(n_layers))[:size]
    return sorted({layer_at_depth(i / (size - 1), n_layers) for i in range(size)})


def paper_layers(n_sender: int, n_receiver: int, depth: float = PAPER_DEPTH) -> tuple[int, int]:
    """(k, j) at the paper's relative depth of A's and B's blocks."""
    return layer_at_depth(depth, n_sender), layer_at_depth(depth, n_receiver)


def select_depth(
    sender: Model,
    receiver: Model,
    items: Sequence[GameItem],
    donors: Sequence[int],
    *,
    out_dir: str | Path,
    grid: int = 7,
    backend: str = "nnsight",
    progress: bool = True,
) -> dict[str, Any]:
    """Choose AC's (k, j) on selection ``items`` by gain over their content controls; resumable.

    ``donors[i]`` is the selection item whose content A reads for item i's
    control. Cells go to ``out_dir/selection.csv``.

    Returns:
        ``k``, ``j``, the winning cell's gains, ``n`` and the whole grid
        (``table``: one record per cell with ``gain`` and ``logprob_gain``).
    """
    ks, js = depth_grid(sender.info.n_layers, grid), depth_grid(receiver.info.n_layers, grid)
    run = Run(out_dir, None, fields=SELECTION_FIELDS, table="selection.csv")
    finished = run.done("item_id", "message")
    for i, item in enumerate(tqdm(items, desc="depth on selection", disable=not progress, leave=False)):
        for message, probe in (("own", item), ("control", control_item(item, items[donors[i]]))):
            if (item.id, message) in finished:
                continue
            cells = sweep_item(sender, receiver, probe, ks, js, backend=backend, max_new_tokens=0)
            run.add(
                {"item_id": item.id, "message": message, **{f: c[f] for f in SELECTION_FIELDS[2:]}}
                for c in cells
            )
    return choose_cell(run.frame())


def choose_cell(cells: pd.DataFrame) -> dict[str, Any]:
    """The (k, j) with the largest gain of the greedy answer over the control (ties: log-prob gain)."""
    df = cells.assign(greedy=cells["greedy_answer"].astype(str).isin(TRUE_TEXT).astype(float))
    wide = df.pivot_table(index=["item_id", "k", "j"], columns="message", values=["greedy", "answer_logprob"])
    wide = wide.dropna()
    per_cell = pd.DataFrame(
        {
            "gain": wide[("greedy", "own")] - wide[("greedy", "control")],
            "logprob_gain": wide[("answer_logprob", "own")] - wide[("answer_logprob", "control")],
            "own": wide[("greedy", "own")],
            "control": wide[("greedy", "control")],
        }
    )
    table = per_cell.groupby(["k", "j"]).mean().reset_index()
    best = table.sort_values(["gain", "logprob_gain"], ascending=False, kind="stable").iloc[0]
    return {
        "k": int(best["k"]),
        "j": int(best["j"]),
        "gain": float(best["gain"]),
        "logprob_gain": float(best["logprob_gain"]),
        "n": int(wide.index.get_level_values("item_id").nunique()),
        "table": table.to_dict("records"),
    }
