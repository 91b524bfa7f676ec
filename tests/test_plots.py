"""One figure style: a method has one colour in every figure; save_figure records what made a figure."""

from __future__ import annotations

import json

import matplotlib
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.container import BarContainer, ErrorbarContainer

from commlib.plots import (
    METHOD_COLOURS,
    compute_accuracy,
    gain_vs_distance,
    gain_vs_similarity,
    method_bars,
    method_colour,
    save_figure,
)
from commlib.plots_sweep_n import compression_vs_k

matplotlib.use("Agg")


def test_a_method_keeps_its_colour_across_figures() -> None:
    table = pd.DataFrame(
        [
            {"game": g, "model": m, "method": meth, "accuracy": 40.0, "ci_low": 30.0, "ci_high": 50.0}
            for g in ("countries", "tipsheets")
            for m in ("a", "b")
            for meth in (["silent", "ac-sum", "nl"] if m == "a" else ["ac-sum", "skyline"])
        ]
    )
    bars = method_bars(table)
    colour_of = {
        c.get_label(): to_rgb(c.patches[0].get_facecolor())
        for c in bars.axes[0].containers
        if isinstance(c, BarContainer)
    }
    assert colour_of["ac-sum"] == pytest.approx(method_colour("ac-sum"))
    assert colour_of["silent"] == pytest.approx(method_colour("silent"))

    points = pd.DataFrame(
        {
            "distance": [10.0, 90.0],
            "mean": [0.1, -1.0],
            "ci_low": [0.0, -2.0],
            "ci_high": [0.2, 0.0],
            "f": ["sum", "replace"],
            "source": ["a", "a"],
            "pair": ["x", "x"],
        }
    )
    scatter = gain_vs_distance(points, x="distance")
    marker_colour = {
        c.get_label(): to_rgb(c.lines[0].get_color())
        for c in scatter.axes[0].containers
        if isinstance(c, ErrorbarContainer)
    }
    assert marker_colour["a, sum"] == pytest.approx(method_colour("ac-sum"))
    assert method_colour("sum") == method_colour("ac-sum") != method_colour("ac-replace")
    assert method_colour("ac-w-replace") == METHOD_COLOURS["ac-w"] == method_colour("ac-w")  # an old name
    assert method_colour("ac") == method_colour("ac-replace") == method_colour("ac-replace-unrelated")
    assert method_colour("interlat-trained") == METHOD_COLOURS["interlat"]
    assert method_colour("something-new") == method_colour("something-new")


def test_save_figure_writes_png_pdf_and_what_made_it(tmp_path) -> None:
    row = {"game": "g", "model": "m", "method": "nl", "accuracy": 1.0, "ci_low": 0.0, "ci_high": 2.0}
    fig = method_bars(pd.DataFrame([row]))
    paths = save_figure(fig, "toy", config={"n": 3}, directory=tmp_path)
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    meta = json.loads((tmp_path / "toy.json").read_text())
    assert meta["config"] == {"n": 3} and meta["made_by"]


def test_compute_figure_puts_each_method_at_its_compute_and_accuracy_with_arrows() -> None:
    table = pd.DataFrame(
        {
            "task": ["gsm8k"] * 4 + ["biographies"] * 2,
            "method": ["single-a", "single-b", "nld", "ac-replace", "single-b", "ac-replace"],
            "flops_vs_one_pass": [3.0, 9.0, 40.0, 11.0, 8.0, 10.0],
            "accuracy": [20.0, 35.0, 50.0, 45.0, 60.0, 65.0],
        }
    )
    table = table.assign(ci_low=table["accuracy"] - 5, ci_high=table["accuracy"] + 5)
    fig = compute_accuracy(table)
    for ax, task in zip(fig.axes, ("gsm8k", "biographies"), strict=True):
        sub = table[table["task"] == task].set_index("method")
        points = {
            c.get_label(): tuple(c.lines[0].get_xydata()[0])
            for c in ax.containers
            if isinstance(c, ErrorbarContainer)
        }
        arrows = {(a.xyann, a.xy) for a in ax.texts}
        xy = {m: (r["flops_vs_one_pass"], r["accuracy"]) for m, r in sub.iterrows()}
        starts = [s for s in ("single-a", "single-b") if s in xy]
        ends = [e for e in ("nld", "ac-replace") if e in xy]
        expected = {(xy[s], xy[e]) for s in starts for e in ends}
        assert points == xy and arrows == expected and ax.get_xscale() == "log"
    assert len(fig.axes[0].texts) == 4 and len(fig.axes[1].texts) == 1


def test_similarity_figure_puts_each_pair_at_its_similarity_and_gain() -> None:
    table = pd.DataFrame(
        {
            "pair": ["q05 -> q15", "smol -> q15", "gemma -> smol", "q05 -> q15"],
            "task": ["gsm8k", "gsm8k", "gsm8k", "biographies"],
            "paper_similarity": [0.8, 0.3, 0.1, 0.8],
            "gain": [5.0, 1.0, -2.0, 3.0],
        }
    )
    fig = gain_vs_similarity(table)
    ax = fig.axes[0]
    offsets = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
    assert offsets["gsm8k (r = 0.99)"] == [[0.8, 5.0], [0.3, 1.0], [0.1, -2.0]]
    assert offsets["biographies"] == [[0.8, 3.0]]  # too few points for a line
    assert [t.get_text() for t in ax.texts] == table["pair"].tolist()


def test_sweep_panels_draw_each_game_position_and_value_from_its_own_table() -> None:
    from commlib.plots import sweep_panels

    def table(gain: float) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"k": k, "j": j, "item_id": "a", "logprob_gain": gain + k, "greedy_answer": 0.5}
                for k in (0, 1)
                for j in (0, 1)
            ]
        )

    tables = {
        ("countries", "last"): table(-3.0),
        ("countries", "content"): table(-1.0),
        ("tipsheets", "last"): table(2.0),
        ("tipsheets", "content"): table(4.0),
    }
    fig = sweep_panels(tables, n_layers=2)
    panels = [ax for ax in fig.axes if ax.get_title()]  # colorbars have no title
    assert [ax.get_title() for ax in panels][:4] == ["countries, last"] * 2 + ["countries, content"] * 2
    assert len(panels) == 8
    gains = {ax.get_title(): ax.images[0].get_array().min() for ax in panels[::2]}
    assert gains == {
        "countries, last": -3.0,
        "countries, content": -1.0,
        "tipsheets, last": 2.0,
        "tipsheets, content": 4.0,
    }


def test_compression_figure_puts_each_k_at_its_accuracy_and_the_whole_trajectory_as_a_line() -> None:
    table = pd.DataFrame(
        {
            "method": ["interlat-trained", "interlat-compressed-k1", "interlat-compressed-k4"],
            "K": [37.5, 1.0, 4.0],
            "accuracy": [0.3, 0.1, 0.25],
            "ci_low": [0.2, 0.0, 0.1],
            "ci_high": [0.4, 0.2, 0.4],
            "median_mahalanobis_pct": [100.0, 90.0, 95.0],
        }
    )
    acc, dist = compression_vs_k(table).axes
    (points,) = [c for c in acc.containers if isinstance(c, ErrorbarContainer)]
    assert points.lines[0].get_xydata().tolist() == [[1.0, 10.0], [4.0, 25.0]]
    whole = [line for line in acc.lines if line.get_linestyle() == "--"]
    assert whole[0].get_ydata()[0] == pytest.approx(30.0) and "38 steps" in whole[0].get_label()
    assert dist.lines[0].get_xydata().tolist() == [[1.0, 90.0], [4.0, 95.0]]


def test_similarity_figure_gives_each_style_value_its_marker_in_every_series() -> None:
    table = pd.DataFrame(
        {
            "pair": ["a -> q15", "b -> q15", "a -> q05", "b -> q05"],
            "task": ["gsm8k"] * 4,
            "receiver": ["q15", "q15", "q05", "q05"],
            "gain": [5.0, 1.0, -2.0, -3.0],
            "next_token_kl": [0.1, 0.2, 3.0, 5.0],
        }
    )
    fig = gain_vs_similarity(table, x="next_token_kl", style="receiver")
    ax = fig.axes[0]
    points = [(c.get_paths()[0].vertices.round(3).tolist(), c.get_offsets().tolist()) for c in ax.collections]
    assert [offsets for _, offsets in points] == [[[0.1, 5.0], [0.2, 1.0]], [[3.0, -2.0], [5.0, -3.0]]]
    assert points[0][0] != points[1][0]  # two receivers, two markers
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("gsm8k (r = -0.")  # the gain falls as the KL grows
    assert legend[1:] == ["receiver q15", "receiver q05"]
    assert "KL" in ax.get_xlabel()
