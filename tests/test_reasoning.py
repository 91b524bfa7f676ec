"""Reasoning data (offline wheels), answer extraction, runs that resume and batch, layers across depths, and
the appendix ablations (CoT on A, sampled A, debate rounds). Biographies: test_biographies.py; AC's controls:
test_reasoning_controls.py."""

from __future__ import annotations

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
    from commlib.protocols.questions import unrelated_item

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
