"""One activation-communication exchange (Ramesh & Li, 2025).

Run sender A on its prompt to block ``k`` and take its residual at the message
position; run receiver B on its prompt, replace B's residual after block ``j``
at the same kind of position by ``f(a, b)``; let B continue and decode. The
edit happens in the prefill only, and the KV cache carries it.

Example:
    >>> from commlib.models import load_model
    >>> from commlib.backends import Decoding
    >>> model = load_model("tiny-llama-random")
    >>> out = communicate(model, model, ["Alice is in Paris."], ["Where is Alice?"],
    ...                   GraftConfig(k=1, j=1, f="replace"), decoding=Decoding(max_new_tokens=4))
    >>> out.token_ids.shape
    torch.Size([1, 4])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from jaxtyping import Float, Int
from torch import Tensor

from commlib.backends import Backend, Decoding, Edit, get_backend
from commlib.backends.base import check_layer
from commlib.combine import LinearMap, combine
from commlib.config import NO_GRAFT, GraftConfig
from commlib.errors import CommlibError, LayerOutOfRangeError
from commlib.models import Model
from commlib.prompts import Position, check_prompts, encode, message_positions, message_span


def map_layer(layer: int, n_from: int, n_to: int) -> int:
    """A block chosen on a model of ``n_from`` blocks, moved to one of ``n_to`` blocks by relative depth.

    Relative depth is ``layer / (n_layers - 1)`` (0 the first block, 1 the
    last; the notebooks' ``round(depth * (n_layers - 1))``); the result is the
    nearest block of the other model (halves up). Use it when (k, j) come
    from the games sweep of a model other than the pair's: ``k`` with A's
    depth as ``n_to``, ``j`` with B's.

    Example:
        >>> map_layer(20, 30, 24), map_layer(26, 32, 28), map_layer(5, 12, 12)
        (16, 23, 5)

    Raises:
        LayerOutOfRangeError: ``layer`` is not a block of the ``n_from``-block model.
    """
    if n_from < 1 or n_to < 1 or not 0 <= layer < n_from:
        raise LayerOutOfRangeError(
            f"layer {layer} is not a block of a {n_from}-block model: use 0..{n_from - 1}"
        )
    if n_from == 1:
        return 0
    return layer_at_depth(layer / (n_from - 1), n_to)


def layer_at_depth(depth: float, n_layers: int) -> int:
    """The block at relative ``depth`` (0 the first block, 1 the last) of an ``n_layers``-block model.

    The nearest block, halves up: ``round(depth * (n_layers - 1))``. The one
    depth mapping of the library (:func:`map_layer` moves a block with it).

    Example:
        >>> layer_at_depth(0.67, 30), layer_at_depth(0.67, 28), layer_at_depth(1.0, 24)
        (19, 18, 23)

    Raises:
        LayerOutOfRangeError: ``depth`` is outside [0, 1] or the model has no block.
    """
    if n_layers < 1 or not 0.0 <= depth <= 1.0:
        raise LayerOutOfRangeError(f"depth {depth} of a {n_layers}-block model: use a depth in [0, 1]")
    return math.floor(depth * (n_layers - 1) + 0.5)


@dataclass(frozen=True)
class Exchange:
    """The outcome of :func:`communicate` for a batch of prompt pairs."""

    texts: list[str]
    token_ids: Int[Tensor, "batch new"]
    first_logits: Float[Tensor, "batch vocab"]
    config: GraftConfig
    sender: str
    receiver: str
    backend: str
    decoding: Decoding
    map_info: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: texts, generated ids, and the full configuration."""
        return {
            "text": self.texts[0] if len(self.texts) == 1 else self.texts,
            "token_ids": self.token_ids[0].tolist() if len(self.texts) == 1 else self.token_ids.tolist(),
            "sender": self.sender,
            "receiver": self.receiver,
            "backend": self.backend,
            **asdict(self.config),
            "decoding": asdict(self.decoding),
            "map": self.map_info,
        }


def capture_message(
    backend: Backend,
    prompts: Sequence[str],
    layer: int,
    position: Position = "last",
    *,
    raw: bool = False,
    replies: Sequence[str] | None = None,
) -> Float[Tensor, "batch d"]:
    """A model's residual after block ``layer`` at the message position of each prompt (with ``replies``)."""
    batch = encode(backend.model, prompts, raw=raw, replies=replies)
    positions = message_positions(backend.model, prompts, batch, position, raw=raw, replies=replies)
    return backend.capture(batch, layer, positions)


def capture_span(
    backend: Backend,
    prompts: Sequence[str],
    layer: int,
    position: Position = "last",
    n_positions: int = 1,
    *,
    raw: bool = False,
    replies: Sequence[str] | None = None,
) -> Float[Tensor, "batch n d"]:
    """A model's residuals after block ``layer`` at the ``n_positions`` ending at each message position."""
    batch = encode(backend.model, prompts, raw=raw, replies=replies)
    end = message_positions(backend.model, prompts, batch, position, raw=raw, replies=replies)
    return backend.capture(batch, layer, message_span(batch, end, n_positions))


def capture_sender(
    sender: Backend, prompts: Sequence[str], k: int, position: Position = "last", raw: bool = False
) -> Float[Tensor, "batch d_a"]:
    """Sender's residual after block ``k`` at the message position, one row per prompt."""
    check_layer(sender.model, k, "k")
    return capture_message(sender, prompts, k, position, raw=raw)


def graft_edit(
    a: Float[Tensor, "batch ... d_a"],
    positions: Int[Tensor, "batch ..."],
    config: GraftConfig,
    map: LinearMap | None = None,
) -> Edit:
    """The edit that puts ``f(a, b)`` into B's residual after block ``config.j``.

    Args:
        a: Sender activations, one row per receiver prompt (``[batch, d_a]``),
            or ``n`` per row (``[batch, n, d_a]``).
        positions: Index of the message position in each row of B's batch
            (``[batch]``), or of the ``n`` grafted positions (``[batch, n]``).
        config: Gives ``j``, ``f``, ``alpha``, ``match_norm``.
        map: Optional learned ``W``.
    """
    a = a[:, None, :] if a.ndim == 2 else a
    positions = positions[:, None] if positions.ndim == 1 else positions

    def fn(b: Float[Tensor, "batch n d_b"]) -> Float[Tensor, "batch n d_b"]:
        return combine(a, b, config.f, map=map, alpha=config.alpha, match_norm=config.match_norm)

    return Edit(layer=config.j, positions=positions, fn=fn)


def communicate(
    sender: Model,
    receiver: Model,
    sender_prompts: Sequence[str],
    receiver_prompts: Sequence[str],
    config: GraftConfig,
    *,
    map: LinearMap | None = None,
    backend: str = "nnsight",
    decoding: Decoding = Decoding(),
    receiver_replies: Sequence[str] | None = None,
    sender_replies: Sequence[str] | None = None,
    sender_states: Float[Tensor, "batch n d_a"] | None = None,
) -> Exchange:
    """Run one activation-communication exchange for a batch of prompt pairs.

    Args:
        sender: Model A.
        receiver: Model B (may be the same object as A).
        sender_prompts: A's prompts, one per pair.
        receiver_prompts: B's prompts, one per pair.
        config: Layers, f, alpha, position.
        map: A learned ``W`` for this pair and layers (optional).
        backend: ``"nnsight"`` or ``"transformer-lens"``.
        decoding: Greedy by default.
        receiver_replies: Optional start of each of B's answers, part of B's
            prompt (``"last"`` is then the reply's last token).
        sender_replies: The same for A (e.g. A's own chain of thought, whose
            last token then carries the message).
        sender_states: A's states after block ``k`` at the ``n_positions``
            grafted positions, ``[batch, n_positions, d_A]``, when already
            captured (a sweep over n captures them once); A does not run.

    Returns:
        B's continuations under the graft.

    Raises:
        CommlibError: mismatched batch sizes, bad layers, f, widths or map.
    """
    if isinstance(sender_prompts, str) or isinstance(receiver_prompts, str):
        raise TypeError("pass lists of prompts, not single strings")
    if len(sender_prompts) != len(receiver_prompts):
        raise CommlibError(
            f"{len(sender_prompts)} sender prompts but {len(receiver_prompts)} receiver prompts: pair them up"
        )
    check_prompts(receiver_prompts, "receiver")
    if config.f != NO_GRAFT and sender_states is None:
        check_prompts(sender_prompts, "sender")
    rb = get_backend(receiver, backend)
    batch = encode(receiver, receiver_prompts, raw=config.raw, replies=receiver_replies)
    edit = None
    if config.f != NO_GRAFT:
        check_layer(receiver, config.j, "j")
        if map is not None:
            map.check_pair(sender.name, receiver.name, config.k, config.j)
        check_layer(sender, config.k, "k")
        a = (
            sender_states
            if sender_states is not None
            else capture_span(
                get_backend(sender, backend),
                sender_prompts,
                config.k,
                config.position,
                config.n_positions,
                raw=config.raw,
                replies=sender_replies,
            )
        )
        if a.shape[:2] != (len(sender_prompts), config.n_positions):
            raise CommlibError(
                f"sender_states must be [{len(sender_prompts)}, {config.n_positions}, d_A]; "
                f"got {tuple(a.shape)}"
            )
        end = message_positions(
            receiver, receiver_prompts, batch, config.position, raw=config.raw, replies=receiver_replies
        )
        edit = graft_edit(a, message_span(batch, end, config.n_positions), config, map)
    gen = rb.generate(batch, edit, decoding)
    return Exchange(
        texts=gen.texts,
        token_ids=gen.token_ids,
        first_logits=gen.first_logits,
        config=config,
        sender=sender.name,
        receiver=receiver.name,
        backend=rb.name,
        decoding=decoding,
        map_info=asdict(map.info) if map is not None else None,
    )


def capture_corpus(
    model: Model,
    sentences: Sequence[str],
    layers: Sequence[int],
    *,
    backend: str = "nnsight",
    batch_size: int = 32,
    desc: str | None = None,
    formatted: bool = False,
    position: Position = "last",
    reply: str | Sequence[str] = "",
) -> dict[int, Float[Tensor, "n d"]]:
    """Residuals after each of ``layers`` for sentences, in batches: one pass for all layers.

    By default the sentences are fed raw and the final token is read. With
    ``formatted=True`` each sentence is the user's text in the model's prompt
    format (followed by ``reply``, one for all or one per sentence) and the
    state is read at ``position``, as for a game prompt.
    """
    import torch
    from tqdm.auto import tqdm

    be = get_backend(model, backend)
    for layer in layers:
        check_layer(model, layer)
    all_replies = [reply] * len(sentences) if isinstance(reply, str) else list(reply)
    # batches of sentences of similar length waste little on padding; rows go back to sentence order
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]) + len(all_replies[i]))
    rows: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    for start in tqdm(range(0, len(sentences), batch_size), desc=desc or f"{model.name} corpus", leave=False):
        index = order[start : start + batch_size]
        chunk = [sentences[i] for i in index]
        if formatted:
            replies = [all_replies[i] for i in index]
            batch = encode(model, chunk, replies=replies)
            positions = message_positions(model, chunk, batch, position, replies=replies)
            acts = be.capture_layers(batch, layers, positions)
        else:
            acts = be.capture_layers(encode(model, chunk, raw=True), layers)
        for layer in layers:
            rows[layer].append(acts[layer].float().cpu())
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return {layer: torch.cat(r)[back] for layer, r in rows.items()}


def fit_map(
    sender: Model,
    receiver: Model,
    k: int,
    j: int,
    *,
    corpus: str = "lambada",
    n: int = 3072,
    seed: int = 0,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-3,
    backend: str = "nnsight",
    prompts: Sequence[str] | None = None,
    fit: str = "adam",
) -> LinearMap:
    """Train the task-agnostic map ``W`` for a pair as in the paper.

    Final-token activations of A (block ``k``) and B (block ``j``) on the same
    ``n`` sentences of ``corpus``; Xavier init, Adam, MSE, batch 32, 10 epochs.
    With ``prompts`` instead, an in-distribution ``W``: both models read each
    prompt in their prompt format and the states at its last token, where AC
    reads and writes, are paired (``corpus`` then names the prompts' source).

    Example:
        >>> from commlib.models import load_model
        >>> a, b = load_model("tiny-llama-random"), load_model("tiny-llama-wide-random")
        >>> w = fit_map(a, b, 1, 1, n=64, epochs=1)
        >>> w.weight.shape
        torch.Size([96, 64])
    """
    from commlib.combine import fit_linear_map, fit_ridge_map
    from commlib.corpora import load_sentences

    check_layer(sender, k, "k")
    check_layer(receiver, j, "j")
    if fit not in ("adam", "ridge"):
        raise CommlibError(f"unknown fit {fit!r}; use adam (the paper's) or ridge")
    formatted = prompts is not None
    sentences = list(prompts) if prompts is not None else load_sentences(corpus, n=n, seed=seed)
    if not sentences:
        raise CommlibError("no prompts to fit W on: pass a non-empty list")
    a = capture_corpus(sender, sentences, [k], backend=backend, formatted=formatted)[k]
    b = (
        a
        if (sender is receiver and k == j)
        else capture_corpus(receiver, sentences, [j], backend=backend, formatted=formatted)[j]
    )
    names: dict[str, Any] = {
        "sender": sender.name,
        "receiver": receiver.name,
        "k": k,
        "j": j,
        "corpus": corpus,
    }
    if fit == "ridge":
        return fit_ridge_map(a, b, seed=seed, **names)
    return fit_linear_map(
        a,
        b,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        **names,
    )
