"""Experiments over many items: the coordination games, resumable.

Example:
    >>> import tempfile
    >>> from commlib.models import load_model
    >>> m = load_model("tiny-llama-random")
    >>> with tempfile.TemporaryDirectory() as out:
    ...     res = run_games("countries", m, m, ["silent", "ac-replace"], k=1, j=1, n=4, out_dir=out,
    ...                     max_new_tokens=3, progress=False)
    >>> sorted(res["methods"]), res["methods"]["silent"]["n"]
    (['ac-replace', 'silent'], 4)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from torch import Tensor

if TYPE_CHECKING:
    from commlib.distance import Manifold
    from commlib.methods.reasoning import Turn
    from commlib.tasks.reasoning import ReasoningItem

from commlib.combine import LinearMap
from commlib.errors import CommlibError
from commlib.methods import MethodConfig, method_fn, run_method
from commlib.models import Model
from commlib.prompts import Position, format_prompt
from commlib.results import (
    ItemStore,
    append_rows,
    bootstrap_ci,
    claim_run_dir,
    contains_answer,
    exact_match,
    package_versions,
    paired_difference,
    write_json,
)
from commlib.tasks.games import GameItem, load_game


def run_games(
    game: str,
    sender: Model,
    receiver: Model,
    methods: Sequence[str],
    *,
    k: int | None,
    j: int | None,
    out_dir: str | Path,
    n: int | None = None,
    seed: int = 0,
    position: Position = "last",
    map: LinearMap | None = None,
    backend: str = "nnsight",
    batch_size: int = 8,
    max_new_tokens: int = 24,
    reply: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run methods on a game, append per-item rows to ``out_dir/items.csv``, summarise.

    Re-running with the same ``out_dir`` resumes: finished (item, method) rows are kept.
    ``reply=False`` drops the items' answer openings (see :mod:`commlib.tasks.games`).

    Returns:
        The content written to ``out_dir/results.json``: per method accuracy,
        ci_low, ci_high, exact_match, n, and the full configuration.
    """
    from tqdm.auto import tqdm

    for m in methods:
        method_fn(m)  # an unknown name fails here, before any work
    items = load_game(game, n=n, seed=seed, reply=reply)
    cfg = MethodConfig(k=k, j=j, position=position, max_new_tokens=max_new_tokens, backend=backend)
    claim_run_dir(
        out_dir,
        {
            "game": game,
            "seed": seed,
            "sender": sender.name,
            "receiver": receiver.name,
            **asdict(cfg),
            "reply": reply,
            "map": asdict(map.info) if map is not None else None,
        },
    )
    store = ItemStore(out_dir)
    for method in methods:
        todo = [it for it in items if it.id not in store.done(method)]
        batches = range(0, len(todo), batch_size)
        for start in tqdm(batches, desc=method, disable=not progress, leave=False):
            chunk = todo[start : start + batch_size]
            outs = run_method(method, chunk, sender, receiver, cfg, map)
            store.add(
                [
                    {
                        "item_id": it.id,
                        "method": method,
                        "answer": it.answer,
                        "output": o.text,
                        "message": o.message or "",
                        "correct": contains_answer(o.text, it.answer, it.choices),
                        "exact": exact_match(o.text, it.answer),
                    }
                    for it, o in zip(chunk, outs, strict=True)
                ]
            )
    example = items[0]
    result = {
        "game": game,
        "methods": store.summary(methods, seed=seed),
        "config": {
            "sender": sender.info.to_dict(),
            "receiver": receiver.info.to_dict(),
            **asdict(cfg),
            "n": len(items),
            "seed": seed,
            "map": asdict(map.info) if map is not None else None,
            "prompt_formats": {"sender": sender.info.prompt_format, "receiver": receiver.info.prompt_format},
            "example_prompts": {
                "sender": format_prompt(sender, example.sender),
                "receiver": format_prompt(receiver, example.receiver, reply=example.reply),
            },
            "reply": reply,
            "decoding": "greedy",
            "scoring": "answer in the first answer line, case-insensitive; exact_match strict",
            "ci": "95% percentile bootstrap, 1000 resamples",
            "versions": package_versions(),
        },
    }
    write_json(Path(out_dir) / "results.json", result)
    return result


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
    from tqdm.auto import tqdm

    from commlib.sweep import sweep_item

    ks = list(range(sender.info.n_layers)) if ks is None else list(ks)
    js = list(range(receiver.info.n_layers)) if js is None else list(js)
    items = load_game(game, n=n, seed=seed, reply=reply)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    claim_run_dir(
        out,
        {
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
        },
    )
    path = out / "sweep.csv"
    done = set(pd.read_csv(path)["item_id"].astype(str)) if path.exists() else set()
    write_json(
        out / "sweep_config.json",
        {
            "game": game,
            "sender": sender.info.to_dict(),
            "receiver": receiver.info.to_dict(),
            "ks": ks,
            "js": js,
            "f": f,
            "n": len(items),
            "seed": seed,
            "backend": backend,
            "max_new_tokens": max_new_tokens,
            "position": position,
            "reply": reply,
            "example_prompts": {
                "sender": format_prompt(sender, items[0].sender),
                "receiver": format_prompt(receiver, items[0].receiver, reply=items[0].reply),
            },
            "versions": package_versions(),
        },
    )
    for item in tqdm([it for it in items if it.id not in done], desc="sweep", disable=not progress):
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
        append_rows(
            path,
            SWEEP_FIELDS,
            (
                {
                    "item_id": item.id,
                    "k": c["k"],
                    "j": c["j"],
                    "answer": item.answer,
                    "answer_logprob": c["answer_logprob"],
                    "greedy_answer": c["greedy_answer"],
                    "silent_logprob": c["silent_logprob"],
                    "silent_greedy_answer": c["silent_greedy_answer"],
                    "text": c["text"],
                    "correct": contains_answer(c["text"], item.answer, item.choices)
                    if max_new_tokens
                    else "",
                }
                for c in cells
            ),
        )
    return read_sweep(out)


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
        "items": int(df["item_id"].nunique()), "cells": len(cells), "mean_gain": float(cells["gain"].mean()),
        "lowest_cell_gain": float(cells["gain"].min()), "highest_cell_gain": float(cells["gain"].max()),
        "silent_accuracy": silent, "cells_above_silent": int((cells["accuracy"] > silent).sum()),
        "best_accuracy": float(cells["accuracy"].max()),
    }  # fmt: skip


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


CONTROLS = ("random", "gaussian", "unrelated")
"""Control sources for the distance runs, in place of A's message:

* ``random``: an isotropic random direction at the norm of A's activation.
* ``gaussian``: a sample of a Gaussian with the mean and covariance of A's own
  activations at layer k (LAMBADA reference), at the norm of A's activation.
* ``unrelated``: A's real activation on another item's prompt (right
  statistics, wrong content).
"""

REFERENCES = ("corpus", "prompt", "task")
"""What :func:`run_distance` measures B's states against (see its docstring)."""


def _control_sources(
    a: Tensor,
    sender: Model,
    k: int,
    controls: Sequence[str],
    *,
    n_reference: int,
    seed: int,
    backend: str,
    **reference: Any,
) -> dict[str, Tensor]:
    """A's states ``[items, n, d]`` and the requested :data:`CONTROLS` in their place.

    A's reference is captured only for ``gaussian``; ``unrelated`` takes the
    states of the previous item (all n positions).
    """
    import torch

    from commlib.distance import covariance_matched, random_directions, reference_activations

    g = torch.Generator().manual_seed(seed)
    rows = a.reshape(-1, a.shape[-1])
    norms = rows.norm(dim=-1, keepdim=True)
    sources = {"a": a}
    if "random" in controls:
        sources["random"] = random_directions(norms, a.shape[-1], g).reshape(a.shape)
    if "gaussian" in controls:
        ref = reference_activations(sender, k, n=n_reference, seed=seed, backend=backend, **reference).fit
        gauss = covariance_matched(ref, len(rows), g)
        sources["gaussian"] = (gauss / gauss.norm(dim=-1, keepdim=True) * norms).reshape(a.shape)
    if "unrelated" in controls:
        sources["unrelated"] = a.roll(1, dims=0)
    return sources


def _reference_corpus(game: str, reference: str, corpus: str) -> str:
    """The corpus name of :func:`run_distance`'s ``reference``: the game's prompts for ``task``."""
    from commlib.distance import TASK_CORPUS

    return f"{TASK_CORPUS}{game}" if reference == "task" else corpus


def _layer_manifold(
    receiver: Model, j: int, items: Sequence[GameItem], game: str, reference: str, *, n_reference: int,
    seed: int, position: Position, backend: str, corpus: str = "lambada",
) -> Manifold:  # fmt: skip
    """B's manifold after block ``j`` for :func:`run_distance`'s ``reference`` (cached on disk)."""
    from commlib.distance import manifold_for

    ref_corpus = _reference_corpus(game, reference, corpus)
    reply = items[0].reply if reference == "prompt" else ""
    return manifold_for(
        receiver, j, corpus=ref_corpus, n=n_reference, seed=seed, backend=backend,
        formatted=reference != "corpus", position=position, reply=reply,
    )  # fmt: skip


def _writes(x: Tensor) -> Callable[[Tensor], Tensor]:
    """An edit function that puts ``x`` (``[rows, n, d]``) at the edited positions."""
    return lambda b: x.to(b)


def run_distance(
    game: str,
    sender: Model,
    receiver: Model,
    *,
    k: int,
    j: int,
    out_dir: str | Path,
    fs: Sequence[str] = ("sum", "mean", "replace"),
    alphas: Sequence[float] = (1.0,),
    match_norm: Sequence[bool] = (False,),
    controls: Sequence[str] = CONTROLS,
    n_positions: Sequence[int] = (1,),
    n: int | None = None,
    seed: int = 0,
    position: Position = "last",
    map: LinearMap | None = None,
    corpus: str = "lambada",
    n_reference: int = 3072,
    reference: str = "corpus",
    backend: str = "nnsight",
    progress: bool = True,
) -> pd.DataFrame:
    """Distances of injected states from B's manifold at layer ``j``, per item and configuration.

    For every source (A's message and the :data:`CONTROLS`), f, alpha and
    norm control, the state the graft would write, ``b + alpha (f(s, b) - b)``,
    is measured against B's own activations (raw metrics and percentiles, see
    :class:`commlib.distance.Manifold`; vectorised over items), with its
    displacement from ``b``, the KL divergence it causes in B's next-token
    distribution, and what it does to the answer (teacher-forced log-prob
    and greedy-answer flag, next to B alone; one batched receiver pass per
    item for all configurations).

    ``n_positions`` grafts the last n positions (aligned from the end, see
    :func:`commlib.prompts.message_span`); every distance of a row is then
    the mean over its n states, while the answer scores see all of them.

    ``reference="corpus"`` measures against B's final-token states on raw
    corpus sentences; ``"prompt"`` against B's states at the same position of
    the same prompt format, each corpus sentence as the user's text followed
    by the first item's reply (B's states at a chat template's closing
    tokens lie far from every raw-text state); ``"task"`` against B's states
    at the same position on the game's own prompts, both sides, from items
    no evaluation draws (``corpus="task:<game>"`` in
    :func:`commlib.distance.corpus_activations`): where B's own game states
    sit beyond every corpus state, only this reference can rank grafted
    states. The Gaussian control follows the same choice for A.

    Writes ``out_dir/distances.csv`` (an item's rows appended as it finishes;
    a re-run resumes) and ``out_dir/run.json``.

    Returns:
        The tidy table.
    """
    import torch
    from tqdm.auto import tqdm

    from commlib.backends import get_backend
    from commlib.combine import combine
    from commlib.distance import next_token_kl
    from commlib.graft import capture_span
    from commlib.sweep import ReceiverItem

    if reference not in REFERENCES:
        raise CommlibError(f"unknown reference {reference!r}; use {', '.join(REFERENCES)}")
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise CommlibError(f"unknown control(s) {', '.join(unknown)}; use {', '.join(CONTROLS)}")
    items = load_game(game, n=n, seed=seed)
    out = Path(out_dir)
    claim_run_dir(
        out,
        {
            "game": game,
            "sender": sender.name,
            "receiver": receiver.name,
            "k": k,
            "j": j,
            "fs": list(fs),
            "alphas": list(alphas),
            "match_norm": list(match_norm),
            "controls": list(controls),
            "n_positions": list(n_positions),
            "n": len(items),
            "seed": seed,
            "position": position,
            "map": asdict(map.info) if map is not None else None,
            "corpus": corpus,
            "n_reference": n_reference,
            "reference": reference,
            "backend": backend,
        },
    )
    path = out / "distances.csv"
    done: set[tuple[str, int]] = set()
    if path.exists():
        finished = pd.read_csv(path)
        done = set(zip(finished["item_id"].astype(str), finished["n_positions"].astype(int), strict=True))
    formatted = reference != "corpus"
    ref_corpus = _reference_corpus(game, reference, corpus)
    manifold = _layer_manifold(receiver, j, items, game, reference, n_reference=n_reference, seed=seed,
                               position=position, backend=backend, corpus=corpus)  # fmt: skip
    sb, rb = get_backend(sender, backend), get_backend(receiver, backend)
    s_prompts = [it.sender for it in items]
    r_prompts, replies = [it.receiver for it in items], [it.reply for it in items]
    for n_pos in n_positions:
        if all((it.id, n_pos) in done for it in items):
            continue
        a = capture_span(sb, s_prompts, k, position, n_pos).float().cpu()  # [items, n, d_A]
        b = capture_span(rb, r_prompts, j, position, n_pos, replies=replies).float().cpu()
        sources = _control_sources(
            a, sender, k, controls, n_reference=n_reference, seed=seed, backend=backend, corpus=ref_corpus,
            formatted=formatted, position=position,
        )  # fmt: skip
        configs, states, tables = [], [], []
        item_of_row = np.repeat(np.arange(len(items)), n_pos)
        for source in ("a", *controls):
            for f in fs:
                for alpha in alphas:
                    for norm in match_norm:
                        x = combine(sources[source], b, f, map=map, alpha=alpha, match_norm=norm)
                        configs.append({"source": source, "f": f, "alpha": alpha, "match_norm": norm})
                        states.append(x)
                        flat = manifold.table(x.reshape(-1, x.shape[-1]), b.reshape(-1, b.shape[-1]))
                        tables.append(flat.groupby(item_of_row).mean())  # vectorised; mean over positions
        x_all = torch.stack(states, dim=1)  # [items, configs, n, d_B]
        for i, item in enumerate(tqdm(items, desc=f"distance n={n_pos}", disable=not progress)):
            if (item.id, n_pos) in done:
                continue
            rx = ReceiverItem(receiver, item, position=position, n_positions=n_pos, backend=backend)
            scores = rx.score(j, _writes(x_all[i]), len(configs))
            kl = next_token_kl(rx.silent_next_logits.expand_as(scores.next_logits), scores.next_logits)
            rows = [
                {
                    "item_id": item.id,
                    "n_positions": n_pos,
                    **cfg,
                    **tables[c].iloc[i].to_dict(),
                    "next_token_kl": float(kl[c]),
                    "answer_logprob": float(scores.answer_logprob[c]),
                    "greedy_answer": bool(scores.greedy_answer[c]),
                    "silent_logprob": rx.silent_logprob,
                    "silent_greedy_answer": rx.silent_greedy_answer,
                    "logprob_gain": float(scores.answer_logprob[c]) - rx.silent_logprob,
                }
                for c, cfg in enumerate(configs)
            ]
            frame = pd.DataFrame(rows)
            frame.to_csv(path, mode="a", header=not path.exists(), index=False)
    return pd.read_csv(path)


REASONING_FIELDS = (
    "item_id", "method", "answer", "extracted", "correct", "output", "transcript", "seconds",
    "prompt_a", "prompt_b", "message_tokens", "answer_tokens", "flops", "batch",
)  # fmt: skip
JUDGEMENTS = "judgements.jsonl"
"""Per (judge, item, method) file of a Biographies run: the judge's prompts, raw answers and verdicts."""


def run_reasoning(
    task: str,
    sender: Model,
    receiver: Model,
    methods: Sequence[str],
    *,
    out_dir: str | Path,
    n: int | None = 100,
    seed: int = 0,
    k: int | None = None,
    j: int | None = None,
    layers_from: Model | None = None,
    rounds: int = 2,
    max_new_tokens: int = 256,
    map: LinearMap | None = None,
    backend: str = "nnsight",
    source: str = "offline",
    a_temperature: float = 0.0,
    a_top_p: float = 0.9,
    a_seed: int = 0,
    judge: Model | None = None,
    answers: str | Path | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Reasoning methods on ``gsm8k``, ``mmlu:SUBJECT`` or ``biographies`` (paper Section 4.2); resumable.

    Per item and method, ``out_dir/items.csv`` keeps B's output (and the
    transcript), the extracted answer, wall time, token counts and analytic
    FLOPs (:func:`commlib.compute.method_flops`, KV cache). Methods are those
    of :mod:`commlib.methods.reasoning`, ``nld-r1,...,nld-r4`` included (one
    debate per item serves them all). ``results.json`` has per method the
    score with a 95% bootstrap CI, mean FLOPs (also relative to one forward
    pass of the smaller model over the mean prompt), mean wall time and
    generated tokens, and the configuration. With ``single-b`` among the
    methods, every other method also has ``vs_b``: its paired difference
    with B alone over the items both score (95% bootstrap CI) and the items
    it scores above (``better``: on GSM8k and MMLU, B's misses it fixes) and
    below B alone (``worse``: B's hits it breaks).

    The score is accuracy on GSM8k and MMLU. Biographies are scored by
    ``judge`` (:func:`judge_biographies`, cached in ``out_dir/judgements.jsonl``):
    the mean over people of the fraction of facts judged consistent. Without
    a judge they are generated only (score NaN). The judge is not part of the
    run's settings: re-running a directory with another judge judges the
    same biographies again, without regenerating them.

    Args:
        k: A's block for the AC methods (chosen on ``layers_from`` when given).
        j: B's block for the AC methods (likewise).
        layers_from: The model ``k`` and ``j`` were chosen on (e.g. by the games
            sweep of A = B = that model): they are mapped to A's and B's depth
            by :func:`commlib.graft.map_layer`, and both are recorded.
        a_temperature: A's sampling temperature (0: greedy), with ``a_top_p``
            and ``a_seed`` (see :class:`commlib.methods.reasoning.ReasoningConfig`).
        judge: The Biographies judge model.
        answers: A :class:`commlib.results.AnswerStore` directory: ``single-a``
            and ``single-b`` answers found there are taken instead of generated
            again (a model alone answers the same in every pair), and this
            run's single answers, old and new, are added to it. Biographies'
            judgements are shared the same way (:func:`judge_biographies`).
        batch_size: Items decoded together by the methods that are one decode
            per item (``single-a``, ``single-b``, ``ac``, ``ac-w``, ``ac-unrelated``; see
            :func:`commlib.methods.reasoning.run_reasoning_batch`): the same
            greedy answers up to float rounding, faster on a CPU. Not a setting
            of the directory: a run may resume with another batch size. A
            crash loses at most the batch in progress.

    Returns:
        The content of ``results.json``.
    """
    import json as _json

    from tqdm.auto import tqdm

    from commlib.compute import Shape, forward_flops, method_flops
    from commlib.graft import map_layer
    from commlib.methods.reasoning import (
        BATCHED_METHODS,
        ReasoningConfig,
        check_methods,
        compute_kind,
        debate_rounds,
        question_prompt,
        run_reasoning_batch,
        run_reasoning_methods,
        single_answer_key,
        single_output,
    )
    from commlib.results import AnswerStore
    from commlib.tasks.biographies import JUDGE_MAX_NEW_TOKENS, JUDGE_PROMPT
    from commlib.tasks.reasoning import extract_answer, is_correct, load_task

    methods = list(dict.fromkeys(methods))
    check_methods(methods)
    if batch_size < 1:
        raise CommlibError(f"batch_size must be at least 1, got {batch_size}")
    items = load_task(task, n, seed, source=source)  # type: ignore[arg-type]
    chosen = None
    if layers_from is not None and k is not None and j is not None:
        chosen = {"model": layers_from.name, "k": k, "j": j}
        depth = layers_from.info.n_layers
        k, j = map_layer(k, depth, sender.info.n_layers), map_layer(j, depth, receiver.info.n_layers)
    cfg = ReasoningConfig(k=k, j=j, rounds=rounds, max_new_tokens=max_new_tokens, backend=backend,
                          a_temperature=a_temperature, a_top_p=a_top_p, a_seed=a_seed)  # fmt: skip
    out = Path(out_dir)
    settings = {"task": task, "sender": sender.name, "receiver": receiver.name, **asdict(cfg),
                "layers_chosen_on": chosen, "n": len(items), "seed": seed, "source": source,
                "map": asdict(map.info) if map is not None else None}  # fmt: skip
    claim_run_dir(out, settings)
    path = out / "items.csv"
    judged = task == "biographies"
    text = {"extracted": str, "correct": str}
    rows = pd.read_csv(path, keep_default_na=False, dtype=text).to_dict("records") if path.exists() else []
    if rows:
        # Older files: rows of before batching ran alone; rows are scored again from their outputs, so a
        # run scores as the current answer extraction does.
        by_item = {item.id: item for item in items}
        updated = [{"batch": 1, **r, **({} if judged else _scored(by_item.get(str(r["item_id"])), r))}
                   for r in rows]  # fmt: skip
        if any({k: str(v) for k, v in u.items()} != {k: str(v) for k, v in r.items()}
               for u, r in zip(updated, rows, strict=True)):  # fmt: skip
            pd.DataFrame(updated, columns=list(REASONING_FIELDS)).to_csv(
                path.with_suffix(".tmp"), index=False
            )
            path.with_suffix(".tmp").replace(path)
        rows = updated
    done = {(str(r["item_id"]), r["method"]) for r in rows}
    shape_a, shape_b = Shape.from_config(sender.hf.config), Shape.from_config(receiver.hf.config)
    debates = [m for m in methods if debate_rounds(m, cfg) is not None]
    groups = [[m] for m in methods if m not in debates] + ([debates] if debates else [])
    store = AnswerStore(answers) if answers is not None else None
    singles = ("single-a", "single-b")

    def shared_key(method: str, item: Any) -> dict[str, Any]:
        return single_answer_key(method, item, sender, receiver, cfg)

    def share(method: str, item: Any, text: str, prompt: int, answer: int, secs: float, batch: int) -> None:
        if store is not None and method in singles:
            stored = {"text": text, "prompt_tokens": prompt, "answer_tokens": answer, "seconds": secs,
                      "batch": batch}  # fmt: skip
            store.put(shared_key(method, item), stored)

    if store is not None:  # this directory's single answers serve other runs too
        by_id = {item.id: item for item in items}
        for r in rows:
            if r["method"] in singles and str(r["item_id"]) in by_id:
                prompt = int(r["prompt_a"]) or int(r["prompt_b"])
                share(r["method"], by_id[str(r["item_id"])], r["output"], prompt, int(r["answer_tokens"]),
                      float(r["seconds"]), int(r["batch"]))  # fmt: skip

    def record(item: Any, outputs: dict[str, Any]) -> None:
        for method, o in outputs.items():
            share(method, item, o.text, o.prompt_a or o.prompt_b, o.answer, o.seconds, o.batch)
            flops = method_flops(compute_kind(method), shape_a, shape_b, prompt_a=o.prompt_a,
                                 prompt_b=o.prompt_b, message=o.message, answer=o.answer, k=cfg.k,
                                 rounds=debate_rounds(method, cfg) or rounds)["total"]  # fmt: skip
            row = {
                "item_id": item.id, "method": method, "answer": item.answer,
                "extracted": extract_answer(item, o.text) or "",
                "correct": "" if judged else is_correct(item, o.text), "output": o.text,
                "transcript": _json.dumps(o.transcript),
                "seconds": o.seconds, "prompt_a": o.prompt_a, "prompt_b": o.prompt_b,
                "message_tokens": o.message, "answer_tokens": o.answer, "flops": flops, "batch": o.batch,
            }  # fmt: skip
            append_rows(path, REASONING_FIELDS, [row])
            rows.append(row)

    def stored(method: str, item: Any) -> Any:
        hit = store.get(shared_key(method, item)) if store is not None and method in singles else None
        if hit is None:
            return None
        return single_output(method, hit["text"], hit["prompt_tokens"], hit["answer_tokens"], hit["seconds"],
                             hit.get("batch", 1))  # fmt: skip

    def run_batch(method: str, batch: list[Any]) -> None:
        outputs = run_reasoning_batch(method, batch, sender, receiver, cfg, map)
        for item, o in zip(batch, outputs, strict=True):
            record(item, {method: o})

    for group in groups:
        batched = batch_size > 1 and len(group) == 1 and group[0] in BATCHED_METHODS
        pending: list[Any] = []  # items waiting for a full batch
        with tqdm(total=len(items), desc=",".join(group), disable=not progress) as bar:
            for item in items:
                todo = [m for m in group if (item.id, m) not in done]
                outputs = {m: o for m in todo if (o := stored(m, item)) is not None}
                rest = [m for m in todo if m not in outputs]
                if rest and batched:
                    pending.append(item)
                    if len(pending) == batch_size:
                        run_batch(group[0], pending)
                        bar.update(len(pending))
                        pending = []
                    continue
                if rest:
                    opening = _opening_round(rows, item.id) if group is debates else []
                    outputs.update(run_reasoning_methods(rest, item, sender, receiver, cfg, map, opening))
                record(item, outputs)
                bar.update()
            if pending:
                run_batch(group[0], pending)
                bar.update(len(pending))
    df = pd.DataFrame(rows)
    df = df[df["method"].isin(methods)].copy()
    if judged:
        if judge is not None:
            scores = judge_biographies(
                out, items, judge, methods=methods, backend=backend, answers=answers, progress=progress
            )
        else:
            scores = pd.DataFrame(columns=["item_id", "method", "score"])
        keyed = scores.set_index(["item_id", "method"])["score"]
        pairs = zip(df["item_id"].astype(str), df["method"], strict=True)
        df["score"] = [keyed.get(key, float("nan")) for key in pairs]
    else:
        df["score"] = df["correct"].astype(str).isin(["True", "1"]).astype(float)
    smaller = min((shape_a, shape_b), key=lambda s: forward_flops(s, 1))
    unit = forward_flops(smaller, max(1, round(float(df[["prompt_a", "prompt_b"]].max(axis=1).mean()))))
    summary = {}
    for method in methods:
        sub = df[df["method"] == method]
        scored = sub["score"].dropna()
        lo, hi = bootstrap_ci(scored.tolist(), seed=seed)
        summary[method] = {
            "accuracy": float(scored.mean()) if len(scored) else float("nan"), "ci_low": lo, "ci_high": hi,
            "n": len(sub), "n_scored": len(scored),
            "flops": float(sub["flops"].mean()), "flops_vs_one_pass": float(sub["flops"].mean()) / unit,
            "seconds": float(sub["seconds"].mean()), "batch_sizes": sorted({int(b) for b in sub["batch"]}),
            "generated_tokens": float((sub["message_tokens"] + sub["answer_tokens"]).mean()),
        }  # fmt: skip
    if "single-b" in methods:
        by_item = df.pivot(index="item_id", columns="method", values="score")
        for method in methods:
            if method != "single-b":
                summary[method]["vs_b"] = _paired_with(by_item[method], by_item["single-b"], seed=seed)
    a_decoding = "greedy" if a_temperature <= 0 else "sampled (temperature, top_p, seed per item and turn)"
    judging = {"model": judge.info.to_dict(), "prompt": JUDGE_PROMPT, "decoding": "greedy",
               "max_new_tokens": JUDGE_MAX_NEW_TOKENS} if judged and judge is not None else None  # fmt: skip
    result = {
        "task": task,
        "metric": "mean over people of the fraction of facts judged consistent (uncertain dropped)"
        if judged
        else "accuracy",
        "methods": summary,
        "config": {
            **settings, "sender": sender.info.to_dict(), "receiver": receiver.info.to_dict(),
            "shapes": {"sender": shape_a.to_dict(), "receiver": shape_b.to_dict()},
            "one_pass_flops": unit, "example_prompt": question_prompt(items[0]),
            "decoding": {"a": a_decoding, "b": "greedy"}, "judge": judging,
            "shared_answers": str(answers) if answers is not None else None,
            "batch_size": batch_size,
            "seconds": "wall time per item; items decoded together (items.csv: batch > 1) split it",
            "flops": "analytic, KV cache (commlib.compute.method_flops)",
            "ci": "95% percentile bootstrap, 1000 resamples", "versions": package_versions(),
        },
    }  # fmt: skip
    write_json(out / "results.json", result)
    return result


def _paired_with(scores: pd.Series, baseline: pd.Series, *, seed: int) -> dict[str, float | int]:
    """``scores`` against ``baseline`` on the items both score: paired difference, items above and below."""
    both = pd.concat([scores, baseline], axis=1, keys=["method", "baseline"]).dropna()
    difference, lo, hi = paired_difference(both["method"], both["baseline"], seed=seed)
    return {"difference": difference, "ci_low": lo, "ci_high": hi, "n": len(both),
            "better": int((both["method"] > both["baseline"]).sum()),
            "worse": int((both["method"] < both["baseline"]).sum())}  # fmt: skip


def _scored(item: Any, row: dict[str, Any]) -> dict[str, Any]:
    """A stored row's ``extracted`` and ``correct``, from its output (as stored when the item is unknown)."""
    from commlib.tasks.reasoning import extract_answer, is_correct

    if item is None:
        return {}
    return {
        "extracted": extract_answer(item, str(row["output"])) or "",
        "correct": is_correct(item, str(row["output"])),
    }


def _opening_round(rows: Sequence[dict[str, Any]], item_id: str) -> list[Turn]:
    """The debate's first round from the item's ``single-a`` and ``single-b`` rows, when both are there.

    Round one of a debate is each agent answering the question prompt with
    its own decoding, which is what the single methods do (same prompts,
    decoding and settings: one directory, one config), so their answers,
    token counts and wall times serve as that round unchanged.
    """
    import json as _json

    from commlib.methods.reasoning import Turn

    mine = {r["method"]: r for r in rows if str(r["item_id"]) == item_id}
    if "single-a" not in mine or "single-b" not in mine:
        return []
    return [
        Turn(agent, _json.loads(r["transcript"])[0], int(r[f"prompt_{agent}"]), int(r["answer_tokens"]),
             float(r["seconds"]))
        for agent, r in (("a", mine["single-a"]), ("b", mine["single-b"]))
    ]  # fmt: skip


def judge_biographies(
    out_dir: str | Path,
    items: Sequence[Any],
    judge: Model,
    *,
    methods: Sequence[str] | None = None,
    backend: str = "nnsight",
    answers: str | Path | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Judge the biographies of a :func:`run_reasoning` directory per fact; cached and resumable.

    Every (item, method) row of ``out_dir/items.csv`` (of ``methods``, default
    all) is judged by ``judge`` against the item's facts
    (:func:`commlib.tasks.biographies.judge_biography`) unless
    ``out_dir/judgements.jsonl`` already holds it for this judge. Each line
    there is one (judge, item, method): every fact's prompt, the judge's raw
    answer and verdict, the counts and the score.

    With ``answers`` (the :class:`commlib.results.AnswerStore` directory of
    :func:`run_reasoning`), judgements are shared between run directories
    too, in ``answers/judgements``, keyed by the judge, backend and the exact
    judge prompts (:func:`judge_key`): the greedy judge reads a biography the
    same way whatever pair wrote it, so a model's biographies alone are judged
    once, not once per pair. This directory's judgements, old and new, are
    added to the store.

    Returns:
        One row per (item, method) judged by ``judge``: item_id, method, yes,
        no, uncertain, unparsed, score (NaN when no fact was judged yes or
        no), p_yes (the judge's mean first-token p(yes) / (p(yes) + p(no))
        over facts; NaN for judgements that did not record it).
    """
    import json as _json

    from tqdm.auto import tqdm

    from commlib.results import AnswerStore
    from commlib.tasks.biographies import judge_biography

    out = Path(out_dir)
    path = out / JUDGEMENTS
    mine = _judged(path, judge.name)
    by_id = {it.id: it for it in items}
    generated = pd.read_csv(out / "items.csv", keep_default_na=False)
    if methods is not None:
        generated = generated[generated["method"].isin(list(methods))]
    store = AnswerStore(Path(answers) / "judgements") if answers is not None else None
    rows = [r for r in generated.to_dict("records") if str(r["item_id"]) in by_id]
    todo = [r for r in rows if (str(r["item_id"]), r["method"]) not in mine]
    if store is not None:  # this directory's judgements serve other runs too
        for r in rows:
            if (done := mine.get((str(r["item_id"]), r["method"]))) is not None:
                judged = {k: v for k, v in done.items() if k not in ("judge", "item_id", "method")}
                store.put(judge_key(judge, by_id[str(r["item_id"])], str(r["output"]), backend), judged)
    for r in tqdm(todo, desc=f"judge {judge.name}", disable=not progress):
        item = by_id[str(r["item_id"])]
        key = judge_key(judge, item, str(r["output"]), backend)
        shared = store.get(key) if store is not None else None
        if shared is None:
            judged = _judgement_line(item, judge_biography(judge, item, str(r["output"]), backend=backend))
            if store is not None:
                store.put(key, judged)
        else:
            judged = {k: v for k, v in shared.items() if k != "key"}
        line = {"judge": judge.name, "item_id": item.id, "method": r["method"], **judged}
        with path.open("a") as fh:
            fh.write(_json.dumps(line) + "\n")
        mine[(item.id, r["method"])] = line
    keys = set(zip(generated["item_id"].astype(str), generated["method"], strict=True))
    cols = ["item_id", "method", "yes", "no", "uncertain", "unparsed", "score"]
    return pd.DataFrame([{**{c: r[c] for c in cols}, "p_yes": _mean_p_yes(r["facts"])}
                         for key, r in mine.items() if key in keys], columns=[*cols, "p_yes"])  # fmt: skip


def judge_key(judge: Model, item: Any, output: str, backend: str = "nnsight") -> dict[str, Any]:
    """The :class:`commlib.results.AnswerStore` key of one judged biography.

    The judge model, the backend, greedy decoding of
    :data:`~commlib.tasks.biographies.JUDGE_MAX_NEW_TOKENS` and the SHA-256 of
    the exact judge prompts (:func:`~commlib.tasks.biographies.judge_prompts`:
    person, biography and facts), which decide what the greedy judge answers.
    """
    import hashlib

    from commlib.tasks.biographies import JUDGE_MAX_NEW_TOKENS, judge_prompts

    prompts = judge_prompts(item.question, output, item.answer.split("\n"))
    digest = hashlib.sha256("\0".join(prompts).encode()).hexdigest()
    return {"model": judge.name, "backend": backend, "person": item.id, "prompts_sha256": digest,
            "decoding": {"greedy": True, "max_new_tokens": JUDGE_MAX_NEW_TOKENS}}  # fmt: skip


def _judge_lines(path: Path, judge: str) -> list[dict[str, Any]]:
    """The lines of a judgements file written for ``judge``."""
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in lines if r["judge"] == judge]


def _judged(path: Path, judge: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The lines of a judgements file by ``judge``, by (item_id, method)."""
    return {(r["item_id"], r["method"]): r for r in _judge_lines(path, judge)}


def _judgement_line(item: Any, facts: Sequence[Any]) -> dict[str, Any]:
    """What a judgements file keeps of one judged biography: counts, score (NaN as null), every fact."""
    from commlib.tasks.biographies import fact_score

    verdicts = [f.verdict for f in facts]
    return {"person": item.question, **{v: verdicts.count(v) for v in ("yes", "no", "uncertain", "unparsed")},
            "score": score if (score := fact_score(verdicts)) == score else None,
            "facts": [asdict(f) for f in facts]}  # fmt: skip


JUDGE_CONTROL = "judge_control.jsonl"
TRUTH = "truth"
"""``judge_control``'s method name for the ground-truth biography (the person's own facts as bullets)."""


def judge_control(
    out_dir: str | Path,
    items: Sequence[Any],
    judge: Model,
    *,
    method: str = "single-b",
    facts_of: str = "next",
    n: int = 5,
    backend: str = "nnsight",
    progress: bool = True,
) -> pd.DataFrame:
    """Controls of a Biographies judge: biographies judged against facts whose answer is known.

    The first ``n`` people's ``method`` biographies of ``out_dir`` (a
    :func:`run_reasoning` directory), or with ``method="truth"`` their
    ground-truth facts written as a bullet biography (no run needed), each
    judged against:

    * ``facts_of="next"`` (negative control): the facts of the next person
      (the last against the first's), under that person's name. A judge that
      reads the biography scores these near 0; one that answers yes whatever
      it reads scores near 1, and its scores on the run mean nothing.
    * ``facts_of="own"``: the person's own facts. With ``method="truth"``
      every fact is in the biography word for word (positive control): a
      judge that reads it scores near 1.

    Cached and resumable per judge in ``out_dir/judge_control.jsonl``.

    Returns:
        One row per biography: item_id, facts_of, yes, no, uncertain,
        unparsed, score (the fraction of yes among yes and no), p_yes (the
        judge's mean first-token probability of yes over yes and no).

    Raises:
        CommlibError: fewer than 2 biographies, or an unknown ``facts_of``.
    """
    from tqdm.auto import tqdm

    from commlib.tasks.biographies import judge_biography

    if facts_of not in ("next", "own"):
        raise CommlibError(f"unknown facts_of {facts_of!r}; use next (negative control) or own")
    out = Path(out_dir)
    path = out / JUDGE_CONTROL
    done = {(r["item_id"], r["method"], r.get("control", "next")): r for r in _judge_lines(path, judge.name)}
    by_id = {it.id: it for it in items}
    if method == TRUTH:
        biographies = {it.id: "\n".join(f"- {fact}" for fact in it.answer.split("\n")) for it in items[:n]}
    else:
        generated = pd.read_csv(out / "items.csv", keep_default_na=False)
        ours = generated[(generated["method"] == method) & generated["item_id"].astype(str).isin(by_id)]
        biographies = {str(r["item_id"]): str(r["output"]) for r in ours.head(n).to_dict("records")}
    people = list(biographies)
    if len(people) < 2:
        raise CommlibError(f"the judge control needs 2 or more {method} biographies in {out}; run them first")
    against = people[1:] + people[:1] if facts_of == "next" else people
    for person, other in tqdm(list(zip(people, against, strict=True)), desc=f"control {judge.name}",
                              disable=not progress):  # fmt: skip
        if (person, method, facts_of) in done:
            continue
        facts = judge_biography(judge, by_id[other], biographies[person], backend=backend)
        line = {"judge": judge.name, "item_id": person, "method": method, "control": facts_of,
                "facts_of": other, **_judgement_line(by_id[other], facts)}  # fmt: skip
        with path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        done[(person, method, facts_of)] = line
    cols = ["item_id", "facts_of", "yes", "no", "uncertain", "unparsed", "score"]
    rows = [done[(p, method, facts_of)] for p in people]
    return pd.DataFrame([{**{c: r[c] for c in cols}, "p_yes": _mean_p_yes(r["facts"])} for r in rows])


def biographies_against_control(
    out_dir: str | Path,
    items: Sequence[Any],
    judge: Model,
    methods: Sequence[str],
    *,
    n_control: int | None = None,
    backend: str = "nnsight",
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Each method's Biographies score next to its negative control, and the gap, paired by person.

    A vague biography is "consistent" with anyone's facts, so its score says
    little about what it knows of its own person. Here every method's
    biographies are judged against their own person's facts
    (:func:`judge_biographies`) and against the next person's
    (:func:`judge_control`, ``facts_of="next"``), both cached; the gap, own
    minus next over the same biographies, is what the biography says of its
    own person beyond what it would say of anyone. ``n_control`` limits the
    control to the first people of ``items`` (the control doubles the judging).

    Returns:
        One row per method: method, score (own facts, all people), control
        (next person's facts), gap, gap_ci_low, gap_ci_high (95% bootstrap
        over the people with both), n (people scored), n_control (people in
        the gap), and the same three for the judge's first-token leaning
        instead of its verdicts (mean p(yes) / (p(yes) + p(no)), no
        threshold): p_yes, p_yes_control, p_yes_gap.
    """
    scores = judge_biographies(out_dir, items, judge, methods=methods, backend=backend, progress=progress)
    rows = []
    for method in methods:
        own = scores[scores["method"] == method].set_index("item_id")["score"].astype(float)
        control = judge_control(out_dir, items, judge, method=method, n=n_control or len(items),
                                backend=backend, progress=progress)  # fmt: skip
        p_own = scores[scores["method"] == method].set_index("item_id")["p_yes"].astype(float)
        p_control = control.set_index("item_id")["p_yes"].astype(float)
        control = control.set_index("item_id")["score"].astype(float)
        gap, lo, hi = paired_difference(own, control, seed=seed)
        rows.append({"method": method, "score": own.mean(), "control": control.mean(), "gap": gap,
                     "gap_ci_low": lo, "gap_ci_high": hi, "n": int(own.notna().sum()),
                     "n_control": int((own - control).notna().sum()), "p_yes": p_own.mean(),
                     "p_yes_control": p_control.mean(), "p_yes_gap": (p_own - p_control).mean()})  # fmt: skip
    return pd.DataFrame(rows)


def _mean_p_yes(facts: Sequence[dict[str, Any]]) -> float:
    """Mean over facts of p(yes) / (p(yes) + p(no)) at the judge's first token (NaN if not recorded)."""
    shares = [f["p_yes"] / (f["p_yes"] + f["p_no"]) for f in facts if f.get("p_yes") is not None]
    return float(np.mean(shares)) if shares else float("nan")


def reasoning_dir(
    root: str | Path, task: str, sender: str, receiver: str, *, seed: int, n: int | None, variant: str = ""
) -> Path:
    """Where a :func:`run_reasoning` run lives under ``root`` (notebooks and scripts agree).

    ``variant`` names settings beyond the default ones (e.g. ``"cot"``,
    ``"sampled-t0.7"``), since one directory holds one set of settings.
    """
    name = f"seed{seed}_n{n}" + (f"_{variant}" if variant else "")
    return Path(root) / f"{sender}__{receiver}" / task.replace(":", "_") / name


def read_reasoning(out_dir: str | Path) -> pd.DataFrame:
    """A run's ``results.json`` as a table: one row per method with task, sender, receiver, k, j, seed.

    Columns: task, sender, receiver, method, accuracy, ci_low, ci_high (in
    [0, 1]), n, n_scored, flops, flops_vs_one_pass, seconds,
    generated_tokens, k, j, seed, judge (the judge's name or empty) and,
    where the run has B alone, the paired comparison with it: vs_b,
    vs_b_low, vs_b_high, better, worse (NaN on B's own row).
    """
    result = json.loads((Path(out_dir) / "results.json").read_text())
    config = result["config"]
    judge = (config.get("judge") or {}).get("model", {}).get("name", "")
    rows = []
    for method, values in result["methods"].items():
        values = dict(values)
        if (paired := values.pop("vs_b", None)) is not None:
            values |= {"vs_b": paired["difference"], "vs_b_low": paired["ci_low"],
                       "vs_b_high": paired["ci_high"], "better": paired["better"],
                       "worse": paired["worse"]}  # fmt: skip
        rows.append({"task": result["task"], "sender": config["sender"]["name"],
                     "receiver": config["receiver"]["name"], "method": method, **values, "k": config["k"],
                     "j": config["j"], "seed": config["seed"], "judge": judge})  # fmt: skip
    return pd.DataFrame(rows)


def run_pair_reasoning(
    task: str,
    sender: Model,
    receiver: Model,
    methods: Sequence[str],
    *,
    runs_root: str | Path,
    sweep_root: str | Path,
    game: str = "countries",
    n: int | None = 100,
    seed: int = 0,
    variant: str = "",
    n_map: int = 3072,
    map_source: str = "lambada",
    selection_n: int = SELECTION_N,
    progress: bool = True,
    **options: Any,
) -> pd.DataFrame:
    """:func:`run_reasoning` as the notebooks run it, resumable: layers from B's sweep, W cached.

    (k, j) are :func:`choose_layers` of B (A = B = receiver, last position,
    ``selection_n`` items of seed 0, cached under ``sweep_root``), and
    :func:`run_reasoning` maps k to A's depth. With ``ac-w`` among the
    methods, W is fitted once on ``n_map`` LAMBADA sentences at A's mapped
    block and B's j, and cached under ``runs_root/maps``; the map is part of a
    run directory's settings, so a (pair, task) directory is run with ``ac-w``
    always or never. ``map_source="task"`` fits an in-distribution W instead,
    on up to ``n_map`` other items of the task (:func:`other_items`: none the
    run scores), each read in the prompt format at the last token as AC reads
    it; give such a run its own ``variant``. The run lives in
    :func:`reasoning_dir` (``variant`` for other settings); ``options`` go to
    :func:`run_reasoning`. Single-model
    answers are shared between pairs through ``runs_root/answers``
    (:class:`commlib.results.AnswerStore`): a model's answers alone are
    generated (on Biographies, also judged) once per task, not once per pair.

    Returns:
        :func:`read_reasoning` of the run.
    """
    from commlib.graft import fit_map, map_layer

    if map_source not in ("lambada", "task"):
        raise CommlibError(f"unknown map_source {map_source!r}; use lambada or task")
    pick = choose_layers(receiver, game, sweep_root=sweep_root, n=selection_n, positions=("last",),
                         progress=progress)  # fmt: skip
    k, j = int(pick["k"]), int(pick["j"])
    lin = None
    if "ac-w" in methods:
        k_a = map_layer(k, receiver.info.n_layers, sender.info.n_layers)
        name = f"{sender.name}__{receiver.name}_k{k_a}_j{j}_n{n_map}"
        if map_source == "task":
            name += f"_{other_items_name(task, seed, n)}"
        map_dir = Path(runs_root) / "maps" / name
        if not (map_dir / "map.json").exists():
            if map_source == "task":
                lin = fit_task_map(task, sender, receiver, k_a, j, n_map=n_map, n_eval=n, seed=seed)
            else:
                lin = fit_map(sender, receiver, k_a, j, n=n_map)
            lin.save(map_dir)
        lin = LinearMap.load(map_dir)
    out = reasoning_dir(runs_root, task, sender.name, receiver.name, seed=seed, n=n, variant=variant)
    run_reasoning(task, sender, receiver, methods, out_dir=out, n=n, seed=seed, k=k, j=j,
                  layers_from=receiver, map=lin, answers=Path(runs_root) / "answers", progress=progress,
                  **options)  # fmt: skip
    return read_reasoning(out)


DEPTH_METHODS = ("single-a", "single-b", "ac", "ac-unrelated")
"""What :func:`run_reasoning_depths` runs at each depth: the models alone, AC and its control."""


def run_reasoning_depths(
    task: str,
    sender: Model,
    receiver: Model,
    blocks: Sequence[int],
    *,
    runs_root: str | Path,
    n: int | None = 20,
    seed: int = 0,
    distance: bool = True,
    n_reference: int = 256,
    exclude: Collection[str] = (),
    progress: bool = True,
    **options: Any,
) -> pd.DataFrame:
    """AC against its control at one relative depth of A and B, for each of B's ``blocks`` (resumable).

    The games sweep picks (k, j) on a coordination game; on a reasoning task
    the pick can be a block where A's last-token state carries nothing of
    the question, and AC then acts as a fixed steering vector. The control
    ``ac-unrelated`` (A reads one fixed unrelated question) tells the two
    apart: only AC's lead over it is communication. For each block ``b`` of
    B this runs :func:`run_reasoning` with :data:`DEPTH_METHODS` at ``j = b``
    and ``k = b`` mapped to A's depth (``layers_from=receiver``: the paper's
    k = j, for models of different depth), in :func:`reasoning_dir`'s
    variant ``depth-j{b}``. Single answers come from ``runs_root/answers``,
    so a block costs its two AC runs. With ``distance``,
    :func:`run_reasoning_distance` of AC's graft at that block goes to the
    run's ``graft_distance`` (forward passes only).

    Args:
        blocks: B's blocks, each used for both models by relative depth.
        n_reference: B's own states the graft is measured against (:func:`run_reasoning_distance`).
        exclude: Item ids left out of the scores (all are run): e.g. those a depth was chosen on,
            to report it on the others.
        options: Passed to :func:`run_reasoning` (e.g. ``batch_size``).

    Returns:
        One row per (block, method): ``block``, ``k``, ``j``, ``depth``
        (``block / (B's blocks - 1)``), ``method``, ``accuracy``, ``ci_low``,
        ``ci_high``, ``n``, the paired differences over items with B alone
        (``vs_b``, ``vs_b_low``, ``vs_b_high``) and with the control
        (``vs_control``, ...), and with ``distance`` the median
        ``next_token_kl`` and ``mahalanobis_pct`` of AC's graft (the same on
        every row of a block).

    Raises:
        CommlibError: ``task`` is Biographies (scored per fact by a judge, not per item).

    Example:
        >>> import tempfile
        >>> from commlib.models import load_model
        >>> m = load_model("tiny-llama-random")
        >>> with tempfile.TemporaryDirectory() as runs:
        ...     t = run_reasoning_depths("gsm8k", m, m, [0, 3], runs_root=runs, n=2, max_new_tokens=2,
        ...                              distance=False, progress=False)
        >>> t.groupby("block")["k"].first().tolist(), t["vs_control"][t["method"] == "ac-unrelated"].tolist()
        ([0, 3], [0.0, 0.0])
    """
    if task == "biographies":
        raise CommlibError("run_reasoning_depths scores accuracy per item: use gsm8k or mmlu:SUBJECT")
    backend = options.get("backend", "nnsight")
    if distance:  # B's own states at every block in one pass, before the runs that use them
        from commlib.tasks.reasoning import load_task

        evaluated = load_task(task, n=n, seed=seed)
        reasoning_reference_states(task, receiver, evaluated, blocks, n_reference=n_reference, seed=seed,
                                   backend=backend)  # fmt: skip
    rows = []
    for block in blocks:
        out = reasoning_dir(
            runs_root, task, sender.name, receiver.name, seed=seed, n=n, variant=f"depth-j{block}"
        )
        result = run_reasoning(task, sender, receiver, DEPTH_METHODS, out_dir=out, n=n, seed=seed, k=block,
                               j=block, layers_from=receiver, answers=Path(runs_root) / "answers",
                               progress=progress, **options)  # fmt: skip
        k = int(result["config"]["k"])  # block mapped to A's depth
        graft: dict[str, float] = {}
        if distance:
            table = run_reasoning_distance(
                task, sender, receiver, k=k, j=block, out_dir=out / "graft_distance", n=n, seed=seed,
                n_reference=n_reference, backend=backend,
            )  # fmt: skip
            ac = table[table["source"] == "ac"]
            graft = {"next_token_kl": float(ac["next_token_kl"].median()),
                     "mahalanobis_pct": float(ac["mahalanobis_pct"].median())}  # fmt: skip
        items = pd.read_csv(out / "items.csv", keep_default_na=False, dtype={"item_id": str, "correct": str})
        items = items[~items["item_id"].isin(set(exclude))]
        correct = {m: _correct_by_item(items[items["method"] == m]) for m in DEPTH_METHODS}
        depth = block / max(receiver.info.n_layers - 1, 1)
        for method in DEPTH_METHODS:
            scored = correct[method]
            lo, hi = bootstrap_ci(scored.tolist(), seed=seed)
            row = {"block": block, "k": k, "j": block, "depth": depth, "method": method,
                   "accuracy": scored.mean(), "ci_low": lo, "ci_high": hi, "n": len(scored)}  # fmt: skip
            for name, other in (("vs_b", "single-b"), ("vs_control", "ac-unrelated")):
                row[name], row[f"{name}_low"], row[f"{name}_high"] = paired_difference(
                    correct[method], correct[other], seed=seed
                )
            rows.append({**row, **graft})
    return pd.DataFrame(rows)


REASONING_REFERENCE_SEED = 7_919
"""Seed (plus the run's) of :func:`other_items`: B's manifold and the in-distribution W are fitted on them."""


def other_items(task: str, evaluated: Sequence[ReasoningItem], n: int, seed: int = 0) -> list[ReasoningItem]:
    """``n`` items of ``task`` not among ``evaluated`` (seed: :data:`REASONING_REFERENCE_SEED` + ``seed``).

    What is fitted on a task next to a run of it (B's manifold in
    :func:`run_reasoning_distance`, the in-distribution W of
    :func:`run_pair_reasoning`) never sees an item the run scores.
    """
    from commlib.tasks.reasoning import load_task, sample_items

    ids = {it.id for it in evaluated}
    others = [it for it in load_task(task, n=None) if it.id not in ids]
    return sample_items(others, n, REASONING_REFERENCE_SEED + seed)


def other_items_name(task: str, seed: int, n_eval: int | None) -> str:
    """How a cache names :func:`other_items` of a run of ``n_eval`` items of ``task`` with ``seed``.

    Example:
        >>> other_items_name("mmlu:formal_logic", 0, 20)
        'mmlu_formal_logic-other-than-seed0-n20'
    """
    return f"{task.replace(':', '_')}-other-than-seed{seed}-n{n_eval}"


def fit_task_map(
    task: str,
    sender: Model,
    receiver: Model,
    k: int,
    j: int,
    *,
    n_map: int,
    n_eval: int | None,
    seed: int = 0,
    epochs: int = 10,
    backend: str = "nnsight",
) -> LinearMap:
    """In-distribution ``W``, fitted on ``n_map`` items of ``task`` that a run of ``n_eval`` does not score.

    The paper fits it on GSM8k's train split, which no offline source ships;
    this fits it on :func:`other_items` of the run (seed ``seed``, ``n_eval``
    items), each read in the prompt format at its last token, where AC reads
    A and writes B (:func:`commlib.graft.fit_map` with ``prompts``).

    Example:
        >>> from commlib.models import load_model
        >>> a, b = load_model("tiny-llama-random"), load_model("tiny-llama-wide-random")
        >>> w = fit_task_map("gsm8k", a, b, 1, 1, n_map=8, n_eval=4)
        >>> w.weight.shape, w.info.corpus, w.info.n
        (torch.Size([96, 64]), 'gsm8k other items', 8)
    """
    from commlib.graft import fit_map
    from commlib.methods.reasoning import question_prompt
    from commlib.tasks.reasoning import load_task

    fitted = other_items(task, load_task(task, n_eval, seed), n_map, seed)
    return fit_map(sender, receiver, k, j, corpus=f"{task} other items", n=len(fitted), epochs=epochs,
                   backend=backend, prompts=[question_prompt(it) for it in fitted])  # fmt: skip


def reasoning_reference_states(
    task: str,
    receiver: Model,
    evaluated: Sequence[ReasoningItem],
    layers: Sequence[int],
    *,
    n_reference: int = 256,
    seed: int = 0,
    backend: str = "nnsight",
) -> dict[int, Tensor]:
    """B's own states after each of ``layers`` at the last prompt token of other items of ``task``; cached.

    The items are :func:`other_items` (never one of ``evaluated``), read in
    the prompt format as every reasoning method reads them. Layers not yet
    cached are captured in one pass over the items and cached per layer
    under the commlib cache directory, shared by every sender.

    Returns:
        Per layer, a tensor of shape (items, d_model).
    """
    from safetensors.torch import load_file, save_file

    from commlib.graft import capture_corpus
    from commlib.methods.reasoning import question_prompt
    from commlib.models import cache_dir

    reference = other_items(task, evaluated, n_reference, seed)
    name = other_items_name(task, seed, len(evaluated))
    paths = {j: cache_dir() / "reference" / receiver.name / f"{name}_L{j}_n{len(reference)}.safetensors"
             for j in layers}  # fmt: skip
    missing = sorted({j for j, path in paths.items() if not path.exists()})
    if missing:
        prompts = [question_prompt(it) for it in reference]
        captured = capture_corpus(receiver, prompts, missing, backend=backend, formatted=True,
                                  desc=f"{receiver.name} L{missing} on {task}")  # fmt: skip
        for j in missing:
            paths[j].parent.mkdir(parents=True, exist_ok=True)
            save_file({"states": captured[j].contiguous()}, str(paths[j]))
    return {j: load_file(str(paths[j]))["states"] for j in layers}


def run_reasoning_distance(
    task: str,
    sender: Model,
    receiver: Model,
    *,
    k: int,
    j: int,
    out_dir: str | Path,
    n: int | None = 100,
    seed: int = 0,
    n_reference: int = 256,
    map: LinearMap | None = None,
    backend: str = "nnsight",
) -> pd.DataFrame:
    """How far AC's grafted state sits from B's own states on a reasoning task, and how much it moves B.

    AC on a reasoning item (see :mod:`commlib.methods.reasoning`) writes
    ``f(a, b)`` (``replace``, the paper's width rule, or ``map``) into B's
    residual after block ``j`` at the last prompt token, where ``a`` is A's
    state after block ``k`` on the same prompt. This measures that state
    against B's own states there on ``n_reference`` other items of the task
    (drawn with :data:`REASONING_REFERENCE_SEED` + ``seed``, never one the run
    evaluates), with :class:`commlib.distance.Manifold` (raw metrics and
    percentiles: 50 is a typical state of B's, 100 beyond all), its
    displacement from B's own state, and the KL divergence it causes in B's
    first answer token. Source ``b`` is B's own state on the same items, the
    identity graft: displacement and KL 0, percentiles those of B's states.

    Forward passes only (no generation), so it is cheap next to the run it
    explains. Writes ``out_dir/distances.csv`` and ``out_dir/run.json``; a
    finished directory is read back. B's reference states are cached under
    the commlib cache directory, shared by every sender.

    Returns:
        One row per (item, source): ``item_id``, ``source`` (``ac`` or ``b``),
        the metrics of :meth:`commlib.distance.Manifold.table` with their
        ``_pct`` percentiles, ``displacement`` and ``next_token_kl``.

    Example:
        >>> import tempfile
        >>> from commlib.models import load_model
        >>> a, b = load_model("tiny-llama-random"), load_model("tiny-llama-wide-random")
        >>> with tempfile.TemporaryDirectory() as out:
        ...     t = run_reasoning_distance("gsm8k", a, b, k=1, j=1, out_dir=out, n=3, n_reference=16)
        >>> float(t.groupby("source")["displacement"].max()["b"])
        0.0
    """
    import torch

    from commlib.backends import get_backend
    from commlib.backends.base import check_layer
    from commlib.combine import combine
    from commlib.distance import Manifold, ReferenceSet, next_token_kl
    from commlib.graft import GraftConfig, capture_message, graft_edit
    from commlib.methods.reasoning import question_prompt
    from commlib.prompts import encode, message_positions
    from commlib.tasks.reasoning import load_task

    check_layer(sender, k, "k")
    check_layer(receiver, j, "j")
    if map is not None:
        map.check_pair(sender.name, receiver.name, k, j)
    items = load_task(task, n=n, seed=seed)
    reference = other_items(task, items, n_reference, seed)
    if len(reference) < 8:
        raise CommlibError(f"{task} has only {len(reference)} items beyond the {len(items)} evaluated: "
                           "too few to fit B's manifold; evaluate fewer items")  # fmt: skip
    out = Path(out_dir)
    settings = {"task": task, "sender": sender.name, "receiver": receiver.name, "k": k, "j": j,
                "f": "replace", "n": len(items), "seed": seed, "n_reference": len(reference),
                "backend": backend, "map": asdict(map.info) if map is not None else None}  # fmt: skip
    claim_run_dir(out, settings)
    path = out / "distances.csv"
    if path.exists():
        return pd.read_csv(path)
    states = reasoning_reference_states(task, receiver, items, [j], n_reference=n_reference, seed=seed,
                                        backend=backend)[j]  # fmt: skip
    n_held = max(2, len(states) // 4)
    manifold = Manifold.fit(ReferenceSet(fit=states[n_held:], held_out=states[:n_held], model=receiver.name,
                                         layer=j, corpus=f"{task} prompts", seed=seed))  # fmt: skip
    prompts = [question_prompt(it) for it in items]
    rb = get_backend(receiver, backend)
    a = capture_message(get_backend(sender, backend), prompts, k).float().cpu()
    b = capture_message(rb, prompts, j).float().cpu()
    batch = encode(receiver, prompts)
    last = message_positions(receiver, prompts, batch, "last")  # the final column: the batch is left-padded
    edit = graft_edit(a, last, GraftConfig(k=k, j=j, f="replace"), map)
    with torch.no_grad():  # B's next-token logits only (a full vocabulary at every position is GBs)
        plain, grafted = (rb.forward(batch, e, last_only=True)[0][:, -1].float().cpu() for e in (None, edit))
    tables = []
    for source, x, logits in (("ac", combine(a, b, "replace", map=map), grafted), ("b", b, plain)):
        table = manifold.table(x, b)
        table.insert(0, "source", source)
        table.insert(0, "item_id", [it.id for it in items])
        table["next_token_kl"] = next_token_kl(plain, logits).cpu().numpy()
        tables.append(table)
    result = pd.concat(tables, ignore_index=True)
    result.to_csv(path, index=False)
    return result


def run_latent_distance(
    game: str,
    sender: Model,
    receiver: Model,
    methods: Sequence[str],
    *,
    out_dir: str | Path,
    n: int | None = 20,
    seed: int = 0,
    n_reference: int = 3072,
    message_tokens: int = 48,
    progress: bool = True,
) -> pd.DataFrame:
    """How far latent messages sit from B's own input embeddings, per item and method.

    For each latent method (``cipher-t<T>``, ``interlat``, ``interlat-norm``,
    a registered ``interlat-trained``), the vectors B would read are measured
    against B's input embeddings of corpus tokens
    (:func:`commlib.distance.input_reference`), each metric the mean over the
    message's vectors, raw and as a percentile (50: a typical token of B's;
    100: beyond all). ``cipher-t0`` is the text message itself (real token
    embeddings). Writes ``out_dir/latent_distances.csv`` (resumes) and
    ``out_dir/run.json``.

    Raises:
        CommlibError: a method that sends no vectors (use the latent ones).
    """
    from tqdm.auto import tqdm

    from commlib.distance import Manifold, input_reference
    from commlib.methods import SlotMethod

    makers = {}
    for name in methods:
        fn = method_fn(name)
        if not isinstance(fn, SlotMethod):
            raise CommlibError(f"{name} sends no vectors; use cipher-t<T> or interlat(-norm, -trained)")
        makers[name] = fn.make
    items = load_game(game, n=n, seed=seed)
    out = Path(out_dir)
    claim_run_dir(out, {"game": game, "sender": sender.name, "receiver": receiver.name,
                        "n": len(items), "seed": seed, "n_reference": n_reference,
                        "message_tokens": message_tokens})  # fmt: skip
    path = out / "latent_distances.csv"
    done: set[tuple[str, str]] = set()
    if path.exists():
        finished = pd.read_csv(path)
        done = set(zip(finished["item_id"].astype(str), finished["method"], strict=True))
    manifold = Manifold.fit(input_reference(receiver, n=n_reference, seed=seed))
    cfg = MethodConfig(k=None, j=None, message_tokens=message_tokens)
    for item in tqdm(items, desc="latent distance", disable=not progress):
        rows = []
        for name, make in makers.items():
            if (item.id, name) in done:
                continue
            vectors, text = make(item, sender, receiver, cfg)
            if len(vectors) == 0:
                continue
            table = manifold.table(vectors.detach().float().cpu()).mean()
            rows.append({"item_id": item.id, "method": name, "length": len(vectors), **table.to_dict(),
                         "message": text})  # fmt: skip
        if rows:
            pd.DataFrame(rows).to_csv(path, mode="a", header=not path.exists(), index=False)
    return pd.read_csv(path)


N_SWEEP_DISTANCES = (
    "norm_ratio", "log_norm_ratio", "mahalanobis", "mahalanobis_pca", "pca_residual", "knn_euclidean",
    "knn_cosine", "displacement", "log_norm_ratio_pct", "mahalanobis_pct", "mahalanobis_pca_pct",
    "pca_residual_pct", "knn_euclidean_pct", "knn_cosine_pct",
)  # fmt: skip
"""Distance columns of the sweep over n (:meth:`commlib.distance.Manifold.table`; mean over the injected)."""

N_SWEEP_FIELDS = (
    "item_id", "method", "n", "n_sent", "answer", "output", "message", "correct", "exact", *N_SWEEP_DISTANCES,
    "flops", "seconds", "sender_seconds",
)  # fmt: skip


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

    Each method is a series of :mod:`commlib.methods.series` (its docstring
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
        adapter: ``interlat-trained``'s directory (from :func:`commlib.methods.interlat.train_adapter`).
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
    from commlib.methods.series import ALL, adapter_identity, parse_ns, series_for

    if reference not in REFERENCES:
        raise CommlibError(f"unknown reference {reference!r}; use {', '.join(REFERENCES)}")
    labels = parse_ns(ns)
    cfg = MethodConfig(k=k, j=j, position=position, max_new_tokens=max_new_tokens,
                       message_tokens=message_tokens, backend=backend)  # fmt: skip
    series = {m: series_for(m, sender, receiver, cfg, adapter=adapter) for m in dict.fromkeys(methods)}
    items = load_game(game, n=n, seed=seed)
    for s in series.values():
        s.check(items, [v for _, v in labels if v is not None])
    identity = adapter_identity(adapter) if adapter is not None else None
    out = Path(out_dir)
    claim_run_dir(out, {"game": game, "seed": seed, "n": len(items), "sender": sender.name,
                        "receiver": receiver.name, **asdict(cfg), "n_reference": n_reference,
                        "reference": reference, "adapter": identity})  # fmt: skip
    path = out / "items.csv"
    done: set[tuple[str, str, str]] = set()
    if path.exists():
        finished = pd.read_csv(path, dtype={"item_id": str, "n": str})
        done = set(zip(finished["item_id"], finished["method"], finished["n"], strict=True))
    manifolds: dict[str, Any] = {}

    def manifold(kind: str) -> Any:  # fitted on first use only: a finished run needs neither
        if kind == "layer" and kind not in manifolds:
            assert j is not None  # the AC series refuse a run without j
            manifolds[kind] = _layer_manifold(receiver, j, items, game, reference, n_reference=n_reference,
                                              seed=seed, position=position, backend=backend)  # fmt: skip
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
                append_rows(path, N_SWEEP_FIELDS, [{
                    "item_id": item.id, "method": name, "n": label, "n_sent": p.n_sent, "answer": item.answer,
                    "output": p.text, "message": p.message, "exact": exact_match(p.text, item.answer),
                    "correct": contains_answer(p.text, item.answer, item.choices), **distances,
                    "flops": p.flops, "seconds": p.seconds, "sender_seconds": p.sender_seconds,
                }])  # fmt: skip
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
            points[label] = _finite({
                "accuracy": float(correct.mean()), "ci_low": lo, "ci_high": hi,  # NaN when no rows
                "exact_match": float(sub["exact"].astype(str).isin(["True", "1"]).mean()),
                "n_items": len(sub), "n_sent": float(sub["n_sent"].mean()),
                **{f"median_{c}": float(sub[c].median()) for c in N_SWEEP_DISTANCES},
                "flops": float(sub["flops"].mean()), "seconds": float(sub["seconds"].mean()),
                "sender_seconds": float(sub["sender_seconds"].mean()),
                "gain": gain, "gain_ci_low": gain_lo, "gain_ci_high": gain_hi,
            })  # fmt: skip
        summary[name] = {"what_n_is": s.description, "unit": s.unit, "trained": s.trained,
                         "distance_reference": s.reference, **s.identity(), "points": points}  # fmt: skip
    example = items[0]
    result = {
        "game": game,
        "methods": summary,
        "config": {
            "sender": sender.info.to_dict(), "receiver": receiver.info.to_dict(), **asdict(cfg),
            "n": len(items), "seed": seed, "ns": [label for label, _ in labels], "all": ALL,
            "adapter": None if adapter is None else {"dir": str(adapter), **(identity or {})},
            "n_reference": n_reference, "reference": reference,
            "distance_references": {
                "layer": f"B's residuals after block {j}, {reference} reference ({n_reference}; "
                         "a quarter held out for the percentiles; see run_distance)",
                "input": f"B's input embeddings of {n_reference} LAMBADA token occurrences "
                         "(a quarter held out)",
            },
            "distances": "per item the mean over its injected states; per point the median over items; "
                         "percentiles against B's held-out own states (50 typical, 100 beyond all)",
            "example_prompts": {"sender": format_prompt(sender, example.sender),
                                "receiver": format_prompt(receiver, example.receiver, reply=example.reply)},
            "decoding": "greedy", "scoring": "answer in the first answer line, case-insensitive",
            "ci": "95% percentile bootstrap, 1000 resamples",
            "gain": f"paired over items: accuracy at this n minus at n = {labels[0][0]} (the first swept), "
                    "95% percentile bootstrap of the per-item differences",
            "flops": "analytic, KV cache: compute.method_flops (AC; B alone at n = 0) and compute.slot_flops "
                     "(latent); B's answer length re-tokenised from its text",
            "seconds": "wall time of B's answer; sender_seconds of A's message (shared across n, except "
                       "CIPHER's steps after n; ~0 where another series of the call made the same message, "
                       "as the Interlat variants share A's trajectory)",
            "device": str(receiver.device), "torch_threads": torch.get_num_threads(),
            "wall_seconds_this_call": _time.perf_counter() - started, "versions": package_versions(),
        },
    }  # fmt: skip
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
        {"method": name, "n": label, "x": order[label], "unit": m["unit"], "trained": m["trained"],
         "distance_reference": m["distance_reference"], **point}
        for name, m in result["methods"].items()
        for label, point in m["points"].items()
    ]  # fmt: skip
    return pd.DataFrame(rows).astype({"x": int})


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

    For each K a :class:`commlib.methods.interlat.LatentCompressor` is
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
    from commlib.methods import interlat_compressed, interlat_trained, register_method
    from commlib.methods.interlat import load_adapter, load_compressor, train_compressor

    if not ks or min(ks) < 1:
        raise CommlibError(f"compress to at least one vector: got K = {list(ks)}")
    _, base = load_adapter(adapter_dir)
    out = Path(out_dir)
    full = "interlat-trained"
    register_method(full, interlat_trained(str(adapter_dir)))
    names: dict[int | None, str] = {None: full}
    losses: dict[int | None, tuple[float, ...]] = {None: ()}  # the whole trajectory trains no compressor
    for size in ks:
        where = out / f"compressor_k{size}"
        train_compressor(sender, receiver, adapter_dir, where, k=size, steps=steps, lr=lr,
                         ce_weight=ce_weight, progress=progress)  # fmt: skip
        names[size] = f"interlat-compressed-k{size}"
        register_method(names[size], interlat_compressed(str(where)))
        losses[size] = load_compressor(where)[2].losses
    methods = list(names.values())
    evaluated = run_games(game, sender, receiver, methods, k=None, j=None, out_dir=out / "eval", n=n,
                          seed=seed, max_new_tokens=max_new_tokens, progress=progress)["methods"]  # fmt: skip
    distances = run_latent_distance(game, sender, receiver, methods, out_dir=out / "distance", n=n, seed=seed,
                                    n_reference=n_reference, message_tokens=base.message_tokens,
                                    progress=progress)  # fmt: skip
    rows = pd.read_csv(out / "eval" / "items.csv", dtype={"item_id": str})
    whole = _correct_by_item(rows[rows["method"] == full])
    table = []
    for k, name in names.items():
        gain, lo, hi = paired_difference(_correct_by_item(rows[rows["method"] == name]), whole, seed=seed)
        dist = distances[distances["method"] == name]
        trained = losses[k]
        table.append({
            "method": name, "K": float(k) if k is not None else float(dist["length"].mean() - 2),
            **{key: evaluated[name][key] for key in ("accuracy", "ci_low", "ci_high", "n")},
            "gain": gain, "gain_ci_low": lo, "gain_ci_high": hi,
            "median_mahalanobis_pct": float(dist["mahalanobis_pct"].median()),
            "median_norm_ratio": float(dist["norm_ratio"].median()),
            "loss_first": float(np.mean(trained[:30])) if trained else float("nan"),
            "loss_last": float(np.mean(trained[-30:])) if trained else float("nan"),
        })  # fmt: skip
    return pd.DataFrame(table)
