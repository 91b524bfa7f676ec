"""Decode steps after the prefill: the eager reference and a fast static-cache path.

:meth:`commlib.backends.base.Backend.generate` runs the prefill (where an
:class:`~commlib.backends.base.Edit` acts) through the backend, then decodes
the unedited steps on the plain HF model (``model.hf``) in one of two ways:

* eager (the reference): a ``DynamicCache`` that grows by one position a step;
  greedy rows that reach EOS leave the batch;
* fast (:func:`decode_static`): the prefill's keys and values copied into a
  ``StaticCache`` sized to the prompt plus ``max_new_tokens`` (rounded up to
  :data:`BUCKET` positions), every step the same shapes, so on CUDA one step is
  captured once as a CUDA graph and replayed. Rows stay in the batch after EOS
  (they decode pad, ignored), and the output is the eager path's layout.

Which one runs: ``generate(..., fast=...)``; ``None`` defers to :data:`FAST`,
whose ``None`` means fast wherever the model sits on a CUDA device. Without
CUDA the fast path runs the same static-cache steps uncaptured (that is how the
CPU tests compare it with the eager path). Models whose cache is not plain full
attention on one device (sliding-window layers, a device map over several
GPUs) decode eagerly whatever is asked.

Captured steps are kept per model, batch size and length bucket (the
:data:`KEEP` most recently used), so warm-up is paid once per shape.

Example:
    >>> from commlib.models import load_model
    >>> from commlib.backends import Decoding, get_backend
    >>> from commlib.prompts import encode
    >>> m = load_model("tiny-llama-random")
    >>> be, batch = get_backend(m, "nnsight"), encode(m, ["Hi", "Hello there"])
    >>> d = Decoding(max_new_tokens=6, stop_at_eos=False)
    >>> fast, eager = (be.generate(batch, None, d, fast=f).token_ids for f in (True, False))
    >>> torch.equal(fast, eager)
    True
"""

from __future__ import annotations

import warnings
import weakref
from collections import OrderedDict
from typing import Any, cast

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel, StaticCache
from transformers.cache_utils import DynamicLayer, StaticLayer

from commlib.config import Decoding
from commlib.models import Model

FAST: bool | None = None
"""Default of ``generate(fast=None)``: ``None`` is fast on CUDA, eager elsewhere; a bool, that everywhere."""

GRAPHS = True
"""Capture the fast path's step as a CUDA graph on CUDA (``False``: run it uncaptured, for comparison)."""

COMPILE = False
"""Compile the fast path's step (torch.compile, inductor) before capturing it on CUDA: fewer, fused
kernels, after tens of seconds of compiling per model, batch size and length bucket. Off by default."""

BUCKET = 256
"""The static cache's length is the prompt plus ``max_new_tokens`` rounded up to a multiple of this."""

KEEP = 4
"""Static caches (and captured steps) kept per model, the most recently used first."""

CHECK_EVERY = 16
"""Greedy fast decoding reads back whether every row is done once per this many steps (a sync)."""

_DECODERS: weakref.WeakKeyDictionary[PreTrainedModel, OrderedDict[tuple[Any, ...], StaticDecoder]] = (
    weakref.WeakKeyDictionary()
)


def choose(logits: Float[Tensor, "batch vocab"], decoding: Decoding, gen: torch.Generator) -> Tensor:
    """The next token of every row: argmax, or a draw (temperature, top-p) from ``gen`` on the CPU."""
    if not decoding.do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / decoding.temperature, dim=-1)
    if decoding.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < decoding.top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    idx = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1)
    return idx.to(logits.device)


def use_fast(model: Model, past: Any, fast: bool | None) -> bool:
    """Whether :func:`decode_static` decodes after this prefill (``fast`` as asked, see the module)."""
    if fast is None:
        fast = FAST if FAST is not None else model.device.type == "cuda"
    return fast and static_supported(model, past)


def static_supported(model: Model, past: Any) -> bool:
    """A plain full-attention ``DynamicCache`` on one device, which a ``StaticCache`` can take over."""
    if type(past) is not DynamicCache or not past.layers:
        return False
    if len({str(d) for d in (getattr(model.hf, "hf_device_map", None) or {}).values()}) > 1:
        return False
    layer_types = getattr(model.hf.config.get_text_config(decoder=True), "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        return False
    kv = _dynamic_kv(past)
    return kv is not None and len({k.device for k, _ in kv}) == 1


def _dynamic_kv(past: DynamicCache) -> list[tuple[Tensor, Tensor]] | None:
    """Each layer's cached keys and values, or None unless every layer is a plain filled ``DynamicLayer``."""
    kv = []
    for layer in past.layers:
        if type(layer) is not DynamicLayer:
            return None
        keys, values = cast(DynamicLayer, layer).keys, cast(DynamicLayer, layer).values
        if keys is None or values is None:
            return None
        kv.append((keys, values))
    return kv


class StaticDecoder:
    """A static KV cache for one batch size and length, and one decode step over it.

    The step reads its token ids, positions and attention mask from buffers of
    fixed address and writes the next logits to another, so on CUDA it is
    captured once as a CUDA graph (:data:`GRAPHS`) and replayed with new inputs.

    Args:
        hf: The plain HF model the steps run on.
        past: A prefill's cache, for the layers' shapes, dtype and device.
        length: Positions the static cache holds.
    """

    def __init__(self, hf: PreTrainedModel, past: DynamicCache, length: int) -> None:
        kv = _dynamic_kv(past)
        if kv is None:
            raise ValueError("a static cache takes over a plain full-attention DynamicCache only")
        batch, device = kv[0][0].shape[0], kv[0][0].device
        self.hf, self.length = hf, length
        self.cache = StaticCache(config=hf.config, max_cache_len=length)
        layers = self.cache.layers
        if len(layers) != len(kv) or any(type(layer) is not StaticLayer for layer in layers):
            raise ValueError("the model's static cache is not one full-attention layer per cached layer")
        self.layers = [cast(StaticLayer, layer) for layer in layers]
        for static, (keys, values) in zip(self.layers, kv, strict=True):
            static.lazy_initialization(keys[:, :, :1], values[:, :, :1])
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.mask = torch.ones(batch, length, dtype=torch.bool, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        compiled = COMPILE and device.type == "cuda"
        self._run = torch.compile(self._forward, dynamic=False) if compiled else self._forward
        self.logits = self._run()
        if device.type == "cuda" and GRAPHS:
            self._capture()

    def _forward(self) -> Float[Tensor, "batch vocab"]:
        out = self.hf(
            self.ids,
            attention_mask=self.mask,
            position_ids=self.positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.positions.add_(1)
        return out.logits[:, -1].float()

    def _capture(self) -> None:
        """Capture one step as a CUDA graph; where capture fails, warn and run the steps uncaptured."""
        with torch.cuda.device(self.ids.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up on a side stream, as graph capture needs
                for _ in range(2):
                    self._run()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    logits = self._run()
            except RuntimeError as e:
                warnings.warn(
                    f"fast decoding runs its steps uncaptured: graph capture failed ({e})", stacklevel=2
                )
                return
        self.logits, self.graph = logits, graph

    def load(self, past: DynamicCache, mask: Int[Tensor, "batch seq"]) -> None:
        """Take over a prefill: its keys and values, its padding mask, and the next positions."""
        n = mask.shape[1]
        kv = _dynamic_kv(past)
        assert kv is not None
        for static, (keys, values) in zip(self.layers, kv, strict=True):
            for mine, theirs in ((static.keys, keys), (static.values, values)):
                assert mine is not None
                mine[:, :, :n].copy_(theirs)
                mine[:, :, n:].zero_()
            static.cumulative_length.fill_(n)
        self.mask[:, :n].copy_(mask.bool())
        self.mask[:, n:] = True  # later positions: the causal mask hides those not yet written
        self.positions.copy_(mask.long().sum(-1, keepdim=True))

    def step(self, ids: Int[Tensor, " batch"]) -> Float[Tensor, "batch vocab"]:
        """Logits after feeding ``ids`` at the next position (a buffer the next step overwrites)."""
        self.ids.copy_(ids[:, None])
        if self.graph is not None:
            self.graph.replay()
        else:
            self.logits = self._run()
        return self.logits


def static_decoder(model: Model, past: DynamicCache, length: int) -> StaticDecoder:
    """The kept :class:`StaticDecoder` for this model, batch size and bucketed length, or a new one."""
    kv = _dynamic_kv(past)
    assert kv is not None
    keys = kv[0][0]
    bucket = -(-length // BUCKET) * BUCKET
    key = (tuple(keys.shape[:2]), tuple(keys.shape[3:]), keys.dtype, keys.device, bucket, GRAPHS, COMPILE)
    kept = _DECODERS.setdefault(model.hf, OrderedDict())
    if key in kept:
        kept.move_to_end(key)
        return kept[key]
    while len(kept) >= KEEP:
        kept.popitem(last=False)
    kept[key] = StaticDecoder(model.hf, past, bucket)
    return kept[key]


def clear(model: Model | None = None) -> None:
    """Drop the kept static caches and captured steps (of ``model``, or of every model)."""
    if model is None:
        _DECODERS.clear()
    else:
        _DECODERS.pop(model.hf, None)


def decode_static(
    model: Model,
    past: DynamicCache,
    mask: Int[Tensor, "batch seq"],
    logits: Float[Tensor, "batch vocab"],
    decoding: Decoding,
    gen: torch.Generator,
) -> Int[Tensor, "batch new"]:
    """The eager reference loop's tokens, through a static cache and (on CUDA) a replayed graph.

    Rows that are done stay in the batch and decode pad (their tokens are
    replaced by pad, as the eager path's are); when every row is done, the
    steps after it are cut off, so the layout is the eager path's.
    """
    eos = torch.tensor(model.eos_token_ids(), device=mask.device)
    pad_id = model.tokenizer.pad_token_id
    n_new = decoding.max_new_tokens
    decoder = static_decoder(model, past, mask.shape[1] + n_new)
    decoder.load(past, mask)
    done = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
    ids = torch.full((mask.shape[0], n_new), pad_id, dtype=torch.long, device=mask.device)
    every = CHECK_EVERY if not decoding.do_sample else 1  # sampling syncs every step anyway
    for step in range(n_new):
        nxt = torch.where(done, pad_id, choose(logits, decoding, gen))
        ids[:, step] = nxt
        if decoding.stop_at_eos:
            done = done | torch.isin(nxt, eos)
            if (step + 1) % every == 0 and bool(done.all()):
                break
        if step == n_new - 1:
            break
        logits = decoder.step(nxt)
    return ids[:, : _steps(ids, eos, decoding)]


def _steps(ids: Int[Tensor, "batch new"], eos: Tensor, decoding: Decoding) -> int:
    """How many steps the eager loop runs: up to the step where the last row reaches EOS."""
    n_new = ids.shape[1]
    if not decoding.stop_at_eos or n_new == 0:
        return n_new
    hit = torch.isin(ids, eos)
    if not bool(hit.any(-1).all()):
        return n_new
    return int(hit.float().argmax(-1).max()) + 1
