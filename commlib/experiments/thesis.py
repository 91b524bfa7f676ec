"""Does a message get through? Every channel against its content control, on one distance axis.

The controlled experiment behind commlib's two questions (issue 24):

1. **Pools.** Selection and test items share no content
   (:func:`commlib.tasks.pools.make_pools`; a run refuses an overlap).
2. **Controls.** Every channel runs twice per test item: carrying A's
   message about the item (``own``) and, in the same format, A's message
   about another test item with another answer (``control``; a derangement
   fixed by the seed, :func:`commlib.tasks.pools.derangement`). A channel
   carries the message only as far as ``own`` beats ``control``.
3. **Depth.** AC's (k, j) is chosen on the selection pool by gain over the
   control (:func:`commlib.experiments.selection.select_depth`); AC also runs
   at the paper's depth (0.8 of both models), whatever selection says. ``kv``
   runs with every layer reading A's cache and, with ``kv_layers``, at a set
   of layers (KVComm's rule on the selection pool, or given).
   ``kv-fuser``'s fuser trains on the selection pool only.
4. **One distance axis**, measured on B at the answer position for every
   channel alike: the KL of B's next-token distribution against B alone,
   and the displacement of the state B's unembedding reads, in units of B's
   own item-to-item spread (:func:`commlib.protocols.readings.distance`).

Everything lands per item in ``DIR/items.csv`` (resumable, a crash loses
no finished row) and is summarised from that file alone into
``DIR/summary.csv`` (:mod:`commlib.experiments.thesis_results`).

Example:
    >>> import tempfile
    >>> from commlib.models import load_model
    >>> m = load_model("tiny-llama-random")
    >>> with tempfile.TemporaryDirectory() as out:
    ...     s = run_thesis("countries", m, m, ["silent", "nl", "ac-replace"], n=4, n_selection=4,
    ...                    out_dir=out, grid=2, message_tokens=3, max_new_tokens=2, progress=False)
    >>> sorted(s["channel"])
    ['ac-replace@paper', 'ac-replace@selected', 'nl', 'silent']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from commlib.channels.fuser import KVFuser, check_fuser, fuser_record, train_fuser
from commlib.channels.interlat import InterlatAdapter, check_zero_shot_pair, train_adapter
from commlib.channels.kv import KVCOMM_FRACTION, check_kv_pair, kv_messages, kvcomm_importance, kvcomm_layers
from commlib.channels.slot import Reading, message_prompt
from commlib.channels.vocab import vocabulary_settings
from commlib.combine import LinearMap
from commlib.config import THESIS_DEFAULT_CHANNELS
from commlib.errors import CommlibError
from commlib.experiments.selection import PAPER_DEPTH, paper_layers, select_depth
from commlib.experiments.thesis_results import merge_record, previous_record, summarise_thesis
from commlib.graft import fit_map
from commlib.models import Model
from commlib.prompts import encode
from commlib.protocols.readings import (
    Condition,
    SenderSide,
    SideNeeds,
    check_channel,
    distance,
    read,
    sender_side,
    spread,
)
from commlib.results import (
    Run,
    contains_answer,
    package_versions,
    placement,
)
from commlib.tasks.games import GameItem
from commlib.tasks.pools import Pools, control_item, derangement, make_pools

DEFAULT_CHANNELS = THESIS_DEFAULT_CHANNELS
"""What ``commlib thesis`` runs unless told otherwise (``interlat-trained`` trains an adapter first)."""
ITEM_FIELDS = (
    "item_id",
    "method",
    "depth",
    "k",
    "j",
    "message",
    "donor_id",
    "answer",
    "donor_answer",
    "output",
    "correct",
    "follows_donor",
    "kl",
    "shift",
    "displacement",
    "sent",
)
"""Columns of ``items.csv``: one row per test item, channel and message (own, control; none for silent)."""


def conditions(
    channels: Sequence[str],
    *,
    selected: tuple[int, int] | None,
    paper: tuple[int, int],
    kv_layers: tuple[str, tuple[int, ...]] | None = None,
) -> list[Condition]:
    """The conditions ``channels`` expand to: AC at the selected and the paper's depth, AC(W) at the paper's.

    ``kv`` reads A's cache at every layer (``kv@all``) and, given
    ``kv_layers`` (a name and B's layers), at those layers only.

    Example:
        >>> [c.name for c in conditions(["silent", "ac-mean", "ac-w-replace"], selected=(1, 2), paper=(3, 3))]
        ['silent', 'ac-mean@selected', 'ac-mean@paper', 'ac-w-replace@paper']
        >>> [c.name for c in conditions(["kv", "latent-steps"], selected=None, paper=(3, 3),
        ...                             kv_layers=("kvcomm0.3", (2,)))]
        ['kv@all', 'kv@kvcomm0.3', 'latent-steps-m8']
    """
    out: list[Condition] = []
    for name in dict.fromkeys(check_channel(c) for c in channels):
        if name == "kv":
            out.append(Condition(name, "all"))
            if kv_layers is not None:
                out.append(Condition(name, kv_layers[0], layers=kv_layers[1]))
        elif name.startswith("ac-w-"):
            out.append(Condition(name, "paper", *paper))
        elif name.startswith("ac-"):
            if selected is not None:
                out.append(Condition(name, "selected", *selected))
            out.append(Condition(name, "paper", *paper))
        else:
            out.append(Condition(name))
    return out


def run_thesis(
    game: str,
    sender: Model,
    receiver: Model,
    channels: Sequence[str] = DEFAULT_CHANNELS,
    *,
    out_dir: str | Path,
    n: int = 200,
    n_selection: int | None = None,
    seed: int = 0,
    selection_fraction: float | None = None,
    selection_file: str | None = None,
    depth_items: int = 32,
    grid: int = 7,
    paper_depth: float = PAPER_DEPTH,
    map: LinearMap | None = None,
    map_sentences: int = 1024,
    adapter: InterlatAdapter | None = None,
    adapter_items: int = 100,
    adapter_steps: int = 300,
    fuser: KVFuser | None = None,
    fuser_items: int = 100,
    fuser_steps: int = 300,
    kv_layers: str = "all",
    message_tokens: int = 32,
    max_new_tokens: int = 6,
    chunk: int = 16,
    backend: str = "nnsight",
    progress: bool = True,
) -> pd.DataFrame:
    """Run the controlled experiment on ``game`` and return (and write) its summary.

    Args:
        game: ``countries``, ``tipsheets`` or a JSONL task (then give
            ``selection_fraction`` or ``selection_file``).
        sender: A.
        receiver: B.
        channels: Channels to run (:data:`DEFAULT_CHANNELS`); adding one to a
            finished run computes only its rows.
        out_dir: The run directory.
        n: Test items.
        n_selection: Selection items (default: the rest of the task).
        seed: Fixes the pools, names and the control derangement.
        depth_items: Selection items AC's depth is chosen on.
        grid: Blocks per axis in the depth search.
        paper_depth: The paper's relative depth.
        map: W for ``ac-w-*`` at the paper's depth; by default fitted here
            (:func:`commlib.graft.fit_map`) on ``map_sentences`` LAMBADA
            sentences and kept in ``out_dir/map/``.
        map_sentences: Sentences W is fitted on.
        adapter: The Interlat adapter for ``interlat-trained``; by default
            trained here (:func:`commlib.channels.interlat.train_adapter`) on
            ``adapter_items`` selection items for ``adapter_steps`` steps and
            kept in ``out_dir/adapter/`` (resumable).
        adapter_items: Selection items the adapter trains on.
        adapter_steps: Its training steps.
        fuser: The fuser for ``kv-fuser``; by default trained here
            (:func:`commlib.channels.fuser.train_fuser`) on ``fuser_items``
            selection items for ``fuser_steps`` steps and kept in ``out_dir/fuser/`` (resumable).
        fuser_items: Selection items the fuser trains on.
        fuser_steps: Its training steps.
        kv_layers: Where ``kv`` also runs besides every layer (:func:`kv_layer_spec`):
            ``all`` (nowhere else), ``kvcomm[:FRACTION]`` (KVComm's selection on
            ``depth_items`` selection items, cached in ``out_dir/kv_layers.json``)
            or B's layers (``3,5,7``).
        message_tokens: Length of A's message (NL, CIPHER, Interlat).
        max_new_tokens: Tokens B answers with (the answer follows the reply).
        chunk: Test items per batch of work (every channel advances together).
        backend: ``nnsight`` or ``transformer-lens``.
        progress: Show progress bars.

    Returns:
        :func:`summarise_thesis` of the run's rows.
    """
    names = [check_channel(c) for c in channels]
    kv_spec = kv_layer_spec(kv_layers)
    kv = [c for c in names if Condition(c).latent_steps is not None]
    if kv:
        check_kv_pair(sender, receiver)
    check_zero_shot_pair(names, sender, receiver)
    pools = make_pools(
        game, n_test=n, n_selection=n_selection, seed=seed,
        selection_fraction=selection_fraction, selection_file=selection_file,
    )  # fmt: skip
    test = list(pools.test)
    paper = paper_layers(sender.info.n_layers, receiver.info.n_layers, paper_depth)
    settings = {
        "experiment": "thesis",
        "game": game,
        "sender": sender.name,
        "receiver": receiver.name,
        "seed": seed,
        "pools": pools.record(),
        "paper_depth": paper_depth,
        "message_tokens": message_tokens,
        "max_new_tokens": max_new_tokens,
        "backend": backend,
        "placement": placement(sender=sender, receiver=receiver),  # dtype, attention: compared on resume
    }
    settings.update(vocabulary_settings(names, sender, receiver))  # or refused, before any work
    run = Run(out_dir, settings, fields=ITEM_FIELDS)
    selected = None
    if any(c.startswith("ac-") and not c.startswith("ac-w-") for c in names):
        selected = _selected_depth(
            sender, receiver, pools, run.dir, depth_items, grid, seed, backend, progress
        )
    kv_chosen = None
    if "kv" in names and kv_spec is not None:
        kv_chosen = _kv_layers(kv_spec, sender, receiver, pools, run.dir, depth_items)
    conds = conditions(names, selected=selected, paper=paper, kv_layers=kv_chosen)
    if any(c.method.startswith("ac-w-") for c in conds):
        map = map or _paper_map(sender, receiver, paper, run.dir, map_sentences, seed, backend)
        map.check_pair(sender.name, receiver.name, *paper)
    if any(c.method == "interlat-trained" for c in conds) and adapter is None:
        adapter = _selection_adapter(
            sender, receiver, pools, run.dir, adapter_items, adapter_steps, message_tokens, seed, progress
        )
    if any(c.method == "kv-fuser" for c in conds):
        if fuser is None:
            fuser = _selection_fuser(
                sender, receiver, pools, run.dir, fuser_items, fuser_steps, seed, progress
            )
        check_fuser(fuser, sender, receiver)
    donors = derangement(test, seed)
    alone = _silent(run, test, sender, receiver, max_new_tokens, backend, progress)
    scale = spread(list(alone.values()))
    if scale == 0:
        tqdm.write("B reads the same prompt on every test item: no item-to-item spread, displacement is nan")
    for start in tqdm(range(0, len(test), chunk), desc="test items", disable=not progress):
        rows = list(range(start, min(start + chunk, len(test))))
        _run_chunk(run, conds, test, rows, donors, alone, scale, sender, receiver, map, adapter,
                   message_tokens, max_new_tokens, backend, fuser)  # fmt: skip
    summary = summarise_thesis(run.frame(dtype=str), seed=seed)
    summary.to_csv(run.dir / "summary.csv", index=False)
    run.write(
        merge_record(
            previous_record(run.dir),
            {
                "settings": settings,
                "pool_ids": {"selection": [it.id for it in pools.selection], "test": [it.id for it in test]},
                "conditions": [asdict(c) | {"name": c.name} for c in conds],
                "paper_layers": list(paper),
                "selected_layers": list(selected) if selected else None,
                "kv_layers": {"name": kv_chosen[0], "layers": list(kv_chosen[1])} if kv_chosen else None,
                "spread": scale,
                "map": asdict(map.info) if map is not None else None,
                "adapter": {"items": adapter_items, "steps": adapter_steps} if adapter is not None else None,
                "fuser": fuser_record(fuser) if fuser is not None else None,
                "versions": package_versions(),
                "placement": placement(sender=sender, receiver=receiver),
                "summary": summary.to_dict("records"),
            },
        )
    )
    return summary


def _selected_depth(
    sender: Model, receiver: Model, pools: Pools, out: Path, depth_items: int, grid: int, seed: int,
    backend: str, progress: bool,
) -> tuple[int, int]:  # fmt: skip
    """AC's (k, j) chosen on the selection pool (cached in ``out/selection.json``)."""
    items = list(pools.selection[:depth_items])
    if len(items) < 2:
        raise CommlibError("choosing AC's depth needs at least 2 selection items: raise --n-selection")
    choice = select_depth(
        sender,
        receiver,
        items,
        derangement(items, seed),
        out_dir=out,
        grid=grid,
        backend=backend,
        progress=progress,
    )
    (out / "selection.json").write_text(pd.Series(choice).to_json(indent=1))
    return choice["k"], choice["j"]


def _paper_map(
    sender: Model, receiver: Model, paper: tuple[int, int], out: Path, n: int, seed: int, backend: str
) -> LinearMap:
    """W at the paper's depth on general text as the paper does, but by ridge (cached in ``out/map/``).

    The closed-form ridge with a bias (:func:`commlib.combine.fit_ridge_map`)
    is a stated deviation from the paper's Adam fit without a bias; the
    run records its validation MSE next to that of predicting B's mean.
    """
    path = out / "map"
    if (path / "map.json").exists():
        return LinearMap.load(path)
    w = fit_map(sender, receiver, *paper, n=n, seed=seed, backend=backend, fit="ridge")
    w.save(path)
    return w


def kv_layer_spec(spec: str) -> str | float | tuple[int, ...] | None:
    """``--kv-layers``: ``all`` -> ``None``; ``kvcomm[:0.3]`` -> the share; ``3,5,7`` -> B's layers.

    Example:
        >>> kv_layer_spec("all"), kv_layer_spec("kvcomm"), kv_layer_spec("kvcomm:0.5"), kv_layer_spec("7,3")
        (None, 0.3, 0.5, (3, 7))

    Raises:
        CommlibError: another form, or a share outside (0, 1].
    """
    text = spec.strip().lower()
    if text == "all":
        return None
    if text.startswith("kvcomm"):
        share = text.removeprefix("kvcomm").removeprefix(":") or str(KVCOMM_FRACTION)
        try:
            value = float(share)
        except ValueError:
            value = -1.0
        if not 0 < value <= 1:
            raise CommlibError(
                f"--kv-layers {spec!r}: give kvcomm:SHARE with a share in (0, 1], e.g. kvcomm:0.3"
            )
        return value
    try:
        return tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise CommlibError(f"--kv-layers {spec!r}: use all, kvcomm[:SHARE] or B's layers (3,5,7)") from None


def _kv_layers(
    spec: str | float | tuple[int, ...], sender: Model, receiver: Model, pools: Pools, out: Path, n: int
) -> tuple[str, tuple[int, ...]]:
    """The name and B's layers of ``kv``'s restricted condition (KVComm's: on ``n`` selection items)."""
    if isinstance(spec, tuple):
        return "layers" + "-".join(map(str, spec)), spec
    assert isinstance(spec, float)
    name, path = f"kvcomm{spec:g}", out / "kv_layers.json"
    cached = pd.read_json(path, typ="series").to_dict() if path.exists() else {}
    if "importance" not in cached:
        items = list(pools.selection[:n])
        if not items:
            raise CommlibError("KVComm's layer selection needs selection items: raise --n-selection")
        scores = []
        for start in range(0, len(items), 16):
            chunk = items[start : start + 16]
            messages = kv_messages(sender, [message_prompt(it) for it in chunk])
            batch = encode(receiver, [it.receiver for it in chunk], replies=[it.reply for it in chunk])
            scores.append(kvcomm_importance(receiver, messages, batch) * len(chunk))
        cached = {"items": len(items), "importance": (torch.stack(scores).sum(0) / len(items)).tolist()}
        path.write_text(pd.Series(cached).to_json(indent=1))
    return name, kvcomm_layers(cached["importance"], spec)


def _selection_adapter(
    sender: Model, receiver: Model, pools: Pools, out: Path, n: int, steps: int, message_tokens: int,
    seed: int, progress: bool,
) -> InterlatAdapter:  # fmt: skip
    """The Interlat adapter trained on the first ``n`` selection items only (kept in ``out/adapter/``)."""
    items = list(pools.selection[:n])
    if len(items) < 2:
        raise CommlibError("training the adapter needs at least 2 selection items: raise --n-selection")
    return train_adapter(
        sender, receiver, pools.game, out / "adapter", items=items, steps=steps, seed=seed + 1000,
        message_tokens=message_tokens, progress=progress,
    ).eval()  # fmt: skip


def _selection_fuser(
    sender: Model, receiver: Model, pools: Pools, out: Path, n: int, steps: int, seed: int, progress: bool
) -> KVFuser:
    """The ``kv-fuser`` fuser trained on the first ``n`` selection items only (kept in ``out/fuser/``)."""
    items = list(pools.selection[:n])
    if len(items) < 2:
        raise CommlibError("training the fuser needs at least 2 selection items: raise --n-selection")
    return train_fuser(
        sender,
        receiver,
        pools.game,
        out / "fuser",
        items=items,
        steps=steps,
        seed=seed + 2000,
        progress=progress,
    )


def _silent(
    run: Run,
    test: list[GameItem],
    sender: Model,
    receiver: Model,
    max_new_tokens: int,
    backend: str,
    progress: bool,
) -> dict[str, Reading]:
    """B alone on every test item: its rows, and its readings (cached in ``silent.pt``) for the distances."""
    path = run.dir / "silent.pt"
    cached: dict[str, Reading] = {}
    if path.exists():
        cached = {k: Reading(*v) for k, v in torch.load(path, weights_only=False).items()}
    todo = [it for it in test if it.id not in cached]
    silent = Condition("silent")
    for start in tqdm(range(0, len(todo), 16), desc="B alone", disable=not progress, leave=False):
        items = todo[start : start + 16]
        side = sender_side(sender, receiver, items, SideNeeds())
        for it, r in zip(items, read(silent, items, side, sender, receiver, max_new_tokens=max_new_tokens,
                                    backend=backend), strict=True):  # fmt: skip
            cached[it.id] = r
        torch.save({k: (r.text, r.first_logits, r.final_state) for k, r in cached.items()}, path)
    done = run.done(method="silent")
    run.add(_row(silent, it, None, cached[it.id], cached[it.id], 1.0) for it in test if it.id not in done)
    return {it.id: cached[it.id] for it in test}


def _run_chunk(
    run: Run,
    conds: list[Condition],
    test: list[GameItem],
    rows: list[int],
    donors: list[int],
    alone: dict[str, Reading],
    scale: float,
    sender: Model,
    receiver: Model,
    map: LinearMap | None,
    adapter: InterlatAdapter | None,
    message_tokens: int,
    max_new_tokens: int,
    backend: str,
    fuser: KVFuser | None = None,
) -> None:
    """Every pending (condition, message) of the test items at ``rows``: A once, then B per condition."""
    finished = run.done("item_id", "method", "depth", "message")
    todo = {
        (c, message): [i for i in rows if (test[i].id, c.method, c.depth, message) not in finished]
        for c in conds
        if c.method != "silent"
        for message in ("own", "control")
    }
    todo = {key: idx for key, idx in todo.items() if idx}
    if not todo:
        return
    items = [test[i] for i in rows]
    controls = [control_item(test[i], test[donors[i]]) for i in rows]
    side = sender_side(
        sender, receiver, items + controls, SideNeeds.of([c for c, _ in todo]),
        message_tokens=message_tokens, backend=backend, batch_size=len(items + controls),
    )  # fmt: skip
    where = {i: n for n, i in enumerate(rows)}
    for (c, message), idx in todo.items():
        picks = [where[i] + (len(rows) if message == "control" else 0) for i in idx]
        sub = _subset(side, picks)
        readings = read(c, [test[i] for i in idx], sub, sender, receiver, map=map, adapter=adapter,
                        max_new_tokens=max_new_tokens, backend=backend, batch_size=len(idx),
                        fuser=fuser)  # fmt: skip
        run.add(
            _row(
                c,
                test[i],
                test[donors[i]] if message == "control" else None,
                r,
                alone[test[i].id],
                scale,
                sent=_sent(c, sub, n),
            )
            for n, (i, r) in enumerate(zip(idx, readings, strict=True))
        )


def _subset(side: SenderSide, picks: list[int]) -> SenderSide:
    """The sender side restricted to rows ``picks`` (in that order)."""
    return SenderSide(
        items=[side.items[p] for p in picks],
        states={k: v[picks] for k, v in side.states.items()},
        trajectories=[side.trajectories[p] for p in picks] if side.trajectories else [],
        soft={t: [m[p] for p in picks] for t, m in side.soft.items()},
        kv=[side.kv[p] for p in picks] if side.kv else [],
    )


def _sent(c: Condition, side: SenderSide, n: int) -> str:
    """What A sent: text where it has one (NL's message; not the nearest tokens), a KV cache's size."""
    if (steps := c.latent_steps) is not None and side.kv:
        msg = side.kv[n].truncated(steps)
        layers = len(c.layers) if c.layers is not None else msg.keys.shape[0]
        return f"{msg.tokens} positions ({steps} latent) at {layers} layers: {msg.nbytes(c.layers)} bytes"
    if c.method == "kv-fuser" and side.kv:  # A sends its prompt's cache; the fuser sits with B
        msg = side.kv[n].truncated(0)
        return f"{msg.tokens} positions at {msg.keys.shape[0]} layers of A: {msg.nbytes()} bytes"
    if side.trajectories and (c.method in ("nl", "cipher-t0") or c.method.startswith("interlat")):
        return str(side.trajectories[n].text)[:200]
    return ""


def _row(
    c: Condition, item: GameItem, donor: GameItem | None, reading: Reading, alone: Reading, scale: float,
    sent: str = "",
) -> dict[str, Any]:  # fmt: skip
    kl, shift = distance(reading, alone)
    return {
        "item_id": item.id,
        "method": c.method,
        "depth": c.depth,
        "k": "" if c.k is None else c.k,
        "j": "" if c.j is None else c.j,
        "message": "none" if c.method == "silent" else ("control" if donor else "own"),
        "donor_id": donor.id if donor else "",
        "answer": item.answer,
        "donor_answer": donor.answer if donor else "",
        "output": reading.text,
        "correct": contains_answer(reading.text, item.answer, item.choices),
        "follows_donor": contains_answer(reading.text, donor.answer, donor.choices) if donor else "",
        "kl": f"{kl:.6g}",
        "shift": f"{shift:.6g}",
        "displacement": f"{shift / scale:.6g}" if scale > 0 else "nan",
        "sent": sent,
    }
