"""kv-fuser: A's cache projected into B's shape (C2C-style), its gate, its training and its place in the
controlled experiment, on a tiny cross-shape pair (4 layers, 2 key/value heads of 16 -> 3 layers, 4 of 24)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from commlib.channels import fuser as fusermod
from commlib.channels.fuser import (
    CacheShape,
    KVFuser,
    _rotate,
    fuse,
    fused_answer_loss,
    layer_map,
    load_fuser,
    read_fused,
    train_fuser,
)
from commlib.channels.kv import check_kv_pair, kv_messages
from commlib.compute import Shape, fuser_parameters
from commlib.errors import CommlibError
from commlib.experiments.thesis import run_thesis
from commlib.models import Model
from commlib.prompts import encode
from commlib.protocols.readings import Condition, SideNeeds, check_channel, read, sender_side
from commlib.tasks.games import countries

A = ["Alice is at the Eiffel Tower.", "Bob sits in a small cafe in Rome, by the Colosseum.", "Eve: Big Ben."]
B = ["Where is Alice?", "Which country is Bob in?", "Where is Eve?"]


def _fuser(a: Model, b: Model, *, open_gates: bool, seed: int = 0) -> KVFuser:
    torch.manual_seed(seed)
    f = KVFuser(CacheShape.of(a), CacheShape.of(b), hidden=16).eval()
    if open_gates:
        f.gate_logits.data.fill_(1.0)
    return f


def test_the_pair_does_not_fit_kv_and_the_fused_cache_has_bs_shape(tiny: Model, tiny_wide: Model) -> None:
    with pytest.raises(CommlibError, match="differ"):
        check_kv_pair(tiny, tiny_wide)
    msg = kv_messages(tiny, A[:1])[0]
    fused = fuse(tiny, tiny_wide, _fuser(tiny, tiny_wide, open_gates=True), msg)
    own = kv_messages(tiny_wide, A[:1])[0]  # B's own cache over the same prompt: the shape B reads
    assert fused.keys.shape == fused.values.shape == own.keys.shape
    assert fused.tokens == msg.tokens == msg.prompt_tokens and torch.isfinite(fused.keys).all()
    assert (
        layer_map(tiny.info.n_layers, tiny_wide.info.n_layers)
        == _fuser(tiny, tiny_wide, open_gates=False).sources
    )
    with pytest.raises(CommlibError, match="train one for this pair"):
        fuse(tiny_wide, tiny, _fuser(tiny, tiny_wide, open_gates=True), msg)


def test_the_parameter_count_is_what_compute_counts(tiny: Model, tiny_wide: Model) -> None:
    f = _fuser(tiny, tiny_wide, open_gates=False)
    shapes = [Shape.from_config(m.hf.config) for m in (tiny, tiny_wide)]
    assert (
        fuser_parameters(shapes[0], shapes[1], hidden=16)
        == f.parameter_count()
        == sum(p.numel() for p in f.parameters())
    )


def test_keys_come_out_of_as_rope_and_go_into_bs(tiny: Model) -> None:
    """Un-rotated layer-0 keys of one token are equal at every position it takes; the round trip is exact."""
    batch = encode(tiny, ["aaaaaaaaaaaa"])
    ids = batch.input_ids[0][batch.attention_mask[0].bool()]
    msg = kv_messages(tiny, ["aaaaaaaaaaaa"])[0]
    common = int(torch.mode(ids).values)  # the letter a
    at = [i for i, t in enumerate(ids.tolist()) if t == common]
    assert len(at) >= 5
    plain = _rotate(tiny, msg.keys, inverse=True)[0]  # [heads, T, D]
    rotated = msg.keys[0].float()
    assert torch.allclose(plain[:, at[0]], plain[:, at[-1]], atol=1e-4)
    assert not torch.allclose(rotated[:, at[0]], rotated[:, at[-1]], atol=1e-2)
    back = _rotate(tiny, _rotate(tiny, msg.keys, inverse=True), inverse=False)
    assert torch.allclose(back, msg.keys.float(), atol=1e-5)


def test_a_zero_gate_is_b_alone_exactly_and_an_open_one_is_not(tiny: Model, tiny_wide: Model) -> None:
    items = countries(3)
    side = sender_side(tiny, tiny_wide, items, SideNeeds.of([Condition("kv-fuser")]))
    closed = _fuser(tiny, tiny_wide, open_gates=False)
    assert closed.open_layers() == ()
    kw = {"max_new_tokens": 3, "batch_size": 3}
    alone = read(Condition("silent"), items, side, tiny, tiny_wide, **kw)  # type: ignore[arg-type]
    got = read(Condition("kv-fuser"), items, side, tiny, tiny_wide, fuser=closed, **kw)  # type: ignore[arg-type]
    for x, y in zip(got, alone, strict=True):
        assert x.text == y.text
        assert torch.allclose(x.first_logits, y.first_logits, atol=1e-4)
        assert torch.allclose(x.final_state, y.final_state, atol=1e-4)
    f = _fuser(tiny, tiny_wide, open_gates=True)
    opened = read(Condition("kv-fuser"), items, side, tiny, tiny_wide, fuser=f, **kw)  # type: ignore[arg-type]
    assert not torch.allclose(opened[0].first_logits, alone[0].first_logits, atol=1e-3)
    with pytest.raises(CommlibError, match="needs its fuser"):
        read(Condition("kv-fuser"), items, side, tiny, tiny_wide, **kw)  # type: ignore[arg-type]


def test_batched_equals_one_at_a_time_and_reading_changes_no_cache(tiny: Model, tiny_wide: Model) -> None:
    f = _fuser(tiny, tiny_wide, open_gates=True)
    f.gate_logits.data[1] = -1.0  # one layer closed: B's attention there hides A's positions
    assert f.open_layers() == (0, 2)
    msgs = kv_messages(tiny, A)
    before = [(m.keys.clone(), m.values.clone()) for m in msgs]
    weights = {k: v.clone() for k, v in f.state_dict().items()}
    batch = encode(tiny_wide, B)
    together = read_fused(tiny, tiny_wide, f, msgs, batch, max_new_tokens=3)
    again = read_fused(tiny, tiny_wide, f, msgs, batch, max_new_tokens=3)
    for i in range(len(A)):
        alone = read_fused(
            tiny, tiny_wide, f, msgs[i : i + 1], encode(tiny_wide, B[i : i + 1]), max_new_tokens=3
        )
        assert alone[0].text == together[i].text == again[i].text
        assert torch.allclose(alone[0].first_logits, together[i].first_logits, atol=1e-4)
        assert torch.allclose(alone[0].final_state, together[i].final_state, atol=1e-4)
        assert torch.equal(together[i].first_logits, again[i].first_logits)
    for m, (k, v) in zip(msgs, before, strict=True):
        assert torch.equal(m.keys, k) and torch.equal(m.values, v)
    assert all(torch.equal(v, f.state_dict()[k]) for k, v in weights.items())


def _eval_loss(f: KVFuser, a: Model, b: Model, items: list) -> float:
    """B's answer loss with each gate at sigmoid(logit), no noise: deterministic."""
    msgs = kv_messages(a, [fusermod.message_prompt(it) for it in items])
    total = 0.0
    with torch.no_grad():
        for it, m in zip(items, msgs, strict=True):
            bias = f.gate_bias(torch.zeros(f.target.layers), 1.0)
            total += float(fused_answer_loss(b, fuse(a, b, f, m), *fusermod._receiver_side(b, it), bias))
    return total / len(items)


def test_training_lowers_the_training_loss(tiny: Model, tiny_wide: Model, tmp_path: Path) -> None:
    items = countries(4)
    torch.manual_seed(7)
    start = KVFuser(CacheShape.of(tiny), CacheShape.of(tiny_wide), hidden=32)  # what train_fuser starts from
    trained = train_fuser(tiny, tiny_wide, "countries", tmp_path, items=items, steps=60, lr=1e-2, seed=7,
                          hidden=32, progress=False)  # fmt: skip
    assert not trained.training
    assert _eval_loss(trained, tiny, tiny_wide, items) < _eval_loss(start, tiny, tiny_wide, items) - 0.1
    loaded, info = load_fuser(tmp_path)
    assert info.steps == len(info.losses) == 60 and info.items == tuple(it.id for it in items)
    assert info.parameters == trained.parameter_count() and info.open_layers == trained.open_layers()
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(CommlibError, match="other settings"):
        train_fuser(tiny, tiny_wide, "countries", tmp_path, items=items, steps=60, lr=1e-3, seed=7, hidden=32,
                    progress=False)  # fmt: skip


def test_training_resumes_from_its_checkpoint_after_a_crash(
    tiny: Model, tiny_wide: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = countries(3)
    kw = {"items": items, "steps": 6, "lr": 1e-2, "seed": 3, "hidden": 16, "progress": False}
    whole = train_fuser(tiny, tiny_wide, "countries", tmp_path / "whole", **kw)  # type: ignore[arg-type]
    real, calls = fusermod.fused_answer_loss, [0]

    def crash_at_five(*args: object) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 5:
            raise RuntimeError("killed")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(fusermod, "fused_answer_loss", crash_at_five)
    with pytest.raises(RuntimeError, match="killed"):
        train_fuser(tiny, tiny_wide, "countries", tmp_path / "cut", **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(fusermod, "fused_answer_loss", real)
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt")
    assert len(saved["losses"]) == 4  # every finished step kept
    assert saved["losses"] == json.loads((tmp_path / "whole" / "fuser.json").read_text())["losses"][:4]
    at_four = train_fuser(tiny, tiny_wide, "countries", tmp_path / "cut", **{**kw, "steps": 4})  # type: ignore[arg-type]
    assert all(torch.equal(v, saved["adapter"][k]) for k, v in at_four.state_dict().items())  # no step redone
    resumed = train_fuser(tiny, tiny_wide, "countries", tmp_path / "cut", **kw)  # type: ignore[arg-type]
    _, info = load_fuser(tmp_path / "cut")
    assert info.steps == 6 and info.losses[:4] == tuple(saved["losses"])
    assert not all(torch.equal(v, saved["adapter"][k]) for k, v in resumed.state_dict().items())
    assert whole.parameter_count() == resumed.parameter_count()


def test_the_controlled_experiment_runs_kv_fuser_with_its_control(
    tiny: Model, tiny_wide: Model, tmp_path: Path
) -> None:
    assert check_channel("kv-fuser") == "kv-fuser"
    kw = {"n": 4, "n_selection": 4, "out_dir": tmp_path, "fuser_items": 3, "fuser_steps": 2,
          "message_tokens": 3, "max_new_tokens": 2, "progress": False}  # fmt: skip
    summary = run_thesis("countries", tiny, tiny_wide, ["silent", "kv-fuser"], **kw)  # type: ignore[arg-type]
    assert sorted(summary["channel"]) == ["kv-fuser", "silent"]
    rows = pd.read_csv(tmp_path / "items.csv", dtype=str, keep_default_na=False)
    fused = rows[rows["method"] == "kv-fuser"]
    assert sorted(fused["message"].value_counts().items()) == [("control", 4), ("own", 4)]
    control = fused[fused["message"] == "control"]
    assert (control["donor_id"] != control["item_id"]).all() and (control["donor_id"] != "").all()
    assert fused["sent"].str.contains(f"at {tiny.info.n_layers} layers of A").all()
    assert pd.to_numeric(fused["kl"]).notna().all()
    trained = json.loads((tmp_path / "fuser" / "fuser.json").read_text())
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(trained["items"]) <= set(results["pool_ids"]["selection"])
    assert not set(trained["items"]) & set(results["pool_ids"]["test"])
    assert results["fuser"]["parameters"] == trained["parameters"] and trained["steps"] == 2
    again = run_thesis("countries", tiny, tiny_wide, ["silent", "kv-fuser"], **kw)  # type: ignore[arg-type]
    assert again.equals(summary)
