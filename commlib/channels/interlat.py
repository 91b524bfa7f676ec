"""Interlat-style trajectory messages (Du et al., 2025), zero-shot variants.

The sender writes its message greedily; its last-layer hidden state at every
step (what its LM head reads) forms ``H = [h_1 .. h_L]``
(:mod:`commlib.channels.trajectory`, re-exported here). The receiver reads
``H`` as input embeddings where a text message would go (the ``nl``
template's slot, as CIPHER does), either raw or rescaled row by row to the
median norm of the receiver's own input embeddings. The trained variant (an
adapter between the two, with learned boundary embeddings; optionally
trained with a KL alignment to the receiver reading the text message)
builds on this, and a compressor trained on top of an adapter sends K
vectors instead of L (:func:`train_compressor`).

Example:
    >>> from commlib.models import load_model
    >>> m = load_model("tiny-llama-random")
    >>> t = trajectory_message(m, "Alice is at the Eiffel Tower.", max_tokens=3)
    >>> t.hidden.shape[1] == m.info.d_model, len(t.token_ids) == t.hidden.shape[0]
    (True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from commlib.channels.slot import (
    embed,
    embedding_scale,
    embedding_table,
    message_prompt,
    slot_embeddings,
    slot_template,
)
from commlib.channels.trajectory import Trajectory as Trajectory
from commlib.channels.trajectory import trajectory_message as trajectory_message
from commlib.channels.trajectory import trajectory_messages as trajectory_messages
from commlib.channels.vocab import same_vocabulary
from commlib.errors import CommlibError
from commlib.models import Model
from commlib.prompts import format_prompt
from commlib.results import claim_run_dir, placement
from commlib.sweep import answer_ids
from commlib.tasks.games import GameItem, load_game


def embedding_norm(model: Model) -> float:
    """Median norm of the model's input embeddings as it feeds them (scale included)."""
    return float(embedding_table(model).float().norm(dim=-1).median()) * float(embedding_scale(model))


ZERO_SHOT = ("interlat", "interlat-norm")
"""The Interlat channels B reads without an adapter: A's states as B's input embeddings."""


def check_zero_shot_pair(methods: Sequence[str], sender: Model, receiver: Model) -> None:
    """Refuse zero-shot Interlat among ``methods`` before any work when A and B differ in width.

    Example:
        >>> from commlib.models import load_model
        >>> a, b = load_model("tiny-llama-random"), load_model("tiny-llama-wide-random")
        >>> check_zero_shot_pair(["nl", "interlat-trained"], a, b)  # nothing zero-shot: nothing to refuse

    Raises:
        CommlibError: a zero-shot Interlat method and d_A != d_B.
    """
    zero_shot = [m for m in methods if m in ZERO_SHOT]
    if zero_shot and sender.info.d_model != receiver.info.d_model:
        raise CommlibError(
            f"{zero_shot[0]} (zero-shot) needs the same width, and {sender.name} is {sender.info.d_model}-d, "
            f"{receiver.name} {receiver.info.d_model}-d: drop it or use interlat-trained for this pair"
        )


def as_receiver_inputs(trajectory: Trajectory, receiver: Model, *, rescale: bool) -> Float[Tensor, "L d_B"]:
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
        """What B reads: ``<bop>``, the adapted latents (none for an empty ``h``), ``<eop>``."""
        latents = self(h) if len(h) else self.boundaries[:0]
        return torch.cat([self.boundaries[:1], latents, self.boundaries[1:]])


def check_text_rest(sender: Model, receiver: Model, what: str) -> None:
    """Refuse a pair that tokenizes differently where B reads the rest of A's message as A's tokens.

    :func:`with_text_rest` looks A's token ids up in B's embedding table, which means nothing unless the
    two share a tokenizer.

    Example:
        >>> from commlib.models import load_model
        >>> a = load_model("tiny-llama-random")
        >>> check_text_rest(a, a, "the sweep over n")  # one tokenizer: nothing to refuse

    Raises:
        CommlibError: the two tokenize differently.
    """
    if not same_vocabulary(sender, receiver):
        raise CommlibError(
            f"{what} reads the rest of A's message as A's tokens in B's embeddings, so {sender.name} and "
            f"{receiver.name} must share a tokenizer; use cipher for this pair"
        )


def with_text_rest(receiver: Model, latents: Tensor, trajectory: Trajectory, m: int) -> Tensor:
    """A's first ``m`` steps as ``latents`` (already B's inputs), then the rest of its message as text.

    The mixture of the adapter's curriculum (:func:`adapter_loss`) and of the
    sweep over n (:mod:`commlib.protocols.series`): after ``latents`` B reads
    its own embeddings of A's tokens from step ``m`` on.
    """
    rest = trajectory.token_ids[m:]
    if not rest:
        return latents
    return torch.cat([latents, embed(receiver, torch.tensor(rest, dtype=torch.long, device=latents.device))])


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
    kl_weight: float = 0.0
    items: tuple[str, ...] = ()
    """The ids it was trained on when given a pool (empty: ``n_train`` of ``game`` drawn with ``seed``)."""


def _slot_inputs(receiver: Model, item: GameItem, message: Tensor) -> tuple[Tensor, Tensor]:
    """B's input embeddings with ``message`` in the nl slot, followed by the answer; and the answer ids."""
    target = answer_ids(receiver, item.answer, format_prompt(receiver, "x", reply=item.reply))
    slot = slot_embeddings(receiver, slot_template(item), vectors=message, reply=item.reply)
    return torch.cat([slot, embed(receiver, target[:-1].to(slot.device))])[None], target


def answer_logits(
    receiver: Model, item: GameItem, message: Float[Tensor, "L d_B"]
) -> tuple[Float[Tensor, "T vocab"], Tensor]:
    """B's logits at the positions that predict the answer (teacher-forced), ``message`` in the nl slot.

    Returns:
        The logits (float32) and the answer's token ids.
    """
    embeds, target = _slot_inputs(receiver, item, message)
    return receiver.hf(inputs_embeds=embeds).logits[0, -target.numel() :].float(), target


def answer_kl(reference: Float[Tensor, "T vocab"], logits: Float[Tensor, "T vocab"]) -> Tensor:
    """``KL(reference || softmax(logits))`` summed over the vocabulary, averaged over the answer positions.

    Args:
        reference: B's answer log-probabilities under the message to match.
        logits: B's answer logits under the message being trained.
    """
    log_q = torch.nn.functional.log_softmax(logits, dim=-1)
    return torch.nn.functional.kl_div(log_q, reference, log_target=True, reduction="batchmean")


@torch.no_grad()
def answer_logprobs(
    receiver: Model, item: GameItem, message: Float[Tensor, "L d_B"]
) -> Float[Tensor, "T vocab"]:
    """B's answer log-probabilities reading ``message``: the target that :func:`answer_kl` matches."""
    return torch.nn.functional.log_softmax(answer_logits(receiver, item, message)[0], dim=-1)


def adapter_loss(
    adapter: InterlatAdapter,
    receiver: Model,
    item: GameItem,
    trajectory: Trajectory,
    r: float,
    *,
    kl_weight: float = 0.0,
    reference: Tensor | None = None,
) -> Tensor:
    """B's answer loss when it reads the first ``r`` of the latents, then the rest as text.

    The cross-entropy of B's answer, plus ``kl_weight`` times the KL
    alignment ``KL(B's answer distribution reading A's message as text ||
    reading this mix)`` at the answer positions (Interlat's plan alignment).

    Args:
        reference: The text message's :func:`answer_logprobs` (computed when
            not given and ``kl_weight`` is not 0; B is frozen, so training caches it).
    """
    m = round(r * len(trajectory.token_ids))
    message = with_text_rest(receiver, adapter.message(trajectory.hidden[:m]), trajectory, m)
    logits, target = answer_logits(receiver, item, message)
    loss = torch.nn.functional.cross_entropy(logits, target)
    if kl_weight:
        if reference is None:
            reference = text_reference(receiver, item, trajectory)
        loss = loss + kl_weight * answer_kl(reference, logits)
    return loss


def text_reference(receiver: Model, item: GameItem, trajectory: Trajectory) -> Float[Tensor, "T vocab"]:
    """B's answer log-probabilities reading A's message as text (its tokens): the KL alignment's target."""
    empty = torch.zeros(
        0, receiver.info.d_model, dtype=embedding_table(receiver).dtype, device=receiver.device
    )
    return answer_logprobs(receiver, item, with_text_rest(receiver, empty, trajectory, 0))


def _training_set(
    sender: Model, items: list[GameItem], message_tokens: int, cache: Path, progress: bool
) -> list[Trajectory]:
    """A's trajectories for ``items``, cached in ``cache``."""
    if cache.exists():
        return [Trajectory(**t) for t in torch.load(cache)]
    trajectories = trajectory_messages(
        sender, [message_prompt(it) for it in items], max_tokens=message_tokens, batch_size=8
    )
    torch.save([vars(t) for t in trajectories], cache)
    return trajectories


def _train(
    module: torch.nn.Module,
    step_loss: Callable[[int, torch.Generator], Tensor],
    n_items: int,
    out: Path,
    *,
    steps: int,
    lr: float,
    seed: int,
    checkpoint_every: int,
    frozen: Sequence[torch.nn.Module],
    progress: bool,
    desc: str,
) -> list[float]:
    """Adam on ``module`` for ``steps`` steps, each on one random item: ``step_loss(i, rng)``.

    ``out/checkpoint.pt`` keeps the module, its optimizer and the losses every
    ``checkpoint_every`` steps; a re-run resumes there with the same draws.

    Returns:
        The loss of every step so far.
    """
    from tqdm.auto import tqdm

    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    losses: list[float] = []
    state = out / "checkpoint.pt"
    if state.exists():
        saved = torch.load(state)
        module.load_state_dict(saved["adapter"])
        optimizer.load_state_dict(saved["optimizer"])
        losses = saved["losses"]
    for p in (p for m in frozen for p in m.parameters()):
        p.requires_grad_(False)
    rng = torch.Generator().manual_seed(seed + len(losses))
    with torch.enable_grad():
        for step in tqdm(range(len(losses), steps), desc=desc, disable=not progress):
            loss = step_loss(int(torch.randint(n_items, (1,), generator=rng)), rng)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
                torch.save(
                    {"adapter": module.state_dict(), "optimizer": optimizer.state_dict(), "losses": losses},
                    state.with_suffix(".tmp"),
                )
                state.with_suffix(".tmp").replace(state)  # a crash while saving keeps the last checkpoint
    return losses


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
    kl_weight: float = 0.0,
    checkpoint_every: int = 50,
    progress: bool = True,
    items: Sequence[GameItem] | None = None,
) -> InterlatAdapter:
    """Train an :class:`InterlatAdapter` with B frozen, on ``n_train`` items of ``game`` drawn with ``seed``.

    Each step takes one item and a fraction r ~ U(0, 1): B reads ``<bop>``,
    the adapted first r of A's latents, ``<eop>``, then the rest of A's
    message as text (Interlat's curriculum), and the loss is the
    cross-entropy of B's answer, plus ``kl_weight`` times the KL alignment to
    B reading A's message as text (:func:`adapter_loss`). A's trajectories
    are computed once and cached in ``out_dir``; the adapter, its optimizer
    and metadata are saved every ``checkpoint_every`` steps, and a re-run
    resumes from there. Keep ``seed`` away from the evaluation seeds (0 and
    1 in the notebooks). With ``items`` (a selection pool,
    :func:`commlib.tasks.pools.make_pools`) it trains on exactly those and
    ``game`` names where they came from.

    Raises:
        CommlibError: ``out_dir`` holds an adapter trained with other settings, or the two models
            tokenize differently (the curriculum reads A's tokens in B's embeddings).
    """
    check_text_rest(sender, receiver, "the adapter's curriculum")
    out = Path(out_dir)
    chosen = list(items) if items is not None else load_game(game, n=n_train, seed=seed)
    n_train = len(chosen)
    settings = {
        "sender": sender.name,
        "receiver": receiver.name,
        "game": game,
        "n_train": n_train,
        "seed": seed,
        "lr": lr,
        "message_tokens": message_tokens,
    }
    ids = tuple(it.id for it in chosen) if items is not None else ()
    extra: dict[str, Any] = {"kl_weight": kl_weight} if kl_weight else {}  # older runs had none
    if ids:
        extra["items"] = list(ids)
    claim_run_dir(out, {**settings, **extra, "placement": placement(sender=sender, receiver=receiver)})
    trajectories = _training_set(sender, chosen, message_tokens, out / "trajectories.pt", progress)
    torch.manual_seed(seed)
    adapter = InterlatAdapter(
        sender.info.d_model, receiver.info.d_model, target_norm=embedding_norm(receiver)
    )
    references: dict[int, Tensor] = {}  # B's answer distribution reading the text message (B is frozen)

    def step_loss(i: int, rng: torch.Generator) -> Tensor:
        r = float(torch.rand((), generator=rng))
        if kl_weight and i not in references:
            references[i] = text_reference(receiver, chosen[i], trajectories[i])
        return adapter_loss(
            adapter, receiver, chosen[i], trajectories[i], r, kl_weight=kl_weight, reference=references.get(i)
        )

    losses = _train(
        adapter,
        step_loss,
        len(chosen),
        out,
        steps=steps,
        lr=lr,
        seed=seed,
        checkpoint_every=checkpoint_every,
        frozen=[receiver.hf],
        progress=progress,
        desc="adapter",
    )
    info = AdapterInfo(
        sender.name,
        receiver.name,
        game,
        n_train,
        seed,
        len(losses),
        lr,
        message_tokens,
        tuple(losses),
        kl_weight,
        ids,
    )
    _save(adapter, asdict(info), out, "adapter")
    return adapter


def save_adapter(adapter: InterlatAdapter, info: AdapterInfo, out_dir: str | Path) -> None:
    """Weights to ``adapter.safetensors``, what it was trained on to ``adapter.json``."""
    _save(adapter, asdict(info), Path(out_dir), "adapter")


def load_adapter(out_dir: str | Path) -> tuple[InterlatAdapter, AdapterInfo]:
    """Read what :func:`save_adapter` wrote.

    Raises:
        CommlibError: no adapter there.
    """
    weights, info_d = _load(Path(out_dir), "adapter", "train one with `commlib train-adapter`")
    info = AdapterInfo(
        **{**info_d, "losses": tuple(info_d["losses"]), "items": tuple(info_d.get("items", ()))}
    )
    d_out, d_in = weights["boundaries"].shape[1], weights["norm.weight"].shape[0]
    adapter = InterlatAdapter(d_in, d_out, target_norm=1.0)
    adapter.load_state_dict(weights)
    return adapter.eval(), info


def _save(module: torch.nn.Module, info: dict[str, Any], out: Path, name: str) -> None:
    """Weights to ``out/<name>.safetensors``, ``info`` to ``out/<name>.json``."""
    import json

    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(weights, out / f"{name}.safetensors")
    (out / f"{name}.json").write_text(json.dumps(info, indent=2))


def _load(out: Path, name: str, fix: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """What :func:`_save` wrote; a :class:`CommlibError` saying ``fix`` when it is not there."""
    import json

    from safetensors.torch import load_file

    if not (out / f"{name}.safetensors").exists():
        raise CommlibError(f"no {name} in {out}: {fix}")
    return load_file(out / f"{name}.safetensors"), json.loads((out / f"{name}.json").read_text())


def check_pair(directory: str | Path, trained: tuple[str, str], sender: Model, receiver: Model) -> None:
    """Refuse models other than the ``(sender, receiver)`` names an adapter was ``trained`` for.

    Raises:
        CommlibError: another pair, naming both.
    """
    if (sender.name, receiver.name) != tuple(trained):
        raise CommlibError(
            f"the adapter in {directory} was trained for {trained[0]} -> {trained[1]}, "
            f"not {sender.name} -> {receiver.name}"
        )


# --------------------------------------------------------------------------- #
# Compression: K latents that B reads as it reads the full adapted trajectory
# --------------------------------------------------------------------------- #


class LatentCompressor(torch.nn.Module):
    """Maps a trained adapter's latents (L vectors of B's width) to K vectors.

    K learned queries cross-attend to the LayerNormed latents (with a
    residual), then an MLP with a residual, and each output is rescaled to a
    learnable norm, as the adapter's are.

    Args:
        d: B's width.
        k: Output vectors.
        target_norm: Norm of B's typical input embedding (initial output scale).
        n_heads: Attention heads (1 when they do not divide ``d``).
    """

    def __init__(self, d: int, k: int, *, target_norm: float, n_heads: int = 4) -> None:
        super().__init__()
        self.queries = torch.nn.Parameter(torch.randn(k, d) / d**0.5)
        self.norm = torch.nn.LayerNorm(d)
        self.attn = torch.nn.MultiheadAttention(d, n_heads if d % n_heads == 0 else 1, batch_first=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 2 * d), torch.nn.GELU(), torch.nn.Linear(2 * d, d))
        self.scale = torch.nn.Parameter(torch.tensor(float(target_norm)))

    @property
    def k(self) -> int:
        """How many vectors it sends."""
        return int(self.queries.shape[0])

    def forward(self, latents: Float[Tensor, "L d"]) -> Float[Tensor, "K d"]:
        if not len(latents):  # A wrote nothing: attend to one zero vector
            latents = latents.new_zeros(1, latents.shape[-1])
        kv = self.norm(latents[None])
        x = self.queries + self.attn(self.queries[None], kv, kv, need_weights=False)[0][0]
        y = x + self.mlp(x)
        return self.scale * y / y.norm(dim=-1, keepdim=True).clamp_min(1e-6)

    def message(self, full: Float[Tensor, "L2 d"]) -> Float[Tensor, "K2 d"]:
        """What B reads: the adapter's message ``<bop>, latents, <eop>`` with the latents compressed to K."""
        return torch.cat([full[:1], self(full[1:-1]), full[-1:]])


@dataclass(frozen=True)
class CompressorInfo:
    """What a compressor was trained on (its base adapter and that adapter's items); saved with it."""

    k: int
    adapter: str
    adapter_steps: int
    sender: str
    receiver: str
    game: str
    n_train: int
    message_tokens: int
    seed: int
    steps: int
    lr: float
    ce_weight: float
    losses: tuple[float, ...]


def compression_loss(
    compressor: LatentCompressor,
    receiver: Model,
    item: GameItem,
    full: Float[Tensor, "L2 d"],
    *,
    ce_weight: float = 0.0,
    reference: Tensor | None = None,
) -> Tensor:
    """``KL(B's answer distribution reading the full adapted message || reading the K latents)``.

    Plus ``ce_weight`` times the cross-entropy of B's answer. ``full`` is the
    trained adapter's message for A's trajectory; ``reference`` its
    :func:`answer_logprobs` (computed when not given).
    """
    if reference is None:
        reference = answer_logprobs(receiver, item, full)
    logits, target = answer_logits(receiver, item, compressor.message(full))
    loss = answer_kl(reference, logits)
    if ce_weight:
        loss = loss + ce_weight * torch.nn.functional.cross_entropy(logits, target)
    return loss


def train_compressor(
    sender: Model,
    receiver: Model,
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    k: int,
    steps: int = 300,
    lr: float = 1e-3,
    ce_weight: float = 0.0,
    seed: int = 1000,
    checkpoint_every: int = 50,
    progress: bool = True,
) -> LatentCompressor:
    """Train a :class:`LatentCompressor` to K vectors, B and the adapter in ``adapter_dir`` frozen.

    On the adapter's own training items, each step makes B read the K
    compressed latents between the adapter's boundaries and matches its
    answer distribution to reading the full adapted trajectory
    (:func:`compression_loss`). Checkpoints and resumes as
    :func:`train_adapter` does; the compressor is saved with its base
    adapter's directory (use :func:`load_compressor`).

    Raises:
        CommlibError: K < 1, no adapter in ``adapter_dir``, an adapter for
            another pair, or ``out_dir`` holding a compressor with other settings.
    """
    if k < 1:
        raise CommlibError(f"compress to at least one vector, got K = {k}")
    adapter, base = load_adapter(adapter_dir)
    check_pair(adapter_dir, (base.sender, base.receiver), sender, receiver)
    if base.items:
        raise CommlibError(
            f"the adapter in {adapter_dir} was trained on a selection pool; compress one trained on --game"
        )
    out = Path(out_dir)
    claim_run_dir(
        out,
        {
            "k": k,
            "adapter": str(adapter_dir),
            "adapter_steps": base.steps,
            "seed": seed,
            "lr": lr,
            "ce_weight": ce_weight,
            "placement": placement(sender=sender, receiver=receiver),  # recorded, not compared
        },
    )
    cache = Path(adapter_dir) / "trajectories.pt"
    items = load_game(base.game, n=base.n_train, seed=base.seed)
    trajectories = _training_set(
        sender, items, base.message_tokens, cache if cache.exists() else out / "trajectories.pt", progress
    )
    torch.manual_seed(seed)
    compressor = LatentCompressor(receiver.info.d_model, k, target_norm=embedding_norm(receiver))
    targets: dict[int, tuple[Tensor, Tensor]] = {}  # the full adapted message and B's reading of it

    def step_loss(i: int, rng: torch.Generator) -> Tensor:
        if i not in targets:
            with torch.no_grad():
                full = adapter.message(trajectories[i].hidden)
            targets[i] = full, answer_logprobs(receiver, items[i], full)
        full, reference = targets[i]
        return compression_loss(
            compressor, receiver, items[i], full, ce_weight=ce_weight, reference=reference
        )

    losses = _train(
        compressor,
        step_loss,
        len(items),
        out,
        steps=steps,
        lr=lr,
        seed=seed,
        checkpoint_every=checkpoint_every,
        frozen=[receiver.hf, adapter],
        progress=progress,
        desc=f"compressor K={k}",
    )
    info = CompressorInfo(
        k,
        str(adapter_dir),
        base.steps,
        sender.name,
        receiver.name,
        base.game,
        base.n_train,
        base.message_tokens,
        seed,
        len(losses),
        lr,
        ce_weight,
        tuple(losses),
    )
    _save(compressor, asdict(info), out, "compressor")
    return compressor


def load_compressor(out_dir: str | Path) -> tuple[LatentCompressor, InterlatAdapter, CompressorInfo]:
    """The compressor that :func:`train_compressor` wrote, with its base adapter.

    Raises:
        CommlibError: no compressor there, its base adapter missing, or the
            base adapter retrained since (a different number of steps).
    """
    weights, info_d = _load(
        Path(out_dir), "compressor", "train one with `commlib train-adapter --compress K`"
    )
    info = CompressorInfo(**{**info_d, "losses": tuple(info_d["losses"])})
    adapter, base = load_adapter(info.adapter)
    if base.steps != info.adapter_steps:
        raise CommlibError(
            f"the adapter in {info.adapter} has {base.steps} steps, the compressor in {out_dir} was trained "
            f"on it at {info.adapter_steps}; retrain the compressor"
        )
    k, d = weights["queries"].shape
    compressor = LatentCompressor(d, k, target_norm=1.0)
    compressor.load_state_dict(weights)
    return compressor.eval(), adapter, info
