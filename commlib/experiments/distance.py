"""How far does a graft move B off its own states? Distances of grafted and control states."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from commlib.backends import get_backend
from commlib.combine import LinearMap, combine
from commlib.config import CONTROLS as CONTROLS
from commlib.config import REFERENCES as REFERENCES
from commlib.config import ReferenceSpec
from commlib.distance import (
    TASK_CORPUS,
    Manifold,
    covariance_matched,
    input_reference,
    manifold_for,
    next_token_kl,
    random_directions,
    reference_activations,
)
from commlib.errors import CommlibError
from commlib.graft import capture_span
from commlib.models import Model
from commlib.prompts import Position
from commlib.protocols.games import MethodConfig, SlotMethod, method_fn
from commlib.registry import check_methods
from commlib.results import Run, placement
from commlib.sweep import ReceiverItem
from commlib.tasks.games import GameItem, load_game


def _control_sources(
    a: Tensor,
    sender: Model,
    k: int,
    controls: Sequence[str],
    ref: ReferenceSpec,
    *,
    seed: int,
    backend: str,
) -> dict[str, Tensor]:
    """A's states ``[items, n, d]`` and the requested :data:`CONTROLS` in their place.

    A's reference ``ref`` is captured only for ``gaussian``; ``unrelated``
    takes the states of the previous item (all n positions).
    """
    g = torch.Generator().manual_seed(seed)
    rows = a.reshape(-1, a.shape[-1])
    norms = rows.norm(dim=-1, keepdim=True)
    sources = {"a": a}
    if "random" in controls:
        sources["random"] = random_directions(norms, a.shape[-1], g).reshape(a.shape)
    if "gaussian" in controls:
        fit = reference_activations(sender, k, ref, backend=backend).fit
        gauss = covariance_matched(fit, len(rows), g)
        sources["gaussian"] = (gauss / gauss.norm(dim=-1, keepdim=True) * norms).reshape(a.shape)
    if "unrelated" in controls:
        sources["unrelated"] = a.roll(1, dims=0)
    return sources


def reference_spec(
    game: str,
    reference: str,
    *,
    n_reference: int,
    seed: int,
    position: Position,
    reply: str = "",
    corpus: str = "lambada",
) -> ReferenceSpec:
    """The states :func:`run_distance`'s ``reference`` choice names: ``corpus`` raw, formatted, or the game's.

    Example:
        >>> reference_spec("countries", "task", n_reference=300, seed=0, position="last").corpus
        'task:countries'
    """
    return ReferenceSpec(
        corpus=f"{TASK_CORPUS}{game}" if reference == "task" else corpus,
        n=n_reference,
        seed=seed,
        formatted=reference != "corpus",
        position=position,
        reply=reply,
    )


def layer_manifold(
    receiver: Model,
    j: int,
    items: Sequence[GameItem],
    game: str,
    reference: str,
    *,
    n_reference: int,
    seed: int,
    position: Position,
    backend: str,
    corpus: str = "lambada",
) -> Manifold:
    """B's manifold after block ``j`` for :func:`run_distance`'s ``reference`` (cached on disk).

    The ``prompt`` reference reads each sentence followed by the first item's reply.
    """
    reply = items[0].reply if reference == "prompt" else ""
    ref = reference_spec(
        game, reference, n_reference=n_reference, seed=seed, position=position, reply=reply, corpus=corpus
    )
    return manifold_for(receiver, j, ref, backend=backend)


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
    check_reference(reference)
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise CommlibError(f"unknown control(s) {', '.join(unknown)}; use {', '.join(CONTROLS)}")
    items = load_game(game, n=n, seed=seed)
    settings = {
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
        "placement": placement(sender=sender, receiver=receiver),  # dtype, attention: compared on resume
    }
    run = Run(out_dir, settings, fields=None, table="distances.csv")  # columns: the manifold's metrics
    manifold = layer_manifold(
        receiver,
        j,
        items,
        game,
        reference,
        n_reference=n_reference,
        seed=seed,
        position=position,
        backend=backend,
        corpus=corpus,
    )
    grafts = [
        {"f": f, "alpha": alpha, "match_norm": norm} for f in fs for alpha in alphas for norm in match_norm
    ]
    for n_pos in n_positions:
        finished = run.done(n_positions=n_pos)
        if all(it.id in finished for it in items):
            continue
        a, b = _capture(sender, receiver, items, k, j, position=position, n_positions=n_pos, backend=backend)
        sources = _control_sources(
            a,
            sender,
            k,
            controls,
            reference_spec(
                game, reference, n_reference=n_reference, seed=seed, position=position, corpus=corpus
            ),
            seed=seed,
            backend=backend,
        )
        configs = [{"source": source, **graft} for source in ("a", *controls) for graft in grafts]
        states, tables = _grafted_states(sources, b, configs, manifold, map)
        for i, item in enumerate(tqdm(items, desc=f"distance n={n_pos}", disable=not progress)):
            if item.id in finished:
                continue
            rx = ReceiverItem(receiver, item, position=position, n_positions=n_pos, backend=backend)
            scores = _receiver_scores(rx, j, states[i], len(configs))
            run.add(
                {"item_id": item.id, "n_positions": n_pos, **cfg, **tables[c].iloc[i].to_dict(), **scores[c]}
                for c, cfg in enumerate(configs)
            )
    return run.frame()


def check_reference(reference: str) -> None:
    """Refuse a distance reference that is not one of :data:`REFERENCES`.

    Raises:
        CommlibError: an unknown reference.

    Example:
        >>> check_reference("nearby")
        Traceback (most recent call last):
        ...
        commlib.errors.CommlibError: unknown reference 'nearby'; use corpus, prompt, task
    """
    if reference not in REFERENCES:
        raise CommlibError(f"unknown reference {reference!r}; use {', '.join(REFERENCES)}")


def _capture(
    sender: Model,
    receiver: Model,
    items: Sequence[GameItem],
    k: int,
    j: int,
    *,
    position: Position,
    n_positions: int,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """A's states after block ``k`` and B's after block ``j`` at the message span, ``[items, n, d]`` each."""
    a = capture_span(get_backend(sender, backend), [it.sender for it in items], k, position, n_positions)
    b = capture_span(
        get_backend(receiver, backend),
        [it.receiver for it in items],
        j,
        position,
        n_positions,
        replies=[it.reply for it in items],
    )
    return a.float().cpu(), b.float().cpu()


def _grafted_states(
    sources: dict[str, Tensor],
    b: Tensor,
    configs: Sequence[dict[str, Any]],
    manifold: Manifold,
    map: LinearMap | None,
) -> tuple[Tensor, list[pd.DataFrame]]:
    """What the graft writes per configuration, ``[items, configs, n, d_B]``, and its distances.

    One table per configuration, a row per item: each distance the mean over
    the item's n positions (vectorised over items).
    """
    states, tables = [], []
    item_of_row = np.repeat(np.arange(b.shape[0]), b.shape[1])
    for cfg in configs:
        x = combine(
            sources[cfg["source"]], b, cfg["f"], map=map, alpha=cfg["alpha"], match_norm=cfg["match_norm"]
        )
        states.append(x)
        flat = manifold.table(x.reshape(-1, x.shape[-1]), b.reshape(-1, b.shape[-1]))
        tables.append(flat.groupby(item_of_row).mean())
    return torch.stack(states, dim=1), tables


def _receiver_scores(rx: ReceiverItem, j: int, states: Tensor, rows: int) -> list[dict[str, Any]]:
    """B's answer with each of ``states`` (``[configs, n, d_B]``) written at block ``j``, next to B alone.

    One batched receiver pass: per configuration the KL divergence it causes in
    B's next-token distribution, the answer's log-prob, the greedy-answer flag,
    B alone's, and the log-prob gain.
    """
    scores = rx.score(j, _writes(states), rows)
    kl = next_token_kl(rx.silent_next_logits.expand_as(scores.next_logits), scores.next_logits)
    return [
        {
            "next_token_kl": float(kl[c]),
            "answer_logprob": float(scores.answer_logprob[c]),
            "greedy_answer": bool(scores.greedy_answer[c]),
            "silent_logprob": rx.silent_logprob,
            "silent_greedy_answer": rx.silent_greedy_answer,
            "logprob_gain": float(scores.answer_logprob[c]) - rx.silent_logprob,
        }
        for c in range(rows)
    ]


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
    makers = {}
    for name in check_methods(methods, "games"):
        fn = method_fn(name)
        if not isinstance(fn, SlotMethod):
            raise CommlibError(f"{name} sends no vectors; use cipher-t<T> or interlat(-norm, -trained)")
        makers[name] = fn.make
    items = load_game(game, n=n, seed=seed)
    settings = {
        "game": game,
        "sender": sender.name,
        "receiver": receiver.name,
        "n": len(items),
        "seed": seed,
        "n_reference": n_reference,
        "message_tokens": message_tokens,
        "placement": placement(sender=sender, receiver=receiver),  # dtype, attention: compared on resume
    }
    run = Run(out_dir, settings, fields=None, table="latent_distances.csv")  # columns: the manifold's metrics
    finished = run.done("item_id", "method")
    manifold = Manifold.fit(input_reference(receiver, ReferenceSpec(n=n_reference, seed=seed)))
    cfg = MethodConfig(k=None, j=None, message_tokens=message_tokens)
    for item in tqdm(items, desc="latent distance", disable=not progress):
        rows = []
        for name, make in makers.items():
            if (item.id, name) in finished:
                continue
            vectors, text = make(item, sender, receiver, cfg)
            if len(vectors) == 0:
                continue
            table = manifold.table(vectors.detach().float().cpu()).mean()
            rows.append(
                {
                    "item_id": item.id,
                    "method": name,
                    "length": len(vectors),
                    **table.to_dict(),
                    "message": text,
                }
            )
        run.add(rows)
    return run.frame()
