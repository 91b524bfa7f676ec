"""One figure style: a method has one colour in every figure; save_figure records what made a figure."""

from __future__ import annotations

import json

import matplotlib
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.container import BarContainer, ErrorbarContainer

from commlib.plots import METHOD_COLOURS, gain_vs_distance, method_bars, method_colour, save_figure

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
        {"distance": [10.0, 90.0], "mean": [0.1, -1.0], "ci_low": [0.0, -2.0], "ci_high": [0.2, 0.0],
         "f": ["sum", "replace"], "source": ["a", "a"], "pair": ["x", "x"]}
    )  # fmt: skip
    scatter = gain_vs_distance(points, x="distance")
    marker_colour = {
        c.get_label(): to_rgb(c.lines[0].get_color())
        for c in scatter.axes[0].containers
        if isinstance(c, ErrorbarContainer)
    }
    assert marker_colour["a, sum"] == pytest.approx(method_colour("ac-sum"))
    assert method_colour("sum") == method_colour("ac-sum") != method_colour("ac-replace")
    assert method_colour("ac-w-replace") == METHOD_COLOURS["ac-w"]
    assert method_colour("interlat-trained") == METHOD_COLOURS["interlat"]
    assert method_colour("something-new") == method_colour("something-new")


def test_save_figure_writes_png_pdf_and_what_made_it(tmp_path) -> None:
    row = {"game": "g", "model": "m", "method": "nl", "accuracy": 1.0, "ci_low": 0.0, "ci_high": 2.0}
    fig = method_bars(pd.DataFrame([row]))
    paths = save_figure(fig, "toy", config={"n": 3}, directory=tmp_path)
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    meta = json.loads((tmp_path / "toy.json").read_text())
    assert meta["config"] == {"n": 3} and meta["made_by"]
