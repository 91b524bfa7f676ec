"""The controlled experiment: readings, the distance axis, depth selection, the run and its summary."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from commlib.backends import Decoding, get_backend
from commlib.backends.base import final_states
from commlib.combine import LinearMap, fit_ridge_map
from commlib.errors import CommlibError
from commlib.experiments.selection import choose_cell, depth_grid, paper_layers
from commlib.experiments.thesis import conditions, run_thesis
from commlib.experiments.thesis_results import merge_record, read_thesis, summarise_thesis
from commlib.models import Model
from commlib.prompts import encode
from commlib.protocols.readings import (
    Condition,
    SideNeeds,
    check_channel,
    distance,
    read,
    sender_side,
    spread,
)
from commlib.tasks.games import countries
from commlib.tasks.pools import control_item, derangement

TINY_RUN = {
    "n": 6,
    "n_selection": 6,
    "grid": 2,
    "map_sentences": 32,
    "message_tokens": 3,
    "max_new_tokens": 2,
    "progress": False,
}


# --------------------------------------------------------------------------- #
# One site for every channel: what the unembedding reads at the answer position
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("backend", ["nnsight", "transformer-lens"])
def test_final_states_match_hf_hidden_states_on_both_backends(tiny: Model, backend: str) -> None:
    prompts = ["Alice is at the Eiffel Tower.", "Hi"]  # different lengths: left padding
    batch = encode(tiny, prompts)
    with final_states(tiny) as states:
        get_backend(tiny, backend).generate(batch, None, Decoding(max_new_tokens=2))
    hf = tiny.hf(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True
    ).hidden_states[-1][:, -1]
    torch.testing.assert_close(states[0], hf.float(), atol=1e-4, rtol=1e-4)
    assert len(states) == 2  # the prefill and one decoding step


def test_final_states_hook_is_removed_on_error(tiny: Model) -> None:
    with pytest.raises(RuntimeError), final_states(tiny) as states:
        raise RuntimeError("boom")
    tiny.hf(encode(tiny, ["Hi"]).input_ids)
    assert states == []


# --------------------------------------------------------------------------- #
# Readings: every channel, batched equals one at a time, own differs from control
# --------------------------------------------------------------------------- #

CHANNELS = ["silent", "skyline", "nl", "ac-replace", "ac-sum", "cipher-t0", "cipher-t1", "interlat"]


@pytest.fixture(scope="module")
def items_and_side(tiny: Model):
    items = countries(4, seed=3)
    needs = SideNeeds.of(
        [Condition(c, "paper", 1, 1) if c.startswith("ac") else Condition(c) for c in CHANNELS]
    )
    return items, sender_side(tiny, tiny, items, needs, message_tokens=3)


def _condition(name: str) -> Condition:
    return Condition(name, "paper", 1, 1) if name.startswith("ac") else Condition(name)


@pytest.mark.parametrize("name", CHANNELS)
def test_batched_readings_equal_one_at_a_time(tiny: Model, items_and_side, name: str) -> None:
    items, side = items_and_side
    together = read(_condition(name), items, side, tiny, tiny, max_new_tokens=2, batch_size=4)
    alone = read(_condition(name), items, side, tiny, tiny, max_new_tokens=2, batch_size=1)
    assert [r.text for r in together] == [r.text for r in alone]
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a.first_logits, b.first_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.final_state, b.final_state, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", [c for c in CHANNELS if c != "silent"])
def test_every_channel_moves_b_and_its_control_moves_it_elsewhere(
    tiny: Model, items_and_side, name: str
) -> None:
    items, side = items_and_side
    silent = read(Condition("silent"), items, side, tiny, tiny, max_new_tokens=1)
    own = read(_condition(name), items, side, tiny, tiny, max_new_tokens=1)
    donors = derangement(items, seed=0)
    controls = [control_item(it, items[d]) for it, d in zip(items, donors, strict=True)]
    control_side = sender_side(tiny, tiny, controls, SideNeeds.of([_condition(name)]), message_tokens=3)
    control = read(_condition(name), items, control_side, tiny, tiny, max_new_tokens=1)
    assert all(distance(o, s)[0] > 0 for o, s in zip(own, silent, strict=True))
    assert any(not torch.allclose(o.first_logits, c.first_logits) for o, c in zip(own, control, strict=True))


def test_silent_is_at_distance_zero_and_spread_is_positive(tiny: Model, items_and_side) -> None:
    items, side = items_and_side
    silent = read(Condition("silent"), items, side, tiny, tiny, max_new_tokens=1)
    assert distance(silent[0], silent[0]) == (0.0, 0.0)
    assert spread(silent) > 0
    with pytest.raises(CommlibError, match="at least two"):
        spread(silent[:1])


def test_reading_without_the_sender_side_it_needs_names_the_fix(tiny: Model) -> None:
    items = countries(2)
    side = sender_side(tiny, tiny, items, SideNeeds())
    with pytest.raises(CommlibError, match=r"SideNeeds\.of"):
        read(Condition("nl"), items, side, tiny, tiny)
    with pytest.raises(CommlibError, match="block 1"):
        read(Condition("ac-replace", "paper", 1, 1), items, side, tiny, tiny)


def test_channels_and_conditions() -> None:
    assert check_channel("cipher-t0.5") == "cipher-t0.5"
    with pytest.raises(CommlibError, match="no channel"):
        check_channel("debate")
    names = [c.name for c in conditions(["ac-sum", "ac-w-mean", "nl"], selected=None, paper=(3, 4))]
    assert names == ["ac-sum@paper", "ac-w-mean@paper", "nl"]


# --------------------------------------------------------------------------- #
# Depth selection and W
# --------------------------------------------------------------------------- #


def test_depth_grid_and_paper_layers_span_the_model() -> None:
    grid = depth_grid(28, 6)
    assert grid[0] == 0 and grid[-1] == 27 and len(grid) == 6
    assert paper_layers(28, 28)[0] in grid  # 0.8 of 28 blocks is a grid point at six
    assert depth_grid(1, 5) == [0]


def test_choose_cell_takes_the_largest_gain_over_the_control_then_the_logprob_gain() -> None:
    cells = [((0, 0), True, True, 5.0), ((1, 1), True, False, 0.1), ((2, 2), True, False, 0.3)]
    rows = [
        {"item_id": item, "message": message, "k": k, "j": j, "answer_logprob": lp * (message == "own"),
         "greedy_answer": str(own if message == "own" else ctrl)}
        for item in ("a", "b")
        for (k, j), own, ctrl, lp in cells
        for message in ("own", "control")
    ]  # fmt: skip
    choice = choose_cell(pd.DataFrame(rows))
    assert (choice["k"], choice["j"], choice["gain"], choice["n"]) == (2, 2, 1.0, 2)


def test_ridge_map_beats_the_mean_and_keeps_its_bias_through_save_and_load(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(300, 8, generator=gen)
    b = a @ torch.randn(8, 5, generator=gen) + 10.0 + 0.01 * torch.randn(300, 5, generator=gen)
    w = fit_ridge_map(a, b, sender="A", receiver="B", k=0, j=0, corpus="toy")
    assert w.info.val_mse < 0.01 * w.info.val_baseline_mse
    loaded = LinearMap.load(w.save(tmp_path / "w"))
    assert loaded.info.fit == "ridge" and loaded.bias is not None
    torch.testing.assert_close(loaded(a), w(a))
    torch.testing.assert_close(w(a), b, atol=0.1, rtol=0.01)


# --------------------------------------------------------------------------- #
# The run: resumable, summary recomputable from items.csv, controls well formed
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def tiny_run(tiny: Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("thesis")
    run_thesis("countries", tiny, tiny, ["silent", "nl", "ac-replace", "cipher-t0"], out_dir=out, **TINY_RUN)
    return out


def test_run_writes_one_row_per_item_channel_and_message(tiny_run: Path) -> None:
    items = pd.read_csv(tiny_run / "items.csv", dtype=str, keep_default_na=False)
    counts = items.groupby(["method", "depth", "message"]).size()
    assert set(counts) == {6}
    assert set(counts.index) == {
        ("silent", "", "none"),
        *{
            (m, d, msg)
            for m, d in [("nl", ""), ("cipher-t0", ""), ("ac-replace", "selected"), ("ac-replace", "paper")]
            for msg in ("own", "control")
        },
    }
    control = items[items["message"] == "control"]
    assert (control["donor_id"] != control["item_id"]).all()
    assert (control["donor_answer"] != control["answer"]).all()
    assert (items[items["method"] == "silent"]["kl"].astype(float) == 0).all()


def test_summary_is_recomputed_from_items_csv_alone(tiny_run: Path) -> None:
    written = pd.read_csv(tiny_run / "summary.csv")
    again = read_thesis(tiny_run)
    numbers = written.select_dtypes("number").columns.drop(["k", "j"])
    assert list(written["channel"]) == list(again["channel"])
    pd.testing.assert_frame_equal(
        written[numbers].astype(float), again[numbers].astype(float), check_exact=False
    )


def test_summary_numbers_are_the_paired_means_of_the_rows(tiny_run: Path) -> None:
    items = pd.read_csv(tiny_run / "items.csv", dtype=str, keep_default_na=False)
    flipped = items.copy()
    own = (flipped["method"] == "nl") & (flipped["message"] == "own")
    flipped.loc[own, "correct"] = ["True", "True", "True", "False", "False", "False"]
    summary = summarise_thesis(flipped).set_index("channel")
    ok = flipped.assign(ok=flipped["correct"] == "True")
    nl = ok[ok["method"] == "nl"].pivot(index="item_id", columns="message", values="ok").astype(float)
    assert summary.loc["nl", "accuracy"] == pytest.approx(nl["own"].mean())
    assert summary.loc["nl", "vs_control"] == pytest.approx((nl["own"] - nl["control"]).mean())
    low, high = summary.loc["nl", ["vs_control_low", "vs_control_high"]]
    assert low <= summary.loc["nl", "vs_control"] <= high


def test_resuming_adds_no_rows_and_a_new_channel_only_its_own(tiny: Model, tiny_run: Path) -> None:
    before = pd.read_csv(tiny_run / "items.csv", dtype=str, keep_default_na=False)
    run_thesis("countries", tiny, tiny, ["silent", "nl"], out_dir=tiny_run, **TINY_RUN)
    assert len(pd.read_csv(tiny_run / "items.csv")) == len(before)
    run_thesis("countries", tiny, tiny, ["interlat"], out_dir=tiny_run, **TINY_RUN)
    after = pd.read_csv(tiny_run / "items.csv", dtype=str, keep_default_na=False)
    assert len(after) == len(before) + 12
    pd.testing.assert_frame_equal(after.iloc[: len(before)], before)
    record = json.loads((tiny_run / "results.json").read_text())
    assert not set(record["pool_ids"]["selection"]) & set(record["pool_ids"]["test"])
    assert record["placement"]["receiver"]["dtype"] == "float32"
    # the record is of every run on the directory, not of the last one's channels
    names = [c["name"] for c in record["conditions"]]
    assert {"nl", "cipher-t0", "ac-replace@selected", "ac-replace@paper", "interlat"} <= set(names)
    assert len(names) == len(set(names)) and record["selected_layers"] is not None
    assert set(pd.DataFrame(record["summary"])["channel"]) == set(names)


def test_a_merged_record_keeps_earlier_choices_and_takes_a_rerun_conditions_new_record() -> None:
    before = {
        "conditions": [{"name": "nl", "v": 1}, {"name": "kv@all"}],
        "kv_layers": {"name": "all"},
        "map": None,
    }
    now = {
        "conditions": [{"name": "nl", "v": 2}, {"name": "kv-fuser"}],
        "kv_layers": None,
        "map": {"fit": "ridge"},
    }
    merged = merge_record(before, now)
    assert merged["conditions"] == [{"name": "nl", "v": 2}, {"name": "kv@all"}, {"name": "kv-fuser"}]
    assert merged["kv_layers"] == {"name": "all"} and merged["map"] == {"fit": "ridge"}
    assert merge_record(None, now) is now


def test_another_seed_in_the_same_directory_is_refused(tiny: Model, tiny_run: Path) -> None:
    with pytest.raises(CommlibError):
        run_thesis("countries", tiny, tiny, ["silent"], out_dir=tiny_run, **{**TINY_RUN, "seed": 1})


def test_zero_shot_interlat_across_widths_is_refused_before_any_work(
    tiny: Model, tiny_wide: Model, tmp_path: Path
) -> None:
    """A 0.5B -> 1.5B run once crashed on it after its first chunk of every other channel."""
    from commlib.experiments.games import run_games

    with pytest.raises(CommlibError, match=r"interlat \(zero-shot\) needs the same width") as thesis:
        run_thesis("countries", tiny, tiny_wide, ["silent", "interlat"], out_dir=tmp_path / "t", **TINY_RUN)
    with pytest.raises(CommlibError, match=r"interlat-norm \(zero-shot\)") as games:
        run_games(
            "countries", tiny, tiny_wide, ["nl", "interlat-norm"], k=None, j=None, out_dir=tmp_path / "g"
        )
    for err in (thesis, games):
        assert "\n" not in str(err.value)
    assert not (tmp_path / "t").exists() and not (tmp_path / "g").exists()


def test_interlat_trained_trains_its_adapter_on_selection_items_only(tiny: Model, tmp_path: Path) -> None:
    run_thesis(
        "countries", tiny, tiny, ["silent", "interlat-trained"], out_dir=tmp_path, adapter_steps=2,
        **TINY_RUN,
    )  # fmt: skip
    trained_on = set(json.loads((tmp_path / "adapter" / "adapter.json").read_text())["items"])
    pools = json.loads((tmp_path / "results.json").read_text())["pool_ids"]
    assert trained_on <= set(pools["selection"]) and not trained_on & set(pools["test"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--channels", "silent,debate"], "no channel 'debate'"),
        (["--game", "nowhere.jsonl"], "nowhere.jsonl"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from commlib.cli import main

    base = [
        "thesis",
        "--game",
        "countries",
        "--sender",
        "tiny-llama-random",
        "--receiver",
        "tiny-llama-random",
    ]
    code = main([*base, "--out", str(tmp_path), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1


def test_a_jsonl_task_runs_with_a_selection_fraction_and_is_refused_without(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from commlib.cli import main

    colours = ["red", "blue", "green", "black"]
    lines = [
        json.dumps(
            {
                "sender": f"Thing {i} is {colours[i % 4]}.",
                "receiver": "Which colour?",
                "answer": colours[i % 4],
            }
        )
        for i in range(12)
    ]
    task = tmp_path / "colours.jsonl"
    task.write_text("\n".join(lines) + "\n")
    base = ["thesis", "--game", str(task), "--sender", "tiny-llama-random", "--receiver", "tiny-llama-random"]
    small = ["--channels", "silent,nl", "--n", "4", "--message-tokens", "2", "--max-new-tokens", "2"]
    assert main([*base, *small, "--out", str(tmp_path / "none")]) == 2
    assert "--selection-fraction" in capsys.readouterr().err
    assert main([*base, *small, "--selection-fraction", "0.5", "--out", str(tmp_path / "run")]) == 0
    items = pd.read_csv(tmp_path / "run" / "items.csv", dtype=str, keep_default_na=False)
    assert len(items) == 4 * 3  # silent, nl own and nl control per test item
    control = items[items["message"] == "control"]
    assert (control["donor_answer"] != control["answer"]).all()
