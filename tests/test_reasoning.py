"""Reasoning data (offline wheels, Biographies from a file), answer extraction and judging on tricky
outputs, layers across depths, and the appendix ablations (CoT on A, sampled A, debate rounds)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from commlib.errors import CommlibError
from commlib.graft import map_layer
from commlib.models import Model
from commlib.protocols.questions import ReasoningConfig, question_prompt
from commlib.protocols.reasoning import (
    run_reasoning_batch,
    run_reasoning_method,
    run_reasoning_methods,
)
from commlib.registry import check_methods
from commlib.tasks.biographies import Judgement, biographies, fact_score, judge_biography, parse_verdict
from commlib.tasks.reasoning import ReasoningItem, extract_choice, extract_number, is_correct, load_task


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Janet sells 9 eggs and makes 9 * 2 = $18.\n#### 18", "18"),
        ("The answer is $1,250.50.", "1250.5"),
        ("So the answer is **-3**", "-3"),
        ("3 + 4 = 7, then 7 * 2 = 14 apples in total", "14"),
        ("The answer is 42. (Check: 6 * 7 = 42, and 40 + 2 = 42.)", "42"),
        ("Answer: 7.0 dollars", "7"),
        ("so 3 * 6 = 18 in total. \\boxed{18} (and 20 next week)", "18"),
        ("It costs 12.50 per week", "12.5"),
        ("I am not sure.", None),
    ],
)
def test_extract_number(text: str, expected: str | None) -> None:
    assert extract_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is B.", "B"),
        ("Answer: (d)", "D"),
        ("(C) because repression is a defence mechanism", "C"),
        ("B. Sigmund Freud", "B"),
        ("A good answer is C, not A", "C"),
        ("None of them.", None),
    ],
)
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_choice(text) == expected


CHOICES = ("state", "trait", "Sigmund Freud", "Freud's daughter")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("X) trait", "B"),  # Qwen-0.5B's way: the option written out, no letter
        ("It is a  TRAIT.", "B"),
        ("The answer is (A), a trait", "A"),  # a letter wins over option text
        ("Freud's daughter", "D"),  # "Freud" alone is no option
        ("sigmund freud", "C"),
        ("a state or a trait", None),  # two options: no choice
        ("the states of matter", None),  # "state" only inside a longer word
    ],
)
def test_extract_choice_reads_an_option_written_out(text: str, expected: str | None) -> None:
    assert extract_choice(text, CHOICES) == expected


def test_a_run_scores_stored_outputs_as_the_current_extraction_does(tiny: Model, tmp_path: Path) -> None:
    import pandas as pd

    from commlib.experiments import run_reasoning

    run = {"out_dir": tmp_path, "n": 2, "max_new_tokens": 3, "progress": False}
    run_reasoning("gsm8k", tiny, tiny, ["single-b"], **run)  # type: ignore[arg-type]
    rows = pd.read_csv(tmp_path / "items.csv", keep_default_na=False, dtype=str)
    gold = rows.loc[0, "answer"]
    rows.loc[0, ["output", "extracted", "correct"]] = [
        f"so the total is {gold}",
        "",
        "False",
    ]  # as scored by an
    rows.to_csv(tmp_path / "items.csv", index=False)  # older extraction that missed it
    result = run_reasoning("gsm8k", tiny, tiny, ["single-b"], **run)  # type: ignore[arg-type]
    again = pd.read_csv(tmp_path / "items.csv", keep_default_na=False, dtype=str)
    assert (again.loc[0, "extracted"], again.loc[0, "correct"]) == (gold, "True")
    assert again.drop(columns=["extracted", "correct"]).equals(rows.drop(columns=["extracted", "correct"]))
    truth = [
        str(is_correct(it, o)) == "True"
        for it, o in zip(load_task("gsm8k", 2, 0), again["output"], strict=True)
    ]
    assert result["methods"]["single-b"]["accuracy"] == pytest.approx(sum(truth) / 2) and truth[0]


def test_scoring_compares_numbers_and_letters() -> None:
    assert is_correct(ReasoningItem("q", "18"), "That makes 18.00 dollars")
    assert not is_correct(ReasoningItem("q", "18"), "That makes 81")
    assert is_correct(ReasoningItem("q", "B", ("w", "x", "y", "z")), "The answer is (B)")


@pytest.mark.integration
def test_offline_data_is_real_deduplicated_and_seeded() -> None:
    items = load_task("gsm8k", n=100, seed=0)
    assert len(items) == 100 and len({i.id for i in items}) == 100
    assert items == load_task("gsm8k", n=100, seed=0) and items != load_task("gsm8k", n=100, seed=1)
    assert all(extract_number(i.answer) == i.answer for i in items)  # gold answers are plain numbers
    logic = load_task("mmlu:formal_logic", n=None)
    assert 100 < len(logic) <= 126 and all(len(i.choices) == 4 and i.answer in "ABCD" for i in logic)
    assert len({(i.question, i.choices) for i in logic}) == len(logic)
    with pytest.raises(CommlibError, match="unknown MMLU subject"):
        load_task("mmlu:astrology")
    with pytest.raises(CommlibError, match="unknown task"):
        load_task("arc")


@pytest.mark.integration
def test_reasoning_run_writes_results_resumes_and_counts_compute(tmp_path) -> None:
    import json

    import pandas as pd

    from commlib.cli import main

    out = tmp_path / "gsm"
    args = [
        "reasoning",
        "--task",
        "gsm8k",
        "--sender",
        "tiny-llama-random",
        "--receiver",
        "tiny-llama-random",
        "--methods",
        "single-b,nld,ac",
        "--k",
        "1",
        "--j",
        "2",
        "--n",
        "3",
        "--max-new-tokens",
        "4",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    result = json.loads((out / "results.json").read_text())
    methods = result["methods"]
    assert set(methods) == {"single-b", "nld", "ac-replace"} and all(m["n"] == 3 for m in methods.values())
    assert methods["ac-replace"]["flops"] > methods["single-b"]["flops"]  # plus A's partial pass
    assert methods["nld"]["flops"] > 2 * methods["single-b"]["flops"]  # two agents, two rounds
    items = pd.read_csv(out / "items.csv")
    assert len(items) == 9 and len(json.loads(items[items["method"] == "nld"]["transcript"].iloc[0])) == 4
    assert main(args) == 0 and len(pd.read_csv(out / "items.csv")) == 9  # resumed, nothing redone
    assert main([*args[:-2], "--rounds", "3", "--out", str(out)]) == 2  # other settings refused


def test_a_run_compares_each_method_with_b_alone_on_the_same_items(tmp_path: Path, capsys) -> None:
    """Stored outputs made right or wrong by hand (a re-run scores them again): the comparison follows."""
    import json

    import pandas as pd

    from commlib.cli import main
    from commlib.experiments import read_reasoning

    out = tmp_path / "gsm"
    args = [
        "reasoning",
        "--task",
        "gsm8k",
        "--sender",
        "tiny-llama-random",
        "--receiver",
        "tiny-llama-random",
        "--methods",
        "single-a,single-b,ac",
        "--k",
        "1",
        "--j",
        "1",
        "--n",
        "4",
        "--max-new-tokens",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    items = pd.read_csv(out / "items.csv", keep_default_na=False, dtype=str)
    answers = {it.id: it.answer for it in load_task("gsm8k", 4, seed=0)}
    ids = list(answers)
    ac = "ac-replace"  # what --methods ac is stored as
    right = {("single-b", ids[0]), ("single-b", ids[1]), (ac, ids[1]), (ac, ids[2]), (ac, ids[3])}
    items["output"] = [
        f"The answer is {answers[i]}." if (m, i) in right else "The answer is -1."
        for m, i in zip(items["method"], items["item_id"], strict=True)
    ]
    items.to_csv(out / "items.csv", index=False)
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    methods = json.loads((out / "results.json").read_text())["methods"]
    assert (methods["single-b"]["accuracy"], methods[ac]["accuracy"]) == (0.5, 0.75)
    assert "vs_b" not in methods["single-b"]
    paired, alone = methods[ac]["vs_b"], methods["single-a"]["vs_b"]
    # AC fixes 2 of B's misses and breaks 1 of its hits
    assert (paired["difference"], paired["better"], paired["worse"], paired["n"]) == (0.25, 2, 1, 4)
    assert (alone["difference"], alone["better"], alone["worse"]) == (-0.5, 0, 2)
    assert paired["ci_low"] < 0.25 < paired["ci_high"]
    assert "better/worse" in printed and "2/1" in printed and "0/2" in printed
    table = read_reasoning(out).set_index("method")
    assert table.loc[ac, ["vs_b", "better", "worse"]].tolist() == [0.25, 2, 1]
    assert pd.isna(table.loc["single-b", "vs_b"])


@pytest.mark.parametrize("method", ["single-b", "ac", "ac-unrelated"])
def test_batched_methods_answer_as_item_by_item(any_model: Model, method: str) -> None:
    items = load_task("gsm8k", 3, seed=0)
    cfg = ReasoningConfig(k=1, j=2, max_new_tokens=12)
    batched = run_reasoning_batch(method, items, any_model, any_model, cfg)
    assert len({o.prompt_b for o in batched}) == 3  # prompts of three lengths: the batch is padded
    for item, o in zip(items, batched, strict=True):
        one = run_reasoning_method(method, item, any_model, any_model, cfg)
        assert (o.text, o.prompt_a, o.prompt_b, o.answer) == (
            one.text,
            one.prompt_a,
            one.prompt_b,
            one.answer,
        )
        assert (o.batch, one.batch) == (3, 1)


@pytest.mark.parametrize("task", ["gsm8k", "mmlu:high_school_psychology"])
def test_ac_unrelated_is_ac_with_a_reading_the_fixed_unrelated_question(tiny: Model, task: str) -> None:
    from dataclasses import replace

    from commlib.prompts import encode
    from commlib.protocols.questions import question_prompt, unrelated_item

    [item] = load_task(task, 1, seed=0)
    cfg = ReasoningConfig(k=1, j=2, max_new_tokens=6)
    control = unrelated_item(item)
    assert control.question != item.question and bool(control.choices) == bool(item.choices)
    out = run_reasoning_method("ac-unrelated", item, tiny, tiny, cfg)
    assert out.prompt_a == int(encode(tiny, [question_prompt(control)]).attention_mask.sum())
    assert out.prompt_b == run_reasoning_method("ac", item, tiny, tiny, cfg).prompt_b
    # on the unrelated question itself A reads what B reads: ac-unrelated is ac
    same = [run_reasoning_method(m, control, tiny, tiny, cfg) for m in ("ac", "ac-unrelated")]
    assert replace(same[0], seconds=0) == replace(same[1], seconds=0)


def test_sampled_a_in_a_batch_keeps_each_items_seed(tiny: Model) -> None:
    items = load_task("gsm8k", 2, seed=0)
    cfg = ReasoningConfig(max_new_tokens=6, a_temperature=1.0)
    batched = run_reasoning_batch("single-a", items, tiny, tiny, cfg)
    one_by_one = [run_reasoning_method("single-a", item, tiny, tiny, cfg) for item in items]
    assert [o.text for o in batched] == [o.text for o in one_by_one]
    with pytest.raises(CommlibError, match="does not run in batches"):
        run_reasoning_batch("nld", items, tiny, tiny, cfg)


def test_a_batched_run_writes_the_rows_of_an_item_by_item_run_and_resumes(tmp_path: Path) -> None:
    import pandas as pd

    from commlib.cli import main

    def run(out: Path, batch_size: int) -> pd.DataFrame:
        args = [
            "reasoning",
            "--task",
            "gsm8k",
            "--sender",
            "tiny-llama-random",
            "--receiver",
            "tiny-llama-random",
            "--methods",
            "single-b,ac",
            "--k",
            "1",
            "--j",
            "2",
            "--n",
            "3",
            "--max-new-tokens",
            "6",
            "--batch-size",
            str(batch_size),
            "--out",
            str(out),
        ]
        assert main(args) == 0
        columns = ["item_id", "method", "output", "prompt_a", "prompt_b", "answer_tokens", "flops"]
        return pd.read_csv(out / "items.csv")[columns].sort_values(["method", "item_id"], ignore_index=True)

    one_by_one, batched = run(tmp_path / "one", 1), run(tmp_path / "batched", 2)  # the last batch is partial
    pd.testing.assert_frame_equal(batched, one_by_one)
    pd.testing.assert_frame_equal(run(tmp_path / "batched", 3), batched)  # resumed: nothing redone
    assert sorted(pd.read_csv(tmp_path / "batched" / "items.csv")["batch"]) == [1, 1, 2, 2, 2, 2]
    old = pd.read_csv(tmp_path / "one" / "items.csv").drop(columns="batch")  # written before batching
    old.to_csv(tmp_path / "one" / "items.csv", index=False)
    pd.testing.assert_frame_equal(run(tmp_path / "one", 2), one_by_one)  # resumed: nothing redone
    assert set(pd.read_csv(tmp_path / "one" / "items.csv")["batch"]) == {1}
    assert (
        main(
            [
                "reasoning",
                "--task",
                "gsm8k",
                "--sender",
                "tiny-llama-random",
                "--receiver",
                "tiny-llama-random",
                "--methods",
                "single-b",
                "--n",
                "1",
                "--batch-size",
                "0",
                "--out",
                str(tmp_path / "zero"),
            ]
        )
        == 2
    )


def test_a_finished_run_resumes_without_decoding_and_writes_the_same_results(
    tiny: Model, tiny_wide: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-running a finished directory (another batch size, the answer store on) adds no row, decodes
    nothing, and summarises its rows to the same results.json."""
    import json

    import pandas as pd

    from commlib.experiments import read_reasoning, run_reasoning

    out = tmp_path / "run"

    def run(batch_size: int) -> dict[str, Any]:
        return run_reasoning(
            "gsm8k",
            tiny,
            tiny_wide,
            ["single-a", "single-b", "nld", "ac"],
            out_dir=out,
            n=3,
            k=1,
            j=1,
            max_new_tokens=3,
            answers=tmp_path / "answers",
            batch_size=batch_size,
            progress=False,
        )

    first = run(2)
    table, read = (out / "items.csv").read_bytes(), read_reasoning(out)
    assert all(m["n"] == 3 for m in first["methods"].values())
    assert first["methods"]["ac-replace"]["vs_b"]["n"] == 3

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished item was decoded again")

    for decode in ("run_reasoning_batch", "run_reasoning_methods"):
        monkeypatch.setattr(f"commlib.experiments.reasoning.{decode}", no_decoding)
    again = run(1)
    assert (out / "items.csv").read_bytes() == table
    assert again["methods"] == first["methods"]
    assert {**again["config"], "batch_size": 2, "versions": None} == {**first["config"], "versions": None}
    assert json.loads((out / "results.json").read_text()) == again
    pd.testing.assert_frame_equal(read_reasoning(out), read)


# --------------------------------------------------------------------------- #
# Biographies: data from a file, the judge's answers, scores, cached judging
# --------------------------------------------------------------------------- #

ARTICLE = {
    "Ada Lovelace": "- Ada Lovelace was born in 1815 in London\n- She wrote an algorithm for the Engine\n"
    "- She worked with Charles Babbage",
    "Alan Turing (computer scientist)": "- Alan Turing was born in 1912\n\n- He proposed the Turing machine",
    "Grace Hopper": "- Grace Hopper was born in 1906\n- She served in the US Navy\n- She developed COBOL",
}
# What the fake judge answers per fact (by a word in it), and so each person's expected score:
# Ada yes, no, no -> 1/3; Turing yes, no -> 1/2; Hopper yes, uncertain (dropped), no -> 1/2.
FAKE_ANSWERS = {"born": "Yes.", "Navy": "Uncertain, the biography does not say"}
EXPECTED = {"Ada Lovelace": 1 / 3, "Alan Turing": 1 / 2, "Grace Hopper": 1 / 2}


@pytest.fixture
def article(tmp_path, monkeypatch) -> Path:
    import json

    path = tmp_path / "article.json"
    path.write_text(json.dumps(ARTICLE))
    monkeypatch.setenv("COMMLIB_BIOGRAPHIES", str(path))
    return path


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


def test_map_layer_by_relative_depth() -> None:
    assert [map_layer(k, 24, 24) for k in range(24)] == list(range(24))  # same depth: the same block
    assert (map_layer(0, 30, 18), map_layer(29, 30, 18)) == (0, 17)  # first and last blocks
    assert map_layer(26, 32, 28) == 23  # 26/31 of the way: 22.6 of 27 blocks
    mapped = [map_layer(k, 30, 24) for k in range(30)]
    assert mapped == sorted(mapped) and set(mapped) == set(range(24))  # monotone, onto the shallower model
    with pytest.raises(CommlibError, match=r"0\.\.29"):
        map_layer(30, 30, 24)


def test_cli_maps_layers_chosen_on_another_model(article: Path, tmp_path: Path) -> None:
    import json

    from commlib.cli import build_parser, main
    from commlib.tasks.biographies import DEFAULT_JUDGE

    out = tmp_path / "mapped"
    args = [
        "reasoning",
        "--task",
        "biographies",
        "--sender",
        "tiny-llama-random",
        "--receiver",
        "tiny-llama-wide-random",
        "--methods",
        "ac",
        "--k",
        "3",
        "--j",
        "3",
        "--layers-from",
        "tiny-llama-random",
        "--judge",
        "",
        "--n",
        "1",
        "--max-new-tokens",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    config = json.loads((out / "results.json").read_text())["config"]
    assert (config["k"], config["j"]) == (3, 2)  # A has 4 blocks like the source; B has 3
    assert config["layers_chosen_on"] == {"model": "tiny-llama-random", "k": 3, "j": 3}
    plain = ["reasoning", "--task", "biographies", "--sender", "a", "--receiver", "b", "--out", "x"]
    assert build_parser().parse_args(plain).judge == DEFAULT_JUDGE  # the largest offline model


def test_sampled_a_is_reproducible_and_shared_across_methods(tiny: Model) -> None:
    item = ReasoningItem("What is 2 + 2?", "4", id="q1")
    sampled = ReasoningConfig(k=1, j=2, max_new_tokens=8, a_temperature=1.0, a_seed=0)
    first = run_reasoning_method("single-a", item, tiny, tiny, sampled).text
    assert run_reasoning_method("single-a", item, tiny, tiny, sampled).text == first
    other_seed = replace(sampled, a_seed=1)
    assert run_reasoning_method("single-a", item, tiny, tiny, other_seed).text != first
    greedy = replace(sampled, a_temperature=0.0)
    assert run_reasoning_method("single-a", item, tiny, tiny, greedy).text != first
    outs = run_reasoning_methods(["nld", "ac-cot"], item, tiny, tiny, sampled)
    assert outs["nld"].transcript[0] == outs["ac-cot"].transcript[0] == first  # A's first text, every method
    assert run_reasoning_method("single-b", item, tiny, tiny, sampled).text == outs["nld"].transcript[1]


def test_ac_cot_grafts_the_state_at_the_end_of_a_reasoning(tiny: Model, tiny_wide: Model) -> None:
    from commlib.backends import Decoding
    from commlib.graft import GraftConfig, communicate
    from commlib.protocols.questions import question_prompt

    item = ReasoningItem("What is 2 + 2?", "4", id="q1")
    cfg = ReasoningConfig(k=2, j=1, max_new_tokens=6)
    out = run_reasoning_method("ac-cot", item, tiny, tiny_wide, cfg)
    reasoning, answer = out.transcript
    assert reasoning == run_reasoning_method("single-a", item, tiny, tiny_wide, cfg).text
    assert out.message > 0 and out.text == answer
    prompt, graft, decoding = question_prompt(item), GraftConfig(k=2, j=1), Decoding(max_new_tokens=6)
    pair = (tiny, tiny_wide, [prompt], [prompt], graft)
    after = communicate(*pair, decoding=decoding, sender_replies=[reasoning])
    before = communicate(*pair, decoding=decoding)
    assert after.texts[0] == answer
    assert not torch.equal(after.first_logits, before.first_logits)  # A's state after its reasoning


def test_debates_of_several_rounds_share_one_debate(tiny: Model) -> None:
    item = ReasoningItem("What is 2 + 2?", "4", id="q1")
    cfg = ReasoningConfig(max_new_tokens=3)
    outs = run_reasoning_methods(["nld-r1", "nld-r2", "nld-r3"], item, tiny, tiny, cfg)
    assert [len(outs[f"nld-r{r}"].transcript) for r in (1, 2, 3)] == [2, 4, 6]
    assert outs["nld-r3"].transcript[:4] == outs["nld-r2"].transcript
    alone = run_reasoning_method("nld", item, tiny, tiny, replace(cfg, rounds=3))
    assert alone.transcript == outs["nld-r3"].transcript and alone.text == outs["nld-r3"].text
    assert outs["nld-r1"].seconds < outs["nld-r3"].seconds
    with pytest.raises(CommlibError, match="nld-r<N>"):
        check_methods(["nld-r0"], "reasoning")


def test_debate_takes_its_first_round_from_the_single_answers(
    tiny: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import pandas as pd

    from commlib.experiments import run_reasoning
    from commlib.protocols import debate as debate_mod
    from commlib.protocols import questions as questions_mod
    from commlib.protocols import reasoning as reasoning_mod
    from commlib.tasks.reasoning import load_task

    cfg = {"max_new_tokens": 5, "a_temperature": 1.0, "a_seed": 3}  # A sampled: its seed must line up too
    calls = []
    answers = questions_mod.answers  # one call per decode; one name per prompt decoded

    def spy(model: Model, prompts: list[str], *args: Any, **kwargs: Any) -> Any:
        calls.extend([model.name] * len(prompts))
        return answers(model, prompts, *args, **kwargs)

    monkeypatch.setattr(questions_mod, "answers", spy)  # what the debate's turns call
    monkeypatch.setattr(reasoning_mod, "answers", spy)  # what the single answers call
    run_reasoning("gsm8k", tiny, tiny, ["single-a", "single-b"], out_dir=tmp_path, n=2, progress=False, **cfg)
    calls.clear()
    run_reasoning(
        "gsm8k", tiny, tiny, ["single-a", "single-b", "nld"], out_dir=tmp_path, n=2, progress=False, **cfg
    )
    assert len(calls) == 2 * 2  # per item only round two: round one is the single answers
    rows = pd.read_csv(tmp_path / "items.csv", keep_default_na=False)
    rc = ReasoningConfig(max_new_tokens=5, a_temperature=1.0, a_seed=3)
    for item in load_task("gsm8k", 2, 0):
        fresh = run_reasoning_method("nld", item, tiny, tiny, rc)  # the whole debate from scratch
        mine = rows[rows["item_id"] == item.id].set_index("method")
        assert json.loads(mine.loc["nld", "transcript"]) == fresh.transcript
        assert mine.loc["nld", "output"] == fresh.text
    first_round = debate_mod.debate(item, tiny, tiny, rc, 1)
    with pytest.raises(CommlibError, match="whole rounds"):
        debate_mod.debate(item, tiny, tiny, rc, 2, opening=first_round[1:])  # B without A


def test_single_answers_are_shared_between_pairs_through_the_answer_store(
    tiny: Model, tiny_wide: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    from commlib.experiments import run_reasoning
    from commlib.protocols import questions as questions_mod
    from commlib.protocols import reasoning as reasoning_mod

    calls = []
    answers = questions_mod.answers  # one call per decode; one name per prompt decoded

    def spy(model: Model, prompts: list[str], *args: Any, **kwargs: Any) -> Any:
        calls.extend([model.name] * len(prompts))
        return answers(model, prompts, *args, **kwargs)

    monkeypatch.setattr(questions_mod, "answers", spy)  # what the debate's turns call
    monkeypatch.setattr(reasoning_mod, "answers", spy)  # what the single answers call
    singles = ["single-a", "single-b"]
    # a run made before the store existed: re-running it with the store adds its answers
    run_reasoning(
        "gsm8k", tiny, tiny_wide, singles, out_dir=tmp_path / "ab", n=2, max_new_tokens=5, progress=False
    )
    calls.clear()
    run_reasoning(
        "gsm8k",
        tiny,
        tiny_wide,
        singles,
        out_dir=tmp_path / "ab",
        n=2,
        max_new_tokens=5,
        answers=tmp_path / "answers",
        progress=False,
    )
    assert calls == []
    run_reasoning(
        "gsm8k",
        tiny_wide,
        tiny,
        singles,
        out_dir=tmp_path / "ba",
        n=2,
        max_new_tokens=5,
        answers=tmp_path / "answers",
        progress=False,
    )
    assert calls == []  # the swapped pair: both models' answers were there
    ab, ba = (
        pd.read_csv(tmp_path / d / "items.csv", keep_default_na=False).set_index(["method", "item_id"])
        for d in ("ab", "ba")
    )
    cols = ["output", "correct", "answer_tokens", "seconds"]
    assert ba.loc["single-a", cols].equals(ab.loc["single-b", cols])
    assert ba.loc["single-b", cols].equals(ab.loc["single-a", cols])
    assert (ba.loc["single-a", "prompt_a"] == ab.loc["single-b", "prompt_b"]).all()
    item = load_task("gsm8k", 2, 0)[0]  # and the shared answer is what the model writes
    fresh = run_reasoning_method("single-a", item, tiny_wide, tiny, ReasoningConfig(max_new_tokens=5))
    assert fresh.text == ba.loc[("single-a", item.id), "output"]
    with (tmp_path / "answers" / f"{tiny.name}.jsonl").open("a") as fh:
        fh.write('{"key": {"model": "cut')  # a crash mid-write: that line is skipped, the others still serve
    calls.clear()
    run_reasoning(
        "gsm8k",
        tiny_wide,
        tiny,
        singles,
        out_dir=tmp_path / "ba-again",
        n=2,
        max_new_tokens=5,
        answers=tmp_path / "answers",
        progress=False,
    )
    assert calls == []
    calls.clear()  # another decoding is another answer: generated, not taken from the store
    run_reasoning(
        "gsm8k",
        tiny_wide,
        tiny,
        singles,
        out_dir=tmp_path / "ba6",
        n=2,
        max_new_tokens=6,
        answers=tmp_path / "answers",
        progress=False,
    )
    assert sorted(calls) == sorted([tiny_wide.name, tiny.name] * 2)
    calls.clear()  # answers stored after the cut line are read back
    run_reasoning(
        "gsm8k",
        tiny_wide,
        tiny,
        singles,
        out_dir=tmp_path / "ba6-again",
        n=2,
        max_new_tokens=6,
        answers=tmp_path / "answers",
        progress=False,
    )
    assert calls == []


def test_reasoning_distance_identity_graft_is_zero_and_a_real_graft_moves_b(
    tiny: Model, tiny_wide: Model, tmp_path: Path
) -> None:
    from commlib.experiments import run_reasoning_distance

    def measure(sender: Model, receiver: Model, out: str, k: int = 1, j: int = 1) -> Any:
        return run_reasoning_distance(
            "gsm8k", sender, receiver, k=k, j=j, out_dir=tmp_path / out, n=3, n_reference=16
        )

    same = measure(tiny, tiny, "same")
    assert same[["displacement", "next_token_kl"]].abs().max().max() < 1e-5  # A = B, k = j writes b back
    cross = measure(tiny, tiny_wide, "x")
    by = cross.set_index("source")
    assert (by.loc["b", "displacement"] == 0).all() and by.loc["b", "next_token_kl"].abs().max() < 1e-5
    assert (by.loc["ac", "displacement"] > 0).all() and (by.loc["ac", "next_token_kl"] > 1e-4).all()
    assert cross[[c for c in cross if c.endswith("_pct")]].stack().between(0, 100).all()
    written = (tmp_path / "x" / "distances.csv").stat().st_mtime_ns
    again = measure(tiny, tiny_wide, "x")
    assert (tmp_path / "x" / "distances.csv").stat().st_mtime_ns == written
    assert again["mahalanobis"].tolist() == pytest.approx(cross["mahalanobis"].tolist())
    with pytest.raises(CommlibError, match="other settings"):
        measure(tiny, tiny_wide, "x", k=0)
    with pytest.raises(CommlibError, match="j"):
        measure(tiny, tiny_wide, "y", j=99)


def test_reasoning_reference_states_are_the_states_ac_reads(tiny_wide: Model) -> None:
    from commlib.backends import get_backend
    from commlib.graft import capture_corpus, capture_message

    prompts = [question_prompt(it) for it in load_task("gsm8k", n=3, seed=5)]
    batched = capture_corpus(tiny_wide, prompts, [1], formatted=True)[1]
    direct = torch.cat([capture_message(get_backend(tiny_wide), [p], 1) for p in prompts])
    torch.testing.assert_close(batched, direct, atol=1e-4, rtol=1e-4)


def test_in_distribution_w_fits_on_other_items_at_the_states_ac_reads(
    tiny: Model, tiny_wide: Model, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import importlib

    combine = importlib.import_module("commlib.combine")  # the package exports a function of that name
    from commlib.backends import get_backend
    from commlib.experiments import other_items, run_pair_reasoning
    from commlib.graft import capture_message, fit_map

    evaluated = load_task("gsm8k", n=5, seed=2)
    others = other_items("gsm8k", evaluated, 40, seed=2)
    assert len(others) == 40 and not {it.id for it in others} & {it.id for it in evaluated}
    assert [it.id for it in other_items("gsm8k", evaluated, 40, seed=2)] == [it.id for it in others]
    prompts = [question_prompt(it) for it in others[:3]]
    seen: dict[str, torch.Tensor] = {}
    fit = combine.fit_linear_map

    def spy(a: torch.Tensor, b: torch.Tensor, **kw: Any) -> Any:
        seen.update(a=a, b=b)
        return fit(a, b, **kw)

    monkeypatch.setattr(combine, "fit_linear_map", spy)
    w = fit_map(tiny, tiny_wide, 1, 0, corpus="gsm8k other items", n=3, epochs=1, prompts=prompts)
    assert w.info.corpus == "gsm8k other items" and w.info.n == 3
    for got, model, layer in ((seen["a"], tiny, 1), (seen["b"], tiny_wide, 0)):
        want = capture_message(get_backend(model), prompts, layer)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    with pytest.raises(CommlibError, match="map_source"):
        run_pair_reasoning(
            "gsm8k", tiny, tiny_wide, ["ac-w"], runs_root=tmp_path, sweep_root=tmp_path, map_source="train"
        )


def test_depth_sweep_grafts_both_models_at_one_relative_depth_resumes_and_pairs_ac_with_its_control(
    tmp_path: Path, tiny: Model, tiny_wide: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    from commlib.experiments import read_reasoning, reasoning_dir, run_reasoning_depths

    def sweep() -> pd.DataFrame:  # A has 4 blocks, B 3: B's blocks 0, 1, 2 are A's 0, 2, 3
        return run_reasoning_depths(
            "gsm8k",
            tiny,
            tiny_wide,
            [0, 1, 2],
            runs_root=tmp_path,
            n=3,
            max_new_tokens=4,
            n_reference=16,
            progress=False,
        )

    table = sweep()
    assert table.groupby("block")["k"].first().to_dict() == {0: 0, 1: 2, 2: 3}
    for block, k in ((0, 0), (1, 2), (2, 3)):
        run = read_reasoning(
            reasoning_dir(
                tmp_path, "gsm8k", tiny.name, tiny_wide.name, seed=0, n=3, variant=f"depth-j{block}"
            )
        )
        assert set(run["k"]) == {k} and set(run["j"]) == {block}
        assert set(run["method"]) == {"single-a", "single-b", "ac-replace", "ac-replace-unrelated"}
        scores = table[table["block"] == block].set_index("method")["accuracy"]  # as the run scored them
        assert scores.to_dict() == run.set_index("method")["accuracy"].to_dict()
    assert (table[table["method"] == "single-b"]["vs_b"] == 0).all()
    assert (table[table["method"] == "ac-replace-unrelated"]["vs_control"] == 0).all()
    assert (table["next_token_kl"] > 0).all()  # A's state, another model's, moves B's next token

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished depth was decoded again")

    for decode in ("run_reasoning_batch", "run_reasoning_methods"):
        monkeypatch.setattr(f"commlib.experiments.reasoning.{decode}", no_decoding)
    pd.testing.assert_frame_equal(sweep(), table)
    first = load_task("gsm8k", 3, seed=0)[0].id
    held_out = run_reasoning_depths(
        "gsm8k",
        tiny,
        tiny_wide,
        [1],
        runs_root=tmp_path,
        n=3,
        max_new_tokens=4,
        distance=False,
        exclude=[first],
        progress=False,
    )
    assert set(held_out["n"]) == {2}  # scored without the excluded item, and nothing decoded again
    with pytest.raises(CommlibError, match="gsm8k or mmlu"):
        run_reasoning_depths("biographies", tiny, tiny_wide, [0], runs_root=tmp_path, progress=False)


def test_reference_states_of_several_blocks_in_one_pass_equal_one_block_at_a_time_and_are_cached(
    tiny: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from commlib.experiments import reasoning_reference_states
    from commlib.models import cache_dir

    data = cache_dir() / "data"  # the fetched tasks, seen from two empty caches
    for name in ("together", "alone"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "data").symlink_to(data)
    evaluated = load_task("gsm8k", 3, seed=0)
    monkeypatch.setenv("COMMLIB_CACHE_DIR", str(tmp_path / "together"))
    together = reasoning_reference_states("gsm8k", tiny, evaluated, [0, 3], n_reference=12)
    monkeypatch.setenv("COMMLIB_CACHE_DIR", str(tmp_path / "alone"))
    for layer in (0, 3):
        alone = reasoning_reference_states("gsm8k", tiny, evaluated, [layer], n_reference=12)[layer]
        assert alone.shape == (12, tiny.info.d_model)
        torch.testing.assert_close(together[layer], alone, atol=1e-5, rtol=1e-5)

    def no_capture(*args: object, **kwargs: object) -> None:
        raise AssertionError("cached states were captured again")

    monkeypatch.setattr("commlib.experiments.depth.capture_corpus", no_capture)
    cached = reasoning_reference_states("gsm8k", tiny, evaluated, [3, 0], n_reference=12)
    assert all(torch.equal(cached[layer], states) for layer, states in together.items())


def test_ac_donor_is_ac_with_a_reading_its_donor_and_refuses_items_without_one(tiny: Model) -> None:

    from commlib.tasks.items import with_donors
    from commlib.tasks.pools import derangement

    items = load_task("mmlu:high_school_psychology", 4, seed=0)
    donors = derangement(items, seed=0)
    carried = with_donors(items, donors)
    cfg = ReasoningConfig(k=1, j=2, max_new_tokens=6)
    for item, d in zip(carried, donors, strict=True):
        assert d != carried.index(item) and item.donor == items[d]
        out = run_reasoning_method("ac-replace-donor", item, tiny, tiny, cfg)
        # the same as ac-replace run with A on the donor's question: graft A's state from the donor into B
        donor_ac = run_reasoning_method("ac-replace", items[d], tiny, tiny, cfg)
        assert out.prompt_a == donor_ac.prompt_a
        assert out.prompt_b == run_reasoning_method("ac-replace", item, tiny, tiny, cfg).prompt_b
    # a donor that is the item itself is ac-replace
    self_donor = replace(items[0], donor=items[0])
    same = [run_reasoning_method(m, self_donor, tiny, tiny, cfg) for m in ("ac-replace", "ac-replace-donor")]
    assert replace(same[0], seconds=0) == replace(same[1], seconds=0)
    assert run_reasoning_batch("ac-replace-donor", carried, tiny, tiny, cfg)[1].text == (
        run_reasoning_method("ac-replace-donor", carried[1], tiny, tiny, cfg).text
    )
    with pytest.raises(CommlibError, match="has no donor"):
        run_reasoning_method("ac-replace-donor", items[0], tiny, tiny, cfg)


def test_a_run_with_the_donor_control_reports_ac_against_it(tmp_path: Path, tiny: Model) -> None:
    from commlib.experiments import run_reasoning

    methods = ["single-b", "ac-replace", "ac-replace-donor"]
    out = run_reasoning("mmlu:high_school_psychology", tiny, tiny, methods, out_dir=tmp_path, n=4, seed=0,
                        k=1, j=2, max_new_tokens=4, progress=False)  # fmt: skip
    ac = out["methods"]["ac-replace"]
    paired = ac["vs_control"]["ac-replace-donor"]
    scores = {m: out["methods"][m]["accuracy"] for m in methods}
    assert paired["n"] == 4
    assert paired["difference"] == pytest.approx(scores["ac-replace"] - scores["ac-replace-donor"])
    assert "vs_control" not in out["methods"]["single-b"]
    from commlib.experiments import read_reasoning

    table = read_reasoning(tmp_path).set_index("method")
    assert table.loc["ac-replace", "vs_ac-replace-donor"] == paired["difference"]
