# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Which layers carry the message: the full (k, j) sweep (paper Figure 2)
#
# For each game and model (A = B), every sender layer k and receiver layer j,
# f = replace at the last prompt position. The fast engine runs A once per
# item, B's prompt prefix once, and one pass per j batched over all k.
# Axes are relative depth so that models of different depth compare. Layers
# are chosen here on seed 0; notebook 01 reports on seed 1.

# %% tags=["parameters"]
FAST = False
MODELS = ["qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"]
GAMES = ["countries", "tipsheets"]
F = "replace"
N = 20
STEP = 1  # every STEP-th layer on both axes
SEED = 0
RUNS_DIR = "../runs/sweep"
FIGURES_DIR = "../figures"

# %%
import pandas as pd

from commlib.experiments import run_sweep
from commlib.models import load_model
from commlib.plots import save_figure, sweep_heatmap

if FAST:
    MODELS, N, STEP = ["tiny-llama-random"], 2, 2

# %%
best = []
for name in MODELS:
    model = load_model(name)
    layers = list(range(0, model.info.n_layers, STEP))
    for game in GAMES:
        df = run_sweep(game, model, model, out_dir=f"{RUNS_DIR}/{name}/{game}/{F}_seed{SEED}_n{N}_step{STEP}",
                       ks=layers, js=layers, f=F, n=N, seed=SEED, max_new_tokens=4 if FAST else 8)
        for value in ("correct", "answer_logprob"):
            fig = sweep_heatmap(df, n_layers_sender=model.info.n_layers, n_layers_receiver=model.info.n_layers,
                                value=value, title=f"{game}: {name}, f={F}, n={N}")
            save_figure(fig, f"sweep_{game}_{name}_{value}" + ("_fast" if FAST else ""), directory=FIGURES_DIR,
                        config={"model": name, "game": game, "f": F, "n": N, "seed": SEED, "step": STEP})
        cell = df.groupby(["k", "j"]).agg(accuracy=("correct", "mean"), logprob=("answer_logprob", "mean"))
        top = cell.sort_values(["accuracy", "logprob"], ascending=False).head(1).reset_index()
        best.append({"model": name, "game": game, **top.iloc[0].to_dict()})
    del model

# %% [markdown]
# Best (k, j) per model and game on this split (ties broken by the answer's log-probability):

# %%
pd.DataFrame(best)
