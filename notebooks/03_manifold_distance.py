# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # How far does a grafted state sit from the receiver's own activations?
#
# For each receiver B and layer j: B's own final-token activations on LAMBADA
# sentences (a quarter held out) define the reference. Every distance is also
# a percentile against B's held-out activations, so metrics of different scale
# share one axis: 50 is typical for B, 100 is further out than all of B's own.
#
# 1. Calibration: B's own states on the game prompts, random directions and
#    covariance-matched Gaussians at B's typical norm.
# 2. The states activation communication writes (A = B, f = sum, mean,
#    replace) next to the controls (random, Gaussian, A's state for another
#    item), at the layers notebook 01 uses.
# 3. How alike the activation spaces of the offline models are (the paper's
#    similarity and linear CKA, same sentences, layer at 2/3 depth).

# %% tags=["parameters"]
FAST = False
DEVICE = "cpu"  # cpu, cuda, cuda:N, or auto: a device map over every visible GPU
DTYPE = "float32"  # float32, bfloat16 or float16
MODELS = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
GAME = "countries"
N = 50  # game items
N_REFERENCE = 3072  # LAMBADA sentences per reference
N_SIMILARITY = 512  # sentences for the similarity of activation spaces
DEPTH = 0.67  # layer as a fraction of depth (k = j)
SEED = 0
RUNS_DIR = "../runs/distance"
FIGURES_DIR = "../figures"

# %%
from commlib.plots import begin_notebook

FIGURES_DIR = begin_notebook(FAST, FIGURES_DIR)

# %%
import pandas as pd
import torch

from commlib.backends import get_backend
from commlib.config import ReferenceSpec
from commlib.distance import (
    METRICS,
    corpus_activations,
    covariance_matched,
    dominant_dimensions,
    drop_dimensions,
    manifold_for,
    random_directions,
    similarity_table,
)
from commlib.experiments import run_distance
from commlib.graft import capture_message, layer_at_depth
from commlib.models import load_model
from commlib.plots import pair_heatmap, percentile_boxes, save_figure
from commlib.tasks.games import load_game

if FAST:
    MODELS, N, N_REFERENCE, N_SIMILARITY = ["tiny-llama-random", "tiny-llama-wide-random"], 4, 120, 48
suffix = "_fast" if FAST else ""


def layer_at(model) -> int:
    return layer_at_depth(DEPTH, model.info.n_layers)


# %% [markdown]
# ## 1. Calibration

# %%
rows = []
g = torch.Generator().manual_seed(SEED)
items = load_game(GAME, n=N, seed=SEED)
for name in MODELS:
    model = load_model(name, device=DEVICE, dtype=DTYPE)
    j = layer_at(model)
    manifold = manifold_for(model, j, ReferenceSpec(n=N_REFERENCE, seed=SEED))
    own_task = capture_message(
        get_backend(model), [it.receiver for it in items], j, replies=[it.reply for it in items]
    )
    for source, x in {
        "B on game prompts": own_task,
        "random direction": random_directions(torch.full((N, 1), manifold.median_norm), own_task.shape[1], g),
        "Gaussian (B's cov.)": covariance_matched(manifold.reference, N, g),
    }.items():
        pct = manifold.percentiles(x)
        rows += [
            {"model": name, "source": source, "metric": m, "percentile": float(v)}
            for m in METRICS
            for v in pct[m]
        ]
calibration = pd.DataFrame(rows)
calibration.groupby(["model", "source", "metric"])["percentile"].median().unstack("metric").round(0)

# %%
fig = percentile_boxes(
    calibration,
    y="percentile",
    x="metric",
    hue="source",
    title=f"calibration, layer at {DEPTH:.2f} depth, {len(MODELS)} models pooled",
)
fig.axes[0].tick_params(axis="x", rotation=30)
save_figure(
    fig,
    "manifold_calibration" + suffix,
    directory=FIGURES_DIR,
    config={
        "models": MODELS,
        "n": N,
        "n_reference": N_REFERENCE,
        "depth": DEPTH,
        "seed": SEED,
        "notebook": "03_manifold_distance",
    },
)

# %% [markdown]
# ## 2. Grafted states and controls (A = B)

# %%
frames = []
for name in MODELS:
    model = load_model(name, device=DEVICE, dtype=DTYPE)
    layer = layer_at(model)
    df = run_distance(
        GAME,
        model,
        model,
        k=layer,
        j=layer,
        n=N,
        seed=SEED,
        n_reference=N_REFERENCE,
        out_dir=f"{RUNS_DIR}/{name}/{GAME}/k{layer}_j{layer}_seed{SEED}_n{N}",
    )
    frames.append(df.assign(model=name))
grafted = pd.concat(frames, ignore_index=True)
grafted.groupby(["model", "source", "f"])[
    ["norm_ratio", "mahalanobis_pct", "knn_cosine_pct", "next_token_kl"]
].median().round(2)

# %%
for metric in ("mahalanobis_pct", "knn_cosine_pct"):
    fig = percentile_boxes(
        grafted,
        y=metric,
        x="source",
        hue="f",
        title=f"{GAME}, A = B, k = j at {DEPTH:.2f} depth, {len(MODELS)} models pooled",
    )
    save_figure(
        fig,
        f"grafted_{metric}" + suffix,
        directory=FIGURES_DIR,
        config={
            "models": MODELS,
            "game": GAME,
            "n": N,
            "n_reference": N_REFERENCE,
            "depth": DEPTH,
            "seed": SEED,
            "notebook": "03_manifold_distance",
        },
    )

# %% [markdown]
# ## 3. Similarity of activation spaces across the offline models

# %%
acts = {}
for name in MODELS:
    model = load_model(name, device=DEVICE, dtype=DTYPE)
    acts[name] = corpus_activations(model, layer_at(model), ReferenceSpec(n=N_SIMILARITY, seed=SEED + 1))
similarity = similarity_table(acts)
similarity.pivot(index="a", columns="b", values="linear_cka").round(2)

# %%
for value in ("paper_similarity", "linear_cka"):
    fig = pair_heatmap(similarity, value=value, title=f"{N_SIMILARITY} LAMBADA sentences, {DEPTH:.2f} depth")
    save_figure(
        fig,
        f"similarity_{value}" + suffix,
        directory=FIGURES_DIR,
        config={
            "models": MODELS,
            "n": N_SIMILARITY,
            "depth": DEPTH,
            "seed": SEED + 1,
            "notebook": "03_manifold_distance",
        },
    )

# %% [markdown]
# Outlier dimensions: the share of each model's variance over the sentences
# that its three largest-variance dimensions carry, and linear CKA again
# without them. A space whose variance sits in a few dimensions looks unlike
# every other space to linear CKA, whatever the rest of it holds.

# %%
dominant = {name: dominant_dimensions(x, top=3) for name, x in acts.items()}
print(
    pd.DataFrame(
        {
            name: {"dimensions": dims, "variance share": round(share, 3)}
            for name, (dims, share) in dominant.items()
        }
    ).T
)
trimmed = similarity_table({name: drop_dimensions(x, dominant[name][0]) for name, x in acts.items()})
pd.concat(
    {
        "all dimensions": similarity.pivot(index="a", columns="b", values="linear_cka"),
        "top 3 dropped": trimmed.pivot(index="a", columns="b", values="linear_cka"),
    },
    axis=1,
).round(2)
