"""The layers of ARCHITECTURE.md, checked on the source: every import statement of every module in studio/ and
training/ (those inside functions too) is read with ``ast`` and resolved to a project module.

- ``studio`` (outside ``studio/ui/``) never imports ``training``: the job runner runs the training CLIs as
  subprocesses and validates their configs with ``studio.train_config``;
- gradio is imported only under ``studio/ui/``;
- ``studio.demo`` (the demo family's domain, the lowest layer) imports nothing else of the project but
  ``studio.paths``;
- no two project modules import each other, directly or through others (no cycles).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("studio", "training")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the project packages (a package is its __init__)."""
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported_names(path: Path, module: str) -> list[str]:
    """Every dotted name an import statement of the file names (``from a import b`` gives ``a.b``), at any depth."""
    names = []
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names += [f"{base}.{alias.name}" for alias in node.names] + [base]
    return names


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module a dotted name refers to (the longest module prefix), or None for third-party names."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in modules:
            return ".".join(parts[:i])
    return None


def import_graph() -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    """(project module -> project modules it imports, module -> every raw name it imports)."""
    modules = project_modules()
    graph, raw = {}, {}
    for module, path in modules.items():
        raw[module] = imported_names(path, module)
        graph[module] = {t for t in (resolve(n, modules) for n in raw[module]) if t and t != module}
    return graph, raw


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


GRAPH, RAW = import_graph()


def test_the_walk_sees_the_known_edges():
    """Guards the checker itself: imports at module level, inside functions and of package members resolve."""
    assert "studio.train_config.distill" in GRAPH["studio.jobs.kinds"] or "studio.train_config" in GRAPH[
        "studio.jobs.kinds"]
    assert "studio.demo.shapes" in GRAPH["studio.demo.concepts"]  # from studio.demo import shapes
    assert "studio.removal" in GRAPH["training.lora_files"]  # an import inside port_lora()
    assert "studio.jobs" in GRAPH["studio.ui.jobs_tab"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_studio_core_never_imports_training():
    offenders = {m: sorted(t for t in targets if t.startswith("training"))
                 for m, targets in GRAPH.items() if m.startswith("studio") and not m.startswith("studio.ui")}
    assert {m: t for m, t in offenders.items() if t} == {}


@pytest.mark.parametrize("package", PACKAGES)
def test_gradio_only_in_the_ui(package):
    offenders = sorted(m for m, names in RAW.items() if m.split(".")[0] == package and not m.startswith("studio.ui")
                       and any(n == "gradio" or n.startswith("gradio.") or n.startswith("gradio_client")
                               for n in names))
    assert offenders == []


def test_the_demo_layer_stands_alone():
    allowed = ("studio.demo", "studio.paths")
    offenders = {m: sorted(t for t in targets if not t.startswith(allowed))
                 for m, targets in GRAPH.items() if m.startswith("studio.demo")}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_no_import_cycles():
    assert cycles(GRAPH) == []
