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
# # Does a message get through? Every channel against its content control
#
# commlib's two questions, answered on one bench (`commlib thesis`,
# `commlib.experiments.thesis`):
#
# 1. **Does a latent channel carry A's message to B?** Every channel runs
#    twice per test item, in the same format: carrying A's message about the
#    item (*own*), and carrying A's message about another test item with
#    another answer (*control*, a derangement fixed by the seed). Only the
#    paired difference own - control is communication; own - B alone also
#    counts any fixed steering effect of the channel.
# 2. **Does how far a channel moves B decide whether it works zero-shot?**
#    One distance axis for every channel, measured on B at the answer
#    position: the KL of B's next-token distribution against B alone, and
#    the displacement of the state B's unembedding reads there, in units of
#    B's own item-to-item spread.
#
# Selection (AC's (k, j), chosen by gain over the control; the Interlat
# adapter's training) uses a pool of landmarks no test item shares. AC also
# runs at the paper's depth (0.8 of both models) whatever selection says.
# The prompts are the same for every channel. `RUN = False` reads the
# committed per-item results under `RESULTS_DIR` (no model runs);
# `RUN = True` runs (resumable per item) into `RUNS_DIR` and publishes there.

# %% tags=["parameters"]
FAST = False
DEVICE = "cpu"  # cpu, cuda, cuda:N, or auto: a device map over every visible GPU
DTYPE = "float32"  # float32, bfloat16 or float16
PAIRS = [  # A -> B; only the Qwen pair can play Countries (B alone ~2%, skyline ~84%)
    ("qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b"),
    ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"),
]
GAME = "countries"
CHANNELS = None  # None: commlib thesis's defaults
N = 200  # test items
SEED = 0
DEPTH_ITEMS = 16  # selection items AC's depth is chosen on
GRID = 6  # blocks per axis searched
RUN = False  # False: read RESULTS_DIR; True: run into RUNS_DIR (several CPU hours per pair)
RUNS_DIR = "../runs"
RESULTS_DIR = "../results/thesis"
FIGURES_DIR = "../figures"

# %%
from commlib.plots import begin_notebook

FIGURES_DIR = begin_notebook(FAST, FIGURES_DIR)

# %%
from pathlib import Path

import ipywidgets as widgets
import pandas as pd
from IPython.display import display

from commlib.experiments.thesis import DEFAULT_CHANNELS, run_thesis
from commlib.experiments.thesis_results import pair_name, publish_thesis, read_thesis
from commlib.models import load_model
from commlib.plots import save_figure
from commlib.plots_thesis import thesis_figure

suffix = "_fast" if FAST else ""
channels = list(CHANNELS or DEFAULT_CHANNELS)
options = {"n": N, "seed": SEED, "depth_items": DEPTH_ITEMS, "grid": GRID}
if FAST:
    PAIRS, RUN = [("tiny-llama-random", "tiny-llama-random")], True
    RESULTS_DIR = str(Path(RUNS_DIR) / "thesis-results")  # never the committed results
    options = {"n": 6, "seed": SEED, "n_selection": 6, "depth_items": 4, "grid": 2, "map_sentences": 32,
               "message_tokens": 3, "max_new_tokens": 2}  # fmt: skip

# %% [markdown]
# ## Run (or read) each pair

# %%
summaries = []
for sender_name, receiver_name in PAIRS:
    name = pair_name(sender_name, receiver_name)
    if RUN:
        sender, receiver = (
            load_model(sender_name, device=DEVICE, dtype=DTYPE),
            load_model(receiver_name, device=DEVICE, dtype=DTYPE),
        )
        out = Path(RUNS_DIR) / f"thesis-{GAME}" / name
        run_thesis(GAME, sender, receiver, channels, out_dir=out, **options)
        publish_thesis(out, Path(RESULTS_DIR) / GAME / name)
    where = Path(RESULTS_DIR) / GAME / name
    if (where / "items.csv").exists():
        summaries.append(read_thesis(where).assign(pair=f"{sender_name} -> {receiver_name}"))
    else:
        print(f"no results for {sender_name} -> {receiver_name} in {where}: set RUN = True")
summary = pd.concat(summaries, ignore_index=True)
columns = ["n", "accuracy", "control_accuracy", "vs_control", "vs_control_low", "vs_control_high", "vs_silent",
           "vs_silent_low", "vs_silent_high", "follows_donor", "kl_median", "displacement_median"]  # fmt: skip
summary.set_index(["pair", "channel"])[columns].round(3)

# %% [markdown]
# ## Gain over the control against distance on B
#
# Every channel, both pairs: own - control with its 95% interval, against
# the median KL at the answer position (bars: quartiles over items). A
# channel on the dashed line carries nothing of A's message, however far it
# moves B.


# %%
def n_range(g: pd.DataFrame) -> str:
    low, high = int(g["n"].min()), int(g["n"].max())
    return f"n = {high}" if low == high else f"n = {low} to {high}"


n_items = ", ".join(f"{p}: {n_range(g)}" for p, g in summary.groupby("pair", sort=False))
for distance in ("kl", "displacement"):
    fig = thesis_figure(summary, distance=distance, title=f"{GAME}, seed {SEED} ({n_items})")
    save_figure(
        fig,
        f"thesis_gain_vs_{distance}_{GAME}{suffix}",
        directory=FIGURES_DIR,
        config={"pairs": PAIRS, "game": GAME, "seed": SEED, "results": RESULTS_DIR,
                "notebook": "10_does_a_message_get_through"},
    )  # fmt: skip
fig

# %% [markdown]
# ## What B said, item by item
#
# Pick a pair and a channel: each test item with B's answer carrying its own
# message and carrying the donor's, and whether it gave the donor's answer.

# %%
rows = {
    pair: pd.read_csv(
        Path(RESULTS_DIR) / GAME / pair_name(*p) / "items.csv", dtype=str, keep_default_na=False
    )
    for p in PAIRS
    if (Path(RESULTS_DIR) / GAME / pair_name(*p) / "items.csv").exists()
    for pair in [f"{p[0]} -> {p[1]}"]
}


def show(pair: str, channel: str) -> None:
    df = rows[pair].assign(channel=lambda d: d["method"] + d["depth"].map(lambda x: f"@{x}" if x else ""))
    wide = df[df["channel"] == channel].pivot(index="item_id", columns="message", values="output")
    facts = df[df["channel"] == channel].groupby("item_id")[["answer", "donor_answer", "follows_donor"]].max()
    display(facts.join(wide).head(40))


channel_names = list(dict.fromkeys(summary["channel"]))
widgets.interact(
    show, pair=widgets.Dropdown(options=list(rows)), channel=widgets.Dropdown(options=channel_names)
)
