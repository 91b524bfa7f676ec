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
# # Compute: analytic FLOPs, measured time, and accuracy per unit of compute
#
# The paper counts forward-pass FLOPs (Hoffmann et al.): NL costs A's message
# and B's reading of it, AC one partial pass of A. `commlib.compute` counts
# the same for models of different shapes (grouped KV heads, gated MLPs) and
# the token counts of each item of a run (prompt, message, answer), with the
# KV cache that commlib decodes with. Here, per method on the same items:
# analytic FLOPs next to the measured wall time on this CPU (both relative
# to AC), the paper's Figure 3 (accuracy against compute in forward passes of
# the smaller model), and the GPU timing of the paper-scale random-weight
# LLaMA pair (`benchmarks/gpu_method_timing.py`, H100, bf16, fixed lengths)
# next to its analytic ratios.
#
# The runs are those of notebook 05 (same directories, resumed; cached
# items are not run again). Wall time on this machine is noisy: other jobs
# share its two cores, so the per-method means are indicative only.

# %% tags=["parameters"]
FAST = False
DEVICE = "cpu"  # cpu, cuda, cuda:N, or auto: a device map over every visible GPU
DTYPE = "float32"  # float32, bfloat16 or float16
PAIR = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
TASKS = ["gsm8k", "biographies"]
METHODS = ["single-a", "single-b", "nld", "ac-replace", "ac-w-replace"]
N = 100
SEED = 0
MAX_NEW_TOKENS = 256
JUDGE = "qwen2.5-coder-1.5b"
LAYER_GAME = "countries"
N_MAP = 3072
GPU_RESULTS = "../benchmarks/results"
RUNS_DIR = "../runs/reasoning"
SWEEP_DIR = "../runs/sweep"
FIGURES_DIR = "../figures"

# %%
from commlib.plots import begin_notebook

FIGURES_DIR = begin_notebook(FAST, FIGURES_DIR)

# %%
import json
from pathlib import Path

import pandas as pd

from commlib.experiments import SELECTION_N, reasoning_dir, run_pair_reasoning
from commlib.models import load_model
from commlib.plots import compute_accuracy, save_figure
from commlib.results import Run

if FAST:
    PAIR, JUDGE = ("tiny-llama-random", "tiny-llama-wide-random"), "tiny-llama-random"
    TASKS, N, MAX_NEW_TOKENS, N_MAP = ["gsm8k"], 2, 4, 64
suffix = "_fast" if FAST else ""
sender, receiver = (
    load_model(PAIR[0], device=DEVICE, dtype=DTYPE),
    load_model(PAIR[1], device=DEVICE, dtype=DTYPE),
)
judge = receiver if JUDGE == PAIR[1] else load_model(JUDGE, device=DEVICE, dtype=DTYPE)

# %%
table = pd.concat(
    [
        run_pair_reasoning(
            task,
            sender,
            receiver,
            METHODS,
            runs_root=RUNS_DIR,
            sweep_root=SWEEP_DIR,
            game=LAYER_GAME,
            n=N,
            seed=SEED,
            n_map=N_MAP,
            selection_n=2 if FAST else SELECTION_N,
            max_new_tokens=MAX_NEW_TOKENS,
            judge=judge,
            progress=False,
        )
        for task in TASKS
    ],
    ignore_index=True,
)
print(f"{PAIR[0]} -> {PAIR[1]}, n = {N}, seed {SEED}, (k, j) = {tuple(table[['k', 'j']].iloc[0])}")

# %% [markdown]
# ## Analytic FLOPs against measured wall time, relative to AC

# %%
ac = table[table["method"] == "ac-replace"].set_index("task")
ratios = table.assign(
    gflops=table["flops"] / 1e9,
    flops_vs_ac=table["flops"] / table["task"].map(ac["flops"]),
    seconds_vs_ac=table["seconds"] / table["task"].map(ac["seconds"]),
    seconds_per_tflop=table["seconds"] / (table["flops"] / 1e12),
)
ratios[
    [
        "task",
        "method",
        "gflops",
        "flops_vs_one_pass",
        "generated_tokens",
        "seconds",
        "flops_vs_ac",
        "seconds_vs_ac",
        "seconds_per_tflop",
    ]
].round(2)

# %% [markdown]
# Per item: does wall time follow the analytic count within a method? (Spearman
# correlation over items; the per-item FLOPs vary with the prompt and the
# number of tokens generated.)

# %%
runs = {task: reasoning_dir(RUNS_DIR, task, *PAIR, seed=SEED, n=N) for task in TASKS}
items = pd.concat([Run(path, None).frame().assign(task=task) for task, path in runs.items()])
items = items[items["method"].isin(METHODS)]
spearman = items.groupby(["task", "method"])[["flops", "seconds"]].corr(method="spearman")
spearman.xs("flops", level=2)["seconds"].round(2)

# %% [markdown]
# ## Figure 3 analog: accuracy against compute

# %%
points = table.assign(
    accuracy=100 * table["accuracy"], ci_low=100 * table["ci_low"], ci_high=100 * table["ci_high"]
)
fig = compute_accuracy(points, panel="task", title=f"{PAIR[0]} -> {PAIR[1]}, n = {N}")
save_figure(
    fig,
    f"reasoning_compute{suffix}",
    directory=FIGURES_DIR,
    config={
        "pair": PAIR,
        "tasks": TASKS,
        "methods": METHODS,
        "n": N,
        "seed": SEED,
        "judge": JUDGE,
        "notebook": "06_compute",
    },
)

# %% [markdown]
# ## GPU: paper-scale shapes, measured time against the analytic ratio
#
# Random-weight LLaMA-3.2-3B (A) and LLaMA-3.1-8B (B) shapes, bf16, one H100;
# each method end to end as commlib runs it at fixed prompt, message and
# answer lengths (`python benchmarks/gpu_method_timing.py`). `flops_vs_ac` is
# commlib's count (KV cache), `paper_flops_vs_ac` the paper's (every token a
# full pass).

# %%
gpu = []
for path in sorted(Path(GPU_RESULTS).glob("gpu_method_timing_*.json")):
    run = json.loads(path.read_text())
    gpu += [{"file": path.name, "device": run["device"], **run["lengths"], **row} for row in run["rows"]]
gpu = pd.DataFrame(gpu)
gpu[
    [
        "file",
        "prompt_a",
        "message",
        "answer",
        "method",
        "seconds",
        "time_vs_ac",
        "flops_vs_ac",
        "paper_flops_vs_ac",
    ]
].round(2)
