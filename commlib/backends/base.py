"""One interface for the grafting backends.

A backend wraps a :class:`~commlib.models.Model` and knows how to do two things
through its library (nnsight or TransformerLens):

* :meth:`Backend.residuals`: the residual stream after chosen decoder blocks
  ("post-layer k", equal to HF ``hidden_states[k + 1]``);
* :meth:`Backend.forward`: one forward pass, optionally with an
  :class:`Edit` applied to the residual after one block, returning logits and
  the KV cache.

Everything else (capture at a position, decoding with the KV cache carrying
the edit, greedy or sampled) is shared here, so the backends cannot drift
apart in how they decode.

The edit is applied only when the pass covers the edited positions, i.e. in
the prefill; decode steps then see the edited keys and values through the
cache, which is the paper's method.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from commlib.backends.decoding import choose, decode_static, use_fast
from commlib.config import Decoding
from commlib.errors import CommlibError, LayerOutOfRangeError, NonFiniteActivationError
from commlib.models import Model
from commlib.prompts import Batch, split_shared_prefix

EditFn = Callable[[Float[Tensor, "batch n d"]], Float[Tensor, "batch n d"]]


@dataclass(frozen=True)
class Edit:
    """Replace the residual after block ``layer`` at ``positions`` by ``fn`` of itself.

    Positions are absolute (into the padded prompt), so an edit is applied in
    whichever forward pass holds them: the prefill, or the first pass after a
    cached prefix; passes that hold none of them are left alone.

    Attributes:
        layer: Decoder block index (0-based); the edit acts on its output.
        positions: ``[batch, n]`` absolute indices into the padded sequence.
        fn: Maps the ``[batch, n, d]`` residual slice to its replacement.
    """

    layer: int
    positions: Int[Tensor, "batch n"]
    fn: EditFn

    def apply(self, hidden: Float[Tensor, "batch seq d"], offset: int = 0) -> Float[Tensor, "batch seq d"]:
        """Return ``hidden`` (a pass over positions ``offset ..``) with the edit applied."""
        pos = self.positions.to(hidden.device) - offset
        inside = (pos >= 0) & (pos < hidden.shape[1])
        if not bool(inside.any()):
            return hidden
        if not bool(inside.all()):
            raise CommlibError("an edit's positions straddle a cached prefix: run the prefix without them")
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        new = self.fn(hidden[rows, pos])
        check_finite(new, f"edited residual at layer {self.layer}")
        out = hidden.clone()
        out[rows, pos] = new.to(hidden.device, hidden.dtype)  # fn may build it elsewhere (A's device)
        return out


@dataclass(frozen=True)
class Generation:
    """Generated continuations of a batch.

    Attributes:
        token_ids: ``[batch, new]`` generated ids; after a row's EOS, pad ids
            (the same layout HF ``generate`` returns after the prompt).
        texts: Decoded continuations (special tokens skipped).
        first_logits: ``[batch, vocab]`` logits that chose the first new token.
    """

    token_ids: Int[Tensor, "batch new"]
    texts: list[str]
    first_logits: Float[Tensor, "batch vocab"]


@contextmanager
def final_states(model: Model) -> Iterator[list[Float[Tensor, "batch d"]]]:
    """Collect what ``model``'s unembedding reads at the last position, in every pass of the block.

    The final normed state (HF ``hidden_states[-1]``) of each forward pass
    over ``model``'s weights, whichever module tree runs them: plain HF, the
    nnsight copy or the TransformerLens bridge (a global forward pre-hook
    that matches the unembedding by its weight). In :meth:`Backend.generate`
    the first entry is the prefill's answer position; the entries after it are
    the decode steps' on the eager path only (steps replayed as a CUDA graph
    run no Python hooks). The hook is removed on exit, also on error.

    Example:
        >>> from commlib.models import load_model
        >>> from commlib.prompts import encode
        >>> m = load_model("tiny-llama-random")
        >>> with final_states(m) as states:
        ...     _ = m.hf(encode(m, ["Hi"]).input_ids)
        >>> states[0].shape
        torch.Size([1, 64])
    """
    weight = model.hf.get_output_embeddings().weight
    seen: list[Tensor] = []

    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if isinstance(module, torch.nn.Linear) and module.weight is weight:
            seen.append(args[0][:, -1].detach().float())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def check_finite(x: Tensor, what: str) -> None:
    """Raise :class:`NonFiniteActivationError` when ``x`` holds NaN or inf."""
    if not torch.isfinite(x).all():
        raise NonFiniteActivationError(f"{what} contains NaN or inf: check the inputs, the map W, and alpha")


def check_layer(model: Model, layer: int, what: str = "layer") -> None:
    """Raise :class:`LayerOutOfRangeError` unless ``0 <= layer < n_layers``."""
    n = model.info.n_layers
    if not 0 <= layer < n:
        raise LayerOutOfRangeError(f"{what}={layer} is out of range for {model.name}: use 0..{n - 1}")


class Backend(ABC):
    """A grafting backend over one model. Subclasses implement two methods."""

    name: str = "base"

    def __init__(self, model: Model) -> None:
        self.model = model

    @abstractmethod
    def residuals(self, batch: Batch, layers: Sequence[int]) -> dict[int, Float[Tensor, "batch seq d"]]:
        """Residual stream after each of ``layers``: the output of decoder block k.

        Equal to HF ``hidden_states[k + 1]`` for all but the last block, whose
        HF hidden state has the final norm applied; this is the block output.
        """

    @abstractmethod
    def forward(
        self, batch: Batch, edit: Edit | None = None, past: Any = None, last_only: bool = False
    ) -> tuple[Float[Tensor, "batch seq vocab"], Any]:
        """One forward pass, optionally edited; returns ``(logits, kv_cache)``.

        ``batch`` holds the full attention mask (past and new tokens) and only
        the new tokens' ids when ``past`` is given. ``last_only`` computes the
        logits of the last position only (``seq`` = 1), which is all decoding needs.
        """

    # ---- shared on top of the two primitives --------------------------------

    def plain_forward(
        self, batch: Batch, past: Any = None, last_only: bool = False
    ) -> tuple[Float[Tensor, "batch seq vocab"], Any]:
        """An unedited forward pass through the plain HF model (``model.hf``).

        Decode steps after an edited prefill need no intervention: the KV cache
        carries the edit. Backends wrap their own module tree (see
        :func:`shared_weights_copy`), so ``model.hf`` stays plain HF and these
        steps cost what they cost in HF, whichever backend is in use.
        """
        out = self.model.hf(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=position_ids_for(batch, cache_length(past)),
            past_key_values=past,
            use_cache=True,
            logits_to_keep=1 if last_only else 0,
        )
        return out.logits, out.past_key_values

    def capture(
        self, batch: Batch, layer: int, positions: Int[Tensor, " batch"] | None = None
    ) -> Float[Tensor, "batch d"]:
        """Residual after block ``layer`` at one position per row (default: last)."""
        check_layer(self.model, layer)
        return self.capture_layers(batch, [layer], positions)[layer]

    def capture_layers(
        self, batch: Batch, layers: Sequence[int], positions: Int[Tensor, "batch ..."] | None = None
    ) -> dict[int, Float[Tensor, "batch ... d"]]:
        """:meth:`capture` for several layers from one forward pass.

        ``positions`` is one index per row (``[batch]``, giving ``[batch, d]``)
        or several (``[batch, n]``, giving ``[batch, n, d]``).
        """
        for layer in layers:
            check_layer(self.model, layer)
        hidden = self.residuals(batch, layers)
        out = {}
        for layer, h in hidden.items():
            if positions is None:
                out[layer] = h[:, -1]
            else:
                rows = torch.arange(batch.size, device=h.device)
                rows = rows[:, None] if positions.ndim == 2 else rows
                out[layer] = h[rows, positions.to(h.device)]
            check_finite(out[layer], f"{self.model.name} residual at layer {layer}")
        return out

    def logits(self, batch: Batch, edit: Edit | None = None) -> Float[Tensor, "batch seq vocab"]:
        """Full-sequence logits, optionally edited."""
        if edit is not None:
            check_layer(self.model, edit.layer)
        return self.forward(batch, edit)[0]

    @torch.no_grad()
    def generate(
        self,
        batch: Batch,
        edit: Edit | None = None,
        decoding: Decoding = Decoding(),
        past: Any = None,
        fast: bool | None = None,
    ) -> Generation:
        """Decode from ``batch``; ``edit`` is applied in the prefill only.

        The prefill runs through the backend; the KV cache carries the edited
        state into every later step, which runs on the plain HF model. With
        ``past`` (a cache of a prompt prefix), ``batch`` holds the remaining
        prompt tokens and the full attention mask; ``past`` is extended in place.
        ``fast`` picks the decode steps (:mod:`commlib.backends.decoding`): a
        static cache with CUDA-graph-replayed steps, or the eager reference;
        ``None`` is fast on CUDA (see :data:`commlib.backends.decoding.FAST`).
        """
        if edit is not None:
            check_layer(self.model, edit.layer)
        logits, past = self.forward(batch, edit, past, last_only=True)
        first_logits = logits[:, -1].float()
        ids = self.decode(past, batch.attention_mask, first_logits, decoding, fast)
        texts = self.model.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return Generation(token_ids=ids, texts=texts, first_logits=first_logits)

    @torch.no_grad()
    def decode(
        self,
        past: Any,
        mask: Int[Tensor, "batch seq"],
        first_logits: Float[Tensor, "batch vocab"],
        decoding: Decoding = Decoding(),
        fast: bool | None = None,
    ) -> Int[Tensor, "batch new"]:
        """The decode steps after a prefill (what :meth:`generate` runs after its forward pass).

        ``past`` is the prefill's cache (extended in place), ``mask`` its
        attention mask, ``first_logits`` its logits at the last position (they
        choose the first new token). Returns the new ids, ``[batch, new]``.
        """
        gen = torch.Generator(device="cpu").manual_seed(decoding.seed)
        if decoding.max_new_tokens > 1 and use_fast(self.model, past, fast):
            return decode_static(self.model, past, mask, first_logits, decoding, gen)
        return self._decode_eager(past, mask, first_logits, decoding, gen)

    def _decode_eager(
        self,
        past: Any,
        mask: Int[Tensor, "batch seq"],
        step_logits: Float[Tensor, "batch vocab"],
        decoding: Decoding,
        gen: torch.Generator,
    ) -> Int[Tensor, "batch new"]:
        """The reference decode loop: :meth:`plain_forward` steps on a growing cache."""
        eos = torch.tensor(self.model.eos_token_ids(), device=mask.device)
        pad_id = self.model.tokenizer.pad_token_id
        size = mask.shape[0]
        # Greedy rows that reach EOS leave the batch (their KV cache rows too), so the rest decode at
        # the cost of a smaller batch; sampled rows stay, so the generator's draws do not depend on it.
        prune = decoding.stop_at_eos and not decoding.do_sample
        rows = torch.arange(size, device=mask.device)  # the batch rows still decoding
        done = torch.zeros(size, dtype=torch.bool, device=mask.device)
        ids = torch.full((size, decoding.max_new_tokens), pad_id, dtype=torch.long, device=mask.device)
        steps = 0
        for step in range(decoding.max_new_tokens):
            nxt = choose(step_logits, decoding, gen)
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            ids[rows, step] = nxt
            steps = step + 1
            if decoding.stop_at_eos:
                done = done | torch.isin(nxt, eos)
                if bool(done.all()):
                    break
            if step == decoding.max_new_tokens - 1:
                break
            if prune and bool(done.any()):
                keep = (~done).nonzero().squeeze(-1)
                past.batch_select_indices(keep.cpu())  # a CPU index serves a cache split over devices
                rows, mask, nxt, done = rows[keep], mask[keep], nxt[keep], done[keep]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits, past = self.plain_forward(Batch(nxt[:, None], mask), past, last_only=True)
            step_logits = logits[:, -1].float()
        return ids[:, :steps]

    @torch.no_grad()
    def generate_shared_prefix(self, batch: Batch, decoding: Decoding = Decoding()) -> Generation:
        """:meth:`generate` (no edit) for prompts that start alike: their shared tokens run once.

        Rows that open with the same tokens (one document asked several
        questions) share one prefill of those tokens, whose KV cache is copied
        to every row; only each row's own tokens are prefilled per row. Same
        greedy tokens as :meth:`generate` on ``batch`` (tested); the padding
        then sits between the prefix and each row's tokens, masked out.
        """
        prefix, rest = split_shared_prefix(batch, self.model.tokenizer.pad_token_id)
        if prefix.shape[1] == 0 or batch.size == 1:
            return self.generate(batch, None, decoding)
        _, past = self.plain_forward(Batch(prefix, torch.ones_like(prefix)))
        past.batch_repeat_interleave(batch.size)
        return self.generate(rest, None, decoding, past=past)


def shared_weights_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module``'s tree that shares its parameters (no weight memory).

    nnsight patches the ``forward`` of every module it wraps, and
    TransformerLens's bridge replaces submodules in place; each backend wraps
    such a copy so the user's model, and the other backend, stay untouched.
    Buffers (e.g. rotary frequencies) are copied; they are small.
    """
    memo: dict[int, Any] = {id(p): p for p in module.parameters()}
    return copy.deepcopy(module, memo)


def position_ids_for(batch: Batch, past_len: int) -> Int[Tensor, "batch new"]:
    """Position ids of the new tokens in ``batch`` given ``past_len`` cached ones."""
    return batch.position_ids[:, past_len:]


def cache_length(past: Any) -> int:
    """Number of cached positions in a HF cache (0 for ``None``)."""
    if past is None:
        return 0
    return int(past.get_seq_length())
