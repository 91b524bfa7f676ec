"""What B answers, and where its answer position lands, when a channel carries a given message.

The controlled experiment (:mod:`commlib.experiments.thesis`) asks every
channel twice per item: carrying A's message about the item, and carrying A's
message about another item (its content control,
:func:`commlib.tasks.pools.control_item`), in the same format. A's side is
computed once per sender prompt (:func:`sender_side`) and shared by every
channel that reads it: A's greedy message is NL's text, CIPHER at T = 0's
tokens and Interlat's trajectory; A's residual at block k is AC's message at
every f; A's KV cache over its message prompt (with its latent steps, once for
the largest m) is the message of ``kv`` and ``latent-steps-m<M>``, and its
prompt part that of ``kv-fuser`` (through a trained fuser, :mod:`commlib.channels.fuser`).

Every reading gives B's answer, its next-token logits at the answer position
(the last prompt position: every prompt ends with the item's reply) and the
state B's unembedding reads there, so one distance axis measures every
channel the same way, on B (:func:`distance`).

Example:
    >>> from commlib.models import load_model
    >>> from commlib.tasks.games import countries
    >>> m = load_model("tiny-llama-random")
    >>> items = countries(2)
    >>> side = sender_side(m, m, items, SideNeeds(ks=(1,), message=True), message_tokens=4)
    >>> out = read(Condition("ac-replace", "paper", k=1, j=1), items, side, m, m, max_new_tokens=2)
    >>> len(out), out[0].final_state.shape
    (2, torch.Size([64]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from commlib.backends import Decoding, get_backend
from commlib.backends.base import final_states
from commlib.channels.cipher import SoftMessage, soft_messages
from commlib.channels.fuser import KVFuser, read_fused
from commlib.channels.interlat import InterlatAdapter, as_receiver_inputs
from commlib.channels.kv import (
    DEFAULT_LATENT_STEPS,
    KVMessage,
    check_kv_pair,
    check_latent_steps,
    kv_messages,
    read_kv,
)
from commlib.channels.slot import (
    NL_TEMPLATE,
    Reading,
    message_prompt,
    receive_batch,
    slot_embeddings,
    slot_template,
)
from commlib.channels.trajectory import Trajectory, trajectory_messages
from commlib.channels.vocab import rosetta_vectors, token_embeddings, vocab_projection
from commlib.combine import LinearMap
from commlib.errors import CommlibError
from commlib.graft import GraftConfig, communicate
from commlib.models import Model
from commlib.prompts import encode
from commlib.protocols.games import SKYLINE_TEMPLATE
from commlib.registry import canonical, method
from commlib.tasks.games import GameItem

THESIS_CHANNELS = (
    "silent",
    "skyline",
    "nl",
    "ac-sum",
    "ac-mean",
    "ac-replace",
    "ac-w-sum",
    "ac-w-mean",
    "ac-w-replace",
    "cipher-t<T>",
    "rosetta",
    "interlat",
    "interlat-norm",
    "interlat-trained",
    "kv",
    "latent-steps-m<M>",
    "kv-fuser",
)
"""The channels the controlled experiment runs (``cipher-t<T>`` at any T; ``cipher`` is T = 1;
``latent-steps`` is ``latent-steps-m8``; ``kv-fuser`` reads A's cache through a trained fuser)."""


@dataclass(frozen=True)
class Condition:
    """One channel as the experiment runs it: a method and, for AC, the depth it was chosen by.

    Attributes:
        method: A canonical games method (``ac-replace``, ``cipher-t0``, ...).
        depth: ``selected`` (on the selection pool) or ``paper`` (~0.8 of both
            models) for AC; empty otherwise.
        k: A's block (AC only).
        j: B's block (AC only).
        layers: B's layers that read A's cache (``kv``; ``None``: all), named by
            ``depth``: ``all``, ``kvcomm`` (KVComm's rule on the selection pool) or ``layers``.
    """

    method: str
    depth: str = ""
    k: int | None = None
    j: int | None = None
    layers: tuple[int, ...] | None = None

    @property
    def name(self) -> str:
        """How summaries and figures name it: ``ac-replace@paper``, ``nl``."""
        return f"{self.method}@{self.depth}" if self.depth else self.method

    @property
    def temperature(self) -> float | None:
        """CIPHER's temperature, or ``None`` for another channel."""
        if not self.method.startswith("cipher"):
            return None
        return 1.0 if self.method == "cipher" else float(self.method.removeprefix("cipher-t"))

    @property
    def latent_steps(self) -> int | None:
        """A's latent steps before B reads its cache: 0 for ``kv``, m for ``latent-steps-m<M>``; else None."""
        if self.method == "kv":
            return 0
        if not self.method.startswith("latent-steps"):
            return None
        return (
            DEFAULT_LATENT_STEPS
            if self.method == "latent-steps"
            else int(self.method.removeprefix("latent-steps-m"))
        )


def check_channel(name: str) -> str:
    """The canonical name of a channel the experiment runs.

    Raises:
        CommlibError: a channel it does not run, listing those it does.
    """
    resolved = canonical(name)
    if resolved == "latent-steps":
        resolved = f"latent-steps-m{DEFAULT_LATENT_STEPS}"
    base = "cipher-t<T>" if resolved.startswith("cipher") else resolved
    base = "latent-steps-m<M>" if resolved.startswith("latent-steps-m") else base
    if base not in THESIS_CHANNELS:
        raise CommlibError(
            f"the controlled experiment has no channel {name!r}; use {', '.join(THESIS_CHANNELS)}"
        )
    method(resolved)  # the registry knows it
    if (steps := Condition(resolved).latent_steps) is not None and resolved != "kv":
        check_latent_steps(steps)
    return resolved


@dataclass(frozen=True)
class SideNeeds:
    """What A must compute for a set of conditions (nothing more runs)."""

    ks: tuple[int, ...] = ()
    message: bool = False
    temperatures: tuple[float, ...] = ()
    kv_steps: int | None = None
    fused: bool = False

    @classmethod
    def of(cls, conditions: Sequence[Condition]) -> SideNeeds:
        """The union of what ``conditions`` read from A."""
        ks = sorted({c.k for c in conditions if c.method.startswith("ac") and c.k is not None})
        message = any(c.method in ("nl", "cipher-t0") or c.method.startswith("interlat") for c in conditions)
        temps = sorted({t for c in conditions if (t := c.temperature) is not None and t > 0})
        steps = [m for c in conditions if (m := c.latent_steps) is not None]
        fused = any(c.method == "kv-fuser" for c in conditions)
        return cls(tuple(ks), message, tuple(temps), max(steps) if steps else None, fused)


@dataclass
class SenderSide:
    """A's side of every channel, one entry per sender item (own messages and controls alike).

    Attributes:
        items: Whose ``sender`` A read.
        states: A's residual after block k at its last prompt token, ``[n, d_A]`` per k.
        trajectories: A's greedy message with its last-layer states (NL, CIPHER T = 0, Interlat).
        soft: CIPHER's expected-embedding messages per temperature T > 0.
        kv: A's KV cache over its message prompt and its latent steps (the most any condition
            takes; fewer are a prefix, :meth:`commlib.channels.kv.KVMessage.truncated`).
    """

    items: list[GameItem]
    states: dict[int, Float[Tensor, "n d_a"]] = field(default_factory=dict)
    trajectories: list[Trajectory] = field(default_factory=list)
    soft: dict[float, list[SoftMessage]] = field(default_factory=dict)
    kv: list[KVMessage] = field(default_factory=list)


def sender_side(
    sender: Model,
    receiver: Model,
    items: Sequence[GameItem],
    needs: SideNeeds,
    *,
    message_tokens: int = 32,
    backend: str = "nnsight",
    batch_size: int = 16,
) -> SenderSide:
    """Run A once for everything ``needs`` asks, on each item's sender prompt."""
    side = SenderSide(list(items))
    if needs.ks:
        rows: dict[int, list[Tensor]] = {k: [] for k in needs.ks}
        sb = get_backend(sender, backend)
        for start in range(0, len(items), batch_size):
            chunk = [it.sender for it in items[start : start + batch_size]]
            acts = sb.capture_layers(encode(sender, chunk), list(needs.ks))
            for k in needs.ks:
                rows[k].append(acts[k])
        side.states = {k: torch.cat(r) for k, r in rows.items()}
    prompts = [message_prompt(it) for it in items]
    if needs.message:
        side.trajectories = trajectory_messages(
            sender, prompts, max_tokens=message_tokens, batch_size=batch_size
        )
    for t in needs.temperatures:
        side.soft[t] = soft_messages(
            sender, receiver, prompts, temperature=t, max_tokens=message_tokens, batch_size=batch_size
        )
    if needs.kv_steps is not None:
        check_kv_pair(sender, receiver)
    if needs.kv_steps is not None or needs.fused:  # the fuser reads the prompt's cache, a prefix
        side.kv = kv_messages(sender, prompts, latent_steps=needs.kv_steps or 0, batch_size=batch_size)
    return side


def read(
    condition: Condition,
    items: Sequence[GameItem],
    side: SenderSide,
    sender: Model,
    receiver: Model,
    *,
    map: LinearMap | None = None,
    adapter: InterlatAdapter | None = None,
    max_new_tokens: int = 6,
    backend: str = "nnsight",
    batch_size: int = 16,
    fuser: KVFuser | None = None,
) -> list[Reading]:
    """B's readings of ``items``, row i carrying the message A wrote for ``side.items[i]``.

    ``side.items[i]`` is ``items[i]`` for the channel itself and another
    item's sender (:func:`commlib.tasks.pools.control_item`) for its content
    control; ``silent`` ignores it.

    Raises:
        CommlibError: sizes that do not match, or what the condition needs missing from ``side``.
    """
    if len(side.items) != len(items):
        raise CommlibError(f"{len(items)} items but {len(side.items)} sender items: pair them up")
    out: list[Reading] = []
    for start in range(0, len(items), batch_size):
        rows = slice(start, start + batch_size)
        out.extend(
            _read_chunk(
                condition,
                items[rows],
                side,
                rows,
                sender,
                receiver,
                map,
                adapter,
                max_new_tokens,
                backend,
                fuser,
            )
        )
    return out


def _read_chunk(
    c: Condition,
    items: Sequence[GameItem],
    side: SenderSide,
    rows: slice,
    sender: Model,
    receiver: Model,
    map: LinearMap | None,
    adapter: InterlatAdapter | None,
    max_new_tokens: int,
    backend: str,
    fuser: KVFuser | None = None,
) -> list[Reading]:
    replies = [it.reply for it in items]
    senders = side.items[rows]
    if c.method == "silent":
        return _read_text(receiver, [it.receiver for it in items], replies, max_new_tokens, backend)
    if c.method == "skyline":
        prompts = [
            SKYLINE_TEMPLATE.format(sender=s.sender, receiver=it.receiver)
            for s, it in zip(senders, items, strict=True)
        ]
        return _read_text(receiver, prompts, replies, max_new_tokens, backend)
    if c.method == "nl":
        texts = [t.text.strip() or "(nothing)" for t in _need(side.trajectories, rows, "A's messages")]
        prompts = [
            NL_TEMPLATE.format(message=m, receiver=it.receiver) for m, it in zip(texts, items, strict=True)
        ]
        return _read_text(receiver, prompts, replies, max_new_tokens, backend)
    if c.method.startswith("ac"):
        return _read_graft(c, items, side, rows, sender, receiver, map, max_new_tokens, backend)
    if (steps := c.latent_steps) is not None:
        messages = [m.truncated(steps) for m in _need(side.kv, rows, "A's KV caches")]
        batch = encode(receiver, [it.receiver for it in items], replies=replies)
        return read_kv(receiver, messages, batch, layers=c.layers, max_new_tokens=max_new_tokens)
    if c.method == "kv-fuser":
        if fuser is None:
            raise CommlibError("kv-fuser needs its fuser: train one on the selection pool first")
        batch = encode(receiver, [it.receiver for it in items], replies=replies)
        messages = _need(side.kv, rows, "A's KV caches")
        return read_fused(sender, receiver, fuser, messages, batch, max_new_tokens=max_new_tokens)
    if c.method == "rosetta":  # one prefill of A per prompt: computed here, not kept on the sender side
        prompts = [message_prompt(s) for s in senders]
        vectors = [v[None] for v in rosetta_vectors(sender, receiver, prompts, batch_size=len(prompts))[0]]
    else:
        vectors = _slot_vectors(c, side, rows, sender, receiver, adapter)
    embeds = [
        slot_embeddings(receiver, slot_template(it), vectors=v, reply=it.reply)
        for it, v in zip(items, vectors, strict=True)
    ]
    return receive_batch(receiver, embeds, max_new_tokens=max_new_tokens, batch_size=len(embeds))


def _need(values: list, rows: slice, what: str) -> list:
    chosen = values[rows]
    if not chosen:
        raise CommlibError(f"{what} were not computed: build the sender side with SideNeeds.of(conditions)")
    return chosen


def _slot_vectors(
    c: Condition,
    side: SenderSide,
    rows: slice,
    sender: Model,
    receiver: Model,
    adapter: InterlatAdapter | None,
) -> list[Tensor]:
    """What B reads in the message slot, per row."""
    temperature = c.temperature
    if temperature is not None and temperature > 0:
        if temperature not in side.soft:
            raise CommlibError(f"CIPHER at T = {temperature:g} was not computed for the sender side")
        return [m.vectors for m in side.soft[temperature][rows]]
    trajectories = _need(side.trajectories, rows, "A's messages")
    if temperature == 0:  # the one-hot limit: A's greedy tokens as B's embeddings (their shared twins)
        projection = vocab_projection(sender, receiver)
        return [token_embeddings(receiver, projection, t.token_ids) for t in trajectories]
    if c.method == "interlat-trained":
        if adapter is None:
            raise CommlibError("interlat-trained needs its adapter: train one on the selection pool first")
        with torch.no_grad():
            return [adapter.message(t.hidden.to(receiver.device)) for t in trajectories]
    return [as_receiver_inputs(t, receiver, rescale=c.method == "interlat-norm") for t in trajectories]


def _read_text(
    receiver: Model, prompts: list[str], replies: list[str], max_new_tokens: int, backend: str
) -> list[Reading]:
    """B's greedy answers to text prompts, no graft."""
    with final_states(receiver) as states:
        gen = get_backend(receiver, backend).generate(
            encode(receiver, prompts, replies=replies), None, Decoding(max_new_tokens=max_new_tokens)
        )
    return _readings(gen.texts, gen.first_logits, states[0])


def _read_graft(
    c: Condition,
    items: Sequence[GameItem],
    side: SenderSide,
    rows: slice,
    sender: Model,
    receiver: Model,
    map: LinearMap | None,
    max_new_tokens: int,
    backend: str,
) -> list[Reading]:
    """B's greedy answers with A's state at block k put into block j by f (through W for ``ac-w``)."""
    assert c.k is not None and c.j is not None, "AC conditions carry k and j"
    if c.k not in side.states:
        raise CommlibError(f"A's states at block {c.k} were not computed for the sender side")
    f = c.method.removeprefix("ac-w-").removeprefix("ac-")
    use_map = c.method.startswith("ac-w-")
    if use_map and map is None:
        raise CommlibError(f"{c.method} needs a map W for ({c.k}, {c.j})")
    a = side.states[c.k][rows]
    with final_states(receiver) as states:
        ex = communicate(
            sender,
            receiver,
            [s.sender for s in side.items[rows]],
            [it.receiver for it in items],
            GraftConfig(k=c.k, j=c.j, f=f),
            map=map if use_map else None,
            backend=backend,
            decoding=Decoding(max_new_tokens=max_new_tokens),
            receiver_replies=[it.reply for it in items],
            sender_states=a[:, None, :],
        )
    return _readings(ex.texts, ex.first_logits, states[0])


def _readings(texts: list[str], logits: Tensor, states: Tensor) -> list[Reading]:
    return [
        Reading(text=t, first_logits=lg.float().cpu(), final_state=s.float().cpu())
        for t, lg, s in zip(texts, logits, states, strict=True)
    ]


def distance(reading: Reading, alone: Reading) -> tuple[float, float]:
    """Where a reading moved B at the answer position, against B alone on the same item.

    Returns:
        ``(kl, shift)``: KL(B with the channel || B alone) of the next-token
        distributions, in nats, and the Euclidean distance between the two
        final states (divide by :func:`spread` for B's own units).
    """
    p = torch.log_softmax(reading.first_logits.double(), -1)
    q = torch.log_softmax(alone.first_logits.double(), -1)
    kl = float((p.exp() * (p - q)).sum())
    shift = float((reading.final_state.double() - alone.final_state.double()).norm())
    return max(kl, 0.0), shift


def spread(alone: Sequence[Reading]) -> float:
    """B's own item-to-item spread at the answer position: the RMS distance of its final states to their mean.

    Raises:
        CommlibError: fewer than two readings.
    """
    if len(alone) < 2:
        raise CommlibError("the spread needs B alone on at least two items")
    states = torch.stack([r.final_state.double() for r in alone])
    return float((states - states.mean(0)).norm(dim=-1).pow(2).mean().sqrt())
