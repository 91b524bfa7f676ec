"""The sweep over n: each series' ends are the methods themselves; distances, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from commlib.backends import Decoding, get_backend
from commlib.channels.cipher import soft_message
from commlib.channels.interlat import as_receiver_inputs, trajectory_message
from commlib.channels.slot import embed, message_prompt, read_slot, receive, slot_template
from commlib.config import ReferenceSpec
from commlib.errors import CommlibError
from commlib.experiments import run_n_sweep
from commlib.graft import GraftConfig, capture_span, communicate
from commlib.models import Model
from commlib.protocols.games import MethodConfig, run_method
from commlib.protocols.series import ACSeries, InterlatSeries, Point, series_for
from commlib.tasks.games import GameItem, countries

STEPS = 5  # A's longest message
CFG = MethodConfig(k=1, j=2, max_new_tokens=3, message_tokens=STEPS)


def point(method: str, item: GameItem, n: int | None, model: Model, cfg: MethodConfig = CFG, **kw) -> Point:
    series = series_for(method, model, model, cfg, **kw)
    return series.point(item, series.prepare(item), n)


def test_soft_steps_then_greedy_feedback(tiny: Model) -> None:
    prompt = message_prompt(countries(1, seed=3)[0])
    full = soft_message(tiny, tiny, prompt, temperature=1.0, max_tokens=STEPS)
    greedy = soft_message(tiny, tiny, prompt, temperature=0.0, max_tokens=STEPS)
    zero = soft_message(tiny, tiny, prompt, temperature=1.0, max_tokens=STEPS, soft_steps=0)
    assert zero.nearest_ids == greedy.nearest_ids and torch.equal(zero.vectors, greedy.vectors)
    beyond = soft_message(
        tiny, tiny, prompt, temperature=1.0, max_tokens=STEPS, soft_steps=len(full.probs) + 1
    )
    assert torch.equal(beyond.vectors, full.vectors)
    two = soft_message(tiny, tiny, prompt, temperature=1.0, max_tokens=STEPS, soft_steps=2)
    assert torch.equal(two.vectors[:2], full.vectors[:2])
    hard = torch.tensor(two.nearest_ids[2:])
    assert torch.equal(two.vectors[2:], embed(tiny, hard))  # the rest is text
    # each hard token is the argmax after the soft prefix and the earlier tokens (one uncached pass)
    from commlib.prompts import encode

    embeds = torch.cat([embed(tiny, encode(tiny, [prompt]).input_ids[0]), two.vectors[:-1]])
    logits = tiny.hf(inputs_embeds=embeds[None]).logits[0, -len(two.vectors) :]
    assert logits.argmax(-1)[2:].tolist() == two.nearest_ids[2:]
    with pytest.raises(CommlibError, match="soft_steps"):
        soft_message(tiny, tiny, prompt, soft_steps=-1)


def test_cipher_series_runs_from_the_text_message_to_cipher(tiny: Model) -> None:
    for item in countries(2, seed=3):
        zero, every = point("cipher", item, 0, tiny), point("cipher", item, None, tiny)
        greedy = soft_message(tiny, tiny, message_prompt(item), temperature=0.0, max_tokens=STEPS).nearest_ids
        text = receive(tiny, slot_template(item), token_ids=greedy, reply=item.reply, max_new_tokens=3)
        assert zero.text == text == run_method("cipher-t0", [item], tiny, tiny, CFG)[0].text
        assert zero.n_sent == 0 and len(zero.injected) == 0
        assert every.text == run_method("cipher", [item], tiny, tiny, CFG)[0].text
        assert point("cipher", item, STEPS, tiny).text == every.text
        assert every.n_sent == len(every.injected) > 0


@pytest.mark.parametrize("method", ["interlat", "interlat-norm"])
def test_interlat_series_runs_from_the_text_message_to_interlat(tiny: Model, method: str) -> None:
    item = countries(2, seed=3)[1]
    trajectory = trajectory_message(tiny, message_prompt(item), max_tokens=STEPS)
    text = receive(
        tiny, slot_template(item), token_ids=trajectory.token_ids, reply=item.reply, max_new_tokens=3
    )
    assert point(method, item, 0, tiny).text == text
    assert point(method, item, None, tiny).text == run_method(method, [item], tiny, tiny, CFG)[0].text
    two = point(method, item, 2, tiny)
    latents = as_receiver_inputs(trajectory, tiny, rescale=method == "interlat-norm")[:2]
    assert two.n_sent == 2 and torch.equal(two.injected, latents)
    rest = embed(tiny, torch.tensor(trajectory.token_ids[2:]))
    assert two.text == read_slot(tiny, item, torch.cat([latents, rest]), 3)


def test_trained_series_reads_what_the_curriculum_trains_on(tiny: Model, tmp_path: Path) -> None:
    from commlib.channels.interlat import load_adapter, train_adapter
    from commlib.protocols.games import interlat_trained

    train_adapter(tiny, tiny, "countries", tmp_path, n_train=2, steps=3, message_tokens=STEPS, progress=False)
    adapter, _ = load_adapter(tmp_path)
    item = countries(1, seed=3)[0]
    series = series_for("interlat-trained", tiny, tiny, CFG, adapter=tmp_path)
    trajectory, _ = prepared = series.prepare(item)
    b = adapter.boundaries.detach()
    for m in (0, 2):
        with torch.no_grad():
            latents = adapter(trajectory.hidden[:m]) if m else b[:0]
        framed = torch.cat([b[:1], latents, b[1:]])  # <bop>, adapted latents, <eop>
        expected = torch.cat([framed, embed(tiny, torch.tensor(trajectory.token_ids[m:]))])
        p = series.point(item, prepared, m)
        assert torch.allclose(p.injected, framed) and p.text == read_slot(tiny, item, expected, 3)
    every = series.point(item, prepared, None).text
    assert every == interlat_trained(str(tmp_path))([item], tiny, tiny, CFG)[0].text


def test_ac_series_runs_from_b_alone_to_every_position(tiny: Model) -> None:
    decoding = Decoding(max_new_tokens=3)
    for item in countries(2, seed=4):
        series = series_for("ac-replace", tiny, tiny, CFG)
        prepared = series.prepare(item)
        assert series.point(item, prepared, 0).text == run_method("silent", [item], tiny, tiny, CFG)[0].text
        assert (
            series.point(item, prepared, 1).text == run_method("ac-replace", [item], tiny, tiny, CFG)[0].text
        )
        for n, size in ((3, 3), (None, prepared.full)):
            got = series.point(item, prepared, n)
            config = GraftConfig(k=1, j=2, n_positions=size)
            ref = communicate(
                tiny,
                tiny,
                [item.sender],
                [item.receiver],
                config,
                decoding=decoding,
                receiver_replies=[item.reply],
            )
            a = capture_span(get_backend(tiny), [item.sender], 1, "last", size)[0]
            assert got.text == ref.texts[0] and got.n_sent == size and torch.equal(got.injected, a)


def test_sweep_measures_what_b_receives_and_resumes(
    tiny: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from commlib.combine import combine
    from commlib.distance import Manifold, input_reference, manifold_for

    kw = {
        "out_dir": tmp_path,
        "k": 1,
        "j": 2,
        "n": 2,
        "message_tokens": STEPS,
        "max_new_tokens": 3,
        "n_reference": 300,
        "progress": False,
    }
    run_n_sweep("countries", tiny, tiny, ["ac-sum", "interlat-norm"], [0], **kw)
    res = run_n_sweep("countries", tiny, tiny, ["ac-sum", "interlat-norm"], [0, 2, "all"], **kw)
    df = pd.read_csv(tmp_path / "items.csv", dtype={"item_id": str, "n": str})
    assert len(df) == 2 * 2 * 3 and not df.duplicated(["item_id", "method", "n"]).any()
    item = countries(2)[0]
    rows = df[df["item_id"] == item.id].set_index(["method", "n"])
    a = capture_span(get_backend(tiny), [item.sender], 1, "last", 2)[0]
    b = capture_span(get_backend(tiny), [item.receiver], 2, "last", 2, replies=[item.reply])[0]
    task = manifold_for(tiny, 2, ReferenceSpec(corpus="task:countries", n=300, formatted=True))  # the default
    expected = task.table(combine(a, b, "sum"), b).mean()
    for metric in ("mahalanobis_pct", "knn_cosine", "displacement"):
        assert rows.loc[("ac-sum", "2"), metric] == pytest.approx(expected[metric], rel=1e-4)
    trajectory = trajectory_message(tiny, message_prompt(item), max_tokens=STEPS)
    latents = as_receiver_inputs(trajectory, tiny, rescale=True)[:2]
    expected = Manifold.fit(input_reference(tiny, ReferenceSpec(n=300))).table(latents).mean()
    assert rows.loc[("interlat-norm", "2"), "mahalanobis_pct"] == pytest.approx(expected["mahalanobis_pct"])
    assert df[df["n"] == "0"]["mahalanobis_pct"].isna().all()  # n = 0 injects nothing
    summary = res["methods"]["ac-sum"]["points"]["2"]
    ac = df[(df["method"] == "ac-sum") & (df["n"] == "2")]
    assert summary["n_items"] == 2 and summary["median_mahalanobis_pct"] == pytest.approx(
        ac["mahalanobis_pct"].median()
    )
    assert summary["accuracy"] == ac["correct"].mean() and summary["flops"] > 0
    assert res["methods"]["ac-sum"]["points"]["0"]["median_mahalanobis_pct"] is None
    zero = res["methods"]["ac-sum"]["points"]["0"]
    assert (zero["gain"], zero["gain_ci_low"], zero["gain_ci_high"]) == (0.0, 0.0, 0.0)
    assert summary["gain"] == pytest.approx(summary["accuracy"] - zero["accuracy"])  # same two items

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished point was computed again")

    for cls in (ACSeries, InterlatSeries):
        monkeypatch.setattr(cls, "prepare", refuse)
        monkeypatch.setattr(cls, "point", refuse)
    again = run_n_sweep("countries", tiny, tiny, ["ac-sum", "interlat-norm"], [0, 2, "all"], **kw)
    assert again["methods"] == res["methods"]
    with pytest.raises(CommlibError, match="other settings"):
        run_n_sweep("countries", tiny, tiny, ["ac-sum"], [0], **{**kw, "j": 1})


def test_bad_input_is_refused_before_any_work(tiny: Model, tiny_wide: Model, tmp_path: Path) -> None:
    out = tmp_path / "run"
    kw = {"out_dir": out, "n": 2, "message_tokens": STEPS, "progress": False}
    cases = [
        (["nl"], [0], {}, "nl does not run in the sweep over n"),
        (["telepathy"], [0], {}, "unknown method 'telepathy'"),
        (["cipher"], [0, STEPS + 1], {}, f"n={STEPS + 1} is more than the {STEPS} message steps"),
        (["ac-replace"], [1, 10_000], {"k": 1, "j": 1}, "n=10000 is more than the .* positions"),
        (["ac"], [1], {}, "ac-replace needs the layers: pass k and j"),  # an old name is its method
        (["interlat-trained"], [0], {}, "--adapter"),
        (["cipher"], [-1], {}, "whole number"),
        (["cipher"], ["some"], {}, "whole number"),
        (["cipher"], [], {}, "at least one n"),
    ]
    for methods, ns, extra, message in cases:
        with pytest.raises(CommlibError, match=message):
            run_n_sweep("countries", tiny, tiny, methods, ns, **kw, **extra)  # type: ignore[arg-type]
    assert not out.exists()
    with pytest.raises(CommlibError, match=r"interlat \(zero-shot\) needs the same width"):
        series_for("interlat", tiny, tiny_wide, CFG)


def test_sweep_n_command_and_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from commlib.cli import main

    out, tiny = tmp_path / "sweep", "tiny-llama-random"
    args = [
        "sweep-n",
        "--game",
        "countries",
        "--sender",
        tiny,
        "--receiver",
        tiny,
        "--methods",
        "ac-replace,cipher",
        "--ns",
        "0,1,all",
        "--k",
        "1",
        "--j",
        "1",
        "--n",
        "2",
        "--message-tokens",
        "3",
        "--max-new-tokens",
        "2",
        "--n-reference",
        "300",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    result = json.loads((out / "results.json").read_text())
    assert list(result["methods"]) == ["ac-replace", "cipher"] and result["config"]["ns"] == ["0", "1", "all"]
    assert all(p["n_items"] == 2 for m in result["methods"].values() for p in m["points"].values())
    assert (out / f"sweep_n_countries_{tiny}_{tiny}.png").exists()
    assert main([*args[:-2], "--ns", "0,x", "--out", str(tmp_path / "bad")]) == 2
    assert "whole number" in capsys.readouterr().err


def test_figure_marks_trained_methods_solid() -> None:
    from commlib.plots_sweep_n import accuracy_distance_vs_n

    table = pd.DataFrame(
        [
            {
                "method": m,
                "n": str(n),
                "x": x,
                "trained": m.endswith("trained"),
                "accuracy": 0.5,
                "ci_low": 0.2,
                "ci_high": 0.7,
                "median_mahalanobis_pct": None if n == 0 else 90.0,
            }
            for m in ("interlat-norm", "interlat-trained")
            for x, n in enumerate((0, 2))
        ]
    )
    fig = accuracy_distance_vs_n(table)
    styles = [line.get_linestyle() for line in fig.axes[1].lines if line.get_label() in set(table["method"])]
    assert styles == ["--", "-"]


def test_accuracy_against_distance_has_a_point_per_injected_n() -> None:
    from matplotlib.text import Annotation

    from commlib.plots_sweep_n import accuracy_vs_distance

    table = pd.DataFrame(
        [
            {
                "method": m,
                "n": str(n),
                "x": x,
                "trained": m.endswith("trained"),
                "accuracy": 0.25 * x,
                "ci_low": 0.0,
                "ci_high": 0.8,
                "median_mahalanobis_pct": None if n == 0 else 40.0 + 10 * x,
            }
            for m in ("cipher", "interlat-trained")
            for x, n in enumerate((0, 2, 8))
        ]
    )
    ax = accuracy_vs_distance(table).axes[0]
    labels = sorted(a.get_text() for a in ax.get_children() if isinstance(a, Annotation))
    assert labels == ["2", "2", "8", "8"]  # n = 0 injected nothing: no point
    points = sorted((a.xy[0], a.xy[1]) for a in ax.get_children() if isinstance(a, Annotation))
    assert points == [(50.0, 25.0), (50.0, 25.0), (60.0, 50.0), (60.0, 50.0)]


@pytest.mark.integration
def test_n_zero_answers_as_nl_on_smollm2(smol: Model) -> None:
    cfg = MethodConfig(k=None, j=None, max_new_tokens=8, message_tokens=24)
    for item in countries(3, seed=2):
        nl = run_method("nl", [item], smol, smol, cfg)[0].text
        assert point("cipher", item, 0, smol, cfg).text == nl
        assert point("interlat-norm", item, 0, smol, cfg).text == nl
