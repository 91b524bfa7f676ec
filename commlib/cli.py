"""The ``commlib`` command line, thin over the library.

Subcommands: ``models``, ``fetch``, ``graft``, ``fit-map``, ``demo``. Every
user error prints one line (``commlib: error: ...``) and exits with status 2;
no traceback.

Example:
    $ commlib graft --sender smollm2-135m --receiver smollm2-135m \\
        --sender-prompt "Alice is at the Eiffel Tower." \\
        --receiver-prompt "Which country is Alice located in?" --k 20 --j 20 --f replace --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from commlib.errors import CommlibError

BACKEND_CHOICES = ("nnsight", "transformer-lens")
F_CHOICES = ("none", "sum", "mean", "replace")
REFERENCE_CHOICES = ("corpus", "prompt", "task")  # experiments.REFERENCES, without importing torch at start
GAME_HELP = "countries (countries:train, countries:heldout: disjoint landmarks), tipsheets, or PATH.jsonl"


def _cmd_models(args: argparse.Namespace) -> int:
    from commlib.models import OFFLINE_MODELS, RANDOM_MODELS, cache_dir, is_cached

    print(f"cache: {cache_dir()}")
    print(f"{'name':<24}{'kind':<10}{'cached':<8}description")
    for name, spec in OFFLINE_MODELS.items():
        print(f"{name:<24}{'offline':<10}{'yes' if is_cached(name) else 'no':<8}{spec.description}")
    for name, rspec in RANDOM_MODELS.items():
        print(f"{name:<24}{'random':<10}{'-':<8}{rspec.description}")
    print("Also accepted: a local model directory, or a hub id (org/name) when online.")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from commlib.corpora import fetch_lambada
    from commlib.models import fetch
    from commlib.tasks.biographies import fetch_biographies
    from commlib.tasks.reasoning import fetch_gsm8k, fetch_mmlu

    data = {
        "lambada": fetch_lambada,
        "gsm8k": fetch_gsm8k,
        "mmlu": fetch_mmlu,
        "biographies": fetch_biographies,
    }
    for name in args.names:
        if name in data:
            print(f"[{name}] {data[name](force=args.force)}")
        else:
            fetch(name, force=args.force)
    return 0


def _load_pair(args: argparse.Namespace) -> tuple[Any, Any]:
    """Sender and receiver models of a command (one object when they are the same name)."""
    from commlib.models import load_model

    sender = load_model(args.sender)
    return sender, sender if args.receiver == args.sender else load_model(args.receiver)


def _cmd_graft(args: argparse.Namespace) -> int:
    from commlib.backends import Decoding
    from commlib.combine import LinearMap
    from commlib.graft import GraftConfig, communicate

    config = GraftConfig(
        k=args.k,
        j=args.j,
        f=args.f,
        alpha=args.alpha,
        match_norm=args.match_norm,
        position=args.position,
        raw=args.raw,
        n_positions=args.n_positions,
    )
    sender, receiver = _load_pair(args)
    lin = LinearMap.load(args.map) if args.map else None
    decoding = Decoding(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    out = communicate(
        sender,
        receiver,
        [args.sender_prompt],
        [args.receiver_prompt],
        config,
        map=lin,
        backend=args.backend,
        decoding=decoding,
    )
    if args.json:
        print(json.dumps(out.to_dict()))
    else:
        print(out.texts[0])
    return 0


def _cmd_fit_map(args: argparse.Namespace) -> int:
    from commlib.graft import fit_map

    sender, receiver = _load_pair(args)
    common = {"seed": args.seed, "epochs": args.epochs, "backend": args.backend}
    if args.task and args.corpus:
        raise CommlibError(f"--task fits W on {args.task} items, --corpus on general text: give one of them")
    if args.task:
        from commlib.experiments import fit_task_map

        lin = fit_task_map(
            args.task, sender, receiver, args.k, args.j, n_map=args.n, n_eval=args.eval_n, **common
        )
    else:
        lin = fit_map(sender, receiver, args.k, args.j, corpus=args.corpus or "lambada", n=args.n, **common)
    path = lin.save(args.out)
    info = lin.info
    print(
        f"saved W {tuple(lin.weight.shape)} to {path}: train MSE {info.train_mse:.4g}, "
        f"val MSE {info.val_mse:.4g} (predicting the mean: {info.val_baseline_mse:.4g})"
    )
    return 0


def _cmd_games(args: argparse.Namespace) -> int:
    from commlib.combine import LinearMap
    from commlib.experiments import run_games

    sender, receiver = _load_pair(args)
    lin = LinearMap.load(args.map) if args.map else None
    if lin is not None:
        lin.check_pair(sender.name, receiver.name, args.k, args.j)
    result = run_games(
        args.game,
        sender,
        receiver,
        [m.strip() for m in args.methods.split(",") if m.strip()],
        k=args.k,
        j=args.j,
        out_dir=args.out,
        n=args.n,
        seed=args.seed,
        position=args.position,
        map=lin,
        backend=args.backend,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        reply=not args.no_reply,
    )
    print(f"{'method':<14}{'accuracy':>9}{'95% CI':>16}{'exact':>7}{'n':>5}")
    for method, r in result["methods"].items():
        ci = f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        print(f"{method:<14}{r['accuracy']:>9.2f}{ci:>16}{r['exact_match']:>7.2f}{r['n']:>5}")
    print(f"wrote {args.out}/results.json and items.csv")
    return 0


def _cmd_latent(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.baselines.split(",") if m.strip()]
    if args.method in ("interlat-trained", "interlat-compressed"):
        from commlib.protocols.games import interlat_compressed, interlat_trained, register_method

        trained = args.method == "interlat-trained"
        if not args.adapter:
            where = "`commlib train-adapter`" if trained else "`commlib train-adapter --compress K`"
            raise CommlibError(f"{args.method} needs --adapter DIR (from {where})")
        register_method(args.method, (interlat_trained if trained else interlat_compressed)(args.adapter))
    if args.method == "cipher":
        methods += [f"cipher-t{float(t):g}" for t in args.temperature.split(",")]
    else:
        methods.append(args.method)
    args.methods, args.k, args.j, args.map, args.position = ",".join(methods), None, None, None, "last"
    return _cmd_games(args)


def _cmd_reasoning(args: argparse.Namespace) -> int:
    from commlib.combine import LinearMap
    from commlib.experiments import run_reasoning
    from commlib.models import load_model

    sender, receiver = _load_pair(args)
    loaded = {sender.name: sender, receiver.name: receiver}

    def model(name: str) -> Any:
        return loaded[name] if name in loaded else loaded.setdefault(name, load_model(name))

    result = run_reasoning(
        args.task,
        sender,
        receiver,
        [m.strip() for m in args.methods.split(",") if m.strip()],
        out_dir=args.out,
        n=args.n,
        seed=args.seed,
        k=args.k,
        j=args.j,
        layers_from=model(args.layers_from) if args.layers_from else None,
        rounds=args.rounds,
        max_new_tokens=args.max_new_tokens,
        map=LinearMap.load(args.map) if args.map else None,
        backend=args.backend,
        source=args.source,
        a_temperature=args.a_temperature,
        a_top_p=args.a_top_p,
        a_seed=args.a_seed,
        judge=model(args.judge) if args.task == "biographies" and args.judge else None,
        answers=args.answers,
        batch_size=args.batch_size,
    )
    label = "score" if args.task == "biographies" else "accuracy"
    width = max(len("method"), *map(len, result["methods"])) + 1
    paired = "single-b" in result["methods"]  # then each other method's paired difference with B alone
    print(
        f"{'method':<{width}}{label:>9}{'95% CI':>16}{'FLOPs/pass':>12}{'seconds':>9}{'n':>5}"
        + (f"{'- B':>8}{'95% CI':>18}{'better/worse':>14}" if paired else "")
    )
    for method, r in result["methods"].items():
        ci = f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        line = (
            f"{method:<{width}}{r['accuracy']:>9.2f}{ci:>16}{r['flops_vs_one_pass']:>12.1f}"
            f"{r['seconds']:>9.1f}{r['n']:>5}"
        )
        if "vs_b" in r:
            vs = r["vs_b"]
            vs_ci, counts = f"[{vs['ci_low']:+.2f}, {vs['ci_high']:+.2f}]", f"{vs['better']}/{vs['worse']}"
            line += f"{vs['difference']:>+8.2f}{vs_ci:>18}{counts:>14}"
        print(line)
    config = result["config"]
    if config["layers_chosen_on"]:
        print(
            f"layers (k, j) = ({config['k']}, {config['j']}), mapped by relative depth from "
            f"{config['layers_chosen_on']}"
        )
    judged = " and judgements.jsonl" if config["judge"] else ""
    print(f"wrote {args.out}/results.json, items.csv{judged}")
    return 0


def _cmd_train_adapter(args: argparse.Namespace) -> int:
    from commlib.channels.interlat import load_adapter, load_compressor, train_adapter, train_compressor

    compress = args.compress is not None
    if compress and (not args.adapter or args.game or args.kl_weight):
        raise CommlibError(
            "--compress K needs --adapter BASE_DIR and trains on that adapter's items with "
            "a KL loss: drop --game and --kl-weight (--ce-weight adds the answer's CE)"
        )
    if not compress and (not args.game or args.adapter or args.ce_weight):
        raise CommlibError("train-adapter needs --game; --adapter and --ce-weight go with --compress K")
    sender, receiver = _load_pair(args)
    if compress:
        train_compressor(
            sender,
            receiver,
            args.adapter,
            args.out,
            k=args.compress,
            steps=args.steps,
            lr=args.lr,
            ce_weight=args.ce_weight,
            seed=args.seed,
        )
        losses, name = load_compressor(args.out)[2].losses, "compressor"
    else:
        train_adapter(
            sender,
            receiver,
            args.game,
            args.out,
            n_train=args.n_train,
            steps=args.steps,
            lr=args.lr,
            seed=args.seed,
            message_tokens=args.message_tokens,
            kl_weight=args.kl_weight,
        )
        losses, name = load_adapter(args.out)[1].losses, "adapter"
    window = max(1, len(losses) // 10)
    first, last = losses[:window], losses[-window:]
    print(
        f"{len(losses)} steps; mean loss of the first {window}: {sum(first) / len(first):.3f}, "
        f"of the last {window}: {sum(last) / len(last):.3f}"
    )
    print(f"wrote {args.out}/{name}.safetensors and {name}.json")
    return 0


def _layer_range(text: str | None, n_layers: int) -> list[int]:
    """``"a:b"`` (inclusive, optional ``:step``) or comma-separated layers; ``None`` = all."""
    if not text:
        return list(range(n_layers))
    if ":" in text:
        parts = [int(p) for p in text.split(":")]
        return list(range(parts[0], parts[1] + 1, parts[2] if len(parts) > 2 else 1))
    return [int(p) for p in text.split(",")]


def _cmd_sweep(args: argparse.Namespace) -> int:
    from commlib.experiments import best_layers, run_sweep
    from commlib.plots import save_figure, sweep_heatmap

    sender, receiver = _load_pair(args)
    ks = _layer_range(args.k_range, sender.info.n_layers)
    js = _layer_range(args.j_range, receiver.info.n_layers)
    df = run_sweep(
        args.game,
        sender,
        receiver,
        out_dir=args.out,
        ks=ks,
        js=js,
        f=args.f,
        n=args.n,
        seed=args.seed,
        backend=args.backend,
        max_new_tokens=args.max_new_tokens,
        position=args.position,
        reply=not args.no_reply,
    )
    game = Path(args.game).stem
    for value in ("greedy_answer", "logprob_gain"):
        fig = sweep_heatmap(
            df,
            n_layers_sender=sender.info.n_layers,
            n_layers_receiver=receiver.info.n_layers,
            value=value,
            title=f"{game}: {sender.name} -> {receiver.name}, f={args.f}, {args.position}",
        )
        save_figure(
            fig, f"sweep_{game}_{sender.name}_{receiver.name}_{value}", directory=args.out, config=vars(args)
        )
    top = best_layers(df)
    print(
        f"{df['item_id'].nunique()} items x {len(ks)} k x {len(js)} j, position {args.position}; "
        f"best (k, j) = ({int(top['k'])}, "
        f"{int(top['j'])}): greedy accuracy {top['accuracy']:.2f} (B alone "
        f"{df.groupby('item_id')['silent_greedy_answer'].first().mean():.2f}), mean answer log-prob gain "
        f"over B alone {top['logprob_gain']:+.2f} (accuracy first, ties by log-prob gain)"
    )
    print(f"wrote {args.out}/sweep.csv and heatmaps")
    return 0


def _cmd_distance(args: argparse.Namespace) -> int:
    from commlib.combine import LinearMap
    from commlib.experiments import run_distance

    fs, use_map = [], False
    for method in (m.strip() for m in args.methods.split(",") if m.strip()):
        if not method.startswith("ac-"):
            raise CommlibError(f"distance measures grafted states: use ac-* methods, not {method!r}")
        use_map = use_map or method.startswith("ac-w-")
        fs.append(method.removeprefix("ac-w-").removeprefix("ac-"))
    if use_map and not args.map:
        raise CommlibError("ac-w-* methods need --map (fit one with `commlib fit-map`)")
    sender, receiver = _load_pair(args)
    df = run_distance(
        args.game,
        sender,
        receiver,
        k=args.k,
        j=args.j,
        out_dir=args.out,
        fs=list(dict.fromkeys(fs)),
        alphas=[float(a) for a in args.alphas.split(",")],
        match_norm={"off": [False], "on": [True], "both": [False, True]}[args.match_norm],
        controls=[c for c in args.controls.split(",") if c],
        n_positions=[int(x) for x in args.n_positions.split(",")],
        n=args.n,
        seed=args.seed,
        position=args.position,
        map=LinearMap.load(args.map) if use_map else None,
        n_reference=args.n_reference,
        reference=args.reference,
        backend=args.backend,
    )
    summary = df.groupby(["n_positions", "source", "f", "alpha", "match_norm"])[
        ["norm_ratio", "mahalanobis_pct", "knn_cosine_pct", "next_token_kl"]
    ].median()
    print(f"median over {df['item_id'].nunique()} items (percentiles against B's own held-out activations):")
    print(summary.round(2).to_string())
    print(f"wrote {args.out}/distances.csv")
    return 0


def _cmd_sweep_n(args: argparse.Namespace) -> int:
    from commlib.experiments import n_sweep_table, run_n_sweep
    from commlib.plots import accuracy_distance_vs_n, save_figure

    sender, receiver = _load_pair(args)
    result = run_n_sweep(
        args.game,
        sender,
        receiver,
        [m.strip() for m in args.methods.split(",") if m.strip()],
        args.ns.split(","),
        out_dir=args.out,
        k=args.k,
        j=args.j,
        n=args.n,
        seed=args.seed,
        position=args.position,
        adapter=args.adapter,
        message_tokens=args.message_tokens,
        max_new_tokens=args.max_new_tokens,
        n_reference=args.n_reference,
        reference=args.reference,
        backend=args.backend,
    )
    table = n_sweep_table(result)
    game = Path(args.game).stem
    fig = accuracy_distance_vs_n(table, title=f"{game}: {sender.name} -> {receiver.name}")
    save_figure(fig, f"sweep_n_{game}_{sender.name}_{receiver.name}", directory=args.out, config=vars(args))
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
    print(f"wrote {args.out}/results.json, items.csv and the figure")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from commlib.backends import Decoding
    from commlib.graft import GraftConfig, communicate
    from commlib.models import load_model

    model = load_model(args.model)
    depth = model.info.n_layers
    k = j = (2 * depth) // 3
    sender_prompt = "Alice is at the Eiffel Tower."
    receiver_prompt = "Which country is Alice located in?"
    print(f"model: {model.name} ({depth} layers, d={model.info.d_model}); k = j = {k}; greedy, 24 tokens")
    print(f"A reads: {sender_prompt!r}\nB reads: {receiver_prompt!r}\n")
    for f in F_CHOICES:
        out = communicate(
            model,
            model,
            [sender_prompt],
            [receiver_prompt],
            GraftConfig(k=k, j=j, f=f),
            decoding=Decoding(max_new_tokens=24),
        )
        label = "B alone" if f == "none" else f"AC f={f}"
        print(f"{label:<16}-> {out.texts[0].strip()!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(prog="commlib", description="Activation communication between LMs.")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list registered models and whether each is cached")

    s = sub.add_parser("fetch", help="fetch offline models, and data: lambada, gsm8k, mmlu, biographies")
    s.add_argument("names", nargs="+")
    s.add_argument("--force", action="store_true")

    s = sub.add_parser("graft", help="run one activation-communication exchange")
    s.add_argument("--sender", required=True)
    s.add_argument("--receiver", required=True)
    s.add_argument("--sender-prompt", required=True)
    s.add_argument("--receiver-prompt", required=True)
    s.add_argument("--k", type=int, required=True)
    s.add_argument("--j", type=int, required=True)
    s.add_argument("--f", required=True, help=f"one of {', '.join(F_CHOICES)} (none = B alone)")
    s.add_argument("--map", help="directory of a learned W (from fit-map)")
    s.add_argument("--alpha", type=float, default=1.0)
    s.add_argument("--match-norm", action="store_true", help="rescale the grafted state to B's norm")
    s.add_argument("--position", choices=("last", "content"), default="last")
    s.add_argument("--n-positions", type=int, default=1, help="graft the last n positions, from the end")
    s.add_argument("--backend", choices=BACKEND_CHOICES, default="nnsight")
    s.add_argument("--max-new-tokens", type=int, default=32)
    s.add_argument("--sample", action="store_true", help="sample instead of greedy")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--raw", action="store_true", help="do not wrap prompts in the prompt format")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("fit-map", help="train the linear map W for a model pair")
    s.add_argument("--sender", required=True)
    s.add_argument("--receiver", required=True)
    s.add_argument("--k", type=int, required=True)
    s.add_argument("--j", type=int, required=True)
    s.add_argument("--n", type=int, default=3072)
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--corpus", choices=("lambada", "c4"), help="general text for W (default: lambada)")
    s.add_argument(
        "--task",
        help="in-distribution W instead: fit on --n items of this reasoning task (e.g. gsm8k) "
        "that `commlib reasoning --n EVAL_N --seed SEED` does not score",
    )
    s.add_argument("--eval-n", type=int, default=100, help="with --task: the n of the run W is for")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--backend", choices=BACKEND_CHOICES, default="nnsight")
    s.add_argument("--out", required=True)

    s = sub.add_parser("games", help="coordination games: all methods on one game, resumable")
    s.add_argument("--game", required=True, help=GAME_HELP)
    s.add_argument("--sender", required=True)
    s.add_argument("--receiver", required=True)
    s.add_argument("--methods", default="silent,skyline,nl,ac-sum,ac-mean,ac-replace")
    s.add_argument("--k", type=int, required=True)
    s.add_argument("--j", type=int, required=True)
    s.add_argument("--n", type=int, default=None, help="items (default: 100 countries, 70 tipsheets)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--position", choices=("last", "content"), default="last")
    s.add_argument("--map", help="learned W for ac-w-* methods")
    s.add_argument("--backend", choices=BACKEND_CHOICES, default="nnsight")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--max-new-tokens", type=int, default=24)
    s.add_argument(
        "--no-reply", action="store_true", help="B answers from scratch (no 'Alice is located in' opening)"
    )
    s.add_argument("--out", required=True)

    s = sub.add_parser("latent", help="latent channels (CIPHER, Interlat) on a game next to baselines")
    s.add_argument(
        "--method",
        choices=("cipher", "interlat", "interlat-norm", "interlat-trained", "interlat-compressed"),
        default="cipher",
    )
    s.add_argument(
        "--adapter", help="interlat-trained / -compressed: the directory train-adapter (--compress K) wrote"
    )
    s.add_argument("--game", required=True, help=GAME_HELP)
    s.add_argument("--sender", required=True)
    s.add_argument("--receiver", required=True, help="must share the sender's tokenizer")
    s.add_argument("--temperature", default="1.0", help="cipher: comma-separated, one cipher-t<T> each")
    s.add_argument("--baselines", default="silent,nl", help="games methods run alongside ('' for none)")
    s.add_argument("--n", type=int, default=None, help="items (default: 100 countries, 70 tipsheets)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--backend", choices=BACKEND_CHOICES, default="nnsight")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--max-new-tokens", type=int, default=24)
    s.add_argument("--no-reply", action="store_true", help="B answers from scratch")
    s.add_argument("--out", required=True)

    s = sub.add_parser(
        "train-adapter", help="train an Interlat adapter, or compress one to K latents (B frozen); resumes"
    )
    s.add_argument("--game", help=GAME_HELP + " (not with --compress)")
    s.add_argument("--sender", required=True)
    s.add_argument("--receiver", required=True)
    s.add_argument("--n-train", type=int, default=100, help="training items (Countries has 112)")
    s.add_argument("--steps", type=int, default=300)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--seed", type=int, default=1000, help="training items' seed (keep off 0 and 1)")
    s.add_argument("--message-tokens", type=int, default=48)
    s.add_argument("--kl-weight", type=float, default=0.0, help="KL alignment to B reading the text message")
    s.add_argument("--compress", type=int, metavar="K", help="train K latents on top of --adapter instead")
    s.add_argument("--adapter", help="with --compress: the base adapter's directory")
    s.add_argument("--ce-weight", type=float, default=0.0, help="with --compress: weight of the answer's CE")
    s.add_argument("--out", required=True)

    s = sub.add_parser(
        "reasoning", help="GSM8k / MMLU / Biographies: single models, debate, AC; compute; resumable"
    )
    s.add_argument(
        "--task", required=True, help="gsm8k, mmlu:SUBJECT (e.g. mmlu:formal_logic) or biographies"
    )
    s.add_argument("--sender", required=True)
    s.add_argument("--receiver", required=True)
    s.add_argument(
        "--methods",
        default="single-a,single-b,nld,ac",
        help="single-a,single-b,nld,nld-r<N>,cipher-debate,ac,ac-w,ac-unrelated,ac-cot",
    )
    s.add_argument("--n", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--k", type=int, default=None, help="A's block for ac")
    s.add_argument("--j", type=int, default=None, help="B's block for ac")
    s.add_argument(
        "--layers-from",
        help="model --k/--j were chosen on (e.g. its games sweep): map them by relative depth",
    )
    s.add_argument("--rounds", type=int, default=2, help="debate rounds of nld")
    s.add_argument("--a-temperature", type=float, default=0.0, help="A samples its text (0: greedy)")
    s.add_argument("--a-top-p", type=float, default=0.9, help="A's nucleus threshold when sampling")
    s.add_argument("--a-seed", type=int, default=0, help="seed of A's sampling")
    s.add_argument(
        "--answers",
        default=None,
        help="directory of single-model answers shared between runs (single-a/single-b generated once)",
    )
    s.add_argument(
        "--judge",
        default="qwen2.5-coder-1.5b",  # biographies.DEFAULT_JUDGE (tested), without importing torch at start
        help="biographies: the judge model ('' to generate only)",
    )
    s.add_argument("--max-new-tokens", type=int, default=256)
    s.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="items decoded together by single-a, single-b, ac, ac-w, ac-unrelated (same greedy answers)",
    )
    s.add_argument("--map", help="learned W for ac-w")
    s.add_argument("--source", choices=("offline", "hub"), default="offline")
    s.add_argument("--backend", choices=BACKEND_CHOICES, default="nnsight")
    s.add_argument("--out", required=True)

    s = sub.add_parser("sweep", help="the full (k, j) grid on a game (fast engine), resumable")
    s.add_argument("--game", required=True, help=GAME_HELP)
    s.add_argument("--sender", required=True)
    s.add_argument("--receiver", required=True)
    s.add_argument("--f", default="replace", choices=("sum", "mean", "replace"))
    s.add_argument("--k-range", help="e.g. 0:29, 0:29:2 or 10,20 (default: all layers)")
    s.add_argument("--j-range", help="as --k-range")
    s.add_argument("--n", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--position", choices=("last", "content"), default="last")
    s.add_argument("--backend", choices=BACKEND_CHOICES, default="nnsight")
    s.add_argument("--max-new-tokens", type=int, default=8, help="greedy tokens per cell (0: log-prob only)")
    s.add_argument(
        "--no-reply", action="store_true", help="B answers from scratch (no 'Alice is located in' opening)"
    )
    s.add_argument("--out", required=True)

    s = sub.add_parser("distance", help="distances of grafted states from the receiver's manifold")
    s.add_argument("--game", required=True, help=GAME_HELP)
    s.add_argument("--sender", required=True)
    s.add_argument("--receiver", required=True)
    s.add_argument("--k", type=int, required=True)
    s.add_argument("--j", type=int, required=True)
    s.add_argument("--methods", default="ac-sum,ac-mean,ac-replace", help="ac-* (and ac-w-* with --map)")
    s.add_argument("--alphas", default="1.0", help="comma-separated, e.g. 0,0.5,1,1.5,2")
    s.add_argument("--match-norm", choices=("off", "on", "both"), default="off")
    s.add_argument("--controls", default="random,gaussian,unrelated", help="comma-separated; '' for none")
    s.add_argument(
        "--n-positions", default="1", help="grafted positions ending at --position, comma-separated: 1,2,4,8"
    )
    s.add_argument("--n", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--position", choices=("last", "content"), default="last")
    s.add_argument("--map", help="learned W for ac-w-* methods")
    s.add_argument(
        "--n-reference", type=int, default=3072, help="sentences (or task prompts) for B's reference set"
    )
    s.add_argument(
        "--reference",
        choices=REFERENCE_CHOICES,
        default="corpus",
        help="B's states on raw sentences, on sentences in B's prompt format at the graft's position, "
        "or on the game's own prompts (both sides, items no evaluation draws) at that position",
    )
    s.add_argument("--backend", choices=BACKEND_CHOICES, default="nnsight")
    s.add_argument("--out", required=True)

    s = sub.add_parser("sweep-n", help="accuracy, distance and compute against how much state is sent")
    s.add_argument("--game", required=True, help=GAME_HELP)
    s.add_argument("--sender", required=True)
    s.add_argument("--receiver", required=True)
    s.add_argument(
        "--methods",
        default="ac-replace,cipher,interlat-norm",
        help="ac-sum,ac-mean,ac-replace,cipher,cipher-t<T>,interlat,interlat-norm,interlat-trained",
    )
    s.add_argument("--adapter", help="interlat-trained: the directory train-adapter wrote")
    s.add_argument("--ns", default="0,1,2,4,8,all", help="n to sweep, comma-separated; all sends everything")
    s.add_argument("--k", type=int, default=None, help="A's block (ac-*)")
    s.add_argument("--j", type=int, default=None, help="B's block (ac-*)")
    s.add_argument("--position", choices=("last", "content"), default="last", help="AC's message position")
    s.add_argument("--n", type=int, default=None, help="items (default: 100 countries, 70 tipsheets)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--message-tokens", type=int, default=48, help="longest message A writes (latent)")
    s.add_argument("--max-new-tokens", type=int, default=24)
    s.add_argument("--n-reference", type=int, default=3072, help="size of B's reference sets")
    s.add_argument(
        "--reference",
        choices=REFERENCE_CHOICES,
        default="task",
        help="AC's reference for B's layer-j states (see commlib distance --help)",
    )
    s.add_argument("--backend", choices=BACKEND_CHOICES, default="nnsight")
    s.add_argument("--out", required=True)

    s = sub.add_parser("demo", help="one exchange per f on a toy Countries item")
    s.add_argument("--model", default="smollm2-135m")
    return p


COMMANDS = {
    "models": _cmd_models,
    "fetch": _cmd_fetch,
    "graft": _cmd_graft,
    "fit-map": _cmd_fit_map,
    "games": _cmd_games,
    "latent": _cmd_latent,
    "reasoning": _cmd_reasoning,
    "train-adapter": _cmd_train_adapter,
    "sweep": _cmd_sweep,
    "distance": _cmd_distance,
    "sweep-n": _cmd_sweep_n,
    "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``commlib`` and ``python -m commlib``; returns the exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard loading bars drown the output
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CommlibError as exc:
        print(f"commlib: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("commlib: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
