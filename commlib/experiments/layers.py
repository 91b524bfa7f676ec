"""Where to graft on a game: the full (k, j) grid (fast engine), its summary, and layer selection."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from commlib.experiments.games import example_prompts
from commlib.models import Model
from commlib.prompts import Position
from commlib.results import Run, contains_answer, package_versions, placement
from commlib.sweep import sweep_item
from commlib.tasks.games import GameItem, load_game

SWEEP_FIELDS = (
    "item_id",
    "k",
    "j",
    "answer",
    "answer_logprob",
    "greedy_answer",
    "silent_logprob",
    "silent_greedy_answer",
    "text",
    "correct",
)


def run_sweep(
    game: str,
    sender: Model,
    receiver: Model,
    *,
    out_dir: str | Path,
    ks: Sequence[int] | None = None,
    js: Sequence[int] | None = None,
    f: str = "replace",
    n: int | None = None,
    seed: int = 0,
    backend: str = "nnsight",
    max_new_tokens: int = 8,
    position: Position = "last",
    reply: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """The full (k, j) grid on a game, one item at a time, resumable.

    ``position`` and ``reply`` as in :func:`run_games`.

    Rows go to ``out_dir/sweep.csv`` (one per item, k, j) as each item
    finishes; items already there are skipped on a re-run.

    Returns:
        The tidy table: item_id, k, j, answer, answer_logprob, greedy_answer
        (greedy decoding starts with the answer), silent_logprob and
        silent_greedy_answer (B alone), text, correct (the answer in the first
        line of the greedy text; empty with ``max_new_tokens=0``), and
        logprob_gain (answer_logprob - silent_logprob).
    """
    ks = list(range(sender.info.n_layers)) if ks is None else list(ks)
    js = list(range(receiver.info.n_layers)) if js is None else list(js)
    items = load_game(game, n=n, seed=seed, reply=reply)
    settings = {
        "game": game,
        "seed": seed,
        "sender": sender.name,
        "receiver": receiver.name,
        "ks": ks,
        "js": js,
        "f": f,
        "backend": backend,
        "max_new_tokens": max_new_tokens,
        "position": position,
        "reply": reply,
        "placement": placement(sender=sender, receiver=receiver),  # dtype, attention: compared on resume
    }
    run = Run(out_dir, settings, fields=SWEEP_FIELDS, table="sweep.csv")
    run.write(_sweep_config(settings, sender, receiver, items), "sweep_config.json")
    for item in tqdm(run.pending(items), desc="sweep", disable=not progress):
        cells = sweep_item(
            sender,
            receiver,
            item,
            ks,
            js,
            f=f,
            backend=backend,
            max_new_tokens=max_new_tokens,
            position=position,
        )
        run.add(_cell_row(item, cell, scored=max_new_tokens > 0) for cell in cells)
    return read_sweep(run.dir)


def _sweep_config(
    settings: dict[str, Any], sender: Model, receiver: Model, items: Sequence[GameItem]
) -> dict[str, Any]:
    """What ``sweep_config.json`` records: the settings with the models in full, n, an example prompt."""
    return {
        "game": settings["game"],
        "sender": sender.info.to_dict(),
        "receiver": receiver.info.to_dict(),
        **{key: settings[key] for key in ("ks", "js", "f")},
        "n": len(items),
        **{key: settings[key] for key in ("seed", "backend", "max_new_tokens", "position", "reply")},
        "example_prompts": example_prompts(sender, receiver, items[0]),
        "versions": package_versions(),
        "placement": placement(sender=sender, receiver=receiver),
    }


def _cell_row(item: GameItem, cell: dict[str, Any], *, scored: bool) -> dict[str, Any]:
    """One row of ``sweep.csv``: ``item`` at one (k, j) cell; ``correct`` empty when nothing was generated."""
    return {
        "item_id": item.id,
        "k": cell["k"],
        "j": cell["j"],
        "answer": item.answer,
        "answer_logprob": cell["answer_logprob"],
        "greedy_answer": cell["greedy_answer"],
        "silent_logprob": cell["silent_logprob"],
        "silent_greedy_answer": cell["silent_greedy_answer"],
        "text": cell["text"],
        "correct": contains_answer(cell["text"], item.answer, item.choices) if scored else "",
    }


def read_sweep(out_dir: str | Path) -> pd.DataFrame:
    """A sweep's table with ``logprob_gain`` and the run's ``position`` added."""
    out = Path(out_dir)
    df = pd.read_csv(out / "sweep.csv")
    position = json.loads((out / "run.json").read_text()).get("position", "last")
    return df.assign(logprob_gain=df["answer_logprob"] - df["silent_logprob"], position=position)


def best_layers(df: pd.DataFrame) -> pd.Series:
    """The (k, j, position) cell with the highest greedy accuracy, ties by mean log-prob gain.

    Example:
        >>> df = pd.DataFrame({"k": [0, 1], "j": [2, 2], "position": "last",
        ...                    "greedy_answer": [True, True], "logprob_gain": [0.5, 1.5]})
        >>> top = best_layers(df)
        >>> int(top["k"]), int(top["j"]), top["position"]
        (1, 2, 'last')
    """
    cells = (
        df.groupby(["k", "j", "position"])
        .agg(
            accuracy=("greedy_answer", "mean"),
            logprob_gain=("logprob_gain", "mean"),
            n=("item_id", "nunique") if "item_id" in df else ("k", "size"),
        )
        .sort_values(["accuracy", "logprob_gain"], ascending=False)
        .reset_index()
    )
    return cells.iloc[0]


def grid_summary(df: pd.DataFrame) -> dict[str, float]:
    """A (k, j) grid at a glance: its cells' mean log-prob gain, and greedy accuracy against B alone.

    ``df`` is a sweep table (:func:`run_sweep`). Returns items, cells, the
    grid's mean gain (nats) and the lowest and highest cell means, B alone's
    greedy accuracy, how many cells beat it, and the best cell's accuracy.

    Example:
        >>> df = pd.DataFrame({"item_id": ["a", "a", "b", "b"], "k": [0, 1, 0, 1], "j": 0,
        ...                    "greedy_answer": [True, False, True, True],
        ...                    "logprob_gain": [1.0, -1.0, 0.0, 2.0],
        ...                    "silent_greedy_answer": [False, False, True, True]})
        >>> s = grid_summary(df)
        >>> s["mean_gain"], s["silent_accuracy"], s["cells_above_silent"], s["best_accuracy"]
        (0.5, 0.5, 1, 1.0)
    """
    cells = df.groupby(["k", "j"]).agg(accuracy=("greedy_answer", "mean"), gain=("logprob_gain", "mean"))
    silent = float(df.groupby("item_id")["silent_greedy_answer"].first().mean())
    return {
        "items": int(df["item_id"].nunique()),
        "cells": len(cells),
        "mean_gain": float(cells["gain"].mean()),
        "lowest_cell_gain": float(cells["gain"].min()),
        "highest_cell_gain": float(cells["gain"].max()),
        "silent_accuracy": silent,
        "cells_above_silent": int((cells["accuracy"] > silent).sum()),
        "best_accuracy": float(cells["accuracy"].max()),
    }


SELECTION_N = 6
"""Items per game in the layer-selection sweeps (seed 0; results are reported on seed 1)."""


def selection_step(model: Model) -> int:
    """Layer stride of the selection sweeps: about ten layers per axis."""
    return max(1, round(model.info.n_layers / 10))


def sweep_dir(
    root: str | Path, model: str, game: str, *, f: str, position: str, seed: int, n: int, step: int
) -> Path:
    """Where a sweep of ``model`` (A = B) on ``game`` lives under ``root`` (notebooks and scripts agree)."""
    return Path(root) / model / Path(game).stem / f"{f}_{position}_seed{seed}_n{n}_step{step}"


def choose_layers(
    model: Model,
    game: str,
    *,
    sweep_root: str | Path,
    n: int = SELECTION_N,
    seed: int = 0,
    f: str = "replace",
    positions: Sequence[Position] = ("last", "content"),
    progress: bool = True,
) -> pd.Series:
    """Pick (k, j, position) for ``model`` (A = B) on ``game`` from selection sweeps.

    Runs (or resumes from ``sweep_root``) a log-prob-only sweep per position
    over every :func:`selection_step`-th layer on ``n`` items of ``seed``, and
    returns :func:`best_layers` over all of them. Choose on a seed you do not
    report.
    """
    step = selection_step(model)
    layers = list(range(0, model.info.n_layers, step))
    frames = [
        run_sweep(
            game,
            model,
            model,
            out_dir=sweep_dir(sweep_root, model.name, game, f=f, position=p, seed=seed, n=n, step=step),
            ks=layers,
            js=layers,
            f=f,
            n=n,
            seed=seed,
            max_new_tokens=0,
            position=p,
            progress=progress,
        )
        for p in positions
    ]
    return best_layers(pd.concat(frames, ignore_index=True))
