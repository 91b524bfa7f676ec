"""Fast (k, j) layer sweep for activation communication.

Between configurations only B's positions from the message position on
change, so per item:

* A runs once; its residual at the message position is kept for every k.
* B's prompt prefix (every position before the message position) runs once;
  its KV cache is kept. Those positions never see the edit (attention is
  causal).
* For each j, one pass over the rest of the prompt (one token for
  ``position="last"``, the template's closing tokens and the reply for
  ``"content"``) plus the answer tokens, batched over all k (the prefix cache
  repeated), gives the teacher-forced log-probability of the answer for every
  k, and whether greedy decoding would start with the answer (each answer
  token the argmax: exact, and free). Greedy answer texts (scored as the games
  are) continue from that pass's KV cache, cut back to the prompt, and its
  logits at the last prompt position; the continuations of several j decode
  as one batch (up to :data:`DECODE_ROWS` rows).

:func:`naive_cell` recomputes one (k, j, item) cell from scratch; the tests
check the fast path against it.

Example:
    >>> from commlib.models import load_model
    >>> from commlib.tasks.games import countries
    >>> m = load_model("tiny-llama-random")
    >>> cells = sweep_item(m, m, countries(1)[0], ks=[0, 1], js=[1, 2], max_new_tokens=2)
    >>> len(cells), sorted(cells[0])[:3]
    (4, ['answer_logprob', 'greedy_answer', 'j'])
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from commlib.backends import Decoding, Edit, get_backend
from commlib.backends.base import Backend, check_layer
from commlib.combine import combine
from commlib.graft import GraftConfig
from commlib.models import Model
from commlib.prompts import Batch, Position, encode, format_prompt, message_positions, message_span
from commlib.tasks.games import GameItem

DECODE_ROWS = 128
"""Greedy continuations of up to this many (k, j) cells decode as one batch: whole j's, at least one.
Larger batches use the CPU's matrix kernels better (the unembedding at 10 rows: 10 GFLOPS, at 100: 27)."""


def answer_ids(model: Model, answer: str, prompt: str = "") -> Int[Tensor, " n"]:
    """Token ids of the answer as it would continue the formatted ``prompt``.

    After a word (a reply such as "Alice is located in", or the plain format's
    "Answer:") the answer is a new word and takes a leading space; after a
    newline (a chat template's assistant header) it does not.
    """
    text = answer if not prompt or prompt[-1].isspace() else f" {answer}"
    return torch.tensor(model.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def _item_answer_ids(model: Model, item: GameItem) -> Int[Tensor, " n"]:
    return answer_ids(model, item.answer, format_prompt(model, item.receiver, reply=item.reply))


def _answer_logprob(logits: Float[Tensor, "b s v"], targets: Int[Tensor, " n"]) -> Float[Tensor, " b"]:
    """Sum of log p(answer token i) where logits[:, i] predicts answer token i."""
    logp = torch.log_softmax(logits[:, : targets.numel()].float(), dim=-1)
    return logp.gather(-1, targets.to(logp.device)[None, :, None].expand(logp.shape[0], -1, 1)).sum((1, 2))


def _greedy_starts_with_answer(logits: Float[Tensor, "b s v"], targets: Int[Tensor, " n"]) -> Tensor:
    """Whether greedy decoding would emit the answer tokens first.

    Teacher forcing feeds exactly the tokens greedy decoding would have fed
    as long as each argmax equals the next answer token, so this needs no
    generation.
    """
    return (logits[:, : targets.numel()].argmax(-1) == targets.to(logits.device)[None]).all(-1)


def _repeat_cache(cache: Any, times: int) -> Any:
    out = copy.deepcopy(cache)
    out.batch_repeat_interleave(times)
    return out


@dataclass(frozen=True)
class Scores:
    """Teacher-forced scores of the answer for a batch of edits (one row each)."""

    answer_logprob: Float[Tensor, " m"]
    greedy_answer: Bool[Tensor, " m"]  # greedy decoding starts with the answer
    next_logits: Float[Tensor, "m vocab"]  # at the last prompt position


class ReceiverItem:
    """B's side of one item, prepared once: its prompt, the KV cache of the
    positions before the message position (before the first of the
    ``n_positions`` edited ones), the answer tokens, and B's own scores
    without any edit.

    :meth:`score` and :meth:`generate` then run only the positions from the
    message position on, for a whole batch of edits at once.

    Example:
        >>> from commlib.models import load_model
        >>> from commlib.tasks.games import countries
        >>> m = load_model("tiny-llama-random")
        >>> rx = ReceiverItem(m, countries(1)[0])
        >>> rx.score(1, lambda b: 2 * b, rows=3).answer_logprob.shape
        torch.Size([3])
    """

    def __init__(
        self,
        receiver: Model,
        item: GameItem,
        *,
        position: Position = "last",
        n_positions: int = 1,
        backend: str = "nnsight",
    ) -> None:
        self.model, self.item, self.n_positions = receiver, item, n_positions
        self.backend = get_backend(receiver, backend)
        self.batch = encode(receiver, [item.receiver], replies=[item.reply])
        end = message_positions(receiver, [item.receiver], self.batch, position, replies=[item.reply])
        self.pos = int(message_span(self.batch, end, n_positions)[0, 0])  # first edited position
        ids, mask = self.batch.input_ids, self.batch.attention_mask
        _, self.prefix = self.backend.plain_forward(Batch(ids[:, : self.pos], mask[:, : self.pos]))
        self.target = _item_answer_ids(receiver, item).to(ids.device)
        self.suffix = torch.cat([ids[0, self.pos :], self.target[:-1]])
        alone = self._score(None, 1)
        self.silent_logprob = float(alone.answer_logprob[0])
        self.silent_greedy_answer = bool(alone.greedy_answer[0])
        self.silent_next_logits = alone.next_logits

    def _mask(self, rows: int, length: int) -> Tensor:
        return torch.ones(
            rows, length, dtype=self.batch.attention_mask.dtype, device=self.batch.input_ids.device
        )

    def edit(self, j: int, fn: Callable[[Tensor], Tensor], rows: int) -> Edit:
        """Edit B's states after block ``j`` at the edited positions (``fn``: ``[rows, n, d]`` -> same)."""
        check_layer(self.model, j, "j")
        span = torch.arange(self.pos, self.pos + self.n_positions, dtype=torch.long)
        return Edit(layer=j, positions=span[None].expand(rows, -1), fn=fn)

    def _pass(self, edit: Edit | None, rows: int) -> tuple[Scores, Any]:
        ids = self.suffix[None].expand(rows, -1)
        batch = Batch(ids, self._mask(rows, self.pos + ids.shape[1]))
        logits, past = self.backend.forward(batch, edit, _repeat_cache(self.prefix, rows))
        answer = logits[:, self.batch.length - 1 - self.pos :]
        scores = Scores(
            _answer_logprob(answer, self.target),
            _greedy_starts_with_answer(answer, self.target),
            answer[:, 0].float(),
        )
        return scores, past

    def _score(self, edit: Edit | None, rows: int) -> Scores:
        return self._pass(edit, rows)[0]

    def score(self, j: int, fn: Callable[[Tensor], Tensor], rows: int) -> Scores:
        """Answer log-prob and greedy-answer flag for ``rows`` edits at block ``j`` in one batched pass."""
        return self._score(self.edit(j, fn, rows), rows)

    def score_and_prompt_cache(
        self, j: int, fn: Callable[[Tensor], Tensor], rows: int
    ) -> tuple[Scores, DynamicCache | None]:
        """:meth:`score`, and that pass's edited KV cache cut back to B's prompt, to decode from.

        The cache is ``None`` where it cannot be cut (a cache other than plain
        full attention, e.g. sliding-window layers): decode with :meth:`generate`.
        """
        scores, past = self._pass(self.edit(j, fn, rows), rows)
        if type(past) is not DynamicCache or any(type(layer) is not DynamicLayer for layer in past.layers):
            return scores, None
        extra = self.target.numel() - 1  # the answer tokens fed after the prompt
        if extra:
            past.crop(-extra)
        return scores, past

    def generate(
        self, j: int, fn: Callable[[Tensor], Tensor], rows: int, max_new_tokens: int
    ) -> tuple[list[str], list[list[int]]]:
        """Greedy answers under the same edits: texts and token ids (up to EOS)."""
        gen = self.backend.generate(
            Batch(self.batch.input_ids[:, self.pos :].expand(rows, -1), self._mask(rows, self.batch.length)),
            self.edit(j, fn, rows),
            Decoding(max_new_tokens=max_new_tokens),
            past=_repeat_cache(self.prefix, rows),
        )
        return gen.texts, [until_eos(row.tolist(), self.model) for row in gen.token_ids]


def sweep_item(
    sender: Model,
    receiver: Model,
    item: GameItem,
    ks: Sequence[int],
    js: Sequence[int],
    *,
    f: str = "replace",
    backend: str = "nnsight",
    max_new_tokens: int = 8,
    position: Position = "last",
    n_positions: int = 1,
) -> list[dict[str, Any]]:
    """All (k, j) cells of one item: answer log-prob and greedy answer text.

    ``position`` is the message position of both models (see
    :func:`~commlib.prompts.message_positions`), ``n_positions`` how many
    positions ending there are grafted (aligned from the end); B's prompt
    ends with the item's ``reply``. ``max_new_tokens=0`` skips the greedy texts (the
    log-probability and ``greedy_answer`` are still there). Every cell also
    carries B's own score without the graft (``silent_logprob``,
    ``silent_greedy_answer``), the baseline a layer pair must beat.
    """
    for k in ks:
        check_layer(sender, k, "k")
    for j in js:
        check_layer(receiver, j, "j")
    sb = get_backend(sender, backend)
    a_batch = encode(sender, [item.sender])
    a_end = message_positions(sender, [item.sender], a_batch, position)
    a_span = message_span(a_batch, a_end, n_positions)[0].cpu()  # a CPU index reads any device
    acts = sb.residuals(a_batch, ks)
    # [K, n, d_A] on A's input device: under a device map A's blocks sit on several devices
    a = torch.stack([acts[k][0, a_span].to(sender.device) for k in ks])
    rx = ReceiverItem(receiver, item, position=position, n_positions=n_positions, backend=backend)
    n_k = len(ks)

    def graft(b: Tensor) -> Tensor:
        return combine(a, b, f)

    cells = []
    per_batch = max(1, DECODE_ROWS // n_k)  # j's whose greedy continuations decode as one batch
    for start in range(0, len(js), per_batch):
        group = js[start : start + per_batch]
        scored = [rx.score_and_prompt_cache(j, graft, n_k) for j in group]
        texts: list[str] = [""] * len(group) * n_k
        token_ids: list[list[int]] = [[] for _ in range(len(group) * n_k)]
        if max_new_tokens > 0:  # 0: score by log-probability only
            texts, token_ids = _greedy_answers(rx, group, scored, graft, max_new_tokens)
        for g, (j, (scores, _)) in enumerate(zip(group, scored, strict=True)):
            for i, k in enumerate(ks):
                cells.append(
                    {
                        "k": k,
                        "j": j,
                        "answer_logprob": float(scores.answer_logprob[i]),
                        "greedy_answer": bool(scores.greedy_answer[i]),
                        "silent_logprob": rx.silent_logprob,
                        "silent_greedy_answer": rx.silent_greedy_answer,
                        "text": texts[g * n_k + i],
                        "token_ids": token_ids[g * n_k + i],
                    }
                )
    return cells


def _greedy_answers(
    rx: ReceiverItem,
    js: Sequence[int],
    scored: Sequence[tuple[Scores, DynamicCache | None]],
    graft: Callable[[Tensor], Tensor],
    max_new_tokens: int,
) -> tuple[list[str], list[list[int]]]:
    """Greedy answers of every row of every j (j-major): texts and token ids up to EOS.

    From the scoring passes' prompt caches (one batch over all of them, the
    first token their logits' argmax); where a cache could not be cut, a
    fresh prefill per j (:meth:`ReceiverItem.generate`).
    """
    caches = [past for _, past in scored]
    if any(past is None for past in caches):
        texts: list[str] = []
        ids: list[list[int]] = []
        for j, (scores, _) in zip(js, scored, strict=True):
            t, i = rx.generate(j, graft, scores.answer_logprob.shape[0], max_new_tokens)
            texts, ids = texts + t, ids + i
        return texts, ids
    past = caches[0] if len(caches) == 1 else _concat_caches([p for p in caches if p is not None])
    first = torch.cat([scores.next_logits for scores, _ in scored])
    new = rx.backend.decode(
        past, rx._mask(first.shape[0], rx.batch.length), first, Decoding(max_new_tokens=max_new_tokens)
    )
    texts = rx.model.tokenizer.batch_decode(new, skip_special_tokens=True)
    return texts, [until_eos(row.tolist(), rx.model) for row in new]


def _concat_caches(caches: Sequence[DynamicCache]) -> DynamicCache:
    """Plain full-attention caches of the same length stacked along the batch."""

    def stacked(i: int, values: bool) -> Tensor:
        parts = [cast(DynamicLayer, c.layers[i]) for c in caches]
        return torch.cat([cast(Tensor, p.values if values else p.keys) for p in parts])

    return DynamicCache([(stacked(i, False), stacked(i, True)) for i in range(len(caches[0].layers))])


def until_eos(ids: list[int], model: Model) -> list[int]:
    """Generated ids up to and including the first EOS (drops the batch's padding after it)."""
    eos = set(model.eos_token_ids())
    for i, tok in enumerate(ids):
        if tok in eos:
            return ids[: i + 1]
    return ids


def naive_cell(
    sender: Model,
    receiver: Model,
    item: GameItem,
    k: int,
    j: int,
    *,
    f: str = "replace",
    backend: str = "nnsight",
    max_new_tokens: int = 8,
    position: Position = "last",
    n_positions: int = 1,
) -> dict[str, Any]:
    """One (k, j, item) cell computed from scratch (full passes, no shared work)."""
    from commlib.graft import capture_span, communicate, graft_edit

    sb: Backend = get_backend(sender, backend)
    rb: Backend = get_backend(receiver, backend)
    cfg = GraftConfig(k=k, j=j, f=f, position=position, n_positions=n_positions)
    a = capture_span(sb, [item.sender], k, position, n_positions)
    b_batch = encode(receiver, [item.receiver], replies=[item.reply])
    target = _item_answer_ids(receiver, item).to(b_batch.input_ids.device)
    full = Batch(
        torch.cat([b_batch.input_ids, target[None, :-1]], dim=1),
        torch.ones(1, b_batch.length + target.numel() - 1, dtype=b_batch.attention_mask.dtype),
    )
    end = message_positions(receiver, [item.receiver], b_batch, position, replies=[item.reply])
    edit = graft_edit(a, message_span(b_batch, end, n_positions), cfg)
    logits = rb.logits(full, edit)[:, b_batch.length - 1 :]
    cell: dict[str, Any] = {
        "k": k,
        "j": j,
        "answer_logprob": float(_answer_logprob(logits, target)[0]),
        "greedy_answer": bool(_greedy_starts_with_answer(logits, target)[0]),
        "text": "",
        "token_ids": [],
    }
    if max_new_tokens > 0:
        gen = communicate(
            sender,
            receiver,
            [item.sender],
            [item.receiver],
            cfg,
            backend=backend,
            decoding=Decoding(max_new_tokens=max_new_tokens),
            receiver_replies=[item.reply],
        )
        cell.update(text=gen.texts[0], token_ids=until_eos(gen.token_ids[0].tolist(), receiver))
    return cell
