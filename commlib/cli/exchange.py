"""One exchange and the map W: ``commlib graft`` and ``commlib fit-map``."""

from __future__ import annotations

import argparse
import json

from commlib.cli.base import add_command, load_map, load_pair
from commlib.config import FitMapRun, GraftRun
from commlib.errors import CommlibError


def graft(cfg: GraftRun) -> int:
    from commlib.graft import communicate
    from commlib.results import placement

    sender, receiver = load_pair(cfg.pair)
    out = communicate(
        sender,
        receiver,
        [cfg.sender_prompt],
        [cfg.receiver_prompt],
        cfg.graft,
        map=load_map(cfg.map),
        backend=cfg.pair.backend,
        decoding=cfg.decoding,
    )
    record = {**out.to_dict(), "placement": placement(sender=sender, receiver=receiver)}
    print(json.dumps(record) if cfg.json else out.texts[0])
    return 0


def fit_map(cfg: FitMapRun) -> int:
    from commlib.graft import fit_map
    from commlib.results import placement

    if cfg.task and cfg.corpus:
        raise CommlibError(f"--task fits W on {cfg.task} items, --corpus on general text: give one of them")
    n, seed, backend = cfg.run.n, cfg.run.seed, cfg.pair.backend
    if n is None:
        raise CommlibError("fit-map needs --n: how many sentences (with --task: items) W is fitted on")
    sender, receiver = load_pair(cfg.pair)
    if cfg.task:
        from commlib.experiments import fit_task_map

        lin = fit_task_map(
            cfg.task,
            sender,
            receiver,
            cfg.k,
            cfg.j,
            n_map=n,
            n_eval=cfg.eval_n,
            seed=seed,
            epochs=cfg.epochs,
            backend=backend,
            fit=cfg.fit,
        )
    else:
        corpus = cfg.corpus or "lambada"
        lin = fit_map(
            sender,
            receiver,
            cfg.k,
            cfg.j,
            corpus=corpus,
            n=n,
            seed=seed,
            epochs=cfg.epochs,
            backend=backend,
            fit=cfg.fit,
        )
    path = lin.save(cfg.run.out, record={"placement": placement(sender=sender, receiver=receiver)})
    info = lin.info
    print(
        f"saved W {tuple(lin.weight.shape)} ({info.fit}) to {path}: train MSE {info.train_mse:.4g}, "
        f"val MSE {info.val_mse:.4g} (predicting the mean: {info.val_baseline_mse:.4g})"
    )
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``graft`` and ``fit-map``."""
    add_command(
        commands,
        "graft",
        graft,
        config=GraftRun,
        help="run one activation-communication exchange: A's state at block k into B's at block j",
        example='commlib graft --sender smollm2-135m --receiver smollm2-135m --sender-prompt "Alice is at '
        'the Eiffel Tower." --receiver-prompt "Which country is Alice located in?" --k 20 --j 20 --f replace',
    )
    add_command(
        commands,
        "fit-map",
        fit_map,
        config=FitMapRun,
        help="train the linear map W from A's block k to B's block j for a model pair",
        example="commlib fit-map --sender qwen2.5-coder-0.5b --receiver qwen2.5-coder-1.5b --k 0 --j 6 "
        "--out maps/q05-q15",
    )
