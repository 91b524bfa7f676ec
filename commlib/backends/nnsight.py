"""nnsight backend: traces over ``nnsight.TransformersModel``.

The trace bodies below read and write ``model.model.layers[k].output``, which
in transformers 5 is the block's output tensor (``[batch, seq, d]``), equal to
HF ``hidden_states[k + 1]``.

``remote`` is passed to every trace, so NDIF remote execution is a parameter,
not a rewrite; device maps are the wrapped HF model's own.

nnsight patches the ``forward`` of every module it wraps, so it wraps a copy
of the module tree that shares the weights; decode steps after the edited
prefill run on the untouched HF model (:meth:`Backend.plain_forward`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nnsight
from jaxtyping import Float
from torch import Tensor

from commlib.backends.base import Backend, Edit, cache_length, position_ids_for, shared_weights_copy
from commlib.models import Model
from commlib.prompts import Batch


class NnsightBackend(Backend):
    """Grafting through nnsight traces.

    Args:
        model: The model to wrap.
        remote: Run traces on NDIF (needs a key and a network).

    Example:
        >>> from commlib.models import load_model
        >>> from commlib.prompts import encode
        >>> model = load_model("tiny-llama-random")
        >>> backend = NnsightBackend(model)
        >>> backend.capture(encode(model, ["Hi"]), layer=1).shape
        torch.Size([1, 64])
    """

    name = "nnsight"

    def __init__(self, model: Model, remote: bool = False) -> None:
        super().__init__(model)
        self.remote = remote
        padding_side = model.tokenizer.padding_side
        self.lm = nnsight.TransformersModel(shared_weights_copy(model.hf), tokenizer=model.tokenizer)
        model.tokenizer.padding_side = padding_side  # TransformersModel sets left; keep ours
        self._layers = self.lm.model.layers

    def residuals(self, batch: Batch, layers: Sequence[int]) -> dict[int, Float[Tensor, "batch seq d"]]:
        saved = {}
        with self.lm.trace(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            remote=self.remote,
        ) as tracer:
            for layer in sorted(set(layers)):  # nnsight needs execution order
                saved[layer] = self._layers[layer].output.save()
            tracer.stop()  # the blocks after the last requested one are not needed
        return {k: v.detach() for k, v in saved.items()}

    def forward(
        self, batch: Batch, edit: Edit | None = None, past: Any = None, last_only: bool = False
    ) -> tuple[Tensor, Any]:
        offset = cache_length(past)
        kwargs = dict(
            attention_mask=batch.attention_mask,
            position_ids=position_ids_for(batch, offset),
            past_key_values=past,
            use_cache=True,
            logits_to_keep=1 if last_only else 0,
        )
        with self.lm.trace(batch.input_ids, remote=self.remote, **kwargs):
            if edit is not None:
                block = self._layers[edit.layer]
                block.output = edit.apply(block.output, offset)
            out = self.lm.output.save()
        return out.logits, out.past_key_values
