"""commlib: language models talking through their activations.

The public API, in the order the layers build on each other:

* :func:`load_model` (models) -> :func:`get_backend` (nnsight, TransformerLens)
* :func:`combine`, :class:`LinearMap`, :func:`fit_map` (f and W)
* :func:`communicate` with a :class:`GraftConfig` (one exchange)

Example:
    >>> import commlib
    >>> model = commlib.load_model("tiny-llama-random")
    >>> out = commlib.communicate(model, model, ["Alice is in Paris."], ["Where is Alice?"],
    ...                           commlib.GraftConfig(k=1, j=2, f="mean"),
    ...                           decoding=commlib.Decoding(max_new_tokens=3))
    >>> len(out.texts)
    1
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from commlib.config import Decoding, GraftConfig
from commlib.errors import CommlibError

if TYPE_CHECKING:
    from commlib.backends import Edit, get_backend
    from commlib.combine import COMBINE_FNS, LinearMap, combine, fit_linear_map
    from commlib.graft import Exchange, capture_sender, communicate, fit_map
    from commlib.models import Model, fetch, known_models, load_model
    from commlib.prompts import Batch, encode, format_prompt

__version__ = "0.1.0"

_LAZY = {
    **dict.fromkeys(["Edit", "get_backend"], "commlib.backends"),
    **dict.fromkeys(["COMBINE_FNS", "LinearMap", "combine", "fit_linear_map"], "commlib.combine"),
    **dict.fromkeys(["Exchange", "capture_sender", "communicate", "fit_map"], "commlib.graft"),
    **dict.fromkeys(["Model", "fetch", "known_models", "load_model"], "commlib.models"),
    **dict.fromkeys(["Batch", "encode", "format_prompt"], "commlib.prompts"),
}
"""Names imported on first use, so that ``import commlib`` (and ``commlib --help``) does not load torch."""


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'commlib' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """``commlib.combine`` stays the function, as exported, once the submodule of that name is imported."""

    @property
    def combine(self) -> Any:
        return __getattr__("combine")

    @combine.setter
    def combine(self, submodule: Any) -> None:
        pass  # the import system binds the submodule here: the function stays


sys.modules[__name__].__class__ = _Package

__all__ = [
    "COMBINE_FNS",
    "Batch",
    "CommlibError",
    "Decoding",
    "Edit",
    "Exchange",
    "GraftConfig",
    "LinearMap",
    "Model",
    "capture_sender",
    "combine",
    "communicate",
    "encode",
    "fetch",
    "fit_linear_map",
    "fit_map",
    "format_prompt",
    "get_backend",
    "known_models",
    "load_model",
]
