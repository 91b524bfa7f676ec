"""Game generators: deterministic, well-formed, and no signal in position or name."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from commlib.errors import CommlibError
from commlib.tasks.games import countries, landmarks, load_game, tipsheets


def test_landmark_table_has_100_distinct_pairs() -> None:
    table = landmarks()
    assert len(set(table)) == len(table) >= 100


def test_countries_is_deterministic_and_consistent() -> None:
    a, b, c = countries(50, seed=0), countries(50, seed=0), countries(50, seed=1)
    assert a == b and a != c
    table = dict(landmarks())
    for item in a:
        name = item.receiver.removeprefix("Which country is ").removesuffix(" located in?")
        assert item.sender.startswith(f"{name} is at ")
        assert table[item.sender.removeprefix(f"{name} is at ").removesuffix(".")] == item.answer


def test_countries_splits_have_disjoint_landmarks_and_all_of_them() -> None:
    train, heldout = load_game("countries:train", seed=3), load_game("countries:heldout", seed=3)
    assert len(train) == len(landmarks("train")) and len(heldout) == len(landmarks("heldout"))
    seen = {it.sender.partition(" is at ")[2] for it in train}
    unseen = {it.sender.partition(" is at ")[2] for it in heldout}
    assert not seen & unseen and len(seen | unseen) == len(landmarks())
    assert {it.answer for it in heldout} <= {country for _, country in landmarks()}
    assert not {it.id for it in train} & {it.id for it in heldout}
    with pytest.raises(CommlibError, match="unknown landmark split 'test'"):
        load_game("countries:test")
    with pytest.raises(CommlibError, match=r"countries:heldout has \d+ landmarks"):
        load_game("countries:heldout", n=100)


def test_tipsheets_answer_is_the_clean_record_high_and_position_is_balanced() -> None:
    items = tipsheets(70, seed=0)
    assert items == tipsheets(70, seed=0)
    positions = Counter(item.choices.index(item.answer) for item in items)
    assert set(positions) == {0, 1, 2} and max(positions.values()) < 0.5 * len(items)
    for item in items:
        assert item.answer in item.choices and item.answer in item.sender
        others = [c for c in item.choices if c != item.answer]
        assert all(o in item.sender for o in others)
    assert len({item.answer for item in items}) > 50  # names vary


def test_custom_jsonl_and_errors(tmp_path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"sender": "x is red.", "receiver": "Colour of x?", "answer": "red"}) + "\n")
    (item,) = load_game(str(path))
    assert (item.sender, item.answer) == ("x is red.", "red")
    path.write_text(json.dumps({"sender": "x"}) + "\n")
    with pytest.raises(CommlibError, match="lacks answer, receiver"):
        load_game(str(path))
    with pytest.raises(CommlibError, match="unknown game"):
        load_game("chess")
    with pytest.raises(CommlibError, match="n <="):
        countries(10_000)
