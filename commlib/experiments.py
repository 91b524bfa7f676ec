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

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from commlib.combine import LinearMap
from commlib.errors import CommlibError
from commlib.methods import METHODS, MethodConfig, run_method
from commlib.models import Model
from commlib.prompts import Position, format_prompt
from commlib.results import ItemStore, append_rows, contains_answer, exact_match, package_versions, write_json
from commlib.tasks.games import load_game


def run_games(
    game: str,
    sender: Model,
    receiver: Model,
    methods: Sequence[str],
    *,
    k: int,
    j: int,
    out_dir: str | Path,
    n: int | None = None,
    seed: int = 0,
    position: Position = "last",
    map: LinearMap | None = None,
    backend: str = "nnsight",
    batch_size: int = 8,
    max_new_tokens: int = 24,
    progress: bool = True,
) -> dict[str, Any]:
    """Run methods on a game, append per-item rows to ``out_dir/items.csv``, summarise.

    Re-running with the same ``out_dir`` resumes: finished (item, method) rows are kept.

    Returns:
        The content written to ``out_dir/results.json``: per method accuracy,
        ci_low, ci_high, exact_match, n, and the full configuration.
    """
    from tqdm.auto import tqdm

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CommlibError(f"unknown method(s) {', '.join(unknown)}; use {', '.join(METHODS)}")
    items = load_game(game, n=n, seed=seed)
    cfg = MethodConfig(k=k, j=j, position=position, max_new_tokens=max_new_tokens, backend=backend)
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
                        "correct": contains_answer(o.text, it.answer),
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
                "receiver": format_prompt(receiver, example.receiver),
            },
            "decoding": "greedy",
            "scoring": "answer in the first answer line, case-insensitive; exact_match strict",
            "ci": "95% percentile bootstrap, 1000 resamples",
            "versions": package_versions(),
        },
    }
    write_json(Path(out_dir) / "results.json", result)
    return result


SWEEP_FIELDS = ("item_id", "k", "j", "answer", "answer_logprob", "text", "correct")


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
    progress: bool = True,
) -> pd.DataFrame:
    """The full (k, j) grid on a game, one item at a time, resumable.

    Rows go to ``out_dir/sweep.csv`` (one per item, k, j) as each item
    finishes; items already there are skipped on a re-run.

    Returns:
        The tidy table: item_id, k, j, answer, answer_logprob, text, correct.
    """
    from tqdm.auto import tqdm

    from commlib.sweep import sweep_item

    ks = list(range(sender.info.n_layers)) if ks is None else list(ks)
    js = list(range(receiver.info.n_layers)) if js is None else list(js)
    items = load_game(game, n=n, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
            "position": "last",
            "versions": package_versions(),
        },
    )
    for item in tqdm([it for it in items if it.id not in done], desc="sweep", disable=not progress):
        cells = sweep_item(
            sender, receiver, item, ks, js, f=f, backend=backend, max_new_tokens=max_new_tokens
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
                    "text": c["text"],
                    "correct": contains_answer(c["text"], item.answer),
                }
                for c in cells
            ),
        )
    return pd.read_csv(path)
