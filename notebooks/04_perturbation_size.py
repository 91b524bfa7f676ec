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
# over its n states), on the first pair.
#
# The reference is B's own states at the graft's position on the game's own
# prompts, both sides (items no evaluation draws): B's states on its game
# prompts lie beyond every general-text state (100th percentile against
# LAMBADA), so a corpus reference cannot rank what the graft writes there.
# With A = B and k = j, replace writes B's own state on A's prompt: a
# member of this reference's distribution.

# %% tags=["parameters"]
FAST = False
DEVICE = "cpu"  # cpu, cuda, cuda:N, or auto: a device map over every visible GPU
DTYPE = "float32"  # float32, bfloat16 or float16
PAIRS = [["smollm2-135m", "smollm2-135m"], ["smollm2-135m", "gemma3-270m"]]  # same model; across families
# (["qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b"] adds a third pair: about an hour more on a 2-core CPU)
GAME = "countries"
N = 40
N_REFERENCE = 3072
DEPTH = 0.67
ALPHAS = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]
FS = ["sum", "mean", "replace"]
N_POSITIONS = [1, 2, 4, 8]
METRIC = "mahalanobis_pct"
REFERENCE = "task"  # or "corpus" (LAMBADA final tokens), "prompt" (LAMBADA in B's prompt format)
SEED = 0
RUNS_DIR = "../runs/perturbation"
FIGURES_DIR = "../figures"

# %%
from commlib.plots import begin_notebook

FIGURES_DIR = begin_notebook(FAST, FIGURES_DIR)

# %%
import pandas as pd

from commlib.experiments import run_distance
from commlib.graft import layer_at_depth
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
    sender = load_model(a_name, device=DEVICE, dtype=DTYPE)
    receiver = sender if b_name == a_name else load_model(b_name, device=DEVICE, dtype=DTYPE)
    k, j = (layer_at_depth(DEPTH, m.info.n_layers) for m in (sender, receiver))  # same depth
    run_dir = f"{RUNS_DIR}/{a_name}__{b_name}/{GAME}/k{k}_j{j}_seed{SEED}_n{N}_{REFERENCE}"
    df = run_distance(
        GAME,
        sender,
        receiver,
        k=k,
        j=j,
        fs=FS,
        alphas=ALPHAS,
        match_norm=[False, True],
        n=N,
        seed=SEED,
        n_reference=N_REFERENCE,
        reference=REFERENCE,
        out_dir=run_dir,
    )
    frames.append(df.assign(pair=f"{a_name} -> {b_name}", k=k, j=j))
    if (a_name, b_name) == tuple(PAIRS[0]):  # the positions sweep: A's message and an unrelated item's
        by_positions = run_distance(
            GAME,
            sender,
            receiver,
            k=k,
            j=j,
            fs=FS,
            alphas=[1.0],
            n=N,
            seed=SEED,
            controls=["unrelated"],
            n_positions=N_POSITIONS,
            n_reference=N_REFERENCE,
            reference=REFERENCE,
            out_dir=f"{run_dir}_positions",
        )
        by_positions = by_positions.assign(pair=f"{a_name} -> {b_name}", k=k, j=j)
    del sender, receiver
results = pd.concat(frames, ignore_index=True)
results["config"] = (
    results["source"] + ", " + results["f"] + (results["match_norm"].map({True: ", |b|", False: ""}))
)

# %% [markdown]
# ## Distance and answer against alpha (A's message; rows: pairs)

# %%
by = ["pair", "n_positions", "source", "f", "match_norm", "alpha"]
gain = summarise(results, by, "logprob_gain")
acc = summarise(results.assign(acc=results["greedy_answer"].astype(float)), by, "acc")
dist = results.groupby(by, sort=False)[[METRIC, "norm_ratio", "next_token_kl"]].median().reset_index()
table = gain.merge(dist, on=by).merge(acc[[*by, "mean"]].rename(columns={"mean": "accuracy"}), on=by)
table[table["source"] == "a"].round(3)

# %% [markdown]
# ## The headline figure: answer log-prob gain against distance from B's manifold

# %%
points = table.rename(columns={METRIC: "distance"})
points["source"] = points["source"] + points["match_norm"].map({True: " |b|", False: ""})
fig = gain_vs_distance(
    points,
    x="distance",
    panel="pair",
    title=f"{GAME}, n={N}, alpha in {ALPHAS}; x: {METRIC} ({REFERENCE} reference)",
)
save_figure(
    fig,
    "perturbation_gain_vs_distance" + suffix,
    directory=FIGURES_DIR,
    config={
        "pairs": PAIRS,
        "game": GAME,
        "n": N,
        "alphas": ALPHAS,
        "fs": FS,
        "metric": METRIC,
        "reference": REFERENCE,
        "n_reference": N_REFERENCE,
        "depth": DEPTH,
        "seed": SEED,
        "notebook": "04_perturbation_size",
    },
)

# %% [markdown]
# ## Does distance predict the effect, whatever the source? (Spearman, per pair)

# %%
spearman = (
    points.groupby("pair")[["distance", "mean"]].corr(method="spearman").xs("distance", level=1)["mean"]
)
spearman.rename("spearman(distance, mean log-prob gain)").to_frame()

# %% [markdown]
# ## How many positions: A's last n states onto B's last n (first pair, alpha = 1, no norm control)
#
# n = 1 is the paper's graft; larger n moves more of B's prompt towards A's
# states. Each point is one (source, f, n); the distance is the mean over the
# n grafted states. An unrelated item's states are the control.

# %%
by_n = (
    summarise(by_positions, ["pair", "source", "f", "n_positions"], "logprob_gain")
    .merge(
        by_positions.groupby(["source", "f", "n_positions"])[METRIC].median().reset_index(),
        on=["source", "f", "n_positions"],
    )
    .rename(columns={METRIC: "distance"})
)
fig = gain_vs_distance(
    by_n,
    x="distance",
    panel="source",
    marker="n_positions",
    title=f"{PAIRS[0][0]} -> {PAIRS[0][1]}, {GAME}, n={N}, alpha = 1; panels: source",
)
save_figure(
    fig,
    "perturbation_positions" + suffix,
    directory=FIGURES_DIR,
    config={
        "pair": PAIRS[0],
        "game": GAME,
        "n": N,
        "fs": FS,
        "metric": METRIC,
        "reference": REFERENCE,
        "n_positions": N_POSITIONS,
        "depth": DEPTH,
        "seed": SEED,
        "notebook": "04_perturbation_size",
    },
)
by_n.round(3)
