"""Reasoning benchmarks (GSM8k, MMLU, Biographies): single models, debate and AC, with compute."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from commlib.protocols.debate import Turn
    from commlib.tasks.reasoning import ReasoningItem

from commlib.combine import LinearMap
from commlib.errors import CommlibError
from commlib.experiments.judging import judge_biographies
from commlib.experiments.layers import SELECTION_N, choose_layers
from commlib.models import Model
from commlib.results import (
    append_rows,
    bootstrap_ci,
    claim_run_dir,
    package_versions,
    paired_difference,
    write_json,
)

REASONING_FIELDS = (
    "item_id",
    "method",
    "answer",
    "extracted",
    "correct",
    "output",
    "transcript",
    "seconds",
    "prompt_a",
    "prompt_b",
    "message_tokens",
    "answer_tokens",
    "flops",
    "batch",
)


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
    FLOPs (:func:`commlib.compute.method_flops`, KV cache). Methods are those
    of :mod:`commlib.protocols.reasoning`, ``nld-r1,...,nld-r4`` included (one
    debate per item serves them all). ``results.json`` has per method the
    score with a 95% bootstrap CI, mean FLOPs (also relative to one forward
    pass of the smaller model over the mean prompt), mean wall time and
    generated tokens, and the configuration. With ``single-b`` among the
    methods, every other method also has ``vs_b``: its paired difference
    with B alone over the items both score (95% bootstrap CI) and the items
    it scores above (``better``: on GSM8k and MMLU, B's misses it fixes) and
    below B alone (``worse``: B's hits it breaks).

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
            again (a model alone answers the same in every pair), and this
            run's single answers, old and new, are added to it. Biographies'
            judgements are shared the same way (:func:`judge_biographies`).
        batch_size: Items decoded together by the methods that are one decode
            per item (``single-a``, ``single-b``, ``ac``, ``ac-w``, ``ac-unrelated``; see
            :func:`commlib.protocols.reasoning.run_reasoning_batch`): the same
            greedy answers up to float rounding, faster on a CPU. Not a setting
            of the directory: a run may resume with another batch size. A
            crash loses at most the batch in progress.

    Returns:
        The content of ``results.json``.
    """
    import json as _json

    from tqdm.auto import tqdm

    from commlib.compute import Shape, forward_flops, method_flops
    from commlib.graft import map_layer
    from commlib.protocols.debate import debate_rounds
    from commlib.protocols.questions import ReasoningConfig, question_prompt
    from commlib.protocols.reasoning import (
        BATCHED_METHODS,
        check_methods,
        compute_kind,
        run_reasoning_batch,
        run_reasoning_methods,
        single_answer_key,
        single_output,
    )
    from commlib.results import AnswerStore
    from commlib.tasks.biographies import JUDGE_MAX_NEW_TOKENS, JUDGE_PROMPT
    from commlib.tasks.reasoning import extract_answer, is_correct, load_task

    methods = list(dict.fromkeys(methods))
    check_methods(methods)
    if batch_size < 1:
        raise CommlibError(f"batch_size must be at least 1, got {batch_size}")
    items = load_task(task, n, seed, source=source)  # type: ignore[arg-type]
    chosen = None
    if layers_from is not None and k is not None and j is not None:
        chosen = {"model": layers_from.name, "k": k, "j": j}
        depth = layers_from.info.n_layers
        k, j = map_layer(k, depth, sender.info.n_layers), map_layer(j, depth, receiver.info.n_layers)
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
    out = Path(out_dir)
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
    }
    claim_run_dir(out, settings)
    path = out / "items.csv"
    judged = task == "biographies"
    text = {"extracted": str, "correct": str}
    rows = pd.read_csv(path, keep_default_na=False, dtype=text).to_dict("records") if path.exists() else []
    if rows:
        # Older files: rows of before batching ran alone; rows are scored again from their outputs, so a
        # run scores as the current answer extraction does.
        by_item = {item.id: item for item in items}
        updated = [
            {"batch": 1, **r, **({} if judged else _scored(by_item.get(str(r["item_id"])), r))} for r in rows
        ]
        if any(
            {k: str(v) for k, v in u.items()} != {k: str(v) for k, v in r.items()}
            for u, r in zip(updated, rows, strict=True)
        ):
            pd.DataFrame(updated, columns=list(REASONING_FIELDS)).to_csv(
                path.with_suffix(".tmp"), index=False
            )
            path.with_suffix(".tmp").replace(path)
        rows = updated
    done = {(str(r["item_id"]), r["method"]) for r in rows}
    shape_a, shape_b = Shape.from_config(sender.hf.config), Shape.from_config(receiver.hf.config)
    debates = [m for m in methods if debate_rounds(m, cfg) is not None]
    groups = [[m] for m in methods if m not in debates] + ([debates] if debates else [])
    store = AnswerStore(answers) if answers is not None else None
    singles = ("single-a", "single-b")

    def shared_key(method: str, item: Any) -> dict[str, Any]:
        return single_answer_key(method, item, sender, receiver, cfg)

    def share(method: str, item: Any, text: str, prompt: int, answer: int, secs: float, batch: int) -> None:
        if store is not None and method in singles:
            stored = {
                "text": text,
                "prompt_tokens": prompt,
                "answer_tokens": answer,
                "seconds": secs,
                "batch": batch,
            }
            store.put(shared_key(method, item), stored)

    if store is not None:  # this directory's single answers serve other runs too
        by_id = {item.id: item for item in items}
        for r in rows:
            if r["method"] in singles and str(r["item_id"]) in by_id:
                prompt = int(r["prompt_a"]) or int(r["prompt_b"])
                share(
                    r["method"],
                    by_id[str(r["item_id"])],
                    r["output"],
                    prompt,
                    int(r["answer_tokens"]),
                    float(r["seconds"]),
                    int(r["batch"]),
                )

    def record(item: Any, outputs: dict[str, Any]) -> None:
        for method, o in outputs.items():
            share(method, item, o.text, o.prompt_a or o.prompt_b, o.answer, o.seconds, o.batch)
            flops = method_flops(
                compute_kind(method),
                shape_a,
                shape_b,
                prompt_a=o.prompt_a,
                prompt_b=o.prompt_b,
                message=o.message,
                answer=o.answer,
                k=cfg.k,
                rounds=debate_rounds(method, cfg) or rounds,
            )["total"]
            row = {
                "item_id": item.id,
                "method": method,
                "answer": item.answer,
                "extracted": extract_answer(item, o.text) or "",
                "correct": "" if judged else is_correct(item, o.text),
                "output": o.text,
                "transcript": _json.dumps(o.transcript),
                "seconds": o.seconds,
                "prompt_a": o.prompt_a,
                "prompt_b": o.prompt_b,
                "message_tokens": o.message,
                "answer_tokens": o.answer,
                "flops": flops,
                "batch": o.batch,
            }
            append_rows(path, REASONING_FIELDS, [row])
            rows.append(row)

    def stored(method: str, item: Any) -> Any:
        hit = store.get(shared_key(method, item)) if store is not None and method in singles else None
        if hit is None:
            return None
        return single_output(
            method,
            hit["text"],
            hit["prompt_tokens"],
            hit["answer_tokens"],
            hit["seconds"],
            hit.get("batch", 1),
        )

    def run_batch(method: str, batch: list[Any]) -> None:
        outputs = run_reasoning_batch(method, batch, sender, receiver, cfg, map)
        for item, o in zip(batch, outputs, strict=True):
            record(item, {method: o})

    for group in groups:
        batched = batch_size > 1 and len(group) == 1 and group[0] in BATCHED_METHODS
        pending: list[Any] = []  # items waiting for a full batch
        with tqdm(total=len(items), desc=",".join(group), disable=not progress) as bar:
            for item in items:
                todo = [m for m in group if (item.id, m) not in done]
                outputs = {m: o for m in todo if (o := stored(m, item)) is not None}
                rest = [m for m in todo if m not in outputs]
                if rest and batched:
                    pending.append(item)
                    if len(pending) == batch_size:
                        run_batch(group[0], pending)
                        bar.update(len(pending))
                        pending = []
                    continue
                if rest:
                    opening = _opening_round(rows, item.id) if group is debates else []
                    outputs.update(run_reasoning_methods(rest, item, sender, receiver, cfg, map, opening))
                record(item, outputs)
                bar.update()
            if pending:
                run_batch(group[0], pending)
                bar.update(len(pending))
    df = pd.DataFrame(rows)
    df = df[df["method"].isin(methods)].copy()
    if judged:
        if judge is not None:
            scores = judge_biographies(
                out, items, judge, methods=methods, backend=backend, answers=answers, progress=progress
            )
        else:
            scores = pd.DataFrame(columns=["item_id", "method", "score"])
        keyed = scores.set_index(["item_id", "method"])["score"]
        pairs = zip(df["item_id"].astype(str), df["method"], strict=True)
        df["score"] = [keyed.get(key, float("nan")) for key in pairs]
    else:
        df["score"] = df["correct"].astype(str).isin(["True", "1"]).astype(float)
    smaller = min((shape_a, shape_b), key=lambda s: forward_flops(s, 1))
    unit = forward_flops(smaller, max(1, round(float(df[["prompt_a", "prompt_b"]].max(axis=1).mean()))))
    summary = {}
    for method in methods:
        sub = df[df["method"] == method]
        scored = sub["score"].dropna()
        lo, hi = bootstrap_ci(scored.tolist(), seed=seed)
        summary[method] = {
            "accuracy": float(scored.mean()) if len(scored) else float("nan"),
            "ci_low": lo,
            "ci_high": hi,
            "n": len(sub),
            "n_scored": len(scored),
            "flops": float(sub["flops"].mean()),
            "flops_vs_one_pass": float(sub["flops"].mean()) / unit,
            "seconds": float(sub["seconds"].mean()),
            "batch_sizes": sorted({int(b) for b in sub["batch"]}),
            "generated_tokens": float((sub["message_tokens"] + sub["answer_tokens"]).mean()),
        }
    if "single-b" in methods:
        by_item = df.pivot(index="item_id", columns="method", values="score")
        for method in methods:
            if method != "single-b":
                summary[method]["vs_b"] = _paired_with(by_item[method], by_item["single-b"], seed=seed)
    a_decoding = "greedy" if a_temperature <= 0 else "sampled (temperature, top_p, seed per item and turn)"
    judging = (
        {
            "model": judge.info.to_dict(),
            "prompt": JUDGE_PROMPT,
            "decoding": "greedy",
            "max_new_tokens": JUDGE_MAX_NEW_TOKENS,
        }
        if judged and judge is not None
        else None
    )
    result = {
        "task": task,
        "metric": "mean over people of the fraction of facts judged consistent (uncertain dropped)"
        if judged
        else "accuracy",
        "methods": summary,
        "config": {
            **settings,
            "sender": sender.info.to_dict(),
            "receiver": receiver.info.to_dict(),
            "shapes": {"sender": shape_a.to_dict(), "receiver": shape_b.to_dict()},
            "one_pass_flops": unit,
            "example_prompt": question_prompt(items[0]),
            "decoding": {"a": a_decoding, "b": "greedy"},
            "judge": judging,
            "shared_answers": str(answers) if answers is not None else None,
            "batch_size": batch_size,
            "seconds": "wall time per item; items decoded together (items.csv: batch > 1) split it",
            "flops": "analytic, KV cache (commlib.compute.method_flops)",
            "ci": "95% percentile bootstrap, 1000 resamples",
            "versions": package_versions(),
        },
    }
    write_json(out / "results.json", result)
    return result


def _paired_with(scores: pd.Series, baseline: pd.Series, *, seed: int) -> dict[str, float | int]:
    """``scores`` against ``baseline`` on the items both score: paired difference, items above and below."""
    both = pd.concat([scores, baseline], axis=1, keys=["method", "baseline"]).dropna()
    difference, lo, hi = paired_difference(both["method"], both["baseline"], seed=seed)
    return {
        "difference": difference,
        "ci_low": lo,
        "ci_high": hi,
        "n": len(both),
        "better": int((both["method"] > both["baseline"]).sum()),
        "worse": int((both["method"] < both["baseline"]).sum()),
    }


def _scored(item: Any, row: dict[str, Any]) -> dict[str, Any]:
    """A stored row's ``extracted`` and ``correct``, from its output (as stored when the item is unknown)."""
    from commlib.tasks.reasoning import extract_answer, is_correct

    if item is None:
        return {}
    return {
        "extracted": extract_answer(item, str(row["output"])) or "",
        "correct": is_correct(item, str(row["output"])),
    }


def _opening_round(rows: Sequence[dict[str, Any]], item_id: str) -> list[Turn]:
    """The debate's first round from the item's ``single-a`` and ``single-b`` rows, when both are there.

    Round one of a debate is each agent answering the question prompt with
    its own decoding, which is what the single methods do (same prompts,
    decoding and settings: one directory, one config), so their answers,
    token counts and wall times serve as that round unchanged.
    """
    import json as _json

    from commlib.protocols.debate import Turn

    mine = {r["method"]: r for r in rows if str(r["item_id"]) == item_id}
    if "single-a" not in mine or "single-b" not in mine:
        return []
    return [
        Turn(
            agent,
            _json.loads(r["transcript"])[0],
            int(r[f"prompt_{agent}"]),
            int(r["answer_tokens"]),
            float(r["seconds"]),
        )
        for agent, r in (("a", mine["single-a"]), ("b", mine["single-b"]))
    ]


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
    vs_b_low, vs_b_high, better, worse (NaN on B's own row).
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
        rows.append(
            {
                "task": result["task"],
                "sender": config["sender"]["name"],
                "receiver": config["receiver"]["name"],
                "method": method,
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
    on up to ``n_map`` other items of the task (:func:`other_items`: none the
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
    from commlib.graft import fit_map, map_layer

    if map_source not in ("lambada", "task"):
        raise CommlibError(f"unknown map_source {map_source!r}; use lambada or task")
    pick = choose_layers(
        receiver, game, sweep_root=sweep_root, n=selection_n, positions=("last",), progress=progress
    )
    k, j = int(pick["k"]), int(pick["j"])
    lin = None
    if "ac-w" in methods:
        k_a = map_layer(k, receiver.info.n_layers, sender.info.n_layers)
        name = f"{sender.name}__{receiver.name}_k{k_a}_j{j}_n{n_map}"
        if map_source == "task":
            name += f"_{other_items_name(task, seed, n)}"
        map_dir = Path(runs_root) / "maps" / name
        if not (map_dir / "map.json").exists():
            if map_source == "task":
                lin = fit_task_map(task, sender, receiver, k_a, j, n_map=n_map, n_eval=n, seed=seed)
            else:
                lin = fit_map(sender, receiver, k_a, j, n=n_map)
            lin.save(map_dir)
        lin = LinearMap.load(map_dir)
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


REASONING_REFERENCE_SEED = 7_919
"""Seed (plus the run's) of :func:`other_items`: B's manifold and the in-distribution W are fitted on them."""


def other_items(task: str, evaluated: Sequence[ReasoningItem], n: int, seed: int = 0) -> list[ReasoningItem]:
    """``n`` items of ``task`` not among ``evaluated`` (seed: :data:`REASONING_REFERENCE_SEED` + ``seed``).

    What is fitted on a task next to a run of it (B's manifold in
    :func:`run_reasoning_distance`, the in-distribution W of
    :func:`run_pair_reasoning`) never sees an item the run scores.
    """
    from commlib.tasks.reasoning import load_task, sample_items

    ids = {it.id for it in evaluated}
    others = [it for it in load_task(task, n=None) if it.id not in ids]
    return sample_items(others, n, REASONING_REFERENCE_SEED + seed)


def other_items_name(task: str, seed: int, n_eval: int | None) -> str:
    """How a cache names :func:`other_items` of a run of ``n_eval`` items of ``task`` with ``seed``.

    Example:
        >>> other_items_name("mmlu:formal_logic", 0, 20)
        'mmlu_formal_logic-other-than-seed0-n20'
    """
    return f"{task.replace(':', '_')}-other-than-seed{seed}-n{n_eval}"


def fit_task_map(
    task: str,
    sender: Model,
    receiver: Model,
    k: int,
    j: int,
    *,
    n_map: int,
    n_eval: int | None,
    seed: int = 0,
    epochs: int = 10,
    backend: str = "nnsight",
) -> LinearMap:
    """In-distribution ``W``, fitted on ``n_map`` items of ``task`` that a run of ``n_eval`` does not score.

    The paper fits it on GSM8k's train split, which no offline source ships;
    this fits it on :func:`other_items` of the run (seed ``seed``, ``n_eval``
    items), each read in the prompt format at its last token, where AC reads
    A and writes B (:func:`commlib.graft.fit_map` with ``prompts``).

    Example:
        >>> from commlib.models import load_model
        >>> a, b = load_model("tiny-llama-random"), load_model("tiny-llama-wide-random")
        >>> w = fit_task_map("gsm8k", a, b, 1, 1, n_map=8, n_eval=4)
        >>> w.weight.shape, w.info.corpus, w.info.n
        (torch.Size([96, 64]), 'gsm8k other items', 8)
    """
    from commlib.graft import fit_map
    from commlib.protocols.questions import question_prompt
    from commlib.tasks.reasoning import load_task

    fitted = other_items(task, load_task(task, n_eval, seed), n_map, seed)
    return fit_map(
        sender,
        receiver,
        k,
        j,
        corpus=f"{task} other items",
        n=len(fitted),
        epochs=epochs,
        backend=backend,
        prompts=[question_prompt(it) for it in fitted],
    )
