"""Items of a reasoning task held out from a run: what is fitted beside a run never sees an item it scores.

B's manifold (:func:`commlib.experiments.depth.run_reasoning_distance`) and
the in-distribution W (:func:`fit_task_map`, which
:func:`commlib.experiments.reasoning.run_pair_reasoning` caches) are fitted
on :func:`other_items` of the run.
"""

from __future__ import annotations

from collections.abc import Sequence

from commlib.combine import LinearMap
from commlib.graft import fit_map
from commlib.models import Model
from commlib.protocols.questions import question_prompt
from commlib.tasks.reasoning import ReasoningItem, load_task, sample_items

REASONING_REFERENCE_SEED = 7_919
"""Seed (plus the run's) of :func:`other_items`: B's manifold and the in-distribution W are fitted on them."""


def other_items(task: str, evaluated: Sequence[ReasoningItem], n: int, seed: int = 0) -> list[ReasoningItem]:
    """``n`` items of ``task`` not among ``evaluated`` (seed: :data:`REASONING_REFERENCE_SEED` + ``seed``).

    What is fitted on a task next to a run of it (B's manifold in
    :func:`~commlib.experiments.depth.run_reasoning_distance`, the in-distribution W of
    :func:`~commlib.experiments.reasoning.run_pair_reasoning`) never sees an item the run scores.
    """
    ids = {it.id for it in evaluated}
    others = [it for it in load_task(task, n=None) if it.id not in ids]
    return sample_items(others, n, REASONING_REFERENCE_SEED + seed)


def other_items_name(task: str, seed: int, n_eval: int | None) -> str:
    """How a cache names :func:`other_items` of a run of ``n_eval`` items of ``task`` with ``seed``.

    Example:
        >>> other_items_name("mmlu:formal_logic", 0, 20)
        'mmlu_formal_logic-other-than-seed0-n20'
    """
    return f"{task.replace(':', '_')}-other-than-seed{seed}-n{n_eval}"


def fit_task_map(
    task: str,
    sender: Model,
    receiver: Model,
    k: int,
    j: int,
    *,
    n_map: int,
    n_eval: int | None,
    seed: int = 0,
    epochs: int = 10,
    backend: str = "nnsight",
    fit: str = "adam",
) -> LinearMap:
    """In-distribution ``W``, fitted on ``n_map`` items of ``task`` that a run of ``n_eval`` does not score.

    The paper fits it on GSM8k's train split, which no offline source ships;
    this fits it on :func:`other_items` of the run (seed ``seed``, ``n_eval``
    items), each read in the prompt format at its last token, where AC reads
    A and writes B (:func:`commlib.graft.fit_map` with ``prompts``).

    Example:
        >>> from commlib.models import load_model
        >>> a, b = load_model("tiny-llama-random"), load_model("tiny-llama-wide-random")
        >>> w = fit_task_map("gsm8k", a, b, 1, 1, n_map=8, n_eval=4)
        >>> w.weight.shape, w.info.corpus, w.info.n
        (torch.Size([96, 64]), 'gsm8k other items', 8)
    """
    fitted = other_items(task, load_task(task, n_eval, seed), n_map, seed)
    return fit_map(
        sender,
        receiver,
        k,
        j,
        corpus=f"{task} other items",
        n=len(fitted),
        epochs=epochs,
        backend=backend,
        prompts=[question_prompt(it) for it in fitted],
        fit=fit,
    )
