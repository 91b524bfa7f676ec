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
:func:`cipher_debate` is Pham et al.'s debate, the reasoning method
``cipher-debate``.

Example:
    >>> from commlib.models import load_model
    >>> m = load_model("tiny-llama-random")
    >>> msg = soft_message(m, m, "Alice is at the Eiffel Tower.", temperature=0.5, max_tokens=3)
    >>> msg.vectors.shape[0] <= 3, len(msg.nearest_tokens) == msg.vectors.shape[0]
    (True, True)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from commlib.errors import CommlibError
from commlib.models import Model
from commlib.prompts import encode, format_prompt

if TYPE_CHECKING:
    from commlib.methods.reasoning import ReasoningConfig, ReasoningOutput
    from commlib.tasks.reasoning import ReasoningItem

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


def nearest_token_ids(model: Model, vectors: Float[Tensor, "L d"]) -> list[int]:
    """Nearest vocabulary embedding of each vector (as the model reads it, scale included), for display."""
    table = _table(model).float()
    return torch.cdist(vectors.float() / float(_scale(model)), table).argmin(-1).tolist()


def nearest_tokens(model: Model, vectors: Float[Tensor, "L d"]) -> list[str]:
    """:func:`nearest_token_ids`, each decoded on its own."""
    return [str(model.tokenizer.decode([i])) for i in nearest_token_ids(model, vectors)]


def _step(model: Model, embeds: Tensor, past: object) -> tuple[Tensor, object]:
    out = model.hf(inputs_embeds=embeds, past_key_values=past, use_cache=True)
    return out.logits[:, -1].float(), out.past_key_values


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
        prompt: The full instruction as text, or as the sender's input
            embeddings (e.g. :func:`slot_embeddings` with another message in it).
        temperature: T; ``0`` is the one-hot limit: greedy text as embeddings.
        max_tokens: At most this many steps.
        soft_steps: Only the first ``soft_steps`` steps are CIPHER's; from
            then on the sender feeds back the embedding of its argmax token
            (greedy decoding, continuing from the soft steps' cache) and the
            message ends when that token is EOS. Those steps' ``probs`` are
            one-hot, so their ``vectors`` are the receiver's embeddings of the
            tokens: the rest of the message as text. ``None``: every step soft.

    Raises:
        CommlibError: a vocabulary the receiver does not share, or a negative temperature or soft_steps.
    """
    check_shared_vocabulary(sender, receiver)
    if temperature < 0:
        raise CommlibError(f"temperature must be >= 0, got {temperature}")
    if soft_steps is not None and soft_steps < 0:
        raise CommlibError(f"soft_steps must be >= 0, got {soft_steps}")
    tok = sender.tokenizer
    if isinstance(prompt, str):
        embeds = _embed(sender, encode(sender, [prompt]).input_ids.to(sender.device))
    else:
        embeds = prompt.to(sender.device)[None]
    logits, past = _step(sender, embeds, None)
    table, scale = _table(sender), _scale(sender)
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
    return torch.cat([_embed(receiver, pre), message, _embed(receiver, post)])


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
    embeds = slot_embeddings(receiver, template, vectors=vectors, token_ids=token_ids, reply=reply)[None]
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


# --------------------------------------------------------------------------- #
# Debate (Pham et al.'s setting): nld with CIPHER messages
# --------------------------------------------------------------------------- #

DEBATE_TEMPERATURES = (1.75, 0.15)
"""(A, B) for ``cipher-debate``: one high, one low (Pham et al.); B, the low one, gives the final answer."""


def cipher_debate(temperatures: tuple[float, float] = DEBATE_TEMPERATURES) -> Callable[..., ReasoningOutput]:
    """The reasoning method ``cipher-debate``: ``nld`` with every answer sent as a CIPHER message.

    Same prompts and rounds (``cfg.rounds``) as ``nld``. Each agent writes a
    CIPHER message at its own temperature (A at ``temperatures[0]``, B at
    ``temperatures[1]``; ``cfg.a_temperature`` is not used); after the first
    round it reads the other agent's last message, as input embeddings, where
    ``nld``'s debate prompt puts the text. Messages are shown by
    nearest-token decoding, and the final answer is B's last message so
    decoded (A's when B's has no answer), as in ``nld``. At temperature 0 for
    both, every message is the agent's greedy text and the other reads its
    exact tokens (``nld`` decodes and re-tokenises them). As ``nld`` strips
    the text it passes on, steps whose nearest token is blank are dropped at
    both ends of what the other reads.

    Raises:
        CommlibError: a pair without a shared vocabulary, or fewer than one round (at run time).
    """

    def method(
        item: ReasoningItem, sender: Model, receiver: Model, cfg: ReasoningConfig, map: object = None
    ) -> ReasoningOutput:
        from commlib.methods.reasoning import Turn, debate_output, debate_prompt, question_prompt

        check_shared_vocabulary(sender, receiver)
        if cfg.rounds < 1:
            raise CommlibError(f"rounds must be at least 1, got {cfg.rounds}")
        prompt, template = question_prompt(item), debate_prompt(item, "{message}")
        agents = {"a": (sender, "b", temperatures[0]), "b": (receiver, "a", temperatures[1])}
        inbox: dict[str, Tensor] = {}  # per reader: the other's last message, in the reader's embeddings
        turns: list[Turn] = []
        for r in range(cfg.rounds):
            previous = dict(inbox)
            for agent, (model, other, temperature) in agents.items():
                start = time.perf_counter()
                read = prompt if r == 0 else slot_embeddings(model, template, vectors=previous[agent])
                reader = agents[other][0]
                msg = soft_message(
                    model, reader, read, temperature=temperature, max_tokens=cfg.max_new_tokens
                )
                inbox[other] = msg.vectors[_stripped(model, msg.nearest_ids)]
                n_prompt = encode(model, [prompt]).length if r == 0 else len(read)
                text = str(model.tokenizer.decode(msg.nearest_ids, skip_special_tokens=True))
                turns.append(Turn(agent, text, n_prompt, len(msg.nearest_ids), time.perf_counter() - start))
        return debate_output(item, turns, cfg.rounds)

    return method


def _stripped(model: Model, ids: Sequence[int]) -> slice:
    """The steps of a message left when those whose token decodes to blank are dropped at both ends."""
    blank = [not str(model.tokenizer.decode([i], skip_special_tokens=True)).strip() for i in ids]
    start = next((n for n, b in enumerate(blank) if not b), len(ids))
    end = len(ids) - next((n for n, b in enumerate(reversed(blank)) if not b), len(ids))
    return slice(start, max(start, end))
