"""The command-line contract: JSON fields, one-line errors, non-zero exits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from commlib.cli import main


def graft_args(*extra: str, model: str = "tiny-llama-random") -> list[str]:
    return [
        "graft",
        "--sender",
        model,
        "--receiver",
        model,
        "--sender-prompt",
        "Alice is in Paris.",
        "--receiver-prompt",
        "Where is Alice?",
        "--max-new-tokens",
        "4",
        *extra,
    ]


def test_graft_json_has_the_contract_fields(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(graft_args("--k", "1", "--j", "2", "--f", "sum", "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("text", "token_ids", "sender", "receiver", "k", "j", "f", "backend"):
        assert key in out
    assert (out["k"], out["j"], out["f"], out["backend"]) == (1, 2, "sum", "nnsight")
    assert len(out["token_ids"]) <= 4


def test_f_none_is_b_alone_and_backends_agree(capsys: pytest.CaptureFixture[str]) -> None:
    results = []
    for backend in ("nnsight", "transformer-lens"):
        for f in ("none", "replace"):
            assert main(graft_args("--k", "1", "--j", "1", "--f", f, "--backend", backend, "--json")) == 0
            results.append(json.loads(capsys.readouterr().out)["token_ids"])
    nn_none, nn_replace, tl_none, tl_replace = results
    assert nn_none == tl_none and nn_replace == tl_replace


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (graft_args("--k", "9", "--j", "1", "--f", "sum"), "use 0..3"),
        (graft_args("--k", "1", "--j", "1", "--f", "max"), "use one of none, sum, mean, replace"),
        (graft_args("--k", "1", "--j", "1", "--f", "sum", model="no-such-model"), "known: smollm2-135m"),
        (graft_args("--k", "1", "--j", "1", "--f", "sum", model="some-org/not-cached"), "hub is unreachable"),
        (graft_args("--k", "1", "--j", "1", "--f", "sum", "--map", "/nonexistent"), "no map at"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("commlib: error:") and "\n" not in err
    assert message in err


def test_python_m_commlib_exits_nonzero_without_traceback() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "commlib",
            *graft_args("--k", "1", "--j", "1", "--f", "sum"),
            "--receiver-prompt",
            "",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "prompt 0 is empty" in proc.stderr


def test_models_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in (
        "smollm2-135m",
        "gemma3-270m",
        "qwen2.5-coder-0.5b",
        "qwen2.5-coder-1.5b",
        "llama-3.1-8b-random",
    ):
        assert name in out


@pytest.mark.integration
def test_fit_map_then_graft_with_it(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "w"
    assert (
        main(
            [
                "fit-map",
                "--sender",
                "tiny-llama-random",
                "--receiver",
                "tiny-llama-wide-random",
                "--k",
                "1",
                "--j",
                "2",
                "--n",
                "64",
                "--epochs",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "saved W (96, 64)" in capsys.readouterr().out
    base = [
        "graft",
        "--sender",
        "tiny-llama-random",
        "--receiver",
        "tiny-llama-wide-random",
        "--sender-prompt",
        "Alice is in Paris.",
        "--receiver-prompt",
        "Where is Alice?",
        "--max-new-tokens",
        "3",
        "--f",
        "replace",
        "--map",
        str(out),
        "--json",
    ]
    assert main([*base, "--k", "1", "--j", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["map"]["n"] == 64 and result["map"]["corpus"] == "lambada"
    assert main([*base, "--k", "0", "--j", "2"]) == 2
    assert "map was trained for tiny-llama-random (k=1)" in capsys.readouterr().err


@pytest.mark.integration
def test_fit_map_on_a_task_is_run_pair_reasonings_in_distribution_w(tmp_path) -> None:
    import torch

    from commlib.combine import LinearMap
    from commlib.experiments import fit_task_map
    from commlib.models import load_model

    out = tmp_path / "w"
    args = ["--sender", "tiny-llama-random", "--receiver", "tiny-llama-wide-random", "--k", "1", "--j", "1"]
    main(
        ["fit-map", *args, "--task", "gsm8k", "--n", "6", "--eval-n", "3", "--epochs", "1", "--out", f"{out}"]
    )
    w = LinearMap.load(out)
    a, b = load_model("tiny-llama-random"), load_model("tiny-llama-wide-random")
    expected = fit_task_map("gsm8k", a, b, 1, 1, n_map=6, n_eval=3, epochs=1)
    assert (w.info.corpus, w.info.n) == ("gsm8k other items", 6)
    torch.testing.assert_close(w.weight, expected.weight)


def test_fit_map_refuses_a_corpus_with_a_task(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--sender", "tiny-llama-random", "--receiver", "tiny-llama-random", "--k", "1", "--j", "1"]
    assert main(["fit-map", *args, "--task", "gsm8k", "--corpus", "c4", "--out", f"{tmp_path / 'w'}"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
