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
# # Where to graft for a reasoning task: AC against its control at each depth
#
# Notebook 05 grafts at the (k, j) that B's own coordination-game sweep
# picks. For both Qwen receivers that is k = 0: A's state at the prompt's
# last token, a chat-template token one block into the model, which
# carries almost nothing of the question. There, AC's control
# `ac-replace-unrelated` (A reads one fixed question unrelated to the item, in the
# same format) scores as `ac-replace` does: a fixed steering vector, not a message.
#
# Here A and B are grafted at one relative depth (k = j, the paper's choice,
# k mapped to A's depth by `commlib.graft.map_layer`), for each of B's
# `BLOCKS`, on `N_CHOOSE` items (`commlib.experiments.run_reasoning_depths`).
# `vs_control` is AC minus the control, paired over items: what A's reading
# of the item adds. `vs_b` is AC minus B alone. `next_token_kl` is how far
# AC's graft moves B's first answer token (median over items). Then the
# depth with AC's largest lead over its control, chosen on those items,
# runs on `N` items and is reported on the ones it was not chosen on.
# Every prompt is Du et al.'s, the same for every method; B decodes
# greedily. Single answers are shared with notebook 05 (`RUNS_DIR/answers`).

# %% tags=["parameters"]
FAST = False
DEVICE = "cpu"  # cpu, cuda, cuda:N, or auto: a device map over every visible GPU
DTYPE = "float32"  # float32, bfloat16 or float16
PAIR = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")  # A -> B
TASKS = ["mmlu:high_school_psychology"]
BLOCKS = [0, 7, 14, 20, 23, 27]  # B's blocks (Qwen-1.5B has 28; the paper's k = j = 26 of 32 is 23)
N_CHOOSE = 20  # items the depth is chosen on
N = 100  # items the chosen depth runs on; reported on those not among the N_CHOOSE
SEED = 0
MAX_NEW_TOKENS = 256
BATCH_SIZE = 8
N_REFERENCE = 256  # other items of the task: B's own states the graft is measured against
DISTANCE = (
    True  # the graft's KL and Mahalanobis percentile per depth (forward passes of B on N_REFERENCE items)
)
RUNS_DIR = "../runs/reasoning"
FIGURES_DIR = "../figures"

# %%
from commlib.plots import begin_notebook

FIGURES_DIR = begin_notebook(FAST, FIGURES_DIR)

# %%
import pandas as pd

from commlib.experiments import run_reasoning_depths
from commlib.models import load_model
from commlib.plots import accuracy_vs_depth, save_figure
from commlib.tasks.reasoning import load_task

if FAST:
    PAIR, TASKS, BLOCKS = ("tiny-llama-random", "tiny-llama-wide-random"), ["gsm8k"], [0, 2]
    N_CHOOSE, N, MAX_NEW_TOKENS, N_REFERENCE = 2, 3, 4, 16
suffix = "_fast" if FAST else ""
sender, receiver = (load_model(name, device=DEVICE, dtype=DTYPE) for name in PAIR)
options = {
    "runs_root": RUNS_DIR,
    "seed": SEED,
    "progress": False,
    "max_new_tokens": MAX_NEW_TOKENS,
    "batch_size": BATCH_SIZE,
}

# %% [markdown]
# ## AC and its control at each depth

# %%
depths = pd.concat(
    [
        run_reasoning_depths(
            task, sender, receiver, BLOCKS, n=N_CHOOSE, distance=DISTANCE, n_reference=N_REFERENCE, **options
        ).assign(task=task)
        for task in TASKS
    ],
    ignore_index=True,
)
for task, by_task in depths.groupby("task", sort=False):
    fig = accuracy_vs_depth(by_task, title=f"{PAIR[0]} -> {PAIR[1]}, {task}, n = {N_CHOOSE}, seed {SEED}")
    save_figure(
        fig,
        f"reasoning_depth_{task.replace(':', '_')}{suffix}",
        directory=FIGURES_DIR,
        config={
            "pair": list(PAIR),
            "task": task,
            "blocks": BLOCKS,
            "n": N_CHOOSE,
            "seed": SEED,
            "notebook": "09_where_to_graft",
        },
    )
ac_rows = depths[depths["method"] == "ac-replace"].set_index(["task", "block", "k"])
graft = [c for c in ("next_token_kl", "mahalanobis_pct") if c in ac_rows]
(
    depths.pivot(index=["task", "block", "k"], columns="method", values="accuracy")
    .mul(100)
    .join(ac_rows[["vs_control", "vs_control_low", "vs_control_high"]].mul(100))
    .join(ac_rows[graft])
    .round(1)
)

# %% [markdown]
# ## The chosen depth on items it was not chosen on

# %%
chosen = []
for task, by_task in depths.groupby("task", sort=False):
    ac = by_task[by_task["method"] == "ac-replace"]
    block = int(ac.loc[ac["vs_control"].idxmax(), "block"])
    chosen_on = [item.id for item in load_task(task, n=N_CHOOSE, seed=SEED)]
    chosen.append(
        run_reasoning_depths(
            task, sender, receiver, [block], n=N, distance=False, exclude=chosen_on, **options
        ).assign(task=task)
    )
chosen = pd.concat(chosen, ignore_index=True)
print(
    f"{PAIR[0]} -> {PAIR[1]}, seed {SEED}: each task's block on its items of {N} not among the {N_CHOOSE} "
    "it was chosen on; vs_*: paired over items"
)
columns = [
    "accuracy",
    "ci_low",
    "ci_high",
    "vs_b",
    "vs_b_low",
    "vs_b_high",
    "vs_control",
    "vs_control_low",
    "vs_control_high",
]
chosen.set_index(["task", "block", "k", "n", "method"])[columns].mul(100).round(1)
