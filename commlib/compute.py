"""Analytic compute of the communication methods, from model shapes and token counts.

The paper (Ramesh & Li, 2025, Section 3.2) counts forward-pass FLOPs after
Hoffmann et al. (2022): per layer ``8PDKH + 4P^2KH + 3HP^2 + 4PDF``, plus
``2PVD`` for the (un)embedding, for P tokens, width D, H heads of size K,
MLP width F and vocabulary V; NL costs M passes of A on its P-token prompt
and T passes of B on P + M tokens, AC one partial pass of A (to block k) and
T passes of B on P tokens. :func:`paper_forward_flops` is that formula.

:func:`forward_flops` generalises it to what the models here are: grouped
key/value heads (K and V projections of ``H_kv`` heads), gated MLPs (three
``D x F`` matrices), and a KV cache (``P`` new tokens attending to ``C``
cached ones). :func:`method_flops` then counts each method with the token
counts of a real run (prompt, message and answer lengths), with the KV
cache (``accounting="kv-cache"``, what commlib runs) or as the paper counts
(``"paper"``: every generated token a full pass over the whole sequence).

Example:
    >>> s = Shape(n_layers=2, d_model=8, n_heads=2, n_kv_heads=2, head_dim=4, d_ff=16, vocab=10,
    ...           gated_mlp=False)
    >>> forward_flops(s, 3) == paper_forward_flops(s, 3)
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Accounting = Literal["kv-cache", "paper"]


@dataclass(frozen=True)
class Shape:
    """What the FLOP count needs of a decoder-only transformer."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    vocab: int
    gated_mlp: bool = True

    @classmethod
    def from_config(cls, config: Any) -> Shape:
        """From a HuggingFace config (LLaMA, Qwen2, Gemma3 and alike)."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            n_layers=config.num_hidden_layers,
            d_model=config.hidden_size,
            n_heads=heads,
            n_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            d_ff=config.intermediate_size,
            vocab=config.vocab_size,
            gated_mlp=True,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paper_forward_flops(shape: Shape, tokens: int) -> float:
    """The paper's count for one pass over ``tokens`` tokens (multi-head attention, two-matrix MLP)."""
    p, d, k, h, f = tokens, shape.d_model, shape.head_dim, shape.n_heads, shape.d_ff
    per_layer = 8 * p * d * k * h + 4 * p * p * k * h + 3 * h * p * p + 4 * p * d * f
    return float(shape.n_layers * per_layer + 2 * p * shape.vocab * d)


def forward_flops(
    shape: Shape, tokens: int, context: int = 0, *, layers: int | None = None, unembed: bool = True
) -> float:
    """FLOPs of one pass over ``tokens`` new tokens that also attend to ``context`` cached ones.

    Args:
        shape: The model.
        tokens: New tokens in this pass (P).
        context: Tokens already in the KV cache (C).
        layers: Run only the first ``layers`` blocks (AC's partial pass of A).
        unembed: Count the ``2PVD`` (un)embedding term (not for a partial pass).
    """
    p, c, d = tokens, context, shape.d_model
    q_width, kv_width = shape.head_dim * shape.n_heads, shape.head_dim * shape.n_kv_heads
    projections = 2 * p * d * (2 * q_width + 2 * kv_width)  # Q and O; K and V
    attended = p * (c + p)  # the paper counts p^2 for a full (uncached) pass
    attention = 4 * attended * q_width + 3 * shape.n_heads * attended
    mlp = (6 if shape.gated_mlp else 4) * p * d * shape.d_ff
    n = shape.n_layers if layers is None else layers
    return float(n * (projections + attention + mlp) + (2 * p * shape.vocab * d if unembed else 0))


def generation_flops(shape: Shape, prompt: int, new: int, accounting: Accounting = "kv-cache") -> float:
    """A prompt of ``prompt`` tokens, then ``new`` generated tokens (greedy, one at a time)."""
    if accounting == "paper":
        return new * paper_forward_flops(shape, prompt)
    total = forward_flops(shape, prompt)
    for step in range(max(new - 1, 0)):  # the prefill gives the first token
        total += forward_flops(shape, 1, prompt + step)
    return total


def method_flops(
    method: str,
    sender: Shape,
    receiver: Shape,
    *,
    prompt_a: int,
    prompt_b: int,
    message: int,
    answer: int,
    k: int | None = None,
    rounds: int = 2,
    accounting: Accounting = "kv-cache",
) -> dict[str, float]:
    """Analytic FLOPs of one item, split by model: ``{"sender": ..., "receiver": ..., "total": ...}``.

    Methods: ``single-a``, ``single-b`` (one model answers its prompt),
    ``nl`` (A writes ``message`` tokens; B reads them with its prompt and
    answers), ``ac`` (A runs to block ``k`` on its prompt; B answers its
    prompt; f itself is negligible), ``ac-cot`` (A writes ``message`` tokens
    of reasoning, then runs to block ``k`` over its prompt and reasoning, as
    commlib does; B answers its prompt), ``nld`` (Du et al.'s debate: in each of
    ``rounds`` rounds each agent answers with ``message`` tokens, reading its
    prompt and every earlier answer; B's last answer is ``answer`` tokens),
    ``cipher-debate`` (the same passes, plus each step's expected embedding
    ``p @ E``, ``2VD`` like the unembedding).
    """
    if method == "single-a":
        return _split(generation_flops(sender, prompt_a, answer, accounting), 0.0)
    if method == "single-b":
        return _split(0.0, generation_flops(receiver, prompt_b, answer, accounting))
    if method == "nl":
        return _split(
            generation_flops(sender, prompt_a, message, accounting),
            generation_flops(receiver, prompt_b + message, answer, accounting),
        )
    if method in ("ac", "ac-cot"):
        if k is None:
            raise ValueError(f"{method} needs k, the sender's block")
        read = prompt_a + (message if method == "ac-cot" else 0)  # the tokens A's partial pass covers
        partial = (
            forward_flops(sender, read, layers=k + 1, unembed=False)
            if accounting == "kv-cache"
            else paper_forward_flops(sender, read) * (k + 1) / sender.n_layers
        )
        reasoning = generation_flops(sender, prompt_a, message, accounting) if method == "ac-cot" else 0.0
        return _split(reasoning + partial, generation_flops(receiver, prompt_b, answer, accounting))
    if method in ("nld", "cipher-debate"):
        a_total = b_total = 0.0
        soft = method == "cipher-debate"
        for r in range(rounds):
            earlier = 2 * r * message  # both agents' answers of every earlier round
            b_new = answer if r == rounds - 1 else message
            a_total += generation_flops(sender, prompt_a + earlier, message, accounting)
            b_total += generation_flops(receiver, prompt_b + earlier, b_new, accounting)
            if soft:
                a_total += 2.0 * message * sender.vocab * sender.d_model
                b_total += 2.0 * b_new * receiver.vocab * receiver.d_model
        return _split(a_total, b_total)
    raise ValueError(f"unknown method {method!r}; use single-a, single-b, nl, ac, nld or cipher-debate")


def _split(sender: float, receiver: float) -> dict[str, float]:
    return {"sender": sender, "receiver": receiver, "total": sender + receiver}


def slot_flops(
    sender: Shape,
    receiver: Shape,
    *,
    prompt_a: int,
    prompt_b: int,
    steps: int,
    slot: int,
    answer: int,
    soft: int = 0,
    accounting: Accounting = "kv-cache",
) -> dict[str, float]:
    """A message B reads as vectors in its prompt (CIPHER, Interlat), split by model as :func:`method_flops`.

    A generates ``steps`` new positions on its ``prompt_a``-token prompt (the
    prefill gives the first); B reads ``slot`` vectors inside its
    ``prompt_b``-token prompt and generates ``answer``. ``soft`` of A's steps
    are CIPHER's expected embeddings, ``p @ E``: ``2VD`` each for A (fed
    back) and for B (read through its own table). An adapter between the two
    is not counted.
    """
    a = generation_flops(sender, prompt_a, steps, accounting) + 2.0 * soft * sender.vocab * sender.d_model
    b = generation_flops(receiver, prompt_b + slot, answer, accounting)
    return _split(a, b + 2.0 * soft * receiver.vocab * receiver.d_model)


def vector_bytes(shape: Shape, *, bytes_per_element: int = 2) -> int:
    """Bytes of one residual vector, what AC sends per message: ``d_model`` elements."""
    return shape.d_model * bytes_per_element


def kv_bytes(shape: Shape, tokens: int, *, layers: int | None = None, bytes_per_element: int = 2) -> int:
    """Bytes of a KV-cache message: 2 (K and V) x layers x kv_heads x head_dim x tokens x bytes per element.

    ``layers``: how many layers are sent (default: all).

    Example:
        >>> s = Shape(n_layers=28, d_model=1536, n_heads=12, n_kv_heads=2, head_dim=128, d_ff=8960,
        ...           vocab=151936)
        >>> kv_bytes(s, 1), kv_bytes(s, 1, layers=8), vector_bytes(s)
        (28672, 8192, 3072)
    """
    n = shape.n_layers if layers is None else layers
    return 2 * n * shape.n_kv_heads * shape.head_dim * tokens * bytes_per_element


def kv_flops(
    sender: Shape, receiver: Shape, *, prompt_a: int, prompt_b: int, answer: int, latent_steps: int = 0
) -> dict[str, float]:
    """A KV-cache message (``kv``, ``latent-steps``), split by model as :func:`method_flops`, with a KV cache.

    A runs its ``prompt_a`` tokens (no unembedding: only its cache is sent)
    and ``latent_steps`` single-position steps, each after the realignment
    (``2 D^2``: a ``D x D`` matrix); B runs its ``prompt_b`` tokens attending
    to A's ``prompt_a + latent_steps`` cached positions and generates
    ``answer``. Counted as if every layer of B read A's positions (an upper
    bound on the attention term when only some do).
    """
    a = forward_flops(sender, prompt_a, unembed=False)
    for step in range(latent_steps):
        a += forward_flops(sender, 1, prompt_a + step, unembed=False) + 2.0 * sender.d_model**2
    context = prompt_a + latent_steps
    b = forward_flops(receiver, prompt_b, context)
    for step in range(max(answer - 1, 0)):
        b += forward_flops(receiver, 1, context + prompt_b + step)
    return _split(a, b)


def fuser_parameters(sender: Shape, receiver: Shape, hidden: int = 256) -> int:
    """Parameters of ``kv-fuser``'s fuser (:class:`commlib.channels.fuser.KVFuser`) for A -> B.

    Per layer of B: a LayerNorm and two linear maps (A's keys and values of one
    position, ``2 x kv_heads x head_dim``, to ``hidden``, to B's), and one gate.
    It is trained and kept with the run, not sent; a message is still A's cache
    (:func:`kv_bytes` of A).

    Example:
        >>> a = Shape(n_layers=24, d_model=896, n_heads=14, n_kv_heads=2, head_dim=64, d_ff=4864,
        ...           vocab=151936)
        >>> b = Shape(n_layers=28, d_model=1536, n_heads=12, n_kv_heads=2, head_dim=128, d_ff=8960,
        ...           vocab=151936)
        >>> fuser_parameters(a, b)
        5540892
    """
    d_in, d_out = 2 * sender.n_kv_heads * sender.head_dim, 2 * receiver.n_kv_heads * receiver.head_dim
    per_layer = 2 * d_in + (d_in + 1) * hidden + (hidden + 1) * d_out + 1
    return receiver.n_layers * per_layer


def fuser_flops(sender: Shape, receiver: Shape, tokens: int, hidden: int = 256) -> float:
    """FLOPs of fusing a ``tokens``-position message: two matrices per layer of B (RoPE, norms left out)."""
    d_in, d_out = 2 * sender.n_kv_heads * sender.head_dim, 2 * receiver.n_kv_heads * receiver.head_dim
    return float(2 * tokens * receiver.n_layers * hidden * (d_in + d_out))
