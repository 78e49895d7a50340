"""The package's import structure, read from the source (pure ast: nothing of pipeline/ is imported).

- No import cycle among pipeline modules at module level.
- The layers, lowest first: core < formats < model < runtimes < lower < verify < bundle < {build, gate, bench,
  compress} < api < cli < __main__. A module imports its own unit and the layers below it, never a layer above it
  nor a peer of its layer (gate and bench never import build); verify does not import lower either (it checks
  files, whoever made them). This holds for imports inside functions too.
- A project module is imported inside a function only to defer a heavy third-party library (HEAVY): the module
  imported there loads, at module level and transitively, one that the importing module does not already load.
  Any other function-level import (to dodge a cycle, or out of habit) hides structure and defers nothing.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"

LAYERS: list[tuple[str, ...]] = [
    ("core",), ("formats",), ("model",), ("runtimes",), ("lower",), ("verify",), ("bundle",),
    ("build", "gate", "bench", "compress"), ("api",), ("cli",), ("__main__",),
]
FORBIDDEN = {("verify", "lower")}  # below verify in the order, and still not its business

# Function-level imports that defer nothing, in files edited elsewhere at the time of writing: each entry goes with
# its fix (the import moves to the top of its file). The test fails on any other, and on an entry no longer found.
PENDING_DEFERRALS: set[tuple[str, str]] = set()

# Third-party libraries whose import costs seconds or memory (or that only some machines have installed).
HEAVY = {"torch", "torchao", "tensorflow", "tf_keras", "executorch", "transformers", "safetensors", "onnx",
         "onnxruntime", "onnxslim", "onnx2tf", "mediapipe", "matplotlib", "litert_torch", "ai_edge_litert"}


@dataclass
class Module:
    name: str
    path: Path
    imports: set[str] = field(default_factory=set)  # pipeline modules imported at module level
    third_party: set[str] = field(default_factory=set)  # top-level names of other libraries, at module level
    deferred: list[tuple[int, str]] = field(default_factory=list)  # (line, pipeline module) inside functions


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _targets(node: ast.Import | ast.ImportFrom, module: Module, known: set[str]) -> list[str]:
    """The modules an import statement loads: `from a.b import c` is module a.b.c when that is one, else a.b."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.name.split(".") if module.path.name == "__init__.py" else module.name.split(".")[:-1]
        anchor = package[: len(package) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _scan(module: Module, known: set[str], source: str | None = None) -> None:
    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):  # annotations only: never executed
                continue
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child, module, known):
                    if target.split(".")[0] == "pipeline":
                        if in_function:
                            module.deferred.append((child.lineno, target))
                        else:
                            module.imports.add(target)
                    elif not in_function and target:
                        module.third_party.add(target.split(".")[0])
            visit(child, inside)

    visit(ast.parse(module.path.read_text() if source is None else source, str(module.path)), False)


def load_modules() -> dict[str, Module]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p): Module(_module_name(p), p) for p in paths}
    for module in modules.values():
        _scan(module, set(modules))
    return modules


def _unit(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(unit: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if unit in units)


def _loaded(name: str, modules: dict[str, Module], seen: set[str] | None = None) -> set[str]:
    """Every pipeline module that importing `name` runs at module level (its parent packages' too)."""
    seen = set() if seen is None else seen
    parts = name.split(".")
    for end in range(1, len(parts) + 1):
        current = ".".join(parts[:end])
        if current in modules and current not in seen:
            seen.add(current)
            for target in modules[current].imports:
                _loaded(target, modules, seen)
    return seen


def _heavy(name: str, modules: dict[str, Module]) -> set[str]:
    return {lib for m in _loaded(name, modules) for lib in modules[m].third_party & HEAVY}


def _cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself), Tarjan's."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(modules) + 100))

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(modules[v].imports & set(modules)):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in modules[v].imports:
                found.append(sorted(component))

    for v in sorted(modules):
        if v not in index:
            strong(v)
    return found


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return load_modules()


def test_every_module_belongs_to_a_layer(modules):
    units = {_unit(name) for name in modules} - {""}
    assert not [u for u in units if not any(u in layer for layer in LAYERS)]


def test_no_import_cycle_at_module_level(modules):
    assert _cycles(modules) == []


def _upward_imports(modules: dict[str, Module]) -> list[str]:
    """Imports, at module level or inside functions, of a layer above the importer's, of a peer, or forbidden."""
    wrong = []
    for module in modules.values():
        source = _unit(module.name)
        if not source:
            continue
        lines = {target: 0 for target in module.imports}
        lines.update({target: line for line, target in module.deferred})
        for target, line in sorted(lines.items()):
            unit = _unit(target)
            if not unit or unit == source:
                continue
            if _layer(unit) >= _layer(source) or (source, unit) in FORBIDDEN:
                wrong.append(f"{module.path.relative_to(ROOT).as_posix()}:{line or 'top'} imports {target}")
    return wrong


def test_no_lower_layer_imports_an_upper_one(modules):
    assert _upward_imports(modules) == []


def _idle_deferrals(modules: dict[str, Module]) -> list[tuple[str, int, str]]:
    """(file, line, module) of every function-level import whose module brings no heavy library its importer lacks."""
    idle = []
    for module in modules.values():
        already = _heavy(module.name, modules)
        for line, target in module.deferred:
            if not _heavy(target, modules) - already:
                idle.append((module.path.relative_to(ROOT).as_posix(), line, target))
    return idle


def test_imports_inside_functions_defer_a_heavy_library(modules):
    idle = _idle_deferrals(modules)
    new = [f"{path}:{line} imports {target} inside a function (move it to the top of the file)"
           for path, line, target in idle if (path, target) not in PENDING_DEFERRALS]
    assert new == []
    assert PENDING_DEFERRALS - {(path, target) for path, _, target in idle} == set()  # fixed: drop the entry


def test_the_checks_see_what_they_check():
    """The scanner on a known shape: a cycle, a deferral of torch, a deferral of nothing, an upward import."""
    fake = {
        "pipeline.core.a": Module("pipeline.core.a", PACKAGE / "core/a.py", {"pipeline.core.b"}),
        "pipeline.core.b": Module("pipeline.core.b", PACKAGE / "core/b.py", {"pipeline.core.a"}),
        "pipeline.model.m": Module("pipeline.model.m", PACKAGE / "model/m.py", set(), {"torch", "numpy"}),
        "pipeline.lower.l": Module("pipeline.lower.l", PACKAGE / "lower/l.py", {"pipeline.model.m"}),
    }
    assert _cycles(fake) == [["pipeline.core.a", "pipeline.core.b"]]
    assert _heavy("pipeline.lower.l", fake) == {"torch"} and _heavy("pipeline.core.a", fake) == set()
    assert _layer(_unit("pipeline.core.a")) < _layer(_unit("pipeline.lower.l"))
    fake["pipeline.core.a"].deferred = [(3, "pipeline.lower.l"), (4, "pipeline.core.b")]  # torch; nothing
    fake["pipeline.lower.l"].deferred = [(5, "pipeline.model.m")]  # torch, which it has already
    fake["pipeline.verify.v"] = Module("pipeline.verify.v", PACKAGE / "verify/v.py", {"pipeline.lower.l"})
    fake["pipeline.gate.g"] = Module("pipeline.gate.g", PACKAGE / "gate/g.py", {"pipeline.verify.v"}, set(),
                                     [(9, "pipeline.build")])
    assert sorted(_upward_imports(fake)) == ["pipeline/core/a.py:3 imports pipeline.lower.l",  # upward
                                             "pipeline/gate/g.py:9 imports pipeline.build",  # a peer
                                             "pipeline/verify/v.py:top imports pipeline.lower.l"]  # forbidden
    del fake["pipeline.verify.v"], fake["pipeline.gate.g"]
    assert _idle_deferrals(fake) == [("pipeline/core/a.py", 4, "pipeline.core.b"),
                                     ("pipeline/lower/l.py", 5, "pipeline.model.m")]
    module = Module("pipeline.core.x", PACKAGE / "core" / "x.py")
    source = ("import numpy\nfrom pipeline.core import a\nif TYPE_CHECKING:\n    from pipeline.lower import l\n"
              "def f():\n    from pipeline.model.m import g\n")
    _scan(module, {"pipeline.core.a", "pipeline.model.m", "pipeline.lower.l"}, source)
    assert module.imports == {"pipeline.core.a"} and module.third_party == {"numpy"}
    assert module.deferred == [(6, "pipeline.model.m")]


def test_no_function_takes_more_than_six_parameters():
    """One context object instead of loose parameters: self/cls not counted, *args/**kwargs counted."""
    import ast

    crowded = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
                if len(names) > 6:
                    crowded.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({len(names)})")
    assert crowded == []
