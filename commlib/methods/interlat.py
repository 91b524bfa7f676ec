"""Interlat-style trajectory messages (Du et al., 2025), zero-shot variants.

The sender writes its message greedily; its last-layer hidden state at every
step (what its LM head reads) forms ``H = [h_1 .. h_L]``. The receiver reads
``H`` as input embeddings where a text message would go (the ``nl``
template's slot, as CIPHER does), either raw or rescaled row by row to the
median norm of the receiver's own input embeddings. The trained variant (an
adapter between the two, with learned boundary embeddings) builds on this.

Example:
    >>> from commlib.models import load_model
    >>> m = load_model("tiny-llama-random")
    >>> t = trajectory_message(m, "Alice is at the Eiffel Tower.", max_tokens=3)
    >>> t.hidden.shape[1] == m.info.d_model, len(t.token_ids) == t.hidden.shape[0]
    (True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from commlib.errors import CommlibError
from commlib.methods.cipher import _table
from commlib.models import Model
from commlib.prompts import format_prompt


@dataclass(frozen=True)
class Trajectory:
    """A sender's message as hidden states.

    Attributes:
        hidden: ``[L, d_A]`` last-layer hidden state at each generated step
            (the state that chose the step's token).
        token_ids: The greedy tokens, up to (not including) EOS.
        text: Their text.
    """

    hidden: Float[Tensor, "L d"]
    token_ids: list[int]
    text: str


@torch.no_grad()
def trajectory_message(sender: Model, prompt: str, *, max_tokens: int = 48) -> Trajectory:
    """Greedy message for ``prompt`` (the full instruction) with the hidden state of every step."""
    tok = sender.tokenizer
    text = format_prompt(sender, prompt)
    ids = tok(text, return_tensors="pt", add_special_tokens=sender.info.prompt_format != "chat")["input_ids"]
    out = sender.hf(input_ids=ids.to(sender.device), output_hidden_states=True, use_cache=True)
    eos = set(sender.eos_token_ids())
    hidden: list[Tensor] = []
    chosen: list[int] = []
    for _ in range(max_tokens):
        nxt = int(out.logits[0, -1].argmax())
        if nxt in eos:
            break
        hidden.append(out.hidden_states[-1][0, -1].float())
        chosen.append(nxt)
        out = sender.hf(
            input_ids=torch.tensor([[nxt]], device=sender.device),
            past_key_values=out.past_key_values,
            output_hidden_states=True,
            use_cache=True,
        )
    d = sender.info.d_model
    return Trajectory(
        hidden=torch.stack(hidden) if hidden else torch.zeros(0, d),
        token_ids=chosen,
        text=str(tok.decode(chosen, skip_special_tokens=True)),
    )


def embedding_norm(model: Model) -> float:
    """Median norm of the model's input embeddings as it feeds them (scale included)."""
    table = _table(model).float()
    scale = float(getattr(model.hf.get_input_embeddings(), "embed_scale", 1.0))
    return float(table.norm(dim=-1).median()) * scale


def as_receiver_inputs(
    trajectory: Trajectory, receiver: Model, *, rescale: bool
) -> Float[Tensor, "L d_B"]:
    """``H`` as the receiver's input embeddings: raw, or each row rescaled to its median embedding norm.

    Raises:
        CommlibError: widths differ (zero-shot needs d_A = d_B; the trained
            adapter maps between widths).
    """
    h = trajectory.hidden
    if h.shape[-1] != receiver.info.d_model:
        raise CommlibError(
            f"zero-shot Interlat needs the same width: the message is {h.shape[-1]}-d, "
            f"{receiver.name} reads {receiver.info.d_model}-d; train an adapter for this pair"
        )
    if not rescale:
        return h
    return h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12) * embedding_norm(receiver)
