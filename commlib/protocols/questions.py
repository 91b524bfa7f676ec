"""A reasoning question as every method asks it: Du et al.'s prompts, a run's settings, one model's answers.

All reasoning methods (:mod:`commlib.protocols.reasoning`,
:mod:`commlib.protocols.debate`) share the question prompts of Du et al.
(2023); B decodes greedily, and so does A unless ``a_temperature > 0``
(then A samples with nucleus ``a_top_p`` and a seed derived from
``a_seed``, the item and the turn, so a method's A text is reproducible and
the same across methods). Each method returns a :class:`ReasoningOutput`:
B's final text and the token counts that :mod:`commlib.compute` turns into
FLOPs.

Example:
    >>> from commlib.tasks.items import ReasoningItem
    >>> question_prompt(ReasoningItem("What is 2 + 2?", "4"))[:41]
    'Can you solve the following math problem?'
    >>> a_decoding(ReasoningConfig(a_temperature=0.7), ReasoningItem("What is 2 + 2?", "4")).do_sample
    True
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from commlib.backends import Decoding, get_backend
from commlib.models import Model
from commlib.prompts import encode
from commlib.sweep import until_eos
from commlib.tasks import biographies
from commlib.tasks.items import ReasoningItem

GSM8K_PROMPT = (
    "Can you solve the following math problem? {question} Explain your reasoning. Your final answer should "
    "be a single numerical number, in the form \\boxed{{answer}}, at the end of your response."
)
MMLU_PROMPT = (
    "Can you answer the following question as accurately as possible? {question}: A) {a}, B) {b}, C) {c}, "
    "D) {d} Explain your answer, putting the answer in the form (X) at the end of your response."
)
DEBATE_PROMPT = (
    "These are the solutions to the problem from other agents: One agent solution: ```{other}``` Using the "
    "solutions from other agents as additional information, can you provide your answer to the problem? "
    "The original problem is: {prompt}"
)


@dataclass(frozen=True)
class ReasoningConfig:
    """Settings shared by the methods of one run (recorded with the results).

    Attributes:
        k: A's block for the AC methods.
        j: B's block for the AC methods.
        rounds: Debate rounds of ``nld`` (``nld-r<N>`` sets its own).
        max_new_tokens: Generation budget of every answer.
        backend: ``"nnsight"`` or ``"transformer-lens"``.
        a_temperature: A's sampling temperature; 0 is greedy.
        a_top_p: A's nucleus threshold when sampling (the paper's 0.9).
        a_seed: Seed of A's sampling (with the item id and the turn).
    """

    k: int | None = None
    j: int | None = None
    rounds: int = 2
    max_new_tokens: int = 256
    backend: str = "nnsight"
    a_temperature: float = 0.0
    a_top_p: float = 0.9
    a_seed: int = 0


@dataclass(frozen=True)
class ReasoningOutput:
    """B's final text, the transcript, and token counts for the compute accounting."""

    text: str
    prompt_a: int
    prompt_b: int
    message: int  # tokens A generated that B read (nl-style methods; A's reasoning in ac-cot); 0 for AC
    answer: int  # tokens of B's final answer
    seconds: float  # wall time; a batch's over its items
    transcript: list[str] = field(default_factory=list)
    batch: int = 1  # items decoded together with this one (1: alone)


def question_prompt(item: ReasoningItem) -> str:
    """Du et al.'s prompt for the item (GSM8k, MMLU or Biographies)."""
    if item.task == biographies.TASK:
        return biographies.BIOGRAPHY_PROMPT.format(person=item.question)
    if item.choices:
        a, b, c, d = item.choices
        return MMLU_PROMPT.format(question=item.question, a=a, b=b, c=c, d=d)
    return GSM8K_PROMPT.format(question=item.question)


UNRELATED_QUESTIONS: dict[str, ReasoningItem] = {
    "gsm8k": ReasoningItem("A farmer has 3 red hens and 4 brown hens. How many hens are there?", "7"),
    "mmlu": ReasoningItem("Which of the following is a colour", "A", ("red", "seven", "Tuesday", "Paris")),
    biographies.TASK: ReasoningItem("Claude Monet", ""),  # a painter: no computer scientist of the data
}
"""The question A reads in ``ac-unrelated``, per task family: one fixed question, unrelated to any item."""


def unrelated_item(item: ReasoningItem) -> ReasoningItem:
    """The fixed unrelated question of :data:`UNRELATED_QUESTIONS` for ``item``'s task, as an item of it."""
    family = "mmlu" if item.choices else "gsm8k"
    if item.task == biographies.TASK:
        family = biographies.TASK
    return replace(UNRELATED_QUESTIONS[family], id=f"unrelated-{family}", task=item.task)


def debate_prompt(item: ReasoningItem, other: str) -> str:
    """A debate turn after the first: the other agent's last answer, then the question again."""
    if item.task == biographies.TASK:
        return biographies.DEBATE_PROMPT.format(person=item.question, other=other.strip())
    return DEBATE_PROMPT.format(other=other.strip(), prompt=question_prompt(item))


def a_decoding(cfg: ReasoningConfig, item: ReasoningItem, turn: int = 0) -> Decoding:
    """A's decoding for its ``turn``-th answer on ``item``: greedy, or sampled with a derived seed."""
    if cfg.a_temperature <= 0:
        return Decoding(max_new_tokens=cfg.max_new_tokens)
    seed = zlib.crc32(f"{cfg.a_seed}:{item.id}:{item.question}:{turn}".encode())
    return Decoding(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=True,
        temperature=cfg.a_temperature,
        top_p=cfg.a_top_p,
        seed=seed,
    )


def answers(
    model: Model, prompts: Sequence[str], cfg: ReasoningConfig, decoding: Decoding | None = None
) -> list[tuple[str, int, int]]:
    """One answer per prompt, decoded as one left-padded batch (greedy unless ``decoding`` says otherwise).

    Returns:
        Per prompt: the text (up to the first EOS), prompt tokens, generated tokens.
    """
    batch = encode(model, prompts)
    decoding = decoding or Decoding(max_new_tokens=cfg.max_new_tokens)
    gen = get_backend(model, cfg.backend).generate(batch, None, decoding)
    lengths = batch.attention_mask.sum(-1).tolist()
    return [
        (decoded_text(model, ids.tolist()), int(n), generated_tokens(model, ids.tolist()))
        for ids, n in zip(gen.token_ids, lengths, strict=True)
    ]


def answer(
    model: Model, prompt: str, cfg: ReasoningConfig, decoding: Decoding | None = None
) -> tuple[str, int, int]:
    """One answer (greedy unless ``decoding`` says otherwise): text, prompt tokens, generated tokens."""
    return answers(model, [prompt], cfg, decoding)[0]


def decoded_text(model: Model, ids: list[int]) -> str:
    """The text of generated ``ids`` up to the first EOS (a batch pads the rows that ended early)."""
    return str(model.tokenizer.decode(until_eos(ids, model), skip_special_tokens=True))


def generated_tokens(model: Model, ids: list[int]) -> int:
    """How many tokens a generation has up to the first EOS."""
    return len(until_eos(ids, model))
