"""The sweep over n: how much of A's state a method sends uncollapsed.

A *series* is a games method (:mod:`commlib.protocols.games`) with its own meaning of n,
the amount of A's state that reaches B uncollapsed; n = 0 sends none of it
and ``all`` (:data:`ALL`) all of it. :func:`commlib.experiments.run_n_sweep`
runs series over a game's items and a list of n.

* ``ac-sum``, ``ac-mean``, ``ac-replace``: A's states after block k at the
  last n positions of its prompt, combined by f into B's last n after block
  j, aligned from the end (:attr:`commlib.graft.GraftConfig.n_positions`).
  n = 0 is B alone (``silent``), n = 1 the games method, ``all`` every
  position both prompts have up to the message position (the paper's
  all-token ablation; it differs per item).
* ``cipher``, ``cipher-t<T>``: A's first n message steps as CIPHER vectors,
  the rest as text. For its first n steps A decodes as CIPHER does (it
  feeds back ``p @ E`` and ends the message when the nearest embedding of
  ``p @ E`` is EOS); from step n + 1 on it feeds back the embedding of its
  argmax token, continuing from the soft steps' KV cache, and ends the
  message when the argmax is EOS (:func:`commlib.channels.cipher.soft_message`
  with ``soft_steps=n``). B reads ``p_t @ E_B`` for the soft steps and its
  embeddings of A's tokens for the rest, in the ``nl`` slot (across
  tokenizers both through their shared tokens, :mod:`commlib.channels.vocab`:
  the soft steps renormalised, each token as its twin). n = 0 is A's
  greedy message read as tokens (``cipher-t0``); ``all`` (``message_tokens``
  steps) is ``cipher``, and so is any n beyond the step at which the
  ``cipher`` message ends.
* ``interlat``, ``interlat-norm``, ``interlat-trained``: A writes its
  message greedily, once; B reads A's last-layer states of the first n
  steps (raw, rescaled to B's embedding norm, or through the trained
  adapter between its learned boundaries), then the rest of the message as
  text: the mixture the adapter's curriculum trains on
  (:func:`commlib.channels.interlat.with_text_rest`). n = 0 is the text
  message (for the adapter framed by its two boundaries, as in training);
  ``all`` is the method itself.

The text in a latent message is A's own tokens read through B's embedding
table, as ``cipher-t0`` reads them. ``nl`` instead re-tokenises A's text
inside B's prompt, which is not the same input token for token (B's
tokenizer merges the space after "Your partner says:" into A's first word);
B's answers agree on SmolLM2 (tested on a few items), not by construction.

A's message is computed once per item (:meth:`Series.prepare`) and reused
for every n; per n only B answers, except where n changes what A writes
(CIPHER's steps after n). A series is registered with :func:`commlib.registry.register`
(protocol ``sweep-n``) as a :data:`SeriesFactory`.

Example:
    >>> from commlib.models import load_model
    >>> from commlib.tasks.games import countries
    >>> m = load_model("tiny-llama-random")
    >>> cfg = MethodConfig(k=None, j=None, max_new_tokens=2, message_tokens=4)
    >>> series = series_for("interlat-norm", m, m, cfg)
    >>> item = countries(1)[0]
    >>> message = series.prepare(item)
    >>> [series.point(item, message, n).n_sent for n in (0, 2)]
    [0, 2]
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from commlib.backends import Decoding, get_backend
from commlib.backends.base import check_layer
from commlib.channels.cipher import soft_message
from commlib.channels.interlat import (
    as_receiver_inputs,
    check_text_rest,
    check_zero_shot_pair,
    load_adapter,
    trajectory_message,
    with_text_rest,
)
from commlib.channels.slot import message_prompt, prompt_parts, read_slot, slot_template
from commlib.channels.vocab import vocab_projection
from commlib.combine import combine
from commlib.compute import Shape, method_flops, slot_flops
from commlib.errors import CommlibError
from commlib.graft import NO_GRAFT, GraftConfig, capture_span, communicate
from commlib.models import Model
from commlib.prompts import encode, message_positions, span_available
from commlib.protocols.games import MethodConfig
from commlib.registry import check_methods, implementation, layers, register
from commlib.tasks.games import GameItem

ALL = "all"
"""The n that sends everything: every message step, or every position both prompts have."""


def parse_ns(ns: Sequence[int | str]) -> list[tuple[str, int | None]]:
    """Labels and values of the n to sweep (``None`` for :data:`ALL`), in order, without repeats.

    Example:
        >>> parse_ns([0, "4", "all", 4])
        [('0', 0), ('4', 4), ('all', None)]

    Raises:
        CommlibError: no n, or one that is neither a whole number >= 0 nor ``all``.
    """
    out: dict[str, int | None] = {}
    for n in ns:
        text = str(n).strip().lower()
        if text == ALL:
            out[ALL] = None
        elif text.isdigit():
            out[str(int(text))] = int(text)
        else:
            raise CommlibError(f"n must be a whole number >= 0 or {ALL!r}, got {n!r}")
    if not out:
        raise CommlibError(f"give at least one n (e.g. 0,1,2,4,8,{ALL})")
    return list(out.items())


@dataclass(frozen=True)
class Point:
    """B's answer to one item at one n, and what it took.

    Attributes:
        text: B's answer.
        n_sent: Positions (AC) or message steps (latent) sent uncollapsed,
            ``all`` resolved (a message shorter than n sends all it has).
        injected: ``[m, d_B]`` what B receives that is neither its own state
            nor A's text: the states the graft writes (AC, after f), or the
            slot vectors that are not B's embeddings of A's tokens (the
            adapter's boundaries included); the distance measures these.
        own: ``[m, d_B]`` B's own states where ``injected`` goes (AC), else ``None``.
        message: A's message as text (CIPHER: nearest tokens); ``""`` for AC.
        flops: Analytic FLOPs of the item at this n, both models (:mod:`commlib.compute`).
        seconds: Wall time of B's answer.
        sender_seconds: Wall time of A's work the answer reads (once per item
            and shared across n, except CIPHER's steps after n).
    """

    text: str
    n_sent: int
    injected: Float[Tensor, "m d"]
    own: Float[Tensor, "m d"] | None
    message: str
    flops: float
    seconds: float
    sender_seconds: float


class Series:
    """How one method sends the first n units of A's state; subclasses say how.

    Attributes:
        name: The method's canonical name in :data:`commlib.registry.METHODS`.
        unit: What n counts: ``"positions"`` (AC) or ``"steps"`` (of A's message).
        reference: What the injected states are measured against: ``"layer"``
            (B's residuals after block j) or ``"input"`` (B's input embeddings).
        trained: Whether a trained adapter carries the message.
    """

    unit = "steps"
    reference = "input"
    trained = False

    def __init__(self, name: str, sender: Model, receiver: Model, cfg: MethodConfig) -> None:
        self.name, self.sender, self.receiver, self.cfg = name, sender, receiver, cfg
        self.shapes = (Shape.from_config(sender.hf.config), Shape.from_config(receiver.hf.config))

    @property
    def description(self) -> str:
        """What n means for this series (its class docstring)."""
        return " ".join((type(self).__doc__ or "").split())

    def limit(self, items: Sequence[GameItem]) -> int:
        """The largest n this series can send for every one of ``items``."""
        raise NotImplementedError

    def check(self, items: Sequence[GameItem], ns: Sequence[int]) -> None:
        """Refuse, before any work, an n larger than what some item's message has.

        Raises:
            CommlibError: naming the largest n that fits.
        """
        limit = self.limit(items)
        too_many = [n for n in ns if n > limit]
        if too_many:
            what = (
                "positions both prompts have up to the message position"
                if self.unit == "positions"
                else ("message steps A may write (raise message_tokens, --message-tokens)")
            )
            raise CommlibError(
                f"{self.name}: n={max(too_many)} is more than the {limit} {what}; use n <= {limit} or {ALL}"
            )

    def prepare(self, item: GameItem) -> Any:
        """A's work for ``item``, done once and reused for every n."""
        raise NotImplementedError

    def point(self, item: GameItem, prepared: Any, n: int | None) -> Point:
        """B's answer when the first ``n`` units go uncollapsed (``None``: all)."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What, beyond the run's settings, decides this series' results (a trained adapter)."""
        return {}

    def _answer_tokens(self, text: str) -> int:
        """B's answer length, re-tokenised from its text, plus the step that ends it."""
        return len(self.receiver.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1


@dataclass(frozen=True)
class _Captured:
    """A's states after block k and B's own after block j at the last ``full`` positions of one item."""

    a: Tensor
    b: Tensor
    full: int
    seconds: float


class ACSeries(Series):
    """AC: A's states at its last n positions, combined by f into B's last n (aligned from the end).

    n = 0 is B alone, n = 1 the games method, all every position both
    prompts have up to the message position.
    """

    unit = "positions"
    reference = "layer"

    def __init__(self, name: str, f: str, sender: Model, receiver: Model, cfg: MethodConfig) -> None:
        super().__init__(name, sender, receiver, cfg)
        k, j = layers(name, cfg.k, cfg.j)
        check_layer(sender, k, "k")
        check_layer(receiver, j, "j")
        self.f, self.k, self.j = f, k, j

    def _available(self, item: GameItem) -> int:
        spans = []
        for model, prompt, reply in (
            (self.sender, item.sender, ""),
            (self.receiver, item.receiver, item.reply),
        ):
            batch = encode(model, [prompt], replies=[reply])
            end = message_positions(model, [prompt], batch, self.cfg.position, replies=[reply])
            spans.append(span_available(batch, end))
        return min(spans)

    def limit(self, items: Sequence[GameItem]) -> int:
        return min(self._available(it) for it in items)

    def prepare(self, item: GameItem) -> _Captured:
        full, cfg = self._available(item), self.cfg
        start = time.perf_counter()
        a = capture_span(get_backend(self.sender, cfg.backend), [item.sender], self.k, cfg.position, full)
        seconds = time.perf_counter() - start
        b = capture_span(
            get_backend(self.receiver, cfg.backend),
            [item.receiver],
            self.j,
            cfg.position,
            full,
            replies=[item.reply],
        )
        return _Captured(a, b, full, seconds)

    def point(self, item: GameItem, prepared: _Captured, n: int | None) -> Point:
        m, cfg = prepared.full if n is None else n, self.cfg
        config = GraftConfig(
            k=self.k, j=self.j, f=self.f if m else NO_GRAFT, position=cfg.position, n_positions=max(m, 1)
        )
        a, b = prepared.a[:, prepared.full - m :], prepared.b[0, prepared.full - m :]
        start = time.perf_counter()
        out = communicate(
            self.sender,
            self.receiver,
            [item.sender],
            [item.receiver],
            config,
            backend=cfg.backend,
            decoding=Decoding(max_new_tokens=cfg.max_new_tokens),
            receiver_replies=[item.reply],
            sender_states=a if m else None,
        )
        seconds = time.perf_counter() - start
        flops = method_flops(
            "ac" if m else "single-b",
            *self.shapes,
            prompt_a=encode(self.sender, [item.sender]).length,
            prompt_b=encode(self.receiver, [item.receiver], replies=[item.reply]).length,
            message=0,
            answer=self._answer_tokens(out.texts[0]),
            k=self.k,
        )["total"]
        injected = combine(a[0], b, self.f) if m else b
        return Point(
            out.texts[0], m, injected, b if m else None, "", flops, seconds, prepared.seconds if m else 0.0
        )


class _SlotSeries(Series):
    """A latent message B reads in the ``nl`` slot: the first n steps as vectors, the rest as A's tokens."""

    def _read(
        self,
        item: GameItem,
        vectors: Tensor,
        *,
        injected: Tensor,
        n_sent: int,
        message: str,
        steps: int,
        soft: int,
        sender_seconds: float,
    ) -> Point:
        start = time.perf_counter()
        text = read_slot(self.receiver, item, vectors, self.cfg.max_new_tokens)
        seconds = time.perf_counter() - start
        pre, post = prompt_parts(self.receiver, slot_template(item), item.reply)
        flops = slot_flops(
            *self.shapes,
            prompt_a=encode(self.sender, [message_prompt(item)]).length,
            prompt_b=len(pre) + len(post),
            steps=steps + 1,
            slot=len(vectors),
            answer=self._answer_tokens(text),
            soft=soft,
        )["total"]
        return Point(text, n_sent, injected, None, message, flops, seconds, sender_seconds)


class CipherSeries(_SlotSeries):
    """CIPHER: A's first n steps as expected embeddings p @ E, then argmax feedback, read by B as text.

    n = 0 is A's greedy message read as tokens (cipher-t0); all is cipher. A pair that tokenizes
    differently goes through the tokens it shares (refused here when they are too few).
    """

    def __init__(
        self, name: str, temperature: float, sender: Model, receiver: Model, cfg: MethodConfig
    ) -> None:
        super().__init__(name, sender, receiver, cfg)
        vocab_projection(sender, receiver)  # across tokenizers through shared tokens; too few refused here
        self.temperature = temperature

    def limit(self, items: Sequence[GameItem]) -> int:
        return self.cfg.message_tokens

    def _message(self, item: GameItem, soft_steps: int | None) -> tuple[Any, float]:
        start = time.perf_counter()
        msg = soft_message(
            self.sender,
            self.receiver,
            message_prompt(item),
            temperature=self.temperature,
            max_tokens=self.cfg.message_tokens,
            soft_steps=soft_steps,
        )
        return msg, time.perf_counter() - start

    def prepare(self, item: GameItem) -> tuple[Any, float]:
        return self._message(item, None)

    def point(self, item: GameItem, prepared: tuple[Any, float], n: int | None) -> Point:
        full, seconds = prepared
        if n is None or n >= self.cfg.message_tokens or n > len(full.nearest_ids):
            msg, soft = full, len(full.nearest_ids)  # every step soft, the one that ended it included
        else:
            (msg, seconds), soft = self._message(item, n), n
        return self._read(
            item,
            msg.vectors,
            injected=msg.vectors[:soft],
            n_sent=soft,
            message=msg.text,
            steps=len(msg.nearest_ids),
            soft=soft,
            sender_seconds=seconds,
        )


class InterlatSeries(_SlotSeries):
    """Interlat, zero-shot: A's last-layer states of its first n steps (raw or rescaled), the rest as text.

    n = 0 is the text message; all is interlat (interlat-norm).
    """

    def __init__(self, name: str, rescale: bool, sender: Model, receiver: Model, cfg: MethodConfig) -> None:
        super().__init__(name, sender, receiver, cfg)
        check_text_rest(sender, receiver, "the sweep over n of Interlat")
        check_zero_shot_pair([name], sender, receiver)
        self.rescale = rescale

    @property
    def message_tokens(self) -> int:
        """The longest message A writes."""
        return self.cfg.message_tokens

    def limit(self, items: Sequence[GameItem]) -> int:
        return self.message_tokens

    def prepare(self, item: GameItem) -> tuple[Any, float]:
        start = time.perf_counter()
        trajectory = trajectory_message(self.sender, message_prompt(item), max_tokens=self.message_tokens)
        return trajectory, time.perf_counter() - start

    def latents(self, trajectory: Any, m: int) -> Float[Tensor, "m2 d"]:
        """What B reads for A's first ``m`` steps."""
        return as_receiver_inputs(trajectory, self.receiver, rescale=self.rescale)[:m]

    def point(self, item: GameItem, prepared: tuple[Any, float], n: int | None) -> Point:
        trajectory, seconds = prepared
        steps = len(trajectory.token_ids)
        m = steps if n is None else min(n, steps)
        with torch.no_grad():
            latents = self.latents(trajectory, m)
        vectors = with_text_rest(self.receiver, latents, trajectory, m)
        return self._read(
            item,
            vectors,
            injected=latents,
            n_sent=m,
            message=trajectory.text,
            steps=steps,
            soft=0,
            sender_seconds=seconds,
        )


class TrainedInterlatSeries(InterlatSeries):
    """Interlat, trained: <bop>, the adapted states of A's first n steps, <eop>, then the rest as text.

    What the adapter's curriculum trains on at r = n / L; n = 0 is the text
    message between the boundaries; all is interlat-trained.
    """

    trained = True

    def __init__(
        self, name: str, adapter_dir: str | Path, sender: Model, receiver: Model, cfg: MethodConfig
    ) -> None:
        Series.__init__(self, name, sender, receiver, cfg)
        check_text_rest(sender, receiver, "the sweep over n of Interlat")
        adapter, self.info = load_adapter(adapter_dir)
        if (sender.name, receiver.name) != (self.info.sender, self.info.receiver):
            raise CommlibError(
                f"the adapter in {adapter_dir} was trained for {self.info.sender} -> {self.info.receiver}, "
                f"not {sender.name} -> {receiver.name}"
            )
        self.adapter, self.dir = adapter.to(receiver.device), Path(adapter_dir)

    @property
    def message_tokens(self) -> int:
        """The message length the adapter was trained with."""
        return self.info.message_tokens

    def latents(self, trajectory: Any, m: int) -> Float[Tensor, "m2 d"]:
        return self.adapter.message(trajectory.hidden[:m].to(self.receiver.device))

    def identity(self) -> dict[str, Any]:
        return {"adapter": adapter_identity(self.dir)}


def adapter_identity(adapter_dir: str | Path) -> dict[str, Any]:
    """What an adapter was trained on (its metadata without the losses) and a hash of its weights.

    Raises:
        CommlibError: no adapter there.
    """
    _, info = load_adapter(adapter_dir)
    digest = hashlib.sha1((Path(adapter_dir) / "adapter.safetensors").read_bytes()).hexdigest()[:16]
    return {**{k: v for k, v in asdict(info).items() if k != "losses"}, "sha1": digest}


SeriesFactory = Callable[[str, Model, Model, MethodConfig, str | Path | None], Series]
"""``factory(name, sender, receiver, cfg, adapter)``: the series of a method for one pair."""


def _ac_series(f: str) -> SeriesFactory:
    return lambda name, sender, receiver, cfg, adapter: ACSeries(name, f, sender, receiver, cfg)


def _cipher_series(temperature: str | None) -> SeriesFactory:
    t = 1.0 if temperature is None else float(temperature)
    return lambda name, sender, receiver, cfg, adapter: CipherSeries(name, t, sender, receiver, cfg)


def _interlat_series(rescale: bool) -> SeriesFactory:
    return lambda name, sender, receiver, cfg, adapter: InterlatSeries(name, rescale, sender, receiver, cfg)


def _trained_series(
    name: str, sender: Model, receiver: Model, cfg: MethodConfig, adapter: str | Path | None
) -> Series:
    if adapter is None:
        raise CommlibError(f"{name} needs an adapter: pass --adapter DIR (from `commlib train-adapter`)")
    return TrainedInterlatSeries(name, adapter, sender, receiver, cfg)


for _f in ("sum", "mean", "replace"):
    register("sweep-n", f"ac-{_f}")(_ac_series(_f))
register("sweep-n", "cipher")(_cipher_series)
register("sweep-n", "interlat")(_interlat_series(rescale=False))
register("sweep-n", "interlat-norm")(_interlat_series(rescale=True))
register("sweep-n", "interlat-trained")(_trained_series)


def series_for(
    name: str, sender: Model, receiver: Model, cfg: MethodConfig, *, adapter: str | Path | None = None
) -> Series:
    """The series of method ``name`` for this pair (``adapter``: the directory ``interlat-trained`` reads).

    Raises:
        CommlibError: an unknown name or one with no sweep over n, ``interlat-trained`` without an
            adapter, or a pair or setting the method refuses.
    """
    [resolved] = check_methods([name], "sweep-n")
    factory: SeriesFactory = implementation("sweep-n", resolved)
    return factory(resolved, sender, receiver, cfg, adapter)
