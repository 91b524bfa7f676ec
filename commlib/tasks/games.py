"""The paper's coordination games, and custom games from JSONL.

* Countries (Section 4.1): A reads "<Name> is at <landmark>.", B is asked
  "Which country is <Name> located in?"; the answer is the landmark's country.
  Landmarks come from ``data/landmarks.csv`` (written for this project); names
  are drawn with a seed. ``countries`` draws from the table's 112 ``original``
  rows; ``countries:train`` and ``countries:heldout`` split them into disjoint
  landmark sets (every fourth landmark is held out), so a trained channel can
  be evaluated on landmarks it never saw. ``countries:full`` adds the rows
  ``added`` for issue 24 (about 380 in all), which
  :mod:`commlib.tasks.pools` splits into selection and test pools.
* Tip Sheets: A reads a short tip sheet on three made-up companies (one
  falling, one at a record high, one at a record high but in a lawsuit); B must
  pick one company; the answer is the clean record-high one. Wording, company
  names and their order vary with the seed, so neither position nor name
  carries the answer.
* Custom: JSONL with one object per line, fields ``sender``, ``receiver``,
  ``answer`` (optional ``choices``, ``reply``, ``id``).

Each item may carry a ``reply``: the opening words of B's answer ("Alice is
located in"), the same for every method. B's prompt ends with it, so the last
prompt position is the one that predicts the answer, the teacher-forced
log-probability scores the answer where it naturally comes, and a few greedy
tokens suffice. ``load_game(..., reply=False)`` drops it.

Example:
    >>> items = countries(n=2, seed=0)
    >>> items[0].receiver.startswith("Which country is")
    True
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from commlib.errors import CommlibError

DATA_DIR = Path(__file__).resolve().parents[2] / "data"

NAMES = (
    "Alice",
    "Bob",
    "Carol",
    "David",
    "Emma",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "Kofi",
    "Lena",
    "Mateo",
    "Nadia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tariq",
    "Uma",
    "Victor",
    "Wen",
    "Ximena",
    "Yusuf",
    "Zoe",
)


@dataclass(frozen=True)
class GameItem:
    """One item: what A reads, what B is asked, the answer, optional choices.

    ``reply`` is the start of B's answer, appended to B's prompt by every method.
    """

    sender: str
    receiver: str
    answer: str
    choices: tuple[str, ...] = field(default=())
    id: str = ""
    reply: str = ""


LANDMARK_SPLITS = ("all", "train", "heldout", "full")
"""Countries' landmark sets: all original rows, a disjoint train / held-out split of them (every
fourth row held out), or the full table (original and added rows)."""


def landmarks(split: str = "all") -> list[tuple[str, str]]:
    """(landmark, country) pairs from ``data/landmarks.csv``: a split of the original rows, or all rows.

    ``all``, ``train`` and ``heldout`` read only the 112 rows whose ``set`` is
    ``original`` (the table before issue 24), so stored runs keep their items;
    ``full`` also returns the rows ``added`` after them.

    Example:
        >>> len(landmarks("train")) + len(landmarks("heldout")) == len(landmarks())
        True
        >>> landmarks("full")[: len(landmarks())] == landmarks()
        True
    """
    if split not in LANDMARK_SPLITS:
        raise CommlibError(f"unknown landmark split {split!r}; use one of {', '.join(LANDMARK_SPLITS)}")
    path = DATA_DIR / "landmarks.csv"
    if not path.exists():
        raise CommlibError(f"{path} is missing: run commlib from its repository (pip install -e .)")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if split == "full":
        return [(row["landmark"], row["country"]) for row in rows]
    table = [(row["landmark"], row["country"]) for row in rows if row["set"] == "original"]
    if split == "all":
        return table
    return [row for i, row in enumerate(table) if (i % 4 == 0) == (split == "heldout")]


def country_item(landmark: str, country: str, name: str, item_id: str) -> GameItem:
    """The Countries item that puts ``name`` at ``landmark`` (answer: ``country``).

    Example:
        >>> country_item("Petra", "Jordan", "Omar", "x-0").sender
        'Omar is at Petra.'
    """
    return GameItem(
        sender=f"{name} is at {landmark}.",
        receiver=f"Which country is {name} located in?",
        answer=country,
        id=item_id,
        reply=f"{name} is located in",
    )


def countries(n: int = 100, seed: int = 0, split: str = "all") -> list[GameItem]:
    """``n`` Countries items from the ``split`` landmarks; landmarks without repetition.

    Item ids carry the split (``countries-train-<seed>-<i>``) unless it is all.

    Raises:
        CommlibError: ``n`` larger than the split's landmark table.
    """
    table = landmarks(split)
    if n > len(table):
        name = "countries" if split == "all" else f"countries:{split}"
        raise CommlibError(f"{name} has {len(table)} landmarks; ask for n <= {len(table)}")
    rng = random.Random(seed)
    picks = rng.sample(table, n)
    names = [rng.choice(NAMES) for _ in picks]
    return [
        country_item(
            landmark,
            country,
            name,
            f"countries-{seed}-{i}" if split == "all" else f"countries-{split}-{seed}-{i}",
        )
        for i, ((landmark, country), name) in enumerate(zip(picks, names, strict=True))
    ]


_PREFIXES = (
    "Zen",
    "Argo",
    "Nova",
    "Kest",
    "Lumo",
    "Brix",
    "Tal",
    "Vey",
    "Orbi",
    "Quill",
    "Sable",
    "Dyna",
    "Fenn",
    "Hollo",
    "Mira",
    "Cobal",
    "Rune",
    "Pell",
    "Ulti",
    "Wex",
)
_SUFFIXES = ("tech", "corp", "dyne", "works", "labs", "ware", "gen", "systems", "logic", "media")
COMPANIES = tuple(p + s for p in _PREFIXES for s in _SUFFIXES)
"""Tip Sheets' made-up company names (200: every prefix with every suffix)."""
_FALLING = (
    "{c} shares have been tanking all quarter.",
    "{c} stock keeps sliding to new lows.",
    "{c} has lost half its market value since spring.",
)
_RECORD = (
    "{c} stock is at a record high.",
    "{c} shares just closed at an all-time high.",
    "{c} is trading at the highest price in its history.",
)
_LAWSUIT = (
    "{c} stock is at a record high, but the company is being sued for fraud.",
    "{c} shares hit an all-time high, though a major lawsuit against it is pending.",
    "{c} trades at a record price, yet regulators have taken it to court.",
)


def tipsheets(n: int = 70, seed: int = 0, companies: Sequence[str] | None = None) -> list[GameItem]:
    """``n`` Tip Sheets items with varied wording, names and order.

    ``companies`` restricts the names drawn (default: all of :data:`COMPANIES`).

    Raises:
        CommlibError: fewer than three companies.

    Example:
        >>> three = ["Zentech", "Argocorp", "Novadyne"]
        >>> sorted({c for it in tipsheets(5, companies=three) for c in it.choices})
        ['Argocorp', 'Novadyne', 'Zentech']
    """
    pool = list(COMPANIES if companies is None else companies)
    if len(pool) < 3:
        raise CommlibError(f"a tip sheet names three companies; got {len(pool)}")
    rng = random.Random(seed)
    items = []
    for i in range(n):
        falling, record, lawsuit = rng.sample(pool, 3)
        lines = [
            rng.choice(_FALLING).format(c=falling),
            rng.choice(_RECORD).format(c=record),
            rng.choice(_LAWSUIT).format(c=lawsuit),
        ]
        rng.shuffle(lines)
        choices = [falling, record, lawsuit]
        rng.shuffle(choices)
        items.append(
            GameItem(
                sender="Tip sheet: " + " ".join(lines),
                receiver=(
                    f"You must invest in one company out of {', '.join(choices)}. Which do you invest in?"
                ),
                answer=record,
                choices=tuple(choices),
                id=f"tipsheets-{seed}-{i}",
                reply="I invest in",
            )
        )
    return items


def load_jsonl(path: str | Path) -> list[GameItem]:
    """Custom game items from JSONL.

    Fields: ``sender``, ``receiver``, ``answer``; optional ``choices``, ``reply``, ``id``.
    """
    items = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = {"sender", "receiver", "answer"} - row.keys()
        if missing:
            raise CommlibError(f"{path}:{lineno} lacks {', '.join(sorted(missing))}")
        items.append(
            GameItem(
                row["sender"],
                row["receiver"],
                str(row["answer"]),
                tuple(row.get("choices", ())),
                row.get("id", f"{Path(path).stem}-{lineno}"),
                row.get("reply", ""),
            )
        )
    return items


def landmark_split(game: str) -> str | None:
    """The landmark split a Countries game name asks for (``countries`` -> all), or None for other games."""
    if game == "countries":
        return "all"
    return game.partition(":")[2] if game.startswith("countries:") else None


def load_game(game: str, n: int | None = None, seed: int = 0, *, reply: bool = True) -> list[GameItem]:
    """A game's items: ``n`` of them (default: the paper's 100 and 70, or the whole file).

    ``game`` is ``countries`` (or ``countries:train`` / ``countries:heldout``,
    disjoint landmarks: train a channel on one, evaluate on the other;
    ``countries:full`` for the whole table with the added landmarks),
    ``tipsheets``, or a path to a JSONL file. ``reply=False`` drops the items'
    answer openings (B answers from scratch).

    Example:
        >>> [it.id for it in load_game("countries:heldout", n=2, seed=1)]
        ['countries-heldout-1-0', 'countries-heldout-1-1']
    """
    split = landmark_split(game)
    if split is not None:
        items = countries(min(100, len(landmarks(split))) if n is None else n, seed, split)
    elif game == "tipsheets":
        items = tipsheets(70 if n is None else n, seed)
    elif game.endswith(".jsonl"):
        items = load_jsonl(game)
        items = items if n is None else items[:n]
    else:
        raise CommlibError(
            f"unknown game {game!r}; use countries (or countries:train, countries:heldout, countries:full), "
            "tipsheets, or a .jsonl path"
        )
    return items if reply else [replace(it, reply="") for it in items]


REFERENCE_SEED = 10_000
"""A task reference draws its items from seeds ``REFERENCE_SEED + seed`` on: never an evaluated draw."""


def reference_prompts(game: str, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Up to ``n`` distinct prompts of ``game`` as the receiver reads them in the game, with their replies.

    Both sides of each item: the sender's prompt (read without a reply, as
    the graft reads A) and the receiver's prompt with its reply. Drawn from
    seeds that no evaluation uses (:data:`REFERENCE_SEED`), as many draws as
    ``n`` needs, until three draws in a row add nothing new; duplicates are
    kept once, so a small game gives fewer than ``n`` (Countries: 112
    landmarks x 26 names, and only 26 distinct receiver prompts). A JSONL
    game gives what its file has.

    Example:
        >>> prompts, replies = reference_prompts("countries", 4)
        >>> len(prompts), replies[0], replies[1].endswith("is located in")
        (4, '', True)
    """
    pairs: dict[tuple[str, str], None] = {}
    split = landmark_split(game)
    size = None if split is None else len(landmarks(split))  # a whole draw of the split's landmarks
    stale, draw = 0, 0
    while len(pairs) < n and stale < 3:
        before = len(pairs)
        for item in load_game(game, n=size, seed=REFERENCE_SEED + seed + draw):
            pairs.setdefault((item.sender, ""), None)
            pairs.setdefault((item.receiver, item.reply), None)
        stale = stale + 1 if len(pairs) == before or game.endswith(".jsonl") else 0
        draw += 1
    chosen = list(pairs)[:n]
    return [p for p, _ in chosen], [r for _, r in chosen]
