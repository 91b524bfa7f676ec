"""pyproject.toml and environment.yml declare the same dependencies."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _norm(req: str) -> str:
    return req.replace(" ", "").lower()


def test_environment_yml_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_norm(r) for r in project["dependencies"]}
    declared |= {_norm(r) for r in project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    in_env = {_norm(r) for r in pip_section if r != "-e ."}
    assert in_env == declared, (
        f"only in pyproject: {declared - in_env}; only in environment.yml: {in_env - declared}"
    )
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert _norm(python.removeprefix("python")) == _norm(project["requires-python"])


def test_every_dependency_has_an_upper_bound() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"] + project["optional-dependencies"]["dev"]:
        assert "<" in req, f"{req} needs an upper bound"
