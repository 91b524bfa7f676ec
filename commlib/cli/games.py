"""The coordination games: ``commlib games``, ``commlib latent`` and ``commlib train-adapter``."""

from __future__ import annotations

import argparse

from commlib.cli.base import add_command, check_game, check_run, load_map, load_pair
from commlib.config import GamesRun, LatentRun, TrainAdapterRun
from commlib.errors import CommlibError


def games(cfg: GamesRun) -> int:
    from commlib.experiments import run_games

    check_run(cfg.methods, "games", k=cfg.k, j=cfg.j, map=cfg.map)
    check_game(cfg.game)
    sender, receiver = load_pair(cfg.pair)
    lin = load_map(cfg.map)
    if lin is not None and cfg.k is not None and cfg.j is not None:
        lin.check_pair(sender.name, receiver.name, cfg.k, cfg.j)
    result = run_games(
        cfg.game,
        sender,
        receiver,
        list(cfg.methods),
        k=cfg.k,
        j=cfg.j,
        out_dir=cfg.run.out,
        n=cfg.run.n,
        seed=cfg.run.seed,
        position=cfg.position,
        map=lin,
        backend=cfg.pair.backend,
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
        reply=cfg.reply,
    )
    print(f"{'method':<14}{'accuracy':>9}{'95% CI':>16}{'exact':>7}{'n':>5}")
    for method, r in result["methods"].items():
        ci = f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        print(f"{method:<14}{r['accuracy']:>9.2f}{ci:>16}{r['exact_match']:>7.2f}{r['n']:>5}")
    print(f"wrote {cfg.run.out}/results.json and items.csv")
    return 0


def latent(cfg: LatentRun) -> int:
    methods = list(cfg.baselines)
    if cfg.method in ("interlat-trained", "interlat-compressed"):
        from commlib.protocols.games import interlat_compressed, interlat_trained, register_method

        trained = cfg.method == "interlat-trained"
        if not cfg.adapter:
            where = "`commlib train-adapter`" if trained else "`commlib train-adapter --compress K`"
            raise CommlibError(f"{cfg.method} needs --adapter DIR (from {where})")
        register_method(cfg.method, (interlat_trained if trained else interlat_compressed)(cfg.adapter))
    if cfg.method == "cipher":
        methods += [f"cipher-t{t:g}" for t in cfg.temperatures]
    else:
        methods.append(cfg.method)
    return games(
        GamesRun(
            pair=cfg.pair,
            run=cfg.run,
            game=cfg.game,
            methods=tuple(methods),
            k=None,
            j=None,
            batch_size=cfg.batch_size,
            max_new_tokens=cfg.max_new_tokens,
            reply=cfg.reply,
        )
    )


def train_adapter(cfg: TrainAdapterRun) -> int:
    from commlib.channels.interlat import load_adapter, load_compressor, train_adapter, train_compressor

    if cfg.compress is not None:
        if not cfg.adapter or cfg.game or cfg.kl_weight:
            raise CommlibError(
                "--compress K needs --adapter BASE_DIR and trains on that adapter's items with "
                "a KL loss: drop --game and --kl-weight (--ce-weight adds the answer's CE)"
            )
    elif not cfg.game or cfg.adapter or cfg.ce_weight:
        raise CommlibError("train-adapter needs --game; --adapter and --ce-weight go with --compress K")
    else:
        check_game(cfg.game)
    sender, receiver = load_pair(cfg.pair)
    if cfg.compress is not None and cfg.adapter:
        train_compressor(
            sender,
            receiver,
            cfg.adapter,
            cfg.run.out,
            k=cfg.compress,
            steps=cfg.steps,
            lr=cfg.lr,
            ce_weight=cfg.ce_weight,
            seed=cfg.run.seed,
        )
        losses, name = load_compressor(cfg.run.out)[2].losses, "compressor"
    else:
        train_adapter(
            sender,
            receiver,
            cfg.game or "",
            cfg.run.out,
            n_train=cfg.n_train,
            steps=cfg.steps,
            lr=cfg.lr,
            seed=cfg.run.seed,
            message_tokens=cfg.message_tokens,
            kl_weight=cfg.kl_weight,
        )
        losses, name = load_adapter(cfg.run.out)[1].losses, "adapter"
    window = max(1, len(losses) // 10)
    first, last = losses[:window], losses[-window:]
    print(
        f"{len(losses)} steps; mean loss of the first {window}: {sum(first) / len(first):.3f}, "
        f"of the last {window}: {sum(last) / len(last):.3f}"
    )
    print(f"wrote {cfg.run.out}/{name}.safetensors and {name}.json")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``games``, ``latent`` and ``train-adapter``."""
    add_command(
        commands,
        "games",
        games,
        config=GamesRun,
        help="coordination games: every method on one game, resumable",
        example="commlib games --game countries --sender qwen2.5-coder-1.5b --receiver qwen2.5-coder-1.5b "
        "--methods silent,skyline,nl,ac-replace --k 27 --j 15 --position content --n 100 --seed 1 "
        "--out runs/games-q15",
    )
    add_command(
        commands,
        "latent",
        latent,
        config=LatentRun,
        help="latent channels (CIPHER, Interlat) on a game next to baselines, resumable",
        example="commlib latent --method cipher --game countries --sender smollm2-135m "
        "--receiver smollm2-135m --baselines silent,nl --n 40 --out runs/cipher",
    )
    add_command(
        commands,
        "train-adapter",
        train_adapter,
        config=TrainAdapterRun,
        help="train an Interlat adapter, or compress one to K latents (B frozen); resumes",
        example="commlib train-adapter --game countries:train --sender smollm2-135m "
        "--receiver smollm2-135m --n-train 84 --steps 300 --out runs/adapter",
    )
