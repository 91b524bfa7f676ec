"""The explorer UI in plain pytest: set widget values, check what it shows against the library."""

from __future__ import annotations

import pytest
import torch

from commlib.backends import Decoding
from commlib.config import ReferenceSpec
from commlib.distance import manifold_for
from commlib.graft import communicate
from commlib.models import Model
from commlib.widgets import FREE_TEXT, ExplorerUI, View, explore

N_REF = 120
TOKENS = 5


@pytest.fixture()
def ui(tiny: Model) -> ExplorerUI:
    return explore(tiny.name, n_reference=N_REF, max_new_tokens=TOKENS, n_items=4)


def library_answer(model: Model, view: View) -> str:
    """B's answer for the view's settings, from the uncached library path."""
    c, item = view.config, view.item
    out = communicate(
        model,
        model,
        [item.sender],
        [item.receiver],
        c,
        decoding=Decoding(max_new_tokens=TOKENS),
        receiver_replies=[item.reply],
    )
    return out.texts[0]


def test_moving_j_shows_what_the_library_returns(ui: ExplorerUI, tiny: Model) -> None:
    before = ui.answers.value
    ui.j.value = 1 if ui.j.value != 1 else 2
    view = ui.view
    assert view is not None and view.config.j == ui.j.value and ui.error is None
    assert view.grafted == library_answer(tiny, view)
    assert f"j={ui.j.value}" in ui.answers.value and ui.answers.value != before
    assert "ready" in ui.status.value


def test_f_and_position_reach_the_graft(ui: ExplorerUI, tiny: Model) -> None:
    replace_top = ui.view.top_after  # type: ignore[union-attr]
    ui.f.value = "sum"
    assert ui.view is not None and ui.view.config.f == "sum"
    assert ui.view.top_after != replace_top  # a different f writes a different state
    assert ui.view.grafted == library_answer(tiny, ui.view)
    ui.position.value = "content"
    assert ui.view.config.position == "content"
    assert ui.view.grafted == library_answer(tiny, ui.view)


def test_alpha_zero_leaves_b_alone(ui: ExplorerUI) -> None:
    ui.alpha.value = 0.0
    view = ui.view
    assert view is not None
    assert view.grafted == view.silent
    assert [t for t, _ in view.top_after] == [t for t, _ in view.top_before]
    assert [p for _, p in view.top_after] == pytest.approx([p for _, p in view.top_before], abs=1e-5)
    assert view.answer_logprob == pytest.approx(view.silent_logprob, abs=1e-4)


def test_distance_is_the_receivers_percentile(ui: ExplorerUI, tiny: Model) -> None:
    view = ui.view
    assert view is not None and view.distance is not None
    manifold = manifold_for(tiny, view.config.j, ReferenceSpec(n=N_REF))
    a_state = ui.explorer.sender_states(view.item.sender, "last")[view.config.k]  # replace writes A's state
    expected = manifold.percentiles(a_state[None])["mahalanobis"][0]
    assert view.distance["mahalanobis"] == pytest.approx(float(expected))
    assert ui.gauge.value == pytest.approx(float(expected))


def test_slider_moves_reuse_the_cached_sides(ui: ExplorerUI) -> None:
    for j in range(ui.j.max + 1):
        ui.j.value = j
    ui.k.value = 0
    assert len(ui.explorer._sender_states) == 1  # A ran once for all k
    assert len(ui.explorer._receivers) == 1  # B's prefix once for all j


def test_new_item_and_free_text(ui: ExplorerUI) -> None:
    first = ui.view.item  # type: ignore[union-attr]
    ui.item.value = 1
    assert ui.view is not None and ui.view.item != first
    ui.task.value = FREE_TEXT
    assert not ui.sender_text.disabled
    ui.sender_text.value = "The secret word is apple."
    ui.receiver_text.value = "What is the secret word?"
    assert ui.view.item.receiver == "What is the secret word?"


def test_errors_show_in_the_status_line_and_keep_the_view(ui: ExplorerUI) -> None:
    ui.task.value = FREE_TEXT
    last = ui.view
    ui.receiver_text.value = "   "
    assert ui.error is not None and "both prompts need text" in ui.status.value
    assert ui.view is last
    ui.sender.value = "no-such-model"
    assert "unknown model" in ui.status.value
    assert ui.explorer.sender.name == "tiny-llama-random"


def test_layer_sliders_follow_the_models(ui: ExplorerUI, tiny: Model) -> None:
    assert ui.j.max == tiny.info.n_layers - 1
    with pytest.raises(Exception, match="out of range"):
        ui.explorer.view(ui.current_item(), k=0, j=tiny.info.n_layers, f="replace")
    assert torch.is_tensor(ui.explorer.sender_states(ui.current_item().sender, "last"))


def test_w_is_offered_with_a_map_and_only_at_its_layers(tiny: Model, tiny_wide: Model, tmp_path) -> None:
    from commlib.graft import fit_map

    w = fit_map(tiny, tiny_wide, 1, 2, n=64, epochs=2)
    w.save(tmp_path / "map")
    ui = explore(
        tiny.name, tiny_wide.name, n_reference=0, max_new_tokens=TOKENS, map=tmp_path / "map", k=1, j=2
    )
    assert "W" in ui.f.options
    ui.f.value = "W"
    view = ui.view
    assert view is not None and ui.error is None
    item = view.item
    library = communicate(
        tiny,
        tiny_wide,
        [item.sender],
        [item.receiver],
        view.config,
        map=w,
        decoding=Decoding(max_new_tokens=TOKENS),
        receiver_replies=[item.reply],
    )
    assert view.grafted == library.texts[0] and view.uses_map and "AC (W, replace" in ui.answers.value
    ui.j.value = 1
    assert ui.error is not None and "map" in ui.status.value.lower()
    assert "W" not in explore(tiny.name, n_reference=0, max_new_tokens=TOKENS).f.options


def test_custom_jsonl_task(tiny: Model, tmp_path) -> None:
    import json

    path = tmp_path / "pets.jsonl"
    question = "What is the pet?"
    rows = [
        {"sender": "The pet is a cat.", "receiver": question, "answer": "cat", "reply": "It is a"},
        {"sender": "The pet is a dog.", "receiver": question, "answer": "dog"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ui = explore(tiny.name, n_reference=0, max_new_tokens=TOKENS, task=str(path))
    assert ui.view is not None and ui.view.item.sender == "The pet is a cat." and ui.reply.value == "It is a"
    assert ui.item.max == 1
    ui.item.value = 1
    assert ui.view.item.answer == "dog"
