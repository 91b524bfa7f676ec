"""Games runs: scoring, bootstrap intervals, resuming, crash safety, the CLI contract."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from commlib.cli import main
from commlib.errors import CommlibError
from commlib.experiments import run_games
from commlib.models import Model
from commlib.protocols import games as methods_mod
from commlib.results import ITEM_FIELDS, Run, bootstrap_ci, contains_answer, exact_match, paired_difference
from commlib.tasks.games import countries


def test_scoring_reads_only_the_first_answer_line() -> None:
    assert contains_answer("\n  It is in GREECE.\nor Italy", "Greece")
    assert not contains_answer("It is in Italy.\nGreece", "Greece")
    choices = ("Zentech", "Argocorp", "Novaworks")
    assert contains_answer(" Argocorp, not Zentech.", "Argocorp", choices)
    assert not contains_answer(" Zentech or Argocorp.", "Argocorp", choices)
    assert exact_match("Greece!", "greece") and not exact_match("In Greece", "Greece")


def test_bootstrap_interval_contains_the_mean_and_narrows_with_n() -> None:
    small = [1, 0] * 10
    large = [1, 0] * 500
    lo_s, hi_s = bootstrap_ci(small, seed=0)
    lo_l, hi_l = bootstrap_ci(large, seed=0)
    assert lo_s <= 0.5 <= hi_s and lo_l <= 0.5 <= hi_l
    assert hi_l - lo_l < hi_s - lo_s
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)


def test_paired_difference_pairs_by_item_not_by_row() -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    before = pd.Series(rng.integers(0, 2, 40).astype(float), index=[f"i{n}" for n in range(40)])
    after = (1 - before).sample(frac=1.0, random_state=0)  # every item flipped, rows shuffled
    gain, lo, hi = paired_difference(after, before)
    assert gain == pytest.approx(after.mean() - before.mean())
    assert gain == pytest.approx((1 - 2 * before).mean())  # per item: +1 where 0 before, -1 where 1
    assert lo <= gain <= hi
    same, lo0, hi0 = paired_difference(before.sample(frac=1.0, random_state=1), before)
    assert (same, lo0, hi0) == (0.0, 0.0, 0.0)  # unpaired, the interval would not collapse to 0
    part, _, _ = paired_difference(after.drop(["i0", "i1"]), before)  # only items scored on both sides
    assert part == pytest.approx((1 - 2 * before.drop(["i0", "i1"])).mean())


def test_receiver_prompt_is_the_same_text_in_every_method(tiny: Model, monkeypatch) -> None:
    seen: dict[str, list[str]] = {}

    def spy(name):
        def fake(model, prompts, cfg, max_new_tokens, replies=None):
            seen[name] = list(prompts)
            seen[name + "-replies"] = list(replies or [])
            return ["x"] * len(prompts)

        return fake

    item = countries(1)[0]
    cfg = methods_mod.MethodConfig(k=1, j=1, max_new_tokens=2)
    for name in ("silent", "skyline", "nl"):
        monkeypatch.setattr(methods_mod, "_generate_alone", spy(name))
        methods_mod.run_method(name, [item], tiny, tiny, cfg)
        assert seen[name][0].endswith(item.receiver)
        assert seen[name + "-replies"] == [item.reply]
    assert item.sender in seen["skyline"][0]


def test_a_second_run_on_the_directory_sees_the_rows_and_other_settings_are_refused(tmp_path: Path) -> None:
    settings = {"game": "countries", "k": 1}
    items = countries(3)
    run = Run(tmp_path, settings)
    assert run.frame().empty and run.done() == set()
    run.add([{"item_id": items[0].id, "method": "nl", "correct": True}])
    run.add([{"item_id": items[1].id, "method": "ac-sum", "exact": 1}])
    again = Run(tmp_path, dict(settings))
    assert again.rows == run.rows and again.rows[0]["correct"] == "True" and again.rows[1]["answer"] == ""
    assert again.done(method="nl") == {items[0].id}
    assert again.done("item_id", "method") == {(items[0].id, "nl"), (items[1].id, "ac-sum")}
    assert again.pending(items, method="nl") == items[1:]
    assert list(again.frame().columns) == list(ITEM_FIELDS)
    before = (tmp_path / "run.json").read_text()
    with pytest.raises(CommlibError, match=r"other settings.*k: 1 -> 2"):
        Run(tmp_path, {**settings, "k": 2})
    assert (tmp_path / "run.json").read_text() == before and len(Run(tmp_path, settings).rows) == 2


def test_a_table_without_fixed_columns_takes_its_header_from_the_first_rows(tmp_path: Path) -> None:
    run = Run(tmp_path, None, fields=None, table="t.csv")
    run.add([])
    assert not run.path.exists() and run.frame().empty  # no row, no columns yet
    run.add([{"item_id": "a", "z": 1.5, "y": True}])
    again = Run(tmp_path, None, fields=None, table="t.csv")
    assert again.fields == ("item_id", "z", "y")
    again.add([{"y": False, "item_id": "b", "z": 2.5}])  # another key order: written in the header's
    df = again.frame()
    assert df["item_id"].tolist() == ["a", "b"] and df["z"].tolist() == [1.5, 2.5]
    assert df["y"].tolist() == [True, False]


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "items.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_resume_skips_finished_rows_and_a_crash_keeps_them(tiny: Model, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run"
    real = methods_mod.run_method
    calls = {"n": 0}

    def crash_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr("commlib.experiments.games.run_method", crash_on_second_batch)
    with pytest.raises(RuntimeError):
        run_games(
            "countries",
            tiny,
            tiny,
            ["silent"],
            k=1,
            j=1,
            n=6,
            out_dir=out,
            batch_size=3,
            max_new_tokens=2,
            progress=False,
        )
    assert len(_rows(out)) == 3  # the finished batch is on disk
    monkeypatch.setattr("commlib.experiments.games.run_method", real)
    res = run_games(
        "countries",
        tiny,
        tiny,
        ["silent"],
        k=1,
        j=1,
        n=6,
        out_dir=out,
        batch_size=3,
        max_new_tokens=2,
        progress=False,
    )
    rows = _rows(out)
    assert len(rows) == 6 and len({r["item_id"] for r in rows}) == 6
    assert res["methods"]["silent"]["n"] == 6
    silent = [float(r["correct"] == "True") for r in rows]
    assert res["methods"]["silent"]["accuracy"] == pytest.approx(np.mean(silent))

    def refuse(*args, **kwargs):
        raise AssertionError("a finished item was run again")

    monkeypatch.setattr("commlib.experiments.games.run_method", refuse)
    again = run_games(
        "countries",
        tiny,
        tiny,
        ["silent"],
        k=1,
        j=1,
        n=6,
        out_dir=out,
        batch_size=3,
        max_new_tokens=2,
        progress=False,
    )
    assert len(_rows(out)) == 6  # nothing recomputed
    assert again["methods"] == res["methods"]
    assert json.loads((out / "results.json").read_text())["methods"] == res["methods"]
    with pytest.raises(CommlibError, match=r"other settings.*j: 1 -> 2"):
        run_games("countries", tiny, tiny, ["silent"], k=1, j=2, n=6, out_dir=out, progress=False)
    assert len(_rows(out)) == 6  # a mismatched resume writes nothing


def test_reply_opens_the_answer_in_every_method_and_can_be_dropped(tiny: Model, tmp_path: Path) -> None:
    from commlib.prompts import encode, format_prompt

    item = countries(2)[0]
    assert item.reply and format_prompt(tiny, item.receiver, reply=item.reply).endswith(item.reply)
    with_reply = encode(tiny, [item.receiver], replies=[item.reply])
    without = encode(tiny, [item.receiver])
    assert with_reply.length > without.length
    res = run_games(
        "countries",
        tiny,
        tiny,
        ["silent"],
        k=1,
        j=1,
        n=2,
        out_dir=tmp_path / "r",
        reply=False,
        max_new_tokens=2,
        progress=False,
    )
    assert res["config"]["reply"] is False
    assert res["config"]["example_prompts"]["receiver"] == format_prompt(tiny, item.receiver)


def test_games_cli_on_a_custom_jsonl(tmp_path: Path, capsys) -> None:
    game = tmp_path / "colours.jsonl"
    game.write_text(
        "".join(
            json.dumps({"sender": f"The box is {c}.", "receiver": "What colour is the box?", "answer": c})
            + "\n"
            for c in ("red", "blue", "green")
        )
    )
    out = tmp_path / "out"
    args = [
        "games",
        "--game",
        str(game),
        "--sender",
        "tiny-llama-random",
        "--receiver",
        "tiny-llama-random",
        "--methods",
        "silent,skyline,nl,ac-mean",
        "--k",
        "1",
        "--j",
        "2",
        "--max-new-tokens",
        "3",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    result = json.loads((out / "results.json").read_text())
    for method in ("silent", "skyline", "nl", "ac-mean"):
        r = result["methods"][method]
        assert r["n"] == 3 and r["ci_low"] <= r["accuracy"] <= r["ci_high"]
    assert (
        result["config"]["k"] == 1
        and result["config"]["seed"] == 0
        and "torch" in result["config"]["versions"]
    )
    assert len(_rows(out)) == 12
    assert main([*args[:-2], "--methods", "ac-w-sum", "--out", str(out)]) == 2
    assert "needs a learned map" in capsys.readouterr().err
