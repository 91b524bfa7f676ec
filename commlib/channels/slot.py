"""The message slot: where a latent message goes in B's prompt, and how B reads it there.

A text message (``nl``) reaches B as :data:`NL_TEMPLATE` with A's words in
it. The latent channels (CIPHER, Interlat) put vectors in the same place:
B's formatted prompt is split at the ``{message}`` slot, each side embedded
by B's own table, and the message's vectors go in between
(:func:`slot_embeddings`). :func:`receive` is B's greedy answer to that.

Example:
    >>> from commlib.models import load_model
    >>> from commlib.tasks.games import countries
    >>> m = load_model("tiny-llama-random")
    >>> item = countries(1)[0]
    >>> embeds = slot_embeddings(m, slot_template(item), token_ids=[72, 105], reply=item.reply)
    >>> pre, post = prompt_parts(m, slot_template(item), item.reply)
    >>> embeds.shape[0] == len(pre) + 2 + len(post)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from commlib.errors import CommlibError
from commlib.models import Model
from commlib.prompts import format_prompt
from commlib.tasks.games import GameItem

NL_INSTRUCTION = "Write a short message to your partner that tells them the information above."
"""What A reads after its own prompt when it writes a message (``nl``, CIPHER and Interlat alike)."""
NL_TEMPLATE = "Your partner says: {message}\n{receiver}"
"""B's prompt with A's message: text for ``nl``, vectors in the ``{message}`` slot for the latent channels."""
MESSAGE_SLOT = "\u2063MESSAGE\u2063"
"""Marks where the message goes in the receiver's prompt before it is split."""


def message_prompt(item: GameItem) -> str:
    """What A reads when it writes a message for ``item``."""
    return f"{item.sender}\n{NL_INSTRUCTION}"


def slot_template(item: GameItem) -> str:
    """B's prompt for ``item`` as ``nl`` words it, with a ``{message}`` slot where A's message goes."""
    return NL_TEMPLATE.format(message="{message}", receiver=item.receiver)


def embed(model: Model, ids: Tensor) -> Tensor:
    """Input embeddings of token ids, as the model computes them (with its scale)."""
    return model.hf.get_input_embeddings()(ids)


def embedding_table(model: Model) -> Float[Tensor, "vocab d"]:
    """The input embedding table E (unscaled rows)."""
    weight = model.hf.get_input_embeddings().weight
    assert isinstance(weight, Tensor)
    return weight


def embedding_scale(model: Model) -> Tensor:
    """The factor the model multiplies embeddings by (Gemma: sqrt(d); others: 1)."""
    table = embedding_table(model)
    return torch.as_tensor(getattr(model.hf.get_input_embeddings(), "embed_scale", 1.0), dtype=table.dtype)


def next_logits(model: Model, embeds: Tensor, past: object) -> tuple[Tensor, object]:
    """One forward step on input embeddings: the last position's logits (float32) and the new KV cache."""
    out = model.hf(inputs_embeds=embeds, past_key_values=past, use_cache=True)
    return out.logits[:, -1].float(), out.past_key_values


def prompt_parts(receiver: Model, template: str, reply: str) -> tuple[Tensor, Tensor]:
    """Token ids of the receiver's formatted prompt before and after the message slot."""
    full = format_prompt(receiver, template.replace("{message}", MESSAGE_SLOT), reply=reply)
    if full.count(MESSAGE_SLOT) != 1:
        raise CommlibError("the receiver's template must hold exactly one {message}")
    before, after = full.split(MESSAGE_SLOT)
    tok = receiver.tokenizer
    pre = tok(before, return_tensors="pt", add_special_tokens=receiver.info.prompt_format != "chat")
    post = tok(after, return_tensors="pt", add_special_tokens=False)
    return pre["input_ids"][0], post["input_ids"][0]


def slot_embeddings(
    receiver: Model,
    template: str,
    *,
    vectors: Float[Tensor, "L d"] | None = None,
    token_ids: Sequence[int] | None = None,
    reply: str = "",
) -> Float[Tensor, "P d"]:
    """The receiver's formatted prompt as input embeddings, a message in ``template``'s ``{message}`` slot.

    Give either ``vectors`` (read as input embeddings; gradients flow through
    them) or ``token_ids`` (a text message, read as tokens).

    Raises:
        CommlibError: neither or both given, or a width the receiver does not have.
    """
    if (vectors is None) == (token_ids is None):
        raise CommlibError("give the message as vectors or as token_ids, not both")
    pre, post = (t.to(receiver.device) for t in prompt_parts(receiver, template, reply))
    if vectors is None:
        ids = torch.as_tensor(list(token_ids or []), dtype=torch.long, device=receiver.device)
        message = embed(receiver, ids)
    else:
        if vectors.shape[-1] != receiver.info.d_model:
            raise CommlibError(
                f"message width {vectors.shape[-1]} != {receiver.name}'s d_model {receiver.info.d_model}"
            )
        message = vectors.to(receiver.device, embed(receiver, pre[:1]).dtype)
    return torch.cat([embed(receiver, pre), message, embed(receiver, post)])


@torch.no_grad()
def receive(
    receiver: Model,
    template: str,
    *,
    vectors: Float[Tensor, "L d"] | None = None,
    token_ids: Sequence[int] | None = None,
    reply: str = "",
    max_new_tokens: int = 24,
) -> str:
    """The receiver's greedy answer with a message in ``template``'s ``{message}`` slot.

    Give either ``vectors`` (a latent message, read as input embeddings) or
    ``token_ids`` (a text message, read as tokens).

    Raises:
        CommlibError: neither or both given, or a width the receiver does not have.
    """
    embeds = slot_embeddings(receiver, template, vectors=vectors, token_ids=token_ids, reply=reply)
    return receive_embeds(receiver, embeds, max_new_tokens=max_new_tokens)


@torch.no_grad()
def receive_embeds(receiver: Model, embeds: Float[Tensor, "P d"], *, max_new_tokens: int = 24) -> str:
    """The receiver's greedy answer to a whole prompt given as input embeddings (:func:`receive`'s)."""
    logits, past = next_logits(receiver, embeds[None], None)
    eos = set(receiver.eos_token_ids())
    out: list[int] = []
    for _ in range(max_new_tokens):
        nxt = int(logits.argmax(-1))
        if nxt in eos:
            break
        out.append(nxt)
        token = embed(receiver, torch.tensor([[nxt]], device=receiver.device))
        logits, past = next_logits(receiver, token, past)
    return str(receiver.tokenizer.decode(out, skip_special_tokens=True))


def read_slot(receiver: Model, item: GameItem, vectors: Tensor, max_new_tokens: int) -> str:
    """B's greedy answer to ``item`` reading ``vectors`` as input embeddings in the message slot."""
    return receive(
        receiver, slot_template(item), vectors=vectors, reply=item.reply, max_new_tokens=max_new_tokens
    )


# --------------------------------------------------------------------------- #
# Batched: left-padded rows, their shared prefix run once, per-row EOS
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Reading:
    """B's greedy answer to one prompt given as input embeddings (:func:`receive_batch`).

    Attributes:
        text: The answer, as :func:`receive` decodes it.
        first_logits: ``[vocab]`` float32 logits that chose the first answer token.
        final_state: ``[d]`` float32 what the unembedding reads at that position
            (HF ``hidden_states[-1]`` at the last prompt position).
    """

    text: str
    first_logits: Float[Tensor, " vocab"]
    final_state: Float[Tensor, " d"]


def forward_rows(
    model: Model, embeds: Float[Tensor, "batch n d"], mask: Tensor, past: Any, *, hidden: bool = False
) -> tuple[Float[Tensor, "batch vocab"], Float[Tensor, "batch d"] | None, Any]:
    """One forward step of left-padded rows; ``mask`` covers the cached positions too.

    Position ids count each row's real tokens only. Returns the last
    position's logits (float32), its last-layer state when ``hidden`` (float32), and the cache.
    """
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -embeds.shape[1] :]
    out = model.hf(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=past,
        use_cache=True,
        output_hidden_states=hidden,
        logits_to_keep=1,
    )
    state = out.hidden_states[-1][:, -1].float() if hidden else None
    return out.logits[:, -1].float(), state, out.past_key_values


def shared_prefix_length(rows: Sequence[Float[Tensor, "P d"]]) -> int:
    """How many leading positions all ``rows`` hold equal, leaving each row at least one of its own."""
    first, n = rows[0], min(len(r) for r in rows) - 1
    for row in rows[1:]:
        n = int((row[:n] == first[:n]).all(-1).long().cumprod(0).sum()) if n > 0 else 0
    return max(n, 0)


def prefill_rows(
    model: Model, rows: Sequence[Float[Tensor, "P d"]], *, hidden: bool = False
) -> tuple[Float[Tensor, "batch vocab"], Float[Tensor, "batch d"] | None, Any, Tensor]:
    """The prompts ``rows`` (input embeddings) in one left-padded batch, their shared prefix run once.

    The prefix's KV cache is repeated over the rows; each row's own positions
    follow it, left-padded with masked zero rows (the padding sits between
    the prefix and the row, as in :meth:`commlib.backends.Backend.generate_shared_prefix`).

    Returns:
        :func:`forward_rows`'s logits, state and cache at each row's last
        position, and the attention mask so far.
    """
    device = model.device
    shared = shared_prefix_length(rows) if len(rows) > 1 else 0
    past = None
    if shared:
        _, _, past = forward_rows(model, rows[0][None, :shared].to(device), _ones(1, shared, device), None)
        past.batch_repeat_interleave(len(rows))
    rests = [r[shared:].to(device) for r in rows]
    width = max(len(r) for r in rests)
    embeds = rests[0].new_zeros(len(rows), width, rests[0].shape[-1])
    mask = torch.zeros(len(rows), shared + width, dtype=torch.long, device=device)
    mask[:, :shared] = 1
    for i, rest in enumerate(rests):
        embeds[i, width - len(rest) :] = rest
        mask[i, shared + width - len(rest) :] = 1
    logits, state, past = forward_rows(model, embeds, mask, past, hidden=hidden)
    return logits, state, past, mask


def _ones(rows: int, n: int, device: torch.device) -> Tensor:
    return torch.ones(rows, n, dtype=torch.long, device=device)


def keep_rows(past: Any, keep: Tensor, *tensors: Tensor) -> list[Tensor]:
    """Drop the batch rows not in ``keep`` from ``past`` (in place) and from each of ``tensors``."""
    past.batch_select_indices(keep)
    return [t[keep] for t in tensors]


def greedy_rows(
    model: Model,
    logits: Float[Tensor, "batch vocab"],
    state: Float[Tensor, "batch d"] | None,
    past: Any,
    mask: Tensor,
    max_tokens: int,
) -> tuple[list[list[int]], list[list[Tensor]]]:
    """Greedy tokens of each row after a prefill, up to (not including) its EOS; rows at EOS leave the batch.

    Returns:
        Each row's tokens and, when ``state`` is given, the last-layer state
        that chose each of them.
    """
    eos = torch.tensor(model.eos_token_ids(), device=logits.device)
    rows = torch.arange(len(logits), device=logits.device)
    tokens: list[list[int]] = [[] for _ in range(len(logits))]
    states: list[list[Tensor]] = [[] for _ in range(len(logits))]
    for step in range(max_tokens):
        nxt = logits.argmax(-1)
        live = ~torch.isin(nxt, eos)
        if not bool(live.any()):
            break
        if not bool(live.all()):
            rows, nxt, mask, *rest = keep_rows(
                past, live.nonzero().squeeze(-1), rows, nxt, mask, *_opt(state)
            )
            state = rest[0] if rest else None
        for i, (row, token) in enumerate(zip(rows.tolist(), nxt.tolist(), strict=True)):
            tokens[row].append(token)
            if state is not None:
                states[row].append(state[i])
        if step == max_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits, state, past = forward_rows(
            model, embed(model, nxt[:, None]), mask, past, hidden=state is not None
        )
    return tokens, states


def _opt(t: Tensor | None) -> list[Tensor]:
    return [] if t is None else [t]


@torch.no_grad()
def receive_batch(
    receiver: Model,
    prompts: Sequence[Float[Tensor, "P d"]],
    *,
    max_new_tokens: int = 24,
    batch_size: int = 16,
) -> list[Reading]:
    """:func:`receive` for many prompts given as input embeddings (e.g. :func:`slot_embeddings`), in batches.

    Each batch of ``batch_size`` is left-padded and runs the positions all
    its rows share (B's prompt up to the message slot) once
    (:func:`prefill_rows`); rows decode greedily until their own EOS. Same
    answers as :func:`receive` on each prompt alone (tested).
    """
    readings: list[Reading] = []
    for start in range(0, len(prompts), batch_size):
        logits, state, past, mask = prefill_rows(receiver, prompts[start : start + batch_size], hidden=True)
        assert state is not None
        tokens, _ = greedy_rows(receiver, logits, None, past, mask, max_new_tokens)
        texts = receiver.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        readings += [Reading(str(t), lg, s) for t, lg, s in zip(texts, logits, state, strict=True)]
    return readings


def read_slots(
    receiver: Model,
    items: Sequence[GameItem],
    vectors_list: Sequence[Tensor],
    max_new_tokens: int,
    batch_size: int = 16,
) -> list[Reading]:
    """:func:`read_slot` for many items at once: B reads each item's ``vectors`` in its message slot."""
    prompts = [
        slot_embeddings(receiver, slot_template(item), vectors=v, reply=item.reply)
        for item, v in zip(items, vectors_list, strict=True)
    ]
    return receive_batch(receiver, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
