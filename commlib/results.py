"""Scoring, bootstrap confidence intervals, and the resumable run directory (:class:`Run`).

A run writes one CSV row per (item, method) as soon as it is scored and
flushes, so a crash loses no finished rows; re-running with the same output
directory skips what is done.

Example:
    >>> first_answer_line("  Greece.\\nIt is in Europe.")
    'Greece.'
    >>> contains_answer("It is in greece, I think", "Greece"), exact_match("Greece.", "Greece")
    (True, True)
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from commlib.errors import CommlibError
from commlib.registry import canonical

ITEM_FIELDS = ("item_id", "method", "answer", "output", "message", "correct", "exact")

TRUE_TEXT = ("True", "1")
"""How a true flag (``correct``, ``exact``) reads back from a table: as csv and pandas write it, or 1."""


def first_answer_line(text: str) -> str:
    """The first non-empty line of a generation, stripped."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _norm(text: str) -> str:
    return re.sub(r"[^\w\s]", "", text).strip().lower()


def contains_answer(text: str, answer: str, choices: Sequence[str] = ()) -> bool:
    """The answer appears, case-insensitively, in the first answer line.

    With ``choices``, the answer must also be the first of them named there,
    so listing every choice does not count as picking the right one.

    Example:
        >>> contains_answer("Zentech or Argocorp", "Argocorp", ["Zentech", "Argocorp"])
        False
    """
    line = first_answer_line(text).lower()
    if answer.lower() not in line:
        return False
    named = [(line.find(c.lower()), c.lower()) for c in choices if c.lower() in line]
    return not named or min(named)[1] == answer.lower()


def exact_match(text: str, answer: str) -> bool:
    """The first answer line is the answer (case and punctuation ignored)."""
    return _norm(first_answer_line(text)) == _norm(answer)


def bootstrap_ci(
    values: Sequence[float], n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean.

    Example:
        >>> lo, hi = bootstrap_ci([1, 0, 1, 1, 0, 1, 0, 1])
        >>> 0.0 <= lo <= 0.625 <= hi <= 1.0
        True
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_difference(after: Any, before: Any, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``after - before`` over the items both score, with its 95% bootstrap interval.

    Both are pandas Series indexed by item id (any order); items missing from
    either side are left out, so the difference is always within the same items.

    Example:
        >>> import pandas as pd
        >>> before = pd.Series([0.0, 1.0, 0.0], index=["a", "b", "c"])
        >>> after = pd.Series([1.0, 1.0], index=["c", "b"])
        >>> paired_difference(after, before)[0]
        0.5
    """
    diff = (after - before).dropna()
    lo, hi = bootstrap_ci(diff.tolist(), seed=seed)
    return (float(diff.mean()) if len(diff) else float("nan")), lo, hi


def summarise(df: Any, by: Sequence[str], value: str, seed: int = 0) -> Any:
    """Mean of ``value`` per group with a 95% bootstrap interval: columns mean, ci_low, ci_high, n.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"g": ["a", "a", "b", "b"], "v": [1.0, 3.0, 0.0, 0.0]})
        >>> summarise(df, ["g"], "v")[["g", "mean", "n"]].to_dict("list")
        {'g': ['a', 'b'], 'mean': [2.0, 0.0], 'n': [2, 2]}
    """
    import pandas as pd

    rows = []
    for key, group in df.groupby(list(by), sort=False):
        values = group[value].astype(float).to_numpy()
        lo, hi = bootstrap_ci(values, seed=seed)
        key = key if isinstance(key, tuple) else (key,)
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                "mean": float(values.mean()),
                "ci_low": lo,
                "ci_high": hi,
                "n": len(values),
            }
        )
    return pd.DataFrame(rows)


def package_versions(
    names: Iterable[str] = ("commlib", "torch", "transformers", "nnsight", "transformer-lens"),
) -> dict[str, str]:
    """Installed versions of the packages a result depends on."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def placement(**models: Any) -> dict[str, dict[str, Any]]:
    """Where each loaded model runs, by its role: device(s), dtype, attention and device map.

    Recorded with every result (next to :func:`package_versions`); read
    from the loaded weights, so it says where they are, not where they were
    asked to be.

    Example:
        >>> from commlib.models import load_model
        >>> placement(sender=load_model("tiny-llama-random", dtype="bfloat16"))["sender"]
        {'device': 'cpu', 'devices': ['cpu'], 'dtype': 'bfloat16', 'attention': 'sdpa', 'device_map': None}
    """
    out = {}
    for role, model in models.items():
        params = list(model.hf.parameters())
        device_map = getattr(model.hf, "hf_device_map", None)
        out[role] = {
            "device": str(params[0].device),
            "devices": sorted({str(p.device) for p in params}),
            "dtype": str(params[0].dtype).removeprefix("torch."),
            "attention": model.hf.config._attn_implementation,
            "device_map": {k: str(v) for k, v in device_map.items()} if device_map else None,
        }
    return out


def append_rows(path: Path, fields: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """Append rows to a CSV (header when new) and flush, so a crash keeps them."""
    new_file = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields))
        if new_file:
            writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in fields} for row in rows)


class Run:
    """A resumable run directory: the settings in ``run.json``, per-item rows in one CSV, ``results.json``.

    The skeleton every experiment shares. Opening a ``Run`` claims the
    directory (:func:`claim_run_dir`: a resumed run must have the same
    settings); :meth:`done` and :meth:`pending` say what is finished;
    :meth:`add` appends rows and flushes them, so a crash loses no finished
    row; :meth:`frame` reads the table back and :meth:`write` writes the
    summary atomically. Methods are read and written under their canonical
    names (:func:`commlib.registry.canonical`), so a run stored under an old
    name (``ac``) resumes and reads back as ``ac-replace``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     run = Run(d, {"game": "countries"}, fields=("item_id", "method", "correct"))
        ...     run.add([{"item_id": "a", "method": "nl", "correct": True}])
        ...     again = Run(d, {"game": "countries"}, fields=("item_id", "method", "correct"))
        ...     again.done(method="nl"), again.done(method="silent"), len(again.frame())
        ({'a'}, set(), 1)
    """

    def __init__(
        self,
        out_dir: str | Path,
        settings: dict[str, Any] | None,
        *,
        fields: Sequence[str] | None = ITEM_FIELDS,
        table: str = "items.csv",
    ) -> None:
        """Claim ``out_dir`` and read back its finished rows.

        Args:
            out_dir: The run directory (created if missing).
            settings: What ``run.json`` records and a resumed run must match;
                ``None`` claims nothing (a directory whose settings another run records).
            fields: The table's columns, in order; ``None`` for columns known
                only once a row is computed: the existing table's header, else
                the keys of the first rows added.
            table: The table's file name in ``out_dir``.

        Raises:
            CommlibError: ``out_dir`` holds a run with other settings.
        """
        self.dir = Path(out_dir)
        if settings is None:  # a directory whose settings another run records (e.g. a sub-directory)
            self.dir.mkdir(parents=True, exist_ok=True)
        else:
            claim_run_dir(self.dir, settings)
        self.settings = settings
        self.path = self.dir / table
        self.rows: list[dict[str, str]] = []
        header: Sequence[str] = ()
        if self.path.exists():
            with self.path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                self.rows = [_canonical(r) for r in reader]
                header = reader.fieldnames or ()
        self.fields = tuple(header if fields is None else fields)

    def done(self, *columns: str, **where: Any) -> set[Any]:
        """Finished rows matching ``where`` (compared as text): their item ids, or tuples of ``columns``."""
        match = {k: canonical(str(v)) if k == "method" else str(v) for k, v in where.items()}
        rows = [r for r in self.rows if all(r.get(k) == v for k, v in match.items())]
        if not columns:
            return {r["item_id"] for r in rows}
        return {tuple(r.get(c, "") for c in columns) for r in rows}

    def pending(self, items: Sequence[Any], **where: Any) -> list[Any]:
        """The ``items`` (objects with an ``id``) that have no row matching ``where`` yet."""
        finished = self.done(**where)
        return [it for it in items if str(it.id) not in finished]

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows to the table and flush them to disk (a column missing from a row is left empty)."""
        rows = [_canonical(r) for r in rows]
        if not self.fields:  # fields=None and a new table: the first rows' columns
            if not rows:
                return
            self.fields = tuple(rows[0])
        append_rows(self.path, self.fields, rows)
        self.rows.extend({k: str(row.get(k, "")) for k in self.fields} for row in rows)

    def rewrite(self, rows: Iterable[dict[str, Any]]) -> None:
        """Replace the table with ``rows``, atomically (e.g. stored rows scored again, or a column added).

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as d:
            ...     run = Run(d, None, fields=("item_id", "correct"))
            ...     run.add([{"item_id": "a", "correct": False}])
            ...     run.rewrite([{**r, "correct": True} for r in run.rows])
            ...     Run(d, None, fields=("item_id", "correct")).rows
            [{'item_id': 'a', 'correct': 'True'}]
        """
        rows = [{k: str(row.get(k, "")) for k in self.fields} for row in rows]
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.unlink(missing_ok=True)
        append_rows(tmp, self.fields, rows)
        tmp.replace(self.path)
        self.rows = rows

    def frame(self, **read_csv: Any) -> Any:
        """The table as a pandas DataFrame (``read_csv`` options, e.g. ``dtype``); empty when no row yet."""
        import pandas as pd

        if not self.path.exists():
            return pd.DataFrame(columns=list(self.fields))
        df = pd.read_csv(self.path, **read_csv)
        if "method" in df:
            df["method"] = df["method"].map(canonical)
        return df

    def summary(self, methods: Sequence[str], seed: int = 0) -> dict[str, dict[str, float]]:
        """Accuracy (``correct``) with a 95% bootstrap CI, exact match (``exact``) and n, per method.

        Over every row of each method in the table (the columns of :data:`ITEM_FIELDS`);
        NaN for a method with no row.

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as d:
            ...     run = Run(d, {"game": "countries"})
            ...     run.add([{"item_id": i, "method": "nl", "correct": c, "exact": False}
            ...              for i, c in [("a", True), ("b", False)]])
            ...     s = run.summary(["nl"])["nl"]
            >>> s["accuracy"], s["exact_match"], s["n"]
            (0.5, 0.0, 2)
        """
        out = {}
        for method in dict.fromkeys(canonical(m) for m in methods):
            rows = [r for r in self.rows if r["method"] == method]
            correct = [float(r["correct"] in TRUE_TEXT) for r in rows]
            exact = [float(r["exact"] in TRUE_TEXT) for r in rows]
            lo, hi = bootstrap_ci(correct, seed=seed)
            out[method] = {
                "accuracy": float(np.mean(correct)) if rows else float("nan"),
                "ci_low": lo,
                "ci_high": hi,
                "exact_match": float(np.mean(exact)) if rows else float("nan"),
                "n": len(rows),
            }
        return out

    def write(self, result: dict[str, Any], name: str = "results.json") -> dict[str, Any]:
        """Write ``result`` atomically to ``DIR/name`` and return it."""
        write_json(self.dir / name, result)
        return result


def _canonical(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its method under its canonical name (``ac`` -> ``ac-replace``), as runs keep it."""
    return {**row, "method": canonical(row["method"])} if isinstance(row.get("method"), str) else row


def correct_by_item(rows: Any) -> Any:
    """Whether each item was answered correctly (1.0 / 0.0), indexed by item id.

    ``rows`` is a DataFrame with ``item_id`` and ``correct`` (``True``/``1``
    as read back from a table, or bools); one row per item.

    Example:
        >>> import pandas as pd
        >>> rows = pd.DataFrame({"item_id": ["a", "b"], "correct": ["True", "False"]})
        >>> correct_by_item(rows).to_dict()
        {'a': 1.0, 'b': 0.0}
    """
    return rows.set_index("item_id")["correct"].astype(str).isin(TRUE_TEXT).astype(float)


class AnswerStore:
    """Answers of one model alone, shared by every run directory that asks it the same way.

    A model answering a prompt with a fixed decoding (greedy, or sampled
    with a fixed seed) on one backend writes the same text in every run, so
    ``single-a`` of pair (A, B) is ``single-b`` of pair (B, A) and of every
    other pair with A in it. The store keeps one JSON line per answer in
    ``DIR/<model>.jsonl``, keyed by the model, backend, prompt and decoding,
    and flushes each line, so runs in other processes see it too.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     store = AnswerStore(d)
        ...     key = {"model": "m", "backend": "nnsight", "prompt": "2 + 2?", "decoding": {"greedy": True}}
        ...     store.put(key, {"text": "4", "prompt_tokens": 5, "answer_tokens": 1, "seconds": 0.1})
        ...     AnswerStore(d).get(key)["text"], AnswerStore(d).get({**key, "prompt": "3 + 3?"})
        ('4', None)
    """

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self._answers: dict[str, dict[str, dict[str, Any]]] = {}
        self._sizes: dict[str, int] = {}

    def _path(self, model: str) -> Path:
        return self.dir / f"{model}.jsonl"

    def _loaded(self, model: str) -> dict[str, dict[str, Any]]:
        path = self._path(model)
        size = path.stat().st_size if path.exists() else 0
        if self._sizes.get(model) != size:  # new lines from this or another process
            lines = path.read_text().splitlines() if size else []
            records = [r for line in lines if (r := _record(line)) is not None]
            self._answers[model] = {_key_text(r["key"]): r for r in records}
            self._sizes[model] = size
        return self._answers[model]

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The stored answer for ``key`` (``key["model"]`` names the model), or ``None``."""
        return self._loaded(str(key["model"])).get(_key_text(key))

    def put(self, key: dict[str, Any], answer: dict[str, Any]) -> None:
        """Store ``answer`` under ``key`` unless an answer is there already."""
        if self.get(key) is not None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(str(key["model"]))
        line = json.dumps({"key": key, **answer}) + "\n"
        with path.open("ab+") as fh:
            if fh.seek(0, 2) > 0:
                fh.seek(-1, 2)
                if fh.read(1) != b"\n":  # the end of a line cut short by a crash: start a new one
                    line = "\n" + line
            fh.write(line.encode())


def _key_text(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True)


def _record(line: str) -> dict[str, Any] | None:
    """One stored answer, or ``None`` for a blank line or one cut short by a crash mid-write."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and "key" in record else None


RECORDED_ONLY = ("placement",)
"""Keys of ``run.json`` that say how a session ran, not what it computes: a resumed run may differ in
them (it may finish on another device), and ``run.json`` then records the latest. Of ``placement`` the
arithmetic (:func:`numerics`: each model's dtype and attention) is compared all the same."""


def numerics(placement: Any) -> dict[str, dict[str, Any]]:
    """What of a recorded :func:`placement` changes what a run computes: dtype and attention per role.

    Rows computed in bfloat16 and float32 (or with eager and sdpa attention) differ by more than a device
    does, so a resumed run must match them; devices and device maps may change.

    Example:
        >>> numerics({"sender": {"device": "cuda:0", "dtype": "bfloat16", "attention": "sdpa"}})
        {'sender': {'dtype': 'bfloat16', 'attention': 'sdpa'}}
    """
    if not isinstance(placement, dict):
        return {}
    return {
        role: {k: where[k] for k in ("dtype", "attention") if k in where}
        for role, where in placement.items()
        if isinstance(where, dict)
    }


def claim_run_dir(out_dir: str | Path, settings: dict[str, Any]) -> None:
    """Record the settings of a run in ``out_dir/run.json``, or check a resumed run matches them.

    Resuming skips finished items, so a resumed run with other settings would
    mix two experiments in one table. The keys of :data:`RECORDED_ONLY` are
    recorded, not compared, except their :func:`numerics` (dtype and
    attention), which a resumed run must match where both record them.

    Raises:
        CommlibError: ``out_dir`` holds a run with different settings or arithmetic.
    """
    path = Path(out_dir) / "run.json"
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as stored
    if path.exists():
        before = json.loads(path.read_text())
        keys = (settings.keys() | before.keys()) - set(RECORDED_ONLY)
        changed = sorted(k for k in keys if settings.get(k) != before.get(k))
        if changed:
            detail = ", ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise CommlibError(
                f"{out_dir} holds a run with other settings ({detail}); use a new --out or the same settings"
            )
        was, now = numerics(before.get("placement")), numerics(settings.get("placement"))
        differ = sorted(
            f"{role} {k} {was[role][k]} -> {now[role][k]}"
            for role in was.keys() & now.keys()
            for k in was[role].keys() & now[role].keys()
            if was[role][k] != now[role][k]
        )
        if differ:
            raise CommlibError(
                f"{out_dir} was computed with other arithmetic ({', '.join(differ)}): its rows would mix "
                "two; resume with the run's --dtype (and attention) or use a new --out"
            )
        recorded = {k: settings[k] for k in RECORDED_ONLY if k in settings}
        if any(before.get(k) != v for k, v in recorded.items()):
            write_json(path, {**before, **recorded})
        return
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically (a crash leaves the old file or the new one)."""
    target = Path(path)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(target)
