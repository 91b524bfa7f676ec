"""f, the width rule, alpha, norm matching and the learned map, on hand-made vectors."""

from __future__ import annotations

import pytest
import torch

from commlib.combine import LinearMap, MapInfo, combine, fit_linear_map, width_rule
from commlib.errors import MapMismatchError, UnknownCombineError, WidthMismatchError

A = torch.tensor([[10.0, 20.0]])  # d_A = 2
B = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # d_B = 4


def test_equal_width_functions() -> None:
    a, b = torch.tensor([[2.0, 4.0]]), torch.tensor([[1.0, 1.0]])
    assert torch.equal(combine(a, b, "sum"), torch.tensor([[3.0, 5.0]]))
    assert torch.equal(combine(a, b, "mean"), torch.tensor([[1.5, 2.5]]))
    assert torch.equal(combine(a, b, "replace"), a)


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        ("sum", [1.0, 2.0, 13.0, 24.0]),  # B's leading 2 kept, last 2 summed with a
        ("mean", [1.0, 2.0, 6.5, 12.0]),
        ("replace", [1.0, 2.0, 10.0, 20.0]),
    ],
)
def test_width_rule_sender_narrower(f: str, expected: list[float]) -> None:
    assert combine(A, B, f).tolist() == [expected]


def test_width_rule_sender_wider_uses_senders_last_coordinates() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    b = torch.tensor([[10.0, 20.0]])
    assert combine(a, b, "replace").tolist() == [[3.0, 4.0]]
    assert combine(a, b, "sum").tolist() == [[13.0, 24.0]]
    assert width_rule(a, b, lambda x, y: x - y).tolist() == [[-7.0, -16.0]]


def test_width_mismatch_can_be_refused() -> None:
    with pytest.raises(WidthMismatchError, match="learned map"):
        combine(A, B, "sum", width="error")


def test_unknown_f_names_the_choices() -> None:
    with pytest.raises(UnknownCombineError, match="sum, mean, replace"):
        combine(A, B, "max")


def test_alpha_interpolates_between_b_and_f() -> None:
    a, b = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert torch.equal(combine(a, b, "replace", alpha=0.0), b)
    assert torch.equal(combine(a, b, "replace", alpha=0.5), torch.tensor([[2.0, 1.0]]))
    assert torch.equal(combine(a, b, "replace", alpha=2.0), torch.tensor([[8.0, -2.0]]))


def test_match_norm_rescales_to_b() -> None:
    a, b = torch.tensor([[30.0, 40.0]]), torch.tensor([[0.0, 2.0]])
    out = combine(a, b, "replace", match_norm=True)
    assert out.norm().item() == pytest.approx(2.0)
    assert torch.allclose(out / out.norm(), a / a.norm())


def _info(**kw: object) -> MapInfo:
    base = dict(
        sender="A",
        receiver="B",
        k=1,
        j=2,
        d_sender=2,
        d_receiver=4,
        corpus="toy",
        n=1,
        seed=0,
        epochs=1,
        batch_size=1,
        lr=1e-3,
        train_mse=0.0,
        val_mse=0.0,
        val_baseline_mse=1.0,
    )
    base.update(kw)
    return MapInfo(**base)  # type: ignore[arg-type]


def test_map_is_applied_before_f_and_has_shape_d_b_by_d_a() -> None:
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])  # 4 x 2
    lin = LinearMap(weight, _info())
    assert lin(A).tolist() == [[10.0, 20.0, 30.0, 0.0]]
    assert combine(A, B, "sum", map=lin).tolist() == [[11.0, 22.0, 33.0, 4.0]]
    with pytest.raises(MapMismatchError, match="sender width 2"):
        lin(torch.ones(1, 3))


def test_map_save_load_roundtrip_and_pair_check(tmp_path) -> None:
    lin = LinearMap(torch.randn(4, 2), _info())
    back = LinearMap.load(lin.save(tmp_path / "w"))
    assert torch.equal(back.weight, lin.weight)
    assert back.info == lin.info
    back.check_pair("A", "B", 1, 2)
    with pytest.raises(MapMismatchError, match="fit-map"):
        back.check_pair("A", "B", 1, 3)
    with pytest.raises(MapMismatchError, match="no map"):
        LinearMap.load(tmp_path / "missing")


def test_fit_linear_map_recovers_a_linear_relation() -> None:
    gen = torch.Generator().manual_seed(0)
    true_w = torch.randn(6, 4, generator=gen)
    a = torch.randn(512, 4, generator=gen)
    b = a @ true_w.T
    lin = fit_linear_map(
        a, b, epochs=60, lr=1e-2, progress=False, sender="A", receiver="B", k=0, j=0, corpus="toy"
    )
    assert lin.weight.shape == (6, 4)
    assert lin.info.val_mse < 1e-3 * lin.info.val_baseline_mse
    assert torch.allclose(lin.weight, true_w, atol=0.05)
