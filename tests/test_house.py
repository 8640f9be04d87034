"""The shape of the house: the layers of ``src/iapas`` and the size of its rooms.

Every module of the package belongs to one floor of ``LAYERS`` (its package, or the module itself
for the package root). A module may import only from its own package or from a lower floor;
packages on the same floor do not import each other. Imports are read from the source with
``ast``, at module level and inside functions, ``TYPE_CHECKING`` blocks included: there are no
exclusions. Import circles between modules fail too, even inside one package.

CONTRIBUTING.md explains the floors; change the table there and here together.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "iapas"

# The floors, from the ground up: the data flows images -> detections -> masks -> map -> verdict
# -> metrics -> report, and each floor uses only what lies below it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),  # types, ops, caption grammar, map encoding, files, images, fields, names, locks
    ("data", "models", "metrics"),  # loaders and input search; model adapters; exact metrics
    ("pipeline",),  # stage 2: boxes, masks, the anomaly map (no verdict)
    ("product",),  # a product's profile and its decision: threshold, verdict, calibration
    ("prompts",),  # stage 1: tags, object tag, LLM nouns, caption -> a profile
    ("engine",),  # run folders: signature, run.json, resume, lock, disk-full stop; executors
    ("evaluation",),  # datasets -> metrics, tables, the report
    ("workflows", "testing"),  # procedures shared by CLI, station and Python; tiny models
    ("serve",),  # the station (HTTP service and page)
    ("cli",),  # parses, calls one function, prints
    ("",),  # the package root: iapas/__init__.py, iapas/__main__.py
)
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_CLI_SHARE = 0.08


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, root: Path = SRC) -> set[str]:
    """Every ``iapas`` module that ``path`` imports, anywhere in the file."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = {module_name(p, root) for p in (root / "iapas").rglob("*.py")}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return {m for m in found if m == "iapas" or m.startswith("iapas.")}


def room(module: str, graph: Graph) -> str:
    """The package a module lives in ('' for the root modules iapas and iapas.__main__)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and module in graph.packages) else ""


def floor(module: str, graph: Graph) -> int:
    for number, rooms in enumerate(LAYERS):
        if room(module, graph) in rooms:
            return number
    raise AssertionError(f"{module}: its package {room(module, graph)!r} is on no floor of LAYERS")


class Graph(dict):
    """module -> the iapas modules it imports; ``packages`` names the modules that are packages."""

    packages: set[str]


def import_graph(root: Path = SRC) -> Graph:
    files = sorted((root / "iapas").rglob("*.py"))
    found = {module_name(p, root): imported_modules(p, root) for p in files}
    graph = Graph({m: {i for i in deps if i in found and i != m} for m, deps in found.items()})
    graph.packages = {module_name(p, root) for p in files if p.name == "__init__.py"}
    return graph


def wrong_way(graph: Graph) -> list[str]:
    """Imports up a floor, or sideways into another package on the same floor."""
    bad = []
    for module, deps in sorted(graph.items()):
        for dep in sorted(deps):
            up, down = floor(module, graph), floor(dep, graph)
            if room(dep, graph) != room(module, graph) and down >= up:
                bad.append(f"{module} -> {dep} (floor {up} -> {down})")
    return bad


def circles(graph: Graph) -> list[list[str]]:
    """The import circles between modules (a package's ``__init__`` counts as a module)."""
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                found.append([*stack[stack.index(n):], n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_every_import_goes_down_a_floor_or_stays_in_its_package():
    assert wrong_way(import_graph()) == []


def test_no_import_circle():
    assert circles(import_graph()) == []


def test_every_package_is_on_a_floor():
    graph = import_graph()
    rooms = {room(m, graph) for m in graph}
    declared = {r for rooms_ in LAYERS for r in rooms_}
    assert rooms <= declared, rooms - declared


def _plant(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for name, text in files.items():
        path = tmp_path / "iapas" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return import_graph(tmp_path)


def test_a_planted_upward_import_fails(tmp_path: Path):
    graph = _plant(tmp_path, {
        "__init__.py": "",
        "core/__init__.py": "",
        "core/ops.py": "def f():\n    from iapas.serve import app  # a function-level import counts\n",
        "serve/__init__.py": "",
        "serve/app.py": "from iapas.core import ops\n",
        "models/__init__.py": "",
        "models/a.py": "from iapas.data import b\n",
        "data/__init__.py": "",
        "data/b.py": "",
    })
    assert wrong_way(graph) == [  # importing a module from a package runs the package's __init__ too
        "iapas.core.ops -> iapas.serve (floor 0 -> 8)",
        "iapas.core.ops -> iapas.serve.app (floor 0 -> 8)",
        "iapas.models.a -> iapas.data (floor 1 -> 1)",
        "iapas.models.a -> iapas.data.b (floor 1 -> 1)",
    ]
    assert circles(graph) == [["iapas.core.ops", "iapas.serve.app", "iapas.core.ops"]]


def test_a_planted_circle_inside_one_package_fails(tmp_path: Path):
    graph = _plant(tmp_path, {
        "__init__.py": "",
        "engine/__init__.py": "",
        "engine/a.py": "from .b import x\n",
        "engine/b.py": "import typing\nif typing.TYPE_CHECKING:\n    from iapas.engine.a import y\n",
    })
    assert circles(graph) == [["iapas.engine.a", "iapas.engine.b", "iapas.engine.a"]]


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def long_functions(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = node.end_lineno - start + 1
            if length > MAX_FUNCTION_LINES:
                out.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({length} lines)")
    return out


def test_no_file_over_500_lines():
    assert [f"{p.relative_to(SRC)} ({_lines(p)})" for p in sorted(PACKAGE.rglob("*.py")) if _lines(p) > MAX_FILE_LINES] == []


def test_no_function_over_80_lines():
    assert [f for p in sorted(PACKAGE.rglob("*.py")) for f in long_functions(p)] == []


def test_the_cli_is_at_most_8_percent_of_the_source():
    total = sum(_lines(p) for p in PACKAGE.rglob("*.py"))
    cli = sum(_lines(p) for p in (PACKAGE / "cli").rglob("*.py"))
    assert cli / total <= MAX_CLI_SHARE, f"cli is {cli} of {total} lines ({cli / total:.1%})"
