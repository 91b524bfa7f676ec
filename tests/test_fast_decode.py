"""The fast decode path (static KV cache) gives the eager reference's tokens.

On the CPU the static-cache steps run uncaptured; on CUDA the same steps are
replayed as a CUDA graph (checked on a GPU by ``benchmarks/bench_gpu.py``).
Every comparison is on a left-padded batch with an edit in the prefill.
"""

from __future__ import annotations

import pytest
import torch

from commlib.backends import Decoding, Edit, get_backend
from commlib.backends import decoding as fast_decoding
from commlib.models import Model
from commlib.prompts import Batch, encode

PROMPTS = ["Hi", "Hello there, how are you doing today?", "What is the capital of France?", "x y"]


def _edit(batch: Batch) -> Edit:
    last = torch.full((batch.size, 1), batch.length - 1)
    return Edit(1, last, lambda h: h * 3.0 + 0.5)


def _both(model: Model, backend: str, batch: Batch, decoding: Decoding, edit: Edit | None = None):
    be = get_backend(model, backend)
    eager = be.generate(batch, edit, decoding, fast=False)
    fast = be.generate(batch, edit, decoding, fast=True)
    return eager, fast


@pytest.mark.parametrize("backend", ["nnsight", "transformer-lens"])
def test_static_cache_greedy_equals_eager_on_a_padded_batch_with_an_edit(tiny: Model, backend: str) -> None:
    batch = encode(tiny, PROMPTS)
    assert batch.attention_mask.min() == 0  # left padding
    eager, fast = _both(tiny, backend, batch, Decoding(max_new_tokens=40, stop_at_eos=False), _edit(batch))
    assert torch.equal(fast.token_ids, eager.token_ids)
    assert fast.texts == eager.texts
    assert torch.equal(fast.first_logits, eager.first_logits)
    plain = get_backend(tiny, backend).generate(batch, None, Decoding(max_new_tokens=40, stop_at_eos=False))
    assert not torch.equal(plain.token_ids, fast.token_ids)  # the edit changed the continuation


def test_rows_that_reach_eos_give_the_eager_layout(tiny: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """The eager path prunes rows at EOS; the static path keeps them and pads: same ids, same length."""
    batch = encode(tiny, PROMPTS)
    free = get_backend(tiny, "nnsight").generate(
        batch, _edit(batch), Decoding(max_new_tokens=40, stop_at_eos=False)
    )
    # Make the tokens rows reach at different steps the EOS ids, so rows finish one after another.
    eos = sorted({int(free.token_ids[r, 3 + 5 * r]) for r in range(batch.size)})
    monkeypatch.setattr(tiny, "eos_token_ids", lambda: eos)
    eager, fast = _both(tiny, "nnsight", batch, Decoding(max_new_tokens=40), _edit(batch))
    assert eager.token_ids.shape[1] < 40  # every row stopped, at different steps
    assert torch.equal(fast.token_ids, eager.token_ids)
    assert (fast.token_ids == tiny.tokenizer.pad_token_id).any()


def test_sampling_draws_the_same_tokens(tiny: Model) -> None:
    batch = encode(tiny, PROMPTS)
    decoding = Decoding(max_new_tokens=24, do_sample=True, temperature=0.8, top_p=0.9, seed=3)
    eager, fast = _both(tiny, "nnsight", batch, decoding, _edit(batch))
    assert torch.equal(fast.token_ids, eager.token_ids)


def test_after_a_shared_prefix_cache(tiny: Model) -> None:
    be = get_backend(tiny, "nnsight")
    batch = encode(
        tiny, ["The report says the sky is green. Is it?", "The report says the sky is green. Why?"]
    )
    decoding = Decoding(max_new_tokens=20, stop_at_eos=False)
    eager = be.generate(batch, None, decoding, fast=False)
    fast_decoding.FAST = True  # generate_shared_prefix takes the module's default
    try:
        shared = be.generate_shared_prefix(batch, decoding)
    finally:
        fast_decoding.FAST = None
    assert torch.equal(shared.token_ids, eager.token_ids)


def test_static_caches_are_kept_per_bucket_and_reused(tiny: Model) -> None:
    fast_decoding.clear(tiny)
    be = get_backend(tiny, "nnsight")
    decoding = Decoding(max_new_tokens=12, stop_at_eos=False)
    for prompts in (PROMPTS, [p + " again" for p in PROMPTS]):  # other lengths, same bucket
        batch = encode(tiny, prompts)
        assert torch.equal(
            be.generate(batch, None, decoding, fast=True).token_ids,
            be.generate(batch, None, decoding, fast=False).token_ids,
        )
    kept = fast_decoding._DECODERS[tiny.hf]
    assert len(kept) == 1
    (decoder,) = kept.values()
    assert decoder.length % fast_decoding.BUCKET == 0 and decoder.length >= batch.length + 12
    be.generate(encode(tiny, PROMPTS[:2]), None, decoding, fast=True)  # another batch size: another cache
    assert len(kept) == 2
    fast_decoding.clear(tiny)
    assert tiny.hf not in fast_decoding._DECODERS


def test_which_path_runs(tiny: Model) -> None:
    be = get_backend(tiny, "nnsight")
    batch = encode(tiny, PROMPTS[:2])
    _, past = be.forward(batch, None, None, last_only=True)
    assert fast_decoding.static_supported(tiny, past)
    assert not fast_decoding.use_fast(tiny, past, None)  # CPU: eager by default
    assert fast_decoding.use_fast(tiny, past, True)
    assert not fast_decoding.use_fast(tiny, None, True)  # nothing a static cache can take over
    fast_decoding.FAST = True
    try:
        assert fast_decoding.use_fast(tiny, past, None)
        assert not fast_decoding.use_fast(tiny, past, False)
    finally:
        fast_decoding.FAST = None
