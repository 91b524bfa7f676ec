"""How far a state lies from the receiver's own activation manifold.

The thesis commlib tests: how far a transmitted signal moves the receiver off
its own activations decides whether it works zero-shot. This module measures
that distance, in one place:

* :func:`corpus_activations`: a model's final-token residuals after block
  ``layer`` on general-text sentences (or, ``corpus="task:<game>"``, at the
  graft's position on a game's own prompts), as a
  :class:`~commlib.config.ReferenceSpec` says, cached per model, layer and
  spec; :func:`reference_activations` splits B's into a fit set and a
  held-out calibration set.
* :class:`Manifold`: statistics fitted once on the fit set (mean, Ledoit-Wolf
  shrinkage precision, PCA, the fit set itself for nearest neighbours) and
  the held-out set's own distances, so that every metric is also reported as
  a percentile against B's own held-out activations (50 = typical, 100 =
  further out than all of them). Cached next to the activations.
* :meth:`Manifold.distances`: all metrics for a batch of states at once
  (vectorised, no loop per item or metric).
* :func:`next_token_kl`: the functional distance, B's next-token
  distribution with and without an edit.
* :func:`paper_similarity` and :func:`linear_cka`: how alike two models'
  activation spaces are on the same sentences.

Example:
    >>> import torch
    >>> from commlib.models import load_model
    >>> model = load_model("tiny-llama-random")
    >>> ref = reference_activations(model, 2, ReferenceSpec(n=200), cache=False)
    >>> manifold = Manifold.fit(ref)
    >>> far = torch.randn(3, model.info.d_model) * 50
    >>> bool((manifold.percentiles(far)["mahalanobis"] > 90).all())
    True
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from commlib.config import ReferenceSpec
from commlib.errors import CommlibError
from commlib.models import Model, cache_dir

METRICS = (
    "log_norm_ratio",
    "mahalanobis",
    "mahalanobis_pca",
    "pca_residual",
    "knn_euclidean",
    "knn_cosine",
)
"""Distances of :meth:`Manifold.distances` that are calibrated to percentiles."""

TASK_CORPUS = "task:"
"""``corpus="task:<game>"``: a game's own prompts (:func:`commlib.tasks.games.reference_prompts`)."""


@dataclass(frozen=True)
class ReferenceSet:
    """B's own activations at one layer, split for fitting and calibration.

    Attributes:
        fit: ``[n_fit, d]`` activations the statistics are fitted on.
        held_out: ``[n_held, d]`` activations kept out, for calibration.
        model: Model name.
        layer: Block whose output these are.
        corpus: Where the sentences came from.
        seed: Sentence sampling and split seed.
    """

    fit: Float[Tensor, "n_fit d"]
    held_out: Float[Tensor, "n_held d"]
    model: str
    layer: int
    corpus: str
    seed: int


def _key(ref: ReferenceSpec, layer: int) -> str:
    key = f"{ref.corpus}_L{layer}_n{ref.n}_seed{ref.seed}"
    if ref.formatted:
        import hashlib

        key += f"_fmt-{ref.position}-{hashlib.sha1(ref.reply.encode()).hexdigest()[:8]}"
    return key


def _reference_path(model: str, key: str) -> Path:
    return cache_dir() / "reference" / model / f"{key}.safetensors"


def corpus_activations(
    model: Model,
    layer: int,
    ref: ReferenceSpec = ReferenceSpec(),
    *,
    backend: str = "nnsight",
    cache: bool = True,
) -> Float[Tensor, "n d"]:
    """Residuals after block ``layer`` on the sentences of ``ref``, in sentence order.

    Sentences (``load_sentences(ref.corpus, ref.n, ref.seed)``) are fed raw
    and read at their final token, so rows of two models with the same
    ``ref`` are the same sentences. ``ref.formatted`` instead wraps each
    sentence as the user's text in the model's prompt format, followed by
    ``ref.reply``, and reads the state at ``ref.position``: a reference at the
    positions a game's graft uses (see :func:`commlib.graft.capture_corpus`).
    ``corpus="task:<game>"`` (with ``formatted``) reads the game's own prompts
    instead, each with its reply (:func:`commlib.tasks.games.reference_prompts`:
    at most ``n``, from seeds no evaluation uses). Cached under the commlib
    cache directory (set ``COMMLIB_CACHE_DIR`` to move it); ``cache=False``
    neither reads nor writes. :func:`cache_corpus_activations` fills the
    cache for many layers in one pass.

    Example:
        >>> from commlib.models import load_model
        >>> model = load_model("tiny-llama-random")
        >>> corpus_activations(model, 1, ReferenceSpec(n=8), cache=False).shape[0]
        8

    Raises:
        CommlibError: a bad layer, or NaN activations.
    """
    from safetensors.torch import load_file

    from commlib.backends.base import check_layer

    check_layer(model, layer)
    if not cache:
        return _capture_corpus(model, [layer], ref, backend)[layer]
    path = _reference_path(model.name, _key(ref, layer))
    if not path.exists():
        cache_corpus_activations(model, [layer], ref, backend=backend)
    return load_file(path)["activations"]


def cache_corpus_activations(
    model: Model,
    layers: Sequence[int] | None = None,
    ref: ReferenceSpec = ReferenceSpec(),
    *,
    backend: str = "nnsight",
) -> list[int]:
    """Fill :func:`corpus_activations`' cache for ``layers`` (default: all) in one pass over the sentences.

    Layers already cached are skipped; returns the layers computed. One pass
    costs about what one layer does, so a tool that will visit many layers
    (the explorer's j slider) pays once.

    Raises:
        CommlibError: a bad layer, or NaN activations.
    """
    from safetensors.torch import save_file

    keys = {layer: _key(ref, layer) for layer in (range(model.info.n_layers) if layers is None else layers)}
    todo = [layer for layer, key in keys.items() if not _reference_path(model.name, key).exists()]
    if todo:
        acts = _capture_corpus(model, todo, ref, backend)
        for layer in todo:
            path = _reference_path(model.name, keys[layer])
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(
                {"activations": acts[layer].contiguous()},
                path,
                metadata={"model": model.name, "key": keys[layer]},
            )
    return todo


def _capture_corpus(
    model: Model, layers: Sequence[int], ref: ReferenceSpec, backend: str
) -> dict[int, Tensor]:
    from commlib.corpora import load_sentences
    from commlib.graft import capture_corpus
    from commlib.tasks.games import reference_prompts

    replies: str | list[str] = ref.reply
    if ref.corpus.startswith(TASK_CORPUS):
        if not ref.formatted:
            raise CommlibError(
                f"{ref.corpus} is read in the prompt format, at the game's positions: pass formatted=True"
            )
        sentences, replies = reference_prompts(ref.corpus.removeprefix(TASK_CORPUS), ref.n, ref.seed)
    else:
        sentences = load_sentences(ref.corpus, n=ref.n, seed=ref.seed)
    label = f"L{layers[0]}" if len(layers) == 1 else f"{len(layers)} layers"
    acts = capture_corpus(
        model,
        sentences,
        layers,
        backend=backend,
        desc=f"{model.name} {label} {ref.corpus}",
        formatted=ref.formatted,
        position=ref.position,
        reply=replies,
    )
    for layer, x in acts.items():
        if not torch.isfinite(x).all():
            raise CommlibError(f"{model.name} gives NaN or inf activations at layer {layer}; check its dtype")
    return acts


def reference_activations(
    model: Model,
    layer: int,
    ref: ReferenceSpec = ReferenceSpec(),
    *,
    held_out: float = 0.25,
    backend: str = "nnsight",
    cache: bool = True,
) -> ReferenceSet:
    """B's own :func:`corpus_activations` of ``ref``, a seeded ``held_out`` fraction kept for calibration.

    Raises:
        CommlibError: a bad layer or split, or NaN activations.
    """
    if not 0 < held_out < 1:
        raise CommlibError(f"held_out is a fraction in (0, 1), got {held_out}")
    acts = corpus_activations(model, layer, ref, backend=backend, cache=cache)
    order = torch.randperm(len(acts), generator=torch.Generator().manual_seed(ref.seed))
    n_held = max(1, round(held_out * len(acts)))
    return ReferenceSet(
        fit=acts[order[n_held:]],
        held_out=acts[order[:n_held]],
        model=model.name,
        layer=layer,
        corpus=(
            ref.corpus
            if not ref.formatted
            else f"{ref.corpus} in prompt format ({ref.position}, reply {ref.reply!r})"
        ),
        seed=ref.seed,
    )


def input_reference(
    model: Model, ref: ReferenceSpec = ReferenceSpec(), *, held_out: float = 0.25
) -> ReferenceSet:
    """B's own input embeddings (scale included) of ``ref.n`` token occurrences drawn from corpus text.

    The reference for what a latent channel writes into B's input sequence
    (CIPHER's expected embeddings, Interlat's hidden states): tokens as often
    as the text uses them, so a real token's embedding is typical here. The
    tokens come from ``min(ref.n, 3072)`` raw sentences of ``ref.corpus``.

    Raises:
        CommlibError: a bad split, or a ``formatted`` reference (tokens are read from raw text).
    """
    from commlib.corpora import load_sentences

    if not 0 < held_out < 1:
        raise CommlibError(f"held_out is a fraction in (0, 1), got {held_out}")
    if ref.formatted:
        raise CommlibError("input_reference reads tokens of raw text: pass a ReferenceSpec without formatted")
    ids = [
        i
        for s in load_sentences(ref.corpus, n=min(ref.n, 3072), seed=ref.seed)
        for i in model.tokenizer(s, add_special_tokens=False)["input_ids"]
    ]
    g = torch.Generator().manual_seed(ref.seed)
    pick = torch.tensor(ids)[torch.randint(len(ids), (ref.n,), generator=g)]
    with torch.no_grad():
        acts = model.hf.get_input_embeddings()(pick.to(model.device)).float().cpu()
    n_held = max(1, round(held_out * ref.n))
    return ReferenceSet(
        fit=acts[n_held:],
        held_out=acts[:n_held],
        model=model.name,
        layer=-1,
        corpus=f"{ref.corpus} token embeddings",
        seed=ref.seed,
    )


def _check_states(x: Tensor, d: int) -> Tensor:
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != d:
        raise CommlibError(f"states must be [n, {d}] (the receiver's width); got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise CommlibError("states contain NaN or inf: check the run that produced them")
    return x.float()


@dataclass(frozen=True)
class Manifold:
    """Statistics of B's own activations at one layer, and their held-out calibration.

    Build with :meth:`fit` (or :func:`manifold_for`, which caches).

    Attributes:
        mean: ``[d]`` mean of the fit set.
        precision: ``[d, d]`` inverse of the Ledoit-Wolf shrinkage covariance.
        components: ``[c, d]`` top principal directions (rows, unit norm).
        variances: ``[c]`` variance along each of them.
        reference: ``[n_fit, d]`` the fit set (for nearest neighbours).
        median_norm: Median norm of the fit set.
        knn: Neighbours averaged in the kNN distances.
        calibration: Sorted held-out distances per metric.
        info: Model, layer, corpus, sizes.
    """

    mean: Float[Tensor, " d"]
    precision: Float[Tensor, "d d"]
    components: Float[Tensor, "c d"]
    variances: Float[Tensor, " c"]
    reference: Float[Tensor, "n d"]
    median_norm: float
    knn: int
    calibration: dict[str, Tensor]
    info: dict[str, Any]

    @classmethod
    def fit(cls, ref: ReferenceSet, *, n_components: int = 64, knn: int = 10) -> Manifold:
        """Fit on ``ref.fit`` and calibrate on ``ref.held_out``."""
        from sklearn.covariance import LedoitWolf

        x = ref.fit.float()
        n, d = x.shape
        c = min(n_components, d // 2, n - 1)
        mean = x.mean(0)
        lw = LedoitWolf().fit(x.double().numpy())
        centred = x - mean
        _, s, vt = torch.linalg.svd(centred, full_matrices=False)
        draft = cls(
            mean=mean,
            precision=torch.from_numpy(lw.precision_).float(),
            components=vt[:c],
            variances=(s[:c] ** 2) / (n - 1),
            reference=x,
            median_norm=float(x.norm(dim=-1).median()),
            knn=min(knn, n),
            calibration={},
            info={
                "model": ref.model,
                "layer": ref.layer,
                "corpus": ref.corpus,
                "seed": ref.seed,
                "n_fit": n,
                "n_held_out": len(ref.held_out),
                "n_components": c,
                "shrinkage": float(lw.shrinkage_),
            },
        )
        own = draft.distances(ref.held_out)
        calibration = {m: own[m].sort().values for m in METRICS}
        return cls(**{**draft.__dict__, "calibration": calibration})

    def distances(
        self, x: Float[Tensor, "n d"], b: Float[Tensor, "n d"] | None = None
    ) -> dict[str, Float[Tensor, " n"]]:
        """Every metric for each row of ``x``; with ``b`` (B's own states there) also the displacement.

        * ``norm_ratio``: ||x|| / median ||b'|| over B's fit set; ``log_norm_ratio``
          is |log| of it (too small and too large both count as far).
        * ``mahalanobis``: under the shrinkage covariance; ``mahalanobis_pca``
          in the top-``c`` principal subspace (whitened).
        * ``pca_residual``: norm of what the top-``c`` subspace leaves out.
        * ``knn_euclidean``, ``knn_cosine``: mean distance (1 - cosine) to the
          ``knn`` nearest fit activations.
        * ``displacement`` (with ``b``): ||x - b|| / ||b||.
        """
        x = _check_states(x, self.mean.numel())
        centred = x - self.mean
        norm = x.norm(dim=-1)
        ratio = norm / self.median_norm
        proj = centred @ self.components.T
        out = {
            "norm_ratio": ratio,
            "log_norm_ratio": ratio.clamp_min(1e-12).log().abs(),
            "mahalanobis": ((centred @ self.precision) * centred).sum(-1).clamp_min(0).sqrt(),
            "mahalanobis_pca": (proj / self.variances.sqrt()).norm(dim=-1),
            "pca_residual": (centred - proj @ self.components).norm(dim=-1),
            **self._knn(x),
        }
        if b is not None:
            b = _check_states(b, self.mean.numel())
            out["displacement"] = (x - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)
        return out

    def _knn(self, x: Tensor, chunk: int = 1024) -> dict[str, Tensor]:
        unit_ref = self.reference / self.reference.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        euclid, cosine = [], []
        for start in range(0, len(x), chunk):
            rows = x[start : start + chunk]
            d = torch.cdist(rows, self.reference)
            euclid.append(d.topk(self.knn, dim=-1, largest=False).values.mean(-1))
            sims = (rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)) @ unit_ref.T
            cosine.append(1 - sims.topk(self.knn, dim=-1).values.mean(-1))
        return {"knn_euclidean": torch.cat(euclid), "knn_cosine": torch.cat(cosine)}

    def percentiles(self, x: Float[Tensor, "n d"]) -> dict[str, Float[Tensor, " n"]]:
        """Each metric of :data:`METRICS` as the percentage of B's held-out activations no further out."""
        raw = self.distances(x)
        return {
            m: 100
            * torch.searchsorted(self.calibration[m], raw[m].contiguous(), right=True).float()
            / len(self.calibration[m])
            for m in METRICS
        }

    def table(self, x: Float[Tensor, "n d"], b: Float[Tensor, "n d"] | None = None) -> pd.DataFrame:
        """Tidy table: one row per state, raw metrics and ``<metric>_pct`` percentiles."""
        raw = self.distances(x, b)
        pct = self.percentiles(x)
        cols = {m: v.numpy() for m, v in raw.items()} | {f"{m}_pct": v.numpy() for m, v in pct.items()}
        return pd.DataFrame(cols)

    def save(self, path: str | Path) -> None:
        """Tensors to ``path`` (safetensors), everything else to ``path`` + ``.json``."""
        from safetensors.torch import save_file

        tensors = {
            "mean": self.mean,
            "precision": self.precision,
            "components": self.components,
            "variances": self.variances,
            "reference": self.reference,
            **{f"calibration.{m}": v for m, v in self.calibration.items()},
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        meta = {"median_norm": self.median_norm, "knn": self.knn, "info": self.info}
        Path(f"{path}.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Manifold:
        """Read what :meth:`save` wrote."""
        from safetensors.torch import load_file

        t = load_file(str(path))
        meta = json.loads(Path(f"{path}.json").read_text())
        return cls(
            mean=t["mean"],
            precision=t["precision"],
            components=t["components"],
            variances=t["variances"],
            reference=t["reference"],
            median_norm=meta["median_norm"],
            knn=meta["knn"],
            calibration={m: t[f"calibration.{m}"] for m in METRICS},
            info=meta["info"],
        )


def manifold_for(
    model: Model,
    layer: int,
    ref: ReferenceSpec = ReferenceSpec(),
    *,
    n_components: int = 64,
    knn: int = 10,
    backend: str = "nnsight",
) -> Manifold:
    """The fitted :class:`Manifold` of ``model``'s states of ``ref`` at ``layer``; computed once, cached."""
    key = _key(ref, layer)
    path = _reference_path(model.name, key).with_name(f"{key}_manifold_c{n_components}_k{knn}.safetensors")
    if path.exists():
        return Manifold.load(path)
    manifold = Manifold.fit(
        reference_activations(model, layer, ref, backend=backend), n_components=n_components, knn=knn
    )
    manifold.save(path)
    return manifold


def random_directions(
    norms: Float[Tensor, "n 1"], d: int, generator: torch.Generator
) -> Float[Tensor, "n d"]:
    """Isotropic random directions in ``d`` dimensions, row ``i`` scaled to ``norms[i]``."""
    x = torch.randn(len(norms), d, generator=generator)
    return x / x.norm(dim=-1, keepdim=True) * norms


def covariance_matched(
    reference: Float[Tensor, "m d"], n: int, generator: torch.Generator
) -> Float[Tensor, "n d"]:
    """``n`` Gaussian samples with the mean and covariance of ``reference``'s rows.

    Mixes the centred rows with standard normal weights, so no ``d x d``
    factorisation is needed and a rank-deficient covariance is fine.
    """
    centred = reference - reference.mean(0)
    weights = torch.randn(n, len(reference), generator=generator)
    return reference.mean(0) + weights @ centred / (len(reference) - 1) ** 0.5


def next_token_kl(
    logits_plain: Float[Tensor, "n vocab"], logits_edited: Float[Tensor, "n vocab"]
) -> Float[Tensor, " n"]:
    """KL(p_plain || p_edited) of B's next-token distributions, in nats.

    How much the edit moves what B would say next; 0 when the edit changes nothing.

    Example:
        >>> z = torch.randn(2, 10)
        >>> next_token_kl(z, z).abs().max().item() < 1e-6
        True
    """
    logp = torch.log_softmax(logits_plain.float(), dim=-1)
    logq = torch.log_softmax(logits_edited.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1).clamp_min(0)


def paper_similarity(x: Float[Tensor, "n d_x"], y: Float[Tensor, "n d_y"]) -> float:
    """The paper's similarity of two activation spaces: ||Y^T X||_F^2 / (||X||_F^2 ||Y||_F^2).

    Rows of ``x`` and ``y`` are the two models' activations on the same inputs.
    In [0, 1]; 1 when all rows of both are multiples of one vector each.
    """
    x, y = _paired(x, y)
    return float((y.T @ x).square().sum() / (x.square().sum() * y.square().sum()))


def linear_cka(x: Float[Tensor, "n d_x"], y: Float[Tensor, "n d_y"]) -> float:
    """Linear CKA (Kornblith et al., 2019) of two activation matrices on the same inputs.

    In [0, 1]; invariant to rotations and isotropic scaling of either space.

    Example:
        >>> x = torch.randn(100, 8)
        >>> round(linear_cka(x, 3 * x @ torch.linalg.qr(torch.randn(8, 8))[0]), 4)
        1.0
    """
    x, y = _paired(x, y)
    x, y = x - x.mean(0), y - y.mean(0)
    return float((y.T @ x).square().sum() / ((x.T @ x).norm() * (y.T @ y).norm()))


def dominant_dimensions(x: Float[Tensor, "n d"], top: int = 3) -> tuple[list[int], float]:
    """The ``top`` dimensions with the largest variance over rows, and their share of the total variance.

    A few outlier dimensions can carry most of a residual stream's variance;
    linear CKA and the paper's similarity then compare little else.

    Example:
        >>> x = torch.randn(200, 8)
        >>> x[:, 5] *= 100
        >>> dims, share = dominant_dimensions(x, top=1)
        >>> dims, share > 0.99
        ([5], True)
    """
    var = x.double().var(dim=0)
    order = var.argsort(descending=True)[:top]
    return order.tolist(), float(var[order].sum() / var.sum())


def drop_dimensions(x: Float[Tensor, "n d"], dims: Sequence[int]) -> Float[Tensor, "n d_kept"]:
    """``x`` without the columns ``dims`` (e.g. :func:`dominant_dimensions`), the others in order."""
    keep = torch.ones(x.shape[-1], dtype=torch.bool)
    keep[list(dims)] = False
    return x[..., keep]


def _paired(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise CommlibError(
            f"need two [n, d] matrices on the same n inputs; got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    return x.double(), y.double()


def similarity_table(acts: dict[str, Float[Tensor, "n d"]]) -> pd.DataFrame:
    """Both similarities for every ordered pair of named activation matrices (same inputs)."""
    names: Sequence[str] = list(acts)
    rows = [
        {
            "a": a,
            "b": b,
            "paper_similarity": paper_similarity(acts[a], acts[b]),
            "linear_cka": linear_cka(acts[a], acts[b]),
        }
        for a in names
        for b in names
    ]
    return pd.DataFrame(rows)
