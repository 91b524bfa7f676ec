"""``kv-fuser``: a small trained projector from A's KV cache to B's, for pairs whose caches do not fit.

After C2C (Cache-to-Cache, Fu et al. 2025, arXiv 2510.03215, ``thu-nics/C2C``),
simplified. For each of B's layers, A's layer at the nearest relative depth
(C2C's ``k_nearest_sources`` with k = 1; their default aligns the last
layers) gives, per position, its keys and values over all of A's key/value
heads, concatenated; a per-layer MLP (LayerNorm, Linear to ``hidden``, GELU,
Linear) maps them to B's keys and values over B's key/value heads. Keys are
taken out of A's rotary position code first and put into B's after (both at
positions 0 .. T-1, where B reads them), so the MLP never has to learn a
rotation. Each of B's layers has a learned gate, C2C's: a logit, relaxed
while training (logistic noise, ``sigmoid((logit + noise) / tau)``, tau
annealed from 1 to 0.001 over the run) and hard when reading (open when the
logit is above 0). The gate weighs A's positions in that layer's attention
(its log is added to their attention logits, :func:`commlib.channels.kv.hidden_prefix`);
a closed gate hides them. The logits start at 0, so an untrained fuser is B
alone, exactly.

B then reads the projected cache as ``kv`` reads A's (:func:`commlib.channels.kv.read_kv`,
at the open layers): A's positions first, B's prompt after. Deviations from
C2C: B has no cache of its own over A's prompt (A's prompt is A's private
information here; C2C fuses into the receiver's cache over a shared context),
so there is no residual onto B's keys and values, no receiver features in the
MLP's input, and no per-head input-dependent weights; the gate acts on
attention, not on a residual; keys are de-rotated; one MLP per layer for keys
and values together. Trained (A and B frozen) on B's teacher-forced answer
log-likelihood after its prompt (:func:`train_fuser`), resumable.

Example:
    >>> from commlib.channels.kv import kv_messages
    >>> from commlib.models import load_model
    >>> a, b = load_model("tiny-llama-random"), load_model("tiny-llama-wide-random")
    >>> fuser = KVFuser(CacheShape.of(a), CacheShape.of(b), hidden=8)
    >>> msg = fuse(a, b, fuser, kv_messages(a, ["Alice is at the Eiffel Tower."])[0])
    >>> tuple(msg.keys.shape[:2]) == (b.info.n_layers, CacheShape.of(b).kv_heads), fuser.open_layers()
    (True, ())
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from commlib.channels.interlat import _load, _save, _train
from commlib.channels.kv import KVMessage, _cache, hidden_prefix, kv_messages, read_kv
from commlib.channels.slot import Reading, embed, message_prompt
from commlib.errors import CommlibError
from commlib.models import Model
from commlib.prompts import Batch, encode, format_prompt
from commlib.results import claim_run_dir, placement
from commlib.sweep import answer_ids
from commlib.tasks.games import GameItem

FUSER_HIDDEN = 256
"""Width of each layer's MLP."""
GATE_TEMPERATURE = (1.0, 0.001)
"""The gate's relaxation temperature at the first and the last training step (C2C's schedule, annealed
geometrically over the run)."""


@dataclass(frozen=True)
class CacheShape:
    """What a model's KV cache looks like: layers, key/value heads, head size."""

    layers: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, model: Model) -> CacheShape:
        c = model.hf.config.get_text_config()
        heads = c.num_attention_heads
        return cls(
            c.num_hidden_layers,
            getattr(c, "num_key_value_heads", None) or heads,
            getattr(c, "head_dim", None) or c.hidden_size // heads,
        )

    @property
    def width(self) -> int:
        """Keys and values of one position at one layer: ``2 x kv_heads x head_dim``."""
        return 2 * self.kv_heads * self.head_dim


def layer_map(source: int, target: int) -> tuple[int, ...]:
    """For each of ``target`` layers, the ``source`` layer at the nearest relative depth (ties: the lower).

    Example:
        >>> layer_map(24, 28)[:4], layer_map(24, 28)[-1], layer_map(4, 3)
        ((0, 1, 2, 3), 23, (0, 2, 3))
    """

    def depth(i: int, n: int) -> float:
        return i / (n - 1) if n > 1 else 0.0

    return tuple(
        min(range(source), key=lambda s: (abs(depth(s, source) - depth(t, target)), s)) for t in range(target)
    )


class KVFuser(torch.nn.Module):
    """Per layer of B: an MLP from A's keys and values (one position, all heads) to B's, and a gate.

    Args:
        source: A's cache shape.
        target: B's cache shape.
        hidden: Width of each MLP.
    """

    def __init__(self, source: CacheShape, target: CacheShape, *, hidden: int = FUSER_HIDDEN) -> None:
        super().__init__()
        self.source, self.target, self.hidden = source, target, hidden
        self.sources = layer_map(source.layers, target.layers)
        self.projections = torch.nn.ModuleList(
            torch.nn.Sequential(
                torch.nn.LayerNorm(source.width),
                torch.nn.Linear(source.width, hidden),
                torch.nn.GELU(),
                torch.nn.Linear(hidden, target.width),
            )
            for _ in range(target.layers)
        )
        self.gate_logits = torch.nn.Parameter(torch.zeros(target.layers))

    def forward(
        self, keys: Float[Tensor, "la ha t da"], values: Float[Tensor, "la ha t da"]
    ) -> tuple[Float[Tensor, "lb hb t db"], Float[Tensor, "lb hb t db"]]:
        """A's keys (out of RoPE) and values, ``[L_A, H_A, T, D_A]``, as B's, ``[L_B, H_B, T, D_B]``."""
        a, b, tokens = self.source, self.target, keys.shape[2]
        p = self.gate_logits
        flat = torch.cat([keys, values], dim=1).to(p).permute(0, 2, 1, 3).reshape(a.layers, tokens, a.width)
        out = torch.stack([proj(flat[s]) for proj, s in zip(self.projections, self.sources, strict=True)])
        out = out.reshape(b.layers, tokens, 2 * b.kv_heads, b.head_dim).permute(0, 2, 1, 3)
        return out[:, : b.kv_heads], out[:, b.kv_heads :]

    def open_layers(self) -> tuple[int, ...]:
        """B's layers whose hard gate is open (logit above 0): where B reads the fused cache."""
        return tuple(int(i) for i in torch.nonzero(self.gate_logits.detach() > 0).flatten())

    def gate_bias(self, noise: Tensor, temperature: float) -> Tensor:
        """The relaxed gate's log, ``log sigmoid((logit + noise) / tau)``, per layer of B (training)."""
        return torch.nn.functional.logsigmoid((self.gate_logits + noise.to(self.gate_logits)) / temperature)

    def parameter_count(self) -> int:
        """Trained parameters."""
        return sum(p.numel() for p in self.parameters())


def _rope(model: Model, layer: int, tokens: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """``cos`` and ``sin`` of the model's rotary code at positions ``0 .. tokens-1`` for ``layer``."""
    rotary = getattr(model.hf.model, "rotary_emb", None)
    if rotary is None:
        raise CommlibError(f"{model.name} has no rotary position code the fuser can undo: use a RoPE model")
    positions = torch.arange(tokens, device=like.device)[None]
    if "layer_type" in inspect.signature(rotary.forward).parameters:  # Gemma 3: local and global layers
        cos, sin = rotary(like, positions, model.hf.config.get_text_config().layer_types[layer])
    else:
        cos, sin = rotary(like, positions)
    return cos[0].float(), sin[0].float()


def _half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def _rotate(model: Model, keys: Tensor, *, inverse: bool) -> Tensor:
    """Keys ``[layers, heads, T, D]`` into (``inverse``: out of) the model's RoPE at positions 0 .. T-1."""
    out = []
    for layer, k in enumerate(keys.float()):
        cos, sin = _rope(model, layer, k.shape[1], k)
        if inverse:  # the rotation by -theta, divided by the code's scale squared (1 for plain RoPE)
            out.append((k * cos - _half(k) * sin) / (cos**2 + sin**2))
        else:
            out.append(k * cos + _half(k) * sin)
    return torch.stack(out)


def fuse(sender: Model, receiver: Model, fuser: KVFuser, message: KVMessage) -> KVMessage:
    """A's message (its prompt's cache) as B's cache: out of A's RoPE, through the fuser, into B's.

    Differentiable (training); the message is not changed.

    Raises:
        CommlibError: a message or models of another shape than the fuser's.
    """
    check_fuser(fuser, sender, receiver)
    keys = _rotate(sender, message.keys.to(receiver.device), inverse=True)
    k, v = fuser(keys, message.values.to(receiver.device))
    return KVMessage(_rotate(receiver, k, inverse=False), v, message.tokens)


@torch.no_grad()
def read_fused(
    sender: Model,
    receiver: Model,
    fuser: KVFuser,
    messages: Sequence[KVMessage],
    batch: Batch,
    *,
    max_new_tokens: int = 6,
) -> list[Reading]:
    """B's greedy answers to ``batch``, row i reading ``messages[i]`` through the fuser at its open layers.

    :func:`commlib.channels.kv.read_kv` on the fused caches; a closed gate
    everywhere is B alone. The messages are not changed.
    """
    fused = [fuse(sender, receiver, fuser, m.truncated(0)) for m in messages]
    return read_kv(receiver, fused, batch, layers=fuser.open_layers(), max_new_tokens=max_new_tokens)


def fused_answer_loss(
    receiver: Model, fused: KVMessage, prompt: Tensor, target: Tensor, gate_bias: Tensor
) -> Tensor:
    """B's answer cross-entropy (teacher-forced) after its ``prompt`` ids, reading ``fused`` in front.

    Every layer of B reads A's positions weighted by ``gate_bias`` (the gate's log, per layer).
    """
    ids = torch.cat([prompt, target[:-1]]).to(receiver.device)[None]
    past, mask_a = _cache(receiver, [fused])
    mask = torch.cat([mask_a, torch.ones_like(ids)], dim=1)
    positions = (mask.cumsum(-1) - 1)[:, -ids.shape[1] :]
    bias = {layer: gate for layer, gate in enumerate(gate_bias)}
    with hidden_prefix(receiver, (), mask_a.shape[1], bias=bias):
        out = receiver.hf(
            inputs_embeds=embed(receiver, ids), attention_mask=mask, position_ids=positions,
            past_key_values=past, use_cache=True, logits_to_keep=target.numel(),
        )  # fmt: skip
    logits = out.logits[0, -target.numel() :].float()  # only the answer's positions are unembedded
    return torch.nn.functional.cross_entropy(logits, target.to(logits.device))


@dataclass(frozen=True)
class FuserInfo:
    """What a fuser was trained on; saved next to its weights (``fuser.json``)."""

    sender: str
    receiver: str
    game: str
    items: tuple[str, ...]
    seed: int
    steps: int
    lr: float
    hidden: int
    source: tuple[int, int, int]
    target: tuple[int, int, int]
    parameters: int
    open_layers: tuple[int, ...]
    losses: tuple[float, ...]


def _receiver_side(receiver: Model, item: GameItem) -> tuple[Tensor, Tensor]:
    """B's prompt ids (with the reply) and the answer's ids after it."""
    batch = encode(receiver, [item.receiver], replies=[item.reply])
    prompt = batch.input_ids[0][batch.attention_mask[0].bool()]
    return prompt, answer_ids(receiver, item.answer, format_prompt(receiver, "x", reply=item.reply))


def train_fuser(
    sender: Model,
    receiver: Model,
    game: str,
    out_dir: str | Path,
    *,
    items: Sequence[GameItem],
    steps: int = 300,
    lr: float = 1e-3,
    seed: int = 1000,
    hidden: int = FUSER_HIDDEN,
    checkpoint_every: int = 1,
    progress: bool = True,
) -> KVFuser:
    """Train a :class:`KVFuser` for ``sender`` -> ``receiver`` on ``items`` (a selection pool), A, B frozen.

    Each step takes one item (drawn with ``seed``) and a draw of the gates'
    noise: B reads A's fused message-prompt cache, every layer weighted by
    its relaxed gate, then its own prompt and the answer; the loss is the
    answer's cross-entropy (:func:`fused_answer_loss`). A's caches are
    computed once. The fuser, its optimizer and the losses are saved to
    ``out_dir/checkpoint.pt`` every ``checkpoint_every`` steps (atomically)
    and a re-run resumes there; weights and :class:`FuserInfo` go to
    ``out_dir/fuser.safetensors`` and ``fuser.json``.

    Example:
        >>> import tempfile
        >>> from commlib.models import load_model
        >>> from commlib.tasks.games import countries
        >>> a, b = load_model("tiny-llama-random"), load_model("tiny-llama-wide-random")
        >>> with tempfile.TemporaryDirectory() as out:
        ...     f = train_fuser(a, b, "countries", out, items=countries(2), steps=2, hidden=8, progress=False)
        ...     load_fuser(out)[1].steps
        2

    Raises:
        CommlibError: fewer than one item, or ``out_dir`` holding a fuser trained with other settings.
    """
    if not items:
        raise CommlibError("training the fuser needs at least one item: raise --n-selection")
    out = Path(out_dir)
    chosen, ids = list(items), tuple(it.id for it in items)
    settings = {
        "sender": sender.name, "receiver": receiver.name, "game": game, "items": list(ids),
        "seed": seed, "lr": lr, "hidden": hidden,
    }  # fmt: skip
    claim_run_dir(out, {**settings, "placement": placement(sender=sender, receiver=receiver)})
    messages = kv_messages(sender, [message_prompt(it) for it in chosen], batch_size=8)
    targets = [_receiver_side(receiver, it) for it in chosen]
    torch.manual_seed(seed)
    fuser = KVFuser(CacheShape.of(sender), CacheShape.of(receiver), hidden=hidden).to(receiver.device).train()
    state = out / "checkpoint.pt"
    done = [len(torch.load(state)["losses"]) if state.exists() else 0]
    first, last = GATE_TEMPERATURE

    def step_loss(i: int, rng: torch.Generator) -> Tensor:
        step, done[0] = done[0], done[0] + 1
        tau = first * (last / first) ** min(step / max(steps - 1, 1), 1.0)
        u = torch.rand(fuser.target.layers, generator=rng).clamp(1e-6, 1 - 1e-6)
        bias = fuser.gate_bias(u.log() - (1 - u).log(), tau)
        fused = fuse(sender, receiver, fuser, messages[i])
        return fused_answer_loss(receiver, fused, *targets[i], bias)

    losses = _train(
        fuser, step_loss, len(chosen), out, steps=steps, lr=lr, seed=seed,
        checkpoint_every=checkpoint_every, frozen=[sender.hf, receiver.hf], progress=progress,
        desc="kv fuser",
    )  # fmt: skip
    fuser.eval()
    info = FuserInfo(
        sender.name, receiver.name, game, ids, seed, len(losses), lr, hidden,
        _shape(fuser.source), _shape(fuser.target), fuser.parameter_count(), fuser.open_layers(),
        tuple(losses),
    )  # fmt: skip
    _save(fuser, asdict(info), out, "fuser")
    return fuser


def _shape(s: CacheShape) -> tuple[int, int, int]:
    return (s.layers, s.kv_heads, s.head_dim)


def load_fuser(out_dir: str | Path) -> tuple[KVFuser, FuserInfo]:
    """Read what :func:`train_fuser` wrote.

    Raises:
        CommlibError: no fuser there.
    """
    weights, d = _load(Path(out_dir), "fuser", "train one with `commlib thesis --channels kv-fuser`")
    tuples = ("items", "source", "target", "open_layers", "losses")
    fields: dict[str, Any] = {k: tuple(v) if k in tuples else v for k, v in d.items()}
    info = FuserInfo(**fields)
    fuser = KVFuser(CacheShape(*info.source), CacheShape(*info.target), hidden=info.hidden)
    fuser.load_state_dict(weights)
    return fuser.eval(), info


def check_fuser(fuser: KVFuser, sender: Model, receiver: Model) -> None:
    """Refuse a fuser trained for caches of another shape than A's and B's.

    Raises:
        CommlibError: naming both.
    """
    if (CacheShape.of(sender), CacheShape.of(receiver)) != (fuser.source, fuser.target):
        raise CommlibError(
            f"the fuser maps {fuser.source} to {fuser.target}, not {sender.name} -> {receiver.name}: "
            "train one for this pair"
        )


def fuser_record(fuser: KVFuser) -> dict[str, Any]:
    """What a run records of its fuser: shapes, layer map, parameters, open layers."""
    return {
        "source": _shape(fuser.source),
        "target": _shape(fuser.target),
        "layer_map": list(fuser.sources),
        "hidden": fuser.hidden,
        "parameters": fuser.parameter_count(),
        "open_layers": list(fuser.open_layers()),
        "gate_logits": [round(float(x), 4) for x in fuser.gate_logits.detach()],
    }
