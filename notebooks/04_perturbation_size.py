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
# # Perturbation size: how far off B's manifold, and what it does to the answer
#
# For each model pair, the state written into B is `b + alpha (f(s, b) - b)`
# with s = A's message or a control (a random direction or a
# covariance-matched Gaussian at the norm of A's state, or A's state for
# another item), for alpha from 0 (B alone) to 2, with and without rescaling
# to |b|. For every configuration: its distance from B's own activations (a
# percentile, 50 = typical for B) and the change in the answer's
# log-probability (teacher-forced, after the shared reply opening) and in
# greedy accuracy, against B alone on the same items.
#
# The headline figure puts every configuration on one axis: answer
# log-probability gain against distance percentile. If distance decides,
# the points fall on one curve whatever their source; if the message
# matters, A's points sit above the controls at the same distance.
# A second figure adds the number of grafted positions n (A's last n states
# onto B's last n, aligned from the end; the distance of a row is the mean
# over its n states).

# %% tags=["parameters"]
FAST = False
PAIRS = [["smollm2-135m", "smollm2-135m"], ["qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b"],
         ["smollm2-135m", "gemma3-270m"]]
GAME = "countries"
N = 40
N_REFERENCE = 3072
DEPTH = 0.67
ALPHAS = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]
FS = ["sum", "mean", "replace"]
N_POSITIONS = [1, 2, 4, 8]
METRIC = "mahalanobis_pct"
SEED = 0
RUNS_DIR = "../runs/perturbation"
FIGURES_DIR = "../figures"

# %%
import pandas as pd

from commlib.experiments import run_distance
from commlib.models import load_model
from commlib.plots import gain_vs_distance, save_figure
from commlib.results import summarise

if FAST:
    PAIRS, N, N_REFERENCE, ALPHAS = [["tiny-llama-random", "tiny-llama-wide-random"]], 4, 120, [0.0, 1.0, 2.0]
    N_POSITIONS = [1, 2]
suffix = "_fast" if FAST else ""

# %%
frames = []
for a_name, b_name in PAIRS:
    sender = load_model(a_name)
    receiver = sender if b_name == a_name else load_model(b_name)
    k = round(DEPTH * (sender.info.n_layers - 1))
    j = round(DEPTH * (receiver.info.n_layers - 1))
    n_tag = "" if N_POSITIONS == [1] else "_pos" + "-".join(map(str, N_POSITIONS))
    df = run_distance(GAME, sender, receiver, k=k, j=j, fs=FS, alphas=ALPHAS, match_norm=[False, True], n=N,
                      seed=SEED, n_reference=N_REFERENCE, n_positions=N_POSITIONS,
                      out_dir=f"{RUNS_DIR}/{a_name}__{b_name}/{GAME}/k{k}_j{j}_seed{SEED}_n{N}{n_tag}")
    frames.append(df.assign(pair=f"{a_name} -> {b_name}", k=k, j=j))
    del sender, receiver
results = pd.concat(frames, ignore_index=True)
results["config"] = results["source"] + ", " + results["f"] + (results["match_norm"].map({True: ", |b|", False: ""}))

# %% [markdown]
# ## Distance and answer against alpha (A's message; rows: pairs)

# %%
by = ["pair", "n_positions", "source", "f", "match_norm", "alpha"]
gain = summarise(results, by, "logprob_gain")
acc = summarise(results.assign(acc=results["greedy_answer"].astype(float)), by, "acc")
dist = results.groupby(by, sort=False)[[METRIC, "norm_ratio", "next_token_kl"]].median().reset_index()
table = gain.merge(dist, on=by).merge(acc[[*by, "mean"]].rename(columns={"mean": "accuracy"}), on=by)
table[(table["source"] == "a") & (table["n_positions"] == 1)].round(3)

# %% [markdown]
# ## The headline figure: answer log-prob gain against distance from B's manifold

# %%
points = table[table["n_positions"] == 1].rename(columns={METRIC: "distance"})
points["source"] = points["source"] + points["match_norm"].map({True: " |b|", False: ""})
fig = gain_vs_distance(points, x="distance", panel="pair",
                       title=f"{GAME}, n={N}, alpha in {ALPHAS}; x: {METRIC}")
save_figure(fig, "perturbation_gain_vs_distance" + suffix, directory=FIGURES_DIR,
            config={"pairs": PAIRS, "game": GAME, "n": N, "alphas": ALPHAS, "fs": FS, "metric": METRIC,
                    "depth": DEPTH, "seed": SEED, "notebook": "04_perturbation_size"})

# %% [markdown]
# ## Does distance predict the effect, whatever the source? (Spearman, per pair)

# %%
spearman = points.groupby("pair")[["distance", "mean"]].corr(method="spearman").xs("distance", level=1)["mean"]
spearman.rename("spearman(distance, mean log-prob gain)").to_frame()

# %% [markdown]
# ## How many positions: A's last n states onto B's last n (A's message, no norm control)
#
# n = 1 is the paper's graft; larger n moves more of B's prompt towards A's
# states. Each point is one (f, alpha, n); the distance is the mean over the
# n grafted states.

# %%
by_n = table[(table["source"] == "a") & ~table["match_norm"]].rename(columns={METRIC: "distance"})
fig = gain_vs_distance(by_n, x="distance", panel="pair", marker="n_positions",
                       title=f"{GAME}, n={N}, A's message; marker: grafted positions")
save_figure(fig, "perturbation_positions" + suffix, directory=FIGURES_DIR,
            config={"pairs": PAIRS, "game": GAME, "n": N, "alphas": ALPHAS, "fs": FS, "metric": METRIC,
                    "n_positions": N_POSITIONS, "depth": DEPTH, "seed": SEED, "notebook": "04_perturbation_size"})
by_n[by_n["alpha"] == 1.0][["pair", "f", "n_positions", "distance", "mean", "ci_low", "ci_high", "accuracy"]].round(3)
