"""Selection and test pools of one task that share no content (issue 24).

A method chosen on some items (a layer, a combining function, a prompt) must
be scored on other items, and "other" must mean other content: a Countries
item about the same landmark with another name is the same question. So the
two pools are cut along content keys (:func:`content_keys`):

* Countries: the shuffled landmark table (``landmarks("full")``, about 380
  rows) is cut in two; the first ``n_test`` landmarks make the test pool.
* Tip Sheets: the company names are split in two (about 2/3 for test), and
  each pool's tip sheets only name its own companies.
* A JSONL task: a seeded fraction of its sender texts, or a second file, is
  the selection pool.

:func:`derangement` and :func:`control_item` build the shuffled-message
control: item ``i`` read with the sender content of item ``p[i]``.

Example:
    >>> pools = make_pools("countries", n_test=200, n_selection=100, seed=0)
    >>> len(pools.test), len(pools.selection), pools.test[0].id
    (200, 100, 'countries-test-0-0')
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from commlib.errors import CommlibError
from commlib.tasks.games import COMPANIES, NAMES, GameItem, country_item, landmarks, load_jsonl, tipsheets
from commlib.tasks.items import ReasoningItem

TIPSHEETS_SELECTION = 60
"""Tip Sheets' default selection pool size."""

_TEST_SHARE = 2 / 3
"""The share of Tip Sheets' companies that the test pool draws from."""

_COUNTRY_REPLY = " is located in"


@dataclass(frozen=True)
class Pools:
    """Selection and test items of one task that share no content (no landmark; no company for Tip Sheets).

    Example:
        >>> pools = make_pools("tipsheets", n_test=4, n_selection=2, seed=1)
        >>> pools.record()["sizes"]
        {'selection': 2, 'test': 4}
    """

    game: str
    seed: int
    selection: tuple[GameItem, ...]
    test: tuple[GameItem, ...]

    def record(self) -> dict[str, Any]:
        """What a run stores of its pools (``run.json``): game, seed, sizes, each pool's content keys.

        Example:
            >>> record = make_pools("countries", n_test=1, n_selection=1, seed=0).record()
            >>> sorted(record), len(record["test_keys"])
            (['game', 'seed', 'selection_keys', 'sizes', 'test_keys'], 1)
        """
        return {
            "game": self.game,
            "seed": self.seed,
            "sizes": {"selection": len(self.selection), "test": len(self.test)},
            "selection_keys": sorted(set().union(*map(content_keys, self.selection))),
            "test_keys": sorted(set().union(*map(content_keys, self.test))),
        }


def _is_country(item: GameItem) -> bool:
    return item.id.startswith("countries") and " is at " in item.sender


def _landmark(item: GameItem) -> str:
    """The landmark of a Countries item's sentence ``"<name> is at <landmark>."``."""
    return item.sender.partition(" is at ")[2].removesuffix(".")


def _name(item: GameItem) -> str:
    """The person of a Countries item: from its reply ``"<name> is located in"``, else its sentence."""
    if item.reply.endswith(_COUNTRY_REPLY):
        return item.reply.removesuffix(_COUNTRY_REPLY)
    return item.sender.partition(" is at ")[0]


def content_keys(item: GameItem) -> frozenset[str]:
    """What an item is about: its landmark (Countries), its companies (Tip Sheets), else its sender text.

    Example:
        >>> content_keys(make_pools("countries", n_test=1, n_selection=1).test[0])
        frozenset({'Senso-ji'})
    """
    if _is_country(item):
        return frozenset({_landmark(item)})
    if item.id.startswith("tipsheets") and item.choices:
        return frozenset(item.choices)
    return frozenset({item.sender})


def check_disjoint(pools: Pools) -> None:
    """Refuse pools that share a content key, or items that share an id.

    Raises:
        CommlibError: naming up to five shared keys (or ids).

    Example:
        >>> test = make_pools("countries", n_test=1, n_selection=1).test
        >>> moved = [replace(it, id="countries-selection-0-0") for it in test]
        >>> check_disjoint(Pools("countries", 0, tuple(moved), test))
        Traceback (most recent call last):
        ...
        commlib.errors.CommlibError: countries pools share 1 content key ('Senso-ji'); they must share none
    """
    counts = Counter(item.id for item in (*pools.selection, *pools.test))
    repeated = sorted(i for i, count in counts.items() if count > 1)
    if repeated:
        raise CommlibError(
            f"{pools.game} pools repeat {_count(repeated, 'item id')} ({_some(repeated)}); "
            "give every item its own id"
        )
    selection: set[str] = set().union(*map(content_keys, pools.selection))
    test: set[str] = set().union(*map(content_keys, pools.test))
    shared = sorted(selection & test)
    if shared:
        raise CommlibError(
            f"{pools.game} pools share {_count(shared, 'content key')} ({_some(shared)}); "
            "they must share none"
        )


def _count(keys: Sequence[str], noun: str) -> str:
    return f"{len(keys)} {noun}{'' if len(keys) == 1 else 's'}"


def _some(keys: Sequence[str]) -> str:
    return ", ".join(map(repr, keys[:5])) + (", ..." if len(keys) > 5 else "")


def make_pools(
    game: str,
    *,
    n_test: int,
    n_selection: int | None = None,
    seed: int = 0,
    selection_fraction: float | None = None,
    selection_file: str | None = None,
) -> Pools:
    """A task's selection and test pools, disjoint in content and fixed by ``seed``.

    ``game`` is ``countries`` (test: the first ``n_test`` landmarks of the
    shuffled full table; selection: the next ``n_selection``, default all the
    rest), ``tipsheets`` (companies split about 2/3 test, 1/3 selection;
    ``n_selection`` default 60) or a ``.jsonl`` path (selection: a seeded
    ``selection_fraction`` of its distinct sender texts, or the items of
    ``selection_file``; ``n_test`` caps the test pool).

    Raises:
        CommlibError: an unknown game, sizes the task cannot give, a JSONL
            task without a selection option, or pools that overlap.

    Example:
        >>> a = make_pools("countries", n_test=5, seed=3)
        >>> a == make_pools("countries", n_test=5, seed=3), len(a.selection) == len(landmarks("full")) - 5
        (True, True)
    """
    if n_test < 1 or (n_selection is not None and n_selection < 1):
        raise CommlibError(f"pools need n_test >= 1 and n_selection >= 1; got {n_test} and {n_selection}")
    if game == "countries":
        pools = _country_pools(n_test, n_selection, seed)
    elif game == "tipsheets":
        pools = _tipsheet_pools(n_test, TIPSHEETS_SELECTION if n_selection is None else n_selection, seed)
    elif game.endswith(".jsonl"):
        pools = _jsonl_pools(game, n_test, n_selection, seed, selection_fraction, selection_file)
    else:
        raise CommlibError(f"no selection/test pools for {game!r}; use countries, tipsheets or a .jsonl path")
    check_disjoint(pools)
    return pools


def _country_pools(n_test: int, n_selection: int | None, seed: int) -> Pools:
    table = landmarks("full")
    if n_test >= len(table):
        raise CommlibError(
            f"countries has {len(table)} landmarks and the selection pool needs one; ask for n_test <= "
            f"{len(table) - 1}"
        )
    if n_selection is None:
        n_selection = len(table) - n_test
    if n_test + n_selection > len(table):
        raise CommlibError(
            f"countries has {len(table)} landmarks, fewer than n_test + n_selection = "
            f"{n_test} + {n_selection}; ask for n_selection <= {len(table) - n_test}"
        )
    rng = random.Random(seed)
    rows = list(table)
    rng.shuffle(rows)
    test_rows, selection_rows = rows[:n_test], rows[n_test : n_test + n_selection]
    test_names = [rng.choice(NAMES) for _ in test_rows]
    selection_names = [rng.choice(NAMES) for _ in selection_rows]

    def build(pool: str, picked: list[tuple[str, str]], names: list[str]) -> tuple[GameItem, ...]:
        return tuple(
            country_item(landmark, country, name, f"countries-{pool}-{seed}-{i}")
            for i, ((landmark, country), name) in enumerate(zip(picked, names, strict=True))
        )

    return Pools(
        "countries",
        seed,
        build("selection", selection_rows, selection_names),
        build("test", test_rows, test_names),
    )


def _tipsheet_pools(n_test: int, n_selection: int, seed: int) -> Pools:
    rng = random.Random(seed)
    companies = list(COMPANIES)
    rng.shuffle(companies)
    cut = round(len(companies) * _TEST_SHARE)
    test_seed, selection_seed = rng.randrange(2**32), rng.randrange(2**32)

    def build(pool: str, n: int, draw: int, names: list[str]) -> tuple[GameItem, ...]:
        return tuple(
            replace(item, id=f"tipsheets-{pool}-{seed}-{i}")
            for i, item in enumerate(tipsheets(n, draw, companies=names))
        )

    return Pools(
        "tipsheets",
        seed,
        build("selection", n_selection, selection_seed, companies[cut:]),
        build("test", n_test, test_seed, companies[:cut]),
    )


def _jsonl_pools(
    game: str,
    n_test: int,
    n_selection: int | None,
    seed: int,
    fraction: float | None,
    selection_file: str | None,
) -> Pools:
    items = load_jsonl(game)
    if (fraction is None) == (selection_file is None):
        raise CommlibError(
            "a JSONL task needs --selection-fraction F or --selection-file PATH (one of them): "
            f"{Path(game).name} has no selection pool of its own"
        )
    if selection_file is not None:
        selection, test = load_jsonl(selection_file), items
    else:
        assert fraction is not None
        if not 0 < fraction < 1:
            raise CommlibError(f"--selection-fraction must lie strictly between 0 and 1; got {fraction}")
        senders = list(dict.fromkeys(item.sender for item in items))  # one key per distinct content
        random.Random(seed).shuffle(senders)
        chosen = set(senders[: round(fraction * len(senders))])
        selection = [item for item in items if item.sender in chosen]
        test = [item for item in items if item.sender not in chosen]
        if not selection or not test:
            raise CommlibError(
                f"a selection fraction of {fraction} leaves a pool of {game} empty "
                f"({len(senders)} distinct senders); pick a fraction between "
                f"{1 / len(senders):.2g} and {1 - 1 / len(senders):.2g}"
            )
    selection = selection if n_selection is None else selection[:n_selection]
    return Pools(game, seed, tuple(selection), tuple(test[:n_test]))


def derangement(items: Sequence[GameItem | ReasoningItem], seed: int) -> list[int]:
    """A seed-fixed permutation ``p`` with ``p[i] != i`` and, as far as possible, another answer at ``p[i]``.

    Items are grouped by answer (groups and members in seeded order, the
    largest group first) and each is sent ``m`` places along, ``m`` the
    largest group's size: no item then meets its own answer unless one
    answer holds more than half the items, and then as few as possible do.

    Raises:
        CommlibError: fewer than two items.

    Example:
        >>> items = make_pools("countries", n_test=6, n_selection=1, seed=0).test
        >>> p = derangement(items, seed=0)
        >>> sorted(p) == list(range(6)), any(p[i] == i for i in range(6))
        (True, False)
    """
    n = len(items)
    if n < 2:
        raise CommlibError(f"a derangement needs at least two items; got {n}")
    rng = random.Random(seed)
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.answer, []).append(i)
    ordered = list(groups.values())
    for group in ordered:
        rng.shuffle(group)
    rng.shuffle(ordered)
    ordered.sort(key=len, reverse=True)  # stable: ties keep their shuffled order
    line = [i for group in ordered for i in group]
    shift = len(ordered[0]) if len(ordered[0]) < n else 1  # one answer only: any cycle will do
    p = [0] * n
    for k, i in enumerate(line):
        p[i] = line[(k + shift) % n]
    if sorted(p) != list(range(n)) or any(p[i] == i for i in range(n)):  # pragma: no cover - by construction
        raise AssertionError(f"derangement of {n} items went wrong: {p}")
    return p


def control_item(item: GameItem, donor: GameItem) -> GameItem:
    """``item`` with ``donor``'s sender content: the receiver's side, answer and reply are ``item``'s.

    For Countries items the sentence keeps ``item``'s person and takes the
    donor's landmark, so only the content differs; otherwise the sender
    text is the donor's verbatim. The id is ``"<item.id><-<donor.id>"``.

    Example:
        >>> a, b = make_pools("countries", n_test=2, n_selection=1, seed=0).test
        >>> control = control_item(a, b)
        >>> control.sender == f"{_name(a)} is at {_landmark(b)}.", control.receiver == a.receiver
        (True, True)
    """
    if _is_country(item) and _is_country(donor):
        sender = f"{_name(item)} is at {_landmark(donor)}."
    else:
        sender = donor.sender
    return replace(item, sender=sender, id=f"{item.id}<-{donor.id}")
