"""Where models run: --device, --dtype and --device-map on every command, checked before anything loads,
recorded in every results file; sdpa attention by default, eager where TransformerLens needs it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from commlib import config
from commlib.backends import get_backend
from commlib.cli import build_parser, main
from commlib.cli.base import from_args
from commlib.combine import LinearMap
from commlib.errors import CommlibError, DeviceUnavailableError
from commlib.models import ATTENTION, Model, check_device, load_model, parse_dtype
from commlib.prompts import encode
from commlib.results import claim_run_dir, placement

NO_MODEL = ("models", "fetch")
"""Commands that load no model."""

TINY = ["--sender", "tiny-llama-random", "--receiver", "tiny-llama-random"]


def commands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("name", [n for n in commands() if n not in NO_MODEL])
def test_every_command_that_loads_a_model_has_the_placement_flags(name: str) -> None:
    flags = {s for a in commands()[name]._actions for s in a.option_strings}
    assert {"--device", "--dtype", "--device-map"} <= flags


def test_placement_flags_become_the_pair_placement() -> None:
    args = ["games", "--game", "countries", *TINY, "--out", "x", "--k", "1", "--j", "1"]
    cfg = from_args(config.GamesRun, build_parser().parse_args([*args, "--dtype", "bfloat16"]))
    assert cfg.pair.placement == config.Placement(dtype="bfloat16")
    assert from_args(config.GamesRun, build_parser().parse_args(args)).pair.placement == config.Placement()
    demo = from_args(config.DemoRun, build_parser().parse_args(["demo", "--device-map", "auto"]))
    assert demo.placement.load_kwargs() == {"device": "auto", "dtype": "float32"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "gpu"}, "use cpu, cuda or cuda:N"),
        ({"device": "cuda:x"}, "use cpu, cuda or cuda:N"),
        ({"dtype": "float64"}, "use one of float32, bfloat16, float16"),
        ({"device_map": "balanced"}, "use auto"),
        ({"device": "cuda:1", "device_map": "auto"}, "drop device cuda:1"),
    ],
)
def test_a_misspelt_placement_is_refused(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(CommlibError, match=message):
        config.Placement(**kwargs)


def test_parse_dtype() -> None:
    assert [parse_dtype(d) for d in config.DTYPES] == [torch.float32, torch.bfloat16, torch.float16]
    assert parse_dtype(torch.bfloat16) is torch.bfloat16
    with pytest.raises(CommlibError, match="use one of"):
        parse_dtype("half")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("extra", [["--device", "cuda"], ["--device", "cuda:1"], ["--device-map", "auto"]])
def test_a_gpu_on_a_cpu_machine_is_one_line_and_exit_2(
    extra: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["games", "--game", "countries", *TINY, "--methods", "silent", "--k", "1", "--j", "1"]
    assert main([*args, "--out", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("commlib: error:") and "\n" not in err
    assert "needs a CUDA GPU and this machine has none" in err
    assert not (tmp_path / "run").exists()  # refused before anything ran


def test_a_cuda_device_past_the_visible_gpus_is_refused() -> None:
    with pytest.raises(DeviceUnavailableError, match="cuda:99"):
        check_device("cuda:99")
    check_device("cpu")


def test_a_bfloat16_run_loads_bf16_weights_and_records_its_placement(tmp_path: Path) -> None:
    out = tmp_path / "games"
    args = ["games", "--game", "countries", *TINY, "--methods", "silent,ac-replace", "--k", "1", "--j", "2"]
    args += ["--n", "2", "--max-new-tokens", "2", "--out", str(out)]
    assert main([*args, "--dtype", "bfloat16"]) == 0
    recorded = json.loads((out / "results.json").read_text())["config"]
    assert recorded["sender"]["dtype"] == "bfloat16"
    for role in ("sender", "receiver"):
        assert recorded["placement"][role] == {
            "device": "cpu",
            "devices": ["cpu"],
            "dtype": "bfloat16",
            "attention": "sdpa",
            "device_map": None,
        }
    assert json.loads((out / "run.json").read_text())["placement"] == recorded["placement"]
    assert main(args) == 2  # resuming in float32 would mix two precisions in one table
    assert main([*args, "--dtype", "bfloat16"]) == 0


def test_run_json_records_placement_without_comparing_it(tmp_path: Path) -> None:
    old = tmp_path / "old"
    claim_run_dir(old, {"game": "countries"})  # a run directory from before placement was recorded
    claim_run_dir(old, {"game": "countries", "placement": {"sender": "cpu"}})
    assert json.loads((old / "run.json").read_text())["placement"] == {"sender": "cpu"}
    claim_run_dir(old, {"game": "countries", "placement": {"sender": "cuda:0"}})
    assert json.loads((old / "run.json").read_text())["placement"] == {"sender": "cuda:0"}
    with pytest.raises(CommlibError, match="other settings"):
        claim_run_dir(old, {"game": "tipsheets", "placement": {"sender": "cpu"}})


def test_a_resumed_run_must_keep_its_dtype_and_attention_but_may_move(tmp_path: Path) -> None:
    def where(device: str, dtype: str = "float32", attention: str = "sdpa") -> dict:
        return {"sender": {"device": device, "devices": [device], "dtype": dtype, "attention": attention}}

    run = tmp_path / "run"
    claim_run_dir(run, {"game": "countries", "placement": where("cpu")})
    claim_run_dir(run, {"game": "countries", "placement": where("cuda:0")})  # finishing on a GPU is fine
    assert json.loads((run / "run.json").read_text())["placement"]["sender"]["device"] == "cuda:0"
    for dtype, attention, named in [
        ("bfloat16", "sdpa", "dtype float32 -> bfloat16"),
        ("float32", "eager", "sdpa"),
    ]:
        with pytest.raises(CommlibError, match="other arithmetic") as err:
            claim_run_dir(run, {"game": "countries", "placement": where("cpu", dtype, attention)})
        assert named in str(err.value) and "\n" not in str(err.value)
    claim_run_dir(tmp_path / "old", {"game": "countries"})  # recorded before placement: nothing to compare
    claim_run_dir(tmp_path / "old", {"game": "countries", "placement": where("cpu", "bfloat16")})


def test_fit_map_records_placement_and_the_map_still_loads(tmp_path: Path) -> None:
    out = tmp_path / "map"
    args = ["fit-map", *TINY, "--k", "1", "--j", "1", "--n", "16", "--fit", "ridge", "--out", str(out)]
    assert main(args) == 0
    assert json.loads((out / "map.json").read_text())["placement"]["sender"]["dtype"] == "float32"
    assert LinearMap.load(out).info.sender == "tiny-llama-random"


def test_sdpa_is_the_default_and_the_lens_backend_runs_eager(tiny: Model) -> None:
    assert ATTENTION == "sdpa" and tiny.hf.config._attn_implementation == "sdpa"
    bridge = get_backend(tiny, "transformer-lens").bridge  # type: ignore[attr-defined]
    assert bridge.original_model.config._attn_implementation == "eager"  # its own copy of the tree
    assert tiny.hf.config._attn_implementation == "sdpa"  # the model as loaded stays sdpa
    assert placement(b=tiny)["b"]["attention"] == "sdpa"


def test_sdpa_and_eager_agree_in_float32(tiny: Model) -> None:
    eager = load_model("tiny-llama-random", attention="eager")
    assert eager.hf.config._attn_implementation == "eager"
    batch = encode(tiny, ["Alice is at the Eiffel Tower.", "Where?"])
    kwargs = {"attention_mask": batch.attention_mask, "position_ids": batch.position_ids}
    a, b = tiny.hf(batch.input_ids, **kwargs).logits, eager.hf(batch.input_ids, **kwargs).logits
    real = batch.attention_mask.bool()
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)


def test_float16_loads_on_the_cpu() -> None:
    model = load_model("tiny-llama-random", dtype="float16")
    assert model.info.dtype == "float16"
    assert torch.isfinite(model.hf(encode(model, ["Hi"]).input_ids).logits).all()
