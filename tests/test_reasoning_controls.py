"""AC's controls on the reasoning tasks: the graft's distance on B, the reference states AC reads, W fitted in
distribution, the sweep over one relative depth, and the donor control (A reads another item)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from commlib.errors import CommlibError
from commlib.models import Model
from commlib.protocols.questions import ReasoningConfig, question_prompt
from commlib.protocols.reasoning import (
    run_reasoning_batch,
    run_reasoning_method,
)
from commlib.tasks.reasoning import load_task


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
