"""Shared fixtures: tiny random-weight models (unit) and real SmolLM2 (integration)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from commlib.models import Model, load_model

torch.set_grad_enabled(False)


@pytest.fixture(scope="session")
def tiny() -> Model:
    return load_model("tiny-llama-random")


@pytest.fixture(scope="session")
def tiny_wide() -> Model:
    return load_model("tiny-llama-wide-random")


@pytest.fixture(scope="session")
def smol() -> Model:
    """Real SmolLM2-135M-Instruct; fetched by setup (run.sh), fetched here if missing."""
    return load_model("smollm2-135m")


@pytest.fixture(scope="session", params=["tiny", "smol"])
def any_model(request: pytest.FixtureRequest) -> Model:
    """Each grafting property runs on a tiny random model and on real SmolLM2."""
    if request.param == "smol":
        request.applymarker(pytest.mark.integration)
    return request.getfixturevalue(request.param)


@functools.cache
def _eager(name: str) -> Model:
    return load_model(name, attention="eager")


@pytest.fixture(scope="session")
def eager_twin() -> Callable[[Model], Model]:
    """A model's twin with eager attention, as TransformerLens's bridge runs it: bit-exact comparisons."""
    return lambda model: _eager(model.name)


ARTICLE = {  # bullets as the Biographies file has them
    "Ada Lovelace": "- Ada Lovelace was born in 1815 in London\n- She wrote an algorithm for the Engine\n"
    "- She worked with Charles Babbage",
    "Alan Turing (computer scientist)": "- Alan Turing was born in 1912\n\n- He proposed the Turing machine",
    "Grace Hopper": "- Grace Hopper was born in 1906\n- She served in the US Navy\n- She developed COBOL",
}


@pytest.fixture
def article(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Biographies file of three people (:data:`ARTICLE`), named by ``COMMLIB_BIOGRAPHIES``."""
    path = tmp_path / "article.json"
    path.write_text(json.dumps(ARTICLE))
    monkeypatch.setenv("COMMLIB_BIOGRAPHIES", str(path))
    return path
