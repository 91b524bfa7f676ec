"""Reasoning tasks: ``commlib reasoning`` (GSM8k, MMLU, Biographies)."""

from __future__ import annotations

import argparse
from typing import Any

from commlib.cli.base import add_command, check_run, load_map, load_pair, load_placed
from commlib.config import ReasoningRun


def reasoning(cfg: ReasoningRun) -> int:
    from commlib.experiments import run_reasoning

    check_run(cfg.methods, "reasoning", k=cfg.k, j=cfg.j, map=cfg.map)
    sender, receiver = load_pair(cfg.pair)
    loaded = {sender.name: sender, receiver.name: receiver}

    def model(name: str) -> Any:
        return (
            loaded[name] if name in loaded else loaded.setdefault(name, load_placed(name, cfg.pair.placement))
        )

    result = run_reasoning(
        cfg.task,
        sender,
        receiver,
        list(cfg.methods),
        out_dir=cfg.run.out,
        n=cfg.run.n,
        seed=cfg.run.seed,
        k=cfg.k,
        j=cfg.j,
        layers_from=model(cfg.layers_from) if cfg.layers_from else None,
        rounds=cfg.rounds,
        max_new_tokens=cfg.max_new_tokens,
        map=load_map(cfg.map),
        backend=cfg.pair.backend,
        source=cfg.source,
        a_temperature=cfg.a_temperature,
        a_top_p=cfg.a_top_p,
        a_seed=cfg.a_seed,
        judge=model(cfg.judge) if cfg.task == "biographies" and cfg.judge else None,
        answers=cfg.answers,
        batch_size=cfg.batch_size,
    )
    print_table(result, "score" if cfg.task == "biographies" else "accuracy")
    config = result["config"]
    if config["layers_chosen_on"]:
        print(
            f"layers (k, j) = ({config['k']}, {config['j']}), mapped by relative depth from "
            f"{config['layers_chosen_on']}"
        )
    judged = " and judgements.jsonl" if config["judge"] else ""
    print(f"wrote {cfg.run.out}/results.json, items.csv{judged}")
    return 0


def print_table(result: dict[str, Any], label: str) -> None:
    """Each method's score, interval, compute and time; next to single-b, each one's paired difference."""
    width = max(len("method"), *map(len, result["methods"])) + 1
    paired = "single-b" in result["methods"]
    print(
        f"{'method':<{width}}{label:>9}{'95% CI':>16}{'FLOPs/pass':>12}{'seconds':>9}{'n':>5}"
        + (f"{'- B':>8}{'95% CI':>18}{'better/worse':>14}" if paired else "")
    )
    for method, r in result["methods"].items():
        ci = f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        line = (
            f"{method:<{width}}{r['accuracy']:>9.2f}{ci:>16}{r['flops_vs_one_pass']:>12.1f}"
            f"{r['seconds']:>9.1f}{r['n']:>5}"
        )
        if "vs_b" in r:
            vs = r["vs_b"]
            vs_ci, counts = f"[{vs['ci_low']:+.2f}, {vs['ci_high']:+.2f}]", f"{vs['better']}/{vs['worse']}"
            line += f"{vs['difference']:>+8.2f}{vs_ci:>18}{counts:>14}"
        print(line)
    for method, r in result["methods"].items():
        for control, vs in r.get("vs_control", {}).items():
            print(f"{method} - {control}: {vs['difference']:+.2f} [{vs['ci_low']:+.2f}, {vs['ci_high']:+.2f}]"
                  f" over {vs['n']} items")  # fmt: skip


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``reasoning``."""
    add_command(
        commands,
        "reasoning",
        reasoning,
        config=ReasoningRun,
        help="GSM8k, MMLU or Biographies: single models, debate and AC, with their compute; resumable",
        example="commlib reasoning --task gsm8k --sender qwen2.5-coder-0.5b --receiver qwen2.5-coder-1.5b "
        "--k 16 --j 20 --n 100 --out runs/gsm8k_qwen",
    )
