"""Reasoning benchmarks (paper Section 4.2 and its appendix ablations): the methods, and running them.

The question prompts, settings and outputs all methods share are in
:mod:`commlib.protocols.questions`; the debates (``nld``, ``nld-r<N>``,
``cipher-debate``) in :mod:`commlib.protocols.debate`. Here (old names, still
accepted, in brackets):

* ``single-a``, ``single-b``: one model answers.
* ``ac-replace`` (``ac``), ``ac-w-replace`` (``ac-w``): A and B read the same
  question; A's residual at block k (last prompt token) replaces B's at
  block j (last prompt token), optionally through W; B answers.
* ``ac-replace-unrelated`` (``ac-unrelated``): the control of ``ac-replace``:
  A reads a fixed question unrelated to the item, in the item's own format
  (:func:`commlib.protocols.questions.unrelated_item`), while B reads the
  item. Where it scores as ``ac-replace`` does, AC's effect does not come
  from what A read: it is that of the state written, whatever the question.
* ``ac-replace-donor``: the content control of ``ac-replace``: A reads another
  item of the run (its ``donor``, a derangement fixed by the seed:
  :func:`commlib.tasks.items.with_donors`), B reads the item. Unlike the
  fixed unrelated question, the donor is a real item of the same task, so
  any gain ``ac-replace`` keeps over it comes from what A read.
* ``ac-replace-cot`` (``ac-cot``): chain of thought on A before the graft
  (paper Table 6): A first answers the question in text, then its residual
  at block k at the last token of its own answer replaces B's at block j; B
  answers the question. With A = B and a sampled A (``a_temperature > 0``)
  it is the paper's two instances of one model (Table 8): at ``k == j`` plain
  ``ac-replace`` writes B's own state back, a no-op.

The methods that are one decode per item (``batched`` in
:data:`commlib.registry.METHODS`: the single ones and AC but ``ac-replace-cot``)
also run on a list of items as one left-padded batch
(:func:`run_reasoning_batch`), with the same greedy answers.

Example:
    >>> from commlib.models import load_model
    >>> from commlib.tasks.items import ReasoningItem
    >>> m = load_model("tiny-llama-random")
    >>> out = run_reasoning_method("nld", ReasoningItem("What is 2 + 2?", "4"), m, m,
    ...                            ReasoningConfig(max_new_tokens=3, rounds=2))
    >>> len(out.transcript)
    4
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

from commlib.backends import Decoding
from commlib.combine import LinearMap
from commlib.errors import CommlibError
from commlib.graft import GraftConfig, communicate
from commlib.models import Model
from commlib.prompts import encode
from commlib.protocols.debate import Turn, debate, debate_output, debate_rounds
from commlib.protocols.questions import (
    ReasoningConfig,
    ReasoningOutput,
    a_decoding,
    answer,
    answers,
    decoded_text,
    generated_tokens,
    question_prompt,
    unrelated_item,
)
from commlib.registry import METHODS, check_map, check_methods, implementation, layers, method, register
from commlib.tasks.items import ReasoningItem


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
        texts = answers(model, [question_prompt(item) for item in items], cfg, decodings[0])
        seconds = (time.perf_counter() - start) / len(items)
        return [single_output(which, text, prompt, new, seconds, len(items)) for text, prompt, new in texts]

    return method


def _grafts(
    items: Sequence[ReasoningItem],
    sender: Model,
    receiver: Model,
    cfg: ReasoningConfig,
    map: LinearMap | None,
    reasonings: Sequence[str] | None = None,
    name: str = "ac-replace",
    a_reads: Callable[[ReasoningItem], ReasoningItem] | None = None,
) -> list[tuple[str, int, int, int]]:
    """B's answers with A's state grafted (after A's ``reasonings`` when given), one batch for all items.

    A reads ``a_reads(item)`` when given (a control: :func:`unrelated_item`,
    the item's donor), else the item itself.

    Returns:
        Per item: B's text, A's and B's prompt tokens, B's generated tokens.
    """
    k, j = layers(name, cfg.k, cfg.j)
    prompts = [question_prompt(item) for item in items]
    a_prompts = [question_prompt(a_reads(item)) for item in items] if a_reads else prompts
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
        (decoded_text(receiver, ids.tolist()), int(a), int(b), generated_tokens(receiver, ids.tolist()))
        for ids, a, b in zip(out.token_ids, n_a, n_b, strict=True)
    ]


def _donor(item: ReasoningItem) -> ReasoningItem:
    if item.donor is None:
        raise CommlibError(
            f"item {item.id or item.question[:40]!r} has no donor: run ac-replace-donor through "
            "run_reasoning, which draws them, or give items from commlib.tasks.items.with_donors"
        )
    return item.donor


def _acs(
    name: str, a_reads: Callable[[ReasoningItem], ReasoningItem] | None = None
) -> Callable[..., list[ReasoningOutput]]:
    use_map = METHODS[name].map

    def run(
        items: Sequence[ReasoningItem],
        sender: Model,
        receiver: Model,
        cfg: ReasoningConfig,
        map: LinearMap | None,
    ) -> list[ReasoningOutput]:
        check_map([name], map)
        layers(name, cfg.k, cfg.j)
        start = time.perf_counter()
        grafted = _grafts(items, sender, receiver, cfg, map if use_map else None, name=name, a_reads=a_reads)
        seconds = (time.perf_counter() - start) / len(items)
        return [
            ReasoningOutput(text, n_a, n_b, 0, new, seconds, [text], len(items))
            for text, n_a, n_b, new in grafted
        ]

    return run


def ac_cot(
    item: ReasoningItem, sender: Model, receiver: Model, cfg: ReasoningConfig, map: LinearMap | None = None
) -> ReasoningOutput:
    """AC after chain of thought on A: A answers in text, then its state at its last token is grafted."""
    layers("ac-replace-cot", cfg.k, cfg.j)
    start = time.perf_counter()
    reasoning, _, message = answer(sender, question_prompt(item), cfg, a_decoding(cfg, item))
    [(text, n_a, n_b, new)] = _grafts([item], sender, receiver, cfg, None, [reasoning], name="ac-replace-cot")
    return ReasoningOutput(text, n_a, n_b, message, new, time.perf_counter() - start, [reasoning, text])


register("reasoning", "single-a")(_singles("single-a"))
register("reasoning", "single-b")(_singles("single-b"))
register("reasoning", "ac-replace")(_acs("ac-replace"))
register("reasoning", "ac-w-replace")(_acs("ac-w-replace"))
register("reasoning", "ac-replace-unrelated")(_acs("ac-replace-unrelated", a_reads=unrelated_item))
register("reasoning", "ac-replace-donor")(_acs("ac-replace-donor", a_reads=_donor))
register("reasoning", "ac-replace-cot")(ac_cot)


def batched_methods() -> list[str]:
    """The reasoning methods that run a list of items as one batch (:func:`run_reasoning_batch`)."""
    return [m.name for m in METHODS.values() if m.batched and "reasoning" in m.protocols]


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
    """Run one of the :func:`batched_methods` on several items, decoded as one left-padded batch.

    Greedy answers equal those of :func:`run_reasoning_method` item by item up
    to float rounding (padding changes the shapes of the matrix products); a
    sampled A (``a_temperature > 0``) runs item by item, each with its seed.
    Each output's ``seconds`` is the batch's wall time over its items.

    Raises:
        CommlibError: ``name`` is not batched, no items, or the method's settings missing.

    Example:
        >>> from commlib.models import load_model
        >>> from commlib.tasks.items import ReasoningItem
        >>> m = load_model("tiny-llama-random")
        >>> items = [ReasoningItem("What is 2 + 2?", "4"), ReasoningItem("And 30 + 50?", "80")]
        >>> len(run_reasoning_batch("single-b", items, m, m, ReasoningConfig(max_new_tokens=3)))
        2
    """
    [resolved] = check_methods([name], "reasoning")
    if not method(resolved).batched:
        raise CommlibError(f"{name} does not run in batches; batched methods: {', '.join(batched_methods())}")
    if not items:
        raise CommlibError("no items to run: pass at least one")
    batch: Callable[..., list[ReasoningOutput]] = implementation("reasoning", resolved)
    return batch(items, sender, receiver, cfg, map)


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

    Old names (``ac`` for ``ac-replace``) run the same method; the outputs are keyed by the names given.

    ``opening``: the debate's turns already taken (see :func:`commlib.protocols.debate.debate`).

    Raises:
        CommlibError: an unknown method, or its settings missing.
    """
    check_methods(names, "reasoning")
    rounds = {name: r for name in names if (r := debate_rounds(name, cfg)) is not None}
    turns = debate(item, sender, receiver, cfg, max(rounds.values()), opening) if rounds else []
    return {
        name: debate_output(item, turns, rounds[name])
        if name in rounds
        else _run_one(name, item, sender, receiver, cfg, map)
        for name in names
    }


def _run_one(
    name: str,
    item: ReasoningItem,
    sender: Model,
    receiver: Model,
    cfg: ReasoningConfig,
    map: LinearMap | None,
) -> ReasoningOutput:
    """Method ``name`` on one item (a batched method on a batch of one)."""
    impl = implementation("reasoning", name)
    if method(name).batched:
        return impl([item], sender, receiver, cfg, map)[0]
    return impl(item, sender, receiver, cfg, map)
