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
# # Which layers carry the message: the (k, j) sweep (paper Figure 2)
#
# For each game and model (A = B), sender layers k and receiver layers j on a
# grid, f = replace, at both message positions: the last prompt token (with
# the reply opening "Alice is located in", the token that predicts the answer)
# and the last token of the user's text. The fast engine runs A once per item,
# B's prompt prefix once, and one pass per j batched over all k; it scores
# the answer by teacher-forced log-probability and by whether greedy decoding
# starts with it (exact, no generation needed).
#
# These are the selection sweeps: seed 0, a few items, about ten layers per
# axis. Notebook 01 takes the best (k, j, position) from them and reports on
# seed 1. Axes are relative depth so that models of different depth compare.

# %% tags=["parameters"]
FAST = False
DEVICE = "cpu"  # cpu, cuda, cuda:N, or auto: a device map over every visible GPU
DTYPE = "float32"  # float32, bfloat16 or float16
MODELS = ["qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "gemma3-270m", "smollm2-135m"]
GAMES = ["countries", "tipsheets"]
POSITIONS = ["last", "content"]
F = "replace"
N = 6
FULL_MODELS = [
    "qwen2.5-coder-0.5b",
    "qwen2.5-coder-1.5b",
]  # every (k, j), section 3 (Qwen-1.5B: hours on a CPU)
SEED = 0
RUNS_DIR = "../runs/sweep"
FIGURES_DIR = "../figures"

# %%
from commlib.plots import begin_notebook

FIGURES_DIR = begin_notebook(FAST, FIGURES_DIR)

# %%
import pandas as pd

from commlib.experiments import best_layers, grid_summary, run_sweep, selection_step, sweep_dir
from commlib.models import load_model
from commlib.plots import save_figure, sweep_panels

if FAST:
    MODELS, FULL_MODELS, N = ["tiny-llama-random"], ["tiny-llama-random"], 2

# %%
tables: dict[tuple[str, str, str], pd.DataFrame] = {}
depth = {}
for name in MODELS:
    model = load_model(name, device=DEVICE, dtype=DTYPE)
    depth[name] = model.info.n_layers
    step = selection_step(model)
    layers = list(range(0, model.info.n_layers, step))
    for game in GAMES:
        for pos in POSITIONS:
            out = sweep_dir(RUNS_DIR, name, game, f=F, position=pos, seed=SEED, n=N, step=step)
            tables[name, game, pos] = run_sweep(
                game,
                model,
                model,
                out_dir=out,
                ks=layers,
                js=layers,
                f=F,
                n=N,
                seed=SEED,
                max_new_tokens=0,
                position=pos,
            )
    del model

# %% [markdown]
# ## Heatmaps: answer log-probability gain over B alone, and greedy accuracy
#
# One figure per model: rows are games, columns position x score.

# %%
for name in MODELS:
    fig = sweep_panels(
        {(g, p): tables[name, g, p] for g in GAMES for p in POSITIONS},
        n_layers=depth[name],
        title=f"{name} -> {name}, f={F}, n={N} items (seed {SEED})",
    )
    save_figure(
        fig,
        f"sweep_{name}" + ("_fast" if FAST else ""),
        directory=FIGURES_DIR,
        config={
            "model": name,
            "games": GAMES,
            "positions": POSITIONS,
            "f": F,
            "n": N,
            "seed": SEED,
            "notebook": "02_layer_sweep",
        },
    )

# %% [markdown]
# ## The chosen cell per model and game
#
# Greedy accuracy first, ties broken by the mean log-probability gain; both
# positions compete. `silent` is B alone on the same items.

# %%
chosen = []
for name in MODELS:
    for game in GAMES:
        df = pd.concat([tables[name, game, p] for p in POSITIONS], ignore_index=True)
        top = best_layers(df)
        silent = df.groupby("item_id")["silent_greedy_answer"].first().mean()
        chosen.append(
            {
                "model": name,
                "game": game,
                "k": int(top["k"]),
                "j": int(top["j"]),
                "position": top["position"],
                "k/depth": round(top["k"] / depth[name], 2),
                "j/depth": round(top["j"] / depth[name], 2),
                "accuracy": top["accuracy"],
                "silent": silent,
                "logprob_gain": round(top["logprob_gain"], 2),
                "n": int(top["n"]),
            }
        )
pd.DataFrame(chosen)

# %% [markdown]
# ## Every layer: the full (k, j) grid
#
# The same sweep with every sender and receiver block (the selection grids
# above take about every tenth), same items, both games and positions; it
# resumes item by item. One figure per model, `figures/sweep_full_<model>`.

# %%
grids = []
for name in FULL_MODELS:
    model = load_model(name, device=DEVICE, dtype=DTYPE)
    layers = list(range(model.info.n_layers))
    full = {}
    for game in GAMES:
        for pos in POSITIONS:
            out = sweep_dir(RUNS_DIR, name, game, f=F, position=pos, seed=SEED, n=N, step=1)
            full[game, pos] = run_sweep(
                game,
                model,
                model,
                out_dir=out,
                ks=layers,
                js=layers,
                f=F,
                n=N,
                seed=SEED,
                max_new_tokens=0,
                position=pos,
            )
    fig = sweep_panels(
        full, n_layers=len(layers), title=f"{name} -> {name}, every layer, f={F}, n={N} items (seed {SEED})"
    )
    save_figure(
        fig,
        f"sweep_full_{name}" + ("_fast" if FAST else ""),
        directory=FIGURES_DIR,
        config={
            "model": name,
            "games": GAMES,
            "positions": POSITIONS,
            "f": F,
            "n": N,
            "seed": SEED,
            "layers": "all",
            "notebook": "02_layer_sweep",
        },
    )
    grids += [{"model": name, "game": g, "position": p, **grid_summary(df)} for (g, p), df in full.items()]
    del model

# %% [markdown]
# Per grid: the mean log-prob gain over its cells and the range of cell
# means (nats), B alone's greedy accuracy on these items, and how many cells
# beat it.

# %%
pd.DataFrame(grids).round(2)
