"""Batched channels: A's trajectories, CIPHER messages and B's slot readings in left-padded batches equal
the one-at-a-time paths (texts identical, vectors allclose), with per-row EOS and no leak from padding."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from commlib.channels import interlat, trajectory
from commlib.channels.cipher import soft_message, soft_messages
from commlib.channels.slot import (
    embed,
    message_prompt,
    read_slot,
    read_slots,
    receive,
    receive_batch,
    receive_embeds,
    shared_prefix_length,
    slot_embeddings,
    slot_template,
)
from commlib.channels.trajectory import Trajectory, _trajectory, trajectory_message, trajectory_messages
from commlib.models import Model
from commlib.tasks.games import countries

ATOL = 1e-4
STEPS = 8
PROMPTS = [
    "Alice is at the Eiffel Tower.",
    "Bob is at the Colosseum, the large amphitheatre in the middle of a city in southern Europe.",
    "Hi",
    "Carol is near Big Ben.",
]


@pytest.fixture(autouse=True)
def fresh_trajectory_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with an empty cache (a patched EOS must not leave messages behind)."""
    monkeypatch.setattr(trajectory, "_TRAJECTORIES", {})


def stop_at(model: Model, monkeypatch: pytest.MonkeyPatch, token: int) -> None:
    """Make ``token`` an EOS of ``model`` for this test, so rows stop at different steps."""
    eos = [*model.eos_token_ids(), token]
    monkeypatch.setattr(model, "eos_token_ids", lambda: eos)


def same_trajectory(a: Trajectory, b: Trajectory) -> None:
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.hidden.shape == b.hidden.shape and torch.allclose(a.hidden, b.hidden, atol=ATOL)


# --------------------------------------------------------------------------- #
# Trajectories
# --------------------------------------------------------------------------- #


def test_interlat_still_exports_the_trajectory_names() -> None:
    assert interlat.Trajectory is Trajectory and interlat.trajectory_message is trajectory_message
    assert interlat.trajectory_messages is trajectory_messages


def test_batched_trajectories_equal_one_at_a_time_and_fill_the_cache(tiny: Model) -> None:
    prompts = [*PROMPTS, PROMPTS[0]]  # a repeat is computed once
    batched = trajectory_messages(tiny, prompts, max_tokens=STEPS, batch_size=3)
    assert len(batched) == len(prompts) and batched[0] is batched[-1]
    for prompt, got in zip(prompts, batched, strict=True):
        same_trajectory(got, _trajectory(tiny, prompt, STEPS))
        assert trajectory_message(tiny, prompt, max_tokens=STEPS) is got  # a cache hit
    assert trajectory_messages(tiny, PROMPTS[:2], max_tokens=STEPS) == batched[:2]


def test_batched_trajectories_stop_each_row_at_its_own_eos(
    tiny: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = [_trajectory(tiny, p, STEPS) for p in PROMPTS]
    stop_at(tiny, monkeypatch, free[0].token_ids[2])
    alone = [_trajectory(tiny, p, STEPS) for p in PROMPTS]
    assert len(alone[0].token_ids) == 2 < max(len(t.token_ids) for t in alone)
    for got, want in zip(trajectory_messages(tiny, PROMPTS, max_tokens=STEPS), alone, strict=True):
        same_trajectory(got, want)


def test_a_trajectory_computed_alone_is_reused_by_the_batch(tiny: Model) -> None:
    first = trajectory_message(tiny, PROMPTS[1], max_tokens=STEPS)
    assert trajectory_messages(tiny, PROMPTS[:2], max_tokens=STEPS)[1] is first


# --------------------------------------------------------------------------- #
# CIPHER
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batched_soft_messages_equal_one_at_a_time(tiny: Model, temperature: float) -> None:
    batched = soft_messages(tiny, tiny, PROMPTS, temperature=temperature, max_tokens=STEPS, batch_size=3)
    for prompt, got in zip(PROMPTS, batched, strict=True):
        want = soft_message(tiny, tiny, prompt, temperature=temperature, max_tokens=STEPS)
        assert got.nearest_ids == want.nearest_ids and got.text == want.text
        assert got.temperature == want.temperature
        assert torch.allclose(got.vectors, want.vectors, atol=ATOL)
        assert torch.allclose(got.probs, want.probs, atol=ATOL)


@pytest.mark.parametrize(("temperature", "row", "step"), [(0.0, 0, 3), (0.3, 1, 1)])
def test_batched_soft_messages_stop_each_row_where_soft_message_does(
    tiny: Model, tiny_wide: Model, monkeypatch: pytest.MonkeyPatch, temperature: float, row: int, step: int
) -> None:
    """Row ``row``'s nearest token at ``step`` becomes an EOS (at T=1 every nearest token here is one id)."""
    free = soft_message(tiny, tiny, PROMPTS[row], temperature=temperature, max_tokens=STEPS)
    stop_at(tiny, monkeypatch, free.nearest_ids[step])
    alone = [soft_message(tiny, tiny_wide, p, temperature=temperature, max_tokens=STEPS) for p in PROMPTS]
    assert len(alone[row].nearest_ids) == step < max(len(m.nearest_ids) for m in alone)
    batched = soft_messages(tiny, tiny_wide, PROMPTS, temperature=temperature, max_tokens=STEPS)
    for got, want in zip(batched, alone, strict=True):
        assert got.nearest_ids == want.nearest_ids
        assert got.vectors.shape == want.vectors.shape and torch.allclose(
            got.vectors, want.vectors, atol=ATOL
        )


# --------------------------------------------------------------------------- #
# B reading the slot
# --------------------------------------------------------------------------- #


def lone(
    receiver: Model, prompt: torch.Tensor, max_new_tokens: int
) -> tuple[str, torch.Tensor, torch.Tensor]:
    """B's answer to a prompt of input embeddings alone; the logits and state at its answer position."""
    out = receiver.hf(inputs_embeds=prompt[None], output_hidden_states=True)
    text = receive_embeds(receiver, prompt, max_new_tokens=max_new_tokens)
    return text, out.logits[0, -1].float(), out.hidden_states[-1][0, -1].float()


def slot_prompts(model: Model, n: int) -> list[torch.Tensor]:
    """B's prompts with A's greedy messages (as vectors) in the slot: a shared prefix, different lengths."""
    items = countries(n, seed=2)
    messages = [
        trajectory_message(model, message_prompt(it), max_tokens=2 + 2 * i) for i, it in enumerate(items)
    ]
    return [
        slot_embeddings(
            model, slot_template(it), vectors=embed(model, torch.tensor(t.token_ids)), reply=it.reply
        )
        for it, t in zip(items, messages, strict=True)
    ]


def random_prompts(model: Model, lengths: list[int]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, model.info.d_model, generator=gen) for n in lengths]


def check_readings(model: Model, prompts: list[torch.Tensor], max_new_tokens: int = STEPS, **kw: int) -> None:
    readings = receive_batch(model, prompts, max_new_tokens=max_new_tokens, **kw)
    assert len(readings) == len(prompts)
    for prompt, got in zip(prompts, readings, strict=True):
        text, logits, state = lone(model, prompt, max_new_tokens)
        assert got.text == text
        assert got.first_logits.dtype == got.final_state.dtype == torch.float32
        assert torch.allclose(got.first_logits, logits, atol=ATOL)
        assert torch.allclose(got.final_state, state, atol=ATOL)


def test_receive_is_receive_embeds_of_the_slot_embeddings(tiny: Model) -> None:
    item = countries(1)[0]
    vectors = torch.randn(3, tiny.info.d_model)
    prompt = slot_embeddings(tiny, slot_template(item), vectors=vectors, reply=item.reply)
    want = receive(tiny, slot_template(item), vectors=vectors, reply=item.reply, max_new_tokens=STEPS)
    assert receive_embeds(tiny, prompt, max_new_tokens=STEPS) == want
    assert receive_batch(tiny, [prompt], max_new_tokens=STEPS)[0].text == want


def test_batched_reading_with_a_shared_prefix_equals_receive(tiny: Model) -> None:
    prompts = slot_prompts(tiny, 4)
    assert len({len(p) for p in prompts}) > 1 and shared_prefix_length(prompts) > 3
    check_readings(tiny, prompts)
    check_readings(tiny, prompts, batch_size=3)  # a batch of three and one of one


def test_batched_reading_without_a_shared_prefix_equals_receive(tiny: Model) -> None:
    prompts = random_prompts(tiny, [5, 12, 1, 7])
    assert shared_prefix_length(prompts) == 0
    check_readings(tiny, prompts)


def test_identical_rows_keep_a_position_of_their_own(tiny: Model) -> None:
    prompt = random_prompts(tiny, [6])[0]
    assert shared_prefix_length([prompt, prompt.clone()]) == 5
    check_readings(tiny, [prompt, prompt.clone()])


def test_batched_reading_stops_each_row_at_its_own_eos(tiny: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = slot_prompts(tiny, 3)
    free = receive_batch(tiny, prompts, max_new_tokens=STEPS)
    ids = tiny.tokenizer(free[0].text, add_special_tokens=False)["input_ids"]
    stop_at(tiny, monkeypatch, ids[1])
    assert len(receive_embeds(tiny, prompts[0], max_new_tokens=STEPS)) < len(free[0].text)
    check_readings(tiny, prompts)


@pytest.mark.parametrize("make", [slot_prompts, lambda m, n: random_prompts(m, [4, 9, 6][:n])])
def test_padding_does_not_leak_into_other_rows(
    tiny: Model, make: Callable[[Model, int], list[torch.Tensor]]
) -> None:
    prompts = make(tiny, 3)
    alone = receive_batch(tiny, prompts, max_new_tokens=STEPS)
    longer = torch.cat([prompts[0], random_prompts(tiny, [60])[0]])  # shares the prefix, then much longer
    together = receive_batch(tiny, [*prompts, longer], max_new_tokens=STEPS)
    for a, b in zip(alone, together, strict=False):
        assert a.text == b.text
        assert torch.allclose(a.first_logits, b.first_logits, atol=ATOL)
        assert torch.allclose(a.final_state, b.final_state, atol=ATOL)


def test_final_state_is_what_the_unembedding_reads(tiny: Model) -> None:
    prompt = slot_prompts(tiny, 1)[0]
    (got,) = receive_batch(tiny, [prompt])
    out = tiny.hf(inputs_embeds=prompt[None], output_hidden_states=True)
    assert torch.allclose(got.final_state, out.hidden_states[-1][0, -1], atol=ATOL)
    assert torch.allclose(got.first_logits, tiny.hf.lm_head(got.final_state), atol=ATOL)


def test_read_slots_equals_read_slot(tiny: Model) -> None:
    items = countries(5, seed=4)
    gen = torch.Generator().manual_seed(1)
    vectors = [torch.randn(1 + i, tiny.info.d_model, generator=gen) for i in range(len(items))]
    readings = read_slots(tiny, items, vectors, STEPS, batch_size=2)
    assert [r.text for r in readings] == [
        read_slot(tiny, it, v, STEPS) for it, v in zip(items, vectors, strict=True)
    ]
