"""The explorer in a real browser: Voila serves notebooks/00_explorer, Playwright drives Debian Chromium.

Moves the j slider and changes f, and checks that the rendered answer is the
library's answer for the new settings. The screenshot is kept in
``test-artifacts/explorer-browser-test.png``.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import pytest
from explorer_browser import (
    ROOT,
    browser_problem,
    chromium_page,
    open_explorer,
    rendered_answer,
    served_explorer,
    set_dropdown,
    set_slider,
    wait_ready,
)

from commlib.models import Model
from commlib.tasks.games import load_game
from commlib.widgets import Explorer, html_text

TOKENS = 6
# Real SmolLM2 (fetched by setup): a random-weight model's answers hardly move with j.
PARAMS = {"SENDER": "smollm2-135m", "RECEIVER": "smollm2-135m", "K": 20, "J": 20, "N_REFERENCE": 64}
PARAMS["MAX_NEW_TOKENS"] = TOKENS


def expected(model: Model, j: int, f: str) -> str:
    """What the library answers for the explorer's first item, as the browser renders it."""
    view = Explorer(model, model, n_reference=0, max_new_tokens=TOKENS).view(
        load_game("countries", n=20, seed=0)[0], k=20, j=j, f=f
    )
    return " ".join(html.unescape(html_text(view.grafted)).split())


@pytest.mark.integration
def test_sliders_and_f_change_the_rendered_answer(smol: Model, tmp_path: Path) -> None:
    problem = browser_problem()
    if problem:
        pytest.skip(problem)
    settings = [(20, "replace"), (10, "replace"), (10, "sum")]
    answers = [expected(smol, j, f) for j, f in settings]
    assert len(set(answers)) == 3, "pick settings whose answers differ, or the test shows nothing"
    artifacts = Path(os.environ.get("COMMLIB_ARTIFACTS", ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    with served_explorer(tmp_path / "voila", PARAMS) as url, chromium_page(tmp_path / "profile") as page:
        open_explorer(page, url)
        wait_ready(page, "replace, k=20, j=20")
        assert rendered_answer(page) == answers[0]
        set_slider(page, "j (B)", 10)
        wait_ready(page, "replace, k=20, j=10")
        assert rendered_answer(page) == answers[1]
        set_dropdown(page, "f", "sum")
        wait_ready(page, "sum, k=20, j=10")
        assert rendered_answer(page) == answers[2]
        page.screenshot(path=str(artifacts / "explorer-browser-test.png"), full_page=True)
