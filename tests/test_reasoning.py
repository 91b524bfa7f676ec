"""Reasoning data (offline wheels) and answer extraction on tricky outputs."""

from __future__ import annotations

import pytest

from commlib.errors import CommlibError
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
    args = ["reasoning", "--task", "gsm8k", "--sender", "tiny-llama-random", "--receiver",
            "tiny-llama-random", "--methods", "single-b,nld,ac", "--k", "1", "--j", "2", "--n", "3",
            "--max-new-tokens", "4", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    result = json.loads((out / "results.json").read_text())
    methods = result["methods"]
    assert set(methods) == {"single-b", "nld", "ac"} and all(m["n"] == 3 for m in methods.values())
    assert methods["ac"]["flops"] > methods["single-b"]["flops"]  # plus A's partial pass
    assert methods["nld"]["flops"] > 2 * methods["single-b"]["flops"]  # two agents, two rounds
    items = pd.read_csv(out / "items.csv")
    assert len(items) == 9 and len(json.loads(items[items["method"] == "nld"]["transcript"].iloc[0])) == 4
    assert main(args) == 0 and len(pd.read_csv(out / "items.csv")) == 9  # resumed, nothing redone
    assert main([*args[:-2], "--rounds", "3", "--out", str(out)]) == 2  # other settings refused
