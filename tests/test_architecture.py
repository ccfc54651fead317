"""The import graph of epikit follows docs/architecture.md: no cycles, no upward imports, small modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "epikit"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
MAX_LINES = 500


def layer_order() -> list[tuple[str, list[str]]]:
    """``[(layer, module prefixes)]`` top to bottom, as written in docs/architecture.md."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("<!-- layers:", 1)[1]
    layers = []
    for line in section.splitlines()[1:]:
        match = re.match(r"^- (\w+): (epikit[\w., ]*)$", line.strip())
        if not match:
            if layers:
                break
            continue
        layers.append((match.group(1), [p.strip() for p in match.group(2).split(",")]))
    return layers


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (packages by their ``__init__``)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: epikit modules it imports}``, imports inside functions included."""
    known = modules()

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        resolved = {resolve(t) for t in targets if t == "epikit" or t.startswith("epikit.")}
        graph[name] = {t for t in resolved if t and t != name}
    return graph


def layer_of(module: str, layers: list[tuple[str, list[str]]]) -> int:
    """Index (0 = top) of the layer whose longest prefix matches ``module``."""
    best, index = -1, None
    for number, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, index = len(prefix), number
    assert index is not None, f"{module} belongs to no layer of docs/architecture.md"
    return index


def test_the_layer_list_is_readable() -> None:
    names = [name for name, _ in layer_order()]
    assert names[0] == "cli" and names[-1] == "core" and "runfolder" in names


def test_every_module_sits_in_a_layer() -> None:
    layers = layer_order()
    for module in modules():
        layer_of(module, layers)


def test_no_module_imports_a_layer_above_its_own() -> None:
    layers = layer_order()
    upward = []
    for module, targets in import_graph().items():
        for target in targets:
            if layer_of(target, layers) < layer_of(module, layers):
                upward.append(f"{module} ({layers[layer_of(module, layers)][0]}) imports {target} "
                              f"({layers[layer_of(target, layers)][0]})")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    # A package importing its own submodules (re-exports) is not a cycle of modules.
    without_reexports = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    cycle = find_cycle(without_reexports)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", sorted(modules()))
def test_modules_stay_small(module: str) -> None:
    lines = modules()[module].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES}): split it by job"
