"""Analytic FLOPs: the paper's formula where the shapes agree, torch's FLOP counter on real passes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from commlib.compute import Shape, forward_flops, generation_flops, method_flops, paper_forward_flops
from commlib.models import Model


def softmax_term(shape: Shape, attended: int) -> float:
    """The 3HP^2-type softmax cost, which torch's counter (matmuls only) leaves out."""
    return 3 * shape.n_heads * attended * shape.n_layers


@pytest.mark.parametrize("tokens", [1, 9, 40])
def test_count_equals_torch_flop_counter(
    tiny: Model, tokens: int, eager_twin: Callable[[Model], Model]
) -> None:
    tiny = eager_twin(tiny)  # torch's counter misses the CPU's fused sdpa kernel; eager attention is matmuls
    shape = Shape.from_config(tiny.hf.config)
    ids = torch.randint(0, 250, (1, tokens))
    with FlopCounterMode(display=False) as counter:
        out = tiny.hf(input_ids=ids, use_cache=True)
    assert counter.get_total_flops() == forward_flops(shape, tokens) - softmax_term(shape, tokens * tokens)
    with FlopCounterMode(display=False) as counter:  # one cached decode step
        tiny.hf(input_ids=ids[:, :1], past_key_values=out.past_key_values)
    cached = forward_flops(shape, 1, context=tokens) - softmax_term(shape, tokens + 1)
    assert counter.get_total_flops() == cached


def test_reduces_to_the_papers_formula_for_its_architecture() -> None:
    mha = Shape(
        n_layers=3, d_model=32, n_heads=4, n_kv_heads=4, head_dim=8, d_ff=64, vocab=50, gated_mlp=False
    )
    for p in (1, 7, 64):
        assert forward_flops(mha, p) == paper_forward_flops(mha, p)


def test_method_accounting() -> None:
    a = Shape(n_layers=4, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128, vocab=300)
    b = Shape(n_layers=6, d_model=96, n_heads=4, n_kv_heads=4, head_dim=24, d_ff=192, vocab=300)
    lengths = {"prompt_a": 30, "prompt_b": 20, "message": 16, "answer": 8}
    nl, ac = method_flops("nl", a, b, **lengths), method_flops("ac", a, b, k=1, **lengths)
    single_b = method_flops("single-b", a, b, **lengths)
    assert ac["sender"] == forward_flops(a, 30, layers=2, unembed=False)
    assert ac["receiver"] == single_b["receiver"] < nl["receiver"]  # B reads no message
    assert ac["total"] < nl["total"] < method_flops("nld", a, b, rounds=2, **lengths)["total"]
    paper = method_flops("nl", a, b, accounting="paper", **lengths)
    assert paper["total"] > nl["total"]  # no KV cache: every token a full pass
    assert generation_flops(a, 10, 1) == forward_flops(a, 10)
    with pytest.raises(ValueError, match="needs k"):
        method_flops("ac", a, b, **lengths)
    cot = method_flops("ac-cot", a, b, k=1, **lengths)  # A writes 16 tokens, then reads all 46 to block 1
    assert cot["sender"] == generation_flops(a, 30, 16) + forward_flops(a, 46, layers=2, unembed=False)
    assert cot["receiver"] == ac["receiver"]
