"""The import rules of docs/ARCHITECTURE.md, read from the source (ast): no import cycle among the project's
modules (imports inside functions count: a cycle there is still two modules that need each other), and
``components`` never imports ``pipeline``, ``models`` is pure (only itself), the shared basics import only
each other (and the model registry), and only the stage modules are imported from ``pipeline``."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "pipeline")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports, anywhere in the file: ``from a.b import c`` is ``a.b.c`` when
    that is a module, else ``a.b``."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.add(full if full in modules else node.module)
    return {m for m in out if m in modules}


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None (depth-first, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_the_graph_sees_imports_inside_functions():
    edges = graph()
    assert "components.stages.train" in edges["pipeline.train"]  # imported inside main(), after --help
    assert "components.errors" in edges["components.data.shards"]


def test_no_import_cycle_among_project_modules():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_cycle_is_found_when_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_components_never_import_pipeline():
    bad = sorted(
        f"{m} imports {n}"
        for m, targets in graph().items()
        if m.startswith("components")
        for n in targets
        if n.split(".")[0] == "pipeline"
    )
    assert not bad, bad


BASICS = {f"components.{m}" for m in ("config", "storage", "workspace", "checkpoint", "errors", "cli",
                                      "credentials", "headline", "progress")}  # fmt: skip


def test_layers():
    edges = graph()
    bad = []
    for m, targets in edges.items():
        if m.startswith("components.models"):
            bad += [f"{m} imports {n}" for n in targets if not n.startswith("components.models")]
        if m in BASICS:
            bad += [f"{m} imports {n}" for n in targets if n not in BASICS | {"components.models.registry"}]
        if not m.startswith(("pipeline", "components.stages")):
            bad += [f"{m} imports {n}" for n in targets if n.startswith("components.stages")]
    assert not bad, bad


def test_only_the_tracking_package_imports_mlflow():
    """Stage code says what it records (start a sweep, record a trial, attach test results, record a
    promotion, log a model); the MLflow calls that do it live in components/tracking/."""
    found = set()
    for name, path in project_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])  # fmt: skip
            if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                found.add(name)
    outside = sorted(m for m in found if not m.startswith("components.tracking"))
    assert not outside, f"modules outside components/tracking/ that import mlflow: {outside}"
    assert "components.tracking" in found  # the walk sees imports (inside functions too)
