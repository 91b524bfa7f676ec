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
from typing import Any

from tqdm.auto import tqdm

from commlib.channels.interlat import check_zero_shot_pair
from commlib.channels.vocab import vocabulary_settings
from commlib.combine import LinearMap
from commlib.models import Model
from commlib.prompts import Position, format_prompt
from commlib.protocols.games import MethodConfig, MethodOutput, method_fn, run_method
from commlib.registry import check_layers, check_map, check_methods
from commlib.results import Run, contains_answer, exact_match, package_versions, placement
from commlib.tasks.games import GameItem, load_game


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
    methods = check_methods(methods, "games")  # canonical names (ac: ac-replace), each once
    check_map(methods, map)
    check_layers(methods, k, j)
    for m in methods:
        method_fn(m)  # an unknown name, or an adapter's method not bound, fails here, before any work
    check_zero_shot_pair(methods, sender, receiver)
    items = load_game(game, n=n, seed=seed, reply=reply)
    cfg = MethodConfig(k=k, j=j, position=position, max_new_tokens=max_new_tokens, backend=backend)
    map_info = asdict(map.info) if map is not None else None
    settings: dict[str, Any] = {"game": game, "seed": seed, "sender": sender.name, "receiver": receiver.name}
    settings["placement"] = placement(sender=sender, receiver=receiver)  # dtype, attention compared on resume
    settings.update(vocabulary_settings(methods, sender, receiver))  # or refused, before any work
    run = Run(out_dir, {**settings, **asdict(cfg), "reply": reply, "map": map_info})
    for method in methods:
        todo = run.pending(items, method=method)
        batches = range(0, len(todo), batch_size)
        for start in tqdm(batches, desc=method, disable=not progress, leave=False):
            chunk = todo[start : start + batch_size]
            outs = run_method(method, chunk, sender, receiver, cfg, map)
            run.add(_item_row(method, it, o) for it, o in zip(chunk, outs, strict=True))
    config = _games_config(sender, receiver, cfg, items, seed=seed, map_info=map_info, reply=reply)
    return run.write({"game": game, "methods": run.summary(methods, seed=seed), "config": config})


def _item_row(method: str, item: GameItem, out: MethodOutput) -> dict[str, Any]:
    """One row of ``items.csv``: B's answer to ``item`` under ``method``, scored."""
    return {
        "item_id": item.id,
        "method": method,
        "answer": item.answer,
        "output": out.text,
        "message": out.message or "",
        "correct": contains_answer(out.text, item.answer, item.choices),
        "exact": exact_match(out.text, item.answer),
    }


def _games_config(
    sender: Model,
    receiver: Model,
    cfg: MethodConfig,
    items: Sequence[GameItem],
    *,
    seed: int,
    map_info: dict[str, Any] | None,
    reply: bool,
) -> dict[str, Any]:
    """The configuration recorded in ``results.json``: the models, the method settings, an example prompt."""
    return {
        "sender": sender.info.to_dict(),
        "receiver": receiver.info.to_dict(),
        **asdict(cfg),
        "n": len(items),
        "seed": seed,
        "map": map_info,
        "prompt_formats": {"sender": sender.info.prompt_format, "receiver": receiver.info.prompt_format},
        "example_prompts": example_prompts(sender, receiver, items[0]),
        "reply": reply,
        "decoding": "greedy",
        "scoring": "answer in the first answer line, case-insensitive; exact_match strict",
        "ci": "95% percentile bootstrap, 1000 resamples",
        "versions": package_versions(),
        "placement": placement(sender=sender, receiver=receiver),
    }


def example_prompts(sender: Model, receiver: Model, item: GameItem) -> dict[str, str]:
    """What A and B read for ``item``, in each model's prompt format (recorded with a run's results).

    Example:
        >>> from commlib.models import load_model
        >>> from commlib.tasks.games import countries
        >>> m, item = load_model("tiny-llama-random"), countries(1)[0]
        >>> example_prompts(m, m, item)["receiver"].endswith(item.reply)
        True
    """
    return {
        "sender": format_prompt(sender, item.sender),
        "receiver": format_prompt(receiver, item.receiver, reply=item.reply),
    }
