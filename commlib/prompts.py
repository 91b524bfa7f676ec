"""Prompt formats, tokenised batches, and the position that carries a message.

Chat models get their chat template (one user turn, generation prompt added);
base models get a plain question/answer format. ``raw=True`` skips formatting.
An optional ``reply`` opens the model's answer (e.g. ``"Alice is located
in"``): it is part of the prompt, so the next token is the answer itself.

Two positions can carry a message (a parameter for capture and injection):

* ``"last"``: the last prompt token. Under a chat template it is a template
  token (the assistant header), as in the paper's implementation.
* ``"content"``: the last token of the user's own text, before the template's
  closing tokens.

:func:`message_span` widens either to the ``n`` positions ending there (the
paper's all-token ablation grafts every position, aligned from the end).

Example:
    >>> from commlib.models import load_model
    >>> model = load_model("tiny-llama-random")
    >>> batch = encode(model, ["Hi", "Hello there"])
    >>> batch.input_ids.shape[0], bool(batch.attention_mask[0, 0])
    (2, False)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from commlib.config import POSITIONS as POSITIONS
from commlib.config import Position as Position
from commlib.errors import CommlibError, EmptyPromptError
from commlib.models import Model

PLAIN_TEMPLATE = "Question: {text}\nAnswer:"
"""The plain format used for base models (no chat template)."""


@dataclass(frozen=True)
class Batch:
    """A left-padded batch of token ids.

    Attributes:
        input_ids: ``[batch, seq]`` token ids, padding on the left.
        attention_mask: ``[batch, seq]`` 1 for real tokens, 0 for padding.
    """

    input_ids: Int[Tensor, "batch seq"]
    attention_mask: Int[Tensor, "batch seq"]

    @property
    def position_ids(self) -> Int[Tensor, "batch seq"]:
        """Positions counted from each row's first real token (padding gets 0)."""
        return (self.attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device))


def check_prompts(texts: Sequence[str], role: str = "") -> None:
    """Refuse a single string, an empty list, and empty or blank prompts.

    Args:
        texts: The prompts.
        role: Whose prompts they are (``"sender"``, ``"receiver"``), named in the message.

    Example:
        >>> check_prompts(["Where is Alice?", " "], "receiver")
        Traceback (most recent call last):
        ...
        commlib.errors.EmptyPromptError: the receiver's prompt 1 is empty: give it some text

    Raises:
        EmptyPromptError: an empty list, or a prompt without text.
    """
    if isinstance(texts, str):
        raise TypeError("pass a list of prompts, not a single string")
    whose = f"the {role}'s prompt" if role else "prompt"
    if not texts:
        raise EmptyPromptError(f"no {role + ' ' if role else ''}prompts given: pass at least one prompt")
    for i, text in enumerate(texts):
        if not text or not text.strip():
            raise EmptyPromptError(f"{whose} {i} is empty: give it some text")


def format_prompt(model: Model, text: str, *, raw: bool = False, reply: str = "") -> str:
    """Wrap ``text`` in the model's prompt format (chat template or plain Q/A).

    Args:
        model: Whose format to use.
        text: The user's text.
        raw: Return ``text + reply`` unformatted.
        reply: Start of the model's answer, appended after the generation
            prompt (after ``"Answer:"`` and a space in the plain format).
    """
    if raw:
        return text + reply
    if model.info.prompt_format == "chat":
        out = model.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        return str(out) + reply
    return PLAIN_TEMPLATE.format(text=text) + (f" {reply}" if reply else "")


def _replies(texts: Sequence[str], replies: Sequence[str] | None) -> list[str]:
    if replies is None:
        return [""] * len(texts)
    if isinstance(replies, str) or len(replies) != len(texts):
        raise CommlibError(f"pass one reply per prompt ({len(texts)} prompts); got {replies!r}")
    return list(replies)


def encode(
    model: Model, texts: Sequence[str], *, raw: bool = False, replies: Sequence[str] | None = None
) -> Batch:
    """Format and tokenise prompts into one left-padded batch.

    Args:
        model: Whose tokenizer and prompt format to use.
        texts: The prompts.
        raw: Skip the prompt format.
        replies: Optional start of each answer (see :func:`format_prompt`).

    Raises:
        EmptyPromptError: a prompt is empty or the list is.
    """
    check_prompts(texts)
    formatted = [
        format_prompt(model, t, raw=raw, reply=r)
        for t, r in zip(texts, _replies(texts, replies), strict=True)
    ]
    enc = model.tokenizer(
        formatted,
        return_tensors="pt",
        padding=True,
        add_special_tokens=raw or model.info.prompt_format != "chat",
    )
    return Batch(enc["input_ids"], enc["attention_mask"]).to(model.device)


def split_shared_prefix(batch: Batch, pad_id: int) -> tuple[Int[Tensor, "1 prefix"], Batch]:
    """Split a left-padded batch into the tokens every row starts with and the rest of each row.

    The prefix is the longest run of token ids that all rows share from their
    first real token on, leaving each row at least one token of its own. The
    rest is a new left-padded batch whose attention mask covers the prefix
    too (ones for it, then each row's padding and tokens), the layout
    :meth:`commlib.backends.Backend.generate` takes after a cached prefix.

    Example:
        >>> b = Batch(torch.tensor([[0, 5, 6, 7], [5, 6, 8, 9]]), torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))
        >>> prefix, rest = split_shared_prefix(b, pad_id=0)
        >>> prefix.tolist(), rest.input_ids.tolist(), rest.attention_mask.tolist()
        ([[5, 6]], [[0, 7], [8, 9]], [[1, 1, 0, 1], [1, 1, 1, 1]])
    """
    rows = [ids[mask.bool()] for ids, mask in zip(batch.input_ids, batch.attention_mask, strict=True)]
    first = rows[0]
    shared = min(len(r) for r in rows) - 1
    for row in rows[1:]:
        differ = (row[:shared] != first[:shared]).nonzero()
        shared = int(differ[0, 0]) if len(differ) else shared
    rests = [r[shared:] for r in rows]
    width = max(len(r) for r in rests)
    ids = torch.full((len(rows), width), pad_id, dtype=batch.input_ids.dtype, device=batch.input_ids.device)
    mask = torch.zeros((len(rows), shared + width), dtype=batch.attention_mask.dtype, device=ids.device)
    mask[:, :shared] = 1
    for i, rest in enumerate(rests):
        ids[i, width - len(rest) :] = rest
        mask[i, shared + width - len(rest) :] = 1
    return first[None, :shared], Batch(ids, mask)


def _content_suffix_length(model: Model, text: str, raw: bool, reply: str) -> int:
    """Number of tokens (template and reply) after the last token of ``text``."""
    full = format_prompt(model, text, raw=raw, reply=reply)
    end = full.rfind(text)
    if end < 0:  # pragma: no cover - a template that rewrites the content
        raise CommlibError("cannot locate the user text inside the formatted prompt; use position='last'")
    add_special = raw or model.info.prompt_format != "chat"
    n_full = len(model.tokenizer(full, add_special_tokens=add_special)["input_ids"])
    n_prefix = len(model.tokenizer(full[: end + len(text)], add_special_tokens=add_special)["input_ids"])
    return n_full - n_prefix


def message_positions(
    model: Model,
    texts: Sequence[str],
    batch: Batch,
    position: Position = "last",
    *,
    raw: bool = False,
    replies: Sequence[str] | None = None,
) -> Int[Tensor, " batch"]:
    """Absolute index (into the padded batch) of the position that carries the message.

    Args:
        model: The model whose prompts these are.
        texts: The unformatted prompts that made ``batch``.
        batch: Their left-padded encoding.
        position: ``"last"`` prompt token or last token of the user ``"content"``.
        raw: Whether ``batch`` was encoded with ``raw=True``.
        replies: The replies ``batch`` was encoded with, if any.
    """
    last = batch.length - 1
    if position == "last":
        return torch.full((batch.size,), last, dtype=torch.long, device=batch.input_ids.device)
    if position == "content":
        offsets = [
            _content_suffix_length(model, t, raw, r)
            for t, r in zip(texts, _replies(texts, replies), strict=True)
        ]
        return torch.tensor([last - o for o in offsets], dtype=torch.long, device=batch.input_ids.device)
    raise CommlibError(f"unknown position {position!r}; use one of {', '.join(POSITIONS)}")


def message_span(batch: Batch, positions: Int[Tensor, " batch"], n: int) -> Int[Tensor, "batch n"]:
    """The ``n`` positions ending at each row's message position, in order (aligned from the end).

    Raises:
        CommlibError: ``n < 1``, or more positions than a row has real tokens up to its message position.
    """
    if n < 1:
        raise CommlibError(f"n_positions must be at least 1, got {n}")
    available = span_available(batch, positions)
    if n > available:
        raise CommlibError(
            f"n_positions={n} is more than the {available} prompt tokens up to the message position; "
            f"use n_positions <= {available}"
        )
    return positions[:, None] - torch.arange(n - 1, -1, -1, device=positions.device)[None, :]


def span_available(batch: Batch, positions: Int[Tensor, " batch"]) -> int:
    """How many positions :func:`message_span` can take here (the paper's "all tokens")."""
    first_real = batch.attention_mask.long().argmax(dim=1).to(positions.device)  # left padding
    return int((positions - first_real + 1).min())
