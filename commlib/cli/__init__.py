"""The ``commlib`` command line, thin over the library.

Commands (``commlib <command> --help`` explains each and ends with an example):

* ``models``: the registered models and whether each is cached.
* ``fetch``: offline models, and data (lambada, gsm8k, mmlu, biographies).
* ``demo``: one toy Countries item: B alone, the skyline, NL and AC side by side.
* ``graft``: one activation-communication exchange.
* ``fit-map``: the linear map W for a model pair.
* ``games``: every method on a coordination game.
* ``sweep``: the full (k, j) grid on a game.
* ``distance``: how far grafted states sit from B's own states.
* ``sweep-n``: accuracy, distance and compute against how much state is sent.
* ``latent``: latent channels (CIPHER, Interlat) on a game next to baselines.
* ``train-adapter``: train an Interlat adapter, or compress one to K latents.
* ``reasoning``: GSM8k, MMLU and Biographies with single models, debate and AC.
* ``thesis``: every channel against its content control, on disjoint pools and one distance axis.

Each experiment's flags are the fields of its run config in
:mod:`commlib.config` (shared ones, such as ``--sender``, declared once there);
``--help`` imports neither torch nor a model. Every user error prints one line
(``commlib: error: ...``; ``commlib <command>: error: ...`` for a flag that
does not parse) and exits with status 2; no traceback. Runs that write a
directory resume when given it again.

Example:
    $ commlib graft --sender smollm2-135m --receiver smollm2-135m \\
        --sender-prompt "Alice is at the Eiffel Tower." \\
        --receiver-prompt "Which country is Alice located in?" --k 20 --j 20 --f replace --json
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from commlib.cli import exchange, games, reasoning, start, sweeps, thesis
from commlib.cli.base import CommandParser, from_args
from commlib.errors import CommlibError

FAMILIES = (start, exchange, games, sweeps, reasoning, thesis)
"""The modules of commands, in the order ``commlib --help`` lists them."""


def build_parser() -> CommandParser:
    """The argument parser (exposed for tests and docs).

    Example:
        >>> build_parser().parse_args(["demo"]).model
        'smollm2-135m'
    """
    parser = CommandParser(
        prog="commlib",
        description="Language models talking through their activations.",
        epilog="`commlib <command> --help` explains a command and ends with an example.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    for family in FAMILIES:
        family.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``commlib`` and ``python -m commlib``; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a flag argparse refused (one line already printed)
        return exc.code if isinstance(exc.code, int) else 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard loading bars drown the output
    try:
        config = from_args(args.config_class, args) if args.config_class is not None else args
        return int(args.handler(config))
    except CommlibError as exc:
        print(f"commlib: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("commlib: interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
