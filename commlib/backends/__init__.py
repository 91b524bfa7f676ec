"""Grafting backends behind one interface; :func:`get_backend` picks one by name.

Example:
    >>> from commlib.models import load_model
    >>> get_backend(load_model("tiny-llama-random"), "nnsight").name
    'nnsight'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from commlib.backends.base import Backend, Decoding, Edit, Generation
from commlib.errors import UnknownBackendError
from commlib.models import Model


def _nnsight(model: Model, **options: Any) -> Backend:
    from commlib.backends.nnsight import NnsightBackend

    return NnsightBackend(model, **options)


def _lens(model: Model, **options: Any) -> Backend:
    from commlib.backends.lens import LensBackend

    return LensBackend(model, **options)


BACKENDS: dict[str, Callable[..., Backend]] = {"nnsight": _nnsight, "transformer-lens": _lens}
"""Registered backends by name; each is called as ``factory(model, **options)``."""


def get_backend(model: Model, name: str = "nnsight", **options: Any) -> Backend:
    """The named backend over ``model``, built once per options and kept on the model.

    Args:
        model: A loaded model (place it on devices with ``load_model(..., device_map=...)``).
        name: ``"nnsight"`` or ``"transformer-lens"``.
        **options: Passed to the backend, e.g. ``remote=True`` for nnsight on NDIF.
    """
    if name not in BACKENDS:
        raise UnknownBackendError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    key = (name, tuple(sorted(options.items())))
    if key not in model._backends:
        model._backends[key] = BACKENDS[name](model, **options)
    return model._backends[key]


__all__ = ["BACKENDS", "Backend", "Decoding", "Edit", "Generation", "get_backend"]
