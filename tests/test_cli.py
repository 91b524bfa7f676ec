"""The command-line contract: JSON fields, one-line errors, non-zero exits, help on every flag."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

import commlib.cli
from commlib import config
from commlib.cli import build_parser, main
from commlib.cli.base import from_args
from commlib.registry import check_methods


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
    assert "the receiver's prompt 0 is empty" in proc.stderr


def test_an_empty_sender_prompt_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*graft_args("--k", "1", "--j", "1", "--f", "sum"), "--sender-prompt", " "]) == 2
    assert "the sender's prompt 0 is empty" in capsys.readouterr().err


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


def game_args(game: str, out: str) -> list[str]:
    pair = ["--sender", "tiny-llama-random", "--receiver", "tiny-llama-random"]
    return ["games", "--game", game, *pair, "--k", "1", "--j", "1", "--n", "2", "--out", out]


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no game file"), ("{not json\n", "is not JSONL"), ("\n", "has no items")],
)
def test_a_bad_game_file_is_one_line_and_exit_2(
    tmp_path, content: str | None, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    game = tmp_path / "game.jsonl"
    if content is not None:
        game.write_text(content)
    assert main(game_args(str(game), str(tmp_path / "run"))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("commlib: error:") and "\n" not in err
    assert message in err and str(game) in err
    assert not (tmp_path / "run").exists()  # refused before any run directory


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["games", "--game", "countries", "--methods", "silent,nosuch", "--k", "1", "--j", "1"], "'nosuch'"),
        (["reasoning", "--task", "gsm8k", "--methods", "single-b,ac-replace"], "ac-replace needs the layers"),
        (["sweep-n", "--game", "countries", "--methods", "nl"], "nl does not run in the sweep over n"),
        (["distance", "--game", "countries", "--methods", "nl", "--k", "1", "--j", "1"], "use ac-* methods"),
        (["distance", "--game", "countries", "--methods", "ac-w-sum", "--k", "1", "--j", "1"], "--map"),
    ],
)
def test_methods_are_checked_before_a_model_loads(
    tmp_path, command: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = ["--sender", "no-such-model", "--receiver", "no-such-model"]  # loading it would fail otherwise
    assert main([*command, *pair, "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_missing_flag_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["games", "--game", "countries"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "required" in err and "--sender" in err and "commlib games --help" in err


def subparsers() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_flag_has_help_and_every_command_an_example() -> None:
    commands = subparsers()
    assert len(commands) == 13
    for name, parser in commands.items():
        for action in parser._actions:
            assert action.help and action.help.strip(), f"commlib {name} {action.dest} has no help"
        assert f"commlib {name}" in (parser.epilog or ""), f"commlib {name} --help ends without an example"
        assert parser.format_help().rstrip().splitlines()[-1].lstrip().startswith(f"$ commlib {name}")
        assert f"``{name}``" in (commlib.cli.__doc__ or ""), f"the docstring of commlib.cli misses {name}"


def test_help_imports_no_torch() -> None:
    code = (
        "import sys, commlib.cli; commlib.cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    proc = subprocess.run(
        [sys.executable, "-m", "commlib", "games", "--help"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "--max-new-tokens" in proc.stdout


def test_flags_become_the_run_config() -> None:
    args = graft_args("--k", "1", "--j", "2", "--f", "mean", "--sample", "--position", "content")
    cfg = from_args(config.GraftRun, build_parser().parse_args(args))
    assert cfg.pair == config.ModelPair("tiny-llama-random", "tiny-llama-random")
    assert cfg.graft == config.GraftConfig(k=1, j=2, f="mean", position="content")
    assert cfg.decoding == config.Decoding(max_new_tokens=4, do_sample=True)
    games = from_args(
        config.GamesRun, build_parser().parse_args([*game_args("countries", "o"), "--no-reply"])
    )
    assert games.methods == config.GamesRun.__dataclass_fields__["methods"].default
    assert (games.reply, games.run) == (False, config.RunSpec(n=2, seed=0, out="o"))
    reasoning = ["reasoning", "--task", "gsm8k", "--sender", "a", "--receiver", "b", "--out", "o"]
    cfg_r = from_args(config.ReasoningRun, build_parser().parse_args([*reasoning, "--methods", "ac, nld,"]))
    assert cfg_r.methods == ("ac", "nld") and cfg_r.run.n == 100  # this command's own default n


def test_the_torch_free_choice_lists_match_the_library() -> None:
    from commlib.backends import BACKENDS
    from commlib.combine import COMBINE_FNS
    from commlib.corpora import CORPORA
    from commlib.experiments import CONTROLS, REFERENCES
    from commlib.tasks.biographies import DEFAULT_JUDGE

    assert tuple(BACKENDS) == config.BACKEND_NAMES
    assert tuple(COMBINE_FNS)[: len(config.COMBINE_NAMES)] == config.COMBINE_NAMES
    for here, there in [
        (CONTROLS, config.CONTROLS),
        (REFERENCES, config.REFERENCES),
        (CORPORA, config.CORPORA),
    ]:
        assert here is there  # defined once, in config
    assert DEFAULT_JUDGE is config.DEFAULT_JUDGE
    assert check_methods(config.LATENT_METHODS, "games") == list(config.LATENT_METHODS)


def test_demo_shows_each_method_against_the_answer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--model", "tiny-llama-random"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "right answer: France" in lines
    for label in ("B alone", "skyline", "NL", "AC"):
        (row,) = [line for line in lines if line[2:].startswith(f"{label} ")]
        assert row[0] in "✓✗"
    assert lines[-1].startswith(("got France: ", "none got France"))
