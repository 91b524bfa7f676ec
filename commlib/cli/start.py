"""First steps: ``commlib models``, ``commlib fetch`` and ``commlib demo``."""

from __future__ import annotations

import argparse

from commlib.cli.base import add_command, load_placed
from commlib.config import DemoRun

DATA = ("lambada", "gsm8k", "mmlu", "biographies")
"""Data sets ``commlib fetch`` caches (other names are models)."""


def models(args: argparse.Namespace) -> int:
    from commlib.models import OFFLINE_MODELS, RANDOM_MODELS, cache_dir, is_cached

    print(f"cache: {cache_dir()}")
    print(f"{'name':<24}{'kind':<10}{'cached':<8}description")
    for name, spec in OFFLINE_MODELS.items():
        print(f"{name:<24}{'offline':<10}{'yes' if is_cached(name) else 'no':<8}{spec.description}")
    for name, rspec in RANDOM_MODELS.items():
        print(f"{name:<24}{'random':<10}{'-':<8}{rspec.description}")
    print("Also accepted: a local model directory, or a hub id (org/name) when online.")
    return 0


def fetch(args: argparse.Namespace) -> int:
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


def demo(run: DemoRun) -> int:
    """One Countries item through B alone, the skyline, NL and AC, with the games' own prompts."""
    from commlib.protocols.games import MethodConfig, run_method
    from commlib.results import contains_answer
    from commlib.tasks.games import GameItem

    model = load_placed(run.model, run.placement)
    item = GameItem(
        sender="Alice is at the Eiffel Tower.",
        receiver="Which country is Alice located in?",
        answer="France",
        id="demo",
        reply="Alice is located in",  # B's answer opens with it, as in every Countries item
    )
    k = j = (2 * model.info.n_layers) // 3
    cfg = MethodConfig(k=k, j=j, max_new_tokens=24)
    print(
        f"{model.name} ({model.info.n_layers} blocks) is both A and B; AC puts A's state after block {k} "
        f"in place of B's after block {j}; greedy."
    )
    print(f"A reads:      {item.sender}")
    print(f"B is asked:   {item.receiver}")
    print(f"right answer: {item.answer}\n")
    rows = [
        ("B alone", "silent", "its question"),
        ("skyline", "skyline", "A's sentence, then its question"),
        ("NL", "nl", "A's message, then its question"),
        ("AC", "ac-replace", "its question, with A's state"),
    ]
    width = max(len(what) for *_, what in rows) + 2
    print(f"  {'':<9}{'B reads':<{width}}B answers")
    right = []
    for label, method, what in rows:
        out = run_method(method, [item], model, model, cfg)[0]
        ok = contains_answer(out.text, item.answer, item.choices)
        right += [label] if ok else []
        answer = f"{item.reply} {out.text.strip()}".splitlines()[0]
        print(f"{'✓' if ok else '✗'} {label:<9}{what:<{width}}{answer}")
        if out.message is not None:
            message = " ".join(out.message.split())
            print(f"  {'':<9}(A's message: {message[:70] + '...' if len(message) > 70 else message})")
    missed = [label for label, *_ in rows if label not in right]
    if right:
        print(
            f"\ngot {item.answer}: {', '.join(right)}"
            + (f"; missed it: {', '.join(missed)}" if missed else "")
        )
    else:
        print(f"\nnone got {item.answer}: {', '.join(missed)} all missed it")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``models``, ``fetch`` and ``demo``."""
    add_command(
        commands,
        "models",
        models,
        help="list the registered models and whether each is cached",
        example="commlib models",
    )
    p = add_command(
        commands,
        "fetch",
        fetch,
        help=f"cache offline models, and data: {', '.join(DATA)}",
        example="commlib fetch qwen2.5-coder-0.5b qwen2.5-coder-1.5b gsm8k mmlu",
    )
    p.add_argument("names", nargs="+", help=f"models (see `commlib models`) or data sets: {', '.join(DATA)}")
    p.add_argument("--force", action="store_true", help="fetch again even when cached")
    add_command(
        commands,
        "demo",
        demo,
        config=DemoRun,
        help="one toy Countries item: B alone, the skyline, NL and AC side by side",
        example="commlib demo --model smollm2-135m",
    )
