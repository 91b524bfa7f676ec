"""Biographies: the data from a file (conftest's ``article``), the judge's verdicts on tricky answers, scores,
judging cached and shared, and the control that reads each biography against another person's facts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from commlib.errors import CommlibError
from commlib.models import Model
from commlib.tasks.biographies import Judgement, biographies, fact_score, judge_biography, parse_verdict
from commlib.tasks.reasoning import load_task

# What the fake judge answers per fact (by a word in it), and so each person's expected score:
# Ada yes, no, no -> 1/3; Turing yes, no -> 1/2; Hopper yes, uncertain (dropped), no -> 1/2.
FAKE_ANSWERS = {"born": "Yes.", "Navy": "Uncertain, the biography does not say"}
EXPECTED = {"Ada Lovelace": 1 / 3, "Alan Turing": 1 / 2, "Grace Hopper": 1 / 2}


def test_biographies_load_from_the_file_named_by_the_environment(article: Path, tmp_path: Path) -> None:
    items = load_task("biographies", n=None)
    assert [i.question for i in items] == ["Ada Lovelace", "Alan Turing", "Grace Hopper"]  # disambiguator off
    assert items[1].answer.split("\n") == ["Alan Turing was born in 1912", "He proposed the Turing machine"]
    assert {i.task for i in items} == {"biographies"} and len({i.id for i in items}) == 3
    two = load_task("biographies", n=2, seed=3)
    assert len(two) == 2 and two == load_task("biographies", n=2, seed=3) and set(two) <= set(items)
    with pytest.raises(CommlibError, match="COMMLIB_BIOGRAPHIES"):
        biographies(path=tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(CommlibError, match="person -> facts"):
        biographies(path=tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        ("Yes.", "yes"),
        ("**No**", "no"),
        ("uncertain", "uncertain"),
        ("Yes, but the year is wrong, so no.", "yes"),
        ("NO - he was born in 1913.", "no"),
        ("The biography is consistent: yes", "yes"),
        ("It could be yes or no.", "unparsed"),
        ("I don't know", "unparsed"),
        ("", "unparsed"),
        ("Nothing in the biography mentions it", "unparsed"),
    ],
)
def test_parse_verdict_on_tricky_judge_answers(answer: str, verdict: str) -> None:
    assert parse_verdict(answer) == verdict


def test_fact_score_drops_uncertain_and_unparsed() -> None:
    assert fact_score(["yes", "uncertain", "no", "yes", "unparsed"]) == pytest.approx(2 / 3)
    assert math.isnan(fact_score(["uncertain", "unparsed"]))


def test_judge_reads_du_et_al_prompt_with_the_bullets(tiny: Model, article: Path) -> None:
    item = load_task("biographies", n=None)[0]
    biography = "Sure! Here it is:\n\n- Ada was a mathematician.\n* She was born in 1815."
    judged = judge_biography(tiny, item, biography, max_new_tokens=2)
    assert [j.fact for j in judged] == item.answer.split("\n")
    first = judged[0].prompt
    assert first.startswith("Consider the following biography of Ada Lovelace: \n Sure! Here it is: Ada")
    assert "mathematician. She was born in 1815. \n\n Is the above biography above consistent" in first
    assert "\n\n Ada Lovelace was born in 1815 in London \n Give a single word answer, yes, no, or" in first
    assert all(j.verdict == parse_verdict(j.answer) for j in judged)
    for j in judged:  # the verdict words' first-token probabilities are probabilities of distinct tokens
        p = (j.p_yes, j.p_no, j.p_uncertain)
        assert all(v is not None and 0 < v < 1 for v in p) and sum(p) <= 1  # type: ignore[operator,misc]


def test_verdict_token_ids_cover_each_spelling_and_are_disjoint(smol: Model) -> None:
    from commlib.tasks.biographies import verdict_token_ids

    ids = verdict_token_ids(smol.tokenizer)
    for word in ("yes", "no", "uncertain"):
        for spelling in (word, word.capitalize(), " " + word.capitalize()):
            assert smol.tokenizer(spelling, add_special_tokens=False)["input_ids"][0] in ids[word]
    assert not set(ids["yes"]) & set(ids["no"]) and not set(ids["no"]) & set(ids["uncertain"])


def _fake_judge(calls: list[str]) -> Any:
    def judge(model: Model, item: Any, output: str, **kwargs: Any) -> list[Judgement]:
        calls.append(model.name)
        facts = item.answer.split("\n")
        answers = [next((a for w, a in FAKE_ANSWERS.items() if w in f), "**No**") for f in facts]
        leaning = {True: (0.9, 0.1, 0.0), False: (0.3, 0.6, 0.1)}  # p(yes), p(no), p(uncertain) by a yes
        return [
            Judgement(f, f"about {f}", a, parse_verdict(a), *leaning[parse_verdict(a) == "yes"])
            for f, a in zip(facts, answers, strict=True)
        ]

    return judge


@pytest.fixture
def judge_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The fake judge in the real one's place: the list of its calls (the judge's name per biography)."""
    calls: list[str] = []
    monkeypatch.setattr("commlib.experiments.judging.judge_biography", _fake_judge(calls))
    return calls


def test_biographies_are_judged_once_per_judge_and_rejudged_without_regenerating(
    tiny: Model, tiny_wide: Model, article: Path, tmp_path: Path, judge_calls: list[str]
) -> None:
    import json

    import pandas as pd

    from commlib.experiments import run_reasoning

    calls = judge_calls
    out = tmp_path / "bio"

    def run(judge: Model | None) -> dict[str, Any]:
        return run_reasoning(
            "biographies",
            tiny,
            tiny,
            ["single-b", "nld"],
            out_dir=out,
            n=None,
            max_new_tokens=3,
            judge=judge,
            progress=False,
        )

    unjudged = run(None)
    assert calls == [] and math.isnan(unjudged["methods"]["nld"]["accuracy"])
    result = run(tiny)
    assert len(calls) == 6  # 3 people x 2 methods
    expected = sum(EXPECTED.values()) / 3
    assert result["methods"]["single-b"]["accuracy"] == pytest.approx(expected)
    assert result["methods"]["nld"]["n_scored"] == 3
    assert result["config"]["judge"]["model"]["name"] == tiny.name
    lines = [json.loads(line) for line in (out / "judgements.jsonl").read_text().splitlines()]
    hopper = next(r for r in lines if r["person"] == "Grace Hopper" and r["method"] == "nld")
    assert (hopper["yes"], hopper["no"], hopper["uncertain"]) == (1, 1, 1)
    assert hopper["facts"][1]["answer"].startswith("Uncertain") and hopper["facts"][1]["prompt"]
    generated = pd.read_csv(out / "items.csv")

    run(tiny)
    assert len(calls) == 6  # cached: nothing judged again
    again = run(tiny_wide)  # another judge: judged again, nothing generated again
    assert calls[6:] == [tiny_wide.name] * 6
    assert pd.read_csv(out / "items.csv").equals(generated)
    assert again["methods"]["single-b"]["accuracy"] == pytest.approx(expected)
    assert {json.loads(line)["judge"] for line in (out / "judgements.jsonl").read_text().splitlines()} == {
        tiny.name,
        tiny_wide.name,
    }


def test_judgements_are_shared_between_run_directories_through_the_answer_store(
    tiny: Model, tiny_wide: Model, article: Path, tmp_path: Path, judge_calls: list[str]
) -> None:
    import json

    import pandas as pd

    from commlib.experiments import judge_key, run_reasoning
    from commlib.tasks.reasoning import load_task

    calls = judge_calls
    answers = tmp_path / "answers"
    people = {it.id: it for it in load_task("biographies", None)}

    def run(sender: Model, name: str, store: Path | None) -> dict[str, Any]:
        return run_reasoning(
            "biographies",
            sender,
            tiny,
            ["single-a", "single-b"],
            out_dir=tmp_path / name,
            n=None,
            max_new_tokens=3,
            judge=tiny,
            answers=store,
            progress=False,
        )

    def keys(name: str) -> set[str]:
        rows = pd.read_csv(tmp_path / name / "items.csv", keep_default_na=False).to_dict("records")
        return {
            json.dumps(judge_key(tiny, people[str(r["item_id"])], str(r["output"])), sort_keys=True)
            for r in rows
        }

    def lines(name: str) -> dict[tuple[str, str], dict[str, Any]]:
        text = (tmp_path / name / "judgements.jsonl").read_text()
        return {(r["item_id"], r["method"]): r for r in map(json.loads, text.splitlines())}

    alone = run(tiny, "alone", None)
    assert len(calls) == 6  # no store: every (person, method) judged
    run(tiny, "alone", answers)  # its judgements go into the store; nothing judged again
    same = run(tiny, "same", answers)  # the same pair in another directory: every biography in the store
    assert len(calls) == 6
    assert same["methods"]["single-b"]["accuracy"] == alone["methods"]["single-b"]["accuracy"]
    assert lines("same") == lines("alone")
    run(tiny_wide, "wide", answers)  # B's biographies are stored; only A's new ones are judged
    assert len(calls) == 6 + len(keys("wide") - keys("alone"))
    assert {k: v for k, v in lines("wide").items() if k[1] == "single-b"} == {
        k: v for k, v in lines("alone").items() if k[1] == "single-b"
    }


def test_judge_control_reads_each_biography_against_the_next_persons_facts_once(
    tiny: Model, article: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    from commlib.experiments import judge_control, run_reasoning

    seen: list[tuple[str, str]] = []
    fake = _fake_judge([])

    def judge(model: Model, item: Any, output: str, **kwargs: Any) -> list[Judgement]:
        seen.append((item.question, output))
        return fake(model, item, output, **kwargs)

    out = tmp_path / "bio"
    run_reasoning(
        "biographies", tiny, tiny, ["single-b"], out_dir=out, n=None, max_new_tokens=3, progress=False
    )
    monkeypatch.setattr("commlib.experiments.judging.judge_biography", judge)
    items = load_task("biographies", n=None)
    control = judge_control(out, items, tiny, progress=False)
    people = [it.id for it in items]
    assert control["item_id"].tolist() == people
    assert control["facts_of"].tolist() == people[1:] + people[:1]
    outputs = pd.read_csv(out / "items.csv", keep_default_na=False).set_index("item_id")["output"]
    by_id = {it.id: it.question for it in items}
    assert seen == [(by_id[o], outputs[i]) for i, o in zip(people, people[1:] + people[:1], strict=True)]
    expected = [EXPECTED[by_id[o]] for o in people[1:] + people[:1]]  # the other person's facts decide
    assert control["score"].tolist() == pytest.approx(expected)
    again = judge_control(out, items, tiny, progress=False)
    assert len(seen) == 3 and again.equals(control)  # cached
    with pytest.raises(CommlibError, match="2 or more"):
        judge_control(out, items, tiny, n=1, progress=False)
    with pytest.raises(CommlibError, match="facts_of"):
        judge_control(out, items, tiny, facts_of="previous", progress=False)

    # The ground truth as the biography: against one's own facts (positive), the next person's (negative).
    seen.clear()
    own = judge_control(out, items, tiny, method="truth", facts_of="own", progress=False)
    wrong = judge_control(out, items, tiny, method="truth", progress=False)
    bullets = {it.id: "\n".join(f"- {f}" for f in it.answer.split("\n")) for it in items}
    assert seen[:3] == [(it.question, bullets[it.id]) for it in items]
    assert seen[3:] == [(by_id[o], bullets[i]) for i, o in zip(people, people[1:] + people[:1], strict=True)]
    assert own["facts_of"].tolist() == people and wrong["facts_of"].tolist() == people[1:] + people[:1]
    assert own["score"].tolist() == pytest.approx([EXPECTED[it.question] for it in items])
    judge_control(out, items, tiny, method="truth", facts_of="own", progress=False)
    assert len(seen) == 6  # each control cached on its own


def test_biographies_against_control_pairs_each_score_with_the_wrong_persons_facts(
    tiny: Model, article: Path, tmp_path: Path, judge_calls: list[str]
) -> None:
    from commlib.experiments import biographies_against_control, run_reasoning

    out = tmp_path / "bio"
    run_reasoning(
        "biographies",
        tiny,
        tiny,
        ["single-a", "single-b"],
        out_dir=out,
        n=None,
        max_new_tokens=3,
        progress=False,
    )
    items = load_task("biographies", n=None)
    table = biographies_against_control(out, items, tiny, ["single-a", "single-b"], progress=False)
    own = [EXPECTED[it.question] for it in items]  # the fake judge reads only the facts
    other = own[1:] + own[:1]
    for row in table.to_dict("records"):
        assert row["score"] == pytest.approx(sum(own) / 3) and row["control"] == pytest.approx(sum(other) / 3)
        assert (
            row["gap"] == pytest.approx(row["score"] - row["control"]) and row["n"] == row["n_control"] == 3
        )
        assert row["gap_ci_low"] <= row["gap"] <= row["gap_ci_high"]
    assert table["method"].tolist() == ["single-a", "single-b"]

    def leaning(person: str) -> float:  # the mean of p(yes) / (p(yes) + p(no)) over the person's facts
        facts = next(it for it in items if it.question == person).answer.split("\n")
        return sum(0.9 if "born" in f else 0.3 / 0.9 for f in facts) / len(facts)

    p_own = [leaning(it.question) for it in items]
    assert table["p_yes"].tolist() == pytest.approx([sum(p_own) / 3] * 2)
    assert table["p_yes_control"].tolist() == pytest.approx([sum(p_own[1:] + p_own[:1]) / 3] * 2)
    assert table["p_yes_gap"].tolist() == pytest.approx([0.0, 0.0], abs=1e-12)  # the same people, rotated
    two = biographies_against_control(out, items, tiny, ["single-b"], n_control=2, progress=False).iloc[0]
    assert (two["n"], two["n_control"]) == (3, 2) and two["score"] == pytest.approx(sum(own) / 3)
    assert two["control"] == pytest.approx(sum(other[:2]) / 2)
    assert two["gap"] == pytest.approx((own[0] - other[0] + own[1] - other[1]) / 2)


# --------------------------------------------------------------------------- #
# Layers across depths, ablation methods
# --------------------------------------------------------------------------- #
