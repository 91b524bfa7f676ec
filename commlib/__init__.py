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

from commlib.backends import Decoding, Edit, get_backend
from commlib.combine import COMBINE_FNS, LinearMap, combine, fit_linear_map
from commlib.errors import CommlibError
from commlib.graft import Exchange, GraftConfig, capture_sender, communicate, fit_map
from commlib.models import Model, fetch, known_models, load_model
from commlib.prompts import Batch, encode, format_prompt

__version__ = "0.1.0"

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
