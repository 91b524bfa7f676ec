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
# # Reasoning benchmarks: one model alone, debate, and activation communication
#
# The paper's Section 4.2 on the offline models: Table 3 (one pair on
# Biographies, GSM8k and five MMLU subjects), Table 4 (every ordered pair of
# the offline families on Biographies and GSM8k), the appendix ablations
# (chain of thought on A before the graft, Table 6; two instances of one model
# with A sampled, Table 8; debate of 1 to 4 rounds, Table 9) and Figure 11
# (AC's gain against the similarity of the pair's activation spaces). Where
# to graft for a reasoning task, with AC's control at each depth, is
# notebook 09.
#
# Every method reads Du et al.'s prompts; B decodes greedily. AC replaces B's
# last-prompt-token state at block j by A's at block k, with (k, j) chosen on
# B's own Countries sweep (A = B, last position, seed 0; notebook 02) and k
# moved to A's depth by relative depth (`commlib.graft.map_layer`). AC(W)
# uses the task-agnostic W fitted on LAMBADA sentences. `ac-replace-unrelated` is
# AC's control: A reads one fixed question unrelated to the item (same
# format), so where it scores as AC does, what A read did not matter.
# Biographies are scored
# by a judge model per ground-truth fact (Du et al.'s prompt; uncertain
# dropped), GSM8k and MMLU by the extracted answer. Intervals: 95% bootstrap
# over items. Each run is a directory under `RUNS_DIR` that resumes item by
# item; the first real run takes days on this CPU. A debate's first round
# is A and B alone (same prompt and decoding): a run that has `single-a` and
# `single-b` takes them as that round instead of generating it again.
# The paper's models are 10 to 50 times larger: compare directions, not
# levels.

# %% tags=["parameters"]
FAST = False
DEVICE = "cpu"  # cpu, cuda, cuda:N, or auto: a device map over every visible GPU
DTYPE = "float32"  # float32, bfloat16 or float16
PAIR = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")  # Table 3: one tokenizer, 896 -> 1536 wide
# Table 3's tasks ([]: no Table 3, e.g. to draw Figure 11 alone)
TASKS = [
    "biographies",
    "gsm8k",
    "mmlu:high_school_psychology",
    "mmlu:formal_logic",
    "mmlu:college_biology",
    "mmlu:professional_law",
    "mmlu:public_relations",
]
# ac-replace-unrelated: AC's control
METHODS = ["single-a", "single-b", "nld", "ac-replace", "ac-w-replace", "ac-replace-unrelated"]
IN_DISTRIBUTION_TASKS = ["gsm8k"]  # AC(W) with W fitted on other items of the task
ABLATION_TASKS = ["gsm8k"]  # CoT on A (Table 6), debate rounds (Table 9) on the Table 3 pair; Table 8
ABLATIONS = ["ac-replace-cot", "nld-r1", "nld-r2", "nld-r3", "nld-r4"]
MODELS = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]  # Table 4: ordered pairs
PAIRS = []  # Table 4 pairs as "A -> B"; empty: every ordered pair of MODELS
CROSS_TASKS = ["biographies", "gsm8k"]
CROSS_METHODS = ["single-a", "single-b", "nld", "ac-replace"]  # Figure 11 needs only the first two and AC
SAME_MODEL = "qwen2.5-coder-1.5b"  # Table 8: A and B two instances of it, A sampled
A_TEMPERATURE = 0.7
N = 100
SEED = 0
MAX_NEW_TOKENS = 256
BATCH_SIZE = 8  # items decoded at once by single-*, ac-replace, ac-w-replace (same greedy answers, faster)
JUDGE = "qwen2.5-coder-1.5b"
N_JUDGE_CHECK = 10  # people whose true biography the judge reads against own and next facts
N_CONTROL = 10  # people whose biographies are also judged against the next person's facts
LAYER_GAME = "countries"
N_MAP = 3072  # LAMBADA sentences for W
N_MAP_TASK = 512  # other GSM8k test items for the in-distribution W
N_SIMILARITY = 512  # LAMBADA sentences for the similarity of activation spaces
N_REFERENCE = 256  # other items of the task: B's own states that AC's grafted state is measured against
RUNS_DIR = "../runs/reasoning"
SWEEP_DIR = "../runs/sweep"
FIGURES_DIR = "../figures"

# %%
from commlib.plots import begin_notebook

FIGURES_DIR = begin_notebook(FAST, FIGURES_DIR)

# %%
import functools
from pathlib import Path

import pandas as pd
from IPython.display import display

from commlib.config import ReferenceSpec
from commlib.distance import corpus_activations, paper_similarity
from commlib.errors import CommlibError
from commlib.experiments import (
    SELECTION_N,
    biographies_against_control,
    judge_control,
    reasoning_dir,
    run_pair_reasoning,
    run_reasoning_distance,
)
from commlib.models import load_model
from commlib.paper import TABLE3, TABLE4
from commlib.plots import gain_vs_similarity, save_figure
from commlib.results import paired_difference
from commlib.tasks.biographies import article_path
from commlib.tasks.reasoning import load_task

if FAST:
    PAIR = ("tiny-llama-random", "tiny-llama-wide-random")
    MODELS, SAME_MODEL, JUDGE = list(PAIR), "tiny-llama-random", "tiny-llama-random"
    TASKS, CROSS_TASKS = ["biographies", "gsm8k"], ["biographies", "gsm8k"]
    (N, MAX_NEW_TOKENS, N_MAP, N_MAP_TASK, N_SIMILARITY, N_REFERENCE, N_JUDGE_CHECK, N_CONTROL) = (
        2,
        4,
        64,
        16,
        64,
        16,
        2,
        2,
    )
    try:
        article_path()
    except CommlibError as exc:  # a clean clone has no ../shared: the fast run goes on without Biographies
        print(f"Biographies left out: {exc}")
        TASKS = CROSS_TASKS = ["gsm8k"]
suffix = "_fast" if FAST else ""
cross = "_".join(task.replace(":", "_") for task in CROSS_TASKS)  # in the names of Figure 11's files
load = functools.cache(functools.partial(load_model, device=DEVICE, dtype=DTYPE))
judge = load(JUDGE)


def run(sender: str, receiver: str, task: str, methods: list[str], n_map: int = N_MAP, **options):
    """One resumable run (layers from B's own sweep, W cached): its results table."""
    return run_pair_reasoning(
        task,
        load(sender),
        load(receiver),
        methods,
        runs_root=RUNS_DIR,
        sweep_root=SWEEP_DIR,
        game=LAYER_GAME,
        n=N,
        seed=SEED,
        n_map=n_map,
        selection_n=2 if FAST else SELECTION_N,
        progress=False,
        max_new_tokens=MAX_NEW_TOKENS,
        judge=judge,
        batch_size=BATCH_SIZE,
        **options,
    )


# %% [markdown]
# ## Does the Biographies judge read the biography?
#
# Before any Biographies score: the judge reads the ground truth itself,
# each of `N_JUDGE_CHECK` people's facts written as a bullet biography,
# against the person's own facts (every fact is in it word for word: a
# reading judge says yes) and, under the next person's name, against that
# person's facts (a reading judge says no). `gap` is own minus other, paired
# by biography; `p_yes` the judge's first-token p(yes) / (p(yes) + p(no)).
# No model's biography enters, so the check is the judge's alone.

# %%
if "biographies" in TASKS and N_JUDGE_CHECK:
    people = load_task("biographies", n=N, seed=SEED)
    check_dir = Path(RUNS_DIR) / "judge_checks" / f"seed{SEED}_n{N}{suffix}"
    check_dir.mkdir(parents=True, exist_ok=True)
    checks = {
        facts_of: judge_control(
            check_dir, people, judge, method="truth", facts_of=facts_of, n=N_JUDGE_CHECK, progress=False
        ).set_index("item_id")
        for facts_of in ("own", "next")
    }
    gap = paired_difference(checks["own"]["score"], checks["next"]["score"], seed=SEED)
    display(
        pd.DataFrame(
            {
                f"{facts_of} facts": {
                    "yes": c["yes"].sum(),
                    "no": c["no"].sum(),
                    "uncertain": c["uncertain"].sum() + c["unparsed"].sum(),
                    "score": c["score"].mean(),
                    "p_yes": c["p_yes"].mean(),
                }
                for facts_of, c in checks.items()
            }
        ).T
    )
    print(f"judge {JUDGE}, {N_JUDGE_CHECK} people: gap own - other {gap[0]:.2f} [{gap[1]:.2f}, {gap[2]:.2f}]")

# %% [markdown]
# ## Table 3 analog: one pair, every task
#
# Scores in percent (Biographies: mean fraction of facts judged consistent).
# The ablation methods run in the same directories on `ABLATION_TASKS`.

# %%
table3 = pd.DataFrame(columns=["task", "method", "accuracy", "k", "j", "score"])  # TASKS = []: no Table 3
if TASKS:
    table3 = pd.concat(
        [run(*PAIR, task, METHODS + (ABLATIONS if task in ABLATION_TASKS else [])) for task in TASKS],
        ignore_index=True,
    )
    table3["score"] = [
        f"{100 * a:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
        for a, lo, hi in zip(table3["accuracy"], table3["ci_low"], table3["ci_high"])
    ]
    print(
        f"{PAIR[0]} -> {PAIR[1]}, n = {N}, seed {SEED}, (k, j) = {tuple(table3[['k', 'j']].iloc[0])}, "
        f"judge {JUDGE}"
    )
    display(
        table3[table3["method"].isin(METHODS)]
        .pivot(index="method", columns="task", values="score")
        .loc[METHODS]
    )
    # each method against B alone on the same items: paired difference, B's misses fixed / hits broken
    vs_b = table3.dropna(subset=["vs_b"])
    vs_b = vs_b.assign(
        vs_b=[
            f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] ({better:.0f} / {worse:.0f})"
            for d, lo, hi, better, worse in vs_b[
                ["vs_b", "vs_b_low", "vs_b_high", "better", "worse"]
            ].itertuples(index=False)
        ]
    )
    display(vs_b.pivot(index="method", columns="task", values="vs_b").rename_axis("minus B alone"))

# %%
pd.DataFrame(TABLE3).T.rename_axis("paper: LLaMA-3.2-3B -> LLaMA-3.1-8B")

# %% [markdown]
# Biographies against the wrong person: a vague biography ("a computer
# scientist who made significant contributions") is "consistent" with
# anyone's facts. So each method's biographies are also judged against the
# next person's facts (`commlib.experiments.biographies_against_control`);
# `gap` is the score minus that control, paired by person: what a biography
# says of its own person beyond what it would say of anyone.

# %%
if "biographies" in TASKS:
    against = biographies_against_control(
        reasoning_dir(RUNS_DIR, "biographies", *PAIR, seed=SEED, n=N),
        load_task("biographies", n=N, seed=SEED),
        judge,
        METHODS,
        n_control=N_CONTROL,
        seed=SEED,
        progress=False,
    )
    display(against.set_index("method").round(3))

# %% [markdown]
# AC(W) in distribution: the paper fits W on GSM8k's train split, which no
# offline source ships. Here W is fitted on up to `N_MAP_TASK` GSM8k test items
# that the run does not score (`commlib.experiments.other_items`), each read
# in the prompt format at its last token, where AC reads A and writes B. Its
# run is its own directory (variant `w-task`); A and B alone come from the
# answer store.

# %%
if IN_DISTRIBUTION_TASKS:
    in_distribution = pd.concat(
        [
            run(
                *PAIR,
                task,
                ["single-a", "single-b", "ac-w-replace"],
                variant="w-task",
                map_source="task",
                n_map=N_MAP_TASK,
            )
            for task in IN_DISTRIBUTION_TASKS
        ]
    )
    display(
        in_distribution.assign(score=(100 * in_distribution["accuracy"]).round(1)).pivot(
            index="method", columns="task", values="score"
        )
    )

# %% [markdown]
# ## Table 4 analog: every ordered pair, no W
#
# Each pair's directory runs A and B alone too: they are the debate's first
# round, so they cost nothing extra, and every column of a row comes from
# the same items. A model's answers alone are generated once per task and
# shared by every pair it is in (`RUNS_DIR/answers`).

# %%
TABLE4_COLUMNS = {"A": "single-a", "B": "single-b", "NLD": "nld", "AC": "ac-replace"}
rows = []
pairs = [tuple(p.split(" -> ")) for p in PAIRS] or [(a, b) for a in MODELS for b in MODELS if a != b]
for sender, receiver in pairs:
    for task in CROSS_TASKS:
        if (sender, receiver) == PAIR and task in TASKS:
            done = table3[table3["task"] == task]
        else:
            done = run(sender, receiver, task, CROSS_METHODS)
        got = done.set_index("method")["accuracy"].reindex(CROSS_METHODS) * 100
        rows.append(
            {
                "pair": f"{sender} -> {receiver}",
                "task": task,
                **{label: got.get(method) for label, method in TABLE4_COLUMNS.items()},
                "k": int(done["k"].iloc[0]),
                "j": int(done["j"].iloc[0]),
            }
        )
table4 = pd.DataFrame(rows)
table4.pivot(index="pair", columns="task", values=list(TABLE4_COLUMNS)).dropna(axis=1, how="all").round(1)

# %%
pd.DataFrame(
    {
        pair: {f"{m} {t}": v for m, by_task in methods.items() for t, v in by_task.items()}
        for pair, methods in TABLE4.items()
    }
).T.rename_axis("paper (Biographies / GSM8k)")

# %% [markdown]
# ## Ablations
#
# Chain of thought on A before the graft (paper Table 6: it does not help),
# debate of 1 to 4 rounds (Table 9; `nld-r2` is `nld`, one debate serves all
# rounds), on the Table 3 pair.

# %%
ablation = table3[
    table3["task"].isin(ABLATION_TASKS) & table3["method"].isin(["single-b", "ac-replace", *ABLATIONS])
]
ablation.pivot(index="method", columns="task", values="score")

# %% [markdown]
# Two instances of one model (Table 8), on `ABLATION_TASKS`: A samples its
# text (temperature `A_TEMPERATURE`, nucleus 0.9, seeded per item and turn);
# B decodes greedily. `ac-replace-cot` grafts A's state at the end of its sampled
# answer; plain `ac-replace` at k = j would write B's own state back.

# %%
if ABLATION_TASKS:  # an empty list skips the ablations
    same = pd.concat(
        [
            run(
                SAME_MODEL,
                SAME_MODEL,
                task,
                ["single-a", "single-b", "nld", "ac-replace", "ac-replace-cot"],
                variant=f"sampled-t{A_TEMPERATURE}",
                a_temperature=A_TEMPERATURE,
            )
            for task in ABLATION_TASKS
        ]
    )
    print(
        f"A = B = {SAME_MODEL}, A sampled at T = {A_TEMPERATURE}, (k, j) = {tuple(same[['k', 'j']].iloc[0])}"
    )
    same["score"] = (100 * same["accuracy"]).round(1)
    display(same.pivot(index="method", columns="task", values="score"))

# %% [markdown]
# ## Figure 11 analog: AC's gain against the similarity of the pair
#
# Similarity `||Y^T X||_F^2 / (||X||_F^2 ||Y||_F^2)` of A's states at block k
# and B's at block j (the layers AC uses) on the same LAMBADA sentences. The
# paper finds a positive correlation (its Appendix B.4). Points are labelled
# by A, with one marker per B. The paper's gain is over the mean of A and B
# alone, so a weak A raises it whatever AC does; `ac_minus_b`, AC over B
# alone, is printed next to it.

# %%
similarity = {}
for pair, (k, j) in table4.groupby("pair")[["k", "j"]].first().iterrows():
    a, b = (load(name) for name in pair.split(" -> "))
    sentences = ReferenceSpec(n=N_SIMILARITY, seed=SEED)
    x, y = (corpus_activations(m, layer, sentences) for m, layer in ((a, k), (b, j)))
    similarity[pair] = paper_similarity(x, y)
gains = table4.assign(
    gain=table4["AC"] - (table4["A"] + table4["B"]) / 2,
    paper_similarity=table4["pair"].map(similarity),
    sender=table4["pair"].str.split(" -> ").str[0],
    receiver=table4["pair"].str.split(" -> ").str[1],
)
by_receiver = {"label": "sender", "style": "receiver", "title": f"n = {N} per task, seed {SEED}"}
fig = gain_vs_similarity(gains, **by_receiver)
save_figure(
    fig,
    f"reasoning_gain_vs_similarity_{cross}{suffix}",
    directory=FIGURES_DIR,
    config={
        "pairs": [f"{a} -> {b}" for a, b in pairs],
        "tasks": CROSS_TASKS,
        "n": N,
        "seed": SEED,
        "judge": JUDGE,
        "n_similarity": N_SIMILARITY,
        "notebook": "05_reasoning_benchmarks",
    },
)
gains["ac_minus_b"] = gains["AC"] - gains["B"]


def print_correlations(table: pd.DataFrame, x: str, name: str) -> None:
    """Pearson r of ``x`` with the paper's gain and with AC - B, per task."""
    for task, by_task in table.groupby("task"):
        r = {y: by_task[x].corr(by_task[y]) for y in ("gain", "ac_minus_b")}
        print(f"{task}: Pearson r with {name}, gain {r['gain']:.2f}, AC - B {r['ac_minus_b']:.2f}")


print_correlations(gains, "paper_similarity", "similarity")
gains[["pair", "task", "paper_similarity", "gain", "ac_minus_b"]].round(3)

# %% [markdown]
# ## The project's thesis on the same runs: AC's gain against how far the graft moves B
#
# For each pair and task, the state AC writes (A's at block k, width rule
# for unequal widths) on the evaluated items, measured against B's own
# states at block j on `N_REFERENCE` other items of the task
# (`run_reasoning_distance`): its Mahalanobis percentile (50: a typical
# state of B's there, 100: beyond every one), its norm against B's, and the
# KL divergence it causes in B's first answer token. Medians over items;
# `b` rows (B's own state written back) are the identity control.

# %%
rows = []
for (pair, task), (k, j) in table4.set_index(["pair", "task"])[["k", "j"]].iterrows():
    sender, receiver = pair.split(" -> ")
    out = reasoning_dir(RUNS_DIR, task, sender, receiver, seed=SEED, n=N) / "graft_distance"
    d = run_reasoning_distance(
        task,
        load(sender),
        load(receiver),
        k=int(k),
        j=int(j),
        out_dir=out,
        n=N,
        seed=SEED,
        n_reference=N_REFERENCE,
    )
    for source, by_source in d.groupby("source"):
        rows.append(
            {
                "pair": pair,
                "task": task,
                "source": source,
                **by_source[["mahalanobis_pct", "norm_ratio", "next_token_kl"]].median(),
            }
        )
distance = pd.DataFrame(rows)
gains = gains.merge(distance[distance["source"] == "ac"].drop(columns="source"), on=["pair", "task"])
fig = gain_vs_similarity(gains, x="next_token_kl", **by_receiver)
save_figure(
    fig,
    f"reasoning_gain_vs_graft_kl_{cross}{suffix}",
    directory=FIGURES_DIR,
    config={
        "pairs": [f"{a} -> {b}" for a, b in pairs],
        "tasks": CROSS_TASKS,
        "n": N,
        "seed": SEED,
        "judge": JUDGE,
        "n_reference": N_REFERENCE,
        "notebook": "05_reasoning_benchmarks",
    },
)
print_correlations(gains, "next_token_kl", "the graft's KL")
distance.pivot(
    index=["pair", "task"], columns="source", values=["mahalanobis_pct", "norm_ratio", "next_token_kl"]
).round(3)
