"""Sweeps on a game: ``commlib sweep`` (the (k, j) grid), ``distance`` and ``sweep-n``."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from commlib import registry
from commlib.cli.base import add_command, check_game, check_run, load_map, load_pair
from commlib.config import DistanceRun, SweepNRun, SweepRun
from commlib.errors import CommlibError


def layer_range(text: str | None, n_layers: int) -> list[int]:
    """``"a:b"`` (inclusive, optional ``:step``) or comma-separated blocks; ``None`` = all.

    Example:
        >>> layer_range("0:6:2", 30), layer_range("10,20", 30), len(layer_range(None, 30))
        ([0, 2, 4, 6], [10, 20], 30)

    Raises:
        CommlibError: text that is neither form.
    """
    if not text:
        return list(range(n_layers))
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            return list(range(parts[0], parts[1] + 1, parts[2] if len(parts) > 2 else 1))
        return [int(p) for p in text.split(",")]
    except (ValueError, IndexError):
        raise CommlibError(
            f"blocks {text!r}: write a:b, a:b:step or a,b,c (e.g. 0:{n_layers - 1}:2)"
        ) from None


def sweep(cfg: SweepRun) -> int:
    from commlib.experiments import best_layers, run_sweep
    from commlib.plots import save_figure, sweep_heatmap

    check_game(cfg.game)
    sender, receiver = load_pair(cfg.pair)
    ks = layer_range(cfg.k_range, sender.info.n_layers)
    js = layer_range(cfg.j_range, receiver.info.n_layers)
    df = run_sweep(
        cfg.game,
        sender,
        receiver,
        out_dir=cfg.run.out,
        ks=ks,
        js=js,
        f=cfg.f,
        n=cfg.run.n,
        seed=cfg.run.seed,
        backend=cfg.pair.backend,
        max_new_tokens=cfg.max_new_tokens,
        position=cfg.position,
        reply=cfg.reply,
    )
    game = Path(cfg.game).stem
    for value in ("greedy_answer", "logprob_gain"):
        fig = sweep_heatmap(
            df,
            n_layers_sender=sender.info.n_layers,
            n_layers_receiver=receiver.info.n_layers,
            value=value,
            title=f"{game}: {sender.name} -> {receiver.name}, f={cfg.f}, {cfg.position}",
        )
        name = f"sweep_{game}_{sender.name}_{receiver.name}_{value}"
        save_figure(fig, name, directory=cfg.run.out, config={"command": "sweep", **asdict(cfg)})
    top = best_layers(df)
    print(
        f"{df['item_id'].nunique()} items x {len(ks)} k x {len(js)} j, position {cfg.position}; "
        f"best (k, j) = ({int(top['k'])}, "
        f"{int(top['j'])}): greedy accuracy {top['accuracy']:.2f} (B alone "
        f"{df.groupby('item_id')['silent_greedy_answer'].first().mean():.2f}), mean answer log-prob gain "
        f"over B alone {top['logprob_gain']:+.2f} (accuracy first, ties by log-prob gain)"
    )
    print(f"wrote {cfg.run.out}/sweep.csv and heatmaps")
    return 0


def distance(cfg: DistanceRun) -> int:
    from commlib.experiments import run_distance

    methods = registry.check_methods(cfg.methods, "games")  # canonical names (ac: ac-replace)
    for name in methods:
        if not registry.method(name).layers:
            raise CommlibError(f"distance measures grafted states: use ac-* methods, not {name!r}")
    registry.check_map(methods, cfg.map)
    use_map = any(registry.method(name).map for name in methods)
    fs = [name.removeprefix("ac-w-").removeprefix("ac-") for name in methods]
    check_game(cfg.game)
    sender, receiver = load_pair(cfg.pair)
    df = run_distance(
        cfg.game,
        sender,
        receiver,
        k=cfg.k,
        j=cfg.j,
        out_dir=cfg.run.out,
        fs=list(dict.fromkeys(fs)),
        alphas=list(cfg.alphas),
        match_norm={"off": [False], "on": [True], "both": [False, True]}[cfg.match_norm],
        controls=list(cfg.controls),
        n_positions=list(cfg.n_positions),
        n=cfg.run.n,
        seed=cfg.run.seed,
        position=cfg.position,
        map=load_map(cfg.map) if use_map else None,
        n_reference=cfg.reference.n_reference,
        reference=cfg.reference.reference,
        backend=cfg.pair.backend,
    )
    summary = df.groupby(["n_positions", "source", "f", "alpha", "match_norm"])[
        ["norm_ratio", "mahalanobis_pct", "knn_cosine_pct", "next_token_kl"]
    ].median()
    print(f"median over {df['item_id'].nunique()} items (percentiles against B's own held-out activations):")
    print(summary.round(2).to_string())
    print(f"wrote {cfg.run.out}/distances.csv")
    return 0


def sweep_n(cfg: SweepNRun) -> int:
    from commlib.experiments import n_sweep_table, run_n_sweep
    from commlib.plots import save_figure
    from commlib.plots_sweep_n import accuracy_distance_vs_n

    check_run(cfg.methods, "sweep-n", k=cfg.k, j=cfg.j)
    check_game(cfg.game)
    sender, receiver = load_pair(cfg.pair)
    result = run_n_sweep(
        cfg.game,
        sender,
        receiver,
        list(cfg.methods),
        list(cfg.ns),
        out_dir=cfg.run.out,
        k=cfg.k,
        j=cfg.j,
        n=cfg.run.n,
        seed=cfg.run.seed,
        position=cfg.position,
        adapter=cfg.adapter,
        message_tokens=cfg.message_tokens,
        max_new_tokens=cfg.max_new_tokens,
        n_reference=cfg.reference.n_reference,
        reference=cfg.reference.reference,
        backend=cfg.pair.backend,
    )
    table = n_sweep_table(result)
    game = Path(cfg.game).stem
    fig = accuracy_distance_vs_n(table, title=f"{game}: {sender.name} -> {receiver.name}")
    name = f"sweep_n_{game}_{sender.name}_{receiver.name}"
    save_figure(fig, name, directory=cfg.run.out, config={"command": "sweep-n", **asdict(cfg)})
    cols = [
        "method",
        "n",
        "n_sent",
        "accuracy",
        "ci_low",
        "ci_high",
        "gain",
        "gain_ci_low",
        "gain_ci_high",
        "median_mahalanobis_pct",
        "flops",
        "seconds",
    ]
    print(table[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    print(f"wrote {cfg.run.out}/results.json, items.csv and the figure")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``sweep``, ``distance`` and ``sweep-n``."""
    add_command(
        commands,
        "sweep",
        sweep,
        config=SweepRun,
        help="the full (k, j) grid on a game (fast engine), resumable",
        example="commlib sweep --game countries --sender smollm2-135m --receiver smollm2-135m "
        "--k-range 0:29:3 --j-range 0:29:3 --n 6 --max-new-tokens 0 --out runs/sweep",
    )
    add_command(
        commands,
        "distance",
        distance,
        config=DistanceRun,
        help="distances of grafted states from the receiver's own states, resumable",
        example="commlib distance --game countries --sender smollm2-135m --receiver smollm2-135m "
        "--k 19 --j 19 --reference task --n 40 --out runs/distance",
    )
    add_command(
        commands,
        "sweep-n",
        sweep_n,
        config=SweepNRun,
        help="accuracy, distance and compute against how much state is sent, resumable",
        example="commlib sweep-n --game countries:heldout --sender smollm2-135m --receiver smollm2-135m "
        "--methods interlat-trained --adapter runs/adapter --ns 0,1,2,4,all --n 28 --seed 1 "
        "--out runs/sweep-n",
    )
