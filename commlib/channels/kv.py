"""KV-cache channels: B reads A's keys and values (``kv``), after A's latent thoughts (``latent-steps``).

``kv`` (after KVComm, Shi et al. 2025): A runs its prompt once and sends its
KV cache; B's prompt follows A's positions (B's positions continue after
A's, as if the two prompts were one) and attends to them. With ``layers``
only those of B's layers attend to A's positions; at every other layer B's
queries see none of them (their attention mask hides A's columns), so no
layers is B alone. :func:`kvcomm_layers` is KVComm's layer-selection rule.

``latent-steps`` (after LatentMAS, Zou et al. 2025): before sending, A takes
m latent steps: its last-layer state at the last position, mapped to its
input-embedding space by the training-free realignment (:func:`realignment`)
and rescaled to the mean input-embedding norm, is its next input; the m
positions join its cache, and B reads the cache (prompt and steps) as for
``kv``. m = 0 is refused: it is B reading A's prompt cache, which is ``kv``.

A's side is a :class:`KVMessage` per item (the real positions only, never
padding); reading builds a fresh cache from copies, so a message is never
changed by being read (tested: twice, and by two receivers). Both channels
run on the HF model (``model.hf``), as CIPHER and Interlat do; there is no
edit, so no grafting backend is involved. The pair must be one model, or two
of one architecture and tokenizer (:func:`check_kv_pair`).

Example:
    >>> from commlib.models import load_model
    >>> from commlib.prompts import encode
    >>> m = load_model("tiny-llama-random")
    >>> msgs = kv_messages(m, ["Alice is at the Eiffel Tower."])
    >>> out = read_kv(m, msgs, encode(m, ["Where is Alice?"]), max_new_tokens=2)
    >>> msgs[0].keys.shape[0] == m.info.n_layers, out[0].final_state.shape
    (True, torch.Size([64]))
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from transformers import DynamicCache

from commlib.channels.slot import Reading, embed, embedding_table, forward_rows, greedy_rows
from commlib.errors import CommlibError
from commlib.models import Model, cache_dir
from commlib.prompts import Batch, encode

REALIGN_LAMBDA = 1e-5
"""LatentMAS's ridge strength for the realignment matrix (their ``models.py``)."""
DEFAULT_LATENT_STEPS = 8
"""m for ``latent-steps`` without ``-m<M>`` (LatentMAS tunes it in 0..80)."""
KVCOMM_FRACTION = 0.3
"""The share of layers KVComm sends by default (the paper's headline: 30% of the layers)."""


@dataclass(frozen=True)
class KVMessage:
    """A's keys and values over its prompt (and latent steps) for one item: real positions only.

    Attributes:
        keys: ``[layers, kv_heads, tokens, head_dim]`` after RoPE, as A's cache holds them.
        values: The same shape.
        prompt_tokens: How many of the positions are A's prompt; the rest are latent steps.
    """

    keys: Float[Tensor, "layers heads tokens dim"]
    values: Float[Tensor, "layers heads tokens dim"]
    prompt_tokens: int

    @property
    def tokens(self) -> int:
        """Positions sent: prompt and latent steps."""
        return int(self.keys.shape[2])

    @property
    def latent_steps(self) -> int:
        """Latent steps after the prompt (0: the prompt's cache, ``kv``'s message)."""
        return self.tokens - self.prompt_tokens

    def truncated(self, latent_steps: int) -> KVMessage:
        """The message with only its first ``latent_steps`` steps (steps are sequential: a prefix).

        Raises:
            CommlibError: more steps than the message holds.
        """
        if latent_steps > self.latent_steps:
            raise CommlibError(f"the message holds {self.latent_steps} latent steps, not {latent_steps}")
        end = self.prompt_tokens + latent_steps
        return replace(self, keys=self.keys[:, :, :end], values=self.values[:, :, :end])

    def nbytes(self, layers: Sequence[int] | None = None) -> int:
        """Bytes sent: 2 x layers x kv_heads x head_dim x tokens x bytes per element (``layers``: those sent).

        Example:
            >>> msg = KVMessage(torch.zeros(4, 2, 5, 16, dtype=torch.bfloat16), torch.zeros(4, 2, 5, 16), 5)
            >>> msg.nbytes(), msg.nbytes([0, 1])
            (2560, 1280)
        """
        n_layers, heads, tokens, dim = self.keys.shape
        sent = n_layers if layers is None else len(layers)
        return 2 * sent * heads * dim * tokens * self.keys.element_size()


def check_kv_pair(sender: Model, receiver: Model) -> None:
    """Refuse a pair whose caches B cannot read: another architecture, shape, position code or tokenizer.

    Raises:
        CommlibError: naming what differs (a cross-model pair needs a trained projector).
    """
    if sender is receiver:
        return
    a, b = sender.hf.config.get_text_config(), receiver.hf.config.get_text_config()

    def shape(c: Any) -> tuple[Any, ...]:
        heads = c.num_attention_heads
        return (
            c.model_type,
            c.num_hidden_layers,
            getattr(c, "num_key_value_heads", None) or heads,
            getattr(c, "head_dim", None) or c.hidden_size // heads,
            str(getattr(c, "rope_parameters", getattr(c, "rope_theta", None))),
        )

    names = ("architecture", "layers", "key/value heads", "head size", "position encoding")
    for what, x, y in zip(names, shape(a), shape(b), strict=True):
        if x != y:
            raise CommlibError(
                f"kv needs A and B of one architecture and tokenizer: {what} differ ({sender.name}: {x}, "
                f"{receiver.name}: {y}); use one model, or a cross-model projector"
            )
    if sender.tokenizer.get_vocab() != receiver.tokenizer.get_vocab():
        raise CommlibError(
            f"kv needs A and B of one tokenizer: {sender.name} and {receiver.name} differ; use one model"
        )


def check_latent_steps(steps: int) -> int:
    """``steps`` when it is a number of latent steps (at least 1).

    Raises:
        CommlibError: m < 1: zero steps is B reading A's prompt cache, the ``kv`` channel.
    """
    if steps < 1:
        raise CommlibError(
            f"latent-steps with m = {steps} is B reading A's prompt cache, which is the kv channel: "
            "use kv, or m >= 1 (latent-steps-m8)"
        )
    return steps


def _rows(batch: Batch) -> list[Tensor]:
    """Each row's real token ids, whichever side the batch is padded on."""
    return [ids[m.bool()] for ids, m in zip(batch.input_ids, batch.attention_mask, strict=True)]


def _left_pad(rows: Sequence[Tensor], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=rows[0].device)
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=rows[0].device)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    return ids, mask


def _pad_id(model: Model) -> int:
    pad = model.tokenizer.pad_token_id
    return int(pad if pad is not None else model.eos_token_ids()[0])


@torch.no_grad()
def sender_messages(
    sender: Model, batch: Batch, *, latent_steps: int = 0, realign: bool = True
) -> list[KVMessage]:
    """A's KV cache over each row of ``batch`` (padded on either side), after ``latent_steps`` latent steps.

    Each step feeds back A's last-layer state at its last position (the
    state its unembedding reads) through :func:`realignment`, rescaled to the
    mean norm of A's input embeddings, as LatentMAS does; ``realign=False``
    keeps only the rescaling (LatentMAS without ``--latent_space_realign``).
    """
    if latent_steps < 0:
        raise CommlibError(f"latent_steps must be >= 0, not {latent_steps}")
    rows = [r.to(sender.device) for r in _rows(batch)]
    ids, mask = _left_pad(rows, _pad_id(sender))
    _, state, past = forward_rows(sender, embed(sender, ids), mask, None, hidden=latent_steps > 0)
    if latent_steps:
        matrix, norm = realignment(sender, enabled=realign)
        for _ in range(latent_steps):
            assert state is not None
            step = realign_states(state, matrix, norm).to(embed(sender, ids[:1, :1]).dtype)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            _, state, past = forward_rows(sender, step[:, None], mask, past, hidden=True)
    keys = torch.stack([layer.keys for layer in past.layers])  # [layers, batch, heads, tokens, dim]
    values = torch.stack([layer.values for layer in past.layers])
    if keys.shape[3] != mask.shape[1]:
        raise CommlibError(f"{sender.name}'s cache holds {keys.shape[3]} of {mask.shape[1]} positions")
    return [
        KVMessage(keys[:, i][:, :, m.bool()].clone(), values[:, i][:, :, m.bool()].clone(), len(r))
        for i, (r, m) in enumerate(zip(rows, mask, strict=True))
    ]


def kv_messages(
    sender: Model,
    prompts: Sequence[str],
    *,
    latent_steps: int = 0,
    batch_size: int = 16,
    realign: bool = True,
) -> list[KVMessage]:
    """:func:`sender_messages` for prompts in A's prompt format, in batches."""
    out: list[KVMessage] = []
    for start in range(0, len(prompts), batch_size):
        batch = encode(sender, prompts[start : start + batch_size])
        out += sender_messages(sender, batch, latent_steps=latent_steps, realign=realign)
    return out


def _cache(receiver: Model, messages: Sequence[KVMessage]) -> tuple[Any, Tensor]:
    """A fresh cache holding every message left-padded to the longest, and its attention mask."""
    width = max(m.tokens for m in messages)
    first = messages[0].keys
    dtype = embedding_table(receiver).dtype
    shape = (first.shape[0], len(messages), first.shape[1], width, first.shape[3])
    keys = torch.zeros(shape, dtype=dtype, device=receiver.device)
    values = torch.zeros_like(keys)
    mask = torch.zeros(len(messages), width, dtype=torch.long, device=receiver.device)
    for i, m in enumerate(messages):
        keys[:, i, :, width - m.tokens :] = m.keys.to(receiver.device, dtype)
        values[:, i, :, width - m.tokens :] = m.values.to(receiver.device, dtype)
        mask[i, width - m.tokens :] = 1
    data = [(keys[layer], values[layer]) for layer in range(shape[0])]
    return DynamicCache(ddp_cache_data=data, config=receiver.hf.config), mask


def _decoder_layers(model: Model) -> Any:
    return model.hf.model.layers


@contextmanager
def hidden_prefix(
    model: Model, layers: Sequence[int], width: int, *, bias: Mapping[int, Tensor] | None = None
) -> Iterator[None]:
    """At ``layers``, the attention of every pass hides the first ``width`` cached positions (A's).

    A forward pre-hook on each such attention module rewrites its mask; a
    query row left with nothing to attend to (a padding position) keeps its
    own position, so no NaN reaches a real one. ``bias`` (a layer -> scalar
    tensor, e.g. a gate's log; gradients flow) is added instead to the
    attention logits of A's positions at its layers, as a float mask (a soft
    gate; ``-inf`` is hiding). Removed on exit.
    """
    handles = []
    gates = dict(bias or {})

    def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        assert hidden is not None
        past = kwargs.get("past_key_values")
        cached = past.get_seq_length(module.layer_idx) if past is not None else 0
        q, kv = hidden.shape[1], cached + hidden.shape[1]
        rows = torch.arange(q, device=hidden.device)[:, None] + cached
        cols = torch.arange(kv, device=hidden.device)[None, :]
        mask = kwargs.get("attention_mask")
        if mask is None:
            allowed = (cols <= rows)[None, None].expand(hidden.shape[0], 1, q, kv)
        elif mask.dtype == torch.bool:
            allowed = mask[..., :kv]
        else:
            allowed = mask[..., :kv] == 0
        layer: Any = module.layer_idx
        if (gate := gates.get(layer)) is not None:
            add = torch.where(allowed, 0.0, torch.finfo(hidden.dtype).min).to(hidden.dtype)
            kwargs["attention_mask"] = add + torch.where(cols < width, gate.to(hidden.dtype), 0.0)
            return args, kwargs
        allowed = allowed & (cols >= width)
        allowed = allowed | ((cols == rows) & ~allowed.any(-1, keepdim=True))
        if mask is None or mask.dtype == torch.bool:
            kwargs["attention_mask"] = allowed
        else:
            kwargs["attention_mask"] = torch.where(allowed, 0.0, torch.finfo(mask.dtype).min).to(mask.dtype)
        return args, kwargs

    try:
        blocks = _decoder_layers(model)
        for layer in {*layers, *gates}:
            handles.append(blocks[layer].self_attn.register_forward_pre_hook(hook, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def check_layers(model: Model, layers: Sequence[int] | None) -> tuple[int, ...] | None:
    """``layers`` as a sorted tuple of B's layers (``None``: all).

    Raises:
        CommlibError: a layer outside ``0 .. n_layers - 1``.
    """
    if layers is None:
        return None
    n = model.info.n_layers
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise CommlibError(f"kv layers {bad} are out of range for {model.name}: use 0..{n - 1}")
    return tuple(sorted(set(layers)))


@torch.no_grad()
def read_kv(
    receiver: Model,
    messages: Sequence[KVMessage],
    batch: Batch,
    *,
    layers: Sequence[int] | None = None,
    max_new_tokens: int = 6,
) -> list[Reading]:
    """B's greedy answers to ``batch`` (padded on either side), row i reading ``messages[i]`` in front.

    B's positions continue after A's; ``layers`` (default: all) are B's
    layers whose attention sees A's positions. The messages are copied into
    a fresh cache, never changed.

    Raises:
        CommlibError: a count that does not match, or a layer out of range.
    """
    chosen = check_layers(receiver, layers)
    if len(messages) != batch.size:
        raise CommlibError(f"{batch.size} receiver prompts but {len(messages)} messages: pair them up")
    past, mask_a = _cache(receiver, messages)
    ids, mask_b = _left_pad([r.to(receiver.device) for r in _rows(batch)], _pad_id(receiver))
    mask = torch.cat([mask_a, mask_b], dim=1)
    hidden = [] if chosen is None else [x for x in range(receiver.info.n_layers) if x not in chosen]
    with hidden_prefix(receiver, hidden, mask_a.shape[1]):
        logits, state, past = forward_rows(receiver, embed(receiver, ids), mask, past, hidden=True)
        assert state is not None
        tokens, _ = greedy_rows(receiver, logits, None, past, mask, max_new_tokens)
    texts = receiver.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return [Reading(str(t), lg, s) for t, lg, s in zip(texts, logits, state, strict=True)]


# --------------------------------------------------------------------------- #
# LatentMAS's realignment
# --------------------------------------------------------------------------- #

_REALIGN: dict[tuple[int, float, bool], tuple[Tensor, Tensor]] = {}


def realignment(
    model: Model, *, lam: float = REALIGN_LAMBDA, enabled: bool = True, cache: bool | Path = True
) -> tuple[Float[Tensor, "d d"], Tensor]:
    """LatentMAS's realignment: ``W_a = (W_out^T W_out + lam I)^-1 W_out^T W_in``, and the target norm.

    ``W_out`` is the unembedding, ``W_in`` the input embedding table (both
    ``[vocab, d]``), solved in float32 as LatentMAS does; a state ``h`` maps to
    ``h @ W_a``, rescaled to the target norm: the mean norm of the model's
    input embeddings as it reads them (with Gemma's scale). Tied embeddings
    give ``W_a`` close to the identity. ``enabled=False`` is the identity
    (rescaling only). Kept in memory and on disk under the commlib cache
    directory (``cache``: a directory, or ``False`` for neither).

    Example:
        >>> from commlib.models import load_model
        >>> m = load_model("tiny-llama-random")
        >>> w, norm = realignment(m, cache=False)
        >>> w.shape, bool(norm > 0)
        (torch.Size([64, 64]), True)
    """
    key = (id(model), lam, enabled)
    if key in _REALIGN:
        return _REALIGN[key]
    path = None
    if cache is not False and enabled:
        root = cache_dir() / "realign" if cache is True else Path(cache)
        path = root / f"{model.name.replace('/', '--')}-lambda{lam:g}.pt"
    stored = torch.load(path, weights_only=True) if path is not None and path.exists() else None
    if stored is not None and stored["source"] == model.info.source:
        matrix, norm = stored["matrix"], stored["norm"]
    else:
        w_in = embedding_table(model).detach().float()
        unembedding = model.hf.get_output_embeddings().weight
        assert isinstance(unembedding, Tensor)
        w_out = unembedding.detach().float()
        d = w_in.shape[1]
        if enabled:
            gram = w_out.T @ w_out + lam * torch.eye(d, device=w_in.device)
            matrix = torch.linalg.solve(gram, w_out.T @ w_in)
        else:
            matrix = torch.eye(d, device=w_in.device)
        scale = float(getattr(model.hf.get_input_embeddings(), "embed_scale", 1.0))
        norm = (w_in.norm(dim=1) * scale).mean()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"matrix": matrix.cpu(), "norm": norm.cpu(), "source": model.info.source}, path)
    out = (matrix.to(model.device), norm.to(model.device))
    _REALIGN[key] = out
    return out


def realign_states(states: Float[Tensor, "n d"], matrix: Tensor, norm: Tensor) -> Float[Tensor, "n d"]:
    """``states @ matrix``, each row rescaled to ``norm`` (LatentMAS's ``_apply_latent_realignment``)."""
    aligned = states.float() @ matrix.float()
    return aligned * (norm.float() / aligned.norm(dim=-1, keepdim=True).clamp_min(1e-6))


# --------------------------------------------------------------------------- #
# KVComm's layer selection
# --------------------------------------------------------------------------- #


@torch.no_grad()
def kvcomm_importance(
    receiver: Model, messages: Sequence[KVMessage], batch: Batch
) -> Float[Tensor, " layers"]:
    """KVComm's attention importance of each of B's layers, reading A's cache at every layer.

    Per item and layer: the attention B's prompt positions give A's
    positions after A's first (the attention sink, which KVComm leaves out),
    summed over those positions and averaged over heads and B's prompt
    positions; then averaged over items. Runs B's prompt once with eager
    attention (to get the weights), switched back after.
    """
    past, mask_a = _cache(receiver, messages)
    rows = [r.to(receiver.device) for r in _rows(batch)]
    ids, mask_b = _left_pad(rows, _pad_id(receiver))
    mask = torch.cat([mask_a, mask_b], dim=1)
    before = receiver.hf.config._attn_implementation
    receiver.hf.set_attn_implementation("eager")
    try:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        out = receiver.hf(
            inputs_embeds=embed(receiver, ids), attention_mask=mask, position_ids=positions,
            past_key_values=past, use_cache=True, output_attentions=True,
        )  # fmt: skip
    finally:
        receiver.hf.set_attn_implementation(before)
    width, per_layer = mask_a.shape[1], []
    for weights in out.attentions:  # [batch, heads, q, kv]
        scores = []
        for i, (m, r) in enumerate(zip(messages, rows, strict=True)):
            a_cols = slice(width - m.tokens + 1, width)
            scores.append(weights[i, :, -len(r) :, a_cols].float().sum(-1).mean())
        per_layer.append(torch.stack(scores).mean())
    return torch.stack(per_layer).cpu()


def kvcomm_layers(
    importance: Sequence[float] | Tensor,
    fraction: float = KVCOMM_FRACTION,
    *,
    alpha: float = 1.0,
    mu: float = 0.5,
    sigma: float = 10.0,
) -> tuple[int, ...]:
    """KVComm's selection: the top ``fraction`` of layers by attention importance and a Gaussian prior.

    ``score = alpha * minmax(importance) + (1 - alpha) * minmax(G)``, with
    ``G(l) = exp(-(l - mu (L - 1))^2 / (2 sigma^2))`` over the L layers;
    the ``floor(fraction * L)`` best (at least one). The defaults are their
    code's (``alpha = 1``: importance alone; ``mu = 0.5``, ``sigma = 10``).

    Example:
        >>> kvcomm_layers([0.1, 0.5, 0.2, 0.9, 0.3], 0.4)
        (1, 3)
        >>> kvcomm_layers([0.0] * 5, 0.2, alpha=0.0)  # the prior alone: the middle layer
        (2,)

    Raises:
        CommlibError: a fraction outside (0, 1].
    """
    if not 0 < fraction <= 1:
        raise CommlibError(f"the share of layers must be in (0, 1], not {fraction}")
    values = torch.as_tensor(importance, dtype=torch.float64)
    n = len(values)
    prior = torch.exp(-0.5 * ((torch.arange(n, dtype=torch.float64) - mu * (n - 1)) / sigma) ** 2)
    score = alpha * _minmax(values) + (1 - alpha) * _minmax(prior)
    count = max(1, math.floor(fraction * n))
    order = sorted(range(n), key=lambda layer: (-float(score[layer]), layer))
    return tuple(sorted(order[:count]))


def _minmax(v: Tensor) -> Tensor:
    span = v.max() - v.min()
    return torch.zeros_like(v) if span < 1e-9 else (v - v.min()) / span
