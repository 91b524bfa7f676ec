"""Issue 24: the grown landmark table and selection/test pools that share no content."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import replace

import pytest

from commlib.errors import CommlibError
from commlib.tasks.games import COMPANIES, DATA_DIR, GameItem, landmarks, load_game, tipsheets
from commlib.tasks.pools import Pools, check_disjoint, content_keys, control_item, derangement, make_pools


def _rows() -> list[dict[str, str]]:
    with (DATA_DIR / "landmarks.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _landmark(item: GameItem) -> str:
    return item.sender.partition(" is at ")[2].removesuffix(".")


def _write_jsonl(path, senders: list[str]) -> str:
    lines = [json.dumps({"sender": s, "receiver": "Which colour?", "answer": s.split()[-1]}) for s in senders]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# --- the table -------------------------------------------------------------------------------


def test_legacy_splits_are_the_original_rows_with_the_old_rule() -> None:
    rows = _rows()
    original = [(r["landmark"], r["country"]) for r in rows if r["set"] == "original"]
    assert len(original) == 112
    assert [r["set"] for r in rows[:112]] == ["original"] * 112  # the old table, first and in order
    assert landmarks() == landmarks("all") == original
    assert landmarks("train") == [row for i, row in enumerate(original) if i % 4 != 0]
    assert landmarks("heldout") == [row for i, row in enumerate(original) if i % 4 == 0]
    assert landmarks("full") == [(r["landmark"], r["country"]) for r in rows]
    assert landmarks("full")[112:] == [(r["landmark"], r["country"]) for r in rows if r["set"] == "added"]


def test_table_is_large_unique_and_well_formed() -> None:
    rows = _rows()
    assert len(rows) >= 300
    assert list(rows[0]) == ["landmark", "country", "set"]
    assert all(value and value.strip() == value for row in rows for value in row.values())
    assert {row["set"] for row in rows} == {"original", "added"}
    names = [row["landmark"].lower() for row in rows]
    assert len(set(names)) == len(names)
    added = Counter(row["country"] for row in rows if row["set"] == "added")
    assert max(added.values()) <= 8 and len({row["country"] for row in rows}) >= 80
    # the same spelling of a country as the original rows use
    assert "USA" not in added and "UK" not in added and "Czechia" not in added


def test_countries_full_game_reads_the_whole_table() -> None:
    items = load_game("countries:full", n=len(landmarks("full")), seed=0)
    assert {_landmark(it) for it in items} == {landmark for landmark, _ in landmarks("full")}


def test_tipsheets_default_is_all_companies() -> None:
    assert tipsheets(20, seed=4) == tipsheets(20, seed=4, companies=COMPANIES)
    assert len(set(COMPANIES)) == len(COMPANIES) == 200
    with pytest.raises(CommlibError, match="three companies"):
        tipsheets(1, companies=["Zentech", "Argocorp"])


# --- pools -----------------------------------------------------------------------------------


def _assert_disjoint(pools: Pools) -> None:
    ids = [it.id for it in (*pools.selection, *pools.test)]
    assert len(ids) == len(set(ids))
    selection = set().union(*map(content_keys, pools.selection))
    test = set().union(*map(content_keys, pools.test))
    assert selection and test and not selection & test


def test_countries_pools_are_disjoint_and_built_like_countries_items() -> None:
    table = dict(landmarks("full"))
    pools = make_pools("countries", n_test=200, seed=0)
    assert len(pools.test) == 200 and len(pools.selection) == len(table) - 200
    _assert_disjoint(pools)
    test_landmarks = {_landmark(it) for it in pools.test}
    assert len(test_landmarks) == 200 and not test_landmarks & {_landmark(it) for it in pools.selection}
    for pool, items in (("test", pools.test), ("selection", pools.selection)):
        for i, item in enumerate(items):
            name = item.reply.removesuffix(" is located in")
            assert item.id == f"countries-{pool}-0-{i}"
            assert item.sender == f"{name} is at {_landmark(item)}."
            assert item.receiver == f"Which country is {name} located in?"
            assert item.answer == table[_landmark(item)]
    record = pools.record()
    assert record["sizes"] == {"selection": len(pools.selection), "test": 200}
    assert record["test_keys"] == sorted(test_landmarks)
    assert json.loads(json.dumps(record)) == record


def test_tipsheet_pools_use_disjoint_companies() -> None:
    pools = make_pools("tipsheets", n_test=200, seed=2)
    assert len(pools.test) == 200 and len(pools.selection) == 60
    _assert_disjoint(pools)
    test = {c for it in pools.test for c in it.choices}
    selection = {c for it in pools.selection for c in it.choices}
    assert not test & selection
    assert not any(c in it.sender for it in pools.selection for c in test)
    assert pools.test[0].id == "tipsheets-test-2-0" and pools.selection[0].id == "tipsheets-selection-2-0"
    assert all(it.answer in it.choices for it in (*pools.test, *pools.selection))


def test_jsonl_pools_by_fraction_and_by_file(tmp_path) -> None:
    game = _write_jsonl(tmp_path / "colours.jsonl", [f"Thing {i} is red" for i in range(30)])
    by_fraction = make_pools(game, n_test=100, seed=1, selection_fraction=0.3)
    assert (len(by_fraction.selection), len(by_fraction.test)) == (9, 21)
    _assert_disjoint(by_fraction)
    assert make_pools(game, n_test=5, seed=1, selection_fraction=0.3).test == by_fraction.test[:5]
    other = _write_jsonl(tmp_path / "other.jsonl", [f"Object {i} is blue" for i in range(4)])
    by_file = make_pools(game, n_test=10, selection_file=other)
    assert [it.sender for it in by_file.selection] == [f"Object {i} is blue" for i in range(4)]
    assert len(by_file.test) == 10
    _assert_disjoint(by_file)
    with pytest.raises(CommlibError, match="share 1 content key"):
        make_pools(game, n_test=10, selection_file=_write_jsonl(tmp_path / "bad.jsonl", ["Thing 3 is red"]))


def test_jsonl_pools_need_a_selection_option(tmp_path) -> None:
    game = _write_jsonl(tmp_path / "colours.jsonl", [f"Thing {i} is red" for i in range(5)])
    with pytest.raises(CommlibError, match="needs --selection-fraction F or --selection-file PATH"):
        make_pools(game, n_test=3)
    with pytest.raises(CommlibError, match="needs --selection-fraction F or --selection-file PATH"):
        make_pools(game, n_test=3, selection_fraction=0.5, selection_file=game)
    with pytest.raises(CommlibError, match="strictly between 0 and 1"):
        make_pools(game, n_test=3, selection_fraction=1.0)
    with pytest.raises(CommlibError, match="empty"):
        make_pools(game, n_test=3, selection_fraction=0.01)


def test_overlapping_pools_and_repeated_ids_are_refused() -> None:
    pools = make_pools("countries", n_test=3, n_selection=3, seed=0)
    shared = pools.test[1]
    overlapping = Pools(
        "countries", 0, (*pools.selection, replace(shared, id="countries-selection-0-9")), pools.test
    )
    with pytest.raises(CommlibError, match=f"share 1 content key .*{re.escape(_landmark(shared))}"):
        check_disjoint(overlapping)
    with pytest.raises(CommlibError, match=r"repeat 1 item id .*countries-test-0-0"):
        check_disjoint(Pools("countries", 0, pools.selection, (*pools.test, pools.test[0])))
    check_disjoint(pools)  # the real ones pass


def test_too_many_items_are_refused() -> None:
    size = len(landmarks("full"))
    with pytest.raises(CommlibError, match=f"ask for n_selection <= {size - 200}$"):
        make_pools("countries", n_test=200, n_selection=size)
    with pytest.raises(CommlibError, match=f"ask for n_test <= {size - 1}$"):
        make_pools("countries", n_test=size)
    assert len(make_pools("countries", n_test=200, n_selection=size - 200).selection) == size - 200
    with pytest.raises(CommlibError, match="no selection/test pools"):
        make_pools("countries:train", n_test=3)


def test_pools_are_fixed_by_the_seed() -> None:
    for game in ("countries", "tipsheets"):
        a, b, c = (make_pools(game, n_test=20, n_selection=10, seed=s) for s in (5, 5, 6))
        assert a == b and a.record() == b.record()
        assert a.test != c.test and a.selection != c.selection
    a, c = make_pools("countries", n_test=200, seed=0), make_pools("countries", n_test=200, seed=1)
    assert {_landmark(it) for it in a.test} != {_landmark(it) for it in c.test}


# --- the shuffled-message control ---------------------------------------------------------------


def _items(answers: list[str]) -> list[GameItem]:
    return [GameItem(f"s{i}", "r", answer, id=f"x-{i}") for i, answer in enumerate(answers)]


def test_derangement_has_no_fixed_point_and_other_answers() -> None:
    items = make_pools("countries", n_test=100, seed=0).test
    for seed in range(5):
        p = derangement(items, seed)
        assert sorted(p) == list(range(len(items)))
        assert all(p[i] != i for i in range(len(items)))
        assert all(items[p[i]].answer != items[i].answer for i in range(len(items)))
        assert p == derangement(items, seed)
    assert derangement(items, 0) != derangement(items, 1)


@pytest.mark.parametrize(
    "answers",
    [["a", "b"], ["a", "a"], ["a"] * 7, ["a"] * 6 + ["b"] * 2, ["a", "a", "b", "b", "c"], list("aaabbbccd")],
)
def test_derangement_is_as_good_as_possible(answers: list[str]) -> None:
    items = _items(answers)
    n, largest = len(items), max(Counter(answers).values())
    for seed in range(10):
        p = derangement(items, seed)
        assert sorted(p) == list(range(n)) and all(p[i] != i for i in range(n))
        same = sum(items[p[i]].answer == items[i].answer for i in range(n))
        assert same == (n if largest == n else max(0, 2 * largest - n))  # the fewest a permutation allows


def test_derangement_needs_two_items() -> None:
    with pytest.raises(CommlibError, match="at least two"):
        derangement(_items(["a"]), 0)
    with pytest.raises(CommlibError, match="at least two"):
        derangement([], 0)


def test_control_item_moves_the_content_and_keeps_the_receiver() -> None:
    item, donor = make_pools("countries", n_test=2, n_selection=1, seed=0).test
    name = item.reply.removesuffix(" is located in")
    control = control_item(item, donor)
    assert control.sender == f"{name} is at {_landmark(donor)}."
    donor_name = donor.reply.removesuffix(" is located in")
    assert donor_name == name or not control.sender.startswith(donor_name)
    assert (control.receiver, control.answer, control.reply, control.choices) == (
        item.receiver,
        item.answer,
        item.reply,
        item.choices,
    )
    assert control.id == f"{item.id}<-{donor.id}"
    bare = control_item(replace(item, reply=""), donor)  # load_game(..., reply=False) items
    assert bare.sender == control.sender
    other, giver = _items(["a", "b"])
    assert control_item(other, giver) == replace(other, sender="s1", id="x-0<-x-1")
    tips = make_pools("tipsheets", n_test=2, n_selection=1, seed=0).test
    assert control_item(tips[0], tips[1]).sender == tips[1].sender
    assert control_item(tips[0], tips[1]).choices == tips[0].choices
