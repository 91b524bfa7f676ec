"""CIPHER (Pham et al., ICLR 2024): messages as expected token embeddings.

The sender never samples. At each step it turns its next-token distribution
``p = softmax(logits / T)`` into ``p @ E`` (its input embedding table), feeds
that vector back as its next input, and stops when the nearest vocabulary
embedding is an end-of-sequence token. The receiver reads the same
distributions through its own table (``p @ E_B``; the pair must share a
tokenizer) as input embeddings placed where a text message would go, inside
the same prompt the ``nl`` method uses.

``T -> 0`` makes every ``p`` one-hot, so the message is the embeddings of
the sender's greedy text and the receiver answers exactly as when it reads
those tokens (:func:`receive` with ``token_ids``; tested).

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

from commlib.errors import CommlibError
from commlib.models import Model
from commlib.prompts import encode, format_prompt

MESSAGE_SLOT = "\u2063MESSAGE\u2063"
"""Marks where the message goes in the receiver's prompt before it is split."""


@dataclass(frozen=True)
class SoftMessage:
    """A CIPHER message.

    Attributes:
        vectors: ``[L, d_B]`` what the receiver reads, ``p_t @ E_B``.
        probs: ``[L, vocab]`` the sender's distributions ``p_t``.
        nearest_ids: ``[L]`` nearest vocabulary embedding of each sender vector (for display).
        nearest_tokens: The same, decoded.
        temperature: T.
    """

    vectors: Float[Tensor, "L d"]
    probs: Float[Tensor, "L vocab"]
    nearest_ids: list[int]
    nearest_tokens: list[str]
    temperature: float

    @property
    def text(self) -> str:
        """Nearest-neighbour decoding of the whole message."""
        return "".join(self.nearest_tokens)


def check_shared_vocabulary(sender: Model, receiver: Model) -> None:
    """CIPHER multiplies the sender's probabilities into the receiver's table: the vocabularies must match.

    Raises:
        CommlibError: different tokenizers, naming the pairs that work.
    """
    if sender is receiver:
        return
    same = sender.tokenizer.get_vocab() == receiver.tokenizer.get_vocab()
    if not same or _table(sender).shape[0] != _table(receiver).shape[0]:
        raise CommlibError(
            f"CIPHER needs a shared vocabulary; {sender.name} and {receiver.name} tokenize differently. "
            "Use a model with itself, or qwen2.5-coder-0.5b with qwen2.5-coder-1.5b"
        )


def _embed(model: Model, ids: Tensor) -> Tensor:
    """Input embeddings of token ids, as the model computes them (with its scale)."""
    return model.hf.get_input_embeddings()(ids)


def _table(model: Model) -> Float[Tensor, "vocab d"]:
    """The input embedding table E (unscaled rows)."""
    weight = model.hf.get_input_embeddings().weight
    assert isinstance(weight, Tensor)
    return weight


def _scale(model: Model) -> Tensor:
    """The factor the model multiplies embeddings by (Gemma: sqrt(d); others: 1)."""
    table = _table(model)
    return torch.as_tensor(getattr(model.hf.get_input_embeddings(), "embed_scale", 1.0), dtype=table.dtype)


def _soft_embed(model: Model, probs: Float[Tensor, "... vocab"]) -> Float[Tensor, "... d"]:
    """``probs @ E`` with the model's own embedding scale."""
    table = _table(model)
    return (probs.to(table.dtype) @ table) * _scale(model)


def _step(model: Model, embeds: Tensor, past: object) -> tuple[Tensor, object]:
    out = model.hf(inputs_embeds=embeds, past_key_values=past, use_cache=True)
    return out.logits[:, -1].float(), out.past_key_values


@torch.no_grad()
def soft_message(
    sender: Model,
    receiver: Model,
    prompt: str,
    *,
    temperature: float = 1.0,
    max_tokens: int = 48,
) -> SoftMessage:
    """The sender's CIPHER message for ``prompt`` (already the full instruction), one vector per step.

    ``temperature=0`` is the one-hot limit: greedy text as embeddings.

    Raises:
        CommlibError: a vocabulary the receiver does not share, or a negative temperature.
    """
    check_shared_vocabulary(sender, receiver)
    if temperature < 0:
        raise CommlibError(f"temperature must be >= 0, got {temperature}")
    tok = sender.tokenizer
    ids = encode(sender, [prompt]).input_ids.to(sender.device)
    logits, past = _step(sender, _embed(sender, ids), None)
    table, scale = _table(sender), _scale(sender)
    eos = set(sender.eos_token_ids())
    probs: list[Tensor] = []
    nearest: list[int] = []
    for _ in range(max_tokens):
        if temperature == 0:
            p = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        else:
            p = torch.softmax(logits / temperature, dim=-1)
        expected = p.to(table.dtype) @ table  # [1, d_A], before the model's embedding scale
        near = int(torch.cdist(expected.float(), table.float()).argmin())
        if near in eos:
            break
        probs.append(p[0])
        nearest.append(near)
        logits, past = _step(sender, (expected * scale)[:, None, :], past)
    vocab = logits.shape[-1]
    stacked = torch.stack(probs) if probs else torch.zeros(0, vocab, device=logits.device)
    return SoftMessage(
        vectors=_soft_embed(receiver, stacked),
        probs=stacked,
        nearest_ids=nearest,
        nearest_tokens=[str(tok.decode([i])) for i in nearest],
        temperature=temperature,
    )


def _prompt_parts(receiver: Model, template: str, reply: str) -> tuple[Tensor, Tensor]:
    """Token ids of the receiver's prompt before and after the message slot."""
    full = format_prompt(receiver, template.replace("{message}", MESSAGE_SLOT), reply=reply)
    if full.count(MESSAGE_SLOT) != 1:
        raise CommlibError("the receiver's template must hold exactly one {message}")
    before, after = full.split(MESSAGE_SLOT)
    tok = receiver.tokenizer
    pre = tok(before, return_tensors="pt", add_special_tokens=receiver.info.prompt_format != "chat")
    post = tok(after, return_tensors="pt", add_special_tokens=False)
    return pre["input_ids"][0], post["input_ids"][0]


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

    Give either ``vectors`` (a CIPHER message, read as input embeddings) or
    ``token_ids`` (a text message, read as tokens).

    Raises:
        CommlibError: neither or both given, or a width the receiver does not have.
    """
    if (vectors is None) == (token_ids is None):
        raise CommlibError("give the message as vectors or as token_ids, not both")
    pre, post = (t.to(receiver.device) for t in _prompt_parts(receiver, template, reply))
    if vectors is None:
        ids = torch.as_tensor(list(token_ids or []), dtype=torch.long, device=receiver.device)
        message = _embed(receiver, ids)
    else:
        if vectors.shape[-1] != receiver.info.d_model:
            raise CommlibError(
                f"message width {vectors.shape[-1]} != {receiver.name}'s d_model {receiver.info.d_model}"
            )
        message = vectors.to(receiver.device, _embed(receiver, pre[:1]).dtype)
    embeds = torch.cat([_embed(receiver, pre), message, _embed(receiver, post)])[None]
    logits, past = _step(receiver, embeds, None)
    eos = set(receiver.eos_token_ids())
    out: list[int] = []
    for _ in range(max_new_tokens):
        nxt = int(logits.argmax(-1))
        if nxt in eos:
            break
        out.append(nxt)
        logits, past = _step(receiver, _embed(receiver, torch.tensor([[nxt]], device=receiver.device)), past)
    return str(receiver.tokenizer.decode(out, skip_special_tokens=True))
