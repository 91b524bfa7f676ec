"""TransformerLens backend: hooks on a ``TransformerBridge``.

``blocks.{k}.hook_resid_post`` equals HF ``hidden_states[k + 1]``. Booting the
bridge wraps an already loaded HF model (no hub access), replacing its
submodules in place; so it wraps a copy of the module tree that shares the
weights, and decode steps after the edited prefill run on the untouched HF
model (:meth:`Backend.plain_forward`).

Edits are hook functions registered through the bridge's ``hooks()`` context
manager, so they are removed even when the pass raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxtyping import Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from commlib.backends.base import Backend, Edit, cache_length, shared_weights_copy
from commlib.models import Model
from commlib.prompts import Batch


def resid_post(layer: int) -> str:
    """Hook name of the residual stream after block ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


class LensBackend(Backend):
    """Grafting through TransformerLens 4 (``TransformerBridge``) hooks.

    Example:
        >>> from commlib.models import load_model
        >>> from commlib.prompts import encode
        >>> model = load_model("tiny-llama-random")
        >>> LensBackend(model).capture(encode(model, ["Hi"]), layer=1).shape
        torch.Size([1, 64])
    """

    name = "transformer-lens"

    def __init__(self, model: Model) -> None:
        super().__init__(model)
        padding_side = model.tokenizer.padding_side
        self.bridge = TransformerBridge.boot_transformers(
            model.name,
            hf_model=shared_weights_copy(model.hf),
            tokenizer=model.tokenizer,
            device=str(model.device),
        )
        model.tokenizer.padding_side = padding_side

    def residuals(self, batch: Batch, layers: Sequence[int]) -> dict[int, Float[Tensor, "batch seq d"]]:
        saved: dict[int, Tensor] = {}

        def saver(layer: int):
            def hook(x: Tensor, hook: Any) -> Tensor:
                saved[layer] = x.detach()
                return x

            return hook

        fwd = [(resid_post(k), saver(k)) for k in sorted(set(layers))]
        with self.bridge.hooks(fwd_hooks=fwd):
            self.bridge.forward(
                batch.input_ids,
                attention_mask=batch.attention_mask,
                return_type=None,
                stop_at_layer=max(layers) + 1,
            )
        return saved

    def forward(
        self, batch: Batch, edit: Edit | None = None, past: Any = None, last_only: bool = False
    ) -> tuple[Tensor, Any]:
        past_len = cache_length(past)
        fwd = []
        if edit is not None:

            def hook(x: Tensor, hook: Any) -> Tensor:
                return edit.apply(x, past_len)

            fwd.append((resid_post(edit.layer), hook))
        with self.bridge.hooks(fwd_hooks=fwd):
            logits, cache = self.bridge.forward(
                batch.input_ids,
                attention_mask=batch.attention_mask,
                past_key_values=past,
                use_cache=True,
                return_type="logits_and_cache",
                logits_to_keep=1 if last_only else 0,
            )
        return logits, cache
