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
# # Coordination games: the paper's Table 2 on the offline models
#
# A reads one prompt, B another; B must answer using what A knows. Methods:
# B alone (silent), one model given both prompts (skyline), a natural-language
# message (nl), and activation communication with f = sum, mean, replace at
# layers (k, j). Every method gives B the same prompt, ending with the same
# opening of its answer ("Alice is located in", "I invest in"), and decodes
# greedily. Accuracy = the answer appears in B's first answer line (for Tip
# Sheets, as the first of the three companies named), with 95% bootstrap
# intervals; per-item outputs are kept in `items.csv`.
#
# (k, j) and the message position are chosen per model and game by the
# selection sweeps of notebook 02 (seed 0, cached in `SWEEP_DIR`; run here if
# missing). The table is reported on seed 1: other names and landmarks.
#
# Runs are cached in `RUNS_DIR` and resume; re-running the notebook recomputes
# nothing that is done. Set `FAST = True` (the tests do) for a seconds-long run
# on a tiny random model.

# %% tags=["parameters"]
FAST = False
DEVICE = "cpu"  # cpu, cuda, cuda:N, or auto: a device map over every visible GPU
DTYPE = "float32"  # float32, bfloat16 or float16
MODELS = ["qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "gemma3-270m", "smollm2-135m"]
GAMES = ["countries", "tipsheets"]
METHODS = ["silent", "skyline", "nl", "ac-sum", "ac-mean", "ac-replace"]
N: int | None = None  # None: the paper's 100 / 70 items
SEED = 1  # seed 0 is kept for choosing layers
MAX_NEW_TOKENS = 12
RUNS_DIR = "../runs/games"
SWEEP_DIR = "../runs/sweep"
FIGURES_DIR = "../figures"

# %%
from commlib.plots import begin_notebook

FIGURES_DIR = begin_notebook(FAST, FIGURES_DIR)

# %%
import pandas as pd

from commlib.experiments import choose_layers, run_games
from commlib.models import load_model
from commlib.paper import TABLE2
from commlib.plots import method_bars, save_figure

if FAST:
    MODELS, N, METHODS = ["tiny-llama-random"], 3, ["silent", "skyline", "nl", "ac-replace"]

# %%
rows, outputs = [], {}
for name in MODELS:
    model = load_model(name, device=DEVICE, dtype=DTYPE)
    for game in GAMES:
        pick = choose_layers(model, game, sweep_root=SWEEP_DIR, n=2 if FAST else 6)
        k, j, pos = int(pick["k"]), int(pick["j"]), str(pick["position"])
        out_dir = f"{RUNS_DIR}/{name}/{game}/seed{SEED}_k{k}_j{j}_{pos}"
        res = run_games(
            game,
            model,
            model,
            METHODS,
            k=k,
            j=j,
            position=pos,
            n=N,
            seed=SEED,
            out_dir=out_dir,
            max_new_tokens=MAX_NEW_TOKENS,
        )
        outputs[name, game] = pd.read_csv(f"{out_dir}/items.csv")
        for method, r in res["methods"].items():
            rows.append(
                {
                    "model": name,
                    "game": game,
                    "method": method,
                    "k": k,
                    "j": j,
                    "position": pos,
                    "n": r["n"],
                    "accuracy": 100 * r["accuracy"],
                    "ci_low": 100 * r["ci_low"],
                    "ci_high": 100 * r["ci_high"],
                    "exact": 100 * r["exact_match"],
                }
            )
    del model
table = pd.DataFrame(rows)
table

# %% [markdown]
# ## Side by side with the paper (accuracy %; the paper's models are 2-50x larger)

# %%
paper = pd.DataFrame(
    [
        {"model": f"paper: {m}", "game": g, "method": meth, "accuracy": acc}
        for m, games in TABLE2.items()
        for g, methods in games.items()
        for meth, acc in methods.items()
    ]
)
wide = pd.concat([table[["model", "game", "method", "accuracy"]], paper]).pivot_table(
    index=["game", "model"], columns="method", values="accuracy"
)
wide[[m for m in ["silent", "skyline", "nl", "ac-sum", "ac-mean", "ac-replace"] if m in wide.columns]].round(
    1
)

# %%
fig = method_bars(table, panel="game")
save_figure(
    fig,
    "table2_coordination_games" + ("_fast" if FAST else ""),
    directory=FIGURES_DIR,
    config={
        "models": MODELS,
        "games": GAMES,
        "methods": METHODS,
        "n": N,
        "seed": SEED,
        "layers": table[["model", "game", "k", "j", "position"]].drop_duplicates().to_dict("records"),
        "notebook": "01_coordination_games",
    },
)

# %% [markdown]
# ## A few items per method

# %%
for (name, game), df in outputs.items():
    print(f"== {name} / {game}")
    print(df.groupby("method").head(2)[["item_id", "method", "answer", "output", "correct"]].to_string())
