"""Reasoning benchmarks (GSM8k, MMLU, Biographies): single models, debate and AC, with compute.

:func:`run_reasoning` writes a resumable run directory (:class:`commlib.results.Run`): the methods'
outputs, single answers shared between runs (:class:`SharedAnswers`), each scored as its row
(:mod:`commlib.experiments.scoring`); :func:`read_reasoning` reads its ``results.json`` back.

Example:
    >>> reasoning_dir("runs", "mmlu:formal_logic", "a", "b", seed=0, n=20).as_posix()
    'runs/a__b/mmlu_formal_logic/seed0_n20'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from commlib import registry
from commlib.channels.vocab import vocabulary_settings
from commlib.combine import LinearMap
from commlib.errors import CommlibError
from commlib.experiments.held_out import fit_task_map, other_items_name
from commlib.experiments.judging import judge_biographies
from commlib.experiments.layers import SELECTION_N, choose_layers
from commlib.experiments.scoring import (
    REASONING_FIELDS,
    model_shapes,
    one_pass_flops,
    reasoning_row,
    reasoning_summary,
    score_stored_rows,
)
from commlib.graft import fit_map, map_layer
from commlib.models import Model
from commlib.protocols.debate import Turn, debate_rounds
from commlib.protocols.questions import ReasoningConfig, ReasoningOutput, question_prompt
from commlib.protocols.reasoning import (
    run_reasoning_batch,
    run_reasoning_methods,
    single_answer_key,
    single_output,
)
from commlib.results import TRUE_TEXT, AnswerStore, Run, package_versions, placement
from commlib.tasks.biographies import JUDGE_MAX_NEW_TOKENS, JUDGE_PROMPT
from commlib.tasks.items import with_donors
from commlib.tasks.pools import derangement
from commlib.tasks.reasoning import ReasoningItem, load_task

SINGLES = ("single-a", "single-b")
"""The methods of one model alone: their answers are shared between runs (:class:`SharedAnswers`)."""

BIOGRAPHIES_METRIC = "mean over people of the fraction of facts judged consistent (uncertain dropped)"


def run_reasoning(
    task: str,
    sender: Model,
    receiver: Model,
    methods: Sequence[str],
    *,
    out_dir: str | Path,
    n: int | None = 100,
    seed: int = 0,
    k: int | None = None,
    j: int | None = None,
    layers_from: Model | None = None,
    rounds: int = 2,
    max_new_tokens: int = 256,
    map: LinearMap | None = None,
    backend: str = "nnsight",
    source: str = "offline",
    a_temperature: float = 0.0,
    a_top_p: float = 0.9,
    a_seed: int = 0,
    judge: Model | None = None,
    answers: str | Path | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Reasoning methods on ``gsm8k``, ``mmlu:SUBJECT`` or ``biographies`` (paper Section 4.2); resumable.

    Per item and method, ``out_dir/items.csv`` keeps B's output (and the
    transcript), the extracted answer, wall time, token counts and analytic
    FLOPs (:func:`~commlib.experiments.scoring.reasoning_row`). Methods are those
    of :mod:`commlib.protocols.reasoning`, ``nld-r1,...,nld-r4`` included (one
    debate per item serves them all). ``results.json`` has per method the
    score with a 95% bootstrap CI, mean FLOPs (also relative to one forward
    pass of the smaller model over the mean prompt), mean wall time and
    generated tokens, and the configuration. With ``single-b`` among the
    methods, every other method also has ``vs_b``: its paired difference
    with B alone over the items both score (95% bootstrap CI) and the items
    it scores above (``better``: on GSM8k and MMLU, B's misses it fixes) and
    below B alone (``worse``: B's hits it breaks). A resumed run scores its
    stored outputs again, as the current answer extraction does.
    ``cipher-debate`` between models that tokenize differently records both
    projections in the settings (:func:`commlib.channels.vocab.vocabulary_settings`).

    The score is accuracy on GSM8k and MMLU. Biographies are scored by
    ``judge`` (:func:`judge_biographies`, cached in ``out_dir/judgements.jsonl``):
    the mean over people of the fraction of facts judged consistent. Without
    a judge they are generated only (score NaN). The judge is not part of the
    run's settings: re-running a directory with another judge judges the
    same biographies again, without regenerating them.

    Args:
        k: A's block for the AC methods (chosen on ``layers_from`` when given).
        j: B's block for the AC methods (likewise).
        layers_from: The model ``k`` and ``j`` were chosen on (e.g. by the games
            sweep of A = B = that model): they are mapped to A's and B's depth
            by :func:`commlib.graft.map_layer`, and both are recorded.
        a_temperature: A's sampling temperature (0: greedy), with ``a_top_p``
            and ``a_seed`` (see :class:`commlib.protocols.questions.ReasoningConfig`).
        judge: The Biographies judge model.
        answers: A :class:`commlib.results.AnswerStore` directory: ``single-a``
            and ``single-b`` answers found there are taken instead of generated
            again (:class:`SharedAnswers`), and this run's single answers, old
            and new, are added to it. Biographies' judgements are shared the
            same way (:func:`judge_biographies`).
        batch_size: Items decoded together by the methods that are one decode
            per item (:func:`commlib.protocols.reasoning.batched_methods`: the
            single models and AC with its controls, not the debates or
            ``ac-replace-cot``; see :func:`commlib.protocols.reasoning.run_reasoning_batch`): the same
            greedy answers up to float rounding, faster on a CPU. Not a setting
            of the directory: a run may resume with another batch size. A
            crash loses at most the batch in progress.

    Returns:
        The content of ``results.json``.
    """
    methods = registry.check_methods(methods, "reasoning")  # canonical names (ac: ac-replace), each once
    if batch_size < 1:
        raise CommlibError(f"batch_size must be at least 1, got {batch_size}")
    items = load_task(task, n, seed, source=source)  # type: ignore[arg-type]
    if "ac-replace-donor" in methods:
        items = with_donors(items, derangement(items, seed))
    k, j, chosen = _mapped_layers(k, j, layers_from, sender, receiver)
    cfg = ReasoningConfig(
        k=k,
        j=j,
        rounds=rounds,
        max_new_tokens=max_new_tokens,
        backend=backend,
        a_temperature=a_temperature,
        a_top_p=a_top_p,
        a_seed=a_seed,
    )
    settings = {
        "task": task,
        "sender": sender.name,
        "receiver": receiver.name,
        **asdict(cfg),
        "layers_chosen_on": chosen,
        "n": len(items),
        "seed": seed,
        "source": source,
        "map": asdict(map.info) if map is not None else None,
        **vocabulary_settings(methods, sender, receiver),  # cipher-debate across tokenizers, or refused
        "placement": placement(sender=sender, receiver=receiver),  # dtype, attention: compared on resume
    }
    run = Run(out_dir, settings, fields=REASONING_FIELDS)
    judged = task == "biographies"
    score_stored_rows(run, items, judged=judged)
    shared = SharedAnswers(answers, sender, receiver, cfg)
    shared.put_rows(run.rows, items)  # this directory's single answers serve other runs too
    pair = _Generation(run, sender, receiver, cfg, map, shared, judged)
    _generate(pair, methods, items, batch_size=batch_size, progress=progress)
    judge = judge if judged else None
    table = _scores(run, methods, items, judged, judge, backend=backend, answers=answers, progress=progress)
    unit = one_pass_flops(table, sender, receiver)
    result = {
        "task": task,
        "metric": BIOGRAPHIES_METRIC if judged else "accuracy",
        "methods": reasoning_summary(table, methods, unit=unit, seed=seed),
        "config": _recorded_config(settings, sender, receiver, items[0], unit, judge, answers, batch_size),
    }
    return run.write(result)


class SharedAnswers:
    """A run's ``single-a`` and ``single-b`` answers in an :class:`~commlib.results.AnswerStore`.

    A model alone answers a prompt the same in every pair (same backend and
    decoding, :func:`commlib.protocols.reasoning.single_answer_key`), so a run
    takes the answers stored there instead of generating them, and stores
    its own for other runs. Other methods are never stored; with no
    directory, nothing is.

    Example:
        >>> import tempfile
        >>> from commlib.models import load_model
        >>> m, cfg = load_model("tiny-llama-random"), ReasoningConfig()
        >>> item = ReasoningItem("What is 2 + 2?", "4")
        >>> with tempfile.TemporaryDirectory() as d:
        ...     SharedAnswers(d, m, m, cfg).put("single-b", item, single_output("single-b", "4", 30, 1, 0.5))
        ...     shared = SharedAnswers(d, m, m, cfg)  # another run, same pair and settings
        ...     shared.get("single-b", item).text, shared.get("nld", item)
        ('4', None)
    """

    def __init__(
        self, directory: str | Path | None, sender: Model, receiver: Model, cfg: ReasoningConfig
    ) -> None:
        self.store = AnswerStore(directory) if directory is not None else None
        self.sender, self.receiver, self.cfg = sender, receiver, cfg

    def _key(self, method: str, item: ReasoningItem) -> dict[str, Any]:
        return single_answer_key(method, item, self.sender, self.receiver, self.cfg)

    def get(self, method: str, item: ReasoningItem) -> ReasoningOutput | None:
        """The stored answer of ``method`` on ``item``, or ``None``."""
        hit = (
            self.store.get(self._key(method, item)) if self.store is not None and method in SINGLES else None
        )
        if hit is None:
            return None
        text, prompt, answer = hit["text"], hit["prompt_tokens"], hit["answer_tokens"]
        return single_output(method, text, prompt, answer, hit["seconds"], hit.get("batch", 1))

    def put(self, method: str, item: ReasoningItem, output: ReasoningOutput) -> None:
        """Store ``output`` of ``method`` on ``item`` (if ``method`` is a single one)."""
        if self.store is not None and method in SINGLES:
            answer = {
                "text": output.text,
                "prompt_tokens": output.prompt_a or output.prompt_b,
                "answer_tokens": output.answer,
                "seconds": output.seconds,
                "batch": output.batch,
            }
            self.store.put(self._key(method, item), answer)

    def outputs(self, methods: Sequence[str], item: ReasoningItem) -> dict[str, ReasoningOutput]:
        """The stored answers of ``methods`` on ``item``, by method."""
        return {m: o for m in methods if (o := self.get(m, item)) is not None}

    def put_rows(self, rows: Sequence[dict[str, str]], items: Sequence[ReasoningItem]) -> None:
        """Store the single answers among a run's ``rows`` (as :class:`commlib.results.Run` reads them)."""
        by_id = {item.id: item for item in items}
        for r in rows:
            if self.store is not None and r["method"] in SINGLES and r["item_id"] in by_id:
                prompt = int(r["prompt_a"]) or int(r["prompt_b"])
                answer, seconds, batch = int(r["answer_tokens"]), float(r["seconds"]), int(r["batch"])
                output = single_output(r["method"], r["output"], prompt, answer, seconds, batch)
                self.put(r["method"], by_id[r["item_id"]], output)


@dataclass(frozen=True)
class _Generation:
    """What generating a run's rows takes: the pair and its settings, the map, shared answers, the table."""

    run: Run
    sender: Model
    receiver: Model
    cfg: ReasoningConfig
    map: LinearMap | None
    shared: SharedAnswers
    judged: bool

    def add(self, item: ReasoningItem, outputs: dict[str, ReasoningOutput]) -> None:
        """Share and append each method's output on ``item`` as its row (flushed one by one)."""
        for method, output in outputs.items():
            self.shared.put(method, item, output)
            row = reasoning_row(
                item, method, output, self.sender, self.receiver, self.cfg, judged=self.judged
            )
            self.run.add([row])

    def batch(self, method: str, items: Sequence[ReasoningItem]) -> None:
        """Run ``method`` on ``items`` decoded together and append their rows."""
        outputs = run_reasoning_batch(method, items, self.sender, self.receiver, self.cfg, self.map)
        for item, output in zip(items, outputs, strict=True):
            self.add(item, {method: output})

    def each(
        self, methods: Sequence[str], item: ReasoningItem, *, debate: bool
    ) -> dict[str, ReasoningOutput]:
        """Run ``methods`` on ``item``; a debate opens with the item's single answers when it has both."""
        opening = _opening_round(self.run.rows, item.id) if debate else []
        return run_reasoning_methods(methods, item, self.sender, self.receiver, self.cfg, self.map, opening)


def _generate(
    pair: _Generation,
    methods: Sequence[str],
    items: Sequence[ReasoningItem],
    *,
    batch_size: int,
    progress: bool,
) -> None:
    """Run each of ``methods`` on the ``items`` without a row of it yet; the debates in one debate per item.

    A shared answer is taken instead of generated; the one-decode methods
    (``batched`` in :data:`commlib.registry.METHODS`) run ``batch_size`` items at a time.
    """
    done = pair.run.done("item_id", "method")
    debates = [m for m in methods if debate_rounds(m, pair.cfg) is not None]
    groups = [[m] for m in methods if m not in debates] + ([debates] if debates else [])
    for group in groups:
        batched = batch_size > 1 and len(group) == 1 and registry.method(group[0]).batched
        waiting: list[ReasoningItem] = []  # items waiting for a full batch
        with tqdm(total=len(items), desc=",".join(group), disable=not progress) as bar:
            for item in items:
                todo = [m for m in group if (item.id, m) not in done]
                outputs = pair.shared.outputs(todo, item)
                rest = [m for m in todo if m not in outputs]
                if rest and batched:
                    waiting.append(item)
                    if len(waiting) == batch_size:
                        pair.batch(group[0], waiting)
                        bar.update(len(waiting))
                        waiting = []
                    continue
                if rest:
                    outputs.update(pair.each(rest, item, debate=group is debates))
                pair.add(item, outputs)
                bar.update()
            if waiting:
                pair.batch(group[0], waiting)
                bar.update(len(waiting))


def _opening_round(rows: Sequence[dict[str, Any]], item_id: str) -> list[Turn]:
    """The debate's first round from the item's ``single-a`` and ``single-b`` rows, when both are there.

    Round one of a debate is each agent answering the question prompt with
    its own decoding, which is what the single methods do (same prompts,
    decoding and settings: one directory, one config), so their answers,
    token counts and wall times serve as that round unchanged.
    """
    mine = {r["method"]: r for r in rows if str(r["item_id"]) == item_id}
    if "single-a" not in mine or "single-b" not in mine:
        return []
    return [
        Turn(
            agent,
            json.loads(r["transcript"])[0],
            int(r[f"prompt_{agent}"]),
            int(r["answer_tokens"]),
            float(r["seconds"]),
        )
        for agent, r in (("a", mine["single-a"]), ("b", mine["single-b"]))
    ]


def _mapped_layers(
    k: int | None, j: int | None, layers_from: Model | None, sender: Model, receiver: Model
) -> tuple[int | None, int | None, dict[str, Any] | None]:
    """(k, j) at A's and B's depth, and what they were chosen on (``None`` unless ``layers_from``)."""
    if layers_from is None or k is None or j is None:
        return k, j, None
    depth = layers_from.info.n_layers
    chosen = {"model": layers_from.name, "k": k, "j": j}
    return map_layer(k, depth, sender.info.n_layers), map_layer(j, depth, receiver.info.n_layers), chosen


def _scores(
    run: Run,
    methods: Sequence[str],
    items: Sequence[ReasoningItem],
    judged: bool,
    judge: Model | None,
    **judging: Any,
) -> pd.DataFrame:
    """The run's rows of ``methods`` with their ``score``: 1 or 0, or the judge's (Biographies; NaN unjudged).

    ``judging``: :func:`judge_biographies`'s ``backend``, ``answers`` and ``progress``.
    """
    df = run.frame(keep_default_na=False, dtype={"extracted": str, "correct": str})
    df = df[df["method"].isin(methods)].copy()
    if not judged:
        df["score"] = df["correct"].astype(str).isin(TRUE_TEXT).astype(float)
        return df
    if judge is not None:
        scores = judge_biographies(run.dir, items, judge, methods=methods, **judging)
    else:
        scores = pd.DataFrame(columns=["item_id", "method", "score"])
    keyed = scores.set_index(["item_id", "method"])["score"]
    pairs = zip(df["item_id"].astype(str), df["method"], strict=True)
    df["score"] = [keyed.get(key, float("nan")) for key in pairs]
    return df


def _recorded_config(
    settings: dict[str, Any],
    sender: Model,
    receiver: Model,
    example: ReasoningItem,
    unit: float,
    judge: Model | None,
    answers: str | Path | None,
    batch_size: int,
) -> dict[str, Any]:
    """``results.json``'s ``config``: the settings, the models and their shapes, decoding, judge, versions."""
    shape_a, shape_b = model_shapes(sender, receiver)
    sampled = "sampled (temperature, top_p, seed per item and turn)"
    judging = None
    if judge is not None:
        judging = {
            "model": judge.info.to_dict(),
            "prompt": JUDGE_PROMPT,
            "decoding": "greedy",
            "max_new_tokens": JUDGE_MAX_NEW_TOKENS,
        }
    return {
        **settings,
        "sender": sender.info.to_dict(),
        "receiver": receiver.info.to_dict(),
        "shapes": {"sender": shape_a.to_dict(), "receiver": shape_b.to_dict()},
        "one_pass_flops": unit,
        "example_prompt": question_prompt(example),
        "decoding": {"a": "greedy" if settings["a_temperature"] <= 0 else sampled, "b": "greedy"},
        "judge": judging,
        "shared_answers": str(answers) if answers is not None else None,
        "batch_size": batch_size,
        "seconds": "wall time per item; items decoded together (items.csv: batch > 1) split it",
        "flops": "analytic, KV cache (commlib.compute.method_flops)",
        "ci": "95% percentile bootstrap, 1000 resamples",
        "versions": package_versions(),
        "placement": placement(sender=sender, receiver=receiver, **({"judge": judge} if judge else {})),
    }


def reasoning_dir(
    root: str | Path, task: str, sender: str, receiver: str, *, seed: int, n: int | None, variant: str = ""
) -> Path:
    """Where a :func:`run_reasoning` run lives under ``root`` (notebooks and scripts agree).

    ``variant`` names settings beyond the default ones (e.g. ``"cot"``,
    ``"sampled-t0.7"``), since one directory holds one set of settings.
    """
    name = f"seed{seed}_n{n}" + (f"_{variant}" if variant else "")
    return Path(root) / f"{sender}__{receiver}" / task.replace(":", "_") / name


def read_reasoning(out_dir: str | Path) -> pd.DataFrame:
    """A run's ``results.json`` as a table: one row per method with task, sender, receiver, k, j, seed.

    Columns: task, sender, receiver, method, accuracy, ci_low, ci_high (in
    [0, 1]), n, n_scored, flops, flops_vs_one_pass, seconds,
    generated_tokens, k, j, seed, judge (the judge's name or empty) and,
    where the run has B alone, the paired comparison with it: vs_b,
    vs_b_low, vs_b_high, better, worse (NaN on B's own row); where it has a
    control, the controlled method's paired gain over it: ``vs_<control>``,
    ``vs_<control>_low``, ``vs_<control>_high``.
    """
    result = json.loads((Path(out_dir) / "results.json").read_text())
    config = result["config"]
    judge = (config.get("judge") or {}).get("model", {}).get("name", "")
    rows = []
    for method, values in result["methods"].items():
        values = dict(values)
        if (paired := values.pop("vs_b", None)) is not None:
            values |= {
                "vs_b": paired["difference"],
                "vs_b_low": paired["ci_low"],
                "vs_b_high": paired["ci_high"],
                "better": paired["better"],
                "worse": paired["worse"],
            }
        for control, vs in values.pop("vs_control", {}).items():
            values |= {f"vs_{control}": vs["difference"], f"vs_{control}_low": vs["ci_low"],
                       f"vs_{control}_high": vs["ci_high"]}  # fmt: skip
        rows.append(
            {
                "task": result["task"],
                "sender": config["sender"]["name"],
                "receiver": config["receiver"]["name"],
                "method": registry.canonical(method),  # a run stored under an old name: the new one
                **values,
                "k": config["k"],
                "j": config["j"],
                "seed": config["seed"],
                "judge": judge,
            }
        )
    return pd.DataFrame(rows)


def run_pair_reasoning(
    task: str,
    sender: Model,
    receiver: Model,
    methods: Sequence[str],
    *,
    runs_root: str | Path,
    sweep_root: str | Path,
    game: str = "countries",
    n: int | None = 100,
    seed: int = 0,
    variant: str = "",
    n_map: int = 3072,
    map_source: str = "lambada",
    selection_n: int = SELECTION_N,
    progress: bool = True,
    **options: Any,
) -> pd.DataFrame:
    """:func:`run_reasoning` as the notebooks run it, resumable: layers from B's sweep, W cached.

    (k, j) are :func:`choose_layers` of B (A = B = receiver, last position,
    ``selection_n`` items of seed 0, cached under ``sweep_root``), and
    :func:`run_reasoning` maps k to A's depth. With ``ac-w`` among the
    methods, W is fitted once on ``n_map`` LAMBADA sentences at A's mapped
    block and B's j, and cached under ``runs_root/maps``; the map is part of a
    run directory's settings, so a (pair, task) directory is run with ``ac-w``
    always or never. ``map_source="task"`` fits an in-distribution W instead,
    on up to ``n_map`` other items of the task (:func:`~commlib.experiments.held_out.other_items`: none the
    run scores), each read in the prompt format at the last token as AC reads
    it; give such a run its own ``variant``. The run lives in
    :func:`reasoning_dir` (``variant`` for other settings); ``options`` go to
    :func:`run_reasoning`. Single-model
    answers are shared between pairs through ``runs_root/answers``
    (:class:`commlib.results.AnswerStore`): a model's answers alone are
    generated (on Biographies, also judged) once per task, not once per pair.

    Returns:
        :func:`read_reasoning` of the run.
    """
    if map_source not in ("lambada", "task"):
        raise CommlibError(f"unknown map_source {map_source!r}; use lambada or task")
    pick = choose_layers(
        receiver, game, sweep_root=sweep_root, n=selection_n, positions=("last",), progress=progress
    )
    k, j = int(pick["k"]), int(pick["j"])
    lin = None
    if any(registry.method(m).map for m in methods):  # ac-w-replace (old name ac-w)
        k_a = map_layer(k, receiver.info.n_layers, sender.info.n_layers)
        lin = _cached_map(task, sender, receiver, k_a, j, runs_root, n_map, map_source, n=n, seed=seed)
    out = reasoning_dir(runs_root, task, sender.name, receiver.name, seed=seed, n=n, variant=variant)
    run_reasoning(
        task,
        sender,
        receiver,
        methods,
        out_dir=out,
        n=n,
        seed=seed,
        k=k,
        j=j,
        layers_from=receiver,
        map=lin,
        answers=Path(runs_root) / "answers",
        progress=progress,
        **options,
    )
    return read_reasoning(out)


def _cached_map(
    task: str,
    sender: Model,
    receiver: Model,
    k: int,
    j: int,
    runs_root: str | Path,
    n_map: int,
    map_source: str,
    *,
    n: int | None,
    seed: int,
) -> LinearMap:
    """AC-W's map from A's block ``k`` to B's ``j``, fitted once and cached under ``runs_root/maps``.

    Fitted on ``n_map`` LAMBADA sentences, or with ``map_source="task"`` on the
    items beside a run of ``n`` items with ``seed`` (:func:`~commlib.experiments.held_out.fit_task_map`).
    """
    name = f"{sender.name}__{receiver.name}_k{k}_j{j}_n{n_map}"
    if map_source == "task":
        name += f"_{other_items_name(task, seed, n)}"
    map_dir = Path(runs_root) / "maps" / name
    if not (map_dir / "map.json").exists():
        if map_source == "task":
            fitted = fit_task_map(task, sender, receiver, k, j, n_map=n_map, n_eval=n, seed=seed)
        else:
            fitted = fit_map(sender, receiver, k, j, n=n_map)
        fitted.save(map_dir)
    return LinearMap.load(map_dir)
