"""Every notebook runs end to end in its fast mode (papermill, FAST=True), without touching figures/."""

from __future__ import annotations

import time
from pathlib import Path

import jupytext
import nbformat
import papermill
import pytest

from commlib.plots import FAST_FIGURES_DIR, FAST_NOTICE, FIGURES_DIR

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9]*.py"))


def _listing(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*")}


def _first_output(nb: nbformat.NotebookNode) -> str:
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            return str(out.get("text") or out.get("data", {}).get("text/plain", ""))
    return ""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path: Path, tmp_path: Path) -> None:
    """FIGURES_DIR stays at its default (the repository's figures/): fast mode must write elsewhere."""
    nb = jupytext.read(path)
    source = tmp_path / f"{path.stem}.ipynb"
    jupytext.write(nb, source)
    figures_before, started = _listing(FIGURES_DIR), time.time()
    papermill.execute_notebook(
        str(source),
        str(tmp_path / "out.ipynb"),
        cwd=str(path.parent),
        kernel_name="python3",
        parameters={"FAST": True, "RUNS_DIR": str(tmp_path / "runs"), "SWEEP_DIR": str(tmp_path / "sweep")},
        progress_bar=False,
    )
    assert _listing(FIGURES_DIR) == figures_before, "a fast run wrote into figures/"
    assert FAST_NOTICE in _first_output(nbformat.read(tmp_path / "out.ipynb", as_version=4))
    if "save_figure" in path.read_text():
        saved = [p for p in FAST_FIGURES_DIR.glob("*_fast.png") if p.stat().st_mtime >= started - 1]
        assert saved, f"the notebook saved no figure in {FAST_FIGURES_DIR}"


def test_paired_ipynb_matches_the_py(tmp_path: Path) -> None:
    for path in NOTEBOOKS:
        paired = path.with_suffix(".ipynb")
        assert paired.exists(), f"run: jupytext --sync {path}"
        assert [c.source for c in jupytext.read(paired).cells] == [
            c.source for c in jupytext.read(path).cells
        ]
        assert all(not c.get("outputs") for c in jupytext.read(paired).cells), f"{paired} has outputs"
