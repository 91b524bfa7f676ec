"""Fast (k, j) layer sweep for activation communication.

Between configurations only B's last prompt position changes, so per item:

* A runs once; its residual at the message position is kept for every k.
* B's prompt prefix (all but the last position) runs once; its KV cache is
  kept. Positions before the last never see the edit (attention is causal).
* For each j, one pass over the last prompt token plus the answer tokens,
  batched over all k (the prefix cache repeated), gives the teacher-forced
  log-probability of the answer for every k; a short greedy continuation from
  the same cached prefix gives the answers scored for accuracy.

:func:`naive_cell` recomputes one (k, j, item) cell from scratch; the tests
check the fast path against it.

Example:
    >>> from commlib.models import load_model
    >>> from commlib.tasks.games import countries
    >>> m = load_model("tiny-llama-random")
    >>> cells = sweep_item(m, m, countries(1)[0], ks=[0, 1], js=[1, 2], max_new_tokens=2)
    >>> len(cells), sorted(cells[0])[:3]
    (4, ['answer_logprob', 'j', 'k'])
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from commlib.backends import Decoding, Edit, get_backend
from commlib.backends.base import Backend, check_layer
from commlib.combine import combine
from commlib.graft import GraftConfig
from commlib.models import Model
from commlib.prompts import Batch, encode
from commlib.tasks.games import GameItem


def answer_ids(model: Model, answer: str) -> Int[Tensor, " n"]:
    """Token ids of the answer as it would start B's reply (no special tokens)."""
    return torch.tensor(model.tokenizer(answer, add_special_tokens=False)["input_ids"], dtype=torch.long)


def _answer_logprob(logits: Float[Tensor, "b s v"], targets: Int[Tensor, " n"]) -> Float[Tensor, " b"]:
    """Sum of log p(answer token i) where logits[:, i] predicts answer token i."""
    logp = torch.log_softmax(logits[:, : targets.numel()].float(), dim=-1)
    return logp.gather(-1, targets.to(logp.device)[None, :, None].expand(logp.shape[0], -1, 1)).sum((1, 2))


def _repeat_cache(cache: Any, times: int) -> Any:
    out = copy.deepcopy(cache)
    out.batch_repeat_interleave(times)
    return out


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
) -> list[dict[str, Any]]:
    """All (k, j) cells of one item: answer log-prob and greedy answer text.

    The message position is the last prompt token of both models.
    ``max_new_tokens=0`` scores by log-probability only (no greedy answers).
    """
    for k in ks:
        check_layer(sender, k, "k")
    for j in js:
        check_layer(receiver, j, "j")
    sb, rb = get_backend(sender, backend), get_backend(receiver, backend)
    a_batch = encode(sender, [item.sender])
    acts = sb.residuals(a_batch, ks)
    a = torch.stack([acts[k][0, -1] for k in ks])  # [K, d_A]
    b_batch = encode(receiver, [item.receiver])
    last = b_batch.length - 1
    _, prefix = rb.plain_forward(Batch(b_batch.input_ids[:, :last], b_batch.attention_mask[:, :last]))
    target = answer_ids(receiver, item.answer)
    suffix = torch.cat([b_batch.input_ids[0, last:], target[:-1].to(b_batch.input_ids.device)])
    n_k = len(ks)
    cells = []
    for j in js:
        edit = _sweep_edit(a, j, last, f)
        ids = suffix[None].expand(n_k, -1)
        mask = torch.ones(n_k, last + ids.shape[1], dtype=b_batch.attention_mask.dtype)
        logits, _ = rb.forward(Batch(ids, mask), edit, _repeat_cache(prefix, n_k))
        logprob = _answer_logprob(logits, target)
        texts: list[str] = [""] * n_k
        token_ids: list[list[int]] = [[] for _ in range(n_k)]
        if max_new_tokens > 0:  # 0: score by log-probability only
            gen = rb.generate(
                Batch(b_batch.input_ids[:, last:].expand(n_k, -1), mask[:, : last + 1]),
                edit,
                Decoding(max_new_tokens=max_new_tokens),
                past=_repeat_cache(prefix, n_k),
            )
            texts = gen.texts
            token_ids = [_until_eos(row.tolist(), receiver) for row in gen.token_ids]
        for i, k in enumerate(ks):
            cells.append(
                {
                    "k": k,
                    "j": j,
                    "answer_logprob": float(logprob[i]),
                    "text": texts[i],
                    "token_ids": token_ids[i],
                }
            )
    return cells


def _until_eos(ids: list[int], model: Model) -> list[int]:
    """Generated ids up to and including the first EOS (drops the batch's padding after it)."""
    eos = set(model.eos_token_ids())
    for i, tok in enumerate(ids):
        if tok in eos:
            return ids[: i + 1]
    return ids


def _sweep_edit(a: Float[Tensor, "K d_a"], j: int, last: int, f: str) -> Edit:
    positions = torch.full((a.shape[0], 1), last, dtype=torch.long)
    return Edit(layer=j, positions=positions, fn=lambda b: combine(a[:, None, :], b, f))


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
) -> dict[str, Any]:
    """One (k, j, item) cell computed from scratch (full passes, no shared work)."""
    from commlib.graft import capture_sender, communicate, graft_edit

    sb: Backend = get_backend(sender, backend)
    rb: Backend = get_backend(receiver, backend)
    cfg = GraftConfig(k=k, j=j, f=f)
    a = capture_sender(sb, [item.sender], k)
    b_batch = encode(receiver, [item.receiver])
    target = answer_ids(receiver, item.answer).to(b_batch.input_ids.device)
    full = Batch(
        torch.cat([b_batch.input_ids, target[None, :-1]], dim=1),
        torch.ones(1, b_batch.length + target.numel() - 1, dtype=b_batch.attention_mask.dtype),
    )
    edit = graft_edit(a, torch.tensor([b_batch.length - 1]), cfg)
    logits = rb.logits(full, edit)[:, b_batch.length - 1 :]
    cell: dict[str, Any] = {
        "k": k,
        "j": j,
        "answer_logprob": float(_answer_logprob(logits, target)[0]),
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
        )
        cell.update(text=gen.texts[0], token_ids=_until_eos(gen.token_ids[0].tolist(), receiver))
    return cell
