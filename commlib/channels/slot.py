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
    embeds = slot_embeddings(receiver, template, vectors=vectors, token_ids=token_ids, reply=reply)[None]
    logits, past = next_logits(receiver, embeds, None)
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
