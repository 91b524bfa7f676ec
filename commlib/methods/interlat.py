"""Interlat-style trajectory messages (Du et al., 2025), zero-shot variants.

The sender writes its message greedily; its last-layer hidden state at every
step (what its LM head reads) forms ``H = [h_1 .. h_L]``. The receiver reads
``H`` as input embeddings where a text message would go (the ``nl``
template's slot, as CIPHER does), either raw or rescaled row by row to the
median norm of the receiver's own input embeddings. The trained variant (an
adapter between the two, with learned boundary embeddings) builds on this.

Example:
    >>> from commlib.models import load_model
    >>> m = load_model("tiny-llama-random")
    >>> t = trajectory_message(m, "Alice is at the Eiffel Tower.", max_tokens=3)
    >>> t.hidden.shape[1] == m.info.d_model, len(t.token_ids) == t.hidden.shape[0]
    (True, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from commlib.errors import CommlibError
from commlib.methods.cipher import _scale, _table
from commlib.models import Model
from commlib.prompts import encode, format_prompt
from commlib.tasks.games import GameItem


@dataclass(frozen=True)
class Trajectory:
    """A sender's message as hidden states.

    Attributes:
        hidden: ``[L, d_A]`` last-layer hidden state at each generated step
            (the state that chose the step's token).
        token_ids: The greedy tokens, up to (not including) EOS.
        text: Their text.
    """

    hidden: Float[Tensor, "L d"]
    token_ids: list[int]
    text: str


_TRAJECTORIES: dict[tuple[int, str, int], tuple[Model, Trajectory]] = {}
_CACHE_SIZE = 1024


def trajectory_message(sender: Model, prompt: str, *, max_tokens: int = 48) -> Trajectory:
    """Greedy message for ``prompt`` (the full instruction) with the hidden state of every step.

    Deterministic, so it is kept in memory (the last 1024 per process): the
    Interlat variants of one run share A's work.
    """
    key = (id(sender), prompt, max_tokens)
    if key not in _TRAJECTORIES:
        if len(_TRAJECTORIES) >= _CACHE_SIZE:
            _TRAJECTORIES.pop(next(iter(_TRAJECTORIES)))
        _TRAJECTORIES[key] = (sender, _trajectory(sender, prompt, max_tokens))  # the model keeps its id
    return _TRAJECTORIES[key][1]


@torch.no_grad()
def _trajectory(sender: Model, prompt: str, max_tokens: int) -> Trajectory:
    tok = sender.tokenizer
    ids = encode(sender, [prompt]).input_ids
    out = sender.hf(input_ids=ids.to(sender.device), output_hidden_states=True, use_cache=True)
    eos = set(sender.eos_token_ids())
    hidden: list[Tensor] = []
    chosen: list[int] = []
    for _ in range(max_tokens):
        nxt = int(out.logits[0, -1].argmax())
        if nxt in eos:
            break
        hidden.append(out.hidden_states[-1][0, -1].float())
        chosen.append(nxt)
        out = sender.hf(
            input_ids=torch.tensor([[nxt]], device=sender.device),
            past_key_values=out.past_key_values,
            output_hidden_states=True,
            use_cache=True,
        )
    d = sender.info.d_model
    return Trajectory(
        hidden=torch.stack(hidden) if hidden else torch.zeros(0, d),
        token_ids=chosen,
        text=str(tok.decode(chosen, skip_special_tokens=True)),
    )


def embedding_norm(model: Model) -> float:
    """Median norm of the model's input embeddings as it feeds them (scale included)."""
    return float(_table(model).float().norm(dim=-1).median()) * float(_scale(model))


def as_receiver_inputs(
    trajectory: Trajectory, receiver: Model, *, rescale: bool
) -> Float[Tensor, "L d_B"]:
    """``H`` as the receiver's input embeddings: raw, or each row rescaled to its median embedding norm.

    Raises:
        CommlibError: widths differ (zero-shot needs d_A = d_B; the trained
            adapter maps between widths).
    """
    h = trajectory.hidden
    if h.shape[-1] != receiver.info.d_model:
        raise CommlibError(
            f"zero-shot Interlat needs the same width: the message is {h.shape[-1]}-d, "
            f"{receiver.name} reads {receiver.info.d_model}-d; train an adapter for this pair"
        )
    if not rescale:
        return h
    return h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12) * embedding_norm(receiver)


# --------------------------------------------------------------------------- #
# The trained variant: an adapter between A's states and B's inputs
# --------------------------------------------------------------------------- #


class InterlatAdapter(torch.nn.Module):
    """Reads A's hidden states into B's input space.

    LayerNorm, one self-attention layer with a residual, an MLP projection to
    B's width with a learnable output scale, and learned boundary embeddings
    placed before and after the latents (Interlat's ``<bop>``, ``<eop>``).

    Args:
        d_in: A's width.
        d_out: B's width.
        target_norm: Norm of B's typical input embedding (initial output and boundary scale).
        n_heads: Attention heads (must divide ``d_in``).
    """

    def __init__(self, d_in: int, d_out: int, *, target_norm: float, n_heads: int = 4) -> None:
        super().__init__()
        heads = n_heads if d_in % n_heads == 0 else 1
        self.norm = torch.nn.LayerNorm(d_in)
        self.attn = torch.nn.MultiheadAttention(d_in, heads, batch_first=True)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(d_in, 2 * d_out), torch.nn.GELU(), torch.nn.Linear(2 * d_out, d_out)
        )
        self.scale = torch.nn.Parameter(torch.tensor(float(target_norm)))
        self.boundaries = torch.nn.Parameter(torch.randn(2, d_out) * target_norm / d_out**0.5)

    def forward(self, h: Float[Tensor, "L d_in"]) -> Float[Tensor, "L d_out"]:
        x = self.norm(h[None])
        x = x + self.attn(x, x, x, need_weights=False)[0]
        y = self.mlp(x)[0]
        return self.scale * y / y.norm(dim=-1, keepdim=True).clamp_min(1e-6)

    def message(self, h: Float[Tensor, "L d_in"]) -> Float[Tensor, "L2 d_out"]:
        """What B reads: ``<bop>``, the adapted latents, ``<eop>``."""
        return torch.cat([self.boundaries[:1], self(h), self.boundaries[1:]])


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter was trained on; saved next to its weights."""

    sender: str
    receiver: str
    game: str
    n_train: int
    seed: int
    steps: int
    lr: float
    message_tokens: int
    losses: tuple[float, ...]


def _slot_inputs(receiver: Model, item: GameItem, message: Tensor) -> tuple[Tensor, Tensor]:
    """B's input embeddings with ``message`` in the nl slot, followed by the answer; and the answer ids."""
    from commlib.methods import NL_TEMPLATE
    from commlib.methods.cipher import _embed, _prompt_parts
    from commlib.sweep import answer_ids

    template = NL_TEMPLATE.format(message="{message}", receiver=item.receiver)
    pre, post = _prompt_parts(receiver, template, item.reply)
    target = answer_ids(receiver, item.answer, format_prompt(receiver, "x", reply=item.reply))
    embeds = torch.cat([_embed(receiver, pre), message, _embed(receiver, torch.cat([post, target[:-1]]))])
    return embeds[None], target


def adapter_loss(
    adapter: InterlatAdapter, receiver: Model, item: GameItem, trajectory: Trajectory, r: float
) -> Tensor:
    """Cross-entropy of B's answer when it reads the first ``r`` of the latents, then the rest as text."""
    from commlib.methods.cipher import _embed

    m = round(r * len(trajectory.token_ids))
    parts = [adapter.boundaries[:1], adapter(trajectory.hidden[:m]) if m else adapter.boundaries[:0],
             adapter.boundaries[1:]]  # fmt: skip
    rest = trajectory.token_ids[m:]
    if rest:
        parts.append(_embed(receiver, torch.tensor(rest, dtype=torch.long)))
    embeds, target = _slot_inputs(receiver, item, torch.cat(parts))
    logits = receiver.hf(inputs_embeds=embeds).logits[0, -target.numel() :]
    return torch.nn.functional.cross_entropy(logits.float(), target)


def train_adapter(
    sender: Model,
    receiver: Model,
    game: str,
    out_dir: str | Path,
    *,
    n_train: int = 100,
    steps: int = 300,
    lr: float = 1e-3,
    seed: int = 1000,
    message_tokens: int = 48,
    checkpoint_every: int = 50,
    progress: bool = True,
) -> InterlatAdapter:
    """Train an :class:`InterlatAdapter` with B frozen, on ``n_train`` items of ``game`` drawn with ``seed``.

    Each step takes one item and a fraction r ~ U(0, 1): B reads ``<bop>``,
    the adapted first r of A's latents, ``<eop>``, then the rest of A's
    message as text (Interlat's curriculum), and the loss is the
    cross-entropy of B's answer. A's trajectories are computed once and
    cached in ``out_dir``; the adapter, its optimizer and metadata are saved
    every ``checkpoint_every`` steps, and a re-run resumes from there.
    Keep ``seed`` away from the evaluation seeds (0 and 1 in the notebooks).

    Raises:
        CommlibError: ``out_dir`` holds an adapter trained with other settings.
    """
    from tqdm.auto import tqdm

    from commlib.methods import _message_prompt
    from commlib.results import claim_run_dir
    from commlib.tasks.games import load_game

    out = Path(out_dir)
    claim_run_dir(out, {"sender": sender.name, "receiver": receiver.name, "game": game, "n_train": n_train,
                        "seed": seed, "lr": lr, "message_tokens": message_tokens})  # fmt: skip
    items = load_game(game, n=n_train, seed=seed)
    cache = out / "trajectories.pt"
    if cache.exists():
        trajectories = [Trajectory(**t) for t in torch.load(cache)]
    else:
        trajectories = [
            trajectory_message(sender, _message_prompt(it), max_tokens=message_tokens)
            for it in tqdm(items, desc="A's trajectories", disable=not progress)
        ]
        torch.save([vars(t) for t in trajectories], cache)
    torch.manual_seed(seed)
    d_a, d_b = sender.info.d_model, receiver.info.d_model
    adapter = InterlatAdapter(d_a, d_b, target_norm=embedding_norm(receiver))
    optimizer = torch.optim.Adam(adapter.parameters(), lr=lr)
    losses: list[float] = []
    state = out / "checkpoint.pt"
    if state.exists():
        saved = torch.load(state)
        adapter.load_state_dict(saved["adapter"])
        optimizer.load_state_dict(saved["optimizer"])
        losses = saved["losses"]
    for p in receiver.hf.parameters():
        p.requires_grad_(False)
    rng = torch.Generator().manual_seed(seed + len(losses))
    with torch.enable_grad():
        for step in tqdm(range(len(losses), steps), desc="adapter", disable=not progress):
            i = int(torch.randint(len(items), (1,), generator=rng))
            r = float(torch.rand((), generator=rng))
            loss = adapter_loss(adapter, receiver, items[i], trajectories[i], r)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
                torch.save({"adapter": adapter.state_dict(), "optimizer": optimizer.state_dict(),
                            "losses": losses}, state)  # fmt: skip
    info = AdapterInfo(sender.name, receiver.name, game, n_train, seed, len(losses), lr, message_tokens,
                       tuple(losses))  # fmt: skip
    save_adapter(adapter, info, out)
    return adapter


def save_adapter(adapter: InterlatAdapter, info: AdapterInfo, out_dir: str | Path) -> None:
    """Weights to ``adapter.safetensors``, what it was trained on to ``adapter.json``."""
    import json

    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous() for k, v in adapter.state_dict().items()}
    save_file(weights, out / "adapter.safetensors")
    (out / "adapter.json").write_text(json.dumps(asdict(info), indent=2))


def load_adapter(out_dir: str | Path) -> tuple[InterlatAdapter, AdapterInfo]:
    """Read what :func:`save_adapter` wrote.

    Raises:
        CommlibError: no adapter there.
    """
    import json

    from safetensors.torch import load_file

    out = Path(out_dir)
    if not (out / "adapter.safetensors").exists():
        raise CommlibError(f"no adapter in {out}: train one with `commlib train-adapter`")
    info_d = json.loads((out / "adapter.json").read_text())
    info = AdapterInfo(**{**info_d, "losses": tuple(info_d["losses"])})
    weights = load_file(out / "adapter.safetensors")
    d_out, d_in = weights["boundaries"].shape[1], weights["norm.weight"].shape[0]
    adapter = InterlatAdapter(d_in, d_out, target_norm=1.0)
    adapter.load_state_dict(weights)
    return adapter.eval(), info
