"""The package's shape: no import cycle (imports inside functions and TYPE_CHECKING blocks count), no module
over 700 lines, and one method registry whose names every protocol implements and stored runs read back."""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import pytest

import commlib.protocols.games
import commlib.protocols.reasoning
import commlib.protocols.series
from commlib import registry
from commlib.errors import CommlibError
from commlib.models import Model
from commlib.results import ITEM_FIELDS, Run

PACKAGE = Path(commlib.protocols.games.__file__).resolve().parents[1]
MAX_LINES = 700


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every commlib module and the commlib modules it imports anywhere in its source.

    Every ``import`` and ``from ... import`` counts, at any depth of the
    syntax tree: inside functions, under ``if TYPE_CHECKING:``, in
    try blocks. ``from package import name`` is an edge to the submodule
    ``package.name`` when there is one, else to the package.
    """
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # import commlib.a.b.c -> the module that exists
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or ``None`` when the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_cycle_finder_finds_a_lazy_import_cycle(tmp_path: Path) -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    source = "def f():\n    from commlib.protocols import games\n"  # an import inside a function is an edge
    edges = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)]
    assert [e.module for e in edges] == ["commlib.protocols"]
    graph = import_graph()
    assert "commlib.protocols.debate" in graph["commlib.protocols.reasoning"]
    assert "commlib.channels.cipher" in graph["commlib.protocols.debate"]


def test_no_import_cycle_in_commlib() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_over_700_lines() -> None:
    long = {
        _module_name(p): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_registered_method_is_implemented_and_every_implementation_registered() -> None:
    for protocol in registry.PROTOCOLS:
        named = {m.name for m in registry.METHODS.values() if protocol in m.protocols}
        assert set(registry.implemented(protocol)) == named, protocol
    with pytest.raises(CommlibError, match="not the name of a games method"):
        registry.register("games", "ac")  # an alias is not a name to register under
    with pytest.raises(CommlibError, match="unknown method"):
        registry.register("games", "telepathy")


def test_every_alias_resolves_to_its_method_in_every_protocol_it_runs_in() -> None:
    assert registry.ALIASES == {
        "ac": "ac-replace",
        "ac-w": "ac-w-replace",
        "ac-unrelated": "ac-replace-unrelated",
        "ac-cot": "ac-replace-cot",
    }
    for alias, name in registry.ALIASES.items():
        entry = registry.method(alias)
        assert entry.name == name == registry.canonical(alias) and registry.METHODS[name] is entry
        for protocol in entry.protocols:
            assert registry.check_methods([alias, name], protocol) == [name]
            assert registry.implementation(protocol, alias) is registry.implementation(protocol, name)
    assert registry.check_methods(["nld-r3", "nld"], "reasoning") == ["nld-r3", "nld"]
    with pytest.raises(CommlibError, match="does not run in the reasoning benchmarks"):
        registry.check_methods(["ac-sum"], "reasoning")


def test_the_layers_are_checked_in_one_place_for_every_protocol(tiny: Model) -> None:
    from commlib.protocols.games import MethodConfig, run_method
    from commlib.protocols.questions import ReasoningConfig
    from commlib.protocols.reasoning import run_reasoning_method
    from commlib.protocols.series import series_for
    from commlib.tasks.games import countries
    from commlib.tasks.items import ReasoningItem

    message = "needs the layers: pass k and j"
    with pytest.raises(CommlibError, match=f"ac-sum {message}"):
        run_method("ac-sum", countries(1), tiny, tiny, MethodConfig(k=None, j=1))
    with pytest.raises(CommlibError, match=f"ac-replace-unrelated {message}"):
        run_reasoning_method("ac-unrelated", ReasoningItem("2 + 2?", "4"), tiny, tiny, ReasoningConfig())
    with pytest.raises(CommlibError, match=f"ac-replace {message}"):
        series_for("ac", tiny, tiny, MethodConfig(k=1, j=None))


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(ITEM_FIELDS))
        writer.writeheader()
        writer.writerows(rows)


def test_a_run_stored_under_an_old_name_resumes_under_the_canonical_one(tmp_path: Path) -> None:
    settings = {"game": "countries", "seed": 0}
    (tmp_path / "run.json").write_text(json.dumps(settings))
    row = {"item_id": "countries-0", "answer": "France", "output": "France", "message": ""}
    _write_rows(
        tmp_path / "items.csv",
        [
            {**row, "method": "ac", "correct": "True", "exact": "True"},
            {**row, "method": "nl", "correct": "False"},
        ],
    )
    run = Run(tmp_path, settings)
    assert [r["method"] for r in run.rows] == ["ac-replace", "nl"]
    assert run.done(method="ac-replace") == run.done(method="ac") == {"countries-0"}
    assert run.frame()["method"].tolist() == ["ac-replace", "nl"]
    assert run.summary(["ac"])["ac-replace"]["accuracy"] == 1.0
    run.add([{**row, "item_id": "countries-1", "method": "ac", "correct": "False", "exact": "False"}])
    assert Run(tmp_path, settings).done("item_id", "method") == {
        ("countries-0", "ac-replace"),
        ("countries-0", "nl"),
        ("countries-1", "ac-replace"),
    }


def test_a_games_run_stored_under_an_old_name_resumes_without_decoding(
    tiny: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from commlib.experiments import run_games

    kw = {"k": 1, "j": 1, "n": 2, "out_dir": tmp_path, "max_new_tokens": 2, "progress": False}
    first = run_games("countries", tiny, tiny, ["ac-replace", "silent"], **kw)  # type: ignore[arg-type]
    table = tmp_path / "items.csv"
    table.write_text(table.read_text().replace(",ac-replace,", ",ac,"))  # as if stored under the old name
    assert ",ac," in table.read_text()

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished row was decoded again")

    monkeypatch.setattr("commlib.experiments.games.run_method", no_decoding)
    again = run_games("countries", tiny, tiny, ["ac", "silent"], **kw)  # type: ignore[arg-type]
    assert list(again["methods"]) == ["ac-replace", "silent"] and again["methods"] == first["methods"]


def test_a_reasoning_results_file_with_old_names_reads_back_under_the_canonical_ones(tmp_path: Path) -> None:
    from commlib.experiments import read_reasoning

    scores = {"accuracy": 0.5, "ci_low": 0.1, "ci_high": 0.9, "n": 4}
    config = {"sender": {"name": "a"}, "receiver": {"name": "b"}, "k": 1, "j": 2, "seed": 0, "judge": None}
    methods = {"single-b": scores, "ac": scores, "ac-unrelated": scores, "nld-r3": scores}
    (tmp_path / "results.json").write_text(
        json.dumps({"task": "gsm8k", "methods": methods, "config": config})
    )
    table = read_reasoning(tmp_path)
    assert table["method"].tolist() == ["single-b", "ac-replace", "ac-replace-unrelated", "nld-r3"]
    assert table["accuracy"].tolist() == [0.5] * 4
