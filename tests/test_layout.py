"""The layout rules of DESIGN.md, held by tests (issue 12): small modules, no import cycles, no private names
imported across modules, and one list of each kind of value."""

from __future__ import annotations

import ast
import sys
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edge", "firmware_bridge")
MAX_LINES = 450
#: modules allowed over MAX_LINES for now, each with why; remove an entry when the module is split
KNOWN_LONG: dict[str, str] = {}  # module -> why it may still be long (none today)


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every Python file of the packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def test_no_module_is_over_the_line_limit() -> None:
    long = {}
    for path in modules().values():
        rel = path.relative_to(ROOT).as_posix()
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES and rel not in KNOWN_LONG:
            long[rel] = n
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"
    for rel in KNOWN_LONG:  # an exception that is no longer needed must go
        path = ROOT / rel
        assert path.is_file() and len(path.read_text(encoding="utf-8").splitlines()) > MAX_LINES, (
            f"{rel} is now within {MAX_LINES} lines: remove it from KNOWN_LONG")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_time_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The package modules ``name`` imports when it is imported: module-level imports (also inside a top-level
    ``try``/``if``), not those in functions (deliberately lazy) or under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                if not _is_type_checking(node):
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in known)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative
                    pkg = name.split(".") if is_package else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join([*pkg, base] if base else pkg)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in known else base)
    visit(tree.body)
    return {m for m in found if m in known and m != name}


def test_no_import_cycles() -> None:
    mods = modules()
    known = set(mods)
    graph = {name: import_time_imports(path, name, known) for name, path in mods.items()}
    # importing a.b.c runs a/__init__ and a/b/__init__ first: a package's own imports are reached too
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in state:
            walk(node)
    assert not cycles, "import cycles (module-level imports):\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_sees_a_cycle(tmp_path: Path) -> None:
    """The checker itself: a two-module cycle is found, a lazy (function-level) import is not one."""
    (tmp_path / "a.py").write_text("from b import x\n")
    (tmp_path / "b.py").write_text("import a\ndef f():\n    import c\n")
    known = {"a", "b", "c"}
    assert import_time_imports(tmp_path / "a.py", "a", known) == {"b"}
    assert import_time_imports(tmp_path / "b.py", "b", known) == {"a"}


def test_no_private_name_is_imported_from_another_module() -> None:
    found = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {alias.name}")
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def test_one_list_of_source_kinds_precisions_and_backends() -> None:
    from edge import config
    from edge.card import PRECISION_FILES
    from edge.kinds import BACKENDS, PRECISION_CHOICES, PRECISIONS, Backend, Precision
    from firmware_bridge.sources import SOURCE_KINDS

    kinds = set()
    for cls in typing.get_args(typing.get_args(config.SourceConfig)[0]):
        kinds.update(typing.get_args(cls.model_fields["kind"].annotation))
    assert kinds == set(SOURCE_KINDS)
    assert set(PRECISION_FILES) == set(PRECISIONS) and set(PRECISION_CHOICES) == {p.value for p in Precision}
    assert set(BACKENDS) == {b.value for b in Backend}
    assert f"{Precision.INT8}" == "int8" and str(Backend.TENSORRT) == "tensorrt" and Precision("fp16") == "fp16"
    schema = config.DeviceConfig.model_json_schema()
    assert "int8" in str(schema) and "tensorrt" in str(schema)  # config validation takes its values from the enums
