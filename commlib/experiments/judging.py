"""Judging Biographies: per-fact verdicts of a judge model, shared between runs, and its controls."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from commlib.errors import CommlibError
from commlib.models import Model
from commlib.registry import canonical
from commlib.results import AnswerStore, Run, paired_difference
from commlib.tasks.biographies import JUDGE_MAX_NEW_TOKENS, fact_score, judge_biography, judge_prompts

JUDGEMENTS = "judgements.jsonl"
"""Per (judge, item, method) file of a Biographies run: the judge's prompts, raw answers and verdicts."""


def judge_biographies(
    out_dir: str | Path,
    items: Sequence[Any],
    judge: Model,
    *,
    methods: Sequence[str] | None = None,
    backend: str = "nnsight",
    answers: str | Path | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Judge the biographies of a :func:`run_reasoning` directory per fact; cached and resumable.

    Every (item, method) row of ``out_dir/items.csv`` (of ``methods``, default
    all) is judged by ``judge`` against the item's facts
    (:func:`commlib.tasks.biographies.judge_biography`) unless
    ``out_dir/judgements.jsonl`` already holds it for this judge. Each line
    there is one (judge, item, method): every fact's prompt, the judge's raw
    answer and verdict, the counts and the score.

    With ``answers`` (the :class:`commlib.results.AnswerStore` directory of
    :func:`run_reasoning`), judgements are shared between run directories
    too, in ``answers/judgements``, keyed by the judge, backend and the exact
    judge prompts (:func:`judge_key`): the greedy judge reads a biography the
    same way whatever pair wrote it, so a model's biographies alone are judged
    once, not once per pair. This directory's judgements, old and new, are
    added to the store.

    Returns:
        One row per (item, method) judged by ``judge``: item_id, method, yes,
        no, uncertain, unparsed, score (NaN when no fact was judged yes or
        no), p_yes (the judge's mean first-token p(yes) / (p(yes) + p(no))
        over facts; NaN for judgements that did not record it).
    """
    out = Path(out_dir)
    path = out / JUDGEMENTS
    mine = _judged(path, judge.name)
    by_id = {it.id: it for it in items}
    generated = Run(out, None).frame(keep_default_na=False)
    if methods is not None:
        generated = generated[generated["method"].isin([canonical(m) for m in methods])]
    store = AnswerStore(Path(answers) / "judgements") if answers is not None else None
    rows = [r for r in generated.to_dict("records") if str(r["item_id"]) in by_id]
    todo = [r for r in rows if (str(r["item_id"]), r["method"]) not in mine]
    if store is not None:  # this directory's judgements serve other runs too
        for r in rows:
            if (done := mine.get((str(r["item_id"]), r["method"]))) is not None:
                judged = {k: v for k, v in done.items() if k not in ("judge", "item_id", "method")}
                store.put(judge_key(judge, by_id[str(r["item_id"])], str(r["output"]), backend), judged)
    for r in tqdm(todo, desc=f"judge {judge.name}", disable=not progress):
        item = by_id[str(r["item_id"])]
        line = {
            "judge": judge.name,
            "item_id": item.id,
            "method": r["method"],
            **_judgement(judge, item, str(r["output"]), backend, store),
        }
        _append_line(path, line)
        mine[(item.id, r["method"])] = line
    keys = set(zip(generated["item_id"].astype(str), generated["method"], strict=True))
    return verdict_table([r for key, r in mine.items() if key in keys], "item_id", "method")


def judge_key(judge: Model, item: Any, output: str, backend: str = "nnsight") -> dict[str, Any]:
    """The :class:`commlib.results.AnswerStore` key of one judged biography.

    The judge model, the backend, greedy decoding of
    :data:`~commlib.tasks.biographies.JUDGE_MAX_NEW_TOKENS` and the SHA-256 of
    the exact judge prompts (:func:`~commlib.tasks.biographies.judge_prompts`:
    person, biography and facts), which decide what the greedy judge answers.
    """
    prompts = judge_prompts(item.question, output, item.answer.split("\n"))
    digest = hashlib.sha256("\0".join(prompts).encode()).hexdigest()
    return {
        "model": judge.name,
        "backend": backend,
        "person": item.id,
        "prompts_sha256": digest,
        "decoding": {"greedy": True, "max_new_tokens": JUDGE_MAX_NEW_TOKENS},
    }


def _judgement(
    judge: Model, item: Any, output: str, backend: str, store: AnswerStore | None
) -> dict[str, Any]:
    """The judgement of one biography: from ``store`` when there, else judged now (and put in ``store``)."""
    key = judge_key(judge, item, output, backend)
    shared = store.get(key) if store is not None else None
    if shared is not None:
        return {k: v for k, v in shared.items() if k != "key"}
    judged = _judgement_line(item, judge_biography(judge, item, output, backend=backend))
    if store is not None:
        store.put(key, judged)
    return judged


def _append_line(path: Path, line: dict[str, Any]) -> None:
    """Append one JSON line to a judgements file (flushed when the file closes)."""
    with path.open("a") as fh:
        fh.write(json.dumps(line) + "\n")


def verdict_table(lines: Sequence[dict[str, Any]], *keys: str) -> pd.DataFrame:
    """Judgement lines as a table: the columns ``keys``, yes, no, uncertain, unparsed, score, p_yes.

    Example:
        >>> facts = [{"p_yes": 0.6, "p_no": 0.2}, {"p_yes": 0.5, "p_no": 0.5}]  # leaning 3/4, 1/2
        >>> counts = {"yes": 1, "no": 1, "uncertain": 0, "unparsed": 0}
        >>> row = verdict_table([{"item_id": "a", **counts, "score": 0.5, "facts": facts}], "item_id").iloc[0]
        >>> row["item_id"], float(row["score"]), float(row["p_yes"])
        ('a', 0.5, 0.625)
    """
    cols = [*keys, "yes", "no", "uncertain", "unparsed", "score"]
    rows = [{**{c: r[c] for c in cols}, "p_yes": _mean_p_yes(r["facts"])} for r in lines]
    return pd.DataFrame(rows, columns=[*cols, "p_yes"])


def _judge_lines(path: Path, judge: str) -> list[dict[str, Any]]:
    """The lines of a judgements file written for ``judge``."""
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [{**r, "method": canonical(r["method"])} for r in lines if r["judge"] == judge]  # old names: new


def _judged(path: Path, judge: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The lines of a judgements file by ``judge``, by (item_id, method)."""
    return {(r["item_id"], r["method"]): r for r in _judge_lines(path, judge)}


def _judgement_line(item: Any, facts: Sequence[Any]) -> dict[str, Any]:
    """What a judgements file keeps of one judged biography: counts, score (NaN as null), every fact."""
    verdicts = [f.verdict for f in facts]
    return {
        "person": item.question,
        **{v: verdicts.count(v) for v in ("yes", "no", "uncertain", "unparsed")},
        "score": score if (score := fact_score(verdicts)) == score else None,
        "facts": [asdict(f) for f in facts],
    }


JUDGE_CONTROL = "judge_control.jsonl"


TRUTH = "truth"
"""``judge_control``'s method name for the ground-truth biography (the person's own facts as bullets)."""


def judge_control(
    out_dir: str | Path,
    items: Sequence[Any],
    judge: Model,
    *,
    method: str = "single-b",
    facts_of: str = "next",
    n: int = 5,
    backend: str = "nnsight",
    progress: bool = True,
) -> pd.DataFrame:
    """Controls of a Biographies judge: biographies judged against facts whose answer is known.

    The first ``n`` people's ``method`` biographies of ``out_dir`` (a
    :func:`run_reasoning` directory), or with ``method="truth"`` their
    ground-truth facts written as a bullet biography (no run needed), each
    judged against:

    * ``facts_of="next"`` (negative control): the facts of the next person
      (the last against the first's), under that person's name. A judge that
      reads the biography scores these near 0; one that answers yes whatever
      it reads scores near 1, and its scores on the run mean nothing.
    * ``facts_of="own"``: the person's own facts. With ``method="truth"``
      every fact is in the biography word for word (positive control): a
      judge that reads it scores near 1.

    Cached and resumable per judge in ``out_dir/judge_control.jsonl``.

    Returns:
        One row per biography: item_id, facts_of, yes, no, uncertain,
        unparsed, score (the fraction of yes among yes and no), p_yes (the
        judge's mean first-token probability of yes over yes and no).

    Raises:
        CommlibError: fewer than 2 biographies, or an unknown ``facts_of``.
    """
    if facts_of not in ("next", "own"):
        raise CommlibError(f"unknown facts_of {facts_of!r}; use next (negative control) or own")
    out, method = Path(out_dir), canonical(method)
    path = out / JUDGE_CONTROL
    done = {(r["item_id"], r["method"], r.get("control", "next")): r for r in _judge_lines(path, judge.name)}
    by_id = {it.id: it for it in items}
    written = _control_biographies(out, items, method, n)
    people = list(written)
    if len(people) < 2:
        raise CommlibError(f"the judge control needs 2 or more {method} biographies in {out}; run them first")
    against = people[1:] + people[:1] if facts_of == "next" else people
    for person, other in tqdm(
        list(zip(people, against, strict=True)), desc=f"control {judge.name}", disable=not progress
    ):
        if (person, method, facts_of) in done:
            continue
        facts = judge_biography(judge, by_id[other], written[person], backend=backend)
        line = {
            "judge": judge.name,
            "item_id": person,
            "method": method,
            "control": facts_of,
            "facts_of": other,
            **_judgement_line(by_id[other], facts),
        }
        _append_line(path, line)
        done[(person, method, facts_of)] = line
    return verdict_table([done[(p, method, facts_of)] for p in people], "item_id", "facts_of")


def _control_biographies(out: Path, items: Sequence[Any], method: str, n: int) -> dict[str, str]:
    """The first ``n`` people's ``method`` biographies in ``out``, or their facts as bullets (``truth``)."""
    if method == TRUTH:
        return {it.id: "\n".join(f"- {fact}" for fact in it.answer.split("\n")) for it in items[:n]}
    by_id = {it.id for it in items}
    generated = Run(out, None).frame(keep_default_na=False)
    ours = generated[(generated["method"] == method) & generated["item_id"].astype(str).isin(by_id)]
    return {str(r["item_id"]): str(r["output"]) for r in ours.head(n).to_dict("records")}


def biographies_against_control(
    out_dir: str | Path,
    items: Sequence[Any],
    judge: Model,
    methods: Sequence[str],
    *,
    n_control: int | None = None,
    backend: str = "nnsight",
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Each method's Biographies score next to its negative control, and the gap, paired by person.

    A vague biography is "consistent" with anyone's facts, so its score says
    little about what it knows of its own person. Here every method's
    biographies are judged against their own person's facts
    (:func:`judge_biographies`) and against the next person's
    (:func:`judge_control`, ``facts_of="next"``), both cached; the gap, own
    minus next over the same biographies, is what the biography says of its
    own person beyond what it would say of anyone. ``n_control`` limits the
    control to the first people of ``items`` (the control doubles the judging).

    Returns:
        One row per method: method, score (own facts, all people), control
        (next person's facts), gap, gap_ci_low, gap_ci_high (95% bootstrap
        over the people with both), n (people scored), n_control (people in
        the gap), and the same three for the judge's first-token leaning
        instead of its verdicts (mean p(yes) / (p(yes) + p(no)), no
        threshold): p_yes, p_yes_control, p_yes_gap.
    """
    scores = judge_biographies(out_dir, items, judge, methods=methods, backend=backend, progress=progress)
    rows = []
    for method in methods:
        own = scores[scores["method"] == method].set_index("item_id")["score"].astype(float)
        control = judge_control(
            out_dir,
            items,
            judge,
            method=method,
            n=n_control or len(items),
            backend=backend,
            progress=progress,
        )
        p_own = scores[scores["method"] == method].set_index("item_id")["p_yes"].astype(float)
        p_control = control.set_index("item_id")["p_yes"].astype(float)
        control = control.set_index("item_id")["score"].astype(float)
        gap, lo, hi = paired_difference(own, control, seed=seed)
        rows.append(
            {
                "method": method,
                "score": own.mean(),
                "control": control.mean(),
                "gap": gap,
                "gap_ci_low": lo,
                "gap_ci_high": hi,
                "n": int(own.notna().sum()),
                "n_control": int((own - control).notna().sum()),
                "p_yes": p_own.mean(),
                "p_yes_control": p_control.mean(),
                "p_yes_gap": (p_own - p_control).mean(),
            }
        )
    return pd.DataFrame(rows)


def _mean_p_yes(facts: Sequence[dict[str, Any]]) -> float:
    """Mean over facts of p(yes) / (p(yes) + p(no)) at the judge's first token (NaN if not recorded)."""
    shares = [f["p_yes"] / (f["p_yes"] + f["p_no"]) for f in facts if f.get("p_yes") is not None]
    return float(np.mean(shares)) if shares else float("nan")
