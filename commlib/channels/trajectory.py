"""A sender's greedy message with its last-layer hidden state at every step (Interlat's ``H``).

:func:`trajectory_message` writes one; :func:`trajectory_messages` writes
many in left-padded batches (same tokens and states, tested). Both keep what
they computed in memory, so the Interlat variants of one run share A's work.

Example:
    >>> from commlib.models import load_model
    >>> m = load_model("tiny-llama-random")
    >>> t = trajectory_message(m, "Alice is at the Eiffel Tower.", max_tokens=3)
    >>> t.hidden.shape[1] == m.info.d_model, len(t.token_ids) == t.hidden.shape[0]
    (True, True)
    >>> trajectory_messages(m, ["Alice is at the Eiffel Tower."], max_tokens=3)[0] is t
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from commlib.channels.slot import embed, greedy_rows, prefill_rows
from commlib.models import Model
from commlib.prompts import encode


@dataclass(frozen=True)
class Trajectory:
    """A sender's message as hidden states.

    Attributes:
        hidden: ``[L, d_A]`` last-layer hidden state at each generated step
            (the state that chose the step's token).
        token_ids: The greedy tokens, up to (not including) EOS.
        text: Their text.
    """

    hidden: Float[Tensor, "L d"]
    token_ids: list[int]
    text: str


_TRAJECTORIES: dict[tuple[int, str, int], tuple[Model, Trajectory]] = {}
_CACHE_SIZE = 1024


def _remember(sender: Model, prompt: str, max_tokens: int, trajectory: Trajectory) -> None:
    """Keep ``trajectory`` in the in-memory cache (the last 1024 per process)."""
    if len(_TRAJECTORIES) >= _CACHE_SIZE:
        _TRAJECTORIES.pop(next(iter(_TRAJECTORIES)))
    _TRAJECTORIES[(id(sender), prompt, max_tokens)] = (sender, trajectory)  # the model keeps its id


def trajectory_message(sender: Model, prompt: str, *, max_tokens: int = 48) -> Trajectory:
    """Greedy message for ``prompt`` (the full instruction) with the hidden state of every step.

    Deterministic, so it is kept in memory (the last 1024 per process): the
    Interlat variants of one run share A's work.
    """
    key = (id(sender), prompt, max_tokens)
    if key not in _TRAJECTORIES:
        _remember(sender, prompt, max_tokens, _trajectory(sender, prompt, max_tokens))
    return _TRAJECTORIES[key][1]


def trajectory_messages(
    sender: Model, prompts: Sequence[str], *, max_tokens: int = 48, batch_size: int = 16
) -> list[Trajectory]:
    """:func:`trajectory_message` for many prompts, those not in memory computed in batches.

    Each batch is left-padded (the positions all its prompts share run once)
    and every row decodes greedily until its own EOS: the same tokens and
    states as one prompt at a time (tested). The results go into the same
    in-memory cache.
    """
    found = {
        p: _TRAJECTORIES[(id(sender), p, max_tokens)][1] for p in prompts if _cached(sender, p, max_tokens)
    }
    missing = list(dict.fromkeys(p for p in prompts if p not in found))
    for start in range(0, len(missing), batch_size):
        chunk = missing[start : start + batch_size]
        for prompt, trajectory in zip(chunk, _trajectories(sender, chunk, max_tokens), strict=True):
            found[prompt] = trajectory
            _remember(sender, prompt, max_tokens, trajectory)
    return [found[p] for p in prompts]


def _cached(sender: Model, prompt: str, max_tokens: int) -> bool:
    return (id(sender), prompt, max_tokens) in _TRAJECTORIES


@torch.no_grad()
def _trajectories(sender: Model, prompts: Sequence[str], max_tokens: int) -> list[Trajectory]:
    """One batch of :func:`trajectory_messages`."""
    batch = encode(sender, prompts)
    rows = [
        embed(sender, ids[m.bool()]) for ids, m in zip(batch.input_ids, batch.attention_mask, strict=True)
    ]
    logits, state, past, mask = prefill_rows(sender, rows, hidden=True)
    tokens, states = greedy_rows(sender, logits, state, past, mask, max_tokens)
    d = sender.info.d_model
    texts = sender.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return [
        Trajectory(hidden=torch.stack(h) if h else torch.zeros(0, d), token_ids=t, text=str(text))
        for h, t, text in zip(states, tokens, texts, strict=True)
    ]


@torch.no_grad()
def _trajectory(sender: Model, prompt: str, max_tokens: int) -> Trajectory:
    tok = sender.tokenizer
    ids = encode(sender, [prompt]).input_ids
    out = sender.hf(input_ids=ids.to(sender.device), output_hidden_states=True, use_cache=True)
    eos = set(sender.eos_token_ids())
    hidden: list[Tensor] = []
    chosen: list[int] = []
    for _ in range(max_tokens):
        nxt = int(out.logits[0, -1].argmax())
        if nxt in eos:
            break
        hidden.append(out.hidden_states[-1][0, -1].float())
        chosen.append(nxt)
        out = sender.hf(
            input_ids=torch.tensor([[nxt]], device=sender.device),
            past_key_values=out.past_key_values,
            output_hidden_states=True,
            use_cache=True,
        )
    d = sender.info.d_model
    return Trajectory(
        hidden=torch.stack(hidden) if hidden else torch.zeros(0, d),
        token_ids=chosen,
        text=str(tok.decode(chosen, skip_special_tokens=True)),
    )
