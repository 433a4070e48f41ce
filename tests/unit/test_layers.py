"""The house rules, read from the sources: role subpackages in one import order, no import circles
(a function-level import counts: hiding a circle inside a function does not remove it), few top modules."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
# Where each installed package's sources live (pyproject.toml's package-dir).
SOURCES = {"specdistill": ROOT / "specdistill", "specdistill.kernels": ROOT / "kernels" / "src",
           "specdistill.serve": ROOT / "serve" / "src"}
# Bottom to top: a module imports only from its own layer and the layers below it.
LAYERS = [
    ["specdistill.kernels", "specdistill.options"],
    ["specdistill.models"],
    ["specdistill.losses", "specdistill.data"],
    ["specdistill.serve"],
    ["specdistill.measure"],
    ["specdistill.teacher"],
    ["specdistill.training"],
    ["specdistill.bench", "specdistill.demo", "specdistill.cli", "specdistill.drafts", "specdistill.prompts",
     "specdistill"],
]
# What the engine may use besides itself: models, the prompt files and options, never training or teacher data.
SERVE_MAY_IMPORT = ("specdistill.serve", "specdistill.models", "specdistill.data.prompts", "specdistill.options")


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if package == "specdistill" and parts[0] in ("kernels", "serve"):
                continue
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """The project modules ``name`` imports anywhere in its file, resolved to modules where they are."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("specdistill")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("specdistill"):
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                      for a in node.names}
    return found - {name}


GRAPH = {name: _imports(name) for name in MODULES}


def _layer(name: str) -> int:
    best = max((prefix for layer in LAYERS for prefix in layer if name == prefix or name.startswith(prefix + ".")),
               key=len)
    return next(i for i, layer in enumerate(LAYERS) if best in layer)


def test_every_module_is_placed_in_a_layer():
    assert len(MODULES) > 60
    for name in MODULES:
        _layer(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_module_imports_only_from_its_layer_and_below(name):
    above = sorted(other for other in GRAPH[name] if _layer(other) > _layer(name))
    assert not above, f"{name} (layer {_layer(name)}) imports from a layer above it: {above}"


def test_the_engine_imports_only_models_prompts_and_options():
    for name in (n for n in MODULES if n.startswith("specdistill.serve")):
        wrong = [m for m in GRAPH[name] if not m.startswith(SERVE_MAY_IMPORT)]
        assert not wrong, f"{name} imports {wrong}"


def test_no_import_circles():
    # Tarjan's strongly connected components: any component of two or more modules is a circle.
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in GRAPH.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


def test_at_most_twelve_modules_at_the_top_of_the_package():
    top = sorted(p.name for p in (ROOT / "specdistill").glob("*.py"))
    assert len(top) <= 12, top
