"""Grafting backends behind one interface; :func:`get_backend` picks one by name.

Example:
    >>> from commlib.models import load_model
    >>> get_backend(load_model("tiny-llama-random"), "nnsight").name
    'nnsight'
"""

from __future__ import annotations

from collections.abc import Callable

from commlib.backends.base import Backend, Decoding, Edit, Generation
from commlib.errors import UnknownBackendError
from commlib.models import Model


def _nnsight(model: Model) -> Backend:
    from commlib.backends.nnsight import NnsightBackend

    return NnsightBackend(model)


def _lens(model: Model) -> Backend:
    from commlib.backends.lens import LensBackend

    return LensBackend(model)


BACKENDS: dict[str, Callable[[Model], Backend]] = {"nnsight": _nnsight, "transformer-lens": _lens}
"""Registered backends by name."""


def get_backend(model: Model, name: str = "nnsight") -> Backend:
    """The named backend over ``model``, built once and kept on the model."""
    if name not in BACKENDS:
        raise UnknownBackendError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    if name not in model._backends:
        model._backends[name] = BACKENDS[name](model)
    return model._backends[name]


__all__ = ["BACKENDS", "Backend", "Decoding", "Edit", "Generation", "get_backend"]
