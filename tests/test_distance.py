"""Distances from the receiver's manifold: calibration checks that could fail."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from commlib.backends import get_backend
from commlib.config import ReferenceSpec
from commlib.distance import (
    METRICS,
    Manifold,
    ReferenceSet,
    cache_corpus_activations,
    corpus_activations,
    dominant_dimensions,
    drop_dimensions,
    linear_cka,
    manifold_for,
    next_token_kl,
    paper_similarity,
    reference_activations,
)
from commlib.errors import CommlibError
from commlib.graft import GraftConfig, capture_sender, graft_edit
from commlib.models import Model
from commlib.prompts import Position, encode, message_positions

DIRECTIONAL = ("mahalanobis", "mahalanobis_pca", "knn_cosine")


def _split_three(model: Model, layer: int, n: int) -> tuple[Manifold, torch.Tensor]:
    """Fit on half, calibrate on a quarter, and return the last quarter as fresh own activations."""
    ref = reference_activations(model, layer, ReferenceSpec(n=n), held_out=0.5, cache=False)
    half = len(ref.held_out) // 2
    manifold = Manifold.fit(replace(ref, held_out=ref.held_out[:half]))
    return manifold, ref.held_out[half:]


@pytest.mark.integration
def test_own_activations_sit_mid_distribution_and_random_ones_far_out(smol: Model) -> None:
    manifold, fresh = _split_three(smol, 20, 800)
    own = manifold.percentiles(fresh)
    for m in METRICS:
        assert 35 <= float(own[m].mean()) <= 65, f"{m}: B's own unseen activations at {own[m].mean():.0f}"
    # isotropic directions at B's typical norm: right size, wrong place
    rand = torch.randn(64, fresh.shape[1], generator=torch.Generator().manual_seed(0))
    rand = rand / rand.norm(dim=-1, keepdim=True) * manifold.median_norm
    far = manifold.percentiles(rand)
    for m in DIRECTIONAL:
        assert float(far[m].median()) >= 95, f"{m}: random directions only at {far[m].median():.0f}"
    assert 0.9 < float(manifold.distances(rand)["norm_ratio"].median()) < 1.1


def test_sum_of_a_state_with_itself_doubles_the_norm_ratio(tiny: Model) -> None:
    manifold, fresh = _split_three(tiny, 2, 240)
    ratio = manifold.distances(fresh)["norm_ratio"]
    doubled = manifold.distances(fresh + fresh)["norm_ratio"]  # f = sum with A = B on the same prompt
    assert torch.allclose(doubled, 2 * ratio)
    assert 1.5 < float(doubled.median()) < 2.5


@pytest.mark.parametrize("f", ["replace", "sum"])
def test_identity_graft_has_zero_displacement_and_zero_kl_and_sum_does_not(tiny: Model, f: str) -> None:
    prompts = ["Which country is Alice located in?", "Pick one: red or blue?"]
    layer = 2
    backend = get_backend(tiny, "nnsight")
    b = capture_sender(backend, prompts, layer)  # B's own state at the message position
    batch = encode(tiny, prompts)
    edit = graft_edit(b, message_positions(tiny, prompts, batch), GraftConfig(k=layer, j=layer, f=f))
    kl = next_token_kl(backend.logits(batch, None)[:, -1], backend.logits(batch, edit)[:, -1])
    ref = reference_activations(tiny, layer, ReferenceSpec(n=120), cache=False)
    x = b if f == "replace" else b + b
    displacement = Manifold.fit(ref).distances(x, b)["displacement"]
    if f == "replace":
        assert float(kl.max()) < 1e-6 and float(displacement.max()) == 0.0
    else:
        assert float(kl.min()) > 1e-6 and torch.allclose(displacement, torch.ones(2))


def test_manifold_is_cached_and_reloads_identically(tiny: Model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COMMLIB_CACHE_DIR", str(tmp_path))
    first = manifold_for(tiny, 1, ReferenceSpec(n=100))
    assert list((tmp_path / "reference" / tiny.name).glob("*_manifold_*.safetensors"))
    again = manifold_for(tiny, 1, ReferenceSpec(n=100))
    x = torch.randn(5, tiny.info.d_model)
    for m, v in first.distances(x).items():
        assert torch.allclose(v, again.distances(x)[m]), m
    assert first.info == again.info


def test_all_layers_in_one_pass_equal_one_layer_at_a_time(tiny: Model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COMMLIB_CACHE_DIR", str(tmp_path))
    ref = ReferenceSpec(n=40)
    assert cache_corpus_activations(tiny, [0, 2], ref) == [0, 2]
    assert cache_corpus_activations(tiny, ref=ref) == [1, 3]  # only what is not cached yet
    assert cache_corpus_activations(tiny, ref=ref) == []
    for layer in range(tiny.info.n_layers):
        alone = corpus_activations(tiny, layer, ref, cache=False)
        assert torch.allclose(corpus_activations(tiny, layer, ref), alone, atol=1e-5), layer


def test_bad_states_get_clear_errors(tiny: Model) -> None:
    ref = ReferenceSet(torch.randn(50, 8), torch.randn(10, 8), "toy", 0, "random", 0)
    manifold = Manifold.fit(ref)
    with pytest.raises(CommlibError, match=r"\[n, 8\]"):
        manifold.distances(torch.randn(3, 9))
    with pytest.raises(CommlibError, match="NaN"):
        manifold.distances(torch.full((2, 8), float("nan")))


def test_activation_space_similarities() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    rotated = x @ torch.linalg.qr(torch.randn(16, 16, generator=g))[0]
    unrelated = torch.randn(200, 16, generator=g)
    assert linear_cka(x, rotated) == pytest.approx(1.0, abs=1e-6)
    assert linear_cka(x, unrelated) < 0.3
    assert paper_similarity(x, x) > 2 * paper_similarity(x, unrelated)
    assert 0 <= paper_similarity(x, unrelated) <= 1
    with pytest.raises(CommlibError, match="same n"):
        linear_cka(x, x[:10])


def test_an_outlier_dimension_hides_a_shared_space_from_cka_until_dropped() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=g)
    y = x @ torch.linalg.qr(torch.randn(16, 16, generator=g))[0]  # the same space, rotated
    outlier = torch.randn(300, 1, generator=g) * 200  # one dimension of huge variance that y lacks
    x_out = torch.cat([x[:, :7], outlier, x[:, 7:]], dim=1)
    dims, share = dominant_dimensions(x_out, top=1)
    assert dims == [7] and share > 0.95
    assert linear_cka(x_out, y) < 0.1
    assert torch.equal(drop_dimensions(x_out, dims), x)
    assert linear_cka(drop_dimensions(x_out, dims), y) == pytest.approx(1.0, abs=1e-6)


def _distance_args(game: str, out: object, *options: str) -> list[str]:
    """``commlib distance`` for tiny-llama-random with itself at k = j = 2."""
    return [
        "distance",
        "--game",
        game,
        "--sender",
        "tiny-llama-random",
        "--receiver",
        "tiny-llama-random",
        "--k",
        "2",
        "--j",
        "2",
        *options,
        "--out",
        str(out),
    ]


def test_distance_run_alpha_zero_is_b_itself_and_controls_sit_further_out(tmp_path, monkeypatch) -> None:
    import numpy as np
    import pandas as pd

    from commlib.cli import main

    monkeypatch.setenv("COMMLIB_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "dist"
    args = _distance_args(
        "countries",
        out,
        "--methods",
        "ac-sum,ac-replace",
        "--alphas",
        "0,1",
        "--n",
        "6",
        "--n-reference",
        "120",
        "--n-positions",
        "1,3",
    )
    assert main(args) == 0
    df = pd.read_csv(out / "distances.csv")
    assert len(df) == 6 * 4 * 2 * 2 * 2  # items x sources x f x alpha x n_positions
    three = df[(df["n_positions"] == 3) & (df["source"] == "a") & (df["f"] == "sum") & (df["alpha"] == 1)]
    one = df[(df["n_positions"] == 1) & (df["source"] == "a") & (df["f"] == "sum") & (df["alpha"] == 1)]
    assert not np.allclose(three["answer_logprob"], one["answer_logprob"])  # more positions, another answer
    assert set(df["source"]) == {"a", "random", "gaussian", "unrelated"}
    unchanged = df[df["alpha"] == 0]
    assert (unchanged["displacement"] == 0).all() and (unchanged["next_token_kl"] < 1e-6).all()
    assert unchanged["logprob_gain"].abs().max() < 1e-4  # writing b back is B alone
    moved = df[(df["alpha"] == 1) & (df["f"] == "sum")]
    assert (moved["next_token_kl"] > 0).all()
    assert moved["norm_ratio"].median() > unchanged["norm_ratio"].median()
    assert moved["logprob_gain"].abs().max() > 1e-3
    assert main([*args[:-2], "--seed", "1", "--out", str(out)]) == 2  # other settings, same dir: refused


def test_prompt_format_reference_reads_the_graft_position(tiny: Model) -> None:
    from commlib.corpora import load_sentences

    reply = "Alice is located in"
    acts = corpus_activations(
        tiny, 1, ReferenceSpec(n=6, formatted=True, position="last", reply=reply), cache=False
    )
    raw = corpus_activations(tiny, 1, ReferenceSpec(n=6), cache=False)
    sentences = load_sentences("lambada", n=6, seed=0)
    batch = encode(tiny, sentences[:1], replies=[reply])
    state = get_backend(tiny).capture(batch, 1)  # last token of the formatted prompt + reply
    assert torch.allclose(acts[0], state[0], atol=1e-5)
    assert not torch.allclose(acts, raw, atol=1e-3)


def test_corpus_rows_come_back_in_sentence_order_whatever_the_batching(tiny: Model) -> None:
    """capture_corpus batches sentences of similar length together; each row is still its own sentence's."""
    from commlib.graft import capture_corpus

    sentences = [
        "A much longer sentence, with many more words in it than the others.",
        "Short.",
        "Medium length words here.",
        "Hi.",
        "Another fairly long one, with commas, and clauses.",
    ]
    replies = ["", "It is", "", "Well,", ""]
    be = get_backend(tiny)
    for formatted in (False, True):
        rows = capture_corpus(tiny, sentences, [1], batch_size=2, formatted=formatted, reply=replies)[1]
        for i, sentence in enumerate(sentences):
            raw = encode(tiny, [sentence], raw=True)
            one = encode(tiny, [sentence], replies=[replies[i]]) if formatted else raw
            assert torch.allclose(rows[i], be.capture(one, 1)[0], atol=1e-5), (formatted, i)


@pytest.mark.parametrize("position", ["last", "content"])
def test_task_reference_reads_each_side_where_the_graft_does(tiny: Model, position: Position) -> None:
    from commlib.graft import capture_span
    from commlib.tasks.games import reference_prompts

    ref = ReferenceSpec(corpus="task:tipsheets", n=6, formatted=True, position=position)
    acts = corpus_activations(tiny, 1, ref, cache=False)
    prompts, replies = reference_prompts("tipsheets", 6)
    assert replies[0] == "" and replies[1] == "I invest in"  # A's side as the graft reads A, then B's
    be = get_backend(tiny)
    sender = capture_span(be, prompts[:1], 1, position, 1)[:, 0]
    receiver = capture_span(be, prompts[1:2], 1, position, 1, replies=replies[1:2])[:, 0]
    assert torch.allclose(acts[0], sender[0], atol=1e-5)
    assert torch.allclose(acts[1], receiver[0], atol=1e-5)
    with pytest.raises(CommlibError, match="formatted=True"):
        corpus_activations(tiny, 1, replace(ref, formatted=False), cache=False)


def test_task_reference_never_draws_an_evaluated_item_and_keeps_prompts_once() -> None:
    from commlib.tasks.games import load_game, reference_prompts

    prompts, _ = reference_prompts("tipsheets", 400)
    assert len(prompts) == len(set(prompts)) == 400
    evaluated = {it.sender for seed in range(3) for it in load_game("tipsheets", seed=seed)}
    assert not evaluated & set(prompts)
    few, _ = reference_prompts("countries", 10**6)  # Countries has 112 landmarks x 26 names at most
    assert len(few) == len(set(few)) < 112 * 27


def test_task_reference_puts_a_state_of_b_on_a_prompt_on_its_manifold(tmp_path, monkeypatch) -> None:
    """replace with A = B and k = j writes B's own state on A's prompt: typical on the task reference."""
    import pandas as pd

    from commlib.cli import main

    monkeypatch.setenv("COMMLIB_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "dist"
    args = _distance_args(
        "tipsheets",
        out,
        "--methods",
        "ac-replace",
        "--controls",
        "random",
        "--n",
        "12",
        "--n-reference",
        "400",
        "--reference",
        "task",
    )
    assert main(args) == 0
    df = pd.read_csv(out / "distances.csv").set_index("source")
    for metric in ("mahalanobis_pct", "knn_euclidean_pct"):
        assert df.loc["a", metric].median() < 90, metric
        assert df.loc["random", metric].median() > 95, metric


def test_a_distance_run_cut_short_resumes_to_the_table_of_one_uninterrupted_run(
    tiny: Model, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    from commlib.experiments import distance as distance_mod
    from commlib.experiments import run_distance

    monkeypatch.setenv("COMMLIB_CACHE_DIR", str(tmp_path / "cache"))
    kw = {
        "k": 2,
        "j": 2,
        "fs": ("sum",),
        "controls": ("random",),
        "n": 3,
        "n_reference": 120,
        "progress": False,
    }
    real, calls = distance_mod.ReceiverItem, {"n": 0}

    def crash_on_second_item(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(distance_mod, "ReceiverItem", crash_on_second_item)
    with pytest.raises(RuntimeError):
        run_distance("countries", tiny, tiny, out_dir=tmp_path / "cut", **kw)
    assert len(pd.read_csv(tmp_path / "cut" / "distances.csv")) == 2  # the first item's two sources
    monkeypatch.setattr(distance_mod, "ReceiverItem", real)
    resumed = run_distance("countries", tiny, tiny, out_dir=tmp_path / "cut", **kw)
    whole = run_distance("countries", tiny, tiny, out_dir=tmp_path / "whole", **kw)
    assert len(whole) == 3 * 2 and list(resumed.columns) == list(whole.columns)
    pd.testing.assert_frame_equal(
        resumed, whole, rtol=1e-4
    )  # the first rows used the manifold before caching

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished item was scored again")

    monkeypatch.setattr(distance_mod, "ReceiverItem", refuse)
    pd.testing.assert_frame_equal(
        run_distance("countries", tiny, tiny, out_dir=tmp_path / "whole", **kw), whole
    )


def _old_key(corpus: str, layer: int, n: int, seed: int, formatted: bool, position: str, reply: str) -> str:
    """The cache key as the seven loose arguments named it before ReferenceSpec, written out here."""
    import hashlib

    key = f"{corpus}_L{layer}_n{n}_seed{seed}"
    if formatted:
        key += f"_fmt-{position}-{hashlib.sha1(reply.encode()).hexdigest()[:8]}"
    return key


@pytest.mark.parametrize(
    "old",
    [
        {"corpus": "lambada", "n": 3072, "seed": 0, "formatted": False, "position": "last", "reply": ""},
        {"corpus": "c4", "n": 40, "seed": 3, "formatted": False, "position": "content", "reply": "x"},
        {"corpus": "lambada", "n": 300, "seed": 1, "formatted": True, "position": "last", "reply": "It is"},
        {
            "corpus": "task:countries",
            "n": 300,
            "seed": 0,
            "formatted": True,
            "position": "content",
            "reply": "",
        },
    ],
)
def test_a_reference_spec_keeps_the_cache_key_of_the_old_arguments(
    old: dict, tiny: Model, tmp_path, monkeypatch
) -> None:
    """Caches written before ReferenceSpec keep hitting: same key, same file, for every layer."""
    from safetensors.torch import save_file

    from commlib.distance import _key

    ref = ReferenceSpec(**old)
    for layer in (0, 1, 2):
        assert _key(ref, layer) == _old_key(layer=layer, **old)
    monkeypatch.setenv("COMMLIB_CACHE_DIR", str(tmp_path))
    path = tmp_path / "reference" / tiny.name / f"{_old_key(layer=1, **old)}.safetensors"
    path.parent.mkdir(parents=True)
    planted = torch.randn(7, tiny.info.d_model)
    save_file({"activations": planted}, str(path))
    assert torch.equal(corpus_activations(tiny, 1, ref), planted)  # read from the old file, not captured
