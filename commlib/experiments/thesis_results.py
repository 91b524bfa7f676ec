"""What a ``commlib thesis`` run leaves: the summary from ``items.csv`` alone, the record, the published copy.

:func:`summarise_thesis` turns the per-item rows into one row per channel
(accuracy, its content control, paired gains with 95% intervals, the
distances' quartiles); :func:`read_thesis` does it for a directory, so every
number under ``results/thesis/`` can be recomputed without a model.
:func:`merge_record` keeps ``results.json`` whole when a later run adds
channels to a directory; :func:`publish_thesis` copies the compact files.

Example:
    >>> pair_name("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
    'qwen2.5-coder-0.5b_to_qwen2.5-coder-1.5b'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from commlib.errors import CommlibError
from commlib.results import TRUE_TEXT, bootstrap_ci, paired_difference

SUMMARY_FIELDS = (
    "channel", "method", "depth", "k", "j", "n", "accuracy", "ci_low", "ci_high",
    "control_accuracy", "control_ci_low", "control_ci_high",
    "vs_control", "vs_control_low", "vs_control_high",
    "vs_silent", "vs_silent_low", "vs_silent_high",
    "follows_donor", "kl_median", "kl_q1", "kl_q3",
    "displacement_median", "displacement_q1", "displacement_q3",
)  # fmt: skip
"""Columns of ``summary.csv``: one row per channel (and depth for AC)."""


def summarise_thesis(items: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One row per channel from ``items.csv`` alone: accuracy, its control, paired gains, distances.

    Gains are paired differences over the items both sides scored, with
    95% bootstrap intervals: ``vs_control`` (own message minus another
    item's, the test of communication) and ``vs_silent`` (minus B alone).
    ``follows_donor``: how often B, given another item's message, gave that
    item's answer. Distances are over the own-message rows.
    """
    df = items.assign(
        ok=items["correct"].astype(str).isin(TRUE_TEXT).astype(float),
        follows=items["follows_donor"].astype(str).isin(TRUE_TEXT).astype(float),
        kl=pd.to_numeric(items["kl"]),
        displacement=pd.to_numeric(items["displacement"]),
        depth=items["depth"].fillna("").astype(str).replace("nan", ""),
    )
    silent = df[df["method"] == "silent"].set_index("item_id")["ok"]
    records = []
    for (method, depth), g in df.groupby(["method", "depth"], sort=False):
        own = g[g["message"].isin(["own", "none"])].set_index("item_id")
        ctrl = g[g["message"] == "control"].set_index("item_id")
        acc_lo, acc_hi = bootstrap_ci(own["ok"].tolist(), seed=seed)
        c_lo, c_hi = bootstrap_ci(ctrl["ok"].tolist(), seed=seed)
        vc = paired_difference(own["ok"], ctrl["ok"], seed=seed) if len(ctrl) else (np.nan,) * 3
        vs = paired_difference(own["ok"], silent, seed=seed) if method != "silent" else (np.nan,) * 3
        q = own[["kl", "displacement"]].quantile([0.25, 0.5, 0.75])
        first = g.iloc[0]
        records.append(
            {
                "channel": f"{method}@{depth}" if depth else method,
                "method": method,
                "depth": depth,
                "k": first["k"],
                "j": first["j"],
                "n": len(own),
                "accuracy": own["ok"].mean(),
                "ci_low": acc_lo,
                "ci_high": acc_hi,
                "control_accuracy": ctrl["ok"].mean() if len(ctrl) else np.nan,
                "control_ci_low": c_lo,
                "control_ci_high": c_hi,
                "vs_control": vc[0],
                "vs_control_low": vc[1],
                "vs_control_high": vc[2],
                "vs_silent": vs[0],
                "vs_silent_low": vs[1],
                "vs_silent_high": vs[2],
                "follows_donor": ctrl["follows"].mean() if len(ctrl) else np.nan,
                "kl_median": q.loc[0.5, "kl"],
                "kl_q1": q.loc[0.25, "kl"],
                "kl_q3": q.loc[0.75, "kl"],
                "displacement_median": q.loc[0.5, "displacement"],
                "displacement_q1": q.loc[0.25, "displacement"],
                "displacement_q3": q.loc[0.75, "displacement"],
            }
        )
    return pd.DataFrame.from_records(records, columns=list(SUMMARY_FIELDS))


def read_thesis(out_dir: str | Path, seed: int | None = None) -> pd.DataFrame:
    """The summary of a run directory (or of committed ``results/``), recomputed from its ``items.csv``."""
    path = Path(out_dir) / "items.csv"
    if not path.exists():
        raise CommlibError(f"{path} does not exist: run `commlib thesis --out {out_dir}` first")
    if seed is None:
        run_json = Path(out_dir) / "run.json"
        seed = int(pd.read_json(run_json, typ="series")["seed"]) if run_json.exists() else 0
    return summarise_thesis(pd.read_csv(path, dtype=str, keep_default_na=False), seed=seed)


PUBLISHED = ("items.csv", "run.json", "results.json", "selection.csv", "selection.json")
"""The compact files of a run that go under ``results/`` (no model states, no W, no adapter)."""


def publish_thesis(out_dir: str | Path, dest: str | Path) -> Path:
    """Copy a run's compact results (:data:`PUBLISHED`) to ``dest``, e.g. ``results/thesis/<pair>``.

    ``dest/summary.csv`` is recomputed from the rows (:func:`read_thesis`),
    so a run still going publishes what it finished; every number in it can
    be recomputed from ``dest/items.csv`` without rerunning a model.

    Raises:
        CommlibError: ``out_dir`` has no ``items.csv``.
    """
    import shutil

    src, out = Path(out_dir), Path(dest)
    if not (src / "items.csv").exists():
        raise CommlibError(f"{src} holds no items.csv: run `commlib thesis --out {src}` first")
    out.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED:
        if (src / name).exists():
            shutil.copyfile(src / name, out / name)
    read_thesis(out).to_csv(out / "summary.csv", index=False)
    return out


def pair_name(sender: str, receiver: str) -> str:
    """The directory name of a pair's results: ``qwen2.5-coder-0.5b_to_qwen2.5-coder-1.5b``."""
    return f"{sender}_to_{receiver}"


RECORDED = ("selected_layers", "kv_layers", "map", "adapter", "fuser")
"""What a run records of the channels that need it; a later run of other channels keeps it."""


def previous_record(out: Path) -> dict[str, Any] | None:
    """The directory's ``results.json`` from an earlier run, if any."""
    path = out / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def merge_record(previous: dict[str, Any] | None, now: dict[str, Any]) -> dict[str, Any]:
    """``results.json`` of a run that added channels to a directory: the record of both runs.

    The conditions of the earlier runs stay (a condition run again takes its
    new record), and so do their chosen layers, W, adapter and fuser
    (:data:`RECORDED`) where this run did not set them; the summary is over
    every row either way. Without this, ``--channels kv-fuser`` on a finished
    directory would leave a record of the fuser alone.

    Example:
        >>> before = {"conditions": [{"name": "nl"}], "selected_layers": [23, 11]}
        >>> now = {"conditions": [{"name": "kv-fuser"}], "selected_layers": None}
        >>> merged = merge_record(before, now)
        >>> [c["name"] for c in merged["conditions"]], merged["selected_layers"]
        (['nl', 'kv-fuser'], [23, 11])
    """
    if not previous:
        return now
    fresh = {c["name"]: c for c in now["conditions"]}
    kept = [fresh.pop(c["name"], c) for c in previous.get("conditions", [])]
    merged = {**now, "conditions": kept + list(fresh.values())}
    for key in RECORDED:
        if merged.get(key) is None:
            merged[key] = previous.get(key)
    return merged
