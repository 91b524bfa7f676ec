"""KV-cache channels: ``kv`` equals one pass over both prompts, layers restrict what B reads, a message is
never changed by reading it, padding and batching change nothing, latent steps are LatentMAS's, and both join
the controlled experiment with their content control."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from commlib.backends import Decoding, get_backend
from commlib.channels import kv as kvmod
from commlib.channels.kv import (
    KVMessage,
    check_kv_pair,
    check_latent_steps,
    kv_messages,
    kvcomm_importance,
    kvcomm_layers,
    read_kv,
    realign_states,
    realignment,
    sender_messages,
)
from commlib.channels.slot import embed
from commlib.compute import Shape, kv_bytes, kv_flops, method_flops, vector_bytes
from commlib.errors import CommlibError
from commlib.experiments.thesis import kv_layer_spec, run_thesis
from commlib.models import Model
from commlib.prompts import Batch, encode
from commlib.protocols.games import MethodConfig, method_fn, run_method
from commlib.protocols.readings import Condition, SideNeeds, check_channel, read, sender_side
from commlib.tasks.games import countries
from commlib.tasks.pools import control_item, derangement

A = ["Alice is at the Eiffel Tower.", "Bob sits in a small cafe in Rome, by the Colosseum."]
B = ["Which country is Alice in?", "Where is Bob?"]


def _ids(model: Model, text: str) -> torch.Tensor:
    return encode(model, [text]).input_ids[0]


def _padded(model: Model, texts: list[str], side: str) -> Batch:
    """The prompts in one batch padded on ``side``."""
    rows = [_ids(model, t) for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), model.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        where = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, where], mask[i, where] = r, 1
    return Batch(ids, mask)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> None:
    torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)


# --------------------------------------------------------------------------- #
# kv: the cached path is the uncached one; layers restrict what B reads
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_kv_with_every_layer_equals_one_pass_over_both_prompts(
    tiny: Model, eager_twin: Callable[[Model], Model], attention: str
) -> None:
    model = tiny if attention == "sdpa" else eager_twin(tiny)
    readings = read_kv(model, kv_messages(model, A), encode(model, B), max_new_tokens=4)
    for a, b, reading in zip(A, B, readings, strict=True):
        ids = torch.cat([_ids(model, a), _ids(model, b)])[None]
        out = model.hf(ids, output_hidden_states=True)
        _close(reading.first_logits, out.logits[0, -1])
        _close(reading.final_state, out.hidden_states[-1][0, -1])
        greedy = get_backend(model).generate(
            Batch(ids, torch.ones_like(ids)), None, Decoding(max_new_tokens=4)
        )
        assert reading.text == greedy.texts[0]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_kv_at_no_layer_is_b_alone_and_at_every_layer_is_unrestricted(
    tiny: Model, eager_twin: Callable[[Model], Model], attention: str
) -> None:
    model = tiny if attention == "sdpa" else eager_twin(tiny)
    messages, batch = kv_messages(model, A), encode(model, B)
    none = read_kv(model, messages, batch, layers=[], max_new_tokens=4)
    alone = get_backend(model).generate(batch, None, Decoding(max_new_tokens=4))
    assert [r.text for r in none] == alone.texts
    _close(torch.stack([r.first_logits for r in none]), alone.first_logits)
    full = read_kv(model, messages, batch, max_new_tokens=4)
    every = read_kv(model, messages, batch, layers=range(model.info.n_layers), max_new_tokens=4)
    _close(torch.stack([r.first_logits for r in every]), torch.stack([r.first_logits for r in full]), 1e-6)
    some = read_kv(model, messages, batch, layers=[1, 2], max_new_tokens=4)
    for s, f, n in zip(some, full, none, strict=True):  # two of four layers: neither extreme
        assert not torch.allclose(s.first_logits, f.first_logits, atol=1e-3)
        assert not torch.allclose(s.first_logits, n.first_logits, atol=1e-3)


def test_layers_out_of_range_and_cross_model_pairs_are_refused(tiny: Model, tiny_wide: Model) -> None:
    with pytest.raises(CommlibError, match=r"out of range .* use 0\.\.3"):
        read_kv(tiny, kv_messages(tiny, A[:1]), encode(tiny, B[:1]), layers=[4])
    with pytest.raises(CommlibError, match="layers differ"):
        check_kv_pair(tiny, tiny_wide)
    with pytest.raises(CommlibError, match="one architecture and tokenizer"):
        run_method("kv", countries(1), tiny, tiny_wide, MethodConfig(k=None, j=None, max_new_tokens=1))
    check_kv_pair(tiny, tiny)


# --------------------------------------------------------------------------- #
# A message is never changed by reading it; padding and batching change nothing
# --------------------------------------------------------------------------- #


def test_reading_a_message_never_changes_it(tiny: Model, eager_twin: Callable[[Model], Model]) -> None:
    messages = kv_messages(tiny, A, latent_steps=2)
    before = [(m.keys.clone(), m.values.clone()) for m in messages]
    batch = encode(tiny, B)
    first = read_kv(tiny, messages, batch, max_new_tokens=3)
    other = read_kv(eager_twin(tiny), messages, batch, layers=[0, 2], max_new_tokens=3)  # a second receiver
    again = read_kv(tiny, messages, batch, max_new_tokens=3)
    for m, (k, v) in zip(messages, before, strict=True):
        assert torch.equal(m.keys, k) and torch.equal(m.values, v)
    assert [r.text for r in first] == [r.text for r in again]
    for x, y in zip(first, again, strict=True):
        assert torch.equal(x.first_logits, y.first_logits)
    assert len(other) == len(first)


@pytest.mark.parametrize("latent_steps", [0, 3])
def test_left_and_right_padded_senders_send_what_single_items_send(tiny: Model, latent_steps: int) -> None:
    single = [sender_messages(tiny, encode(tiny, [a]), latent_steps=latent_steps)[0] for a in A]
    for side in ("left", "right"):
        batched = sender_messages(tiny, _padded(tiny, A, side), latent_steps=latent_steps)
        for s, b in zip(single, batched, strict=True):
            assert (b.prompt_tokens, b.latent_steps) == (s.prompt_tokens, latent_steps)
            _close(b.keys, s.keys)
            _close(b.values, s.values)


def test_left_and_right_padded_receivers_and_batches_read_what_single_items_read(tiny: Model) -> None:
    messages = kv_messages(tiny, A, latent_steps=1)
    single = [
        read_kv(tiny, [m], encode(tiny, [b]), max_new_tokens=4)[0] for m, b in zip(messages, B, strict=True)
    ]
    for side in ("left", "right"):
        for layers in (None, [1, 3]):
            batched = read_kv(tiny, messages, _padded(tiny, B, side), layers=layers, max_new_tokens=4)
            if layers is None:
                assert [r.text for r in batched] == [r.text for r in single]
                for x, y in zip(batched, single, strict=True):
                    _close(x.first_logits, y.first_logits)
                    _close(x.final_state, y.final_state)
            else:
                alone = [read_kv(tiny, [m], encode(tiny, [b]), layers=layers, max_new_tokens=4)[0]
                         for m, b in zip(messages, B, strict=True)]  # fmt: skip
                for x, y in zip(batched, alone, strict=True):
                    _close(x.first_logits, y.first_logits)


# --------------------------------------------------------------------------- #
# latent-steps: LatentMAS's realignment fed back; m = 0 is kv and refused
# --------------------------------------------------------------------------- #


def test_zero_latent_steps_is_refused_and_named_kv(tiny: Model) -> None:
    for refuse in (
        lambda: check_latent_steps(0),
        lambda: check_channel("latent-steps-m0"),
        lambda: method_fn("latent-steps-m0"),
    ):
        with pytest.raises(CommlibError, match="prompt cache, which is the kv channel"):
            refuse()
    assert check_channel("latent-steps") == "latent-steps-m8"


def test_realignment_is_the_ridge_solution_cached_on_disk(tiny: Model, tmp_path: Path) -> None:
    kvmod._REALIGN.clear()  # fitted afresh, into tmp_path
    matrix, norm = realignment(tiny, cache=tmp_path)
    w_in = tiny.hf.get_input_embeddings().weight.float()
    w_out = tiny.hf.get_output_embeddings().weight.float()
    gram = w_out.T @ w_out + kvmod.REALIGN_LAMBDA * torch.eye(w_in.shape[1])
    _close(gram @ matrix, w_out.T @ w_in, 1e-3)  # the normal equations
    _close(norm, w_in.norm(dim=1).mean())
    kvmod._REALIGN.clear()
    stored = list(tmp_path.glob("*.pt"))
    assert len(stored) == 1
    again, _ = realignment(tiny, cache=tmp_path)
    assert torch.equal(again, matrix)
    states = torch.randn(3, tiny.info.d_model)
    _close(realign_states(states, matrix, norm).norm(dim=-1), norm.expand(3))


def test_a_latent_step_feeds_back_the_realigned_last_state(tiny: Model) -> None:
    [msg] = kv_messages(tiny, A[:1], latent_steps=2)
    assert (msg.tokens, msg.latent_steps) == (msg.prompt_tokens + 2, 2)
    matrix, norm = realignment(tiny)
    embeds = embed(tiny, _ids(tiny, A[0]))[None]
    for _ in range(2):  # the uncached reference: the whole sequence each step
        out = tiny.hf(inputs_embeds=embeds, output_hidden_states=True, use_cache=True)
        step = realign_states(out.hidden_states[-1][:, -1], matrix, norm)
        embeds = torch.cat([embeds, step[:, None]], dim=1)
    out = tiny.hf(inputs_embeds=embeds, use_cache=True)
    reference = torch.stack([layer.keys[0] for layer in out.past_key_values.layers])
    _close(msg.keys, reference)
    _close(msg.truncated(0).keys, kv_messages(tiny, A[:1])[0].keys)


# --------------------------------------------------------------------------- #
# KVComm's selection, bytes and FLOPs
# --------------------------------------------------------------------------- #


def test_kvcomm_importance_is_the_attention_share_on_a_and_the_rule_picks_the_top(tiny: Model) -> None:
    importance = kvcomm_importance(tiny, kv_messages(tiny, A), encode(tiny, B))
    assert importance.shape == (tiny.info.n_layers,)
    assert bool(((importance > 0) & (importance < 1)).all())
    assert tiny.hf.config._attn_implementation == "sdpa"  # switched back
    chosen = kvcomm_layers(importance, 0.5)
    assert len(chosen) == 2 and set(chosen) == set(importance.argsort(descending=True)[:2].tolist())
    assert kvcomm_layers([5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 1 / 7, alpha=0.0, sigma=1.0) == (3,)
    with pytest.raises(CommlibError, match=r"\(0, 1\]"):
        kvcomm_layers(importance, 0.0)
    assert kv_layer_spec("kvcomm") == 0.3 and kv_layer_spec("1,0") == (0, 1)
    with pytest.raises(CommlibError, match="kvcomm"):
        kv_layer_spec("kvcomm:2")


def test_bytes_per_message_and_flops(tiny: Model) -> None:
    [msg] = kv_messages(tiny, A[:1])
    shape = Shape.from_config(tiny.hf.config)
    per_element = msg.keys.element_size()
    assert msg.nbytes() == kv_bytes(shape, msg.tokens, bytes_per_element=per_element)
    assert msg.nbytes() == msg.keys.numel() * per_element * 2
    assert msg.nbytes([0, 3]) * 2 == msg.nbytes()
    assert kv_bytes(shape, 1) > vector_bytes(shape)
    plain = kv_flops(shape, shape, prompt_a=20, prompt_b=10, answer=3)
    latent = kv_flops(shape, shape, prompt_a=20, prompt_b=10, answer=3, latent_steps=4)
    alone = method_flops("single-b", shape, shape, prompt_a=20, prompt_b=10, message=0, answer=3)
    assert alone["receiver"] < plain["receiver"] < latent["receiver"]
    assert plain["sender"] < latent["sender"]


# --------------------------------------------------------------------------- #
# The games and the controlled experiment
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", ["kv", "latent-steps-m2"])
def test_games_methods_answer_and_batched_equals_one_at_a_time(tiny: Model, name: str) -> None:
    items, cfg = countries(3, seed=2), MethodConfig(k=None, j=None, max_new_tokens=3)
    together = [o.text for o in run_method(name, items, tiny, tiny, cfg)]
    one = [run_method(name, [it], tiny, tiny, cfg)[0].text for it in items]
    assert together == one


@pytest.mark.parametrize("name", ["kv", "latent-steps-m2"])
def test_thesis_readings_batched_equal_one_at_a_time_and_the_control_differs(tiny: Model, name: str) -> None:
    items = countries(4, seed=3)
    cond = Condition(name, "all" if name == "kv" else "")
    side = sender_side(tiny, tiny, items, SideNeeds.of([cond]))
    together = read(cond, items, side, tiny, tiny, max_new_tokens=2, batch_size=4)
    alone = read(cond, items, side, tiny, tiny, max_new_tokens=2, batch_size=1)
    assert [r.text for r in together] == [r.text for r in alone]
    for a, b in zip(together, alone, strict=True):
        _close(a.first_logits, b.first_logits)
    controls = [control_item(it, items[d]) for it, d in zip(items, derangement(items, seed=0), strict=True)]
    control = read(cond, items, sender_side(tiny, tiny, controls, SideNeeds.of([cond])), tiny, tiny)
    assert any(
        not torch.allclose(o.first_logits, c.first_logits) for o, c in zip(together, control, strict=True)
    )


def test_run_thesis_writes_own_and_control_rows_for_kv_channels(tiny: Model, tmp_path: Path) -> None:
    out = tmp_path / "run"
    channels = ["silent", "kv", "latent-steps-m2"]
    run_thesis("countries", tiny, tiny, channels, out_dir=out, n=4, n_selection=4, message_tokens=3,
               max_new_tokens=2, progress=False, kv_layers="kvcomm:0.5")  # fmt: skip
    items = pd.read_csv(out / "items.csv", dtype=str, keep_default_na=False)
    counts = items.groupby(["method", "depth", "message"]).size()
    assert set(counts) == {4}
    assert set(counts.index) == {
        ("silent", "", "none"),
        *{(m, d, msg) for m, d in [("kv", "all"), ("kv", "kvcomm0.5"), ("latent-steps-m2", "")]
          for msg in ("own", "control")},
    }  # fmt: skip
    control = items[items["message"] == "control"]
    assert (control["donor_id"] != control["item_id"]).all()
    kv_rows = items[items["method"] != "silent"]
    assert kv_rows["sent"].str.contains("bytes").all()
    assert (kv_rows["kl"].astype(float) > 0).all()
    results = json.loads((out / "results.json").read_text())
    assert results["kv_layers"]["name"] == "kvcomm0.5" and len(results["kv_layers"]["layers"]) == 2
    assert len(json.loads((out / "kv_layers.json").read_text())["importance"]) == tiny.info.n_layers


def test_kv_message_fields() -> None:
    msg = KVMessage(torch.zeros(2, 1, 5, 4), torch.zeros(2, 1, 5, 4), prompt_tokens=3)
    assert (msg.tokens, msg.latent_steps, msg.truncated(1).tokens) == (5, 2, 4)
    with pytest.raises(CommlibError, match="holds 2 latent steps"):
        msg.truncated(3)
