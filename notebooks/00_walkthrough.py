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
# # Walkthrough: one activation-communication exchange, step by step
#
# A reads where each person is; B is asked which country they are in and never
# sees A's prompt. A sends no words: B's residual stream at its last prompt
# token is overwritten with A's (Ramesh & Li, 2025). Each step is one public
# commlib call; at the end, `commlib.communicate` does all of them in one.

# %% tags=["parameters"]
FAST = False
DEVICE = "cpu"  # cpu, cuda, cuda:N, or auto: a device map over every visible GPU
DTYPE = "float32"  # float32, bfloat16 or float16
MODEL = "smollm2-135m"  # A and B are two copies of it here; any pair of models works the same way
MAX_NEW_TOKENS = 8
N_REFERENCE = 512  # game prompts: B's own states that the distance is measured against

# %%
from commlib.plots import begin_notebook

begin_notebook(FAST)

# %%
import pandas as pd
import torch

import commlib
from commlib.config import ReferenceSpec
from commlib.distance import manifold_for, next_token_kl

if FAST:
    MODEL, N_REFERENCE = "tiny-llama-random", 120

# %% [markdown]
# Load the model and wrap it in a backend: it reads and writes the residual stream.

# %%
model = commlib.load_model(MODEL, device=DEVICE, dtype=DTYPE)
backend = commlib.get_backend(model, "nnsight")  # or "transformer-lens"
k = j = 2 * model.info.n_layers // 3  # A's layer k and B's layer j: two thirds of the depth

# %% [markdown]
# A's prompts hold the facts; B's prompts ask and open B's answer, so B's next token is the answer.

# %%
a_prompts = ["Alice is at the Eiffel Tower.", "Bob is at the Colosseum.", "Carol is at Machu Picchu."]
names = ["Alice", "Bob", "Carol"]
b_prompts = [f"Which country is {name} located in?" for name in names]
replies = [f"{name} is located in" for name in names]
answers = ["France", "Italy", "Peru"]
a_batch = commlib.encode(model, a_prompts)  # chat template applied, left-padded
b_batch = commlib.encode(model, b_prompts, replies=replies)

# %% [markdown]
# Step 1: capture A's residual after block k at its last token: one vector per prompt.

# %%
a = backend.capture(a_batch, layer=k)  # [batch, d]
print(a.shape)

# %% [markdown]
# Step 2: an `Edit` that replaces B's residual after block j at its last prompt token by A's.

# %%
last = torch.full((b_batch.size, 1), b_batch.length - 1)  # [batch, n]: absolute positions in B's batch
edit = commlib.Edit(layer=j, positions=last, fn=lambda b: a[:, None])  # fn: B's [batch, n, d] -> new

# %% [markdown]
# Step 3: B decodes with the edit (in the prefill; the KV cache carries it), next to B alone and the
# skyline, B reading both prompts.

# %%
decoding = commlib.Decoding(max_new_tokens=MAX_NEW_TOKENS)
grafted = backend.generate(b_batch, edit, decoding)
alone = backend.generate(b_batch, None, decoding)
both = [f"{x}\n{y}" for x, y in zip(a_prompts, b_prompts, strict=True)]  # the skyline reads both prompts
skyline = backend.generate(commlib.encode(model, both, replies=replies), None, decoding)
table = pd.DataFrame({"answer": answers, "B alone": alone.texts, "skyline": skyline.texts}, index=names)
table["AC replace"] = grafted.texts
table

# %% [markdown]
# Step 4: f other than replace. `combine(a, b, f)` is the paper's f (sum, mean, replace; widths handled).

# %%
for f in ["sum", "mean"]:
    edit_f = commlib.Edit(layer=j, positions=last, fn=lambda b, f=f: commlib.combine(a[:, None], b, f))
    table[f"AC {f}"] = backend.generate(b_batch, edit_f, decoding).texts
table

# %% [markdown]
# Do not expect AC to win on a 135M model (notebook 01 has the accuracies): the mechanism is the point here.

# %% [markdown]
# Step 5: how far did the graft move B? Where each state lies among B's own states at layer j on the
# game's prompts of other items (Mahalanobis percentile: 50 typical, 100 beyond all of them), and the KL
# of B's next-token distribution, grafted against alone (0: the edit changed nothing).

# %%
b = backend.capture(b_batch, layer=j)  # B's own state where the edit writes
game_states = ReferenceSpec(corpus="task:countries", n=N_REFERENCE, formatted=True)
manifold = manifold_for(model, j, game_states)  # cached on disk
states = {"B's own": b, **{f"AC {f}": commlib.combine(a, b, f) for f in ["replace", "sum", "mean"]}}
distance = pd.DataFrame({name: manifold.percentiles(x)["mahalanobis"].numpy() for name, x in states.items()})
distance["KL, AC replace (nats)"] = next_token_kl(alone.first_logits, grafted.first_logits).numpy()
distance.index = names
distance.round(2)

# %% [markdown]
# `commlib.communicate` wraps exactly these steps (plus the `content` position, several positions, a
# learned map W); the experiments and the CLI run it over whole games.

# %%
config = commlib.GraftConfig(k=k, j=j, f="replace")
out = commlib.communicate(
    model, model, a_prompts, b_prompts, config, receiver_replies=replies, decoding=decoding
)
assert out.texts == grafted.texts
out.texts
