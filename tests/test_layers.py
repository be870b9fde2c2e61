"""The package's layers (docs/architecture.md, "Layers"): every import of a vau module, at module or function level,
points to its own layer or one below; no two modules import each other, directly or round a circle.

Read from the source with ``ast`` (nothing is imported), so an import hidden in a function counts as much as one at
the top of a file; imports under ``if TYPE_CHECKING:`` (annotations only) do not. The registry's own loading of
vau's built-in plugin modules (``importlib`` by name, :data:`vau.registry.BUILTIN_MODULES`) is no import here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vau"

# Bottom first. A module belongs to the longest entry that is its name or a package above it ("vau" itself: only
# vau/__init__.py, so a new module that no entry names fails test_every_module_has_a_layer).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("vau", "vau.registry", "vau.config", "vau.schema", "vau.outputs", "vau.run_dir", "vau.checkpoints",
              "vau.chat")),
    ("data", ("vau.data",)),
    ("text", ("vau.parsing", "vau.qa_position")),
    ("metrics", ("vau.metrics", "vau.reflect_metrics", "vau.frame_metrics", "vau.text_metrics")),
    ("tasks", ("vau.tasks",)),
    ("learning inputs", ("vau.rewards", "vau.datamodules", "vau.datatools")),
    ("models", ("vau.backbones", "vau.modules", "vau.rollout")),
    ("jobs", ("vau.eval", "vau.export", "vau.callbacks", "vau.trainer", "vau.components")),
    ("entry", ("vau.run", "vau.predict", "vau.difficulty", "vau.cli", "vau.__main__")),
)


def module_files() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matched name, layer)
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            inside = module.startswith(name + ".") and name != "vau"  # the package's own __init__ is no prefix
            if (module == name or inside) and (best is None or len(name) > best[0]):
                best = (len(name), index)
    return None if best is None else best[1]


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported vau module, line) for every import in ``path`` outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(node) for block in ast.walk(tree)
                   if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                   for node in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "vau":
            for alias in node.names:  # `from vau.tasks import qa` imports the module vau.tasks.qa
                full = f"{node.module}.{alias.name}"
                found.append((full if full in modules else node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "vau"]
    return found


def import_graph() -> dict[str, list[tuple[str, int]]]:
    modules = module_files()
    return {name: [(target, line) for target, line in imports_of(path, modules) if target != name]
            for name, path in modules.items()}


def test_every_module_has_a_layer():
    unplaced = [name for name in module_files() if layer_of(name) is None]
    assert not unplaced, f"place these modules in LAYERS (and docs/architecture.md): {unplaced}"


def test_no_import_points_to_a_higher_layer():
    graph, files = import_graph(), module_files()
    upward = [f"{files[name].relative_to(PACKAGE.parent)}:{line} imports {target} "
              f"({LAYERS[layer_of(name)][0]} -> {LAYERS[layer_of(target)][0]})"
              for name, targets in graph.items() for target, line in targets
              if None not in (layer_of(name), layer_of(target)) and layer_of(target) > layer_of(name)]
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_no_import_circle():
    graph = {name: sorted({target for target, _ in targets if target in module_files()})
             for name, targets in import_graph().items()}
    # Tarjan's strongly connected components: a component of two or more modules is an import circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize("source, expected", [
    ("from vau.tasks import get_task\n", ["vau.tasks"]),
    ("def f():\n    from vau.eval.report import evaluate\n", ["vau.eval.report"]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vau.run import main\n", []),
    ("import vau.modules.grpo\n", ["vau.modules.grpo"]),
])
def test_the_walk_sees_function_level_imports_and_skips_typing_only_ones(tmp_path, source, expected):
    """The checks above are only as good as this reader: an import inside a function is seen, one for annotations
    only is not."""
    path = tmp_path / "m.py"
    path.write_text(source)
    assert [target for target, _ in imports_of(path, module_files())] == expected


def deferred_imports_without_reason(path: Path) -> list[int]:
    """Lines of function-level ``from vau ...`` imports in ``path`` whose line does not say ``# deferred``."""
    source = path.read_text()
    lines = source.splitlines()
    return sorted({node.lineno for fn in ast.walk(ast.parse(source, str(path)))
                   if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(fn)
                   if isinstance(node, (ast.Import, ast.ImportFrom))
                   and any(name.split(".")[0] == "vau" for name in
                           ([node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]))
                   and "# deferred" not in lines[node.lineno - 1]})


def test_function_level_imports_of_vau_say_why():
    """An import inside a function hides a dependency (and once held an import circle open): vau imports at the top
    of a module, except where the command line defers the heavy stack (vau/cli.py's docstring), marked so."""
    bare = [f"{path.relative_to(PACKAGE.parent)}:{line}" for path in module_files().values()
            for line in deferred_imports_without_reason(path)]
    assert not bare, "move these imports to the top of the module, or mark why they wait (# deferred: ...):\n" + \
        "\n".join(bare)


def test_the_deferred_check_sees_an_unmarked_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from vau.tasks import get_task\n\n\n"
                    "def g():\n    from vau.run import run  # deferred: the heavy stack\n")
    assert deferred_imports_without_reason(path) == [2]
