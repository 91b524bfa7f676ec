"""Every notebook runs end to end in its fast mode (papermill, FAST=True)."""

from __future__ import annotations

from pathlib import Path

import jupytext
import papermill
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9]*.py"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path: Path, tmp_path: Path) -> None:
    nb = jupytext.read(path)
    source = tmp_path / f"{path.stem}.ipynb"
    jupytext.write(nb, source)
    papermill.execute_notebook(
        str(source),
        str(tmp_path / "out.ipynb"),
        cwd=str(path.parent),
        kernel_name="python3",
        parameters={
            "FAST": True,
            "RUNS_DIR": str(tmp_path / "runs"),
            "SWEEP_DIR": str(tmp_path / "sweep"),
            "FIGURES_DIR": str(tmp_path / "fig"),
        },
        progress_bar=False,
    )
    if "save_figure" in path.read_text():
        assert list((tmp_path / "fig").glob("*_fast.png")), "the notebook saved no figure"


def test_paired_ipynb_matches_the_py(tmp_path: Path) -> None:
    for path in NOTEBOOKS:
        paired = path.with_suffix(".ipynb")
        assert paired.exists(), f"run: jupytext --sync {path}"
        assert [c.source for c in jupytext.read(paired).cells] == [
            c.source for c in jupytext.read(path).cells
        ]
        assert all(not c.get("outputs") for c in jupytext.read(paired).cells), f"{paired} has outputs"
