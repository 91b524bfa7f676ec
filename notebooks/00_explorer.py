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
# # Explorer: move the layers, watch the receiver
#
# Pick a sender A and a receiver B, a game item (or type both prompts), then
# move k (A's layer), j (B's layer), f and alpha. B's answer under the graft
# sits next to B alone (silent) and B given both prompts (skyline), with B's
# top next tokens before and after, and the grafted state's distance from B's
# own activations at layer j as a percentile (50: typical for B; 100: further
# out than all of B's own held-out states). The first distance at a new j fits
# B's reference there once (cached on disk); after that a slider move reruns
# only B's positions from the message position on.
#
# Any notebook can open the same UI in one line: `commlib.widgets.explore("smollm2-135m")`.
# Serve this notebook alone with `voila notebooks/00_explorer.ipynb`.

# %% tags=["parameters"]
FAST = False
DEVICE = "cpu"  # cpu, cuda, cuda:N, or auto: a device map over every visible GPU
DTYPE = "float32"  # float32, bfloat16 or float16
SENDER = "smollm2-135m"
RECEIVER = "smollm2-135m"
TASK = "countries"  # countries, tipsheets, or "free text"
K = None  # None: two thirds of the depth
J = None
N_REFERENCE = 512  # corpus sentences per reference layer; 0 turns the distance off
MAX_NEW_TOKENS = 12

# %%
from commlib.plots import begin_notebook

begin_notebook(FAST)

# %%
from commlib.widgets import explore

if FAST:
    SENDER = RECEIVER = "tiny-llama-random"
    N_REFERENCE, MAX_NEW_TOKENS = 120, 4

ui = explore(
    SENDER,
    RECEIVER,
    task=TASK,
    k=K,
    j=J,
    n_reference=N_REFERENCE,
    max_new_tokens=MAX_NEW_TOKENS,
    device=DEVICE,
    dtype=DTYPE,
)
ui
