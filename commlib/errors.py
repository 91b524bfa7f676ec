"""Errors that commlib raises for bad input.

Every error a user can cause derives from :class:`CommlibError`, so the command
line can print one clear line (no traceback) and exit non-zero. Messages say
what was wrong *and* how to fix it.
"""

from __future__ import annotations


class CommlibError(Exception):
    """Base class for user-facing errors (bad names, ranges, shapes, inputs)."""


class UnknownModelError(CommlibError):
    """A model name that is neither registered, a local directory nor a hub id."""


class ModelUnavailableError(CommlibError):
    """A model that exists but cannot be loaded here (offline hub id, failed fetch)."""


class DeviceUnavailableError(CommlibError):
    """A device this machine lacks (a CUDA device without CUDA, or ``cuda:N`` past the visible GPUs)."""


class LayerOutOfRangeError(CommlibError):
    """A layer index outside ``0 .. n_layers - 1``."""


class UnknownCombineError(CommlibError):
    """A combining function ``f`` that is not registered."""


class WidthMismatchError(CommlibError):
    """Sender and receiver widths that no rule or map can reconcile."""


class MapMismatchError(CommlibError):
    """A learned map whose shape or model pair does not fit the exchange."""


class EmptyPromptError(CommlibError):
    """An empty or whitespace-only prompt."""


class NonFiniteActivationError(CommlibError):
    """Activations that contain NaN or infinity."""


class UnknownBackendError(CommlibError):
    """A backend name that is not registered."""
