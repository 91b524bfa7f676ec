"""Does a method carry the message? Every method on a coordination game, resumable.

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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

from commlib.combine import LinearMap
from commlib.methods import MethodConfig, method_fn, run_method
from commlib.models import Model
from commlib.prompts import Position, format_prompt
from commlib.results import (
    ItemStore,
    claim_run_dir,
    contains_answer,
    exact_match,
    package_versions,
    write_json,
)
from commlib.tasks.games import load_game


def run_games(
    game: str,
    sender: Model,
    receiver: Model,
    methods: Sequence[str],
    *,
    k: int | None,
    j: int | None,
    out_dir: str | Path,
    n: int | None = None,
    seed: int = 0,
    position: Position = "last",
    map: LinearMap | None = None,
    backend: str = "nnsight",
    batch_size: int = 8,
    max_new_tokens: int = 24,
    reply: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run methods on a game, append per-item rows to ``out_dir/items.csv``, summarise.

    Re-running with the same ``out_dir`` resumes: finished (item, method) rows are kept.
    ``reply=False`` drops the items' answer openings (see :mod:`commlib.tasks.games`).

    Returns:
        The content written to ``out_dir/results.json``: per method accuracy,
        ci_low, ci_high, exact_match, n, and the full configuration.
    """
    from tqdm.auto import tqdm

    for m in methods:
        method_fn(m)  # an unknown name fails here, before any work
    items = load_game(game, n=n, seed=seed, reply=reply)
    cfg = MethodConfig(k=k, j=j, position=position, max_new_tokens=max_new_tokens, backend=backend)
    claim_run_dir(
        out_dir,
        {
            "game": game,
            "seed": seed,
            "sender": sender.name,
            "receiver": receiver.name,
            **asdict(cfg),
            "reply": reply,
            "map": asdict(map.info) if map is not None else None,
        },
    )
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
                        "correct": contains_answer(o.text, it.answer, it.choices),
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
                "receiver": format_prompt(receiver, example.receiver, reply=example.reply),
            },
            "reply": reply,
            "decoding": "greedy",
            "scoring": "answer in the first answer line, case-insensitive; exact_match strict",
            "ci": "95% percentile bootstrap, 1000 resamples",
            "versions": package_versions(),
        },
    }
    write_json(Path(out_dir) / "results.json", result)
    return result
