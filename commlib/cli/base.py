"""What every command shares: flags built from :mod:`commlib.config`'s dataclasses, and back.

A field ``max_new_tokens: int = option(24, help=...)`` becomes ``--max-new-tokens``
(type ``int``, default 24, that help); a field without a default, a required
flag; a ``bool``, a switch (``--match-norm`` sets it; ``--no-reply`` clears
``reply``, whose default is True); a nested dataclass (``pair: ModelPair``), a
group of flags shared by every command that has one, adjusted per command by
the field's ``flags`` metadata (a dataclass nested in it, such as the pair's
``placement``, a group of its own). :func:`from_args` builds the dataclass back
from the parsed flags. Torch-free: nothing here loads a model until a command runs.

Example:
    >>> from commlib.config import ModelPair, Placement
    >>> parser = CommandParser(prog="commlib x")
    >>> add_arguments(parser, ModelPair)
    >>> flags = parser.parse_args(["--sender", "a", "--receiver", "b", "--dtype", "bfloat16"])
    >>> pair = from_args(ModelPair, flags)
    >>> pair.receiver, pair.placement
    ('b', Placement(device='cpu', dtype='bfloat16', device_map=None))
"""

from __future__ import annotations

import argparse
import functools
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, fields, is_dataclass
from pathlib import Path
from typing import Any, NoReturn

from commlib.config import ModelPair, Placement
from commlib.errors import CommlibError
from commlib.registry import check_layers, check_map, check_methods

Handler = Callable[[Any], int]
"""A command: takes its run config (or the parsed flags) and returns the exit status."""


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs as written (the example keeps its lines); each flag's help ends with its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = default not in (None, "", argparse.SUPPRESS) and not isinstance(default, bool)
        shown = shown and not action.required  # graft's --f: required there, a default elsewhere
        if shown and action.option_strings and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _value_type(hint: Any) -> Any:
    """``int | None`` -> int; a ``Literal`` of strings -> str; int, float, str as they are."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Literal:
        return type(args[0])
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return _value_type(args[0])
    return hint


def _nested(cls: type) -> list[tuple[Field[Any], type]]:
    return [(f, _hints(cls)[f.name]) for f in fields(cls) if is_dataclass(_hints(cls)[f.name])]


def _add_flag(parser: Any, f: Field[Any], hint: Any, changes: Mapping[str, Any]) -> None:
    meta = f.metadata
    if "help" not in meta:
        raise TypeError(f"field {f.name!r} has no help: declare it with commlib.config.option(help=...)")
    kwargs: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
    default = changes.get("default", f.default)
    if hint is bool:
        if default is True and "flag" not in meta:
            raise TypeError(
                f"field {f.name!r} defaults to True: name the flag that clears it (flag='--no-...')"
            )
        kwargs["action"] = "store_false" if default is True else "store_true"
    else:
        parse = meta.get("parse") or _value_type(hint)
        kwargs["type"] = parse
        if default is MISSING:
            kwargs["required"] = True
        elif isinstance(default, tuple):
            kwargs["default"] = ",".join(str(v) for v in default)  # argparse parses a text default
        else:
            kwargs["default"] = default
        for key in ("choices", "metavar"):
            if key in meta:
                kwargs[key] = meta[key]
    kwargs.update({k: v for k, v in changes.items() if k not in ("default", "skip")})
    parser.add_argument(meta.get("flag", "--" + f.name.replace("_", "-")), **kwargs)


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    changes: Mapping[str, Mapping[str, Any]] | None = None,
    group: Any = None,
) -> None:
    """Add a flag per field of the dataclass ``cls``; each nested dataclass's flags as a titled group.

    Args:
        parser: The command's parser.
        cls: The dataclass.
        changes: Per field, argparse settings that differ (see :func:`commlib.config.option`'s ``flags``).
        group: Where ``cls``'s own flags go (default: ``parser``).

    Raises:
        TypeError: a field without help text (every flag has help).
    """
    changes = changes or {}
    nested = {f.name for f, _ in _nested(cls)}
    for f in fields(cls):
        change = changes.get(f.name, {})
        if f.name not in nested and not change.get("skip"):
            _add_flag(group or parser, f, _hints(cls)[f.name], change)
    for f, inner in _nested(cls):
        titled = parser.add_argument_group(f.metadata.get("help"))
        add_arguments(parser, inner, f.metadata.get("flags", {}), titled)


def from_args(cls: type, namespace: argparse.Namespace) -> Any:
    """The dataclass ``cls`` from parsed flags; a field without a flag keeps its default.

    Raises:
        CommlibError: a value the dataclass refuses (e.g. an unknown ``f``).
    """
    values = {}
    for f in fields(cls):
        hint = _hints(cls)[f.name]
        if is_dataclass(hint):
            values[f.name] = from_args(hint, namespace)  # type: ignore[arg-type]
        elif hasattr(namespace, f.name):
            values[f.name] = getattr(namespace, f.name)
    return cls(**values)


def add_command(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    handler: Handler,
    *,
    help: str,
    example: str,
    config: type | None = None,
) -> argparse.ArgumentParser:
    """A subcommand whose flags come from ``config`` and whose help ends with ``example``.

    ``handler`` gets the run config built from the flags (the parsed flags when
    ``config`` is None) and returns the exit status.
    """
    parser = commands.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog=f"example:\n  $ {example}",
        formatter_class=HelpFormatter,
    )
    if config is not None:
        add_arguments(parser, config)
    parser.set_defaults(handler=handler, config_class=config)
    return parser


def load_placed(name: str, placement: Placement) -> Any:
    """The model ``name`` on the placement's device (or device map), in its dtype.

    Raises:
        DeviceUnavailableError: a GPU this machine lacks, before anything loads.
    """
    from commlib.models import load_model

    where = placement.load_kwargs()
    return load_model(name, device=where["device"], dtype=where["dtype"])


def load_pair(pair: ModelPair) -> tuple[Any, Any]:
    """Sender and receiver models, placed as the pair says (one object when they are the same name)."""
    sender = load_placed(pair.sender, pair.placement)
    return sender, sender if pair.receiver == pair.sender else load_placed(pair.receiver, pair.placement)


def load_map(path: str | None) -> Any:
    """The learned W saved in ``path`` (``commlib fit-map``), or None without one."""
    if not path:
        return None
    from commlib.combine import LinearMap

    return LinearMap.load(path)


def check_run(
    methods: Sequence[str],
    protocol: str,
    *,
    k: int | None = None,
    j: int | None = None,
    map: str | None = None,
) -> None:
    """The registry's checks of a run's methods, before any model loads, so a bad name fails at once.

    Raises:
        CommlibError: a method unknown or not of ``protocol``, or without the layers or map it needs.
    """
    check_methods(methods, protocol)
    check_layers(methods, k, j)
    check_map(methods, map)


def check_game(game: str) -> None:
    """Read a game's first item before any model loads, so a bad name or file fails at once.

    Raises:
        CommlibError: an unknown game, a missing .jsonl file, or one that is not JSONL.
    """
    from commlib.tasks.games import load_game

    if game.endswith(".jsonl") and not Path(game).is_file():
        raise CommlibError(
            f"no game file {game}: give an existing .jsonl path (one JSON object per line: sender, "
            "receiver, answer), or countries, countries:train, countries:heldout, tipsheets"
        )
    try:
        items = load_game(game, n=1)
    except ValueError as exc:  # json.JSONDecodeError
        raise CommlibError(f"{game} is not JSONL ({exc}): write one JSON object per line") from None
    if not items:
        raise CommlibError(f"{game} has no items: write one JSON object per line (sender, receiver, answer)")
