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
# # The sweep over n: how much uncollapsed state B gets
#
# One game, one pair (sharing a tokenizer, for CIPHER). Each method sends n
# units of A's state uncollapsed and the rest as text (or, for AC, not at
# all); `commlib.protocols.series` says exactly what n is for each:
#
# * AC (`ac-replace`): A's states after block k at its last n prompt
#   positions replace B's last n after block j, aligned from the end. n = 0 is
#   B alone, n = 1 the games method, `all` every position both prompts have.
# * CIPHER (`cipher`, T = 1): A's first n message steps as expected
#   embeddings p @ E; after step n A feeds back its argmax token (greedy), and
#   B reads those tokens as text. n = 0 is A's greedy message read as tokens,
#   `all` is CIPHER.
# * Interlat (`interlat`, `interlat-norm` zero-shot; `interlat-trained` with
#   the adapter of notebook 07): B reads A's last-layer states of its first n
#   steps, then the rest of A's message as text, the mixture the adapter's
#   curriculum trains on. n = 0 is the text message (for the adapter between
#   its learned boundaries), `all` the method.
#
# For each n: accuracy with a 95% bootstrap interval, and how far what B
# receives sits from B's own states (percentile against B's held-out own
# states: the grafted states against B's own states after block j at the
# message position on the game's prompts, items no evaluation draws (the task
# reference of notebook 04), the latent vectors against B's input embeddings
# of LAMBADA tokens; n = 0
# injects nothing and has no distance). Analytic FLOPs and wall times are in
# the table. AC layers: the seed-0 selection sweep's choice (notebook 02);
# items: seed 1; the adapter: notebook 07's (items of seed 1000, cached).

# %% tags=["parameters"]
FAST = False
DEVICE = "cpu"  # cpu, cuda, cuda:N, or auto: a device map over every visible GPU
DTYPE = "float32"  # float32, bfloat16 or float16
GAME = "countries"
SENDER = "smollm2-135m"
RECEIVER = "smollm2-135m"  # must share the sender's tokenizer (CIPHER) and width (zero-shot Interlat)
METHODS = ["ac-replace", "cipher", "interlat", "interlat-norm", "interlat-trained"]
NS = [0, 1, 2, 4, 8, 16, "all"]
N: int | None = 40
SEED = 1
MAX_NEW_TOKENS = 12
MESSAGE_TOKENS = 48  # also the adapter's, as in notebook 07
N_REFERENCE = 3072
N_TRAIN, STEPS = 100, 300  # the adapter of notebook 07 (items of seed 1000)
KS = [1, 2, 4, 8, 16]  # compression: K vectors in place of the whole trajectory
COMPRESS_STEPS = 300
DISTANCE = "mahalanobis_pct"
RUNS_DIR = "../runs/latent"
SWEEP_DIR = "../runs/sweep"
FIGURES_DIR = "../figures"

# %%
from commlib.plots import begin_notebook

FIGURES_DIR = begin_notebook(FAST, FIGURES_DIR)

# %%
import pandas as pd

from commlib.channels.interlat import train_adapter
from commlib.experiments import choose_layers, n_sweep_table, run_compression, run_n_sweep
from commlib.models import load_model
from commlib.plots import save_figure
from commlib.plots_sweep_n import accuracy_distance_vs_n, accuracy_vs_distance, compression_vs_k

if FAST:
    SENDER = RECEIVER = "tiny-llama-random"
    N, NS, N_TRAIN, STEPS, N_REFERENCE, MESSAGE_TOKENS, MAX_NEW_TOKENS = 2, [0, 1, "all"], 2, 4, 300, 4, 3
    KS, COMPRESS_STEPS = [1, 2], 3
suffix = "_fast" if FAST else ""
sender = load_model(SENDER, device=DEVICE, dtype=DTYPE)
receiver = sender if RECEIVER == SENDER else load_model(RECEIVER, device=DEVICE, dtype=DTYPE)

# %% [markdown]
# ## The adapter (notebook 07's directory; trained here if missing, resumes) and the AC layers

# %%
adapter_dir = f"{RUNS_DIR}/{SENDER}__{RECEIVER}/{GAME}/adapter_n{N_TRAIN}"
if "interlat-trained" in METHODS:
    train_adapter(
        sender, receiver, GAME, adapter_dir, n_train=N_TRAIN, steps=STEPS, message_tokens=MESSAGE_TOKENS
    )
pick = choose_layers(receiver, GAME, sweep_root=SWEEP_DIR, n=2 if FAST else 6) if SENDER == RECEIVER else None
k, j, pos = (None, None, "last") if pick is None else (int(pick["k"]), int(pick["j"]), str(pick["position"]))
methods = [m for m in METHODS if k is not None or not m.startswith("ac-")]
print(f"AC layers (k, j, position): {(k, j, pos)}; methods: {methods}")

# %% [markdown]
# ## The sweep (per item and method A's message is computed once; cached per row, resumes)

# %%
out_dir = f"{RUNS_DIR}/{SENDER}__{RECEIVER}/{GAME}/sweep_n_seed{SEED}_n{N}"
res = run_n_sweep(
    GAME,
    sender,
    receiver,
    methods,
    NS,
    out_dir=out_dir,
    k=k,
    j=j,
    position=pos,
    n=N,
    seed=SEED,
    adapter=adapter_dir if "interlat-trained" in methods else None,
    message_tokens=MESSAGE_TOKENS,
    max_new_tokens=MAX_NEW_TOKENS,
    n_reference=N_REFERENCE,
)
table = n_sweep_table(res)
cols = [
    "method",
    "n",
    "n_sent",
    "accuracy",
    "ci_low",
    "ci_high",
    f"median_{DISTANCE}",
    "median_norm_ratio",
    "flops",
    "seconds",
    "sender_seconds",
]
table[cols].round(3)

# %%
fig = accuracy_distance_vs_n(
    table, distance=DISTANCE, title=f"{GAME}: {SENDER} -> {RECEIVER}, n={N} items, seed {SEED}"
)
save_figure(
    fig,
    f"sweep_over_n_{SENDER}_{GAME}{suffix}",
    directory=FIGURES_DIR,
    config={
        "sender": SENDER,
        "receiver": RECEIVER,
        "game": GAME,
        "n": N,
        "seed": SEED,
        "ns": NS,
        "methods": methods,
        "ac_layers": [k, j, pos],
        "adapter": res["config"]["adapter"],
        "message_tokens": MESSAGE_TOKENS,
        "distance": DISTANCE,
        "notebook": "08_sweep_over_n",
    },
)

# %% [markdown]
# ## Accuracy against distance: every method and n on one axis
#
# Notebook 04's headline axis (distance percentile against B's own held-out
# states, 50 = typical), with every (method, n) that injects something as
# one point, labelled with its n; here the effect is greedy accuracy rather
# than log p(answer), and each method is measured against the reference of
# the space it writes into (see above).

# %%
fig = accuracy_vs_distance(
    table, distance=DISTANCE, title=f"{GAME}: {SENDER} -> {RECEIVER}, n={N} items, seed {SEED}"
)
save_figure(
    fig,
    f"sweep_over_n_distance_{SENDER}_{GAME}{suffix}",
    directory=FIGURES_DIR,
    config={
        "sender": SENDER,
        "receiver": RECEIVER,
        "game": GAME,
        "n": N,
        "seed": SEED,
        "ns": NS,
        "methods": methods,
        "distance": DISTANCE,
        "notebook": "08_sweep_over_n",
    },
)

# %% [markdown]
# ## One item across n: A's message as sent, and B's answer

# %%
items = pd.read_csv(f"{out_dir}/items.csv", dtype={"item_id": str, "n": str})
first = items["item_id"].iloc[0]
items[items["item_id"] == first][["method", "n", "n_sent", "message", "output", "correct"]]

# %% [markdown]
# ## Compression: K learned vectors in place of the whole trajectory
#
# Interlat's compression on the same items: for each K a compressor (K
# learned queries cross-attending to the adapted trajectory) is trained on
# the adapter's own training items, B and the adapter frozen, so that B's
# answer distribution reading the K vectors matches reading the whole
# adapted trajectory (`commlib train-adapter --compress K`). B then answers
# reading the K vectors; `gain` is the paired difference from the whole
# trajectory on the same items. Compressors are cached per K and resume.

# %%
from IPython.display import display

if "interlat-trained" in METHODS:
    compression = run_compression(
        GAME,
        sender,
        receiver,
        adapter_dir,
        KS,
        out_dir=f"{adapter_dir}/compression",
        n=N,
        seed=SEED,
        steps=COMPRESS_STEPS,
        max_new_tokens=MAX_NEW_TOKENS,
        n_reference=N_REFERENCE,
    )
    fig = compression_vs_k(compression, title=f"{GAME}: {SENDER} -> {RECEIVER}, n={N} items, seed {SEED}")
    save_figure(
        fig,
        f"compression_over_k_{SENDER}_{GAME}{suffix}",
        directory=FIGURES_DIR,
        config={
            "sender": SENDER,
            "receiver": RECEIVER,
            "game": GAME,
            "n": N,
            "seed": SEED,
            "ks": KS,
            "steps": COMPRESS_STEPS,
            "adapter": adapter_dir,
            "notebook": "08_sweep_over_n",
        },
    )
    display(compression.round(3))
