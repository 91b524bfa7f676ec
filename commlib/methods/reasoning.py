"""Methods on reasoning benchmarks (paper Section 4.2 and its appendix ablations).

All methods share the question prompts of Du et al. (2023); B decodes
greedily, and so does A unless ``a_temperature > 0`` (then A samples with
nucleus ``a_top_p`` and a seed derived from ``a_seed``, the item and the
turn, so a method's A text is reproducible and the same across methods).
Each returns B's final text and the token counts that :mod:`commlib.compute`
turns into FLOPs.

* ``single-a``, ``single-b``: one model answers.
* ``nld``: natural-language debate of Du et al., two agents (A and B), for
  ``rounds`` rounds; in each round after the first, each agent reads the
  other's last answer and answers again. The final answer is B's last one
  (the agents' common answer when they agree; two agents have no majority),
  or A's when B's has none (no number, letter, or bullet). For Biographies
  it is B's last biography. ``nld-r<N>`` is the debate of N rounds (paper
  Table 9); one run of the longest debate asked for gives every shorter one
  (:func:`run_reasoning_methods`), since a round never depends on later ones.
* ``cipher-debate``: the same debate with every answer a CIPHER message (Pham
  et al., 2024) that the other agent reads as input embeddings
  (:func:`commlib.methods.cipher.cipher_debate`; B's last message, decoded
  by nearest tokens, is the answer).
* ``ac``, ``ac-w``: A and B read the same question; A's residual at block k
  (last prompt token) replaces B's at block j (last prompt token),
  optionally through W; B answers.
* ``ac-unrelated``: the control of ``ac``: A reads a fixed question unrelated
  to the item, in the item's own format (:func:`unrelated_item`), while B
  reads the item. Where it scores as ``ac`` does, AC's effect does not come
  from what A read: it is that of the state written, whatever the question.
* ``ac-cot``: chain of thought on A before the graft (paper Table 6): A
  first answers the question in text, then its residual at block k at the
  last token of its own answer replaces B's at block j; B answers the
  question. With A = B and a sampled A (``a_temperature > 0``) it is the
  paper's two instances of one model (Table 8): at ``k == j`` plain ``ac``
  writes B's own state back, a no-op.

``single-a``, ``single-b``, ``ac``, ``ac-w`` and ``ac-unrelated`` are one decode per item; they
also run on a list of items as one left-padded batch
(:func:`run_reasoning_batch`), with the same greedy answers.

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

import re
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

from commlib.backends import Decoding, get_backend
from commlib.combine import LinearMap
from commlib.errors import CommlibError
from commlib.graft import GraftConfig, communicate
from commlib.methods.cipher import cipher_debate
from commlib.models import Model
from commlib.prompts import encode
from commlib.sweep import until_eos
from commlib.tasks import biographies
from commlib.tasks.reasoning import ReasoningItem, extract_answer

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


def _answers(
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
        (_text(model, ids.tolist()), int(n), _generated(model, ids.tolist()))
        for ids, n in zip(gen.token_ids, lengths, strict=True)
    ]


def _answer(
    model: Model, prompt: str, cfg: ReasoningConfig, decoding: Decoding | None = None
) -> tuple[str, int, int]:
    """One answer (greedy unless ``decoding`` says otherwise): text, prompt tokens, generated tokens."""
    return _answers(model, [prompt], cfg, decoding)[0]


def _text(model: Model, ids: list[int]) -> str:
    """The text of generated ``ids`` up to the first EOS (a batch pads the rows that ended early)."""
    return str(model.tokenizer.decode(until_eos(ids, model), skip_special_tokens=True))


def _generated(model: Model, ids: list[int]) -> int:
    return len(until_eos(ids, model))


def _single_model(which: str, sender: Model, receiver: Model) -> Model:
    return sender if which == "single-a" else receiver


def _single_decoding(which: str, item: ReasoningItem, cfg: ReasoningConfig) -> Decoding:
    return a_decoding(cfg, item) if which == "single-a" else Decoding(max_new_tokens=cfg.max_new_tokens)


def single_answer_key(
    which: str, item: ReasoningItem, sender: Model, receiver: Model, cfg: ReasoningConfig
) -> dict[str, object]:
    """What fixes a ``single-a`` / ``single-b`` answer: model, backend, prompt and decoding.

    Two runs with equal keys generate the same text (see
    :class:`commlib.results.AnswerStore`), whichever pair the model is in.
    """
    decoding = _single_decoding(which, item, cfg)
    return {
        "model": _single_model(which, sender, receiver).name,
        "backend": cfg.backend,
        "prompt": question_prompt(item),
        "decoding": asdict(decoding),
    }


def single_output(
    which: str, text: str, prompt: int, answer: int, seconds: float, batch: int = 1
) -> ReasoningOutput:
    """A ``single-a`` / ``single-b`` output from its text, token counts, wall time and batch size."""
    a = which == "single-a"
    return ReasoningOutput(text, prompt if a else 0, 0 if a else prompt, 0, answer, seconds, [text], batch)


def _singles(which: str) -> Callable[..., list[ReasoningOutput]]:
    def method(
        items: Sequence[ReasoningItem],
        sender: Model,
        receiver: Model,
        cfg: ReasoningConfig,
        map: LinearMap | None,
    ) -> list[ReasoningOutput]:
        model = _single_model(which, sender, receiver)
        decodings = [_single_decoding(which, item, cfg) for item in items]
        if len(set(decodings)) > 1:  # A sampled: each item its own seed, so one at a time
            return [method([item], sender, receiver, cfg, map)[0] for item in items]
        start = time.perf_counter()
        answers = _answers(model, [question_prompt(item) for item in items], cfg, decodings[0])
        seconds = (time.perf_counter() - start) / len(items)
        return [
            single_output(which, text, prompt, answer, seconds, len(items))
            for text, prompt, answer in answers
        ]

    return method


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
            out, n_prompt, n_new = _answer(model, text, cfg, decoding)
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


def _layers(cfg: ReasoningConfig, name: str) -> tuple[int, int]:
    if cfg.k is None or cfg.j is None:
        raise CommlibError(f"{name} needs the layers: pass k and j (--k, --j)")
    return cfg.k, cfg.j


def _grafts(
    items: Sequence[ReasoningItem],
    sender: Model,
    receiver: Model,
    cfg: ReasoningConfig,
    map: LinearMap | None,
    reasonings: Sequence[str] | None = None,
    unrelated: bool = False,
) -> list[tuple[str, int, int, int]]:
    """B's answers with A's state grafted (after A's ``reasonings`` when given), one batch for all items.

    With ``unrelated``, A reads :func:`unrelated_item` instead of the item.

    Returns:
        Per item: B's text, A's and B's prompt tokens, B's generated tokens.
    """
    k, j = _layers(cfg, "ac")
    prompts = [question_prompt(item) for item in items]
    a_prompts = [question_prompt(unrelated_item(item)) for item in items] if unrelated else prompts
    out = communicate(
        sender,
        receiver,
        a_prompts,
        prompts,
        GraftConfig(k=k, j=j, f="replace"),
        map=map,
        backend=cfg.backend,
        decoding=Decoding(max_new_tokens=cfg.max_new_tokens),
        sender_replies=reasonings,
    )
    n_a = encode(sender, a_prompts).attention_mask.sum(-1).tolist()
    n_b = encode(receiver, prompts).attention_mask.sum(-1).tolist()
    return [
        (_text(receiver, ids.tolist()), int(a), int(b), _generated(receiver, ids.tolist()))
        for ids, a, b in zip(out.token_ids, n_a, n_b, strict=True)
    ]


def _acs(use_map: bool, unrelated: bool = False) -> Callable[..., list[ReasoningOutput]]:
    def method(
        items: Sequence[ReasoningItem],
        sender: Model,
        receiver: Model,
        cfg: ReasoningConfig,
        map: LinearMap | None,
    ) -> list[ReasoningOutput]:
        _layers(cfg, "ac")
        if use_map and map is None:
            raise CommlibError("ac-w needs a learned map: pass --map (fit one with `commlib fit-map`)")
        start = time.perf_counter()
        grafted = _grafts(items, sender, receiver, cfg, map if use_map else None, unrelated=unrelated)
        seconds = (time.perf_counter() - start) / len(items)
        return [
            ReasoningOutput(text, n_a, n_b, 0, answer, seconds, [text], len(items))
            for text, n_a, n_b, answer in grafted
        ]

    return method


def ac_cot(
    item: ReasoningItem, sender: Model, receiver: Model, cfg: ReasoningConfig, map: LinearMap | None = None
) -> ReasoningOutput:
    """AC after chain of thought on A: A answers in text, then its state at its last token is grafted."""
    _layers(cfg, "ac-cot")
    start = time.perf_counter()
    reasoning, _, message = _answer(sender, question_prompt(item), cfg, a_decoding(cfg, item))
    [(text, n_a, n_b, answer)] = _grafts([item], sender, receiver, cfg, None, [reasoning])
    return ReasoningOutput(text, n_a, n_b, message, answer, time.perf_counter() - start, [reasoning, text])


BATCHED_METHODS: dict[str, Callable[..., list[ReasoningOutput]]] = {
    "single-a": _singles("single-a"),
    "single-b": _singles("single-b"),
    "ac": _acs(False),
    "ac-w": _acs(True),
    "ac-unrelated": _acs(False, unrelated=True),
}
"""Methods whose work on an item is one decode, by name: each runs a list of items as one left-padded
batch (:func:`run_reasoning_batch`)."""


def _one_item(batched: Callable[..., list[ReasoningOutput]]) -> Callable[..., ReasoningOutput]:
    def method(
        item: ReasoningItem, sender: Model, receiver: Model, cfg: ReasoningConfig, map: LinearMap | None
    ) -> ReasoningOutput:
        return batched([item], sender, receiver, cfg, map)[0]

    return method


REASONING_METHODS: dict[str, Callable[..., ReasoningOutput]] = {
    "single-a": _one_item(BATCHED_METHODS["single-a"]),
    "single-b": _one_item(BATCHED_METHODS["single-b"]),
    "nld": nld,
    "ac": _one_item(BATCHED_METHODS["ac"]),
    "ac-w": _one_item(BATCHED_METHODS["ac-w"]),
    "ac-unrelated": _one_item(BATCHED_METHODS["ac-unrelated"]),
    "ac-cot": ac_cot,
    "cipher-debate": cipher_debate(),  # CIPHER debate (Pham et al., 2024), in commlib.methods.cipher
}
"""Registered reasoning methods by name; ``nld-r<N>`` (N rounds of debate) is accepted as well."""

_ROUNDS = re.compile(r"nld-r([1-9]\d*)")


def debate_rounds(name: str, cfg: ReasoningConfig) -> int | None:
    """The rounds of a debate method (``nld``: ``cfg.rounds``; ``nld-r3``: 3), ``None`` for the others."""
    if name == "nld":
        return cfg.rounds
    match = _ROUNDS.fullmatch(name)
    return int(match.group(1)) if match else None


def check_methods(names: Sequence[str]) -> None:
    """Raise :class:`CommlibError` naming the known methods if any of ``names`` is unknown."""
    unknown = [m for m in names if m not in REASONING_METHODS and not _ROUNDS.fullmatch(m)]
    if unknown:
        known = ", ".join([*REASONING_METHODS, "nld-r<N>"])
        raise CommlibError(f"unknown method(s) {', '.join(unknown)}; use {known}")


def compute_kind(name: str) -> str:
    """The :func:`commlib.compute.method_flops` method that counts a reasoning method's FLOPs."""
    if name in ("ac", "ac-w", "ac-unrelated"):
        return "ac"
    return "nld" if debate_rounds(name, ReasoningConfig()) is not None else name


def run_reasoning_method(
    name: str,
    item: ReasoningItem,
    sender: Model,
    receiver: Model,
    cfg: ReasoningConfig,
    map: LinearMap | None = None,
) -> ReasoningOutput:
    """Run one method on one item.

    Raises:
        CommlibError: an unknown method, or its settings missing.
    """
    return run_reasoning_methods([name], item, sender, receiver, cfg, map)[name]


def run_reasoning_batch(
    name: str,
    items: Sequence[ReasoningItem],
    sender: Model,
    receiver: Model,
    cfg: ReasoningConfig,
    map: LinearMap | None = None,
) -> list[ReasoningOutput]:
    """Run one of :data:`BATCHED_METHODS` on several items, decoded as one left-padded batch.

    Greedy answers equal those of :func:`run_reasoning_method` item by item up
    to float rounding (padding changes the shapes of the matrix products); a
    sampled A (``a_temperature > 0``) runs item by item, each with its seed.
    Each output's ``seconds`` is the batch's wall time over its items.

    Raises:
        CommlibError: ``name`` is not batched, no items, or the method's settings missing.

    Example:
        >>> from commlib.models import load_model
        >>> from commlib.tasks.reasoning import ReasoningItem
        >>> m = load_model("tiny-llama-random")
        >>> items = [ReasoningItem("What is 2 + 2?", "4"), ReasoningItem("And 30 + 50?", "80")]
        >>> len(run_reasoning_batch("single-b", items, m, m, ReasoningConfig(max_new_tokens=3)))
        2
    """
    if name not in BATCHED_METHODS:
        raise CommlibError(f"{name} does not run in batches; batched methods: {', '.join(BATCHED_METHODS)}")
    if not items:
        raise CommlibError("no items to run: pass at least one")
    return BATCHED_METHODS[name](items, sender, receiver, cfg, map)


def run_reasoning_methods(
    names: Sequence[str],
    item: ReasoningItem,
    sender: Model,
    receiver: Model,
    cfg: ReasoningConfig,
    map: LinearMap | None = None,
    opening: Sequence[Turn] = (),
) -> dict[str, ReasoningOutput]:
    """Run several methods on one item; all debates come from one debate of the most rounds asked for.

    ``opening``: the debate's turns already taken (see :func:`debate`).

    Raises:
        CommlibError: an unknown method, or its settings missing.
    """
    check_methods(names)
    rounds = {name: r for name in names if (r := debate_rounds(name, cfg)) is not None}
    turns = debate(item, sender, receiver, cfg, max(rounds.values()), opening) if rounds else []
    return {
        name: debate_output(item, turns, rounds[name])
        if name in rounds
        else REASONING_METHODS[name](item, sender, receiver, cfg, map)
        for name in names
    }
