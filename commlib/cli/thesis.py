"""The controlled experiment: ``commlib thesis``."""

from __future__ import annotations

import argparse

from commlib.cli.base import add_command, check_game, load_map, load_pair
from commlib.config import ThesisRun


def thesis(cfg: ThesisRun) -> int:
    from commlib.experiments.thesis import kv_layer_spec, run_thesis
    from commlib.protocols.readings import check_channel

    for c in cfg.channels:
        check_channel(c)  # a bad name fails before any model loads
    kv_layer_spec(cfg.kv_layers)
    check_game(cfg.game)
    sender, receiver = load_pair(cfg.pair)
    adapter = None
    if cfg.adapter:
        from commlib.channels.interlat import check_pair, load_adapter

        adapter, info = load_adapter(cfg.adapter)
        check_pair(cfg.adapter, (info.sender, info.receiver), sender, receiver)
    fuser = None
    if cfg.fuser:
        from commlib.channels.fuser import check_fuser, load_fuser

        fuser = load_fuser(cfg.fuser)[0]
        check_fuser(fuser, sender, receiver)
    summary = run_thesis(
        cfg.game,
        sender,
        receiver,
        list(cfg.channels),
        out_dir=cfg.run.out,
        n=cfg.run.n or 200,
        n_selection=cfg.n_selection,
        seed=cfg.run.seed,
        selection_fraction=cfg.selection_fraction,
        selection_file=cfg.selection_file,
        depth_items=cfg.depth_items,
        grid=cfg.grid,
        map=load_map(cfg.map),
        map_sentences=cfg.map_sentences,
        adapter=adapter,
        adapter_items=cfg.adapter_items,
        adapter_steps=cfg.adapter_steps,
        fuser=fuser,
        fuser_items=cfg.fuser_items,
        fuser_steps=cfg.fuser_steps,
        kv_layers=cfg.kv_layers,
        message_tokens=cfg.message_tokens,
        max_new_tokens=cfg.max_new_tokens,
        chunk=cfg.chunk,
        backend=cfg.pair.backend,
    )
    print(
        f"{'channel':<22}{'n':>4}{'acc':>6}{'control':>8}{'own - control [95% CI]':>26}{'KL':>7}{'disp':>6}"
    )
    for r in summary.itertuples():
        gain = f"{r.vs_control:+.2f} [{r.vs_control_low:+.2f}, {r.vs_control_high:+.2f}]"
        print(
            f"{r.channel:<22}{r.n:>4}{r.accuracy:>6.2f}{r.control_accuracy:>8.2f}{gain:>26}"
            f"{r.kl_median:>7.2f}{r.displacement_median:>6.2f}"
        )
    print(f"wrote {cfg.run.out}/summary.csv and items.csv")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``thesis``."""
    add_command(
        commands,
        "thesis",
        thesis,
        config=ThesisRun,
        help="does a message get through? every channel against its content control, one distance axis",
        example="commlib thesis --game countries --sender qwen2.5-coder-1.5b --receiver qwen2.5-coder-1.5b "
        "--n 200 --seed 0 --out runs/thesis-q15-q15",
    )
