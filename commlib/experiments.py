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

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor

from commlib.combine import LinearMap
from commlib.errors import CommlibError
from commlib.methods import MethodConfig, method_fn, run_method
from commlib.models import Model
from commlib.prompts import Position, format_prompt
from commlib.results import (
    ItemStore,
    append_rows,
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


SWEEP_FIELDS = (
    "item_id",
    "k",
    "j",
    "answer",
    "answer_logprob",
    "greedy_answer",
    "silent_logprob",
    "silent_greedy_answer",
    "text",
    "correct",
)


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
    position: Position = "last",
    reply: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """The full (k, j) grid on a game, one item at a time, resumable.

    ``position`` and ``reply`` as in :func:`run_games`.

    Rows go to ``out_dir/sweep.csv`` (one per item, k, j) as each item
    finishes; items already there are skipped on a re-run.

    Returns:
        The tidy table: item_id, k, j, answer, answer_logprob, greedy_answer
        (greedy decoding starts with the answer), silent_logprob and
        silent_greedy_answer (B alone), text, correct (the answer in the first
        line of the greedy text; empty with ``max_new_tokens=0``), and
        logprob_gain (answer_logprob - silent_logprob).
    """
    from tqdm.auto import tqdm

    from commlib.sweep import sweep_item

    ks = list(range(sender.info.n_layers)) if ks is None else list(ks)
    js = list(range(receiver.info.n_layers)) if js is None else list(js)
    items = load_game(game, n=n, seed=seed, reply=reply)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    claim_run_dir(
        out,
        {
            "game": game,
            "seed": seed,
            "sender": sender.name,
            "receiver": receiver.name,
            "ks": ks,
            "js": js,
            "f": f,
            "backend": backend,
            "max_new_tokens": max_new_tokens,
            "position": position,
            "reply": reply,
        },
    )
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
            "position": position,
            "reply": reply,
            "example_prompts": {
                "sender": format_prompt(sender, items[0].sender),
                "receiver": format_prompt(receiver, items[0].receiver, reply=items[0].reply),
            },
            "versions": package_versions(),
        },
    )
    for item in tqdm([it for it in items if it.id not in done], desc="sweep", disable=not progress):
        cells = sweep_item(
            sender,
            receiver,
            item,
            ks,
            js,
            f=f,
            backend=backend,
            max_new_tokens=max_new_tokens,
            position=position,
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
                    "greedy_answer": c["greedy_answer"],
                    "silent_logprob": c["silent_logprob"],
                    "silent_greedy_answer": c["silent_greedy_answer"],
                    "text": c["text"],
                    "correct": contains_answer(c["text"], item.answer, item.choices)
                    if max_new_tokens
                    else "",
                }
                for c in cells
            ),
        )
    return read_sweep(out)


def read_sweep(out_dir: str | Path) -> pd.DataFrame:
    """A sweep's table with ``logprob_gain`` and the run's ``position`` added."""
    out = Path(out_dir)
    df = pd.read_csv(out / "sweep.csv")
    position = json.loads((out / "run.json").read_text()).get("position", "last")
    return df.assign(logprob_gain=df["answer_logprob"] - df["silent_logprob"], position=position)


def best_layers(df: pd.DataFrame) -> pd.Series:
    """The (k, j, position) cell with the highest greedy accuracy, ties by mean log-prob gain.

    Example:
        >>> df = pd.DataFrame({"k": [0, 1], "j": [2, 2], "position": "last",
        ...                    "greedy_answer": [True, True], "logprob_gain": [0.5, 1.5]})
        >>> top = best_layers(df)
        >>> int(top["k"]), int(top["j"]), top["position"]
        (1, 2, 'last')
    """
    cells = (
        df.groupby(["k", "j", "position"])
        .agg(
            accuracy=("greedy_answer", "mean"),
            logprob_gain=("logprob_gain", "mean"),
            n=("item_id", "nunique") if "item_id" in df else ("k", "size"),
        )
        .sort_values(["accuracy", "logprob_gain"], ascending=False)
        .reset_index()
    )
    return cells.iloc[0]


SELECTION_N = 6
"""Items per game in the layer-selection sweeps (seed 0; results are reported on seed 1)."""


def selection_step(model: Model) -> int:
    """Layer stride of the selection sweeps: about ten layers per axis."""
    return max(1, round(model.info.n_layers / 10))


def sweep_dir(
    root: str | Path, model: str, game: str, *, f: str, position: str, seed: int, n: int, step: int
) -> Path:
    """Where a sweep of ``model`` (A = B) on ``game`` lives under ``root`` (notebooks and scripts agree)."""
    return Path(root) / model / Path(game).stem / f"{f}_{position}_seed{seed}_n{n}_step{step}"


def choose_layers(
    model: Model,
    game: str,
    *,
    sweep_root: str | Path,
    n: int = SELECTION_N,
    seed: int = 0,
    f: str = "replace",
    positions: Sequence[Position] = ("last", "content"),
    progress: bool = True,
) -> pd.Series:
    """Pick (k, j, position) for ``model`` (A = B) on ``game`` from selection sweeps.

    Runs (or resumes from ``sweep_root``) a log-prob-only sweep per position
    over every :func:`selection_step`-th layer on ``n`` items of ``seed``, and
    returns :func:`best_layers` over all of them. Choose on a seed you do not
    report.
    """
    step = selection_step(model)
    layers = list(range(0, model.info.n_layers, step))
    frames = [
        run_sweep(
            game,
            model,
            model,
            out_dir=sweep_dir(sweep_root, model.name, game, f=f, position=p, seed=seed, n=n, step=step),
            ks=layers,
            js=layers,
            f=f,
            n=n,
            seed=seed,
            max_new_tokens=0,
            position=p,
            progress=progress,
        )
        for p in positions
    ]
    return best_layers(pd.concat(frames, ignore_index=True))


CONTROLS = ("random", "gaussian", "unrelated")
"""Control sources for the distance runs, in place of A's message:

* ``random``: an isotropic random direction at the norm of A's activation.
* ``gaussian``: a sample of a Gaussian with the mean and covariance of A's own
  activations at layer k (LAMBADA reference), at the norm of A's activation.
* ``unrelated``: A's real activation on another item's prompt (right
  statistics, wrong content).
"""


def _control_sources(
    a: Tensor,
    sender: Model,
    k: int,
    controls: Sequence[str],
    *,
    n_reference: int,
    seed: int,
    backend: str,
    **reference: Any,
) -> dict[str, Tensor]:
    """A's states ``[items, n, d]`` and the requested :data:`CONTROLS` in their place.

    A's reference is captured only for ``gaussian``; ``unrelated`` takes the
    states of the previous item (all n positions).
    """
    import torch

    from commlib.distance import covariance_matched, random_directions, reference_activations

    g = torch.Generator().manual_seed(seed)
    rows = a.reshape(-1, a.shape[-1])
    norms = rows.norm(dim=-1, keepdim=True)
    sources = {"a": a}
    if "random" in controls:
        sources["random"] = random_directions(norms, a.shape[-1], g).reshape(a.shape)
    if "gaussian" in controls:
        ref = reference_activations(sender, k, n=n_reference, seed=seed, backend=backend, **reference).fit
        gauss = covariance_matched(ref, len(rows), g)
        sources["gaussian"] = (gauss / gauss.norm(dim=-1, keepdim=True) * norms).reshape(a.shape)
    if "unrelated" in controls:
        sources["unrelated"] = a.roll(1, dims=0)
    return sources


def _writes(x: Tensor) -> Callable[[Tensor], Tensor]:
    """An edit function that puts ``x`` (``[rows, n, d]``) at the edited positions."""
    return lambda b: x.to(b)


def run_distance(
    game: str,
    sender: Model,
    receiver: Model,
    *,
    k: int,
    j: int,
    out_dir: str | Path,
    fs: Sequence[str] = ("sum", "mean", "replace"),
    alphas: Sequence[float] = (1.0,),
    match_norm: Sequence[bool] = (False,),
    controls: Sequence[str] = CONTROLS,
    n_positions: Sequence[int] = (1,),
    n: int | None = None,
    seed: int = 0,
    position: Position = "last",
    map: LinearMap | None = None,
    corpus: str = "lambada",
    n_reference: int = 3072,
    reference: str = "corpus",
    backend: str = "nnsight",
    progress: bool = True,
) -> pd.DataFrame:
    """Distances of injected states from B's manifold at layer ``j``, per item and configuration.

    For every source (A's message and the :data:`CONTROLS`), f, alpha and
    norm control, the state the graft would write, ``b + alpha (f(s, b) - b)``,
    is measured against B's own activations (raw metrics and percentiles, see
    :class:`commlib.distance.Manifold`; vectorised over items), with its
    displacement from ``b``, the KL divergence it causes in B's next-token
    distribution, and what it does to the answer (teacher-forced log-prob
    and greedy-answer flag, next to B alone; one batched receiver pass per
    item for all configurations).

    ``n_positions`` grafts the last n positions (aligned from the end, see
    :func:`commlib.prompts.message_span`); every distance of a row is then
    the mean over its n states, while the answer scores see all of them.

    ``reference="corpus"`` measures against B's final-token states on raw
    corpus sentences; ``"prompt"`` against B's states at the same position of
    the same prompt format, each corpus sentence as the user's text followed
    by the first item's reply (B's states at a chat template's closing
    tokens lie far from every raw-text state, so only this reference can
    rank grafted states there). The Gaussian control follows the same choice
    for A.

    Writes ``out_dir/distances.csv`` (an item's rows appended as it finishes;
    a re-run resumes) and ``out_dir/run.json``.

    Returns:
        The tidy table.
    """
    import torch
    from tqdm.auto import tqdm

    from commlib.backends import get_backend
    from commlib.combine import combine
    from commlib.distance import manifold_for, next_token_kl
    from commlib.graft import capture_span
    from commlib.sweep import ReceiverItem

    if reference not in ("corpus", "prompt"):
        raise CommlibError(f"unknown reference {reference!r}; use corpus or prompt")
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise CommlibError(f"unknown control(s) {', '.join(unknown)}; use {', '.join(CONTROLS)}")
    items = load_game(game, n=n, seed=seed)
    out = Path(out_dir)
    claim_run_dir(
        out,
        {
            "game": game,
            "sender": sender.name,
            "receiver": receiver.name,
            "k": k,
            "j": j,
            "fs": list(fs),
            "alphas": list(alphas),
            "match_norm": list(match_norm),
            "controls": list(controls),
            "n_positions": list(n_positions),
            "n": len(items),
            "seed": seed,
            "position": position,
            "map": asdict(map.info) if map is not None else None,
            "corpus": corpus,
            "n_reference": n_reference,
            "reference": reference,
            "backend": backend,
        },
    )
    path = out / "distances.csv"
    done: set[tuple[str, int]] = set()
    if path.exists():
        finished = pd.read_csv(path)
        done = set(zip(finished["item_id"].astype(str), finished["n_positions"].astype(int), strict=True))
    formatted = reference == "prompt"
    manifold = manifold_for(
        receiver, j, corpus=corpus, n=n_reference, seed=seed, backend=backend, formatted=formatted,
        position=position, reply=items[0].reply if formatted else "",
    )  # fmt: skip
    sb, rb = get_backend(sender, backend), get_backend(receiver, backend)
    s_prompts = [it.sender for it in items]
    r_prompts, replies = [it.receiver for it in items], [it.reply for it in items]
    for n_pos in n_positions:
        if all((it.id, n_pos) in done for it in items):
            continue
        a = capture_span(sb, s_prompts, k, position, n_pos).float().cpu()  # [items, n, d_A]
        b = capture_span(rb, r_prompts, j, position, n_pos, replies=replies).float().cpu()
        sources = _control_sources(
            a, sender, k, controls, n_reference=n_reference, seed=seed, backend=backend, corpus=corpus,
            formatted=formatted, position=position,
        )  # fmt: skip
        configs, states, tables = [], [], []
        item_of_row = np.repeat(np.arange(len(items)), n_pos)
        for source in ("a", *controls):
            for f in fs:
                for alpha in alphas:
                    for norm in match_norm:
                        x = combine(sources[source], b, f, map=map, alpha=alpha, match_norm=norm)
                        configs.append({"source": source, "f": f, "alpha": alpha, "match_norm": norm})
                        states.append(x)
                        flat = manifold.table(x.reshape(-1, x.shape[-1]), b.reshape(-1, b.shape[-1]))
                        tables.append(flat.groupby(item_of_row).mean())  # vectorised; mean over positions
        x_all = torch.stack(states, dim=1)  # [items, configs, n, d_B]
        for i, item in enumerate(tqdm(items, desc=f"distance n={n_pos}", disable=not progress)):
            if (item.id, n_pos) in done:
                continue
            rx = ReceiverItem(receiver, item, position=position, n_positions=n_pos, backend=backend)
            scores = rx.score(j, _writes(x_all[i]), len(configs))
            kl = next_token_kl(rx.silent_next_logits.expand_as(scores.next_logits), scores.next_logits)
            rows = [
                {
                    "item_id": item.id,
                    "n_positions": n_pos,
                    **cfg,
                    **tables[c].iloc[i].to_dict(),
                    "next_token_kl": float(kl[c]),
                    "answer_logprob": float(scores.answer_logprob[c]),
                    "greedy_answer": bool(scores.greedy_answer[c]),
                    "silent_logprob": rx.silent_logprob,
                    "silent_greedy_answer": rx.silent_greedy_answer,
                    "logprob_gain": float(scores.answer_logprob[c]) - rx.silent_logprob,
                }
                for c, cfg in enumerate(configs)
            ]
            frame = pd.DataFrame(rows)
            frame.to_csv(path, mode="a", header=not path.exists(), index=False)
    return pd.read_csv(path)


REASONING_FIELDS = (
    "item_id", "method", "answer", "extracted", "correct", "output", "transcript", "seconds",
    "prompt_a", "prompt_b", "message_tokens", "answer_tokens", "flops",
)  # fmt: skip


def run_reasoning(
    task: str,
    sender: Model,
    receiver: Model,
    methods: Sequence[str],
    *,
    out_dir: str | Path,
    n: int | None = 100,
    seed: int = 0,
    k: int | None = None,
    j: int | None = None,
    rounds: int = 2,
    max_new_tokens: int = 256,
    map: LinearMap | None = None,
    backend: str = "nnsight",
    source: str = "offline",
    progress: bool = True,
) -> dict[str, Any]:
    """Reasoning methods on ``gsm8k`` or ``mmlu:SUBJECT`` (paper Section 4.2); resumable.

    Per item and method, ``out_dir/items.csv`` keeps B's output (and the debate
    transcript), the extracted answer, wall time, token counts and analytic
    FLOPs (:func:`commlib.compute.method_flops`, KV cache). ``results.json``
    has per method accuracy with a 95% bootstrap CI, mean FLOPs (also
    relative to one forward pass of the smaller model over the mean prompt),
    mean wall time and generated tokens, and the configuration.

    Returns:
        The content of ``results.json``.
    """
    import json as _json

    from tqdm.auto import tqdm

    from commlib.compute import Shape, forward_flops, method_flops
    from commlib.methods.reasoning import (
        REASONING_METHODS,
        ReasoningConfig,
        question_prompt,
        run_reasoning_method,
    )
    from commlib.results import bootstrap_ci
    from commlib.tasks.reasoning import extract_choice, extract_number, is_correct, load_task

    unknown = [m for m in methods if m not in REASONING_METHODS]
    if unknown:
        raise CommlibError(f"unknown method(s) {', '.join(unknown)}; use {', '.join(REASONING_METHODS)}")
    items = load_task(task, n, seed, source=source)  # type: ignore[arg-type]
    cfg = ReasoningConfig(k=k, j=j, rounds=rounds, max_new_tokens=max_new_tokens, backend=backend)
    out = Path(out_dir)
    settings = {"task": task, "sender": sender.name, "receiver": receiver.name, **asdict(cfg),
                "n": len(items), "seed": seed, "source": source,
                "map": asdict(map.info) if map is not None else None}  # fmt: skip
    claim_run_dir(out, settings)
    path = out / "items.csv"
    rows = pd.read_csv(path).to_dict("records") if path.exists() else []
    done = {(str(r["item_id"]), r["method"]) for r in rows}
    shape_a, shape_b = Shape.from_config(sender.hf.config), Shape.from_config(receiver.hf.config)
    for method in methods:
        kind = "ac" if method.startswith("ac") else method
        for item in tqdm(items, desc=method, disable=not progress):
            if (item.id, method) in done:
                continue
            o = run_reasoning_method(method, item, sender, receiver, cfg, map)
            flops = method_flops(kind, shape_a, shape_b, prompt_a=o.prompt_a, prompt_b=o.prompt_b,
                                 message=o.message, answer=o.answer, k=k, rounds=rounds)["total"]  # fmt: skip
            row = {
                "item_id": item.id, "method": method, "answer": item.answer,
                "extracted": (extract_choice if item.choices else extract_number)(o.text) or "",
                "correct": is_correct(item, o.text), "output": o.text,
                "transcript": _json.dumps(o.transcript),
                "seconds": o.seconds, "prompt_a": o.prompt_a, "prompt_b": o.prompt_b,
                "message_tokens": o.message, "answer_tokens": o.answer, "flops": flops,
            }  # fmt: skip
            append_rows(path, REASONING_FIELDS, [row])
            rows.append(row)
    df = pd.DataFrame(rows)
    df["correct"] = df["correct"].astype(str).isin(["True", "1"])
    smaller = min((shape_a, shape_b), key=lambda s: forward_flops(s, 1))
    unit = forward_flops(smaller, max(1, round(float(df[["prompt_a", "prompt_b"]].max(axis=1).mean()))))
    summary = {}
    for method in methods:
        sub = df[df["method"] == method]
        lo, hi = bootstrap_ci(sub["correct"].astype(float).tolist(), seed=seed)
        summary[method] = {
            "accuracy": float(sub["correct"].mean()), "ci_low": lo, "ci_high": hi, "n": len(sub),
            "flops": float(sub["flops"].mean()), "flops_vs_one_pass": float(sub["flops"].mean()) / unit,
            "seconds": float(sub["seconds"].mean()),
            "generated_tokens": float((sub["message_tokens"] + sub["answer_tokens"]).mean()),
        }  # fmt: skip
    result = {
        "task": task,
        "methods": summary,
        "config": {
            **settings, "sender": sender.info.to_dict(), "receiver": receiver.info.to_dict(),
            "shapes": {"sender": shape_a.to_dict(), "receiver": shape_b.to_dict()},
            "one_pass_flops": unit, "example_prompt": question_prompt(items[0]),
            "decoding": "greedy", "flops": "analytic, KV cache (commlib.compute.method_flops)",
            "ci": "95% percentile bootstrap, 1000 resamples", "versions": package_versions(),
        },
    }  # fmt: skip
    write_json(out / "results.json", result)
    return result


def run_latent_distance(
    game: str,
    sender: Model,
    receiver: Model,
    methods: Sequence[str],
    *,
    out_dir: str | Path,
    n: int | None = 20,
    seed: int = 0,
    n_reference: int = 3072,
    message_tokens: int = 48,
    progress: bool = True,
) -> pd.DataFrame:
    """How far latent messages sit from B's own input embeddings, per item and method.

    For each latent method (``cipher-t<T>``, ``interlat``, ``interlat-norm``,
    a registered ``interlat-trained``), the vectors B would read are measured
    against B's input embeddings of corpus tokens
    (:func:`commlib.distance.input_reference`), each metric the mean over the
    message's vectors, raw and as a percentile (50: a typical token of B's;
    100: beyond all). ``cipher-t0`` is the text message itself (real token
    embeddings). Writes ``out_dir/latent_distances.csv`` (resumes) and
    ``out_dir/run.json``.

    Raises:
        CommlibError: a method that sends no vectors (use the latent ones).
    """
    from tqdm.auto import tqdm

    from commlib.distance import Manifold, input_reference
    from commlib.methods import SlotMethod

    makers = {}
    for name in methods:
        fn = method_fn(name)
        if not isinstance(fn, SlotMethod):
            raise CommlibError(f"{name} sends no vectors; use cipher-t<T> or interlat(-norm, -trained)")
        makers[name] = fn.make
    items = load_game(game, n=n, seed=seed)
    out = Path(out_dir)
    claim_run_dir(out, {"game": game, "sender": sender.name, "receiver": receiver.name,
                        "n": len(items), "seed": seed, "n_reference": n_reference,
                        "message_tokens": message_tokens})  # fmt: skip
    path = out / "latent_distances.csv"
    done: set[tuple[str, str]] = set()
    if path.exists():
        finished = pd.read_csv(path)
        done = set(zip(finished["item_id"].astype(str), finished["method"], strict=True))
    manifold = Manifold.fit(input_reference(receiver, n=n_reference, seed=seed))
    cfg = MethodConfig(k=None, j=None, message_tokens=message_tokens)
    for item in tqdm(items, desc="latent distance", disable=not progress):
        rows = []
        for name, make in makers.items():
            if (item.id, name) in done:
                continue
            vectors, text = make(item, sender, receiver, cfg)
            if len(vectors) == 0:
                continue
            table = manifold.table(vectors.detach().float().cpu()).mean()
            rows.append({"item_id": item.id, "method": name, "length": len(vectors), **table.to_dict(),
                         "message": text})  # fmt: skip
        if rows:
            pd.DataFrame(rows).to_csv(path, mode="a", header=not path.exists(), index=False)
    return pd.read_csv(path)
