"""The fast (k, j) sweep equals recomputing every cell from scratch."""

from __future__ import annotations

import pytest

from commlib.models import Model
from commlib.sweep import naive_cell, sweep_item
from commlib.tasks.games import countries, tipsheets


@pytest.mark.parametrize("backend", ["nnsight", "transformer-lens"])
def test_fast_sweep_equals_naive_on_a_small_grid(tiny: Model, backend: str) -> None:
    for item in (countries(1, seed=3)[0], tipsheets(1, seed=3)[0]):
        fast = sweep_item(tiny, tiny, item, ks=[0, 2, 3], js=[1, 3], backend=backend, max_new_tokens=5)
        assert len(fast) == 6
        for cell in fast:
            ref = naive_cell(tiny, tiny, item, cell["k"], cell["j"], backend=backend, max_new_tokens=5)
            assert cell["answer_logprob"] == pytest.approx(ref["answer_logprob"], abs=1e-4)
            assert cell["token_ids"] == ref["token_ids"]


@pytest.mark.integration
def test_fast_sweep_equals_naive_on_smollm2(smol: Model) -> None:
    item = countries(1, seed=0)[0]
    fast = sweep_item(smol, smol, item, ks=[10, 20], js=[15, 25], f="sum", max_new_tokens=4)
    for cell in fast:
        ref = naive_cell(smol, smol, item, cell["k"], cell["j"], f="sum", max_new_tokens=4)
        assert cell["answer_logprob"] == pytest.approx(ref["answer_logprob"], abs=1e-4)
        assert cell["token_ids"] == ref["token_ids"]
    # the sweep is not a no-op: different k give different answer log-probs
    assert len({round(c["answer_logprob"], 4) for c in fast}) > 1


def test_sweep_cli_writes_table_and_figures_and_resumes(tmp_path) -> None:
    import pandas as pd

    from commlib.cli import main

    out = tmp_path / "sweep"
    args = [
        "sweep",
        "--game",
        "countries",
        "--sender",
        "tiny-llama-random",
        "--receiver",
        "tiny-llama-random",
        "--k-range",
        "0:3:2",
        "--j-range",
        "1,3",
        "--n",
        "2",
        "--max-new-tokens",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    df = pd.read_csv(out / "sweep.csv")
    assert len(df) == 2 * 2 * 2 and set(df["k"]) == {0, 2} and set(df["j"]) == {1, 3}
    assert (out / "sweep_countries_tiny-llama-random_tiny-llama-random_correct.png").exists()
    assert (out / "sweep_countries_tiny-llama-random_tiny-llama-random_correct.pdf").exists()
    assert main(args) == 0
    assert len(pd.read_csv(out / "sweep.csv")) == 8  # resumed, nothing appended


def test_logprob_only_sweep_matches_the_full_one(tiny: Model) -> None:
    item = countries(1, seed=5)[0]
    full = sweep_item(tiny, tiny, item, ks=[1, 2], js=[0, 2], max_new_tokens=3)
    only = sweep_item(tiny, tiny, item, ks=[1, 2], js=[0, 2], max_new_tokens=0)
    assert [c["answer_logprob"] for c in only] == pytest.approx([c["answer_logprob"] for c in full], abs=1e-5)
    assert all(c["token_ids"] == [] for c in only)
