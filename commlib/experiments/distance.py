"""How far does a graft move B off its own states? Distances of grafted and control states."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from torch import Tensor

if TYPE_CHECKING:
    from commlib.distance import Manifold

from commlib.combine import LinearMap
from commlib.errors import CommlibError
from commlib.models import Model
from commlib.prompts import Position
from commlib.protocols.games import MethodConfig, method_fn
from commlib.registry import check_methods
from commlib.results import (
    claim_run_dir,
)
from commlib.tasks.games import GameItem, load_game

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
    """B's manifold after block ``j`` for :func:`run_distance`'s ``reference`` (cached on disk)."""
    from commlib.distance import manifold_for

    ref_corpus = _reference_corpus(game, reference, corpus)
    reply = items[0].reply if reference == "prompt" else ""
    return manifold_for(
        receiver,
        j,
        corpus=ref_corpus,
        n=n_reference,
        seed=seed,
        backend=backend,
        formatted=reference != "corpus",
        position=position,
        reply=reply,
    )


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
    manifold = _layer_manifold(
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
    sb, rb = get_backend(sender, backend), get_backend(receiver, backend)
    s_prompts = [it.sender for it in items]
    r_prompts, replies = [it.receiver for it in items], [it.reply for it in items]
    for n_pos in n_positions:
        if all((it.id, n_pos) in done for it in items):
            continue
        a = capture_span(sb, s_prompts, k, position, n_pos).float().cpu()  # [items, n, d_A]
        b = capture_span(rb, r_prompts, j, position, n_pos, replies=replies).float().cpu()
        sources = _control_sources(
            a,
            sender,
            k,
            controls,
            n_reference=n_reference,
            seed=seed,
            backend=backend,
            corpus=ref_corpus,
            formatted=formatted,
            position=position,
        )
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
    from commlib.protocols.games import SlotMethod

    makers = {}
    for name in check_methods(methods, "games"):
        fn = method_fn(name)
        if not isinstance(fn, SlotMethod):
            raise CommlibError(f"{name} sends no vectors; use cipher-t<T> or interlat(-norm, -trained)")
        makers[name] = fn.make
    items = load_game(game, n=n, seed=seed)
    out = Path(out_dir)
    claim_run_dir(
        out,
        {
            "game": game,
            "sender": sender.name,
            "receiver": receiver.name,
            "n": len(items),
            "seed": seed,
            "n_reference": n_reference,
            "message_tokens": message_tokens,
        },
    )
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
            rows.append(
                {
                    "item_id": item.id,
                    "method": name,
                    "length": len(vectors),
                    **table.to_dict(),
                    "message": text,
                }
            )
        if rows:
            pd.DataFrame(rows).to_csv(path, mode="a", header=not path.exists(), index=False)
    return pd.read_csv(path)
