"""The package's shape, held against its imports (issue 17): no import cycle between its folders, nothing imports
the package's face, function-local imports only where an optional or slow dependency needs one (with a comment
saying which), and no work at import."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "robustbench_zs"

#: function-local imports that stay, each for the reason its comment gives: (file, imported module)
LOCAL_IMPORTS = {
    ("attacks/autoattack.py", "torchattacks"),  # seconds to import: only when FAB-T or the L2 Square runs
    ("weights/foreign.py", "numpy._core.multiarray"),  # numpy 2 moved it
    ("weights/foreign.py", "numpy.core.multiarray"),  # numpy 1
    ("results/store.py", "fcntl"),  # not on Windows
    ("launch.py", "submitit"),  # an optional dependency (the cluster extra)
}


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package's ``__init__.py`` under the package's name)."""
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(name: str, path: Path) -> list[tuple[str, ast.stmt, bool]]:
    """(absolute module, node, at module level) for every import of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if node.module is None:  # from . import x: each name is a module of the package (or a name of its face)
                out += [(f"{module}.{a.name}", node, id(node) in top) for a in node.names]
            else:
                out.append((module, node, id(node) in top))
    return out


def _room(module: str) -> str | None:
    """The folder (or top-level module) a module of ours lives in: the unit whose imports must not go round."""
    parts = module.split(".")
    if parts[0] != "robustbench_zs" or len(parts) == 1:
        return None if parts[0] != "robustbench_zs" else "robustbench_zs"
    return parts[1]


def test_no_import_cycle_between_the_packages_folders():
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in _modules().items():
        src = _room(name)
        if src in ("robustbench_zs", "__main__"):
            continue
        for module, _, _ in _imports(name, path):
            dst = _room(module)
            if dst and dst != src and dst != "robustbench_zs":
                graph[src].add(dst)
    # depth-first search for a cycle, reporting it whole
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(m) :], m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_nothing_imports_the_packages_face():
    """``robustbench_zs/__init__.py`` sits on top (it re-exports the API); a module importing it would run upward."""
    modules = _modules()
    for name, path in modules.items():
        for module, node, _ in _imports(name, path):
            if module.startswith("robustbench_zs.") and module.count(".") == 1 and module not in modules:
                first = module.split(".")[1]
                assert (PACKAGE / first).is_dir() or (PACKAGE / f"{first}.py").is_file(), (
                    f"{path.relative_to(PACKAGE)}:{node.lineno} imports {first!r} from the package's face"
                )


def _in_functions(path: Path) -> set[int]:
    """Line numbers of the import statements that sit inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out |= {n.lineno for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return out


def test_function_local_imports_are_only_for_optional_or_slow_dependencies():
    found = set()
    for name, path in _modules().items():
        local = _in_functions(path)
        lines = path.read_text(encoding="utf-8").splitlines()
        for module, node, _ in _imports(name, path):
            if node.lineno in local:
                found.add((str(path.relative_to(PACKAGE)), module))
                assert "#" in lines[node.lineno - 1] or "#" in lines[node.lineno - 2], (
                    f"{path.relative_to(PACKAGE)}:{node.lineno}: a function-local import says why in a comment"
                )
    assert found == LOCAL_IMPORTS, sorted(found ^ LOCAL_IMPORTS)


def test_importing_the_package_does_no_work():
    """``import robustbench_zs`` (and the CLI) loads no optional attack package and detects nothing."""
    code = (
        "import sys, robustbench_zs, robustbench_zs.cli; "
        "print(sorted(m for m in ('torchattacks', 'autoattack', 'zsbench_example_plugin') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
