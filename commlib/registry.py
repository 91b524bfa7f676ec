"""Every method commlib runs, in one table: its name, where it runs, what it needs.

A method is a channel (what A sends: nothing, text, a graft of its state,
CIPHER's expected embeddings, Interlat's hidden states; :mod:`commlib.channels`)
used by a protocol (how a task uses it; :mod:`commlib.protocols`): the
coordination ``games``, the ``reasoning`` benchmarks, and the ``sweep-n``
over how much of A's state is sent. :data:`METHODS` names them all; the
protocols register their implementations against these names
(:func:`register`), and a name the table lacks cannot be registered.

One naming scheme: activation communication is ``ac-<f>`` (``ac-w-<f>``
through a learned map W) in every protocol, so AC on the reasoning
benchmarks is ``ac-replace``, its control ``ac-replace-unrelated`` and AC
after chain of thought ``ac-replace-cot``. The names those had before
(``ac``, ``ac-w``, ``ac-unrelated``, ``ac-cot``) are aliases: accepted
wherever a method is named, and read back as the canonical name from stored
results (:class:`commlib.results.Run`). Some names carry a parameter:
``cipher-t<T>`` (CIPHER at temperature T), ``nld-r<N>`` (N rounds of debate),
``interlat-compressed-k<K>`` (K latents).

This module imports nothing heavy: the command line reads it for its help.

Example:
    >>> canonical("ac"), canonical("ac-w"), canonical("cipher-t0.5"), canonical("nld-r3")
    ('ac-replace', 'ac-w-replace', 'cipher-t0.5', 'nld-r3')
    >>> method("ac-unrelated").protocols, method("ac-cot").layers
    (('reasoning',), True)
    >>> check_methods(["single-b", "ac", "nld-r2"], "reasoning")
    ['single-b', 'ac-replace', 'nld-r2']
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from commlib.errors import CommlibError

ProtocolName = Literal["games", "reasoning", "sweep-n"]
PROTOCOLS: dict[str, str] = {
    "games": "the coordination games",
    "reasoning": "the reasoning benchmarks",
    "sweep-n": "the sweep over n",
}
"""The protocols a method may run in, with what each is."""

_PARAMETERS = {"<T>": r"\d*\.?\d+(?:[eE][-+]?\d+)?", "<N>": r"[1-9]\d*", "<K>": r"[1-9]\d*", "<M>": r"\d+"}


@dataclass(frozen=True)
class Method:
    """One method: its canonical name and what running it takes.

    Attributes:
        name: The canonical name.
        protocols: Where it runs: ``games``, ``reasoning``, ``sweep-n``.
        description: One line.
        layers: Needs A's block k and B's block j (:func:`check_layers`).
        map: Needs a learned map W (``--map``).
        adapter: Needs a trained Interlat adapter, bound to the name per run.
        batched: On the reasoning benchmarks, runs a list of items as one batch.
        aliases: Older names that mean this method.
        form: The name with its parameter (``cipher-t<T>``), when it takes one.
        flops: How :func:`commlib.compute.method_flops` counts it on the reasoning benchmarks.
    """

    name: str
    protocols: tuple[ProtocolName, ...]
    description: str
    layers: bool = False
    map: bool = False
    adapter: bool = False
    batched: bool = False
    aliases: tuple[str, ...] = ()
    form: str | None = None
    flops: str | None = None

    def matches(self, name: str) -> bool:
        """Whether ``name`` is this method's name or an instance of its form (``cipher-t0.5``)."""
        if name == self.name:
            return True
        if self.form is None:
            return False
        prefix, parameter = self.form.split("<")
        return re.fullmatch(re.escape(prefix) + _PARAMETERS["<" + parameter], name) is not None

    def parameter(self, name: str) -> str | None:
        """The parameter in ``name`` (``"0.5"`` for ``cipher-t0.5``), ``None`` for the plain name."""
        return None if name == self.name or self.form is None else name[len(self.form.split("<")[0]) :]


_AC = "A's residual after block k (last position) combined into B's after block j"
METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("single-a", ("reasoning",), "A alone answers", batched=True, flops="single-a"),
        Method("single-b", ("reasoning",), "B alone answers", batched=True, flops="single-b"),
        Method(
            "nld",
            ("reasoning",),
            "natural-language debate of A and B (Du et al.), --rounds rounds; nld-r<N>: N rounds",
            form="nld-r<N>",
            flops="nld",
        ),
        Method("silent", ("games",), "B alone, reading only its own prompt"),
        Method("skyline", ("games",), "B given both prompts, A's then its own, in one turn"),
        Method("nl", ("games",), "A writes a short message in words; B reads it before its prompt"),
        Method("ac-sum", ("games", "sweep-n"), f"{_AC} by sum", layers=True),
        Method("ac-mean", ("games", "sweep-n"), f"{_AC} by mean", layers=True),
        Method(
            "ac-replace",
            ("games", "reasoning", "sweep-n"),
            f"{_AC}: A's replaces B's",
            layers=True,
            batched=True,
            aliases=("ac",),
            flops="ac",
        ),
        Method("ac-w-sum", ("games",), f"{_AC} by sum, through W", layers=True, map=True),
        Method("ac-w-mean", ("games",), f"{_AC} by mean, through W", layers=True, map=True),
        Method(
            "ac-w-replace",
            ("games", "reasoning"),
            f"{_AC}: A's through W replaces B's",
            layers=True,
            map=True,
            batched=True,
            aliases=("ac-w",),
            flops="ac",
        ),
        Method(
            "ac-replace-unrelated",
            ("reasoning",),
            "ac-replace's control: A reads a fixed question unrelated to the item",
            layers=True,
            batched=True,
            aliases=("ac-unrelated",),
            flops="ac",
        ),
        Method(
            "ac-replace-donor",
            ("reasoning",),
            "ac-replace's content control: A reads another item of the run (a derangement fixed by the seed)",
            layers=True,
            batched=True,
            flops="ac",
        ),
        Method(
            "ac-replace-cot",
            ("reasoning",),
            "ac-replace after chain of thought: A answers in text, its state at its last token is grafted",
            layers=True,
            aliases=("ac-cot",),
            flops="ac-cot",
        ),
        Method(
            "cipher",
            ("games", "sweep-n"),
            "CIPHER: A's message as expected token embeddings, read in nl's place (T = 1)",
            form="cipher-t<T>",
        ),
        Method(
            "rosetta",
            ("games",),
            "AVP's rosetta: A's next-token distribution on its prompt as one vector in B's embedding space",
        ),
        Method("interlat", ("games", "sweep-n"), "Interlat, zero-shot: A's last-layer states as B's inputs"),
        Method(
            "interlat-norm",
            ("games", "sweep-n"),
            "Interlat, zero-shot, each state rescaled to B's embedding norm",
        ),
        Method(
            "interlat-trained",
            ("games", "sweep-n"),
            "Interlat through a trained adapter (commlib train-adapter)",
            adapter=True,
        ),
        Method(
            "interlat-compressed",
            ("games",),
            "Interlat through a trained adapter, compressed to K latents (train-adapter --compress K)",
            adapter=True,
            form="interlat-compressed-k<K>",
        ),
        Method(
            "kv",
            ("games",),
            "B reads A's KV cache over A's message prompt, its prompt after A's positions (KVComm's medium)",
        ),
        Method(
            "latent-steps",
            ("games",),
            "A takes m latent steps (LatentMAS's realignment), then B reads its KV cache as kv does; "
            "latent-steps-m<M>: m = M (default 8; m = 0 is kv, refused)",
            form="latent-steps-m<M>",
        ),
        Method(
            "kv-fuser",
            (),
            "B reads A's KV cache through a trained C2C-style fuser (any two RoPE models; the controlled "
            "experiment only, trained there on the selection pool)",
        ),
        Method(
            "cipher-debate",
            ("reasoning",),
            "debate with every answer a CIPHER message (Pham et al.)",
            flops="cipher-debate",
        ),
    ]
}
"""The methods by canonical name."""

ALIASES: dict[str, str] = {alias: m.name for m in METHODS.values() for alias in m.aliases}
"""Older names and the canonical names they mean."""


def _find(name: str) -> Method | None:
    name = ALIASES.get(name, name)
    if name in METHODS:
        return METHODS[name]
    return next((m for m in METHODS.values() if m.matches(name)), None)


def canonical(name: str) -> str:
    """The canonical name of a method; an alias gives its method's name, any other name comes back as given.

    Example:
        >>> canonical("ac-cot"), canonical("ac-sum"), canonical("interlat-compressed-k4")
        ('ac-replace-cot', 'ac-sum', 'interlat-compressed-k4')
    """
    return ALIASES.get(name, name)


def method(name: str) -> Method:
    """The method a name (canonical, alias, or an instance of a form like ``nld-r3``) means.

    Raises:
        CommlibError: an unknown name, listing the known ones.
    """
    found = _find(name)
    if found is None:
        raise CommlibError(f"unknown method {name!r}; use one of {', '.join(names())}")
    return found


def names(protocol: str | None = None) -> list[str]:
    """The canonical names (and forms, like ``cipher-t<T>``) of the methods of ``protocol`` (all: ``None``).

    Example:
        >>> names("reasoning")  # doctest: +NORMALIZE_WHITESPACE
        ['single-a', 'single-b', 'nld', 'nld-r<N>', 'ac-replace', 'ac-w-replace', 'ac-replace-unrelated',
         'ac-replace-donor', 'ac-replace-cot', 'cipher-debate']
    """
    out = []
    for m in METHODS.values():
        if protocol is None or protocol in m.protocols:
            out += [m.name, *([m.form] if m.form else [])]
    return out


def flops_kind(name: str) -> str:
    """How :func:`commlib.compute.method_flops` counts a reasoning method (``ac-replace``: ``"ac"``).

    Raises:
        CommlibError: a method without a count on the reasoning benchmarks.

    Example:
        >>> flops_kind("ac-unrelated"), flops_kind("nld-r3"), flops_kind("single-b")
        ('ac', 'nld', 'single-b')
    """
    entry = method(name)
    if entry.flops is None:
        raise CommlibError(f"{name} has no FLOPs count on the reasoning benchmarks")
    return entry.flops


def check_methods(requested: Iterable[str], protocol: str) -> list[str]:
    """``requested`` as canonical names, each once and in order, after checking they all run in ``protocol``.

    Raises:
        CommlibError: a name that is unknown or does not run in ``protocol``, naming the ones that do.

    Example:
        >>> check_methods(["nl", "ac"], "sweep-n")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        commlib.errors.CommlibError: nl does not run in the sweep over n; it runs ac-sum, ac-mean, ...
    """
    if protocol not in PROTOCOLS:
        raise CommlibError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    known = ", ".join(names(protocol))
    out: list[str] = []
    for name in requested:
        found = _find(name)
        if found is None:
            raise CommlibError(f"unknown method {name!r}; {PROTOCOLS[protocol]} run {known}")
        if protocol not in found.protocols:
            raise CommlibError(f"{name} does not run in {PROTOCOLS[protocol]}; it runs {known}")
        if (resolved := canonical(name)) not in out:
            out.append(resolved)
    return out


def check_layers(requested: Iterable[str], k: int | None, j: int | None) -> None:
    """The one check that the methods needing A's block k and B's block j (AC) have both.

    Raises:
        CommlibError: the first method that needs them, when either is missing.

    Example:
        >>> check_layers(["silent", "nl"], None, None)  # neither needs them
        >>> check_layers(["silent", "ac-sum"], 3, None)
        Traceback (most recent call last):
        ...
        commlib.errors.CommlibError: ac-sum needs the layers: pass k and j (--k, --j)
    """
    for name in requested:
        if method(name).layers:
            layers(name, k, j)


def layers(name: str, k: int | None, j: int | None) -> tuple[int, int]:
    """``(k, j)`` for method ``name``, which grafts A's block k into B's block j.

    Raises:
        CommlibError: either is missing.
    """
    if k is None or j is None:
        raise CommlibError(f"{name} needs the layers: pass k and j (--k, --j)")
    return k, j


def check_map(requested: Iterable[str], map: object | None) -> None:
    """The check that methods through a learned map W (``ac-w-*``) have one.

    Raises:
        CommlibError: the first method that needs it, when ``map`` is ``None``.
    """
    if map is None:
        for name in requested:
            if method(name).map:
                raise CommlibError(f"{name} needs a learned map: pass --map (fit one with `commlib fit-map`)")


# --------------------------------------------------------------------------- #
# Implementations, registered by the protocols
# --------------------------------------------------------------------------- #

_IMPLEMENTATIONS: dict[str, dict[str, Any]] = {protocol: {} for protocol in PROTOCOLS}
Impl = TypeVar("Impl")


def register(protocol: str, name: str) -> Callable[[Impl], Impl]:
    """Decorator: ``name``'s implementation in ``protocol`` (a name :data:`METHODS` has, canonical).

    Raises:
        CommlibError: a name the table lacks, not canonical, or not of ``protocol``.
    """
    entry = method(name)
    if entry.name != name or protocol not in entry.protocols:
        raise CommlibError(f"{name} is not the name of a {protocol} method in commlib.registry.METHODS")

    def add(impl: Impl) -> Impl:
        _IMPLEMENTATIONS[protocol][name] = impl
        return impl

    return add


def implementation(protocol: str, name: str) -> Any:
    """What the protocol registered for ``name``'s method (an alias or a form's instance finds it too).

    A method with a form (``cipher`` and ``cipher-t<T>``) registers a factory
    of its parameter; this calls it with the name's (``None`` for the plain name).

    Raises:
        CommlibError: an unknown name, one not of ``protocol``, or none registered (its module not imported).
    """
    [resolved] = check_methods([name], protocol)
    entry = method(resolved)
    if entry.name not in _IMPLEMENTATIONS[protocol]:
        raise CommlibError(f"no {protocol} implementation of {entry.name} loaded (import commlib.protocols)")
    impl = _IMPLEMENTATIONS[protocol][entry.name]
    return impl(entry.parameter(resolved)) if entry.form else impl


def implemented(protocol: str) -> list[str]:
    """The names registered in ``protocol`` so far (a protocol registers its own when it is imported)."""
    return list(_IMPLEMENTATIONS[protocol])
