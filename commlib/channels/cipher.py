"""CIPHER (Pham et al., ICLR 2024): messages as expected token embeddings.

The sender never samples. At each step it turns its next-token distribution
``p = softmax(logits / T)`` into ``p @ E`` (its input embedding table), feeds
that vector back as its next input, and stops when the nearest vocabulary
embedding is an end-of-sequence token. The receiver reads the same
distributions through its own table (``p @ E_B``) as input embeddings placed
where a text message would go (:mod:`commlib.channels.slot`). A pair that
tokenizes differently reads them through the tokens the two vocabularies
share, renormalised (:mod:`commlib.channels.vocab`; refused when they share
too few); the mass outside the overlap is kept per step (``outside``).

``T -> 0`` makes every ``p`` one-hot, so the message is the embeddings of
the sender's greedy text and the receiver answers exactly as when it reads
those tokens (:func:`commlib.channels.slot.receive` with ``token_ids``;
tested). Pham et al.'s debate over this channel is the reasoning method
``cipher-debate`` (:mod:`commlib.protocols.debate`).

Example:
    >>> from commlib.models import load_model
    >>> m = load_model("tiny-llama-random")
    >>> msg = soft_message(m, m, "Alice is at the Eiffel Tower.", temperature=0.5, max_tokens=3)
    >>> msg.vectors.shape[0] <= 3, len(msg.nearest_tokens) == msg.vectors.shape[0]
    (True, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from commlib.channels.slot import (
    embed,
    embedding_scale,
    embedding_table,
    forward_rows,
    keep_rows,
    next_logits,
    prefill_rows,
)
from commlib.channels.vocab import SharedVocabulary, project_embed, vocab_projection
from commlib.errors import CommlibError
from commlib.models import Model
from commlib.prompts import encode


@dataclass(frozen=True)
class SoftMessage:
    """A CIPHER message.

    Attributes:
        vectors: ``[L, d_B]`` what the receiver reads, ``p_t @ E_B``.
        probs: ``[L, vocab]`` the sender's distributions ``p_t``.
        nearest_ids: ``[L]`` nearest vocabulary embedding of each sender vector (for display).
        nearest_tokens: The same, decoded.
        temperature: T.
        outside: ``[L]`` the mass of each ``p_t`` outside the tokens A and B share
            (zeros with a shared tokenizer; :mod:`commlib.channels.vocab`).
    """

    vectors: Float[Tensor, "L d"]
    probs: Float[Tensor, "L vocab"]
    nearest_ids: list[int]
    nearest_tokens: list[str]
    temperature: float
    outside: Float[Tensor, " L"] | None = None

    @property
    def text(self) -> str:
        """Nearest-neighbour decoding of the whole message."""
        return "".join(self.nearest_tokens)


def _check(sender: Model, receiver: Model, temperature: float) -> SharedVocabulary:
    """How A's distributions reach B (the identity for a shared tokenizer), after checking the temperature."""
    if temperature < 0:
        raise CommlibError(f"temperature must be >= 0, got {temperature}")
    return vocab_projection(sender, receiver)


def nearest_token_ids(model: Model, vectors: Float[Tensor, "L d"]) -> list[int]:
    """Nearest vocabulary embedding of each vector (as the model reads it, scale included), for display."""
    table = embedding_table(model).float()
    return torch.cdist(vectors.float() / float(embedding_scale(model)), table).argmin(-1).tolist()


def nearest_tokens(model: Model, vectors: Float[Tensor, "L d"]) -> list[str]:
    """:func:`nearest_token_ids`, each decoded on its own."""
    return [str(model.tokenizer.decode([i])) for i in nearest_token_ids(model, vectors)]


@torch.no_grad()
def soft_message(
    sender: Model,
    receiver: Model,
    prompt: str | Float[Tensor, "P d"],
    *,
    temperature: float = 1.0,
    max_tokens: int = 48,
    soft_steps: int | None = None,
) -> SoftMessage:
    """The sender's CIPHER message for ``prompt``, one vector per step.

    Args:
        sender: Writes the message.
        receiver: Reads it (``vectors`` are ``p @ E_receiver``).
        prompt: The full instruction as text, or as the sender's input embeddings
            (e.g. :func:`commlib.channels.slot.slot_embeddings` with another message in it).
        temperature: T; ``0`` is the one-hot limit: greedy text as embeddings.
        max_tokens: At most this many steps.
        soft_steps: Only the first ``soft_steps`` steps are CIPHER's; from
            then on the sender feeds back the embedding of its argmax token
            (greedy decoding, continuing from the soft steps' cache) and the
            message ends when that token is EOS. Those steps' ``probs`` are
            one-hot, so their ``vectors`` are the receiver's embeddings of the
            tokens: the rest of the message as text. ``None``: every step soft.

    Raises:
        CommlibError: vocabularies that overlap too little, or a negative temperature or soft_steps.
    """
    projection = _check(sender, receiver, temperature)
    if soft_steps is not None and soft_steps < 0:
        raise CommlibError(f"soft_steps must be >= 0, got {soft_steps}")
    tok = sender.tokenizer
    if isinstance(prompt, str):
        embeds = embed(sender, encode(sender, [prompt]).input_ids.to(sender.device))
    else:
        embeds = prompt.to(sender.device)[None]
    logits, past = next_logits(sender, embeds, None)
    table, scale = embedding_table(sender), embedding_scale(sender)
    eos = set(sender.eos_token_ids())
    probs: list[Tensor] = []
    nearest: list[int] = []
    for step in range(max_tokens):
        hard = soft_steps is not None and step >= soft_steps
        if temperature == 0 or hard:
            p = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        else:
            p = torch.softmax(logits / temperature, dim=-1)
        expected = p.to(table.dtype) @ table  # [1, d_A], before the model's embedding scale
        near = int(logits.argmax(-1)) if hard else nearest_token_ids(sender, expected * scale)[0]
        if near in eos:
            break
        probs.append(p[0])
        nearest.append(near)
        logits, past = next_logits(sender, (expected * scale)[:, None, :], past)
    vocab = logits.shape[-1]
    stacked = torch.stack(probs) if probs else torch.zeros(0, vocab, device=logits.device)
    return SoftMessage(
        vectors=project_embed(receiver, projection, stacked),
        probs=stacked,
        nearest_ids=nearest,
        nearest_tokens=[str(tok.decode([i])) for i in nearest],
        temperature=temperature,
        outside=projection.outside(stacked).cpu(),
    )


def _message(
    sender: Model,
    receiver: Model,
    projection: SharedVocabulary,
    probs: list[Tensor],
    nearest: list[int],
    t: float,
    vocab: int,
) -> SoftMessage:
    """A :class:`SoftMessage` from the sender's step distributions (over ``vocab``) and nearest tokens."""
    stacked = torch.stack(probs) if probs else torch.zeros(0, vocab, device=sender.device)
    tokens = [str(sender.tokenizer.decode([i])) for i in nearest]
    vectors = project_embed(receiver, projection, stacked)
    return SoftMessage(vectors, stacked, nearest, tokens, t, projection.outside(stacked).cpu())


@torch.no_grad()
def soft_messages(
    sender: Model,
    receiver: Model,
    prompts: Sequence[str],
    *,
    temperature: float,
    max_tokens: int = 48,
    batch_size: int = 16,
) -> list[SoftMessage]:
    """:func:`soft_message` (text prompts, every step soft) for many prompts, in batches.

    Each batch is left-padded (the positions all its prompts share run once)
    and a row leaves it when its nearest token is EOS, as :func:`soft_message`
    decides: the same messages as one prompt at a time (tested).

    Raises:
        CommlibError: vocabularies that overlap too little, or a negative temperature.
    """
    projection = _check(sender, receiver, temperature)
    out: list[SoftMessage] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        out += _soft_batch(sender, receiver, projection, chunk, temperature, max_tokens)
    return out


def _soft_batch(
    sender: Model,
    receiver: Model,
    projection: SharedVocabulary,
    prompts: Sequence[str],
    temperature: float,
    max_tokens: int,
) -> list[SoftMessage]:
    """One batch of :func:`soft_messages`."""
    batch = encode(sender, prompts)
    rows = [
        embed(sender, ids[m.bool()]) for ids, m in zip(batch.input_ids, batch.attention_mask, strict=True)
    ]
    logits, _, past, mask = prefill_rows(sender, rows)
    vocab = logits.shape[-1]
    table, scale = embedding_table(sender), embedding_scale(sender)
    eos = torch.tensor(sender.eos_token_ids(), device=logits.device)
    live = torch.arange(len(rows), device=logits.device)
    probs: list[list[Tensor]] = [[] for _ in rows]
    nearest: list[list[int]] = [[] for _ in rows]
    for step in range(max_tokens):
        if temperature == 0:
            p = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        else:
            p = torch.softmax(logits / temperature, dim=-1)
        sent = (p.to(table.dtype) @ table) * scale  # [rows, d_A], as the sender reads it
        near = torch.tensor(nearest_token_ids(sender, sent), device=logits.device)
        going = ~torch.isin(near, eos)
        if not bool(going.any()):
            break
        if not bool(going.all()):
            live, p, sent, near, mask = keep_rows(
                past, going.nonzero().squeeze(-1), live, p, sent, near, mask
            )
        for i, row in enumerate(live.tolist()):
            probs[row].append(p[i])
            nearest[row].append(int(near[i]))
        if step == max_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits, _, past = forward_rows(sender, sent[:, None, :], mask, past)
    return [
        _message(sender, receiver, projection, p, n, temperature, vocab)
        for p, n in zip(probs, nearest, strict=True)
    ]
