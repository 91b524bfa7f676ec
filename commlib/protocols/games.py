"""The coordination games: how each method gets A's information to B on a game item.

Every method maps a batch of :class:`~commlib.tasks.games.GameItem` and the
two models to B's answers, with identical prompts and decoding across methods
(B's answer opens with the item's ``reply`` in every method):

* ``silent``: B alone, reading only its own prompt.
* ``skyline``: B given both prompts (A's, then B's) in one user turn.
* ``nl``: A writes a short message for its partner; B reads it before its prompt.
* ``ac-sum``, ``ac-mean``, ``ac-replace``: activation communication at (k, j).
* ``ac-w-sum``, ``ac-w-mean``, ``ac-w-replace``: the same through a learned map W.
* ``cipher``: A's message as expected token embeddings (CIPHER, temperature 1;
  ``cipher-t0.5`` for another temperature), read by B where ``nl`` puts text;
  across tokenizers through their shared tokens (:mod:`commlib.channels.vocab`).
* ``rosetta``: AVP's one-vector projection: A's next-token distribution on its
  message prompt as one vector in B's embedding space, read in the same place.
* ``interlat``, ``interlat-norm``: A's last-layer hidden states while it
  writes its message, read by B in the same place (raw, or rescaled to B's
  embedding norm); zero-shot Interlat.
* ``kv``: B reads A's KV cache over A's message prompt, its own prompt after
  A's positions; ``latent-steps-m<M>``: the same after A's M latent steps
  (:mod:`commlib.channels.kv`).
* ``interlat-trained``, ``interlat-compressed``: bound per run
  (:func:`register_method`) to :func:`interlat_trained` (an adapter) or
  :func:`interlat_compressed` (an adapter's latents compressed to K vectors).

Each is registered under its name in :data:`commlib.registry.METHODS`, which
says what it needs (the layers k and j, a map W, an adapter); old names
(``ac`` for ``ac-replace``) run the same method.

Example:
    >>> from commlib.models import load_model
    >>> from commlib.tasks.games import countries
    >>> m = load_model("tiny-llama-random")
    >>> outs = run_method("silent", countries(2), m, m, MethodConfig(k=1, j=1, max_new_tokens=3))
    >>> len(outs)
    2
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from commlib.backends import Decoding, get_backend
from commlib.channels.cipher import nearest_tokens, soft_message
from commlib.channels.interlat import (
    as_receiver_inputs,
    check_pair,
    load_adapter,
    load_compressor,
    trajectory_message,
)
from commlib.channels.kv import DEFAULT_LATENT_STEPS, check_kv_pair, check_latent_steps, kv_messages, read_kv
from commlib.channels.slot import NL_TEMPLATE, message_prompt, read_slot
from commlib.channels.vocab import rosetta_vectors
from commlib.combine import LinearMap
from commlib.errors import CommlibError
from commlib.graft import GraftConfig, communicate
from commlib.models import Model
from commlib.prompts import Position, encode
from commlib.registry import check_map, check_methods, implementation, layers, method, names, register
from commlib.tasks.games import GameItem

SKYLINE_TEMPLATE = "{sender}\n{receiver}"


@dataclass(frozen=True)
class MethodConfig:
    """Settings shared by all methods of one run (recorded with the results).

    ``k`` and ``j`` are the AC layers; ``None`` where a run has no AC method.
    """

    k: int | None
    j: int | None
    position: Position = "last"
    max_new_tokens: int = 24
    message_tokens: int = 48
    backend: str = "nnsight"


@dataclass(frozen=True)
class MethodOutput:
    """B's answer, and A's message for ``nl``."""

    text: str
    message: str | None = None


MethodFn = Callable[[Sequence[GameItem], Model, Model, MethodConfig, LinearMap | None], list[MethodOutput]]


def _generate_alone(
    model: Model,
    prompts: list[str],
    cfg: MethodConfig,
    max_new_tokens: int,
    replies: Sequence[str] | None = None,
) -> list[str]:
    """One model answering its prompts on its own (no graft), greedy."""
    backend = get_backend(model, cfg.backend)
    batch = encode(model, prompts, replies=replies)
    return backend.generate(batch, None, Decoding(max_new_tokens=max_new_tokens)).texts


def _replies(items: Sequence[GameItem]) -> list[str]:
    return [i.reply for i in items]


def silent(
    items: Sequence[GameItem], sender: Model, receiver: Model, cfg: MethodConfig, map: LinearMap | None = None
) -> list[MethodOutput]:
    """B alone."""
    return [
        MethodOutput(t)
        for t in _generate_alone(
            receiver, [i.receiver for i in items], cfg, cfg.max_new_tokens, _replies(items)
        )
    ]


def skyline(
    items: Sequence[GameItem], sender: Model, receiver: Model, cfg: MethodConfig, map: LinearMap | None = None
) -> list[MethodOutput]:
    """B given both prompts."""
    prompts = [SKYLINE_TEMPLATE.format(sender=i.sender, receiver=i.receiver) for i in items]
    return [
        MethodOutput(t) for t in _generate_alone(receiver, prompts, cfg, cfg.max_new_tokens, _replies(items))
    ]


def nl(
    items: Sequence[GameItem], sender: Model, receiver: Model, cfg: MethodConfig, map: LinearMap | None = None
) -> list[MethodOutput]:
    """A writes a message in natural language; B reads it before its own prompt."""
    a_prompts = [message_prompt(i) for i in items]
    messages = _generate_alone(sender, a_prompts, cfg, cfg.message_tokens)
    b_prompts = [
        NL_TEMPLATE.format(message=m.strip() or "(nothing)", receiver=i.receiver)
        for m, i in zip(messages, items, strict=True)
    ]
    return [
        MethodOutput(t, m)
        for t, m in zip(
            _generate_alone(receiver, b_prompts, cfg, cfg.max_new_tokens, _replies(items)),
            messages,
            strict=True,
        )
    ]


def _ac(f: str, use_map: bool) -> MethodFn:
    name = f"ac-w-{f}" if use_map else f"ac-{f}"

    def run(
        items: Sequence[GameItem],
        sender: Model,
        receiver: Model,
        cfg: MethodConfig,
        map: LinearMap | None = None,
    ) -> list[MethodOutput]:
        check_map([name], map)
        k, j = layers(name, cfg.k, cfg.j)
        out = communicate(
            sender,
            receiver,
            [i.sender for i in items],
            [i.receiver for i in items],
            GraftConfig(k=k, j=j, f=f, position=cfg.position),
            map=map if use_map else None,
            backend=cfg.backend,
            decoding=Decoding(max_new_tokens=cfg.max_new_tokens),
            receiver_replies=_replies(items),
        )
        return [MethodOutput(t) for t in out.texts]

    run.__doc__ = f"Activation communication, f = {f}{' through W' if use_map else ''}."
    return run


SlotMessage = Callable[[GameItem, Model, Model, MethodConfig], tuple[Tensor, str]]


class SlotMethod:
    """A method whose message is vectors that B reads in the ``nl`` template's slot.

    ``make(item, sender, receiver, cfg)`` gives the vectors and the message
    as text (for display); :func:`commlib.experiments.run_latent_distance`
    measures the vectors.
    """

    def __init__(self, make: SlotMessage, doc: str) -> None:
        self.make = make
        self.__doc__ = doc

    def __call__(
        self,
        items: Sequence[GameItem],
        sender: Model,
        receiver: Model,
        cfg: MethodConfig,
        map: LinearMap | None = None,
    ) -> list[MethodOutput]:
        outputs = []
        for item in items:
            vectors, message = self.make(item, sender, receiver, cfg)
            outputs.append(MethodOutput(read_slot(receiver, item, vectors, cfg.max_new_tokens), message))
        return outputs


def _cipher(temperature: float) -> MethodFn:
    def make(item: GameItem, sender: Model, receiver: Model, cfg: MethodConfig) -> tuple[Tensor, str]:
        msg = soft_message(
            sender, receiver, message_prompt(item), temperature=temperature, max_tokens=cfg.message_tokens
        )
        return msg.vectors, msg.text

    return SlotMethod(make, f"CIPHER at temperature {temperature:g}: A's message as expected embeddings.")


def _rosetta() -> MethodFn:
    def make(item: GameItem, sender: Model, receiver: Model, cfg: MethodConfig) -> tuple[Tensor, str]:
        vectors, _ = rosetta_vectors(sender, receiver, [message_prompt(item)])
        return vectors, "".join(nearest_tokens(receiver, vectors))

    return SlotMethod(make, "AVP's rosetta: A's next-token distribution as one vector in B's embeddings.")


def _interlat(rescale: bool) -> MethodFn:
    def make(item: GameItem, sender: Model, receiver: Model, cfg: MethodConfig) -> tuple[Tensor, str]:
        trajectory = trajectory_message(sender, message_prompt(item), max_tokens=cfg.message_tokens)
        return as_receiver_inputs(trajectory, receiver, rescale=rescale), trajectory.text

    scaled = ", each rescaled to B's embedding norm" if rescale else ""
    return SlotMethod(make, f"Interlat, zero-shot: A's last-layer hidden states as B's inputs{scaled}.")


@register("games", "interlat-trained")
def interlat_trained(adapter_dir: str) -> MethodFn:
    """Interlat with a trained adapter (``commlib train-adapter``): B reads <bop>, adapted latents, <eop>.

    Raises:
        CommlibError: no adapter in ``adapter_dir``, or one trained for another pair (at run time).
    """
    adapter, info = load_adapter(adapter_dir)

    def make(item: GameItem, sender: Model, receiver: Model, cfg: MethodConfig) -> tuple[Tensor, str]:
        check_pair(adapter_dir, (info.sender, info.receiver), sender, receiver)
        trajectory = trajectory_message(sender, message_prompt(item), max_tokens=info.message_tokens)
        with torch.no_grad():
            return adapter.to(receiver.device).message(trajectory.hidden.to(receiver.device)), trajectory.text

    return SlotMethod(make, f"Interlat, adapter {adapter_dir} ({info.steps} steps on {info.game}).")


@register("games", "interlat-compressed")
def interlat_compressed(compressor_dir: str) -> MethodFn:
    """Interlat compressed to K latents (``train-adapter --compress K``): B reads <bop>, K vectors, <eop>.

    The message column shows the K vectors' nearest tokens in B's vocabulary.

    Raises:
        CommlibError: no compressor in ``compressor_dir`` (or its base adapter
            missing or retrained), or one trained for another pair (at run time).
    """
    compressor, adapter, info = load_compressor(compressor_dir)

    def make(item: GameItem, sender: Model, receiver: Model, cfg: MethodConfig) -> tuple[Tensor, str]:
        check_pair(compressor_dir, (info.sender, info.receiver), sender, receiver)
        trajectory = trajectory_message(sender, message_prompt(item), max_tokens=info.message_tokens)
        with torch.no_grad():
            device = receiver.device
            vectors = compressor.to(device).message(adapter.to(device).message(trajectory.hidden.to(device)))
        return vectors, "".join(nearest_tokens(receiver, vectors[1:-1]))

    doc = f"Interlat compressed to K = {info.k} ({info.steps} steps, adapter {info.adapter})."
    return SlotMethod(make, doc)


register("games", "silent")(silent)
register("games", "skyline")(skyline)
register("games", "nl")(nl)
for _f in ("sum", "mean", "replace"):
    register("games", f"ac-{_f}")(_ac(_f, use_map=False))
    register("games", f"ac-w-{_f}")(_ac(_f, use_map=True))
register("games", "cipher")(lambda t: _cipher(1.0 if t is None else float(t)))
register("games", "rosetta")(_rosetta())


def _kv(latent_steps: int) -> MethodFn:
    def run(
        items: Sequence[GameItem],
        sender: Model,
        receiver: Model,
        cfg: MethodConfig,
        map: LinearMap | None = None,
    ) -> list[MethodOutput]:
        check_kv_pair(sender, receiver)
        messages = kv_messages(sender, [message_prompt(i) for i in items], latent_steps=latent_steps)
        batch = encode(receiver, [i.receiver for i in items], replies=_replies(items))
        return [
            MethodOutput(r.text)
            for r in read_kv(receiver, messages, batch, max_new_tokens=cfg.max_new_tokens)
        ]

    run.__doc__ = f"B reads A's KV cache{f' after {latent_steps} latent steps' if latent_steps else ''}."
    return run


register("games", "kv")(_kv(0))
register("games", "latent-steps")(
    lambda m: _kv(check_latent_steps(DEFAULT_LATENT_STEPS if m is None else int(m)))
)
register("games", "interlat")(_interlat(rescale=False))
register("games", "interlat-norm")(_interlat(rescale=True))

_BOUND: dict[str, MethodFn] = {}


def register_method(name: str, fn: MethodFn) -> None:
    """Bind an adapter's method to its name in this process (e.g. ``interlat-trained``).

    ``fn`` is :func:`interlat_trained` or :func:`interlat_compressed` of a directory.

    Raises:
        CommlibError: a name that is not a games method taking an adapter.
    """
    [resolved] = check_methods([name], "games")
    if not method(resolved).adapter:
        raise CommlibError(f"{name} takes no adapter; only {', '.join(_adapter_methods())} are bound per run")
    _BOUND[resolved] = fn


def _adapter_methods() -> list[str]:
    return [n for n in names("games") if method(n).adapter]


def run_method(
    name: str,
    items: Sequence[GameItem],
    sender: Model,
    receiver: Model,
    cfg: MethodConfig,
    map: LinearMap | None = None,
) -> list[MethodOutput]:
    """Run one method (any name of :data:`commlib.registry.METHODS` for the games) on a batch of items."""
    return method_fn(name)(items, sender, receiver, cfg, map)


def method_fn(name: str) -> MethodFn:
    """The games method ``name`` (``cipher-t<T>`` for CIPHER at temperature T; an old name finds its method).

    Raises:
        CommlibError: an unknown name, listing the known ones, or an adapter's method not bound
            (:func:`register_method`).
    """
    [resolved] = check_methods([name], "games")
    if resolved in _BOUND:
        return _BOUND[resolved]
    if method(resolved).adapter:
        raise CommlibError(
            f"{resolved} needs a trained adapter: pass --adapter DIR (from `commlib train-adapter`), "
            "or bind one with register_method"
        )
    fn: MethodFn = implementation("games", resolved)
    return fn
