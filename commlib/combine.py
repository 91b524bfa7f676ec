"""Combining functions f(a, b), the paper's width rule, and the learned map W.

``a`` is the sender's activation (width ``d_A``), ``b`` the receiver's
(width ``d_B``). The registered functions are the paper's:

* ``sum``: ``a + b``;  ``mean``: ``(a + b) / 2``;  ``replace``: ``a``.

When ``d_A != d_B`` and no map is given, the paper's footnote rule applies:
with ``d = min(d_A, d_B)``, f acts on the LAST ``d`` coordinates of both and
B keeps its leading ``d_B - d`` coordinates. With a learned map ``W``
(``d_B x d_A``), any f uses ``W a`` in place of ``a``.

Two knobs serve the perturbation analyses: ``alpha`` interpolates
``b + alpha * (f(a, b) - b)`` (0 = untouched, 1 = the paper), and
``match_norm`` rescales the result to ``b``'s norm.

Example:
    >>> import torch
    >>> a, b = torch.ones(1, 2), torch.tensor([[1.0, 2.0, 3.0]])
    >>> combine(a, b, "sum")
    tensor([[1., 3., 4.]])
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from commlib.errors import MapMismatchError, UnknownCombineError, WidthMismatchError

CombineFn = Callable[[Tensor, Tensor], Tensor]

COMBINE_FNS: dict[str, CombineFn] = {
    "sum": lambda a, b: a + b,
    "mean": lambda a, b: (a + b) / 2,
    "replace": lambda a, b: a,
}
"""Registered combining functions ``f(a, b)`` on equal-width inputs."""


def register_combine(name: str, fn: CombineFn) -> None:
    """Register a new combining function under ``name`` (both inputs the same width)."""
    COMBINE_FNS[name] = fn


@dataclass(frozen=True)
class MapInfo:
    """What a learned map was trained on; saved next to its weights."""

    sender: str
    receiver: str
    k: int
    j: int
    d_sender: int
    d_receiver: int
    corpus: str
    n: int
    seed: int
    epochs: int
    batch_size: int
    lr: float
    train_mse: float
    val_mse: float
    val_baseline_mse: float
    fit: str = "adam"
    ridge: float = 0.0


@dataclass
class LinearMap:
    """A learned linear map ``W`` (``d_B x d_A``) from sender to receiver space.

    ``W a``, plus ``bias`` when the fit has one (:func:`fit_ridge_map`). Saved
    as ``weights.safetensors`` plus ``map.json`` (the :class:`MapInfo`); never
    pickled.
    """

    weight: Float[Tensor, "d_b d_a"]
    info: MapInfo
    bias: Float[Tensor, " d_b"] | None = None

    def __call__(self, a: Float[Tensor, "... d_a"]) -> Float[Tensor, "... d_b"]:
        if a.shape[-1] != self.weight.shape[1]:
            raise MapMismatchError(
                f"map expects sender width {self.weight.shape[1]}, got {a.shape[-1]}: "
                f"it was trained for {self.info.sender} -> {self.info.receiver}"
            )
        out = a @ self.weight.to(a.dtype).to(a.device).T
        return out if self.bias is None else out + self.bias.to(a.dtype).to(a.device)

    def check_pair(self, sender: str, receiver: str, k: int, j: int) -> None:
        """Raise :class:`MapMismatchError` unless the map was fit for this pair and layers."""
        got = (self.info.sender, self.info.receiver, self.info.k, self.info.j)
        if got != (sender, receiver, k, j):
            raise MapMismatchError(
                f"map was trained for {got[0]} (k={got[2]}) -> {got[1]} (j={got[3]}), "
                f"not {sender} (k={k}) -> {receiver} (j={j}): fit one with `commlib fit-map`"
            )

    def save(self, path: str | Path, record: dict[str, Any] | None = None) -> Path:
        """Write the map to directory ``path``; returns it.

        ``record`` adds keys to ``map.json`` next to the :class:`MapInfo` (e.g. the models'
        placement while fitting); :meth:`load` reads the info only.
        """
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"weight": self.weight} | ({} if self.bias is None else {"bias": self.bias})
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, out / "weights.safetensors")
        (out / "map.json").write_text(json.dumps({**(record or {}), **asdict(self.info)}, indent=2))
        return out

    @classmethod
    def load(cls, path: str | Path) -> LinearMap:
        """Read a map saved by :meth:`save`."""
        src = Path(path)
        if not (src / "map.json").exists():
            raise MapMismatchError(f"no map at {src}: expected map.json and weights.safetensors there")
        stored = json.loads((src / "map.json").read_text())
        info = MapInfo(**{f.name: stored[f.name] for f in fields(MapInfo) if f.name in stored})
        tensors = load_file(src / "weights.safetensors")
        weight = tensors["weight"]
        if tuple(weight.shape) != (info.d_receiver, info.d_sender):
            raise MapMismatchError(f"map at {src} has shape {tuple(weight.shape)}, metadata says otherwise")
        return cls(weight=weight, info=info, bias=tensors.get("bias"))


def width_rule(
    a: Float[Tensor, "... d_a"], b: Float[Tensor, "... d_b"], f: CombineFn
) -> Float[Tensor, "... d_b"]:
    """Apply ``f`` on the last ``min(d_A, d_B)`` coordinates; keep B's leading ones.

    This is the paper's footnote 1 rule for sender and receiver of different widths.
    """
    d = min(a.shape[-1], b.shape[-1])
    lead = b.shape[-1] - d
    tail = f(a[..., a.shape[-1] - d :], b[..., lead:])
    return torch.cat([b[..., :lead], tail], dim=-1)


def combine(
    a: Float[Tensor, "... d_a"],
    b: Float[Tensor, "... d_b"],
    f: str,
    *,
    map: LinearMap | None = None,
    width: str = "rule",
    alpha: float = 1.0,
    match_norm: bool = False,
) -> Float[Tensor, "... d_b"]:
    """Combine sender activation ``a`` with receiver activation ``b``.

    Args:
        a: Sender activations, ``[..., d_A]``.
        b: Receiver activations, ``[..., d_B]``.
        f: A name in :data:`COMBINE_FNS` (``sum``, ``mean``, ``replace``).
        map: A learned ``W``; when given, ``W a`` replaces ``a``.
        width: For ``d_A != d_B`` without a map: ``"rule"`` (the paper's) or
            ``"error"`` (refuse).
        alpha: Interpolation ``b + alpha * (f(a, b) - b)``.
        match_norm: Rescale the result to the norm of ``b`` (per row).

    Returns:
        The new receiver activation, shaped like ``b``, on ``b``'s device
        (``a`` moves there first, and ``W`` with it: under a device map that
        is the device of the receiver's block, wherever the sender runs).

    Raises:
        UnknownCombineError: ``f`` is not registered.
        WidthMismatchError: widths differ, no map, and ``width="error"``.

    Example:
        >>> import torch
        >>> a, b = torch.tensor([[2.0, 2.0]]), torch.tensor([[0.0, 1.0, 2.0]])
        >>> combine(a, b, "replace")  # last 2 coordinates replaced
        tensor([[0., 2., 2.]])
        >>> combine(a, b, "replace", alpha=0.0)
        tensor([[0., 1., 2.]])
    """
    if f not in COMBINE_FNS:
        raise UnknownCombineError(f"unknown f {f!r}; use one of {', '.join(COMBINE_FNS)}")
    fn = COMBINE_FNS[f]
    a = a.to(b.device)
    if map is not None:
        a = map(a)
    if a.shape[-1] == b.shape[-1]:
        out = fn(a.to(b.dtype), b)
    elif width == "rule":
        out = width_rule(a.to(b.dtype), b, fn)
    else:
        raise WidthMismatchError(
            f"sender width {a.shape[-1]} != receiver width {b.shape[-1]}: pass a learned map "
            "(--map, fit with `commlib fit-map`) or use the paper's width rule"
        )
    if alpha != 1.0:
        out = b + alpha * (out - b)
    if match_norm:
        out = out * (b.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    return out


def fit_linear_map(
    a: Float[Tensor, "n d_a"],
    b: Float[Tensor, "n d_b"],
    *,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-3,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    **info: Any,
) -> LinearMap:
    """Fit ``W`` by MSE between ``W a`` and ``b`` as in the paper.

    Xavier-initialised, no bias, Adam, mini-batches, a held-out split for the
    validation MSE (reported next to the baseline of predicting ``b``'s mean).

    Args:
        a: Sender final-token activations on n sentences.
        b: Receiver final-token activations on the same sentences.
        epochs, batch_size, lr: The paper's 10, 32, 1e-3 by default.
        val_fraction: Share of sentences held out.
        seed: Seeds the split, the init and the batch order.
        progress: Show a tqdm bar over epochs.
        **info: Remaining :class:`MapInfo` fields (sender, receiver, k, j, corpus).

    Example:
        >>> import torch
        >>> a = torch.randn(256, 4); b = a @ torch.randn(4, 3)
        >>> m = fit_linear_map(a, b, epochs=200, lr=1e-2, progress=False, sender="A",
        ...                    receiver="B", k=0, j=0, corpus="toy")
        >>> m.info.val_mse < 0.01 * m.info.val_baseline_mse
        True
    """
    from tqdm.auto import trange

    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must pair up: {a.shape[0]} vs {b.shape[0]} rows")
    gen = torch.Generator().manual_seed(seed)
    a, b = a.float().cpu(), b.float().cpu()
    order = torch.randperm(a.shape[0], generator=gen)
    n_val = max(1, round(val_fraction * a.shape[0]))
    val, train = order[:n_val], order[n_val:]
    weight = torch.empty(b.shape[1], a.shape[1])
    torch.nn.init.xavier_uniform_(weight, generator=gen)
    weight.requires_grad_(True)
    opt = torch.optim.Adam([weight], lr=lr)
    with torch.enable_grad():  # callers often run under no_grad
        for _ in trange(epochs, desc="fit W", disable=not progress, leave=False):
            perm = train[torch.randperm(train.numel(), generator=gen)]
            for start in range(0, perm.numel(), batch_size):
                idx = perm[start : start + batch_size]
                loss = torch.nn.functional.mse_loss(a[idx] @ weight.T, b[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    weight = weight.detach()
    with torch.no_grad():
        train_mse = torch.nn.functional.mse_loss(a[train] @ weight.T, b[train]).item()
        val_mse = torch.nn.functional.mse_loss(a[val] @ weight.T, b[val]).item()
        baseline = torch.nn.functional.mse_loss(b[train].mean(0).expand_as(b[val]), b[val]).item()
    meta = MapInfo(
        d_sender=a.shape[1],
        d_receiver=b.shape[1],
        n=a.shape[0],
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        train_mse=train_mse,
        val_mse=val_mse,
        val_baseline_mse=baseline,
        **info,
    )
    return LinearMap(weight=weight, info=meta)


RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""Ridge strengths :func:`fit_ridge_map` tries, relative to the mean eigenvalue of the sender's covariance."""


def fit_ridge_map(
    a: Float[Tensor, "n d_a"],
    b: Float[Tensor, "n d_b"],
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    grid: tuple[float, ...] = RIDGE_GRID,
    **info: Any,
) -> LinearMap:
    """Closed-form ridge ``b ~ W a + bias`` on centred states, its strength chosen on a held-out split.

    A deviation from the paper (which trains ``W`` with Adam, no bias, as
    :func:`fit_linear_map` does): residual streams carry large shared
    directions, so the bias absorbs B's mean and ``W`` maps what varies.
    The strength (relative to the mean eigenvalue of ``a``'s covariance) with
    the lowest validation MSE wins; ``info`` records it next to the baseline
    of predicting ``b``'s mean, which a useful map must beat.

    Example:
        >>> import torch
        >>> a = torch.randn(256, 4); b = a @ torch.randn(4, 3) + 5.0
        >>> m = fit_ridge_map(a, b, sender="A", receiver="B", k=0, j=0, corpus="toy")
        >>> m.info.val_mse < 0.01 * m.info.val_baseline_mse, m.bias is not None
        (True, True)
    """
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must pair up: {a.shape[0]} vs {b.shape[0]} rows")
    gen = torch.Generator().manual_seed(seed)
    a, b = a.double().cpu(), b.double().cpu()
    order = torch.randperm(a.shape[0], generator=gen)
    n_val = max(1, round(val_fraction * a.shape[0]))
    val, train = order[:n_val], order[n_val:]
    mu_a, mu_b = a[train].mean(0), b[train].mean(0)
    x, y = a[train] - mu_a, b[train] - mu_b
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    uy = u.T @ y
    scale = float((s**2).mean())

    def solve(lam: float) -> Tensor:  # [d_a, d_b]
        return vh.T @ ((s / (s**2 + lam * scale))[:, None] * uy)

    def mse(w: Tensor, rows: Tensor) -> float:
        return float(((a[rows] - mu_a) @ w + mu_b - b[rows]).pow(2).mean())

    lam = min(grid, key=lambda g: mse(solve(g), val))
    w = solve(lam)
    weight, bias = w.T.float().contiguous(), (mu_b - mu_a @ w).float()
    meta = MapInfo(
        d_sender=a.shape[1],
        d_receiver=b.shape[1],
        n=a.shape[0],
        seed=seed,
        epochs=0,
        batch_size=0,
        lr=0.0,
        train_mse=mse(w, train),
        val_mse=mse(w, val),
        val_baseline_mse=float((mu_b - b[val]).pow(2).mean()),
        fit="ridge",
        ridge=lam,
        **info,
    )
    return LinearMap(weight=weight, info=meta, bias=bias)
