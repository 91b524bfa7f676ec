"""Where to graft for reasoning: AC against its content control per depth, and the graft's distance."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from commlib.backends import get_backend
from commlib.backends.base import check_layer
from commlib.combine import LinearMap, combine
from commlib.distance import Manifold, ReferenceSet, next_token_kl
from commlib.errors import CommlibError
from commlib.experiments.held_out import other_items, other_items_name
from commlib.experiments.reasoning import reasoning_dir, run_reasoning
from commlib.graft import GraftConfig, capture_corpus, capture_message, graft_edit
from commlib.models import Model, cache_dir
from commlib.prompts import encode, message_positions
from commlib.protocols.questions import question_prompt
from commlib.results import Run, bootstrap_ci, correct_by_item, paired_difference, placement
from commlib.tasks.reasoning import ReasoningItem, load_task

DEPTH_METHODS = ("single-a", "single-b", "ac-replace", "ac-replace-unrelated")
"""What :func:`run_reasoning_depths` runs at each depth: the models alone, AC and its control."""


def run_reasoning_depths(
    task: str,
    sender: Model,
    receiver: Model,
    blocks: Sequence[int],
    *,
    runs_root: str | Path,
    n: int | None = 20,
    seed: int = 0,
    distance: bool = True,
    n_reference: int = 256,
    exclude: Collection[str] = (),
    progress: bool = True,
    **options: Any,
) -> pd.DataFrame:
    """AC against its control at one relative depth of A and B, for each of B's ``blocks`` (resumable).

    The games sweep picks (k, j) on a coordination game; on a reasoning task
    the pick can be a block where A's last-token state carries nothing of
    the question, and AC then acts as a fixed steering vector. The control
    ``ac-replace-unrelated`` (A reads one fixed unrelated question) tells the two
    apart: only AC's lead over it is communication. For each block ``b`` of
    B this runs :func:`run_reasoning` with :data:`DEPTH_METHODS` at ``j = b``
    and ``k = b`` mapped to A's depth (``layers_from=receiver``: the paper's
    k = j, for models of different depth), in :func:`reasoning_dir`'s
    variant ``depth-j{b}``. Single answers come from ``runs_root/answers``,
    so a block costs its two AC runs. With ``distance``,
    :func:`run_reasoning_distance` of AC's graft at that block goes to the
    run's ``graft_distance`` (forward passes only).

    Args:
        blocks: B's blocks, each used for both models by relative depth.
        n_reference: B's own states the graft is measured against (:func:`run_reasoning_distance`).
        exclude: Item ids left out of the scores (all are run): e.g. those a depth was chosen on,
            to report it on the others.
        options: Passed to :func:`run_reasoning` (e.g. ``batch_size``).

    Returns:
        One row per (block, method): ``block``, ``k``, ``j``, ``depth``
        (``block / (B's blocks - 1)``), ``method``, ``accuracy``, ``ci_low``,
        ``ci_high``, ``n``, the paired differences over items with B alone
        (``vs_b``, ``vs_b_low``, ``vs_b_high``) and with the control
        (``vs_control``, ...), and with ``distance`` the median
        ``next_token_kl`` and ``mahalanobis_pct`` of AC's graft (the same on
        every row of a block).

    Raises:
        CommlibError: ``task`` is Biographies (scored per fact by a judge, not per item).

    Example:
        >>> import tempfile
        >>> from commlib.models import load_model
        >>> m = load_model("tiny-llama-random")
        >>> with tempfile.TemporaryDirectory() as runs:
        ...     t = run_reasoning_depths("gsm8k", m, m, [0, 3], runs_root=runs, n=2, max_new_tokens=2,
        ...                              distance=False, progress=False)
        >>> control = t[t["method"] == "ac-replace-unrelated"]
        >>> t.groupby("block")["k"].first().tolist(), control["vs_control"].tolist()
        ([0, 3], [0.0, 0.0])
    """
    if task == "biographies":
        raise CommlibError("run_reasoning_depths scores accuracy per item: use gsm8k or mmlu:SUBJECT")
    backend = options.get("backend", "nnsight")
    if distance:  # B's own states at every block in one pass, before the runs that use them
        evaluated = load_task(task, n=n, seed=seed)
        reasoning_reference_states(
            task, receiver, evaluated, blocks, n_reference=n_reference, seed=seed, backend=backend
        )
    rows = []
    for block in blocks:
        out = reasoning_dir(
            runs_root, task, sender.name, receiver.name, seed=seed, n=n, variant=f"depth-j{block}"
        )
        result = run_reasoning(
            task,
            sender,
            receiver,
            DEPTH_METHODS,
            out_dir=out,
            n=n,
            seed=seed,
            k=block,
            j=block,
            layers_from=receiver,
            answers=Path(runs_root) / "answers",
            progress=progress,
            **options,
        )
        k = int(result["config"]["k"])  # block mapped to A's depth
        graft: dict[str, float] = {}
        if distance:
            table = run_reasoning_distance(
                task,
                sender,
                receiver,
                k=k,
                j=block,
                out_dir=out / "graft_distance",
                n=n,
                seed=seed,
                n_reference=n_reference,
                backend=backend,
            )
            ac = table[table["source"] == "ac"]
            graft = {
                "next_token_kl": float(ac["next_token_kl"].median()),
                "mahalanobis_pct": float(ac["mahalanobis_pct"].median()),
            }
        place = {"block": block, "k": k, "j": block, "depth": block / max(receiver.info.n_layers - 1, 1)}
        rows += [{**place, **row, **graft} for row in _against_controls(out, exclude, seed)]
    return pd.DataFrame(rows)


def _against_controls(out: Path, exclude: Collection[str], seed: int) -> list[dict[str, Any]]:
    """Each of :data:`DEPTH_METHODS` in a run: accuracy with its CI, paired with B alone and with the control.

    Items in ``exclude`` are left out of every score.
    """
    items = Run(out, None).frame(keep_default_na=False, dtype={"item_id": str, "correct": str})
    items = items[~items["item_id"].isin(set(exclude))]
    correct = {m: correct_by_item(items[items["method"] == m]) for m in DEPTH_METHODS}
    rows = []
    for method in DEPTH_METHODS:
        scored = correct[method]
        lo, hi = bootstrap_ci(scored.tolist(), seed=seed)
        row = {"method": method, "accuracy": scored.mean(), "ci_low": lo, "ci_high": hi, "n": len(scored)}
        for name, other in (("vs_b", "single-b"), ("vs_control", "ac-replace-unrelated")):
            row[name], row[f"{name}_low"], row[f"{name}_high"] = paired_difference(
                correct[method], correct[other], seed=seed
            )
        rows.append(row)
    return rows


def reasoning_reference_states(
    task: str,
    receiver: Model,
    evaluated: Sequence[ReasoningItem],
    layers: Sequence[int],
    *,
    n_reference: int = 256,
    seed: int = 0,
    backend: str = "nnsight",
) -> dict[int, Tensor]:
    """B's own states after each of ``layers`` at the last prompt token of other items of ``task``; cached.

    The items are :func:`other_items` (never one of ``evaluated``), read in
    the prompt format as every reasoning method reads them. Layers not yet
    cached are captured in one pass over the items and cached per layer
    under the commlib cache directory, shared by every sender.

    Returns:
        Per layer, a tensor of shape (items, d_model).
    """
    reference = other_items(task, evaluated, n_reference, seed)
    name = other_items_name(task, seed, len(evaluated))
    paths = {
        j: cache_dir() / "reference" / receiver.name / f"{name}_L{j}_n{len(reference)}.safetensors"
        for j in layers
    }
    missing = sorted({j for j, path in paths.items() if not path.exists()})
    if missing:
        prompts = [question_prompt(it) for it in reference]
        captured = capture_corpus(
            receiver,
            prompts,
            missing,
            backend=backend,
            formatted=True,
            desc=f"{receiver.name} L{missing} on {task}",
        )
        for j in missing:
            paths[j].parent.mkdir(parents=True, exist_ok=True)
            save_file({"states": captured[j].contiguous()}, str(paths[j]))
    return {j: load_file(str(paths[j]))["states"] for j in layers}


def run_reasoning_distance(
    task: str,
    sender: Model,
    receiver: Model,
    *,
    k: int,
    j: int,
    out_dir: str | Path,
    n: int | None = 100,
    seed: int = 0,
    n_reference: int = 256,
    map: LinearMap | None = None,
    backend: str = "nnsight",
) -> pd.DataFrame:
    """How far AC's grafted state sits from B's own states on a reasoning task, and how much it moves B.

    AC on a reasoning item (see :mod:`commlib.protocols.reasoning`) writes
    ``f(a, b)`` (``replace``, the paper's width rule, or ``map``) into B's
    residual after block ``j`` at the last prompt token, where ``a`` is A's
    state after block ``k`` on the same prompt. This measures that state
    against B's own states there on ``n_reference`` other items of the task
    (drawn with :data:`~commlib.experiments.held_out.REASONING_REFERENCE_SEED` + ``seed``, never one the run
    evaluates), with :class:`commlib.distance.Manifold` (raw metrics and
    percentiles: 50 is a typical state of B's, 100 beyond all), its
    displacement from B's own state, and the KL divergence it causes in B's
    first answer token. Source ``b`` is B's own state on the same items, the
    identity graft: displacement and KL 0, percentiles those of B's states.

    Forward passes only (no generation), so it is cheap next to the run it
    explains. Writes ``out_dir/distances.csv`` and ``out_dir/run.json``; a
    finished directory is read back. B's reference states are cached under
    the commlib cache directory, shared by every sender.

    Returns:
        One row per (item, source): ``item_id``, ``source`` (``ac`` or ``b``),
        the metrics of :meth:`commlib.distance.Manifold.table` with their
        ``_pct`` percentiles, ``displacement`` and ``next_token_kl``.

    Example:
        >>> import tempfile
        >>> from commlib.models import load_model
        >>> a, b = load_model("tiny-llama-random"), load_model("tiny-llama-wide-random")
        >>> with tempfile.TemporaryDirectory() as out:
        ...     t = run_reasoning_distance("gsm8k", a, b, k=1, j=1, out_dir=out, n=3, n_reference=16)
        >>> float(t.groupby("source")["displacement"].max()["b"])
        0.0
    """
    check_layer(sender, k, "k")
    check_layer(receiver, j, "j")
    if map is not None:
        map.check_pair(sender.name, receiver.name, k, j)
    items = load_task(task, n=n, seed=seed)
    reference = other_items(task, items, n_reference, seed)
    if len(reference) < 8:
        raise CommlibError(
            f"{task} has only {len(reference)} items beyond the {len(items)} evaluated: "
            "too few to fit B's manifold; evaluate fewer items"
        )
    settings = {
        "task": task,
        "sender": sender.name,
        "receiver": receiver.name,
        "k": k,
        "j": j,
        "f": "replace",
        "n": len(items),
        "seed": seed,
        "n_reference": len(reference),
        "backend": backend,
        "map": asdict(map.info) if map is not None else None,
        "placement": placement(sender=sender, receiver=receiver),  # dtype, attention: compared on resume
    }
    run = Run(out_dir, settings, fields=None, table="distances.csv")
    if run.path.exists():
        return run.frame()
    states = reasoning_reference_states(
        task, receiver, items, [j], n_reference=n_reference, seed=seed, backend=backend
    )[j]
    n_held = max(2, len(states) // 4)
    reference_set = ReferenceSet(
        fit=states[n_held:],
        held_out=states[:n_held],
        model=receiver.name,
        layer=j,
        corpus=f"{task} prompts",
        seed=seed,
    )
    result = _graft_distances(Manifold.fit(reference_set), items, sender, receiver, k, j, map, backend)
    result.to_csv(run.path, index=False)
    return result


def _graft_distances(
    manifold: Manifold,
    items: Sequence[ReasoningItem],
    sender: Model,
    receiver: Model,
    k: int,
    j: int,
    map: LinearMap | None,
    backend: str,
) -> pd.DataFrame:
    """AC's grafted state (source ``ac``) and B's own (``b``) per item on ``manifold``; B's next-token KL."""
    prompts = [question_prompt(it) for it in items]
    rb = get_backend(receiver, backend)
    a = capture_message(get_backend(sender, backend), prompts, k).float().cpu()
    b = capture_message(rb, prompts, j).float().cpu()
    batch = encode(receiver, prompts)
    last = message_positions(receiver, prompts, batch, "last")  # the final column: the batch is left-padded
    edit = graft_edit(a, last, GraftConfig(k=k, j=j, f="replace"), map)
    with torch.no_grad():  # B's next-token logits only (a full vocabulary at every position is GBs)
        plain, grafted = (rb.forward(batch, e, last_only=True)[0][:, -1].float().cpu() for e in (None, edit))
    tables = []
    for source, x, logits in (("ac", combine(a, b, "replace", map=map), grafted), ("b", b, plain)):
        table = manifold.table(x, b)
        table.insert(0, "source", source)
        table.insert(0, "item_id", [it.id for it in items])
        table["next_token_kl"] = next_token_kl(plain, logits).cpu().numpy()
        tables.append(table)
    return pd.concat(tables, ignore_index=True)
