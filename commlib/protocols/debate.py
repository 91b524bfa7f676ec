"""Debate (Du et al., 2023): two agents answer, read each other's answer, and answer again.

* ``nld``: natural-language debate of A and B for ``rounds`` rounds; in each
  round after the first, each agent reads the other's last answer and
  answers again. The final answer is B's last one (the agents' common answer
  when they agree; two agents have no majority), or A's when B's has none
  (no number, letter, or bullet). For Biographies it is B's last biography.
  ``nld-r<N>`` is the debate of N rounds (paper Table 9); one run of the
  longest debate asked for gives every shorter one
  (:func:`commlib.protocols.reasoning.run_reasoning_methods`), since a round
  never depends on later ones.
* ``cipher-debate``: the same debate with every answer a CIPHER message
  (Pham et al., 2024; :mod:`commlib.channels.cipher`) that the other agent
  reads as input embeddings (:func:`cipher_debate`; B's last message,
  decoded by nearest tokens, is the answer). Agents that tokenize
  differently read each other through their shared tokens, both ways
  (:mod:`commlib.channels.vocab`).

Example:
    >>> from commlib.models import load_model
    >>> from commlib.tasks.items import ReasoningItem
    >>> m = load_model("tiny-llama-random")
    >>> item = ReasoningItem("What is 2 + 2?", "4")
    >>> turns = debate(item, m, m, ReasoningConfig(max_new_tokens=3), rounds=2)
    >>> [t.agent for t in turns]
    ['a', 'b', 'a', 'b']
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from torch import Tensor

from commlib.channels.cipher import soft_message
from commlib.channels.slot import slot_embeddings
from commlib.channels.vocab import vocab_projection
from commlib.combine import LinearMap
from commlib.errors import CommlibError
from commlib.models import Model
from commlib.prompts import encode
from commlib.protocols.questions import (
    ReasoningConfig,
    ReasoningOutput,
    a_decoding,
    answer,
    debate_prompt,
    question_prompt,
)
from commlib.registry import METHODS, register
from commlib.tasks.items import ReasoningItem
from commlib.tasks.reasoning import extract_answer


@dataclass(frozen=True)
class Turn:
    """One answer in a debate: who, what, its prompt and generated token counts, its wall time."""

    agent: str
    text: str
    prompt: int
    new: int
    seconds: float


def debate(
    item: ReasoningItem,
    sender: Model,
    receiver: Model,
    cfg: ReasoningConfig,
    rounds: int,
    opening: Sequence[Turn] = (),
) -> list[Turn]:
    """Du et al.'s debate of A and B for ``rounds`` rounds: A's and B's turns, round by round.

    ``opening`` are turns already taken, whole rounds of A then B (e.g. the
    first round from ``single-a`` and ``single-b``, which answer the same
    prompt with the same decoding); the debate goes on from there.
    """
    if rounds < 1:
        raise CommlibError(f"rounds must be at least 1, got {rounds}")
    turns = list(opening[: 2 * rounds])
    if len(turns) % 2 or any(t.agent != ("a", "b")[i % 2] for i, t in enumerate(turns)):
        raise CommlibError("an opening must be whole rounds of turns, A then B")
    prompt = question_prompt(item)
    for r in range(len(turns) // 2, rounds):
        previous = {t.agent: t.text for t in turns[-2:]}
        for agent, model, other in (("a", sender, "b"), ("b", receiver, "a")):
            text = prompt if r == 0 else debate_prompt(item, previous[other])
            start = time.perf_counter()
            decoding = a_decoding(cfg, item, r) if agent == "a" else None
            out, n_prompt, n_new = answer(model, text, cfg, decoding)
            turns.append(Turn(agent, out, n_prompt, n_new, time.perf_counter() - start))
    return turns


def debate_output(item: ReasoningItem, turns: Sequence[Turn], rounds: int) -> ReasoningOutput:
    """The result of the first ``rounds`` rounds of a debate (see the module docstring for the answer).

    Token counts: each agent's first-round prompt, A's and B's last-round answers.
    """
    if not 1 <= rounds <= len(turns) // 2:
        raise CommlibError(f"the debate has {len(turns) // 2} rounds; cannot take {rounds}")
    kept = list(turns[: 2 * rounds])
    a, b = kept[-2], kept[-1]
    text = b.text if extract_answer(item, b.text) is not None else a.text
    seconds = sum(t.seconds for t in kept)
    return ReasoningOutput(
        text, kept[0].prompt, kept[1].prompt, a.new, b.new, seconds, [t.text for t in kept]
    )


def nld(
    item: ReasoningItem, sender: Model, receiver: Model, cfg: ReasoningConfig, map: LinearMap | None = None
) -> ReasoningOutput:
    """Natural-language debate between A and B for ``cfg.rounds`` rounds."""
    return debate_output(item, debate(item, sender, receiver, cfg, cfg.rounds), cfg.rounds)


def _nld_rounds(rounds: str | None) -> Callable[..., ReasoningOutput]:
    """``nld`` (``rounds`` None: ``cfg.rounds``) or ``nld-r<N>`` (N rounds), as the registry's factory."""
    if rounds is None:
        return nld
    return lambda item, sender, receiver, cfg, map=None: nld(
        item, sender, receiver, replace(cfg, rounds=int(rounds))
    )


register("reasoning", "nld")(_nld_rounds)


def debate_rounds(name: str, cfg: ReasoningConfig) -> int | None:
    """The rounds of a debate method (``nld``: ``cfg.rounds``; ``nld-r3``: 3), ``None`` for the others.

    Example:
        >>> debate_rounds("nld-r3", ReasoningConfig()), debate_rounds("nld", ReasoningConfig(rounds=4))
        (3, 4)
        >>> debate_rounds("ac", ReasoningConfig()) is None
        True
    """
    nld_ = METHODS["nld"]
    if not nld_.matches(name):
        return None
    rounds = nld_.parameter(name)
    return cfg.rounds if rounds is None else int(rounds)


DEBATE_TEMPERATURES = (1.75, 0.15)
"""(A, B) for ``cipher-debate``: one high, one low (Pham et al.); B, the low one, gives the final answer."""


def cipher_debate(temperatures: tuple[float, float] = DEBATE_TEMPERATURES) -> Callable[..., ReasoningOutput]:
    """The reasoning method ``cipher-debate``: ``nld`` with every answer sent as a CIPHER message.

    Same prompts and rounds (``cfg.rounds``) as ``nld``. Each agent writes a
    CIPHER message at its own temperature (A at ``temperatures[0]``, B at
    ``temperatures[1]``; ``cfg.a_temperature`` is not used); after the first
    round it reads the other agent's last message, as input embeddings, where
    ``nld``'s debate prompt puts the text; across tokenizers each reads the
    other's distributions through their shared tokens (A -> B and B -> A,
    :func:`commlib.channels.vocab.vocab_projection`). Messages are shown by
    nearest-token decoding, and the final answer is B's last message so
    decoded (A's when B's has no answer), as in ``nld``. At temperature 0 for
    both, every message is the agent's greedy text and the other reads its
    exact tokens (``nld`` decodes and re-tokenises them). As ``nld`` strips
    the text it passes on, steps whose nearest token is blank are dropped at
    both ends of what the other reads.

    Raises:
        CommlibError: vocabularies that overlap too little either way, or fewer than one round (at run time).
    """

    def method(
        item: ReasoningItem,
        sender: Model,
        receiver: Model,
        cfg: ReasoningConfig,
        map: LinearMap | None = None,
    ) -> ReasoningOutput:
        for writer, reader in ((sender, receiver), (receiver, sender)):
            vocab_projection(writer, reader)  # each reads the other's messages: both ways, before any work
        if cfg.rounds < 1:
            raise CommlibError(f"rounds must be at least 1, got {cfg.rounds}")
        prompt, template = question_prompt(item), debate_prompt(item, "{message}")
        agents = {"a": (sender, "b", temperatures[0]), "b": (receiver, "a", temperatures[1])}
        inbox: dict[str, Tensor] = {}  # per reader: the other's last message, in the reader's embeddings
        turns: list[Turn] = []
        for r in range(cfg.rounds):
            previous = dict(inbox)
            for agent, (model, other, temperature) in agents.items():
                start = time.perf_counter()
                read = prompt if r == 0 else slot_embeddings(model, template, vectors=previous[agent])
                reader = agents[other][0]
                msg = soft_message(
                    model, reader, read, temperature=temperature, max_tokens=cfg.max_new_tokens
                )
                inbox[other] = msg.vectors[_stripped(model, msg.nearest_ids)]
                n_prompt = encode(model, [prompt]).length if r == 0 else len(read)
                text = str(model.tokenizer.decode(msg.nearest_ids, skip_special_tokens=True))
                turns.append(Turn(agent, text, n_prompt, len(msg.nearest_ids), time.perf_counter() - start))
        return debate_output(item, turns, cfg.rounds)

    return method


register("reasoning", "cipher-debate")(cipher_debate())


def _stripped(model: Model, ids: Sequence[int]) -> slice:
    """The steps of a message left when those whose token decodes to blank are dropped at both ends."""
    blank = [not str(model.tokenizer.decode([i], skip_special_tokens=True)).strip() for i in ids]
    start = next((n for n, b in enumerate(blank) if not b), len(ids))
    end = len(ids) - next((n for n, b in enumerate(reversed(blank)) if not b), len(ids))
    return slice(start, max(start, end))
