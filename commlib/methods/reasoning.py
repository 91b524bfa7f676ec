"""Methods on reasoning benchmarks (paper Section 4.2): one model alone, debate, AC.

All methods share the question prompts of Du et al. (2023) and greedy
decoding; each returns B's final text and the token counts that
:mod:`commlib.compute` turns into FLOPs.

* ``single-a``, ``single-b``: one model answers.
* ``nld``: natural-language debate of Du et al., two agents (A and B); in
  each round after the first, each agent reads the other's last answer and
  answers again. The final answer is B's last one (the agents' common answer
  when they agree; two agents have no majority), or A's when B's has none.
* ``ac``, ``ac-w``: A and B read the same question; A's residual at block k
  replaces B's at block j (the last prompt token), optionally through W;
  B answers.

Example:
    >>> from commlib.models import load_model
    >>> from commlib.tasks.reasoning import ReasoningItem
    >>> m = load_model("tiny-llama-random")
    >>> out = run_reasoning_method("nld", ReasoningItem("What is 2 + 2?", "4"), m, m,
    ...                            ReasoningConfig(max_new_tokens=3, rounds=2))
    >>> len(out.transcript)
    4
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from commlib.backends import Decoding, get_backend
from commlib.combine import LinearMap
from commlib.errors import CommlibError
from commlib.graft import GraftConfig, communicate
from commlib.models import Model
from commlib.prompts import encode
from commlib.sweep import until_eos
from commlib.tasks.reasoning import ReasoningItem, extract_choice, extract_number

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
    """Settings shared by the methods of one run (recorded with the results)."""

    k: int | None = None
    j: int | None = None
    rounds: int = 2
    max_new_tokens: int = 256
    backend: str = "nnsight"


@dataclass(frozen=True)
class ReasoningOutput:
    """B's final text, the debate transcript, and token counts for the compute accounting."""

    text: str
    prompt_a: int
    prompt_b: int
    message: int  # tokens A generated that B read (nl-style methods); 0 for AC and single
    answer: int  # tokens of B's final answer
    seconds: float
    transcript: list[str] = field(default_factory=list)


def question_prompt(item: ReasoningItem) -> str:
    """Du et al.'s prompt for the item (GSM8k or MMLU)."""
    if item.choices:
        a, b, c, d = item.choices
        return MMLU_PROMPT.format(question=item.question, a=a, b=b, c=c, d=d)
    return GSM8K_PROMPT.format(question=item.question)


def _answer(model: Model, prompt: str, cfg: ReasoningConfig) -> tuple[str, int, int]:
    """Greedy answer: text, prompt tokens, generated tokens (up to EOS)."""
    batch = encode(model, [prompt])
    gen = get_backend(model, cfg.backend).generate(batch, None, Decoding(max_new_tokens=cfg.max_new_tokens))
    return gen.texts[0], batch.length, _generated(model, gen.token_ids[0].tolist())


def _generated(model: Model, ids: list[int]) -> int:
    return len(until_eos(ids, model))


def _final(item: ReasoningItem, text: str) -> str | None:
    return extract_choice(text) if item.choices else extract_number(text)


def _single(which: str) -> Callable[..., ReasoningOutput]:
    def method(
        item: ReasoningItem, sender: Model, receiver: Model, cfg: ReasoningConfig, map: LinearMap | None
    ) -> ReasoningOutput:
        model = sender if which == "a" else receiver
        start = time.perf_counter()
        text, prompt, answer = _answer(model, question_prompt(item), cfg)
        seconds = time.perf_counter() - start
        return ReasoningOutput(
            text, prompt if which == "a" else 0, prompt if which == "b" else 0, 0, answer, seconds, [text]
        )

    return method


def nld(
    item: ReasoningItem, sender: Model, receiver: Model, cfg: ReasoningConfig, map: LinearMap | None = None
) -> ReasoningOutput:
    """Natural-language debate between A and B for ``cfg.rounds`` rounds."""
    if cfg.rounds < 1:
        raise CommlibError(f"rounds must be at least 1, got {cfg.rounds}")
    start = time.perf_counter()
    prompt = question_prompt(item)
    answers = {"a": "", "b": ""}
    transcript: list[str] = []
    prompt_a = prompt_b = message = answer = 0
    for r in range(cfg.rounds):
        previous = dict(answers)
        for agent, model, other in (("a", sender, "b"), ("b", receiver, "a")):
            text = prompt if r == 0 else DEBATE_PROMPT.format(other=previous[other].strip(), prompt=prompt)
            out, n_prompt, n_new = _answer(model, text, cfg)
            answers[agent] = out
            transcript.append(out)
            if agent == "a":  # token counts: the question prompt, then the last round's answers
                prompt_a, message = (n_prompt if r == 0 else prompt_a), n_new
            else:
                prompt_b, answer = (n_prompt if r == 0 else prompt_b), n_new
    text = answers["b"] if _final(item, answers["b"]) is not None else answers["a"]
    return ReasoningOutput(text, prompt_a, prompt_b, message, answer, time.perf_counter() - start, transcript)


def _ac(use_map: bool) -> Callable[..., ReasoningOutput]:
    def method(
        item: ReasoningItem, sender: Model, receiver: Model, cfg: ReasoningConfig, map: LinearMap | None
    ) -> ReasoningOutput:
        if cfg.k is None or cfg.j is None:
            raise CommlibError("ac needs the layers: pass k and j (--k, --j)")
        if use_map and map is None:
            raise CommlibError("ac-w needs a learned map: pass --map (fit one with `commlib fit-map`)")
        prompt = question_prompt(item)
        start = time.perf_counter()
        out = communicate(
            sender, receiver, [prompt], [prompt], GraftConfig(k=cfg.k, j=cfg.j, f="replace"),
            map=map if use_map else None, backend=cfg.backend,
            decoding=Decoding(max_new_tokens=cfg.max_new_tokens),
        )  # fmt: skip
        seconds = time.perf_counter() - start
        n_a, n_b = encode(sender, [prompt]).length, encode(receiver, [prompt]).length
        text, answer = out.texts[0], _generated(receiver, out.token_ids[0].tolist())
        return ReasoningOutput(text, n_a, n_b, 0, answer, seconds, [text])

    return method


REASONING_METHODS: dict[str, Callable[..., ReasoningOutput]] = {
    "single-a": _single("a"),
    "single-b": _single("b"),
    "nld": nld,
    "ac": _ac(False),
    "ac-w": _ac(True),
}
"""Registered reasoning methods by name."""


def run_reasoning_method(
    name: str,
    item: ReasoningItem,
    sender: Model,
    receiver: Model,
    cfg: ReasoningConfig,
    map: LinearMap | None = None,
) -> ReasoningOutput:
    """Run one registered method on one item.

    Raises:
        CommlibError: an unknown method, or its settings missing.
    """
    if name not in REASONING_METHODS:
        raise CommlibError(f"unknown method {name!r}; use one of {', '.join(REASONING_METHODS)}")
    return REASONING_METHODS[name](item, sender, receiver, cfg, map)
